// dualpath-plugin-bench: the NCCL net plugin, driven through its C ABI exactly as NCCL drives
// it, against `ucx_perftest` measured in the same invocation on the same transport.
//
// Three kinds of process, all this binary:
//   driver  (default)      runs ucx_perftest server/client pairs for the reference, and for the
//                          plugin execs itself twice (`/proc/self/exe --role rank0|peer`); it never
//                          loads the plugin or UCX itself. Reference and plugin runs alternate
//                          (reference, plugin, reference, plugin ...) and the table reports medians.
//   rank0   (hidden role)  dlopens libnccl-net-dualpath.so like NCCL (RTLD_NOW | RTLD_LOCAL),
//                          dlsyms ncclNetPlugin_v11, sends the bulk data and starts ping-pongs.
//   peer    (hidden role)  the same, receives the bulk data, answers ping-pongs, verifies bytes.
// The two ranks exchange their 128-byte listen handles over a socketpair the driver made; every
// wait is bounded (--wait-timeout) and nothing synchronises by sleeping.
//
// Bandwidth: rank 0 keeps a window of isends in flight, rank 1 the same window of irecvs; after a
// warm-up, rank 1 pre-posts its window, sends a GO message and times until the last receive
// completes; it returns that time in a final ack, so both ranks report the receiver's figure.
// GB/s = bytes / elapsed, 1 GB = 1e9 bytes. Latency: 8-byte ping-pong, one way = RTT / 2.
// ucx_perftest reports MB/s with MB = 2^20 bytes (its print divides by 1024*1024): we convert
// with x 1048576 / 1e9. Its tag_lat figures are already one way (half the round trip).
#include <arpa/inet.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "nccl/net_abi.h"

extern char** environ;  // NOLINT: POSIX

namespace dualpath::bench {
namespace {

namespace abi = dualpath::plugin::abi;
using Json = nlohmann::json;

constexpr const char* kPluginFile = "libnccl-net-dualpath.so";
constexpr int kTag = 0;
constexpr int kCtlFd = 3;     // the rank's end of the handle socketpair
constexpr int kResultFd = 4;  // rank 0 writes its JSON result here
constexpr std::uint64_t kGo = 0x474f474f474f474fULL;
constexpr double kBwTarget = 0.90;   // plugin / ucx_perftest
constexpr double kLatTargetUs = 2.0;  // plugin - ucx_perftest

[[noreturn]] void fail(const std::string& message) { throw std::runtime_error(message); }

std::int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// ---------------------------------------------------------------------------------- options

struct Options {
  std::string role = "driver";
  std::string plugin;
  std::string transport = "both";
  std::vector<std::string> sizes_text{"1MiB", "16MiB"};
  std::vector<int> windows{16, 4};
  long iters = 0;
  std::string bw_bytes_text = "2GiB";
  long lat_iters = 20000;
  int batches = 10;
  int reps = 5;
  std::string buffers = "distinct";
  std::string memory = "heap";
  // CPUs for rank 0 / ucx_perftest's client and for the peer / its server; empty: the first
  // two CPUs the driver may use, or unpinned when it may use only one.
  std::vector<int> pin;
  bool no_pin = false;
  std::string tls_tcp = "tcp";
  std::string tls_shm = "sm,tcp";
  std::vector<std::string> env_tcp;
  std::vector<std::string> env_shm;
  std::string perftest = "ucx_perftest";
  int perftest_window = 0;
  double wait_timeout_s = 60;
  double run_timeout_s = 900;
  bool json = false;
  std::string json_out;
  bool verbose = false;
  // Hidden, filled by the driver for the ranks.
  int cpu = -1;
  std::uint64_t comm_id = 0;
  std::vector<std::size_t> sizes;
  std::vector<long> bw_msgs;
  std::vector<long> bw_warmup;
  long lat_warmup = 0;
};

std::size_t parseBytes(const std::string& text) {
  std::size_t pos = 0;
  unsigned long long value = 0;
  try {
    value = std::stoull(text, &pos);
  } catch (const std::exception&) {
    fail(fmt::format("'{}' is not a size (examples: 8, 64KiB, 1MiB, 16M, 2GiB)", text));
  }
  std::string unit = text.substr(pos);
  std::transform(unit.begin(), unit.end(), unit.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  unsigned long long scale = 1;
  if (unit.empty() || unit == "b") {
    scale = 1;
  } else if (unit == "k" || unit == "kib" || unit == "ki") {
    scale = 1ULL << 10;
  } else if (unit == "m" || unit == "mib" || unit == "mi") {
    scale = 1ULL << 20;
  } else if (unit == "g" || unit == "gib" || unit == "gi") {
    scale = 1ULL << 30;
  } else {
    fail(fmt::format("'{}': unknown unit '{}' (use KiB, MiB or GiB; all binary)", text, unit));
  }
  return static_cast<std::size_t>(value * scale);
}

std::string sizeLabel(std::size_t bytes) {
  if (bytes >= (1U << 20) && bytes % (1U << 20) == 0) return fmt::format("{} MiB", bytes >> 20);
  if (bytes >= (1U << 10) && bytes % (1U << 10) == 0) return fmt::format("{} KiB", bytes >> 10);
  return fmt::format("{} B", bytes);
}

std::string joinList(const auto& items) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += ',';
    out += fmt::format("{}", item);
  }
  return out;
}

// ---------------------------------------------------------------------------------- fd helpers

int remainingMs(std::int64_t deadline_ns) {
  const std::int64_t left = deadline_ns - nowNs();
  if (left <= 0) return 0;
  return static_cast<int>(std::min<std::int64_t>(left / 1'000'000 + 1, 1'000'000));
}

// Waits until `fd` is ready for `events` or the deadline passes (false).
bool pollFd(int fd, short events, std::int64_t deadline_ns) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, remainingMs(deadline_ns));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) fail(fmt::format("poll: {}", std::strerror(errno)));
  }
}

