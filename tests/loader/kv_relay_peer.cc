// The DE process of the two-process relay test. It listens on the `kv` class
// of loopback, hands its 128-byte handle to the test over a socket, accepts
// the PE, and serves one relay from a MemoryBlockStore up to a known point,
// where it writes one line and stops serving (it blocks on the socket) so
// that the test can kill it with SIGKILL mid-relay:
//
//   waiting  the request arrived, but the DE buffer is taken (this process
//            holds every slot), so nothing is read or put: "WAITING"
//   puts     it announced a layer, with puts of later layers in flight:
//            "ANNOUNCED <layers>"
//
// On a failure it writes "FAIL <why>" and exits 1.
//
//   loader_relay_peer FD MODE
#include "kv_relay_peer.h"

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <poll.h>
#include <unistd.h>

#include <dualpath/loader/kv_relay.h>
#include <dualpath/loader/memory_block_store.h>
#include <dualpath/qos/policy_loader.h>
#include <dualpath/transport/transport.h>

namespace {

using namespace dualpath;          // NOLINT(google-build-using-namespace)
using namespace dualpath::loader;  // NOLINT(google-build-using-namespace)

int g_fd = -1;

void reply(const std::string& line) {
  std::string text = line + "\n";
  (void)!write(g_fd, text.data(), text.size());
}

[[noreturn]] void fail(const std::string& why) {
  reply("FAIL " + why);
  _exit(1);
}

template <class T>
T orFail(Result<T> result, const char* what) {
  if (!result) fail(fmt::format("{}: {}", what, result.status().toString()));
  return std::move(result).value();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  g_fd = std::atoi(argv[1]);
  const std::string mode = argv[2];
  if (mode != "waiting" && mode != "puts") return 2;
  const auto bound = std::chrono::steady_clock::now() + std::chrono::seconds(20);

  qos::Policy policy = orFail(
      qos::loadPolicyOrError(DUALPATH_SOURCE_DIR "/qos/examples/ethernet-testbed.toml", false),
      "policy");
  const auto kv = static_cast<std::uint8_t>(policy.indexOf(*policy.findClass("kv")));
  auto engine = orFail(transport::Engine::create(transport::EngineConfig{
                           policy, transport::DeviceFilter{{"lo"}, {}}, 300, false}),
                       "engine");
  transport::ConnectHandle handle{};
  auto listener = orFail(engine->listen(0, kv, &handle), "listen");
  (void)!write(g_fd, &handle, sizeof(handle));

  std::unique_ptr<transport::Endpoint> endpoint;
  while (!endpoint) {
    if (std::chrono::steady_clock::now() > bound) fail("no PE connected within 20 s");
    auto accepted = listener->tryAccept();
    if (accepted) {
      endpoint = std::move(accepted).value();
    } else if (accepted.status().code() != StatusCode::again) {
      fail("accept: " + accepted.status().toString());
    }
  }

  const ModelSpec model = relay_peer::model();
  auto store = orFail(MemoryBlockStore::create(model), "store");
  for (std::size_t i = 0; i < relay_peer::kBlocks; ++i) {
    if (Status s = store->write(relay_peer::blockId(i), relay_peer::payload(model, i)); !s) {
      fail("write: " + s.toString());
    }
  }
  auto pool = orFail(BufferPool::create({.name = "de-buffer",
                                         .slot_bytes = model.fullBlockBytes(),
                                         .slots = relay_peer::kBlocks}),
                     "pool");
  std::vector<BufferLease> taken;
  while (mode == "waiting" && pool->available() > 0)
    taken.push_back(orFail(pool->acquire(), "acquire"));
  auto server = orFail(RelayServer::create(std::move(endpoint), *store, *pool, model), "server");
  auto reached = [&] {
    return mode == "waiting" ? server->counters().requests > 0
                             : server->counters().layers_landed > 0;
  };
  while (!reached()) {
    if (std::chrono::steady_clock::now() > bound) fail("the relay did not get there within 20 s");
    if (Status s = server->poll(); !s) fail("poll: " + s.toString());
  }
  if (mode == "waiting") {
    if (server->counters().bytes_put != 0) fail("put bytes without a buffer");
    reply("WAITING");
  } else {
    reply(fmt::format("ANNOUNCED {}", server->counters().layers_landed));
  }
  // Stop here, mid-relay, until the test kills us (or closes the socket).
  pollfd p{g_fd, POLLIN, 0};
  (void)poll(&p, 1, 20'000);
  return 0;
}
