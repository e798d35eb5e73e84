// Shared by the four tables: getProperties differs between versions only in
// which members the struct has; v8-v10 also share listen.
#pragma once

#include "../boundary.h"
#include "net_abi.h"

namespace dualpath::plugin {

template <class Props>
abi::NcclResult fillProperties(int dev, Props* props) {
  DeviceProperties common;
  if (abi::NcclResult r = properties(dev, &common); r != abi::success) return r;
  *props = Props{};
  props->name = const_cast<char*>(common.name);
  props->pciPath = const_cast<char*>(common.pci_path);
  props->guid = common.guid;
  props->ptrSupport = common.ptr_support;
  props->regIsGlobal = 0;
  props->speed = common.speed_mbps;
  props->port = common.port;
  props->latency = common.latency_us;
  props->maxComms = common.max_comms;
  props->maxRecvs = common.max_recvs;
  props->netDeviceType = abi::NetDeviceType::host;
  props->netDeviceVersion = abi::kNetDeviceInvalidVersion;
  if constexpr (requires { props->vProps; }) {
    props->forceFlush = 0;
    props->vProps.ndevs = 1;
    props->vProps.devs[0] = dev;
    props->maxP2pBytes = common.max_p2p_bytes;
    props->maxCollBytes = common.max_coll_bytes;
  }
  if constexpr (requires { props->maxMultiRequestSize; }) {
    props->maxMultiRequestSize = 1;  // no multi-request support
  }
  return abi::success;
}

// v8-v10 have no context argument: listen accepts any class (v10's class is
// chosen by the connecting side's config and travels in the hello).
inline abi::NcclResult legacyListen(int dev, void* handle, void** listen_comm) {
  return listen(legacyContext(), dev, handle, listen_comm, /*any_class=*/true);
}

}  // namespace dualpath::plugin