void sendAll(int fd, const void* data, std::size_t size, std::int64_t deadline_ns,
             const char* what) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    if (!pollFd(fd, POLLOUT, deadline_ns)) fail(fmt::format("{}: timed out writing", what));
    const ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      fail(fmt::format("{}: {}", what, std::strerror(errno)));
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void recvAll(int fd, void* data, std::size_t size, std::int64_t deadline_ns, const char* what) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    if (!pollFd(fd, POLLIN, deadline_ns)) fail(fmt::format("{}: timed out waiting", what));
    const ssize_t n = ::recv(fd, p, size, 0);
    if (n == 0) fail(fmt::format("{}: the other rank closed the control socket (it failed?)", what));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      fail(fmt::format("{}: {}", what, std::strerror(errno)));
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void writeAll(int fd, const std::string& text, const char* what) {
  const char* p = text.data();
  std::size_t size = text.size();
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(fmt::format("{}: {}", what, std::strerror(errno)));
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

std::string readWholeFd(int fd) {
  std::string out;
  if (::lseek(fd, 0, SEEK_SET) < 0) return out;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

// =================================================================================== ranks

bool g_verbose = false;
const char* g_rank_name = "rank";

const char* levelName(abi::LogLevel level) {
  switch (level) {
    case abi::LogLevel::warn:
      return "WARN";
    case abi::LogLevel::info:
      return "INFO";
    case abi::LogLevel::abort:
      return "ABORT";
    case abi::LogLevel::trace:
      return "TRACE";
    case abi::LogLevel::version:
      return "VERSION";
    case abi::LogLevel::none:
      break;
  }
  return "LOG";
}

// NCCL's logger as the plugin sees it: printf-style, any thread.
void pluginLogger(abi::LogLevel level, unsigned long /*flags*/, const char* file, int line,
                  const char* format, ...) {
  if (static_cast<int>(level) > static_cast<int>(abi::LogLevel::warn) && !g_verbose) return;
  char message[2048];
  va_list args;
  va_start(args, format);
  std::vsnprintf(message, sizeof(message), format, args);
  va_end(args);
  std::fprintf(stderr, "[%s] NCCL %s %s:%d %s\n", g_rank_name, levelName(level),
               file != nullptr ? file : "?", line, message);
}

const char* resultName(abi::NcclResult r) {
  switch (r) {
    case abi::success:
      return "ncclSuccess";
    case abi::unhandledCudaError:
      return "ncclUnhandledCudaError";
    case abi::systemError:
      return "ncclSystemError";
    case abi::internalError:
      return "ncclInternalError";
    case abi::invalidArgument:
      return "ncclInvalidArgument";
    case abi::invalidUsage:
      return "ncclInvalidUsage";
    case abi::remoteError:
      return "ncclRemoteError";
    case abi::inProgress:
      return "ncclInProgress";
  }
  return "unknown ncclResult_t";
}

void check(abi::NcclResult r, const char* call) {
  if (r != abi::success) {
    fail(fmt::format("plugin {} returned {} ({})", call, static_cast<int>(r), resultName(r)));
  }
}

// heap: private pages from aligned_alloc. sysv: a System V shared-memory segment, which is
// what ucx_perftest's buffers are (UCX allocates them through its sysv memory domain first;
// its /proc/PID/maps shows /SYSV00000000): over shared memory the kernel's cross-process copy
// is measurably faster on shared pages than on private ones here (docs/performance.md).
struct BufferFree {
  bool sysv = false;
  void operator()(char* p) const {
    if (sysv) {
      ::shmdt(p);
    } else {
      std::free(p);
    }
  }
};
using Buffer = std::unique_ptr<char, BufferFree>;

Buffer allocate(std::size_t bytes, const std::string& memory) {
  const std::size_t rounded = (std::max<std::size_t>(bytes, 1) + 4095) / 4096 * 4096;
  Buffer buffer(nullptr, BufferFree{memory == "sysv"});
  if (memory == "sysv") {
    const int id = ::shmget(IPC_PRIVATE, rounded, IPC_CREAT | 0600);
    if (id < 0) fail(fmt::format("shmget of {} bytes: {}", rounded, std::strerror(errno)));
    void* p = ::shmat(id, nullptr, 0);
    const int attach_errno = errno;
    ::shmctl(id, IPC_RMID, nullptr);  // the segment goes with its last detach
    if (p == reinterpret_cast<void*>(-1)) {
      fail(fmt::format("shmat of {} bytes: {}", rounded, std::strerror(attach_errno)));
    }
    buffer.reset(static_cast<char*>(p));
  } else {
    buffer.reset(static_cast<char*>(std::aligned_alloc(4096, rounded)));
    if (buffer == nullptr) fail(fmt::format("cannot allocate {} bytes", rounded));
  }
  std::memset(buffer.get(), 0, rounded);  // fault the pages in before anything is timed
  return buffer;
}

// Slot k of a bandwidth window holds words seeded by k: a misrouted or torn message shows.
std::uint64_t patternWord(std::size_t slot, std::size_t index) {
  return (static_cast<std::uint64_t>(slot) + 1) * 0x9E3779B97F4A7C15ULL ^
         (static_cast<std::uint64_t>(index) * 0xD6E8FEB86659FD93ULL + 0x1234567ULL);
}

void fillPattern(char* p, std::size_t size, std::size_t slot) {
  const std::size_t words = size / 8;
  for (std::size_t i = 0; i < words; ++i) {
    const std::uint64_t w = patternWord(slot, i);
    std::memcpy(p + i * 8, &w, 8);
  }
  for (std::size_t i = words * 8; i < size; ++i) p[i] = static_cast<char>(slot * 31 + i);
}

// Returns the first mismatching byte offset, or nullopt.
std::optional<std::size_t> checkPattern(const char* p, std::size_t size, std::size_t slot) {
  const std::size_t words = size / 8;
  for (std::size_t i = 0; i < words; ++i) {
    const std::uint64_t w = patternWord(slot, i);
    if (std::memcmp(p + i * 8, &w, 8) != 0) return i * 8;
  }
  for (std::size_t i = words * 8; i < size; ++i) {
    if (p[i] != static_cast<char>(slot * 31 + i)) return i;
  }
  return std::nullopt;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

class Rank {
 public:
  Rank(const Options& options, bool is_rank0) : o_(options), rank0_(is_rank0) {
    timeout_ns_ = static_cast<std::int64_t>(o_.wait_timeout_s * 1e9);
  }

  Json run() {
    load();
    connectPeers();
    registerBuffers();
    Json result;
    result["plugin"] = plugin_path_;
    result["device"] = device_name_;
    Json bw = Json::array();
    for (std::size_t i = 0; i < o_.sizes.size(); ++i) {
      bw.push_back(bandwidth(o_.sizes[i], o_.windows[i], o_.bw_warmup[i], o_.bw_msgs[i]));
    }
    result["bandwidth"] = std::move(bw);
    result["latency"] = latency();
    teardown();
    return result;
  }

 private:
  // ------------------------------------------------------------------ setup

  void load() {
    dl_ = ::dlopen(o_.plugin.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (dl_ == nullptr) {
      const char* err = ::dlerror();
      fail(fmt::format("dlopen(\"{}\", RTLD_NOW|RTLD_LOCAL): {}", o_.plugin,
                       err != nullptr ? err : "?"));
    }
    ::dlerror();
    void* symbol = ::dlsym(dl_, abi::kSymbolNetV11);
    if (symbol == nullptr) {
      fail(fmt::format("{} has no {} (NCCL would probe older versions; this bench needs v11)",
                       o_.plugin, abi::kSymbolNetV11));
    }
    net_ = static_cast<const abi::NetV11*>(symbol);
    link_map* map = nullptr;
    plugin_path_ = (::dlinfo(dl_, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr)
                       ? std::string(map->l_name)
                       : o_.plugin;

    abi::CommConfigV11 config{abi::kTrafficClassUndef};
    check(net_->init(&ctx_, o_.comm_id, &config, &pluginLogger, nullptr), "init");
    int ndev = 0;
    check(net_->devices(&ndev), "devices");
    if (ndev < 1) fail("plugin devices() reports no device (is DUALPATH_NET_DEVICES=lo set?)");
    abi::PropertiesV11 props{};
    check(net_->getProperties(0, &props), "getProperties");
    if ((props.ptrSupport & abi::kPtrHost) == 0) fail("device 0 does not support host memory");
    device_name_ = props.name != nullptr ? props.name : "?";
    if (g_verbose) {
      std::fprintf(stderr, "[%s] plugin %s '%s', %d device(s), device 0 '%s', maxRecvs %d\n",
                   g_rank_name, plugin_path_.c_str(), net_->name, ndev, device_name_.c_str(),
                   props.maxRecvs);
    }
  }

  void connectPeers() {
    char handle[abi::kHandleBytes] = {};
    void* listen_comm = nullptr;
    check(net_->listen(ctx_, 0, handle, &listen_comm), "listen");
    if (listen_comm == nullptr) fail("listen succeeded with a NULL listenComm");
    // NCCL's bootstrap carries the handle; here the driver's socketpair does.
    const std::int64_t deadline = nowNs() + timeout_ns_;
    sendAll(kCtlFd, handle, sizeof(handle), deadline, "sending the listen handle");
    recvAll(kCtlFd, peer_handle_, sizeof(peer_handle_), deadline, "receiving the peer's handle");

    // connect/accept never block: NULL comm until ready, same handle buffer on every retry.
    abi::NetDeviceHandleV11* send_dev = nullptr;
    abi::NetDeviceHandleV11* recv_dev = nullptr;
    std::int64_t calls = 0;
    while (send_comm_ == nullptr || recv_comm_ == nullptr) {
      if (send_comm_ == nullptr) {
        check(net_->connect(ctx_, 0, peer_handle_, &send_comm_, &send_dev), "connect");
      }
      if (recv_comm_ == nullptr) check(net_->accept(listen_comm, &recv_comm_, &recv_dev), "accept");
      if ((++calls & 255) == 0 && nowNs() > deadline) {
        fail(fmt::format("connect/accept: not connected after {} s (sendComm {}, recvComm {})",
                         o_.wait_timeout_s, send_comm_ != nullptr ? "ready" : "NULL",
                         recv_comm_ != nullptr ? "ready" : "NULL"));
      }
    }
    check(net_->closeListen(listen_comm), "closeListen");
  }

  void registerBuffers() {
    std::size_t pool = 0;
    for (std::size_t i = 0; i < o_.sizes.size(); ++i) {
      const std::size_t slots = o_.buffers == "shared" ? 1 : static_cast<std::size_t>(o_.windows[i]);
      pool = std::max(pool, slots * o_.sizes[i]);
    }
    pool_bytes_ = pool;
    // Rank 0 sends the bulk data, rank 1 receives it; both send and receive 8-byte messages.
    bulk_ = allocate(pool, o_.memory);
    ctl_send_ = allocate(4096, o_.memory);
    ctl_recv_ = allocate(4096, o_.memory);
    void* bulk_comm = rank0_ ? send_comm_ : recv_comm_;
    check(net_->regMr(bulk_comm, bulk_.get(), pool, abi::kPtrHost, &bulk_mh_), "regMr (bulk)");
    check(net_->regMr(send_comm_, ctl_send_.get(), 4096, abi::kPtrHost, &ctl_send_mh_),
          "regMr (ctl send)");
    check(net_->regMr(recv_comm_, ctl_recv_.get(), 4096, abi::kPtrHost, &ctl_recv_mh_),
          "regMr (ctl recv)");
  }

  void teardown() {
    // Everything each side expects has arrived; say so over the socketpair before closing, so
    // that neither side closes an endpoint the other still reads from.
    const std::int64_t deadline = nowNs() + timeout_ns_;
    char byte = 'D';
    sendAll(kCtlFd, &byte, 1, deadline, "teardown handshake");
    recvAll(kCtlFd, &byte, 1, deadline, "teardown handshake");
    void* bulk_comm = rank0_ ? send_comm_ : recv_comm_;
    check(net_->deregMr(bulk_comm, bulk_mh_), "deregMr");
    check(net_->deregMr(send_comm_, ctl_send_mh_), "deregMr");
    check(net_->deregMr(recv_comm_, ctl_recv_mh_), "deregMr");
    check(net_->closeSend(send_comm_), "closeSend");
    check(net_->closeRecv(recv_comm_), "closeRecv");
    check(net_->finalize(ctx_), "finalize");
  }

  // ------------------------------------------------------------------ requests

  void* tryIsend(void* data, std::size_t size, void* mhandle) {
    void* request = nullptr;
    check(net_->isend(send_comm_, data, size, kTag, mhandle, nullptr, &request), "isend");
    return request;
  }

  void* tryIrecv(void* data, std::size_t capacity, void* mhandle) {
    void* data_v[1] = {data};
    std::size_t sizes[1] = {capacity};
    int tags[1] = {kTag};
    void* mhandles[1] = {mhandle};
    void* phandles[1] = {nullptr};
    void* request = nullptr;
    check(net_->irecv(recv_comm_, 1, data_v, sizes, tags, mhandles, phandles, &request), "irecv");
    return request;
  }

  bool testOnce(void* request, int* size) {
    int done = 0;
    int sizes[1] = {-1};
    check(net_->test(request, &done, sizes), "test");
    if (done != 0 && size != nullptr) *size = sizes[0];
    return done != 0;
  }

  template <class Post>
  void* postRetry(Post&& post, const char* what) {
    const std::int64_t start = nowNs();
    for (std::int64_t n = 1;; ++n) {
      if (void* request = post(); request != nullptr) return request;
      if ((n & 255) == 0 && nowNs() - start > timeout_ns_) {
        fail(fmt::format("{}: the plugin returned a NULL request for {} s", what, o_.wait_timeout_s));
      }
    }
  }

  int waitDone(void* request, const char* what) {
    const std::int64_t start = nowNs();
    int size = -1;
    for (std::int64_t n = 1;; ++n) {
      if (testOnce(request, &size)) return size;
      if ((n & 1023) == 0 && nowNs() - start > timeout_ns_) {
        fail(fmt::format("{}: not complete after {} s", what, o_.wait_timeout_s));
      }
    }
  }

  void sendCtl(std::uint64_t value, const char* what) {
    std::memcpy(ctl_send_.get(), &value, 8);
    void* r = postRetry([&] { return tryIsend(ctl_send_.get(), 8, ctl_send_mh_); }, what);
    waitDone(r, what);
  }

  std::uint64_t recvCtl(const char* what) {
    void* r = postRetry([&] { return tryIrecv(ctl_recv_.get(), 8, ctl_recv_mh_); }, what);
    const int got = waitDone(r, what);
    if (got != 8) fail(fmt::format("{}: received {} bytes, expected 8", what, got));
    std::uint64_t value = 0;
    std::memcpy(&value, ctl_recv_.get(), 8);
    return value;
  }

  // ------------------------------------------------------------------ bandwidth

  char* slot(std::size_t size, long index, int window) {
    if (o_.buffers == "shared") return bulk_.get();
    return bulk_.get() + static_cast<std::size_t>(index % window) * size;
  }

  // Keeps up to `window` isends (rank 0) or irecvs (rank 1) of `size` bytes in flight until
  // `count` have completed; tests the oldest, as NCCL's proxy does. With `announce` (rank 1,
  // measured phase) it sends GO once the first window is posted and times from there.
  // Returns nanoseconds from the start (or GO) to the last completion.
  std::int64_t stream(std::size_t size, int window, long count, bool announce) {
    std::vector<void*> ring(static_cast<std::size_t>(window), nullptr);
    long posted = 0;
    long completed = 0;
    void* go = nullptr;
    bool announced = !announce;
    std::int64_t t0 = nowNs();
    std::int64_t last = t0;
    std::uint64_t spins = 0;
    while (completed < count || go != nullptr) {
      while (posted < count && posted - completed < window) {
        char* p = slot(size, posted, window);
        void* r = rank0_ ? tryIsend(p, size, bulk_mh_) : tryIrecv(p, size, bulk_mh_);
        if (r == nullptr) break;  // cannot post now: retry after testing
        ring[static_cast<std::size_t>(posted % window)] = r;
        ++posted;
      }
      if (!announced) {
        std::memcpy(ctl_send_.get(), &kGo, 8);
        go = postRetry([&] { return tryIsend(ctl_send_.get(), 8, ctl_send_mh_); }, "GO");
        announced = true;
        t0 = nowNs();
        last = t0;
      }
      if (go != nullptr && testOnce(go, nullptr)) go = nullptr;
      if (completed < posted) {
        int got = -1;
        if (testOnce(ring[static_cast<std::size_t>(completed % window)], &got)) {
          if (!rank0_ && got != static_cast<int>(size)) {
            fail(fmt::format("bandwidth {}: receive #{} completed with {} bytes, expected {}",
                             sizeLabel(size), completed, got, size));
          }
          ++completed;
          last = nowNs();
          continue;
        }
      }
      if ((++spins & 1023) == 0 && nowNs() - last > timeout_ns_) {
        fail(fmt::format("bandwidth {}: no {} completed for {} s ({} of {} done, {} posted, "
                         "window {})",
                         sizeLabel(size), rank0_ ? "isend" : "irecv", o_.wait_timeout_s,
                         completed, count, posted, window));
      }
    }
    return nowNs() - t0;
  }

  Json bandwidth(std::size_t size, int window, long warmup, long count) {
    const std::size_t slots = o_.buffers == "shared" ? 1 : static_cast<std::size_t>(window);
    const std::size_t used = std::min<std::size_t>(slots, static_cast<std::size_t>(std::max(count, 1L)));
    if (rank0_) {
      for (std::size_t k = 0; k < slots; ++k) fillPattern(bulk_.get() + k * size, size, k);
      stream(size, window, warmup, false);
      const std::uint64_t go = recvCtl("waiting for GO");
      if (go != kGo) fail(fmt::format("expected GO, received {:#x}", go));
      const std::int64_t sender_ns = stream(size, window, count, false);
      const std::uint64_t receiver_ns = recvCtl("waiting for the receiver's result");
      const double bytes = static_cast<double>(size) * static_cast<double>(count);
      Json r;
      r["size"] = size;
      r["window"] = window;
      r["messages"] = count;
      r["warmup"] = warmup;
      r["receiver_ns"] = receiver_ns;
      r["sender_ns"] = sender_ns;
      r["gbps"] = receiver_ns > 0 ? bytes / static_cast<double>(receiver_ns) : 0.0;
      return r;
    }
    stream(size, window, warmup, false);
    std::memset(bulk_.get(), 0, slots * size);  // what the timed phase writes must show
    const std::int64_t receiver_ns = stream(size, window, count, true);
    for (std::size_t k = 0; k < used; ++k) {
      if (auto bad = checkPattern(bulk_.get() + k * size, size, k)) {
        fail(fmt::format("bandwidth {}: wrong bytes in receive slot {} at offset {} (window {}, "
                         "{} messages)",
                         sizeLabel(size), k, *bad, window, count));
      }
    }
    sendCtl(static_cast<std::uint64_t>(receiver_ns), "sending the result");
    return Json::object();
  }

  // ------------------------------------------------------------------ latency

  Json latency() {
    const long total = o_.lat_warmup + o_.lat_iters;
    if (!rank0_) {
      // Responder: pre-post the receive for the next ping before waiting for the pong to go.
      void* r = postRetry([&] { return tryIrecv(ctl_recv_.get(), 8, ctl_recv_mh_); }, "ping irecv");
      for (long i = 0; i < total; ++i) {
        const int got = waitDone(r, "ping");
        std::uint64_t v = 0;
        std::memcpy(&v, ctl_recv_.get(), 8);
        if (got != 8 || v != static_cast<std::uint64_t>(i)) {
          fail(fmt::format("latency: ping #{} carried {} ({} bytes), expected {} (8 bytes)", i, v,
                           got, i));
        }
        std::memcpy(ctl_send_.get(), &v, 8);
        void* s = postRetry([&] { return tryIsend(ctl_send_.get(), 8, ctl_send_mh_); }, "pong isend");
        if (i + 1 < total) {
          r = postRetry([&] { return tryIrecv(ctl_recv_.get(), 8, ctl_recv_mh_); }, "ping irecv");
        }
        waitDone(s, "pong send");
      }
      return Json::object();
    }
    const long iters = o_.lat_iters;
    std::vector<std::int64_t> rtt(static_cast<std::size_t>(iters));
    std::int64_t previous = 0;
    for (long i = 0; i < total; ++i) {
      if (i == o_.lat_warmup) previous = nowNs();
      const std::uint64_t v = static_cast<std::uint64_t>(i);
      std::memcpy(ctl_send_.get(), &v, 8);
      void* s = postRetry([&] { return tryIsend(ctl_send_.get(), 8, ctl_send_mh_); }, "ping isend");
      void* r = postRetry([&] { return tryIrecv(ctl_recv_.get(), 8, ctl_recv_mh_); }, "pong irecv");
      bool sent = false;
      bool received = false;
      int got = -1;
      const std::int64_t start = nowNs();
      for (std::uint64_t n = 1; !(sent && received); ++n) {
        if (!sent) sent = testOnce(s, nullptr);
        if (!received) received = testOnce(r, &got);
        if ((n & 1023) == 0 && nowNs() - start > timeout_ns_) {
          fail(fmt::format("latency: ping-pong #{} not complete after {} s (send {}, recv {})", i,
                           o_.wait_timeout_s, sent ? "done" : "pending",
                           received ? "done" : "pending"));
        }
      }
      std::uint64_t back = 0;
      std::memcpy(&back, ctl_recv_.get(), 8);
      if (got != 8 || back != v) {
        fail(fmt::format("latency: pong #{} carried {} ({} bytes), expected {}", i, back, got, v));
      }
      if (i >= o_.lat_warmup) {
        const std::int64_t t = nowNs();
        rtt[static_cast<std::size_t>(i - o_.lat_warmup)] = t - previous;
        previous = t;
      }
    }
    std::vector<double> one_way_us(rtt.size());
    for (std::size_t i = 0; i < rtt.size(); ++i) one_way_us[i] = static_cast<double>(rtt[i]) / 2e3;
    const double mean = one_way_us.empty() ? 0.0
                                           : std::accumulate(one_way_us.begin(), one_way_us.end(), 0.0) /
                                                 static_cast<double>(one_way_us.size());
    std::vector<double> batch_means;
    const long batches = std::max(1, std::min<int>(o_.batches, static_cast<int>(std::max(iters, 1L))));
    for (long b = 0; b < batches; ++b) {
      const std::size_t lo = static_cast<std::size_t>(iters * b / batches);
      const std::size_t hi = static_cast<std::size_t>(iters * (b + 1) / batches);
      if (hi <= lo) continue;
      batch_means.push_back(std::accumulate(one_way_us.begin() + static_cast<long>(lo),
                                            one_way_us.begin() + static_cast<long>(hi), 0.0) /
                            static_cast<double>(hi - lo));
    }
    Json r;
    r["iterations"] = iters;
    r["warmup"] = o_.lat_warmup;
    r["p50_us"] = median(one_way_us);
    r["mean_us"] = mean;
    r["min_us"] = one_way_us.empty() ? 0.0 : *std::min_element(one_way_us.begin(), one_way_us.end());
    r["batch_means_us"] = batch_means;
    r["batch_median_us"] = median(batch_means);
    return r;
  }

  const Options& o_;
  bool rank0_;
  std::int64_t timeout_ns_ = 0;
  void* dl_ = nullptr;
  const abi::NetV11* net_ = nullptr;
  std::string plugin_path_;
  std::string device_name_;
  void* ctx_ = nullptr;
  char peer_handle_[abi::kHandleBytes] = {};
  void* send_comm_ = nullptr;
  void* recv_comm_ = nullptr;
  std::size_t pool_bytes_ = 0;
  Buffer bulk_;
  Buffer ctl_send_;
  Buffer ctl_recv_;
  void* bulk_mh_ = nullptr;
  void* ctl_send_mh_ = nullptr;
  void* ctl_recv_mh_ = nullptr;
};

int runRank(const Options& o) {
  const bool rank0 = o.role == "rank0";
  g_rank_name = rank0 ? "rank0" : "peer";
  g_verbose = o.verbose;
  try {
    if (o.cpu >= 0) {
      cpu_set_t cpus;
      CPU_ZERO(&cpus);
      CPU_SET(o.cpu, &cpus);
      if (::sched_setaffinity(0, sizeof(cpus), &cpus) != 0) {
        fail(fmt::format("pinning to CPU {}: {}", o.cpu, std::strerror(errno)));
      }
    }
    if (o.sizes.empty() || o.sizes.size() != o.windows.size() ||
        o.sizes.size() != o.bw_msgs.size() || o.sizes.size() != o.bw_warmup.size()) {
      fail("--role needs --sizes-bytes, --windows, --bw-msgs and --bw-warmup of equal length "
           "(the driver passes them; run without --role)");
    }
    Rank rank(o, rank0);
    Json result = rank.run();
    if (rank0) {
      writeAll(kResultFd, result.dump(), "writing the result");
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[%s] FAILED: %s\n", g_rank_name, e.what());
    return 1;
  }
}

// =================================================================================== driver

struct Child {
  std::string name;
  pid_t pid = -1;
  int pidfd = -1;
  int out = -1;  // memfd: stdout
  int err = -1;  // memfd: stderr
  int status = -1;
  bool exited = false;
};

std::vector<std::string> childEnv(const std::vector<std::pair<std::string, std::string>>& set) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    const std::string key = entry.substr(0, entry.find('='));
    bool overridden = false;
    for (const auto& [k, v] : set) overridden = overridden || k == key;
    if (!overridden) env.push_back(std::move(entry));
  }
  for (const auto& [k, v] : set) env.push_back(k + "=" + v);
  return env;
}

// fork + exec with stdout/stderr captured in memfds and `fds` (source -> target) inherited.
Child spawn(const std::string& name, const std::string& file, bool search_path,
            const std::vector<std::string>& argv, const std::vector<std::string>& env,
            const std::vector<std::pair<int, int>>& fds) {
  Child c;
  c.name = name;
  c.out = ::memfd_create((name + ".out").c_str(), MFD_CLOEXEC);
  c.err = ::memfd_create((name + ".err").c_str(), MFD_CLOEXEC);
  if (c.out < 0 || c.err < 0) fail(fmt::format("memfd_create: {}", std::strerror(errno)));
  std::vector<char*> av;
  for (const auto& a : argv) av.push_back(const_cast<char*>(a.c_str()));
  av.push_back(nullptr);
  std::vector<char*> ev;
  for (const auto& e : env) ev.push_back(const_cast<char*>(e.c_str()));
  ev.push_back(nullptr);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) fail(fmt::format("fork: {}", std::strerror(errno)));
  if (pid == 0) {
    const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(c.out, 1);
    ::dup2(c.err, 2);
    std::vector<int> moved;
    for (const auto& fd : fds) moved.push_back(::fcntl(fd.first, F_DUPFD_CLOEXEC, 64));
    for (std::size_t i = 0; i < fds.size(); ++i) ::dup2(moved[i], fds[i].second);
    if (search_path) {
      ::execvpe(file.c_str(), av.data(), ev.data());
    } else {
      ::execve(file.c_str(), av.data(), ev.data());
    }
    ::dprintf(2, "exec %s: %s\n", file.c_str(), std::strerror(errno));
    ::_exit(127);
  }
  c.pid = pid;
  c.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (c.pidfd < 0) fail(fmt::format("pidfd_open: {}", std::strerror(errno)));
  return c;
}

void reap(Child& c) {
  int status = 0;
  while (::waitpid(c.pid, &status, 0) < 0 && errno == EINTR) {
  }
  c.status = status;
  c.exited = true;
  ::close(c.pidfd);
  c.pidfd = -1;
}

// Waits for exit until the deadline; false if still running.
bool waitExit(Child& c, std::int64_t deadline_ns) {
  if (c.exited) return true;
  if (!pollFd(c.pidfd, POLLIN, deadline_ns)) return false;
  reap(c);
  return true;
}

void killChild(Child& c) {
  if (c.exited || c.pid <= 0) return;
  ::kill(c.pid, SIGKILL);  // our own child, by pid
  reap(c);
}

void closeChild(Child& c) {
  killChild(c);
  if (c.out >= 0) ::close(c.out);
  if (c.err >= 0) ::close(c.err);
  c.out = c.err = -1;
}

bool succeeded(const Child& c) { return c.exited && WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0; }

std::string describeExit(const Child& c) {
  if (!c.exited) return "still running (killed)";
  if (WIFEXITED(c.status)) return fmt::format("exit status {}", WEXITSTATUS(c.status));
  if (WIFSIGNALED(c.status)) {
    return fmt::format("killed by signal {} ({})", WTERMSIG(c.status), strsignal(WTERMSIG(c.status)));
  }
  return "ended abnormally";
}

std::string tail(const std::string& text, std::size_t max_lines) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::string out;
  const std::size_t start = lines.size() > max_lines ? lines.size() - max_lines : 0;
  for (std::size_t i = start; i < lines.size(); ++i) out += "    " + lines[i] + "\n";
  return out;
}

// --------------------------------------------------------------------------- ucx_perftest

struct PerftestResult {
  bool ok = false;
  std::string error;
  double typical_us = 0;   // 50th percentile (last samples), one way
  double average_us = 0;   // overall average, one way
  double bw_gbps = 0;      // overall bandwidth, 1e9 B/s
  double bw_mib_s = 0;     // as printed
  std::string command;
};

std::uint16_t freePort() {
  const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) fail(fmt::format("socket: {}", std::strerror(errno)));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(s);
    fail(fmt::format("finding a free port: {}", std::strerror(errno)));
  }
  ::close(s);
  return ntohs(a.sin_port);
}

