#include "nccl_collectives.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>

namespace dualpath::bench {
namespace {

using Clock = LaunchClock;

Status fromCuda(cudaError_t error, std::string_view what) {
  if (error == cudaSuccess) return Status::ok();
  return Status(StatusCode::io, fmt::format("{}: {} ({})", what, cudaGetErrorName(error),
                                            cudaGetErrorString(error)));
}

Status fromNccl(ncclResult_t result, std::string_view what, ncclComm_t comm) {
  if (result == ncclSuccess) return Status::ok();
  StatusCode code = StatusCode::internal;
  switch (result) {
    case ncclRemoteError:
      code = StatusCode::remote;
      break;
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      code = StatusCode::invalid_usage;
      break;
    case ncclSystemError:
    case ncclUnhandledCudaError:
      code = StatusCode::io;
      break;
    default:
      break;
  }
  return Status(
      code, fmt::format("{}: {} ({})", what, ncclGetErrorString(result), ncclGetLastError(comm)));
}

// Device memory, freed with its owner.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() {
    if (data_ != nullptr) (void)cudaFree(data_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  Status allocate(std::size_t bytes) {
    return fromCuda(cudaMalloc(&data_, bytes), fmt::format("cudaMalloc({} B)", bytes));
  }
  std::byte* data() const { return static_cast<std::byte*>(data_); }

 private:
  void* data_ = nullptr;
};

void setIfUnset(const char* name, const std::string& value) {
  if (std::getenv(name) == nullptr) ::setenv(name, value.c_str(), 1);
}

}  // namespace

struct NcclCollectives::Impl {
  int rank = 0;
  int ranks = 0;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  LaunchClock::time_point deadline;

  ~Impl() {
    if (comm != nullptr) {
      // A non-blocking communicator is finalized (which waits for the other
      // ranks) and then destroyed; past a bound it is aborted instead.
      deadline = std::min(deadline, Clock::now() + std::chrono::seconds(30));
      const ncclResult_t finalizing = ncclCommFinalize(comm);
      if (finalizing == ncclSuccess || finalizing == ncclInProgress) {
        (void)wait("ncclCommFinalize", false);  // aborts at the bound
      } else {
        abort();
      }
      if (comm != nullptr) (void)ncclCommDestroy(comm);
    }
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
  }

  // Waits for the communicator's pending work (non-blocking communicator)
  // and then for the stream, both bounded: at the deadline the communicator
  // is aborted, which ends NCCL's work on every rank.
  Status wait(std::string_view what, bool stream_too) {
    for (;;) {
      ncclResult_t async = ncclSuccess;
      DP_TRY(fromNccl(ncclCommGetAsyncError(comm, &async), "ncclCommGetAsyncError", comm));
      if (async != ncclSuccess && async != ncclInProgress) {
        Status failed = fromNccl(async, what, comm);
        abort();
        return failed;
      }
      if (async == ncclSuccess) {
        if (!stream_too) return Status::ok();
        const cudaError_t done = cudaStreamQuery(stream);
        if (done == cudaSuccess) return Status::ok();
        if (done != cudaErrorNotReady) return fromCuda(done, what);
      }
      if (Clock::now() > deadline) {
        abort();
        return Status(StatusCode::timeout,
                      fmt::format("{} on rank {} did not finish by the deadline; the "
                                  "communicator was aborted",
                                  what, rank));
      }
      std::this_thread::yield();
    }
  }

  void abort() {
    if (comm == nullptr) return;
    (void)ncclCommAbort(comm);
    comm = nullptr;
  }
};

namespace {

class NcclSizeRun final : public SizeRun {
 public:
  NcclSizeRun(NcclCollectives::Impl& nccl, CollectiveData data)
      : SizeRun(std::move(data)), nccl_(nccl) {}

  Status prepare() override {
    DP_TRY(a_.allocate(data().bufferBytes()));
    DP_TRY(b_.allocate(data().bufferBytes()));
    input_.assign(data().bufferBytes(), std::byte{0});
    exchanged_.assign(data().bufferBytes(), std::byte{0});
    reduced_.assign(data().chunkBytes() / sizeof(float), 0);
    return fromCuda(cudaMemset(a_.data(), 0, data().bufferBytes()), "cudaMemset");
  }

  Result<std::uint64_t> verify(LaunchClock::time_point deadline) override {
    data().fill(input_);
    DP_TRY(fromCuda(cudaMemcpy(a_.data(), input_.data(), input_.size(), cudaMemcpyHostToDevice),
                    "cudaMemcpy to the device"));
    DP_TRY(once(deadline));
    const std::string& op = data().op();
    if (op == "all_gather") {
      DP_TRY(fromCuda(cudaMemcpy(input_.data(), a_.data(), input_.size(), cudaMemcpyDeviceToHost),
                      "cudaMemcpy from the device"));
    } else if (op == "reduce_scatter") {
      DP_TRY(fromCuda(cudaMemcpy(reduced_.data(), b_.data(), reduced_.size() * sizeof(float),
                                 cudaMemcpyDeviceToHost),
                      "cudaMemcpy from the device"));
    } else {
      DP_TRY(fromCuda(
          cudaMemcpy(exchanged_.data(), b_.data(), exchanged_.size(), cudaMemcpyDeviceToHost),
          "cudaMemcpy from the device"));
    }
    return data().wrongElements(input_, exchanged_, reduced_);
  }

