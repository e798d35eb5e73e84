// A NCCL net plugin loaded the way NCCL loads it, for the benchmarks that
// drive collectives over the plugin's C ABI (dualpath-bench interference).
// NCCL's rule: NCCL_NET_PLUGIN=name -> dlopen("libnccl-net-<name>.so",
// RTLD_NOW | RTLD_LOCAL), then the ncclNetPlugin_v11 table. Only v11: NCCL
// 2.28 uses it, and older tables are the plugin tests' business.
//
// Every call returns a Status naming the ABI function and its ncclResult_t;
// the plugin's own log lines (NCCL's logger) go to spdlog at the matching
// level, prefixed "net plugin:".
//
// Threading: as the plugin's ABI (NCCL's proxy thread rules): setup calls
// and data calls on one communicator from one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <dualpath/common/status.h>

#include "nccl/net_abi.h"

namespace dualpath::bench {

class NetPlugin {
 public:
  // `name_or_path`: a plugin name ("dualpath" -> libnccl-net-dualpath.so,
  // found like NCCL finds it) or a path to the library. unsupported when the
  // library has no v11 table; io with dlerror() when it cannot be loaded.
  static Result<std::unique_ptr<NetPlugin>> load(const std::string& name_or_path);
  ~NetPlugin();  // dlclose; every context must be finalized first
  NetPlugin(const NetPlugin&) = delete;
  NetPlugin& operator=(const NetPlugin&) = delete;

  // The library dlopen resolved (from its link map).
  const std::string& path() const noexcept { return path_; }

  // One communicator's context: trafficClass picks the QoS class
  // (plugin::abi::kTrafficClassUndef: the policy's default).
  Result<void*> init(std::uint64_t comm_id, int traffic_class);
  Status finalize(void* ctx);
  Result<int> devices();
  Status listen(void* ctx, int dev, void* handle, void** listen_comm);
  // One call each; *comm stays null until the connection is ready (retry
  // with the same handle buffer, as NCCL does).
  Status connect(void* ctx, int dev, void* handle, void** send_comm);
  Status accept(void* listen_comm, void** recv_comm);
  Status regMr(void* comm, void* data, std::size_t size, void** mhandle);  // host memory
  Status deregMr(void* comm, void* mhandle);
  // *request is null when the plugin cannot post now: retry later.
  Status isend(void* send_comm, void* data, std::size_t size, int tag, void* mhandle,
               void** request);
  Status irecv(void* recv_comm, void* data, std::size_t size, int tag, void* mhandle,
               void** request);
  // done: the request finished (and was released); *size its byte count.
  Status test(void* request, bool* done, int* size);
  Status closeSend(void* comm);
  Status closeRecv(void* comm);
  Status closeListen(void* comm);

 private:
  NetPlugin(void* library, const plugin::abi::NetV11* table, std::string path)
      : library_(library), table_(table), path_(std::move(path)) {}

  void* library_;
  const plugin::abi::NetV11* table_;
  std::string path_;
};

}  // namespace dualpath::bench
