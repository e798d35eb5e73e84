// dualpath-nccl-integration: two NCCL communicators in one job, told apart by
// ncclConfig_t.trafficClass, as an inference engine would create them.
//
//   collective communicator  trafficClass 0  AllToAll (grouped ncclSend/ncclRecv)
//   KV communicator          trafficClass 1  send/recv to the next rank, receive
//                                            from the previous one
//
// With NCCL_NET_PLUGIN=dualpath, NCCL hands each communicator's trafficClass to
// libnccl-net-dualpath.so, which selects a QoS class through the policy
// (DUALPATH_QOS_POLICY, or the built-in one): in the shipped policies 0 (and
// unset) selects "collective" (high priority) and 1 selects "kv" (low).
//
// One process per rank, no MPI. Rank 0 writes the two ncclUniqueIds to a file
// (temporary file + rename, so a reader never sees half of it); the other ranks
// wait for that file. Every wait is bounded: communicators are non-blocking
// (config.blocking = 0) and polled against --timeout-sec, and a watchdog ends
// the process after --deadline-sec whatever is blocking.
//
// Every element received is checked; exit status 0 only when every check passes
// and no CUDA or NCCL call failed. Compiled on our CI machines (no GPU), run on
// GPU machines only: see README.md next to this file.

#include <cuda_runtime.h>
#include <nccl.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if !defined(NCCL_VERSION_CODE) || NCCL_VERSION_CODE < NCCL_VERSION(2, 24, 0)
#error "dualpath-nccl-integration needs NCCL >= 2.24 (ncclConfig_t.trafficClass)"
#endif

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kExitFailure = 1;   // a check failed, or a CUDA/NCCL/system call did
constexpr int kExitUsage = 2;     // bad command line or environment
constexpr int kExitWatchdog = 124;  // --deadline-sec expired (as timeout(1) does)

// ---------------------------------------------------------------------------
// Process state used by the failure path.

struct Globals {
  int rank = -1;
  std::string idFile;         // rank 0 removes it when it leaves
  bool wroteIdFile = false;
  std::vector<ncclComm_t> comms;  // aborted on a fatal error
};
Globals g;

void logLine(FILE* out, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void logLine(FILE* out, const char* fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (g.rank >= 0) {
    std::fprintf(out, "[rank %d] %s\n", g.rank, msg);
  } else {
    std::fprintf(out, "[rank ?] %s\n", msg);
  }
  std::fflush(out);
}

#define LOG(...) logLine(stdout, __VA_ARGS__)

// Abort every communicator (ncclCommAbort does not wait for the peer), remove
// the id file if we wrote it, exit. The watchdog still bounds ncclCommAbort.
[[noreturn]] void fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] void fatal(const char* fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  logLine(stderr, "FATAL: %s", msg);
  for (ncclComm_t comm : g.comms) {
    if (comm != nullptr) (void)ncclCommAbort(comm);
  }
  g.comms.clear();
  if (g.wroteIdFile) (void)::unlink(g.idFile.c_str());
  logLine(stderr, "FAILED");
  std::exit(kExitFailure);
}

// Every CUDA and NCCL call goes through one of these. In non-blocking mode any
// NCCL call may return ncclInProgress; the caller then waits with waitComm().
#define CUDA_CHECK(call)                                                        \
  do {                                                                          \
    cudaError_t e_ = (call);                                                    \
    if (e_ != cudaSuccess) {                                                    \
      fatal("%s:%d: %s failed: %s: %s", __FILE__, __LINE__, #call,              \
            cudaGetErrorName(e_), cudaGetErrorString(e_));                      \
    }                                                                           \
  } while (0)

#define NCCL_CHECK(call)                                                        \
  do {                                                                          \
    ncclResult_t r_ = (call);                                                   \
    if (r_ != ncclSuccess && r_ != ncclInProgress) {                            \
      fatal("%s:%d: %s failed: %s (%d); last NCCL error: %s", __FILE__,         \
            __LINE__, #call, ncclGetErrorString(r_), static_cast<int>(r_),      \
            ncclGetLastError(nullptr));                                         \
    }                                                                           \
  } while (0)

