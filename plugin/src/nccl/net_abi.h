// NCCL's net-plugin ABI, versions v8 to v11, as NCCL 2.28.9 expects it from a plugin.
//
// This is the only header of DualPath that sees NCCL's net-plugin types. It declares, under
// our own type names, what NCCL and a net plugin exchange: the function tables the plugin
// exports as `ncclNetPlugin_v8` ... `ncclNetPlugin_v11` (NetV8 ... NetV11), the device
// properties, the per-communicator config and attributes, the device-offload handle, and the
// constants and callback types they use. abi_v11.cc and the thin v10/v9/v8 adapters include
// it; the boundary layer and the transport never do.
//
// Written by us from NCCL's documented net API (the ext-net plugin guide and the public plugin
// headers); nothing is copied. Type names are ours; member names and member order are NCCL's,
// because they are the documented API. Every size and offset is pinned below for LP64 and was
// compared with the debug info of the installed libnccl.so.2 (2.28.9); docs/nccl-abi.md lists
// the sources, the per-version differences, the calling contracts and how to repeat the check.
//
// Threading: declarations only. Nothing here runs, allocates or holds state; which NCCL thread
// calls which function is documented in docs/nccl-abi.md ("Threads").
#ifndef DUALPATH_PLUGIN_SRC_NCCL_NET_ABI_H_
#define DUALPATH_PLUGIN_SRC_NCCL_NET_ABI_H_
// An include guard rather than `#pragma once`: the ABI check compiles this header as a main
// file (`g++ -x c++ net_abi.h`), where GCC warns about `#pragma once`.

#include <climits>
#include <cstddef>
#include <cstdint>
#include <type_traits>

// Optional cross-checks against NCCL's own headers (end of file). nccl.h pulls in the CUDA
// runtime headers; net_device.h is plain C and needs size_t declared first (above).
#if __has_include(<nccl.h>)
#include <nccl.h>
#define DUALPATH_NET_ABI_HAVE_NCCL_H 1
#endif
#if __has_include(<nccl_device/net_device.h>)
#include <nccl_device/net_device.h>
#define DUALPATH_NET_ABI_HAVE_NET_DEVICE_H 1
#endif