// True when some socket listens on `port` (IPv4 or IPv6), per /proc/net/tcp{,6}.
bool portListening(std::uint16_t port) {
  const std::string want = fmt::format(":{:04X}", port);
  for (const char* path : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string sl, local, remote, state;
      fields >> sl >> local >> remote >> state;
      if (state == "0A" && local.size() >= want.size() &&
          local.compare(local.size() - want.size(), want.size(), want) == 0) {
        return true;
      }
    }
  }
  return false;
}

PerftestResult runPerftestOnce(const Options& o, const std::vector<std::string>& env,
                               const std::string& test, std::size_t size, long iters, long warmup,
                               bool* retry) {
  PerftestResult result;
  *retry = false;
  const std::uint16_t port = freePort();
  const std::string port_s = std::to_string(port);
  std::vector<std::string> server_argv{o.perftest, "-p", port_s};
  if (!o.pin.empty()) {
    server_argv.push_back("-c");
    server_argv.push_back(std::to_string(o.pin[1]));
  }
  Child server = spawn("perftest-server", o.perftest, true, server_argv, env, {});
  // ucx_perftest prints nothing unbuffered when it listens and its client does not retry a
  // refused connect: wait (bounded) until the port is in LISTEN state, or the server exits.
  const std::int64_t listen_deadline = nowNs() + static_cast<std::int64_t>(o.wait_timeout_s * 1e9);
  bool listening = false;
  bool server_died = false;
  while (!listening) {
    listening = portListening(port);
    if (listening) break;
    if (nowNs() > listen_deadline) break;
    pollfd p{server.pidfd, POLLIN, 0};
    if (::poll(&p, 1, 1) > 0) {  // the server exited; 1 ms is the re-check interval
      server_died = true;
      break;
    }
  }
  if (!listening) {
    killChild(server);
    result.error = fmt::format("ucx_perftest server on port {} did not listen ({}):\n{}", port,
                               describeExit(server), tail(readWholeFd(server.err), 10));
    *retry = server_died;  // e.g. the port was taken in between
    closeChild(server);
    return result;
  }
  std::vector<std::string> argv{o.perftest, "127.0.0.1", "-p", port_s, "-t", test,
                                "-s", std::to_string(size), "-n", std::to_string(iters),
                                "-w", std::to_string(warmup)};
  if (!o.pin.empty()) {
    argv.push_back("-c");
    argv.push_back(std::to_string(o.pin[0]));
  }
  if (test == "tag_bw" && o.perftest_window > 0) {
    argv.push_back("-O");
    argv.push_back(std::to_string(o.perftest_window));
  }
  for (std::size_t i = 1; i < argv.size(); ++i) result.command += (i > 1 ? " " : "") + argv[i];
  Child client = spawn("perftest-client", o.perftest, true, argv, env, {});
  const std::int64_t deadline = nowNs() + static_cast<std::int64_t>(o.run_timeout_s * 1e9);
  const bool client_done = waitExit(client, deadline);
  const bool server_done =
      client_done && waitExit(server, nowNs() + static_cast<std::int64_t>(o.wait_timeout_s * 1e9));
  killChild(client);
  killChild(server);
  const std::string out = readWholeFd(client.out);
  const std::string err = readWholeFd(client.err);
  if (!client_done || !server_done || !succeeded(client)) {
    result.error = fmt::format("ucx_perftest {} (client {}, server {}):\n{}{}", result.command,
                               describeExit(client), describeExit(server), tail(out, 5),
                               tail(err + readWholeFd(server.err), 10));
  } else {
    // "Final: iters typical average overall bw_avg bw_overall mr_avg mr_overall"
    std::istringstream in(out);
    bool found = false;
    for (std::string line; std::getline(in, line);) {
      const auto pos = line.find("Final:");
      if (pos == std::string::npos) continue;
      std::istringstream fields(line.substr(pos + 6));
      double n = 0, typical = 0, average = 0, overall = 0, bw_avg = 0, bw_overall = 0;
      if (fields >> n >> typical >> average >> overall >> bw_avg >> bw_overall) {
        result.typical_us = typical;
        result.average_us = overall;
        result.bw_mib_s = bw_overall;
        result.bw_gbps = bw_overall * 1048576.0 / 1e9;
        found = true;
      }
    }
    if (found) {
      result.ok = true;
    } else {
      result.error = fmt::format("ucx_perftest {}: no 'Final:' line in its output:\n{}",
                                 result.command, tail(out + err, 10));
    }
  }
  if (o.verbose) {
    std::fprintf(stderr, "--- ucx_perftest %s\n%s%s", result.command.c_str(), out.c_str(),
                 err.c_str());
  }
  closeChild(client);
  closeChild(server);
  return result;
}

