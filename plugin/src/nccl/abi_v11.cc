// ncclNetPlugin_v11: the table NCCL 2.28 to 2.30 load first. One of the four
// files that see NCCL's types; each entry is a call into the boundary layer.
#include "abi_common.h"

namespace dualpath::plugin {
namespace {

using namespace abi;  // NOLINT(google-build-using-namespace): ABI names only

NcclResult initV11(void** ctx, std::uint64_t comm_id, CommConfigV11* config, DebugLogger logger,
                   ProfilerCallback) {
  // NCCL's config lives on its stack: read it now.
  const int traffic_class = config != nullptr ? config->trafficClass : kTrafficClassUndef;
  return init(ctx, comm_id, traffic_class, logger);
}

NcclResult getPropertiesV11(int dev, PropertiesV11* props) { return fillProperties(dev, props); }

NcclResult listenV11(void* ctx, int dev, void* handle, void** listen_comm) {
  return listen(ctx, dev, handle, listen_comm, /*any_class=*/false);
}

NcclResult connectV11(void* ctx, int dev, void* handle, void** send_comm,
                      NetDeviceHandleV11** dev_comm) {
  return connect(ctx, dev, kContextClass, handle, send_comm, dev_comm);
}

NcclResult isendV11(void* send_comm, void* data, std::size_t size, int tag, void* mhandle, void*,
                    void** request) {
  return isend(send_comm, data, size, tag, mhandle, request);
}

NcclResult irecvV11(void* recv_comm, int n, void** data, std::size_t* sizes, int* tags,
                    void** mhandles, void**, void** request) {
  return irecv(recv_comm, n, data, sizes, sizeof(std::size_t), tags, mhandles, request);
}

NcclResult makeVDeviceV11(int* dev, VirtualDevicePropsV11* props) {
  if (props == nullptr) return makeVDevice(dev, 0, nullptr);
  return makeVDevice(dev, props->ndevs, props->devs);
}

NcclResult setNetAttrV11(void* ctx, NetAttrV11* attr) {
  return setNetAttr(ctx, attr);
}

}  // namespace
}  // namespace dualpath::plugin

extern "C" __attribute__((visibility("default"))) const dualpath::plugin::abi::NetV11
    ncclNetPlugin_v11 = {
        "DualPath",
        dualpath::plugin::initV11,
        dualpath::plugin::devices,
        dualpath::plugin::getPropertiesV11,
        dualpath::plugin::listenV11,
        dualpath::plugin::connectV11,
        dualpath::plugin::accept,
        dualpath::plugin::regMr,
        dualpath::plugin::regMrDmaBuf,
        dualpath::plugin::deregMr,
        dualpath::plugin::isendV11,
        dualpath::plugin::irecvV11,
        dualpath::plugin::iflush,
        dualpath::plugin::test,
        dualpath::plugin::closeSend,
        dualpath::plugin::closeRecv,
        dualpath::plugin::closeListen,
        dualpath::plugin::getDeviceMr,
        dualpath::plugin::irecvConsumed,
        dualpath::plugin::makeVDeviceV11,
        dualpath::plugin::finalize,
        dualpath::plugin::setNetAttrV11,
};
