// ncclNetPlugin_v10 (NCCL 2.24 to 2.27): init once per load; the class comes
// from connect's config.
#include "abi_common.h"

namespace dualpath::plugin {
namespace {

using namespace abi;  // NOLINT(google-build-using-namespace): ABI names only

NcclResult initV10(DebugLogger logger, ProfilerCallback) { return initLegacy(logger); }

NcclResult getPropertiesV10(int dev, PropertiesV10* props) { return fillProperties(dev, props); }

NcclResult connectV10(int dev, CommConfigV10* config, void* handle, void** send_comm,
                      NetDeviceHandleV10** dev_comm) {
  const int traffic_class = config != nullptr ? config->trafficClass : kTrafficClassUndef;
  return connect(legacyContext(), dev, traffic_class, handle, send_comm, dev_comm);
}

NcclResult isendV10(void* send_comm, void* data, std::size_t size, int tag, void* mhandle, void*,
                    void** request) {
  return isend(send_comm, data, size, tag, mhandle, request);
}

NcclResult irecvV10(void* recv_comm, int n, void** data, std::size_t* sizes, int* tags,
                    void** mhandles, void**, void** request) {
  return irecv(recv_comm, n, data, sizes, sizeof(std::size_t), tags, mhandles, request);
}

NcclResult makeVDeviceV10(int* dev, VirtualDevicePropsV10* props) {
  return props == nullptr ? makeVDevice(dev, 0, nullptr) : makeVDevice(dev, props->ndevs, props->devs);
}

}  // namespace
}  // namespace dualpath::plugin

extern "C" __attribute__((visibility("default"))) const dualpath::plugin::abi::NetV10
    ncclNetPlugin_v10 = {
        "DualPath",
        dualpath::plugin::initV10,
        dualpath::plugin::devices,
        dualpath::plugin::getPropertiesV10,
        dualpath::plugin::legacyListen,
        dualpath::plugin::connectV10,
        dualpath::plugin::accept,
        dualpath::plugin::regMr,
        dualpath::plugin::regMrDmaBuf,
        dualpath::plugin::deregMr,
        dualpath::plugin::isendV10,
        dualpath::plugin::irecvV10,
        dualpath::plugin::iflush,
        dualpath::plugin::test,
        dualpath::plugin::closeSend,
        dualpath::plugin::closeRecv,
        dualpath::plugin::closeListen,
        dualpath::plugin::getDeviceMr,
        dualpath::plugin::irecvConsumed,
        dualpath::plugin::makeVDeviceV10,
};