PerftestResult runPerftest(const Options& o, const std::vector<std::string>& env,
                           const std::string& test, std::size_t size, long iters, long warmup) {
  PerftestResult r;
  for (int attempt = 0; attempt < 3; ++attempt) {
    bool retry = false;
    r = runPerftestOnce(o, env, test, size, iters, warmup, &retry);
    if (r.ok || !retry) break;
  }
  return r;
}

// --------------------------------------------------------------------------- plugin pair

struct PluginRun {
  bool ok = false;
  std::string error;
  Json result;
};

PluginRun runPluginPair(const Options& o, const std::vector<std::string>& env) {
  PluginRun run;
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    fail(fmt::format("socketpair: {}", std::strerror(errno)));
  }
  const int result_fd = ::memfd_create("rank0.result", MFD_CLOEXEC);
  if (result_fd < 0) fail(fmt::format("memfd_create: {}", std::strerror(errno)));
  std::mt19937_64 rng(std::random_device{}());
  std::vector<std::string> common{
      "--plugin",       o.plugin,
      "--sizes-bytes",  joinList(o.sizes),
      "--windows",      joinList(o.windows),
      "--bw-msgs",      joinList(o.bw_msgs),
      "--bw-warmup",    joinList(o.bw_warmup),
      "--lat-iters",    std::to_string(o.lat_iters),
      "--lat-warmup",   std::to_string(o.lat_warmup),
      "--batches",      std::to_string(o.batches),
      "--buffers",      o.buffers,
      "--memory",       o.memory,
      "--wait-timeout", fmt::format("{}", o.wait_timeout_s),
      "--comm-id",      std::to_string(rng())};
  if (o.verbose) common.push_back("--verbose");
  auto argv_for = [&](const char* role) {
    std::vector<std::string> argv{"dualpath-plugin-bench", "--role", role};
    argv.insert(argv.end(), common.begin(), common.end());
    if (!o.pin.empty()) {
      argv.push_back("--cpu");
      argv.push_back(std::to_string(o.pin[std::string_view(role) == "rank0" ? 0 : 1]));
    }
    return argv;
  };
  Child rank0 = spawn("rank0", "/proc/self/exe", false, argv_for("rank0"), env,
                      {{sv[0], kCtlFd}, {result_fd, kResultFd}});
  Child peer = spawn("peer", "/proc/self/exe", false, argv_for("peer"), env, {{sv[1], kCtlFd}});
  ::close(sv[0]);
  ::close(sv[1]);  // a rank that dies closes its end: the other sees EOF at once
  const std::int64_t deadline = nowNs() + static_cast<std::int64_t>(o.run_timeout_s * 1e9);
  while (!rank0.exited || !peer.exited) {
    pollfd p[2] = {{rank0.exited ? -1 : rank0.pidfd, POLLIN, 0},
                   {peer.exited ? -1 : peer.pidfd, POLLIN, 0}};
    const int r = ::poll(p, 2, remainingMs(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;  // run timeout
    if ((p[0].revents & POLLIN) != 0) reap(rank0);
    if ((p[1].revents & POLLIN) != 0) reap(peer);
    // One rank failed: give the other a bounded moment to report, then stop it.
    const bool failed = (rank0.exited && !succeeded(rank0)) || (peer.exited && !succeeded(peer));
    if (failed) {
      const std::int64_t grace = nowNs() + 5'000'000'000;
      waitExit(rank0, grace);
      waitExit(peer, grace);
      break;
    }
  }
  const bool timed_out = !rank0.exited || !peer.exited;
  killChild(rank0);
  killChild(peer);
  const std::string out0 = readWholeFd(rank0.out) + readWholeFd(rank0.err);
  const std::string out1 = readWholeFd(peer.out) + readWholeFd(peer.err);
  if (o.verbose) std::fprintf(stderr, "--- rank0\n%s--- peer\n%s", out0.c_str(), out1.c_str());
  if (timed_out || !succeeded(rank0) || !succeeded(peer)) {
    run.error = fmt::format("plugin ranks{}: rank0 {}, peer {}\n  rank0 output:\n{}  peer output:\n{}",
                            timed_out ? fmt::format(" timed out after {} s", o.run_timeout_s) : "",
                            describeExit(rank0), describeExit(peer), tail(out0, 15),
                            tail(out1, 15));
  } else {
    const std::string text = readWholeFd(result_fd);
    try {
      run.result = Json::parse(text);
      run.ok = true;
    } catch (const std::exception& e) {
      run.error = fmt::format("rank0 result is not JSON ({}): '{}'", e.what(), text);
    }
  }
  closeChild(rank0);
  closeChild(peer);
  ::close(result_fd);
  return run;
}

// --------------------------------------------------------------------------- report

struct Row {
  std::string transport;
  std::string metric;  // "bandwidth", "latency p50", "latency mean"
  std::size_t size = 0;
  std::string unit;  // "GB/s" or "us"
  bool is_bandwidth = true;
  std::vector<double> dualpath;
  std::vector<double> perftest;
  std::vector<std::string> errors;
};

std::string commandLine(int argc, char** argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.find_first_of(" \t'\"$") != std::string::npos) a = "'" + a + "'";
    out += (i > 0 ? " " : "") + a;
  }
  return out;
}

