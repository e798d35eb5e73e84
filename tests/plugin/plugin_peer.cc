// The other rank in the plugin tests: a separate process that loads the
// plugin, listens, hands its 128-byte handle to the test over a socket, and
// runs one scenario as the receiving side. It prints nothing on success; it
// writes one result line ("OK ..." or "FAIL ...") to the socket.
//
//   plugin_peer FD VERSION SCENARIO
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "plugin_harness.h"

namespace {

using namespace dualpath::testing;  // NOLINT(google-build-using-namespace)

int g_fd = -1;

void reply(const std::string& line) {
  std::string text = line + "\n";
  (void)!write(g_fd, text.data(), text.size());
}

[[noreturn]] void fail(const std::string& why) {
  reply("FAIL " + why);
  _exit(1);
}

void check(abi::NcclResult r, const char* what) {
  if (r != abi::success) fail(fmt::format("{} returned {}", what, static_cast<int>(r)));
}

// Posts a (grouped) receive, retrying while the plugin returns a NULL request.
void* postRecv(PluginApi& api, void* comm, std::vector<void*> data, std::vector<std::size_t> sizes,
               std::vector<int> tags) {
  void* request = reinterpret_cast<void*>(abi::kOptionalRecvCompletion);  // as NCCL pre-stores
  for (int attempt = 0; attempt < 1'000'000; ++attempt) {
    check(api.irecv(comm, static_cast<int>(data.size()), data.data(), sizes.data(), tags.data(),
                    nullptr, &request),
          "irecv");
    if (request != nullptr) return request;
  }
  fail("irecv never accepted the receive");
}

std::vector<int> waitSizes(PluginApi& api, void* request, int n) {
  std::vector<int> sizes(static_cast<std::size_t>(n), -1);
  abi::NcclResult r = waitDone(api, request, sizes.data());
  if (r == abi::inProgress) fail("receive did not complete within 20 s");
  check(r, "test");
  return sizes;
}

void exchange(PluginApi& api, void* comm) {
  // 1. One message, bytes checked.
  std::vector<char> big(1 << 20);
  void* mh = nullptr;
  check(api.regMr(comm, big.data(), big.size(), abi::kPtrHost, &mh), "regMr");
  auto sizes = waitSizes(api, postRecv(api, comm, {big.data()}, {big.size()}, {1}), 1);
  if (sizes[0] != static_cast<int>(big.size())) fail(fmt::format("message 1: size {}", sizes[0]));
  if (auto e = checkPattern(big.data(), big.size(), 1); !e.empty()) fail("message 1: " + e);
  check(api.deregMr(comm, mh), "deregMr");

  // 2. Grouped receive: tags pick the buffer; each size is the real one.
  std::vector<char> a(4096), b(65536), c(2 << 20);
  sizes = waitSizes(api, postRecv(api, comm, {a.data(), b.data(), c.data()},
                                  {a.size(), b.size(), c.size()}, {5, 6, 7}),
                    3);
  if (sizes != std::vector<int>{100, 65536, 2 << 20}) {
    fail(fmt::format("grouped sizes {},{},{}", sizes[0], sizes[1], sizes[2]));
  }
  for (auto [buffer, size, seed] : {std::tuple{a.data(), 100, 5}, std::tuple{b.data(), 65536, 6},
                                    std::tuple{c.data(), 2 << 20, 7}}) {
    if (auto e = checkPattern(buffer, static_cast<std::size_t>(size), seed); !e.empty()) {
      fail("grouped: " + e);
    }
  }

  // 3. A receive larger than the send.
  sizes = waitSizes(api, postRecv(api, comm, {big.data()}, {big.size()}, {2}), 1);
  if (sizes[0] != 1000) fail(fmt::format("larger receive: size {}", sizes[0]));
  if (auto e = checkPattern(big.data(), 1000, 2); !e.empty()) fail("larger receive: " + e);

  // 4. Zero-byte messages, into an empty and a non-empty buffer.
  sizes = waitSizes(api, postRecv(api, comm, {big.data()}, {0}, {3}), 1);
  if (sizes[0] != 0) fail(fmt::format("zero-byte into 0: size {}", sizes[0]));
  sizes = waitSizes(api, postRecv(api, comm, {big.data()}, {64}, {3}), 1);
  if (sizes[0] != 0) fail(fmt::format("zero-byte into 64: size {}", sizes[0]));

  // 5. 32 receives in flight; the 33rd gets a NULL request (NCCL retries).
  std::array<std::array<char, 16>, 33> slots{};
  std::vector<void*> requests;
  for (int i = 0; i < 32; ++i) requests.push_back(postRecv(api, comm, {slots[i].data()}, {16}, {9}));
  void* extra = reinterpret_cast<void*>(abi::kOptionalRecvCompletion);
  void* data33 = slots[32].data();
  std::size_t size33 = 16;
  int tag33 = 9;
  check(api.irecv(comm, 1, &data33, &size33, &tag33, nullptr, &extra), "irecv #33");
  if (extra != nullptr) fail("the 33rd receive in flight was accepted");
  for (int i = 0; i < 32; ++i) {
    sizes = waitSizes(api, requests[static_cast<std::size_t>(i)], 1);
    if (sizes[0] != 16) fail(fmt::format("in-flight {}: size {}", i, sizes[0]));
    if (auto e = checkPattern(slots[static_cast<std::size_t>(i)].data(), 16, 100 + i); !e.empty()) {
      fail(fmt::format("in-flight {}: {}", i, e));
    }
  }

  // 6. Host memory: iflush has nothing to do.
  void* flush = reinterpret_cast<void*>(0xdead);
  int flush_size = 16;
  void* flush_data = big.data();
  check(api.iflush(comm, 1, &flush_data, &flush_size, nullptr, &flush), "iflush");
  if (flush != nullptr) fail("iflush returned a request for host memory");
  reply("OK exchange");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: plugin_peer FD VERSION SCENARIO\n");
    return 2;
  }
  g_fd = std::atoi(argv[1]);
  const int version = std::atoi(argv[2]);
  const std::string scenario = argv[3];
  try {
    PluginApi api("dualpath", version);
    void* ctx = nullptr;
    check(api.init(&ctx, abi::kTrafficClassUndef), "init");
    std::array<char, abi::kHandleBytes> handle{};
    void* listen_comm = nullptr;
    check(api.listen(ctx, 0, handle.data(), &listen_comm), "listen");
    if (write(g_fd, handle.data(), handle.size()) != static_cast<ssize_t>(handle.size())) {
      fail("writing the handle");
    }
    void* send = nullptr;
    void* recv = nullptr;
    std::string error;
    if (!connectBoth(api, nullptr, listen_comm, handle.data(), &send, &recv, &error)) fail(error);
    check(api.closeListen(listen_comm), "closeListen");
    if (scenario == "exchange") {
      exchange(api, recv);
    } else if (scenario == "class") {
      for (const std::string& line : loggedLines()) {
        if (line.find("accept: from") != std::string::npos) reply("OK " + line);
      }
      char byte = 0;
      (void)!read(g_fd, &byte, 1);  // the test's connect is done when it writes or closes
    } else if (scenario == "hold") {
      reply("OK holding");
      char byte = 0;
      (void)!read(g_fd, &byte, 1);  // until the test kills us or closes the socket
    } else {
      fail("unknown scenario " + scenario);
    }
    check(api.closeRecv(recv), "closeRecv");
    check(api.finalize(ctx), "finalize");
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}
