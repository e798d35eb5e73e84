// The boundary between NCCL's C ABI and the transport.
//
// Every exported table entry (abi_v11.cc and the v10/v9/v8 adapters) calls one
// function here. Each one validates its arguments, runs the transport inside
// a catch-all, and turns a Status into an NcclResult exactly once, logging
// the reason through NCCL's logger (so NCCL_DEBUG governs it):
//   again                          → ncclSuccess with a NULL comm or request
//                                    (NCCL's "call me again")
//   remote, timeout                → ncclRemoteError
//   invalid_argument, invalid_usage→ ncclInvalidUsage
//   internal                       → ncclInternalError
//   everything else (io, …)        → ncclSystemError
//
// Threading: NCCL calls setup functions (listen, connect, accept, regMr,
// close*) on its service thread and data functions (isend, irecv, test) on
// its progress thread, for several communicators at once. Everything here is
// thread-safe; the transport serializes per UCX worker.
#pragma once

#include <cstddef>
#include <cstdint>

#include "nccl/net_abi.h"

namespace dualpath::plugin {

// Properties common to every ABI version; each adapter copies what its
// struct has.
struct DeviceProperties {
  const char* name = nullptr;
  const char* pci_path = nullptr;
  std::uint64_t guid = 0;
  int ptr_support = abi::kPtrHost;
  int speed_mbps = 0;
  int port = 0;
  float latency_us = 0;
  int max_comms = 0;
  int max_recvs = 0;
  std::size_t max_p2p_bytes = 0;
  std::size_t max_coll_bytes = 0;
};

// `traffic_class` is the communicator's ncclConfig_t.trafficClass, or -1.
// `per_comm` is false for the v8-v10 tables, whose init runs once per load.
abi::NcclResult init(void** ctx, std::uint64_t comm_id, int traffic_class,
                     abi::DebugLogger logger) noexcept;
abi::NcclResult finalize(void* ctx) noexcept;
// The v8-v10 tables' init: one context for the library's lifetime (their
// init runs once per load); the class comes from connect's config (v10) or
// is the default class. legacyContext() is that context, or NULL.
abi::NcclResult initLegacy(abi::DebugLogger logger) noexcept;
void* legacyContext() noexcept;

abi::NcclResult devices(int* count) noexcept;
abi::NcclResult properties(int dev, DeviceProperties* props) noexcept;

// `traffic_class` -2 means "the context's class"; v10 passes connect's config.
inline constexpr int kContextClass = -2;
abi::NcclResult listen(void* ctx, int dev, void* handle, void** listen_comm,
                       bool any_class) noexcept;
abi::NcclResult connect(void* ctx, int dev, int traffic_class, void* handle, void** send_comm,
                        abi::NetDeviceHandle** dev_comm) noexcept;
abi::NcclResult accept(void* listen_comm, void** recv_comm, abi::NetDeviceHandle** dev_comm) noexcept;

abi::NcclResult regMr(void* comm, void* data, std::size_t size, int type, void** mhandle) noexcept;
abi::NcclResult regMrDmaBuf(void* comm, void* data, std::size_t size, int type,
                            std::uint64_t offset, int fd, void** mhandle) noexcept;
abi::NcclResult deregMr(void* comm, void* mhandle) noexcept;

abi::NcclResult isend(void* send_comm, void* data, std::size_t size, int tag, void* mhandle,
                      void** request) noexcept;
// `sizes` holds n entries of `size_of_size` bytes (4 for v8's int, 8 after).
abi::NcclResult irecv(void* recv_comm, int n, void** data, const void* sizes,
                      std::size_t size_of_size, const int* tags, void** mhandles,
                      void** request) noexcept;
abi::NcclResult iflush(void* recv_comm, int n, void** data, int* sizes, void** mhandles,
                       void** request) noexcept;
abi::NcclResult test(void* request, int* done, int* sizes) noexcept;

abi::NcclResult closeSend(void* send_comm) noexcept;
abi::NcclResult closeRecv(void* recv_comm) noexcept;
abi::NcclResult closeListen(void* listen_comm) noexcept;

abi::NcclResult getDeviceMr(void* comm, void* mhandle, void** dptr_mhandle) noexcept;
abi::NcclResult irecvConsumed(void* recv_comm, int n, void* request) noexcept;
abi::NcclResult makeVDevice(int* dev, int ndevs, const int* devs) noexcept;
abi::NcclResult setNetAttr(void* ctx, const abi::NetAttrV11* attr) noexcept;

}  // namespace dualpath::plugin