bool onPath(const std::string& exe) {
  if (exe.find('/') != std::string::npos) return ::access(exe.c_str(), X_OK) == 0;
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "");
  for (std::string d; std::getline(dirs, d, ':');) {
    if (::access((d + "/" + exe).c_str(), X_OK) == 0) return true;
  }
  return false;
}

// Runs a short helper program and returns its stdout ("" when it cannot run).
std::string outputOf(const std::vector<std::string>& argv) {
  if (argv.empty() || !onPath(argv.front())) return "";
  Child c = spawn("probe", argv.front(), true, argv, childEnv({}), {});
  waitExit(c, nowNs() + 10'000'000'000);
  killChild(c);
  std::string out = readWholeFd(c.out);
  closeChild(c);
  return out;
}

std::string ucxVersion() {
  const std::string out = outputOf({"ucx_info", "-v"});
  const auto pos = out.find("Version ");
  if (pos == std::string::npos) return "unknown";
  return out.substr(pos + 8, out.find('\n', pos) - pos - 8);
}

std::string defaultPlugin() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const std::filesystem::path candidate = exe.parent_path() / ".." / "lib" / kPluginFile;
    if (std::filesystem::exists(candidate, ec)) {
      return std::filesystem::weakly_canonical(candidate, ec).string();
    }
  }
  return kPluginFile;  // dlopen searches LD_LIBRARY_PATH, as it does for NCCL
}

