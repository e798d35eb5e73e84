// ncclNetPlugin_v9 (NCCL 2.22, 2.23): no profiler handles, no config: the
// default class.
#include "abi_common.h"

namespace dualpath::plugin {
namespace {

using namespace abi;  // NOLINT(google-build-using-namespace): ABI names only

NcclResult initV9(DebugLogger logger) { return initLegacy(logger); }

NcclResult getPropertiesV9(int dev, PropertiesV9* props) { return fillProperties(dev, props); }

NcclResult connectV9(int dev, void* handle, void** send_comm, NetDeviceHandleV9** dev_comm) {
  return connect(legacyContext(), dev, kTrafficClassUndef, handle, send_comm, dev_comm);
}

NcclResult isendV9(void* send_comm, void* data, std::size_t size, int tag, void* mhandle,
                   void** request) {
  return isend(send_comm, data, size, tag, mhandle, request);
}

NcclResult irecvV9(void* recv_comm, int n, void** data, std::size_t* sizes, int* tags,
                   void** mhandles, void** request) {
  return irecv(recv_comm, n, data, sizes, sizeof(std::size_t), tags, mhandles, request);
}

NcclResult makeVDeviceV9(int* dev, VirtualDevicePropsV9* props) {
  return props == nullptr ? makeVDevice(dev, 0, nullptr) : makeVDevice(dev, props->ndevs, props->devs);
}

}  // namespace
}  // namespace dualpath::plugin

extern "C" __attribute__((visibility("default"))) const dualpath::plugin::abi::NetV9
    ncclNetPlugin_v9 = {
        "DualPath",
        dualpath::plugin::initV9,
        dualpath::plugin::devices,
        dualpath::plugin::getPropertiesV9,
        dualpath::plugin::legacyListen,
        dualpath::plugin::connectV9,
        dualpath::plugin::accept,
        dualpath::plugin::regMr,
        dualpath::plugin::regMrDmaBuf,
        dualpath::plugin::deregMr,
        dualpath::plugin::isendV9,
        dualpath::plugin::irecvV9,
        dualpath::plugin::iflush,
        dualpath::plugin::test,
        dualpath::plugin::closeSend,
        dualpath::plugin::closeRecv,
        dualpath::plugin::closeListen,
        dualpath::plugin::getDeviceMr,
        dualpath::plugin::irecvConsumed,
        dualpath::plugin::makeVDeviceV9,
};
