// ncclNetPlugin_v8 (NCCL 2.19 to 2.21): int sizes on isend/irecv, no virtual
// devices, the default class.
#include "abi_common.h"

namespace dualpath::plugin {
namespace {

using namespace abi;  // NOLINT(google-build-using-namespace): ABI names only

NcclResult initV8(DebugLogger logger) { return initLegacy(logger); }

NcclResult getPropertiesV8(int dev, PropertiesV8* props) { return fillProperties(dev, props); }

NcclResult connectV8(int dev, void* handle, void** send_comm, NetDeviceHandleV8** dev_comm) {
  return connect(legacyContext(), dev, kTrafficClassUndef, handle, send_comm, dev_comm);
}

NcclResult isendV8(void* send_comm, void* data, int size, int tag, void* mhandle, void** request) {
  if (size < 0) return invalidUsage;
  return isend(send_comm, data, static_cast<std::size_t>(size), tag, mhandle, request);
}

NcclResult irecvV8(void* recv_comm, int n, void** data, int* sizes, int* tags, void** mhandles,
                   void** request) {
  return irecv(recv_comm, n, data, sizes, sizeof(int), tags, mhandles, request);
}

}  // namespace
}  // namespace dualpath::plugin

extern "C" __attribute__((visibility("default"))) const dualpath::plugin::abi::NetV8
    ncclNetPlugin_v8 = {
        "DualPath",
        dualpath::plugin::initV8,
        dualpath::plugin::devices,
        dualpath::plugin::getPropertiesV8,
        dualpath::plugin::legacyListen,
        dualpath::plugin::connectV8,
        dualpath::plugin::accept,
        dualpath::plugin::regMr,
        dualpath::plugin::regMrDmaBuf,
        dualpath::plugin::deregMr,
        dualpath::plugin::isendV8,
        dualpath::plugin::irecvV8,
        dualpath::plugin::iflush,
        dualpath::plugin::test,
        dualpath::plugin::closeSend,
        dualpath::plugin::closeRecv,
        dualpath::plugin::closeListen,
        dualpath::plugin::getDeviceMr,
        dualpath::plugin::irecvConsumed,
};