int runDriver(const Options& in, int argc, char** argv) {
  Options o = in;
  if (o.plugin.empty()) o.plugin = defaultPlugin();
  if (o.sizes_text.size() != o.windows.size()) {
    fail(fmt::format("--sizes has {} entries but --windows has {}", o.sizes_text.size(),
                     o.windows.size()));
  }
  for (int w : o.windows) {
    if (w < 1 || w > abi::kMaxRequests) {
      fail(fmt::format("--windows: {} is outside 1..{} (NCCL's requests in flight per comm)", w,
                       abi::kMaxRequests));
    }
  }
  const std::size_t bw_bytes = parseBytes(o.bw_bytes_text);
  o.sizes.clear();
  o.bw_msgs.clear();
  o.bw_warmup.clear();
  for (std::size_t i = 0; i < o.sizes_text.size(); ++i) {
    const std::size_t s = parseBytes(o.sizes_text[i]);
    if (s < 8 || s > (std::size_t{1} << 30)) fail(fmt::format("size {} outside 8 B..1 GiB", s));
    const long n = o.iters > 0 ? o.iters : std::max<long>(static_cast<long>(bw_bytes / s), 16);
    o.sizes.push_back(s);
    o.bw_msgs.push_back(n);
    o.bw_warmup.push_back(std::max<long>(n / 10, o.windows[i]));
  }
  if (o.iters > 0) o.lat_iters = o.iters;
  o.lat_warmup = std::max<long>(o.lat_iters / 10, 10);
  // Only CPUs this process may run on: a cpuset or taskset narrows the machine.
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (::sched_getaffinity(0, sizeof(allowed), &allowed) != 0) {
    fail(fmt::format("sched_getaffinity: {}", std::strerror(errno)));
  }
  std::vector<int> allowed_cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &allowed)) allowed_cpus.push_back(cpu);
  }
  if (o.no_pin) {
    o.pin.clear();
  } else if (o.pin.empty() && allowed_cpus.size() >= 2) {
    o.pin = {allowed_cpus[0], allowed_cpus[1]};
  }
  for (int cpu : o.pin) {
    if (cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &allowed)) {
      fail(fmt::format("--pin {}: CPU {} is not one this process may use ({}); use --no-pin to "
                       "leave placement to the scheduler",
                       joinList(o.pin), cpu, joinList(allowed_cpus)));
    }
  }

  struct Transport {
    std::string name;
    std::string tls;
    std::vector<std::string> extra;
  };
  std::vector<Transport> transports;
  if (o.transport == "tcp" || o.transport == "both") {
    transports.push_back({"tcp", o.tls_tcp, o.env_tcp});
  }
  if (o.transport == "shm" || o.transport == "both") {
    transports.push_back({"shm", o.tls_shm, o.env_shm});
  }

  const bool have_perftest = onPath(o.perftest);
  utsname un{};
  ::uname(&un);
  const std::string ucx = ucxVersion();
  const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);

  std::vector<Row> rows;
  bool plugin_failed = false;
  std::vector<std::string> failures;
  for (const Transport& t : transports) {
    const std::string& name = t.name;
    std::vector<std::pair<std::string, std::string>> set{
        {"UCX_TLS", t.tls}, {"UCX_NET_DEVICES", "lo"}, {"DUALPATH_NET_DEVICES", "lo"}};
    for (const std::string& kv : t.extra) {
      if (kv.empty()) continue;  // --env-shm '' clears the default
      const auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) fail(fmt::format("--env-*: '{}' is not KEY=VALUE", kv));
      set.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
    }
    const auto env = childEnv(set);
    const std::size_t first = rows.size();
    for (std::size_t i = 0; i < o.sizes.size(); ++i) {
      rows.push_back(Row{name, "bandwidth", o.sizes[i], "GB/s", true, {}, {}, {}});
    }
    rows.push_back(Row{name, "latency p50", 8, "us", false, {}, {}, {}});
    rows.push_back(Row{name, "latency mean", 8, "us", false, {}, {}, {}});
    for (int rep = 0; rep < o.reps; ++rep) {
      if (!o.json) {
        std::fprintf(stderr, "[%s] repetition %d/%d: ucx_perftest ...", name.c_str(), rep + 1,
                     o.reps);
      }
      // Reference first, then the plugin: (reference, plugin, reference, plugin ...).
      if (have_perftest) {
        for (std::size_t i = 0; i < o.sizes.size(); ++i) {
          PerftestResult r = runPerftest(o, env, "tag_bw", o.sizes[i], o.bw_msgs[i], o.bw_warmup[i]);
          if (r.ok) {
            rows[first + i].perftest.push_back(r.bw_gbps);
          } else {
            rows[first + i].errors.push_back(r.error);
          }
        }
        PerftestResult lat = runPerftest(o, env, "tag_lat", 8, o.lat_iters, o.lat_warmup);
        if (lat.ok) {
          rows[first + o.sizes.size()].perftest.push_back(lat.typical_us);
          rows[first + o.sizes.size() + 1].perftest.push_back(lat.average_us);
        } else {
          rows[first + o.sizes.size()].errors.push_back(lat.error);
        }
      }
      if (!o.json) std::fprintf(stderr, " plugin ...");
      PluginRun p = runPluginPair(o, env);
      if (!p.ok) {
        plugin_failed = true;
        failures.push_back(fmt::format("[{}] repetition {}: {}", name, rep + 1, p.error));
        if (!o.json) std::fprintf(stderr, " FAILED\n");
        break;  // a misbehaving plugin is reported, not measured again
      }
      const Json& bw = p.result["bandwidth"];
      for (std::size_t i = 0; i < o.sizes.size() && i < bw.size(); ++i) {
        rows[first + i].dualpath.push_back(bw[i]["gbps"].get<double>());
      }
      rows[first + o.sizes.size()].dualpath.push_back(p.result["latency"]["p50_us"].get<double>());
      rows[first + o.sizes.size() + 1].dualpath.push_back(
          p.result["latency"]["mean_us"].get<double>());
      if (!o.json) std::fprintf(stderr, " done\n");
    }
  }

  // ---- table and JSON
  Json report;
  report["command"] = commandLine(argc, argv);
  report["machine"] = {{"cpus", cpus},
                       {"kernel", un.release},
                       {"ucx", ucx},
                       {"plugin", o.plugin}};
  report["config"] = {{"sizes", o.sizes},         {"windows", o.windows},
                      {"bw_messages", o.bw_msgs}, {"bw_warmup", o.bw_warmup},
                      {"lat_iterations", o.lat_iters}, {"lat_warmup", o.lat_warmup},
                      {"lat_batches", o.batches}, {"reps", o.reps},
                      {"buffers", o.buffers},     {"memory", o.memory},
                      {"pin", o.pin},
                      {"ucx_tls_tcp", o.tls_tcp},
                      {"ucx_tls_shm", o.tls_shm}, {"env_tcp", o.env_tcp},
                      {"env_shm", o.env_shm},     {"perftest_window", o.perftest_window}};
  Json results = Json::array();
  int met = 0;
  int missed = 0;
  int unknown = 0;
  std::string table;
  table += fmt::format("{:<9} {:<13} {:>7} {:>12} {:>13} {:>12} {:>10}  {}\n", "transport",
                       "metric", "size", "dualpath", "ucx_perftest", "ratio/delta", "target",
                       "result");
  for (const Row& row : rows) {
    const bool have = !row.dualpath.empty() && !row.perftest.empty();
    const double d = median(row.dualpath);
    const double p = median(row.perftest);
    std::string cmp = "n/a";
    std::string target;
    std::string verdict = "n/a";
    Json j;
    j["transport"] = row.transport;
    j["metric"] = row.metric;
    j["size"] = row.size;
    j["unit"] = row.unit;
    j["dualpath_runs"] = row.dualpath;
    j["ucx_perftest_runs"] = row.perftest;
    if (!row.dualpath.empty()) j["dualpath"] = d;
    if (!row.perftest.empty()) j["ucx_perftest"] = p;
    if (row.is_bandwidth) {
      target = fmt::format(">= {:.2f}", kBwTarget);
      j["target_ratio"] = kBwTarget;
      if (have && p > 0) {
        const double ratio = d / p;
        cmp = fmt::format("{:.2f}", ratio);
        verdict = ratio >= kBwTarget ? "pass" : "FAIL";
        j["ratio"] = ratio;
      }
    } else {
      target = fmt::format("<= +{:.1f} us", kLatTargetUs);
      j["target_delta_us"] = kLatTargetUs;
      if (have) {
        const double delta = d - p;
        cmp = fmt::format("{:+.2f} us", delta);
        verdict = delta <= kLatTargetUs ? "pass" : "FAIL";
        j["delta_us"] = delta;
      }
    }
    if (verdict == "pass") {
      ++met;
    } else if (verdict == "FAIL") {
      ++missed;
    } else {
      ++unknown;
    }
    j["result"] = verdict;
    if (!row.errors.empty()) j["errors"] = row.errors;
    results.push_back(j);
    const std::string dv = row.dualpath.empty() ? "n/a" : fmt::format("{:.3f} {}", d, row.unit);
    const std::string pv = row.perftest.empty() ? "n/a" : fmt::format("{:.3f} {}", p, row.unit);
    table += fmt::format("{:<9} {:<13} {:>7} {:>12} {:>13} {:>12} {:>10}  {}\n", row.transport,
                         row.metric, sizeLabel(row.size), dv, pv, cmp, target, verdict);
  }
  const std::string verdict =
      plugin_failed ? "plugin FAILED (see errors)"
                    : fmt::format("{} of {} targets met, {} missed, {} without a reference", met,
                                  met + missed + unknown, missed, unknown);
  report["results"] = results;
  report["verdict"] = verdict;
  report["plugin_failures"] = failures;

  std::string text;
  text += fmt::format("DualPath NCCL net plugin (ncclNetPlugin_v11) vs ucx_perftest, loopback\n");
  text += fmt::format("machine: {} CPUs, Linux {}, UCX {}; plugin {}\n", cpus, un.release, ucx,
                      o.plugin);
  text += fmt::format(
      "config: sizes {} windows {} ({} buffers, {} memory), {} messages (+{} warm-up); latency {} "
      "x 8 B ping-pong (+{}), {} batches; {} repetition(s), medians shown; {}\n",
      joinList(o.sizes), joinList(o.windows), o.buffers, o.memory, joinList(o.bw_msgs),
      joinList(o.bw_warmup), o.lat_iters, o.lat_warmup, o.batches, o.reps,
      o.pin.empty() ? std::string("unpinned")
                    : fmt::format("pinned: rank 0 and the perftest client on CPU {}, the peer and "
                                  "the perftest server on CPU {}",
                                  o.pin[0], o.pin[1]));
  text += fmt::format(
      "env (both plugin ranks and ucx_perftest; plus UCX_NET_DEVICES=lo DUALPATH_NET_DEVICES=lo): "
      "tcp: UCX_TLS={} {}; shm: UCX_TLS={} {}\n",
      o.tls_tcp, fmt::join(o.env_tcp, " "), o.tls_shm, fmt::join(o.env_shm, " "));
  text += "GB/s = 1e9 B/s (ucx_perftest's MB/s are MiB/s, converted); latency one way, us\n\n";
  text += table;
  text += "\nper-repetition values (dualpath | ucx_perftest):\n";
  for (const Row& row : rows) {
    std::string dv, pv;
    for (double v : row.dualpath) dv += fmt::format(" {:.3f}", v);
    for (double v : row.perftest) pv += fmt::format(" {:.3f}", v);
    text += fmt::format("  {:<4} {:<13} {:>7}:{} |{}\n", row.transport, row.metric,
                        sizeLabel(row.size), dv, pv);
  }
  for (const Row& row : rows) {
    for (const auto& e : row.errors) text += fmt::format("reference error: {}\n", e);
  }
  for (const auto& f : failures) text += fmt::format("PLUGIN FAILURE: {}\n", f);
  if (!have_perftest) text += fmt::format("note: '{}' not found: no reference\n", o.perftest);
  text += fmt::format("verdict: {}\n", verdict);

  if (o.json) {
    std::printf("%s\n", report.dump(2).c_str());
  } else {
    std::printf("%s", text.c_str());
  }
  if (!o.json_out.empty()) {
    std::ofstream out(o.json_out);
    out << report.dump(2) << "\n";
    if (!out) fail(fmt::format("cannot write {}", o.json_out));
  }
  // A missed target is a measurement, not an error; a plugin that fails to run is.
  return plugin_failed ? 1 : 0;
}

}  // namespace
}  // namespace dualpath::bench