  Status once(LaunchClock::time_point deadline) override {
    if (nccl_.comm == nullptr) {
      return Status(StatusCode::invalid_usage, "the NCCL communicator was aborted earlier");
    }
    nccl_.deadline = deadline;
    const std::string& op = data().op();
    const std::size_t chunk = data().chunkBytes();
    ncclResult_t posted = ncclSuccess;
    if (op == "all_gather") {
      // In place: this rank's chunk is already where the result keeps it.
      posted = ncclAllGather(a_.data() + data().rank() * chunk, a_.data(), chunk, ncclUint8,
                             nccl_.comm, nccl_.stream);
    } else if (op == "reduce_scatter") {
      posted = ncclReduceScatter(a_.data(), b_.data(), chunk / sizeof(float), ncclFloat32, ncclSum,
                                 nccl_.comm, nccl_.stream);
    } else {
      posted = ncclAlltoAll(a_.data(), b_.data(), chunk, ncclUint8, nccl_.comm, nccl_.stream);
    }
    if (posted != ncclSuccess && posted != ncclInProgress) {
      return fromNccl(posted, fmt::format("nccl {}", op), nccl_.comm);
    }
    return nccl_.wait(fmt::format("nccl {} of {} B", op, data().bufferBytes()), true);
  }

 private:
  NcclCollectives::Impl& nccl_;
  DeviceBuffer a_;
  DeviceBuffer b_;
  std::vector<std::byte> input_;
  std::vector<std::byte> exchanged_;
  std::vector<float> reduced_;
};

}  // namespace

NcclCollectives::NcclCollectives(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NcclCollectives::~NcclCollectives() = default;

Result<std::unique_ptr<NcclCollectives>> NcclCollectives::create(Bootstrap& bootstrap,
                                                                 const std::string& plugin_path,
                                                                 int traffic_class) {
  auto impl = std::make_unique<Impl>();
  impl->rank = bootstrap.rank();
  impl->ranks = bootstrap.ranks();
  impl->deadline = bootstrap.deadline();

  int devices = 0;
  const cudaError_t counted = cudaGetDeviceCount(&devices);
  if (counted != cudaSuccess || devices == 0) {
    return Status(StatusCode::unsupported,
                  fmt::format("--nccl: rank {} sees no CUDA device ({})", impl->rank,
                              counted != cudaSuccess ? cudaGetErrorString(counted) : "0 devices"));
  }
  DP_TRY(fromCuda(cudaSetDevice(impl->rank % devices), "cudaSetDevice"));
  DP_TRY(fromCuda(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking),
                  "cudaStreamCreate"));

  // NCCL's own variables, read when the communicator is created.
  ::setenv("NCCL_NET_PLUGIN", plugin_path.c_str(), 1);
  ::setenv("NCCL_HOSTID", fmt::format("dualpath-bench-rank{}", impl->rank).c_str(), 1);
  setIfUnset("NCCL_NET", "DualPath");            // fail rather than fall back to NCCL's own
  setIfUnset("NCCL_NET_PLUGIN_REF_COUNT", "1");  // 2.28's reload bug (../shared/FACTS.md)

  ncclUniqueId id{};
  if (impl->rank == 0) DP_TRY(fromNccl(ncclGetUniqueId(&id), "ncclGetUniqueId", nullptr));
  DP_TRY_ASSIGN(std::vector<std::byte> ids, bootstrap.allGather(std::as_bytes(std::span(&id, 1))));
  std::memcpy(&id, ids.data(), sizeof(id));  // rank 0's

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // so that every wait below has a bound
  config.trafficClass = traffic_class;
  const ncclResult_t started =
      ncclCommInitRankConfig(&impl->comm, impl->ranks, id, impl->rank, &config);
  if (started != ncclSuccess && started != ncclInProgress) {
    return fromNccl(started, "ncclCommInitRankConfig", impl->comm);
  }
  DP_TRY(impl->wait(fmt::format("ncclCommInitRankConfig (trafficClass {})", traffic_class), false));
  return std::unique_ptr<NcclCollectives>(new NcclCollectives(std::move(impl)));
}

std::unique_ptr<SizeRun> NcclCollectives::sizeRun(const std::string& op, std::size_t bytes) {
  return std::make_unique<NcclSizeRun>(
      *impl_, CollectiveData(op, static_cast<std::size_t>(impl_->ranks),
                             static_cast<std::size_t>(impl_->rank), bytes));
}

}  // namespace dualpath::bench