// ---------------------------------------------------------------------------
// Options: flags first, then the launcher-style environment (RANK, WORLD_SIZE).

struct Options {
  int rank = -1;
  int worldSize = -1;
  std::string idFile;
  size_t count = size_t{1} << 18;    // AllToAll elements per peer (uint64): 2 MiB
  size_t kvCount = size_t{1} << 20;  // KV elements (uint64): 8 MiB
  int timeoutSec = 60;               // bound on each single wait
  int deadlineSec = 300;             // bound on the whole run (watchdog)
};

void usage(FILE* out) {
  std::fprintf(out,
      "usage: dualpath-nccl-integration --id-file PATH [--rank R] [--world-size N]\n"
      "                                 [--count N] [--kv-count N]\n"
      "                                 [--timeout-sec S] [--deadline-sec S]\n"
      "\n"
      "  --id-file PATH     file through which rank 0 hands the ncclUniqueIds to the\n"
      "                     other ranks (same path for every rank, on a file system\n"
      "                     they all see; rank 0 replaces a stale one and removes it\n"
      "                     once the communicators are up)\n"
      "  --rank R           this process's rank (default: $RANK)\n"
      "  --world-size N     number of ranks, 2 to 64 (default: $WORLD_SIZE, else 2)\n"
      "  --count N          AllToAll elements (uint64) per peer (default 262144)\n"
      "  --kv-count N       KV send/recv elements (uint64) (default 1048576)\n"
      "  --timeout-sec S    bound on each wait: id file, communicator init, each\n"
      "                     transfer, finalize (default 60)\n"
      "  --deadline-sec S   the whole run; a watchdog exits with status 124 after it\n"
      "                     (default 300)\n"
      "\n"
      "Exit status: 0 all checks passed; 1 a check or a call failed; 2 usage;\n"
      "124 deadline expired.\n");
}

[[noreturn]] void usageError(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] void usageError(const char* fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "dualpath-nccl-integration: %s (see --help)\n", msg);
  std::exit(kExitUsage);
}

long long parseInteger(const char* what, const char* text, long long lo, long long hi) {
  if (text == nullptr || *text == '\0') usageError("%s: empty value", what);
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0') {
    usageError("%s='%s': expected an integer", what, text);
  }
  if (v < lo || v > hi) {
    usageError("%s='%s': expected %lld to %lld", what, text, lo, hi);
  }
  return v;
}

Options parseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      usage(stdout);
      std::exit(0);
    }
    std::string name = arg;
    std::string value;
    bool haveValue = false;
    if (const size_t eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      haveValue = true;
    }
    auto next = [&]() -> std::string {
      if (haveValue) return value;
      if (i + 1 >= argc) usageError("%s needs a value", name.c_str());
      return argv[++i];
    };
    if (name == "--id-file") {
      o.idFile = next();
      if (o.idFile.empty()) usageError("--id-file: empty path");
    } else if (name == "--rank") {
      o.rank = static_cast<int>(parseInteger("--rank", next().c_str(), 0, 63));
    } else if (name == "--world-size") {
      o.worldSize = static_cast<int>(parseInteger("--world-size", next().c_str(), 2, 64));
    } else if (name == "--count") {
      o.count = static_cast<size_t>(parseInteger("--count", next().c_str(), 1, 1LL << 30));
    } else if (name == "--kv-count") {
      o.kvCount = static_cast<size_t>(parseInteger("--kv-count", next().c_str(), 1, 1LL << 32));
    } else if (name == "--timeout-sec") {
      o.timeoutSec = static_cast<int>(parseInteger("--timeout-sec", next().c_str(), 1, 86400));
    } else if (name == "--deadline-sec") {
      o.deadlineSec = static_cast<int>(parseInteger("--deadline-sec", next().c_str(), 1, 86400));
    } else {
      usageError("unknown argument '%s'", arg.c_str());
    }
  }
  if (o.rank < 0) {
    const char* env = std::getenv("RANK");
    if (env == nullptr) usageError("no rank: pass --rank R or set RANK");
    o.rank = static_cast<int>(parseInteger("RANK", env, 0, 63));
  }
  if (o.worldSize < 0) {
    const char* env = std::getenv("WORLD_SIZE");
    o.worldSize = env != nullptr ? static_cast<int>(parseInteger("WORLD_SIZE", env, 2, 64)) : 2;
  }
  if (o.rank >= o.worldSize) {
    usageError("rank %d is not below the world size %d", o.rank, o.worldSize);
  }
  if (o.idFile.empty()) usageError("--id-file PATH is required");
  if (o.deadlineSec < o.timeoutSec) {
    usageError("--deadline-sec %d is shorter than --timeout-sec %d", o.deadlineSec, o.timeoutSec);
  }
  return o;
}