int main(int argc, char** argv) {
  using namespace dualpath::bench;  // NOLINT(google-build-using-namespace)
  Options o;
  CLI::App app{
      "DualPath NCCL net plugin vs ucx_perftest on loopback: bandwidth (1 MiB, 16 MiB) and "
      "8-byte ping-pong latency over UCX tcp and shm, measured in the same run."};
  app.add_option("--plugin", o.plugin,
                 "plugin to dlopen (default: ../lib/libnccl-net-dualpath.so next to this binary, "
                 "else libnccl-net-dualpath.so through LD_LIBRARY_PATH)");
  app.add_option("--transport", o.transport, "tcp, shm or both")
      ->check(CLI::IsMember({"tcp", "shm", "both"}));
  app.add_option("--sizes", o.sizes_text, "bandwidth message sizes")->delimiter(',');
  app.add_option("--windows", o.windows,
                 "requests in flight per size (NCCL allows 32 per comm)")
      ->delimiter(',');
  app.add_option("--iters", o.iters,
                 "messages per bandwidth measurement and latency round trips (overrides "
                 "--bw-bytes and --lat-iters; for quick runs)");
  app.add_option("--bw-bytes", o.bw_bytes_text, "bytes per bandwidth measurement (default 2GiB)");
  app.add_option("--lat-iters", o.lat_iters, "latency round trips per measurement");
  app.add_option("--batches", o.batches, "latency batches (their median mean is in --json)");
  app.add_option("--reps", o.reps, "repetitions, reference and plugin interleaved")
      ->check(CLI::Range(1, 1000));
  app.add_option("--buffers", o.buffers,
                 "distinct: one buffer per window slot (NCCL-like); shared: one buffer for all "
                 "messages (as ucx_perftest)")
      ->check(CLI::IsMember({"distinct", "shared"}));
  app.add_option("--memory", o.memory,
                 "heap: private pages (aligned_alloc); sysv: System V shared memory, as "
                 "ucx_perftest's buffers (UCX allocates them so)")
      ->check(CLI::IsMember({"heap", "sysv"}));
  app.add_option("--pin", o.pin,
                 "CPUs for rank 0 and ucx_perftest's client, and for the peer and its server "
                 "(ucx_perftest -c); both programs are placed alike (default: the first two CPUs "
                 "this process may use)")
      ->delimiter(',')
      ->expected(2);
  app.add_flag("--no-pin", o.no_pin, "leave process placement to the scheduler");
  app.add_option("--ucx-tls-tcp", o.tls_tcp, "UCX_TLS for --transport tcp");
  app.add_option("--ucx-tls-shm", o.tls_shm,
                 "UCX_TLS for --transport shm (the plugin connects over UCX's client-server "
                 "path on tcp and needs a network device, so tcp stays in the list; its data "
                 "endpoint then gets shared-memory lanes: check with UCX_LOG_LEVEL=info "
                 "--verbose, ep_cfg lines)");
  app.add_option("--env-tcp", o.env_tcp, "extra KEY=VALUE for --transport tcp (all processes)")
      ->delimiter(',');
  app.add_option("--env-shm", o.env_shm, "extra KEY=VALUE for --transport shm (all processes)")
      ->delimiter(',');
  app.add_option("--perftest", o.perftest, "ucx_perftest binary");
  app.add_option("--perftest-window", o.perftest_window,
                 "pass -O N to ucx_perftest tag_bw (0: its default, 32)");
  app.add_option("--wait-timeout", o.wait_timeout_s, "seconds any single wait may take");
  app.add_option("--run-timeout", o.run_timeout_s, "seconds one process pair may take");
  app.add_flag("--json", o.json, "print JSON instead of the table");
  app.add_option("--json-out", o.json_out, "also write the JSON report to this file");
  app.add_flag("--verbose", o.verbose, "show child output and plugin INFO logs");
  // Hidden: the driver execs itself with these.
  app.add_option("--role", o.role)->group("")->check(CLI::IsMember({"driver", "rank0", "peer"}));
  app.add_option("--comm-id", o.comm_id)->group("");
  app.add_option("--sizes-bytes", o.sizes)->group("")->delimiter(',');
  app.add_option("--bw-msgs", o.bw_msgs)->group("")->delimiter(',');
  app.add_option("--bw-warmup", o.bw_warmup)->group("")->delimiter(',');
  app.add_option("--lat-warmup", o.lat_warmup)->group("");
  app.add_option("--cpu", o.cpu)->group("");
  CLI11_PARSE(app, argc, argv);

  try {
    if (o.role == "driver") return runDriver(o, argc, argv);
    return runRank(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dualpath-plugin-bench: %s\n", e.what());
    return 2;
  }
}