namespace dualpath::plugin::abi {

// The layouts below are the LP64 ones (Linux x86-64 and aarch64), the only targets NCCL's
// net plugins exist for.
static_assert(CHAR_BIT == 8 && sizeof(int) == 4 && sizeof(long) == 8 && sizeof(void*) == 8 &&
                  sizeof(float) == 4 && sizeof(std::size_t) == 8,
              "the NCCL net-plugin ABI is declared here for LP64 only");

// ---------------------------------------------------------------------------------------------
// Results, logging, profiling
// ---------------------------------------------------------------------------------------------

// NCCL's result codes (ncclResult_t). Every table function returns one. A C enum of these
// values is 4 bytes and returned in a register, as is this one. `inProgress` is not a plugin
// answer: "not ready yet" is success with a NULL comm or request.
enum NcclResult : int {
  success = 0,
  unhandledCudaError = 1,  // an error that came from CUDA; a net plugin should not need it
  systemError = 2,         // a system call, library, network or hardware failure
  internalError = 3,       // NCCL used the plugin wrongly (too many requests, bad argument)
  invalidArgument = 4,     // argument checks are NCCL's job; plugins should rarely use it
  invalidUsage = 5,        // most likely a user error: misconfiguration, size mismatch
  remoteError = 6,         // the peer failed or went away
  inProgress = 7,          // used by NCCL's non-blocking communicator API, not by plugins
};

// Severity passed as the first logger argument (ncclDebugLogLevel).
enum class LogLevel : int { none = 0, version = 1, warn = 2, info = 3, abort = 4, trace = 5 };

// Subsystem bits for the logger's `flags` argument (ncclDebugLogSubSys in 2.28.9).
// NCCL_DEBUG_SUBSYS filters INFO lines by these bits.
inline constexpr unsigned long kLogInit = 0x1;
inline constexpr unsigned long kLogColl = 0x2;
inline constexpr unsigned long kLogP2p = 0x4;
inline constexpr unsigned long kLogShm = 0x8;
inline constexpr unsigned long kLogNet = 0x10;
inline constexpr unsigned long kLogGraph = 0x20;
inline constexpr unsigned long kLogTuning = 0x40;
inline constexpr unsigned long kLogEnv = 0x80;
inline constexpr unsigned long kLogAlloc = 0x100;
inline constexpr unsigned long kLogCall = 0x200;
inline constexpr unsigned long kLogProxy = 0x400;
inline constexpr unsigned long kLogNvls = 0x800;
inline constexpr unsigned long kLogBootstrap = 0x1000;
inline constexpr unsigned long kLogReg = 0x2000;
inline constexpr unsigned long kLogProfile = 0x4000;
inline constexpr unsigned long kLogRas = 0x8000;
inline constexpr unsigned long kLogAll = ~0UL;

// NCCL's logger (ncclDebugLogger_t), handed to init. printf-style; callable from any thread;
// `file` and `line` name the caller's source position. Valid until the plugin is unloaded.
using DebugLogger = void (*)(LogLevel level, unsigned long flags, const char* file, int line,
                             const char* fmt, ...);

// NCCL's profiler callback for network-defined events (ncclProfilerCallback_t), handed to init
// from v10 on. We pass it through and never call it; only its signature matters to the ABI.
using ProfilerCallback = NcclResult (*)(void** eHandle, int type, void* pHandle,
                                        std::int64_t pluginId, void* extData);

// ---------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------

// Bits of PropertiesVx::ptrSupport and values of regMr's `type` (NCCL_PTR_*).
inline constexpr int kPtrHost = 0x1;
inline constexpr int kPtrCuda = 0x2;
inline constexpr int kPtrDmaBuf = 0x4;  // set only with a working regMrDmaBuf

// Bytes of the connection handle NCCL gives listen() to fill and connect() to read
// (NCCL_NET_HANDLE_MAXSIZE). It travels between ranks through NCCL's bootstrap.
inline constexpr std::size_t kHandleBytes = 128;

// Requests a send or receive comm must accept in flight (NCCL_NET_MAX_REQUESTS); a send comm
// must accept kMaxRequests * maxRecvs isends, so that many grouped receives can be matched.
inline constexpr int kMaxRequests = 32;

// Physical devices one virtual NIC can merge (NCCL_NET_MAX_DEVS_PER_NIC, v9 to v11).
inline constexpr int kMaxDevsPerNic = 4;

// trafficClass when the communicator did not set one (NCCL_NET_TRAFFIC_CLASS_UNDEF).
inline constexpr int kTrafficClassUndef = -1;

// "Unset" in ncclConfig_t (NCCL_CONFIG_UNDEF_INT). NCCL turns an unset trafficClass into
// kTrafficClassUndef before it calls init; a plugin never sees this value.
inline constexpr int kConfigUndefInt = INT_MIN;

// "No hint" in NetAttrV11: -1 in the int32 fields, all bits set in the uint32 masks
// (NCCL_NET_ATTR_UNDEF).
inline constexpr std::int32_t kNetAttrUndef = -1;
inline constexpr std::uint32_t kNetAttrMaskUndef = 0xFFFFFFFFu;

// The value NCCL may store in *request before irecv (NCCL_NET_OPTIONAL_RECV_COMPLETION): "this
// single LL/LL128 receive needs no completion". It is a marker, never a request pointer; irecv
// must overwrite *request (with a request, or NULL for "cannot post now").
inline constexpr std::uintptr_t kOptionalRecvCompletion = 0x1;

// Largest maxP2pBytes / maxCollBytes NCCL accepts (NCCL_MAX_NET_SIZE_BYTES, 1 TiB), and the
// per-operation size NCCL assumes for a v8 plugin, whose sizes are int (MAX_NET_SIZE, 1 GiB).
inline constexpr std::size_t kMaxNetSizeBytes = std::size_t{1} << 40;
inline constexpr std::size_t kMaxNetSizeBytesV8 = std::size_t{1} << 30;

// Names NCCL looks up with dlsym, newest first (it stops at the first one found).
inline constexpr const char* kSymbolNetV11 = "ncclNetPlugin_v11";
inline constexpr const char* kSymbolNetV10 = "ncclNetPlugin_v10";
inline constexpr const char* kSymbolNetV9 = "ncclNetPlugin_v9";
inline constexpr const char* kSymbolNetV8 = "ncclNetPlugin_v8";

// ---------------------------------------------------------------------------------------------
// Device offload (shared by all four versions)
// ---------------------------------------------------------------------------------------------

// PropertiesVx::netDeviceType (ncclNetDeviceType). A host-side plugin reports `host`.
enum class NetDeviceType : int { host = 0, unpack = 1, ginProxy = 2, ginGdaki = 3 };

// PropertiesVx::netDeviceVersion for `host` (NCCL_NET_DEVICE_INVALID_VERSION), and the only
// `unpack` version 2.28.9 accepts (NCCL_NET_DEVICE_UNPACK_VERSION); NCCL refuses the plugin if
// device 0 reports another type/version pair.
inline constexpr int kNetDeviceInvalidVersion = 0;
inline constexpr int kNetDeviceUnpackVersion = 0x7;

// Device-offload handle of connect/accept (ncclNetDeviceHandle_v7_t; v8 to v11 reuse it
// unchanged). NCCL asks for offload by passing a pointer to a non-NULL handle pointer; a host
// plugin leaves it alone. The pointer-to-pointer itself may be NULL.
struct NetDeviceHandle {
  NetDeviceType netDeviceType;
  int netDeviceVersion;
  void* handle;
  std::size_t size;
  int needsProxyProgress;
};
using NetDeviceHandleV8 = NetDeviceHandle;
using NetDeviceHandleV9 = NetDeviceHandle;
using NetDeviceHandleV10 = NetDeviceHandle;
using NetDeviceHandleV11 = NetDeviceHandle;

// ---------------------------------------------------------------------------------------------
// v8
// ---------------------------------------------------------------------------------------------

// Filled by getProperties (ncclNetProperties_v8_t). Strings stay owned by the plugin and must
// live until it is unloaded.
struct PropertiesV8 {
  char* name;                   // for logs
  char* pciPath;                // /sys PCI device directory, NULL for a virtual interface
  std::uint64_t guid;           // equal guids = one physical port behind several PCI functions
  int ptrSupport;               // kPtrHost | kPtrCuda | kPtrDmaBuf
  int regIsGlobal;              // 1: a registration is valid on every comm, not just its own
  int speed;                    // port speed, Mbit/s
  int port;                     // port number
  float latency;                // network latency, microseconds
  int maxComms;                 // most comms this device can have
  int maxRecvs;                 // most buffers in one grouped irecv
  NetDeviceType netDeviceType;  // offload type
  int netDeviceVersion;         // offload version
};

// The v8 table (ncclNet_v8_t), exported as ncclNetPlugin_v8. Sizes of isend/irecv are int.
struct NetV8 {
  const char* name;
  NcclResult (*init)(DebugLogger logFunction);
  NcclResult (*devices)(int* ndev);
  NcclResult (*getProperties)(int dev, PropertiesV8* props);
  NcclResult (*listen)(int dev, void* handle, void** listenComm);
  NcclResult (*connect)(int dev, void* handle, void** sendComm, NetDeviceHandleV8** sendDevComm);
  NcclResult (*accept)(void* listenComm, void** recvComm, NetDeviceHandleV8** recvDevComm);
  NcclResult (*regMr)(void* comm, void* data, std::size_t size, int type, void** mhandle);
  NcclResult (*regMrDmaBuf)(void* comm, void* data, std::size_t size, int type,
                            std::uint64_t offset, int fd, void** mhandle);
  NcclResult (*deregMr)(void* comm, void* mhandle);
  NcclResult (*isend)(void* sendComm, void* data, int size, int tag, void* mhandle, void** request);
  NcclResult (*irecv)(void* recvComm, int n, void** data, int* sizes, int* tags, void** mhandles,
                      void** request);
  NcclResult (*iflush)(void* recvComm, int n, void** data, int* sizes, void** mhandles,
                       void** request);
  NcclResult (*test)(void* request, int* done, int* sizes);
  NcclResult (*closeSend)(void* sendComm);
  NcclResult (*closeRecv)(void* recvComm);
  NcclResult (*closeListen)(void* listenComm);
  NcclResult (*getDeviceMr)(void* comm, void* mhandle, void** dptrMhandle);
  NcclResult (*irecvConsumed)(void* recvComm, int n, void* request);
};

// ---------------------------------------------------------------------------------------------
// v9
// ---------------------------------------------------------------------------------------------

// A virtual NIC: the physical devices it merges (ncclNetVDeviceProps_v9_t).
struct VirtualDevicePropsV9 {
  int ndevs;
  int devs[kMaxDevsPerNic];
};

// ncclNetProperties_v9_t: v8 plus forceFlush (after regIsGlobal), vProps, maxP2pBytes and
// maxCollBytes.
struct PropertiesV9 {
  char* name;
  char* pciPath;
  std::uint64_t guid;
  int ptrSupport;
  int regIsGlobal;
  int forceFlush;  // 1: NCCL must iflush every GPU-direct receive
  int speed;
  int port;
  float latency;
  int maxComms;
  int maxRecvs;
  NetDeviceType netDeviceType;
  int netDeviceVersion;
  VirtualDevicePropsV9 vProps;  // for a physical device: {1, {dev}}
  std::size_t maxP2pBytes;      // largest point-to-point transfer, <= kMaxNetSizeBytes
  std::size_t maxCollBytes;     // largest collective transfer, <= kMaxNetSizeBytes
};

// The v9 table (ncclNet_v9_t): sizes become size_t, makeVDevice is added at the end.
struct NetV9 {
  const char* name;
  NcclResult (*init)(DebugLogger logFunction);
  NcclResult (*devices)(int* ndev);
  NcclResult (*getProperties)(int dev, PropertiesV9* props);
  NcclResult (*listen)(int dev, void* handle, void** listenComm);
  NcclResult (*connect)(int dev, void* handle, void** sendComm, NetDeviceHandleV9** sendDevComm);
  NcclResult (*accept)(void* listenComm, void** recvComm, NetDeviceHandleV9** recvDevComm);
  NcclResult (*regMr)(void* comm, void* data, std::size_t size, int type, void** mhandle);
  NcclResult (*regMrDmaBuf)(void* comm, void* data, std::size_t size, int type,
                            std::uint64_t offset, int fd, void** mhandle);
  NcclResult (*deregMr)(void* comm, void* mhandle);
  NcclResult (*isend)(void* sendComm, void* data, std::size_t size, int tag, void* mhandle,
                      void** request);
  NcclResult (*irecv)(void* recvComm, int n, void** data, std::size_t* sizes, int* tags,
                      void** mhandles, void** request);
  NcclResult (*iflush)(void* recvComm, int n, void** data, int* sizes, void** mhandles,
                       void** request);
  NcclResult (*test)(void* request, int* done, int* sizes);
  NcclResult (*closeSend)(void* sendComm);
  NcclResult (*closeRecv)(void* recvComm);
  NcclResult (*closeListen)(void* listenComm);
  NcclResult (*getDeviceMr)(void* comm, void* mhandle, void** dptrMhandle);
  NcclResult (*irecvConsumed)(void* recvComm, int n, void* request);
  NcclResult (*makeVDevice)(int* d, VirtualDevicePropsV9* props);
};

// ---------------------------------------------------------------------------------------------
// v10
// ---------------------------------------------------------------------------------------------

// ncclNetVDeviceProps_v10_t, same layout as v9.
struct VirtualDevicePropsV10 {
  int ndevs;
  int devs[kMaxDevsPerNic];
};

// Per-communicator settings passed to connect (ncclNetCommConfig_v10_t).
struct CommConfigV10 {
  int trafficClass;  // the communicator's ncclConfig_t.trafficClass, or kTrafficClassUndef
};

// ncclNetProperties_v10_t, same members and layout as v9.
struct PropertiesV10 {
  char* name;
  char* pciPath;
  std::uint64_t guid;
  int ptrSupport;
  int regIsGlobal;
  int forceFlush;
  int speed;
  int port;
  float latency;
  int maxComms;
  int maxRecvs;
  NetDeviceType netDeviceType;
  int netDeviceVersion;
  VirtualDevicePropsV10 vProps;
  std::size_t maxP2pBytes;
  std::size_t maxCollBytes;
};

// The v10 table (ncclNet_v10_t): init gains the profiler callback, connect gains the config
// (second parameter), isend/irecv gain profiler handles (phandle / phandles).
struct NetV10 {
  const char* name;
  NcclResult (*init)(DebugLogger logFunction, ProfilerCallback profFunction);
  NcclResult (*devices)(int* ndev);
  NcclResult (*getProperties)(int dev, PropertiesV10* props);
  NcclResult (*listen)(int dev, void* handle, void** listenComm);
  NcclResult (*connect)(int dev, CommConfigV10* config, void* handle, void** sendComm,
                        NetDeviceHandleV10** sendDevComm);
  NcclResult (*accept)(void* listenComm, void** recvComm, NetDeviceHandleV10** recvDevComm);
  NcclResult (*regMr)(void* comm, void* data, std::size_t size, int type, void** mhandle);
  NcclResult (*regMrDmaBuf)(void* comm, void* data, std::size_t size, int type,
                            std::uint64_t offset, int fd, void** mhandle);
  NcclResult (*deregMr)(void* comm, void* mhandle);
  NcclResult (*isend)(void* sendComm, void* data, std::size_t size, int tag, void* mhandle,
                      void* phandle, void** request);
  NcclResult (*irecv)(void* recvComm, int n, void** data, std::size_t* sizes, int* tags,
                      void** mhandles, void** phandles, void** request);
  NcclResult (*iflush)(void* recvComm, int n, void** data, int* sizes, void** mhandles,
                       void** request);
  NcclResult (*test)(void* request, int* done, int* sizes);
  NcclResult (*closeSend)(void* sendComm);
  NcclResult (*closeRecv)(void* recvComm);
  NcclResult (*closeListen)(void* listenComm);
  NcclResult (*getDeviceMr)(void* comm, void* mhandle, void** dptrMhandle);
  NcclResult (*irecvConsumed)(void* recvComm, int n, void* request);
  NcclResult (*makeVDevice)(int* d, VirtualDevicePropsV10* props);
};

// ---------------------------------------------------------------------------------------------
// v11
// ---------------------------------------------------------------------------------------------

// ncclNetVDeviceProps_v11_t, same layout as v9.
struct VirtualDevicePropsV11 {
  int ndevs;
  int devs[kMaxDevsPerNic];
};

// Per-communicator settings passed to init (ncclNetCommConfig_v11_t). NCCL passes a pointer
// to its own temporary: copy the values during init.
struct CommConfigV11 {
  int trafficClass;  // the communicator's ncclConfig_t.trafficClass, or kTrafficClassUndef
};

// Expected concurrency on one side of the communicator (ncclNetCommAttr_v11_t).
struct CommAttrV11 {
  std::int32_t maxConcurrentPeers;
  std::int32_t minConcurrentPeers;
  std::int32_t maxFlowsPerPeer;
  std::int32_t minFlowsPerPeer;
};

// Hints given to setNetAttr (ncclNetAttr_v11_t). Any field may be "no hint" (kNetAttrUndef,
// kNetAttrMaskUndef). op, algo and proto are bit masks of NCCL's collective, algorithm and
// protocol indices.
struct NetAttrV11 {
  CommAttrV11 sendCommAttr;
  CommAttrV11 recvCommAttr;
  std::uint32_t op;
  std::uint32_t algo;
  std::uint32_t proto;
};

// ncclNetProperties_v11_t: v10 plus maxMultiRequestSize at the end.
struct PropertiesV11 {
  char* name;
  char* pciPath;
  std::uint64_t guid;
  int ptrSupport;
  int regIsGlobal;
  int forceFlush;
  int speed;
  int port;
  float latency;
  int maxComms;
  int maxRecvs;
  NetDeviceType netDeviceType;
  int netDeviceVersion;
  VirtualDevicePropsV11 vProps;
  std::size_t maxP2pBytes;
  std::size_t maxCollBytes;
  int maxMultiRequestSize;  // requests per multi-request; 1 = not supported
};

// The v11 table (ncclNet_v11_t), exported as ncclNetPlugin_v11. init becomes per communicator
// and returns a context; listen and connect take it first; the config moves from connect to
// init; finalize and setNetAttr are added at the end.
struct NetV11 {
  const char* name;
  NcclResult (*init)(void** ctx, std::uint64_t commId, CommConfigV11* config,
                     DebugLogger logFunction, ProfilerCallback profFunction);
  NcclResult (*devices)(int* ndev);
  NcclResult (*getProperties)(int dev, PropertiesV11* props);
  NcclResult (*listen)(void* ctx, int dev, void* handle, void** listenComm);
  NcclResult (*connect)(void* ctx, int dev, void* handle, void** sendComm,
                        NetDeviceHandleV11** sendDevComm);
  NcclResult (*accept)(void* listenComm, void** recvComm, NetDeviceHandleV11** recvDevComm);
  NcclResult (*regMr)(void* comm, void* data, std::size_t size, int type, void** mhandle);
  NcclResult (*regMrDmaBuf)(void* comm, void* data, std::size_t size, int type,
                            std::uint64_t offset, int fd, void** mhandle);
  NcclResult (*deregMr)(void* comm, void* mhandle);
  NcclResult (*isend)(void* sendComm, void* data, std::size_t size, int tag, void* mhandle,
                      void* phandle, void** request);
  NcclResult (*irecv)(void* recvComm, int n, void** data, std::size_t* sizes, int* tags,
                      void** mhandles, void** phandles, void** request);
  NcclResult (*iflush)(void* recvComm, int n, void** data, int* sizes, void** mhandles,
                       void** request);
  NcclResult (*test)(void* request, int* done, int* sizes);
  NcclResult (*closeSend)(void* sendComm);
  NcclResult (*closeRecv)(void* recvComm);
  NcclResult (*closeListen)(void* listenComm);
  NcclResult (*getDeviceMr)(void* comm, void* mhandle, void** dptrMhandle);
  NcclResult (*irecvConsumed)(void* recvComm, int n, void* request);
  NcclResult (*makeVDevice)(int* d, VirtualDevicePropsV11* props);
  NcclResult (*finalize)(void* ctx);
  NcclResult (*setNetAttr)(void* ctx, NetAttrV11* netAttr);
};

// ---------------------------------------------------------------------------------------------
// Layout pins (LP64). The literals were worked out by hand from the member types and agree
// with `ptype /o` on the 2.28.9 library's debug info.
// ---------------------------------------------------------------------------------------------

static_assert(sizeof(NcclResult) == 4 && alignof(NcclResult) == 4);
static_assert(sizeof(LogLevel) == 4 && sizeof(NetDeviceType) == 4);

static_assert(std::is_standard_layout_v<NetDeviceHandle> &&
              std::is_trivially_copyable_v<NetDeviceHandle>);
static_assert(sizeof(NetDeviceHandle) == 32 && alignof(NetDeviceHandle) == 8);
static_assert(offsetof(NetDeviceHandle, netDeviceType) == 0);
static_assert(offsetof(NetDeviceHandle, netDeviceVersion) == 4);
static_assert(offsetof(NetDeviceHandle, handle) == 8);
static_assert(offsetof(NetDeviceHandle, size) == 16);
static_assert(offsetof(NetDeviceHandle, needsProxyProgress) == 24);  // + 4 bytes tail padding

// Virtual devices and configs: v9, v10 and v11 share one layout.
static_assert(sizeof(VirtualDevicePropsV9) == 20 && alignof(VirtualDevicePropsV9) == 4);
static_assert(offsetof(VirtualDevicePropsV9, ndevs) == 0);
static_assert(offsetof(VirtualDevicePropsV9, devs) == 4);
static_assert(sizeof(VirtualDevicePropsV10) == 20 && alignof(VirtualDevicePropsV10) == 4);
static_assert(offsetof(VirtualDevicePropsV10, ndevs) == 0);
static_assert(offsetof(VirtualDevicePropsV10, devs) == 4);
static_assert(sizeof(VirtualDevicePropsV11) == 20 && alignof(VirtualDevicePropsV11) == 4);
static_assert(offsetof(VirtualDevicePropsV11, ndevs) == 0);
static_assert(offsetof(VirtualDevicePropsV11, devs) == 4);

static_assert(sizeof(CommConfigV10) == 4 && offsetof(CommConfigV10, trafficClass) == 0);
static_assert(sizeof(CommConfigV11) == 4 && offsetof(CommConfigV11, trafficClass) == 0);

static_assert(sizeof(CommAttrV11) == 16 && alignof(CommAttrV11) == 4);
static_assert(offsetof(CommAttrV11, maxConcurrentPeers) == 0);
static_assert(offsetof(CommAttrV11, minConcurrentPeers) == 4);
static_assert(offsetof(CommAttrV11, maxFlowsPerPeer) == 8);
static_assert(offsetof(CommAttrV11, minFlowsPerPeer) == 12);

static_assert(sizeof(NetAttrV11) == 44 && alignof(NetAttrV11) == 4);
static_assert(offsetof(NetAttrV11, sendCommAttr) == 0);
static_assert(offsetof(NetAttrV11, recvCommAttr) == 16);
static_assert(offsetof(NetAttrV11, op) == 32);
static_assert(offsetof(NetAttrV11, algo) == 36);
static_assert(offsetof(NetAttrV11, proto) == 40);

// Properties v8: 60 bytes of members, padded to 64.
static_assert(sizeof(PropertiesV8) == 64 && alignof(PropertiesV8) == 8);
static_assert(offsetof(PropertiesV8, name) == 0);
static_assert(offsetof(PropertiesV8, pciPath) == 8);
static_assert(offsetof(PropertiesV8, guid) == 16);
static_assert(offsetof(PropertiesV8, ptrSupport) == 24);
static_assert(offsetof(PropertiesV8, regIsGlobal) == 28);
static_assert(offsetof(PropertiesV8, speed) == 32);
static_assert(offsetof(PropertiesV8, port) == 36);
static_assert(offsetof(PropertiesV8, latency) == 40);
static_assert(offsetof(PropertiesV8, maxComms) == 44);
static_assert(offsetof(PropertiesV8, maxRecvs) == 48);
static_assert(offsetof(PropertiesV8, netDeviceType) == 52);
static_assert(offsetof(PropertiesV8, netDeviceVersion) == 56);

// Properties v9 and v10: vProps ends at 84, 4 bytes of padding before maxP2pBytes.
static_assert(sizeof(PropertiesV9) == 104 && alignof(PropertiesV9) == 8);
static_assert(offsetof(PropertiesV9, name) == 0);
static_assert(offsetof(PropertiesV9, pciPath) == 8);
static_assert(offsetof(PropertiesV9, guid) == 16);
static_assert(offsetof(PropertiesV9, ptrSupport) == 24);
static_assert(offsetof(PropertiesV9, regIsGlobal) == 28);
static_assert(offsetof(PropertiesV9, forceFlush) == 32);
static_assert(offsetof(PropertiesV9, speed) == 36);
static_assert(offsetof(PropertiesV9, port) == 40);
static_assert(offsetof(PropertiesV9, latency) == 44);
static_assert(offsetof(PropertiesV9, maxComms) == 48);
static_assert(offsetof(PropertiesV9, maxRecvs) == 52);
static_assert(offsetof(PropertiesV9, netDeviceType) == 56);
static_assert(offsetof(PropertiesV9, netDeviceVersion) == 60);
static_assert(offsetof(PropertiesV9, vProps) == 64);
static_assert(offsetof(PropertiesV9, maxP2pBytes) == 88);
static_assert(offsetof(PropertiesV9, maxCollBytes) == 96);

static_assert(sizeof(PropertiesV10) == 104 && alignof(PropertiesV10) == 8);
static_assert(offsetof(PropertiesV10, name) == 0);
static_assert(offsetof(PropertiesV10, pciPath) == 8);
static_assert(offsetof(PropertiesV10, guid) == 16);
static_assert(offsetof(PropertiesV10, ptrSupport) == 24);
static_assert(offsetof(PropertiesV10, regIsGlobal) == 28);
static_assert(offsetof(PropertiesV10, forceFlush) == 32);
static_assert(offsetof(PropertiesV10, speed) == 36);
static_assert(offsetof(PropertiesV10, port) == 40);
static_assert(offsetof(PropertiesV10, latency) == 44);
static_assert(offsetof(PropertiesV10, maxComms) == 48);
static_assert(offsetof(PropertiesV10, maxRecvs) == 52);
static_assert(offsetof(PropertiesV10, netDeviceType) == 56);
static_assert(offsetof(PropertiesV10, netDeviceVersion) == 60);
static_assert(offsetof(PropertiesV10, vProps) == 64);
static_assert(offsetof(PropertiesV10, maxP2pBytes) == 88);
static_assert(offsetof(PropertiesV10, maxCollBytes) == 96);

// Properties v11: maxMultiRequestSize at 104, padded to 112.
static_assert(sizeof(PropertiesV11) == 112 && alignof(PropertiesV11) == 8);
static_assert(offsetof(PropertiesV11, name) == 0);
static_assert(offsetof(PropertiesV11, pciPath) == 8);
static_assert(offsetof(PropertiesV11, guid) == 16);
static_assert(offsetof(PropertiesV11, ptrSupport) == 24);
static_assert(offsetof(PropertiesV11, regIsGlobal) == 28);
static_assert(offsetof(PropertiesV11, forceFlush) == 32);
static_assert(offsetof(PropertiesV11, speed) == 36);
static_assert(offsetof(PropertiesV11, port) == 40);
static_assert(offsetof(PropertiesV11, latency) == 44);
static_assert(offsetof(PropertiesV11, maxComms) == 48);
static_assert(offsetof(PropertiesV11, maxRecvs) == 52);
static_assert(offsetof(PropertiesV11, netDeviceType) == 56);
static_assert(offsetof(PropertiesV11, netDeviceVersion) == 60);
static_assert(offsetof(PropertiesV11, vProps) == 64);
static_assert(offsetof(PropertiesV11, maxP2pBytes) == 88);
static_assert(offsetof(PropertiesV11, maxCollBytes) == 96);
static_assert(offsetof(PropertiesV11, maxMultiRequestSize) == 104);

// Tables: one 8-byte slot per member, in order; slot N is at 8 * N.
static_assert(sizeof(NetV8) == 8UL * 19 && alignof(NetV8) == 8);
static_assert(offsetof(NetV8, name) == 8UL * 0);
static_assert(offsetof(NetV8, init) == 8UL * 1);
static_assert(offsetof(NetV8, devices) == 8UL * 2);
static_assert(offsetof(NetV8, getProperties) == 8UL * 3);
static_assert(offsetof(NetV8, listen) == 8UL * 4);
static_assert(offsetof(NetV8, connect) == 8UL * 5);
static_assert(offsetof(NetV8, accept) == 8UL * 6);
static_assert(offsetof(NetV8, regMr) == 8UL * 7);
static_assert(offsetof(NetV8, regMrDmaBuf) == 8UL * 8);
static_assert(offsetof(NetV8, deregMr) == 8UL * 9);
static_assert(offsetof(NetV8, isend) == 8UL * 10);
static_assert(offsetof(NetV8, irecv) == 8UL * 11);
static_assert(offsetof(NetV8, iflush) == 8UL * 12);
static_assert(offsetof(NetV8, test) == 8UL * 13);
static_assert(offsetof(NetV8, closeSend) == 8UL * 14);
static_assert(offsetof(NetV8, closeRecv) == 8UL * 15);
static_assert(offsetof(NetV8, closeListen) == 8UL * 16);
static_assert(offsetof(NetV8, getDeviceMr) == 8UL * 17);
static_assert(offsetof(NetV8, irecvConsumed) == 8UL * 18);

static_assert(sizeof(NetV9) == 8UL * 20 && alignof(NetV9) == 8);
static_assert(offsetof(NetV9, name) == 8UL * 0);
static_assert(offsetof(NetV9, init) == 8UL * 1);
static_assert(offsetof(NetV9, devices) == 8UL * 2);
static_assert(offsetof(NetV9, getProperties) == 8UL * 3);
static_assert(offsetof(NetV9, listen) == 8UL * 4);
static_assert(offsetof(NetV9, connect) == 8UL * 5);
static_assert(offsetof(NetV9, accept) == 8UL * 6);
static_assert(offsetof(NetV9, regMr) == 8UL * 7);
static_assert(offsetof(NetV9, regMrDmaBuf) == 8UL * 8);
static_assert(offsetof(NetV9, deregMr) == 8UL * 9);
static_assert(offsetof(NetV9, isend) == 8UL * 10);
static_assert(offsetof(NetV9, irecv) == 8UL * 11);
static_assert(offsetof(NetV9, iflush) == 8UL * 12);
static_assert(offsetof(NetV9, test) == 8UL * 13);
static_assert(offsetof(NetV9, closeSend) == 8UL * 14);
static_assert(offsetof(NetV9, closeRecv) == 8UL * 15);
static_assert(offsetof(NetV9, closeListen) == 8UL * 16);
static_assert(offsetof(NetV9, getDeviceMr) == 8UL * 17);
static_assert(offsetof(NetV9, irecvConsumed) == 8UL * 18);
static_assert(offsetof(NetV9, makeVDevice) == 8UL * 19);

static_assert(sizeof(NetV10) == 8UL * 20 && alignof(NetV10) == 8);
static_assert(offsetof(NetV10, name) == 8UL * 0);
static_assert(offsetof(NetV10, init) == 8UL * 1);
static_assert(offsetof(NetV10, devices) == 8UL * 2);
static_assert(offsetof(NetV10, getProperties) == 8UL * 3);
static_assert(offsetof(NetV10, listen) == 8UL * 4);
static_assert(offsetof(NetV10, connect) == 8UL * 5);
static_assert(offsetof(NetV10, accept) == 8UL * 6);
static_assert(offsetof(NetV10, regMr) == 8UL * 7);
static_assert(offsetof(NetV10, regMrDmaBuf) == 8UL * 8);
static_assert(offsetof(NetV10, deregMr) == 8UL * 9);
static_assert(offsetof(NetV10, isend) == 8UL * 10);
static_assert(offsetof(NetV10, irecv) == 8UL * 11);
static_assert(offsetof(NetV10, iflush) == 8UL * 12);
static_assert(offsetof(NetV10, test) == 8UL * 13);
static_assert(offsetof(NetV10, closeSend) == 8UL * 14);
static_assert(offsetof(NetV10, closeRecv) == 8UL * 15);
static_assert(offsetof(NetV10, closeListen) == 8UL * 16);
static_assert(offsetof(NetV10, getDeviceMr) == 8UL * 17);
static_assert(offsetof(NetV10, irecvConsumed) == 8UL * 18);
static_assert(offsetof(NetV10, makeVDevice) == 8UL * 19);

static_assert(sizeof(NetV11) == 8UL * 22 && alignof(NetV11) == 8);
static_assert(offsetof(NetV11, name) == 8UL * 0);
static_assert(offsetof(NetV11, init) == 8UL * 1);
static_assert(offsetof(NetV11, devices) == 8UL * 2);
static_assert(offsetof(NetV11, getProperties) == 8UL * 3);
static_assert(offsetof(NetV11, listen) == 8UL * 4);
static_assert(offsetof(NetV11, connect) == 8UL * 5);
static_assert(offsetof(NetV11, accept) == 8UL * 6);
static_assert(offsetof(NetV11, regMr) == 8UL * 7);
static_assert(offsetof(NetV11, regMrDmaBuf) == 8UL * 8);
static_assert(offsetof(NetV11, deregMr) == 8UL * 9);
static_assert(offsetof(NetV11, isend) == 8UL * 10);
static_assert(offsetof(NetV11, irecv) == 8UL * 11);
static_assert(offsetof(NetV11, iflush) == 8UL * 12);
static_assert(offsetof(NetV11, test) == 8UL * 13);
static_assert(offsetof(NetV11, closeSend) == 8UL * 14);
static_assert(offsetof(NetV11, closeRecv) == 8UL * 15);
static_assert(offsetof(NetV11, closeListen) == 8UL * 16);
static_assert(offsetof(NetV11, getDeviceMr) == 8UL * 17);
static_assert(offsetof(NetV11, irecvConsumed) == 8UL * 18);
static_assert(offsetof(NetV11, makeVDevice) == 8UL * 19);
static_assert(offsetof(NetV11, finalize) == 8UL * 20);
static_assert(offsetof(NetV11, setNetAttr) == 8UL * 21);

// Everything NCCL reads or writes through a pointer must be plain data.
static_assert(std::is_standard_layout_v<PropertiesV8> &&
              std::is_trivially_copyable_v<PropertiesV8>);
static_assert(std::is_standard_layout_v<PropertiesV9> &&
              std::is_trivially_copyable_v<PropertiesV9>);
static_assert(std::is_standard_layout_v<PropertiesV10> &&
              std::is_trivially_copyable_v<PropertiesV10>);
static_assert(std::is_standard_layout_v<PropertiesV11> &&
              std::is_trivially_copyable_v<PropertiesV11>);
static_assert(std::is_standard_layout_v<NetAttrV11> && std::is_trivially_copyable_v<NetAttrV11>);
static_assert(std::is_standard_layout_v<NetV8> && std::is_trivially_copyable_v<NetV8>);
static_assert(std::is_standard_layout_v<NetV9> && std::is_trivially_copyable_v<NetV9>);
static_assert(std::is_standard_layout_v<NetV10> && std::is_trivially_copyable_v<NetV10>);
static_assert(std::is_standard_layout_v<NetV11> && std::is_trivially_copyable_v<NetV11>);

// ---------------------------------------------------------------------------------------------
// Cross-checks against NCCL's installed headers, when the build can see them
// ---------------------------------------------------------------------------------------------

#ifdef DUALPATH_NET_ABI_HAVE_NCCL_H
static_assert(sizeof(::ncclResult_t) == sizeof(NcclResult));
static_assert(static_cast<int>(::ncclSuccess) == success);
static_assert(static_cast<int>(::ncclUnhandledCudaError) == unhandledCudaError);
static_assert(static_cast<int>(::ncclSystemError) == systemError);
static_assert(static_cast<int>(::ncclInternalError) == internalError);
static_assert(static_cast<int>(::ncclInvalidArgument) == invalidArgument);
static_assert(static_cast<int>(::ncclInvalidUsage) == invalidUsage);
static_assert(static_cast<int>(::ncclRemoteError) == remoteError);
static_assert(static_cast<int>(::ncclInProgress) == inProgress);
static_assert(static_cast<int>(::ncclNumResults) == 8,
              "NCCL has a result code NcclResult does not know: extend it and the translation");
#ifdef NCCL_CONFIG_UNDEF_INT
static_assert(NCCL_CONFIG_UNDEF_INT == kConfigUndefInt);
#endif
#ifdef NCCL_CONFIG_INITIALIZER
static_assert(std::is_same_v<decltype(::ncclConfig_t::trafficClass), int>);
static_assert(
    [] {
      constexpr ::ncclConfig_t kDefault = NCCL_CONFIG_INITIALIZER;
      return kDefault.trafficClass;
    }() == kConfigUndefInt,
    "a default ncclConfig_t no longer leaves trafficClass unset");
#endif
#endif  // DUALPATH_NET_ABI_HAVE_NCCL_H

#ifdef DUALPATH_NET_ABI_HAVE_NET_DEVICE_H
static_assert(static_cast<int>(::NCCL_NET_DEVICE_HOST) == static_cast<int>(NetDeviceType::host));
static_assert(static_cast<int>(::NCCL_NET_DEVICE_UNPACK) ==
              static_cast<int>(NetDeviceType::unpack));
static_assert(static_cast<int>(::NCCL_NET_DEVICE_GIN_PROXY) ==
              static_cast<int>(NetDeviceType::ginProxy));
static_assert(static_cast<int>(::NCCL_NET_DEVICE_GIN_GDAKI) ==
              static_cast<int>(NetDeviceType::ginGdaki));
static_assert(sizeof(::ncclNetDeviceType) == sizeof(NetDeviceType));
static_assert(NCCL_NET_DEVICE_INVALID_VERSION == kNetDeviceInvalidVersion);
static_assert(NCCL_NET_DEVICE_UNPACK_VERSION == kNetDeviceUnpackVersion);
static_assert(sizeof(::ncclNetDeviceHandle_v11_t) == sizeof(NetDeviceHandle));
static_assert(offsetof(::ncclNetDeviceHandle_v11_t, handle) == offsetof(NetDeviceHandle, handle));
static_assert(offsetof(::ncclNetDeviceHandle_v11_t, size) == offsetof(NetDeviceHandle, size));
static_assert(offsetof(::ncclNetDeviceHandle_v11_t, needsProxyProgress) ==
              offsetof(NetDeviceHandle, needsProxyProgress));
#endif  // DUALPATH_NET_ABI_HAVE_NET_DEVICE_H

}  // namespace dualpath::plugin::abi

#endif  // DUALPATH_PLUGIN_SRC_NCCL_NET_ABI_H_
