// Test support: drives libnccl-net-dualpath.so the way NCCL's proxy does.
//
// The library is found by NCCL's name rule (NCCL_NET_PLUGIN=dualpath →
// dlopen("dualpath"), then "libnccl-net-dualpath.so", RTLD_NOW|RTLD_LOCAL) and
// one versioned table is dlsym'ed. PluginApi gives the four versions one
// v11-shaped interface so every scenario runs against each. NCCL's logger is
// replaced by one that records lines, so tests can assert what was logged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "nccl/net_abi.h"

namespace dualpath::testing {

namespace abi = plugin::abi;

// Lines the plugin logged through the NCCL logger, in order ("WARN ...").
std::vector<std::string> loggedLines();
void clearLoggedLines();

class PluginApi {
 public:
  // Loads the plugin by NCCL's rule for `plugin_name` and dlsyms the table of
  // `version` (8 to 11). Throws std::runtime_error with dlerror() on failure.
  PluginApi(const std::string& plugin_name, int version);
  ~PluginApi();  // dlclose
  PluginApi(const PluginApi&) = delete;
  PluginApi& operator=(const PluginApi&) = delete;

  int version() const { return version_; }
  const char* name() const;
  void* library() const { return library_; }

  // v11: one context per call. v8-v10: the library's single init; ctx is
  // then a dummy and `traffic_class` applies to connect (v10) or is ignored.
  abi::NcclResult init(void** ctx, int traffic_class);
  abi::NcclResult finalize(void* ctx);
  abi::NcclResult devices(int* count);
  abi::NcclResult properties(int dev, std::string* name, int* max_recvs, int* ptr_support);
  abi::NcclResult listen(void* ctx, int dev, void* handle, void** comm);
  abi::NcclResult connect(void* ctx, int dev, void* handle, void** comm);
  abi::NcclResult accept(void* listen_comm, void** comm);
  abi::NcclResult regMr(void* comm, void* data, std::size_t size, int type, void** mhandle);
  abi::NcclResult deregMr(void* comm, void* mhandle);
  abi::NcclResult isend(void* comm, void* data, std::size_t size, int tag, void* mhandle,
                        void** request);
  abi::NcclResult irecv(void* comm, int n, void** data, const std::size_t* sizes, const int* tags,
                        void** mhandles, void** request);
  abi::NcclResult iflush(void* comm, int n, void** data, int* sizes, void** mhandles,
                         void** request);
  abi::NcclResult test(void* request, int* done, int* sizes);
  abi::NcclResult closeSend(void* comm);
  abi::NcclResult closeRecv(void* comm);
  abi::NcclResult closeListen(void* comm);

 private:
  void* library_ = nullptr;
  int version_ = 0;
  const void* table_ = nullptr;
  int connect_traffic_class_ = abi::kTrafficClassUndef;
};

// Connects `send` to `recv` through `handle` until both comms exist (bounded).
bool connectBoth(PluginApi& api, void* send_ctx, void* listen_comm, void* handle, void** send,
                 void** recv, std::string* error);

// Tests `request` until done (bounded). Returns the result of the last test().
abi::NcclResult waitDone(PluginApi& api, void* request, int* sizes, double seconds = 20);

// Deterministic bytes for message `seed`.
void fillPattern(void* data, std::size_t size, int seed);
// Empty when `data` holds the pattern; else where it first differs.
std::string checkPattern(const void* data, std::size_t size, int seed);

}  // namespace dualpath::testing