// ---------------------------------------------------------------------------
// Watchdog: whatever blocks (a CUDA call, ncclCommAbort, a peer that vanished),
// the process ends by --deadline-sec.

class Watchdog {
 public:
  explicit Watchdog(int seconds) : thread_([this, seconds] { run(seconds); }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  void run(int seconds) {
    std::unique_lock<std::mutex> lock(mu_);
    if (cv_.wait_for(lock, std::chrono::seconds(seconds), [this] { return done_; })) return;
    logLine(stderr, "FATAL: --deadline-sec %d expired; exiting without finalizing the communicators", seconds);
    if (g.wroteIdFile) (void)::unlink(g.idFile.c_str());
    std::_Exit(kExitWatchdog);
  }

  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// ---------------------------------------------------------------------------
// The ncclUniqueId file: written once by rank 0, atomically.

constexpr int kNumComms = 2;
constexpr char kIdMagic[8] = {'D', 'P', 'N', 'C', 'C', 'L', 'I', 'D'};

struct IdFile {
  char magic[8];
  uint32_t version;
  uint32_t worldSize;
  ncclUniqueId ids[kNumComms];  // [0] collective, [1] KV
};

bool writeAll(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

void publishIds(const std::string& path, const IdFile& content) {
  // A file left by an earlier run would hand rank 1 dead ids; remove it first.
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    fatal("cannot remove the stale id file %s: %s", path.c_str(), std::strerror(errno));
  }
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) fatal("cannot create %s: %s", tmp.c_str(), std::strerror(errno));
  const bool ok = writeAll(fd, &content, sizeof content) && ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) {
    (void)::unlink(tmp.c_str());
    fatal("cannot write %s: %s", tmp.c_str(), std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int renameErr = errno;
    (void)::unlink(tmp.c_str());
    fatal("cannot rename %s to %s: %s", tmp.c_str(), path.c_str(), std::strerror(renameErr));
  }
  g.wroteIdFile = true;
}

IdFile awaitIds(const std::string& path, int worldSize, int timeoutSec) {
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + std::chrono::seconds(timeoutSec);
  for (;;) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      IdFile content{};
      const ssize_t n = ::read(fd, &content, sizeof content);
      char extra = 0;
      const ssize_t more = n == static_cast<ssize_t>(sizeof content) ? ::read(fd, &extra, 1) : 0;
      ::close(fd);
      // Rank 0 renames a complete file into place, so anything else here is
      // not ours: fail rather than guess.
      if (n != static_cast<ssize_t>(sizeof content) || more != 0 ||
          std::memcmp(content.magic, kIdMagic, sizeof kIdMagic) != 0 || content.version != 1) {
        fatal("%s is not an id file written by rank 0 of dualpath-nccl-integration "
              "(expected %zu bytes starting with DPNCCLID); remove it and start rank 0 again",
              path.c_str(), sizeof content);
      }
      if (static_cast<int>(content.worldSize) != worldSize) {
        fatal("%s was written for world size %u, this rank was started with %d",
              path.c_str(), content.worldSize, worldSize);
      }
      LOG("read the NCCL unique ids from %s after %.1f s", path.c_str(), secondsSince(start));
      return content;
    }
    if (errno != ENOENT && errno != EINTR) {
      fatal("cannot open %s: %s", path.c_str(), std::strerror(errno));
    }
    if (Clock::now() >= deadline) {
      fatal("timed out after %d s waiting for rank 0 to write the NCCL unique ids to %s "
            "(is rank 0 running, with the same --id-file, on a file system both ranks see? "
            "--timeout-sec changes the bound)",
            timeoutSec, path.c_str());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// ---------------------------------------------------------------------------
// Bounded waits on non-blocking communicators and on the stream.

void checkAsyncErrors(const char* what) {
  for (ncclComm_t comm : g.comms) {
    if (comm == nullptr) continue;
    ncclResult_t async = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(comm, &async));
    if (async != ncclSuccess && async != ncclInProgress) {
      fatal("%s: a communicator reported an asynchronous error: %s (%d); last NCCL error: %s",
            what, ncclGetErrorString(async), static_cast<int>(async), ncclGetLastError(comm));
    }
  }
}

// Waits until `comm` has no operation in progress (init, group end, finalize).
void waitComm(ncclComm_t comm, const char* what, int timeoutSec) {
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + std::chrono::seconds(timeoutSec);
  for (;;) {
    ncclResult_t state = ncclInProgress;
    NCCL_CHECK(ncclCommGetAsyncError(comm, &state));
    if (state == ncclSuccess) return;
    if (state != ncclInProgress) {
      fatal("%s failed: %s (%d); last NCCL error: %s", what, ncclGetErrorString(state),
            static_cast<int>(state), ncclGetLastError(comm));
    }
    if (Clock::now() >= deadline) {
      fatal("%s did not complete within %d s (is every rank running? NCCL_DEBUG=INFO shows "
            "where it stops)", what, timeoutSec);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// Waits for the GPU work on `stream` while watching every communicator.
void waitStream(cudaStream_t stream, const char* what, int timeoutSec) {
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + std::chrono::seconds(timeoutSec);
  for (;;) {
    const cudaError_t e = cudaStreamQuery(stream);
    if (e == cudaSuccess) return;
    if (e != cudaErrorNotReady) {
      fatal("%s: cudaStreamQuery failed: %s: %s", what, cudaGetErrorName(e), cudaGetErrorString(e));
    }
    checkAsyncErrors(what);
    if (Clock::now() >= deadline) {
      fatal("%s did not complete on the GPU within %d s (a peer stopped, or the network "
            "does not progress; NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=NET shows the transport)",
            what, timeoutSec);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// ---------------------------------------------------------------------------
// Data patterns. Each element says who sent it, to whom, in which transfer and
// at which index: tag (8 bits) | source rank (8) | destination rank (8) | index
// (40). Tags are 'A' (AllToAll) and 'K' (KV), so the top byte is never 0xFF and
// the receive-buffer fill (all ones) never passes for data.

constexpr uint64_t kTagAllToAll = 'A';
constexpr uint64_t kTagKv = 'K';
constexpr unsigned char kUnwrittenByte = 0xFF;

__host__ __device__ inline uint64_t patternValue(uint64_t tag, uint64_t src, uint64_t dst,
                                                 uint64_t index) {
  return (tag << 56) | (src << 48) | (dst << 40) | (index & ((uint64_t{1} << 40) - 1));
}

__global__ void fillPattern(uint64_t* buf, size_t n, uint64_t tag, uint64_t src, uint64_t dst) {
  const size_t stride = static_cast<size_t>(blockDim.x) * gridDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    buf[i] = patternValue(tag, src, dst, i);
  }
}

void launchFill(uint64_t* buf, size_t n, uint64_t tag, int src, int dst, cudaStream_t stream) {
  constexpr unsigned kThreads = 256;
  const size_t blocksNeeded = (n + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(blocksNeeded < 1024 ? blocksNeeded : 1024);
  fillPattern<<<blocks, kThreads, 0, stream>>>(buf, n, tag, static_cast<uint64_t>(src),
                                               static_cast<uint64_t>(dst));
  CUDA_CHECK(cudaGetLastError());
}

// Compares `got` with the pattern; prints one PASS or FAIL line.
bool checkBlock(const char* name, const uint64_t* got, size_t n, uint64_t tag, int src, int dst) {
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t want = patternValue(tag, static_cast<uint64_t>(src), static_cast<uint64_t>(dst), i);
    if (got[i] == want) continue;
    if (bad < 4) {
      const uint64_t v = got[i];
      LOG("  %s: element %zu is 0x%016llx, expected 0x%016llx (it reads as tag '%c' "
          "from rank %u to rank %u, index %llu)",
          name, i, static_cast<unsigned long long>(v), static_cast<unsigned long long>(want),
          (v >> 56) >= 0x20 && (v >> 56) < 0x7F ? static_cast<char>(v >> 56) : '?',
          static_cast<unsigned>((v >> 48) & 0xFF), static_cast<unsigned>((v >> 40) & 0xFF),
          static_cast<unsigned long long>(v & ((uint64_t{1} << 40) - 1)));
    }
    ++bad;
  }
  if (bad == 0) {
    LOG("PASS %s: %zu elements", name, n);
    return true;
  }
  LOG("FAIL %s: %zu of %zu elements differ", name, bad, n);
  return false;
}

// ---------------------------------------------------------------------------

ncclComm_t initComm(const char* name, const ncclUniqueId& id, int trafficClass,
                    const Options& o) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every call returns at once; we poll with a bound
  config.trafficClass = trafficClass;
  config.commName = name;
  ncclComm_t comm = nullptr;
  const Clock::time_point start = Clock::now();
  NCCL_CHECK(ncclCommInitRankConfig(&comm, o.worldSize, id, o.rank, &config));
  if (comm == nullptr) fatal("ncclCommInitRankConfig(%s) returned no communicator", name);
  g.comms.push_back(comm);
  const std::string what = std::string("ncclCommInitRankConfig(") + name + ")";
  waitComm(comm, what.c_str(), o.timeoutSec);
  LOG("communicator '%s' up with trafficClass %d after %.1f s", name, trafficClass,
      secondsSince(start));
  return comm;
}

bool checkComm(const char* name, ncclComm_t comm, const Options& o, int device) {
  int count = -1, rank = -1, cuDevice = -1;
  NCCL_CHECK(ncclCommCount(comm, &count));
  NCCL_CHECK(ncclCommUserRank(comm, &rank));
  NCCL_CHECK(ncclCommCuDevice(comm, &cuDevice));
  const bool ok = count == o.worldSize && rank == o.rank && cuDevice == device;
  LOG("%s communicator '%s': rank %d of %d on device %d (expected rank %d of %d on device %d)",
      ok ? "PASS" : "FAIL", name, rank, count, cuDevice, o.rank, o.worldSize, device);
  return ok;
}

void destroyComm(ncclComm_t& comm, const char* name, int timeoutSec) {
  NCCL_CHECK(ncclCommFinalize(comm));
  const std::string what = std::string("ncclCommFinalize(") + name + ")";
  waitComm(comm, what.c_str(), timeoutSec);
  for (ncclComm_t& c : g.comms) {
    if (c == comm) c = nullptr;
  }
  NCCL_CHECK(ncclCommDestroy(comm));
  comm = nullptr;
}

const char* envOr(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parseOptions(argc, argv);
  g.rank = o.rank;
  g.idFile = o.idFile;
  Watchdog watchdog(o.deadlineSec);

  int ncclVersion = 0;
  NCCL_CHECK(ncclGetVersion(&ncclVersion));
  char host[256] = {};
  (void)::gethostname(host, sizeof host - 1);
  LOG("rank %d of %d, pid %d on %s, NCCL %d (built against %d)", o.rank, o.worldSize,
      static_cast<int>(::getpid()), host, ncclVersion, NCCL_VERSION_CODE);
  LOG("NCCL_NET_PLUGIN=%s NCCL_NET=%s NCCL_HOSTID=%s DUALPATH_QOS_POLICY=%s",
      envOr("NCCL_NET_PLUGIN", "(unset)"), envOr("NCCL_NET", "(unset)"),
      envOr("NCCL_HOSTID", "(unset)"), envOr("DUALPATH_QOS_POLICY", "(unset: built-in policy)"));

  // Two ranks may share one GPU: rank % deviceCount.
  int deviceCount = 0;
  CUDA_CHECK(cudaGetDeviceCount(&deviceCount));
  if (deviceCount < 1) fatal("no CUDA device visible (cudaGetDeviceCount returned 0)");
  const int device = o.rank % deviceCount;
  CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  LOG("device %d of %d: %s (compute capability %d.%d)", device, deviceCount, prop.name,
      prop.major, prop.minor);

  // Exchange the unique ids: one per communicator.
  IdFile ids{};
  if (o.rank == 0) {
    std::memcpy(ids.magic, kIdMagic, sizeof kIdMagic);
    ids.version = 1;
    ids.worldSize = static_cast<uint32_t>(o.worldSize);
    for (ncclUniqueId& id : ids.ids) NCCL_CHECK(ncclGetUniqueId(&id));
    publishIds(o.idFile, ids);
    LOG("wrote the NCCL unique ids to %s", o.idFile.c_str());
  } else {
    ids = awaitIds(o.idFile, o.worldSize, o.timeoutSec);
  }

  // Buffers and stream, before the communicators so their failures are simple.
  const size_t world = static_cast<size_t>(o.worldSize);
  const size_t a2aElems = o.count * world;
  uint64_t* a2aSend = nullptr;
  uint64_t* a2aRecv = nullptr;
  uint64_t* kvSend = nullptr;
  uint64_t* kvRecv = nullptr;
  CUDA_CHECK(cudaMalloc(&a2aSend, a2aElems * sizeof(uint64_t)));
  CUDA_CHECK(cudaMalloc(&a2aRecv, a2aElems * sizeof(uint64_t)));
  CUDA_CHECK(cudaMalloc(&kvSend, o.kvCount * sizeof(uint64_t)));
  CUDA_CHECK(cudaMalloc(&kvRecv, o.kvCount * sizeof(uint64_t)));
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  // The two communicators. trafficClass is the only thing telling them apart
  // to the net plugin: 0 -> "collective", 1 -> "kv" in the shipped policies.
  ncclComm_t collComm = initComm("collective", ids.ids[0], /*trafficClass=*/0, o);
  ncclComm_t kvComm = initComm("kv", ids.ids[1], /*trafficClass=*/1, o);
  // Every rank has joined both communicators, so every rank has read the file.
  if (g.wroteIdFile) {
    (void)::unlink(o.idFile.c_str());
    g.wroteIdFile = false;
  }

  bool allPassed = true;
  allPassed &= checkComm("collective", collComm, o, device);
  allPassed &= checkComm("kv", kvComm, o, device);

  // Fill: send buffers with the pattern, receive buffers with all ones.
  for (int peer = 0; peer < o.worldSize; ++peer) {
    launchFill(a2aSend + static_cast<size_t>(peer) * o.count, o.count, kTagAllToAll, o.rank, peer,
               stream);
  }
  const int kvTo = (o.rank + 1) % o.worldSize;
  const int kvFrom = (o.rank + o.worldSize - 1) % o.worldSize;
  launchFill(kvSend, o.kvCount, kTagKv, o.rank, kvTo, stream);
  CUDA_CHECK(cudaMemsetAsync(a2aRecv, kUnwrittenByte, a2aElems * sizeof(uint64_t), stream));
  CUDA_CHECK(cudaMemsetAsync(kvRecv, kUnwrittenByte, o.kvCount * sizeof(uint64_t), stream));
  waitStream(stream, "filling the buffers", o.timeoutSec);

  // AllToAll on the collective communicator: one send and one receive per peer
  // (itself included), fused in one group.
  {
    const Clock::time_point start = Clock::now();
    NCCL_CHECK(ncclGroupStart());
    for (int peer = 0; peer < o.worldSize; ++peer) {
      const size_t offset = static_cast<size_t>(peer) * o.count;
      NCCL_CHECK(ncclSend(a2aSend + offset, o.count, ncclUint64, peer, collComm, stream));
      NCCL_CHECK(ncclRecv(a2aRecv + offset, o.count, ncclUint64, peer, collComm, stream));
    }
    NCCL_CHECK(ncclGroupEnd());
    waitComm(collComm, "AllToAll ncclGroupEnd (collective)", o.timeoutSec);
    waitStream(stream, "AllToAll (collective)", o.timeoutSec);
    LOG("AllToAll on 'collective' done: %zu bytes to each of %d ranks in %.3f s",
        o.count * sizeof(uint64_t), o.worldSize, secondsSince(start));
  }

  // KV transfer on the KV communicator: send to the next rank, receive from the
  // previous one (for two ranks, both directions of one pair).
  {
    const Clock::time_point start = Clock::now();
    NCCL_CHECK(ncclGroupStart());
    NCCL_CHECK(ncclSend(kvSend, o.kvCount, ncclUint64, kvTo, kvComm, stream));
    NCCL_CHECK(ncclRecv(kvRecv, o.kvCount, ncclUint64, kvFrom, kvComm, stream));
    NCCL_CHECK(ncclGroupEnd());
    waitComm(kvComm, "KV ncclGroupEnd (kv)", o.timeoutSec);
    waitStream(stream, "KV send/recv (kv)", o.timeoutSec);
    LOG("KV send/recv on 'kv' done: %zu bytes to rank %d, from rank %d in %.3f s",
        o.kvCount * sizeof(uint64_t), kvTo, kvFrom, secondsSince(start));
  }

  // Copy back and check every element.
  std::vector<uint64_t> a2aHost(a2aElems);
  std::vector<uint64_t> kvHost(o.kvCount);
  CUDA_CHECK(cudaMemcpyAsync(a2aHost.data(), a2aRecv, a2aElems * sizeof(uint64_t),
                             cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaMemcpyAsync(kvHost.data(), kvRecv, o.kvCount * sizeof(uint64_t),
                             cudaMemcpyDeviceToHost, stream));
  waitStream(stream, "copying the results to the host", o.timeoutSec);

  for (int peer = 0; peer < o.worldSize; ++peer) {
    const std::string name = "AllToAll block from rank " + std::to_string(peer);
    allPassed &= checkBlock(name.c_str(), a2aHost.data() + static_cast<size_t>(peer) * o.count,
                            o.count, kTagAllToAll, peer, o.rank);
  }
  {
    const std::string name = "KV receive from rank " + std::to_string(kvFrom);
    allPassed &= checkBlock(name.c_str(), kvHost.data(), o.kvCount, kTagKv, kvFrom, o.rank);
  }

  // Tear down: finalize (bounded), destroy, free.
  destroyComm(kvComm, "kv", o.timeoutSec);
  destroyComm(collComm, "collective", o.timeoutSec);
  CUDA_CHECK(cudaStreamDestroy(stream));
  CUDA_CHECK(cudaFree(a2aSend));
  CUDA_CHECK(cudaFree(a2aRecv));
  CUDA_CHECK(cudaFree(kvSend));
  CUDA_CHECK(cudaFree(kvRecv));

  if (!allPassed) {
    LOG("FAILED: at least one check failed");
    return kExitFailure;
  }
  LOG("ALL CHECKS PASSED");
  return 0;
}
