// Network devices the transport can use, as UCX reports them.
//
// A device is one UCX network device ("lo", "eth0", "mlx5_0:1") with the UCT
// transports that serve it, the IP address its listeners bind to, its PCI path
// from sysfs when it has one, and its link speed. Selection follows
// DUALPATH_NET_DEVICES / DUALPATH_NET_DEVICES_EXCLUDE (docs/parameters.md):
// explicit patterns when given, otherwise RDMA devices, else physical TCP
// devices, else loopback. Virtual and management interfaces (docker*, veth*,
// virbr*, bmc*) are never picked automatically, only by name.
//
// Threading: pure functions plus one UCX query; call from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <dualpath/common/status.h>

namespace dualpath::transport {

enum class DeviceKind : std::uint8_t {
  tcp,   // UCX tcp over a kernel network interface
  rdma,  // InfiniBand or RoCE (UCX rc/ud/dc transports)
};
std::string_view deviceKindName(DeviceKind kind) noexcept;

struct DeviceInfo {
  std::string name;    // UCX device name, unique: "lo", "eth0", "mlx5_0:1"
  DeviceKind kind = DeviceKind::tcp;
  std::string netdev;  // kernel interface carrying the listener's IP ("lo", "ib0")
  std::string ip;      // listener address on `netdev`, textual IPv4 or IPv6
  std::vector<std::string> transports;  // UCT transports: "tcp", "rc_mlx5", ...
  std::string pci_path;  // "/sys/devices/pci0000:00/0000:00:03.0/..."; empty if none
  std::uint32_t speed_mbps = 0;  // 0 when the kernel does not say
  bool loopback = false;
  bool is_virtual = false;  // no PCI device behind it (veth, bridges, docker)
};

struct DeviceFilter {
  std::vector<std::string> include;  // shell patterns; empty = automatic choice
  std::vector<std::string> exclude;  // shell patterns
};

// Every UCX network device on this host with its attributes, unfiltered.
// Fails with `unsupported` when UCX reports none.
Result<std::vector<DeviceInfo>> queryUcxDevices();

// Applies the filter (see the file comment). Fails with `not_found`, listing
// what exists, when nothing remains; an include pattern that matches nothing
// is an error too, since a typo must not silently change the device set.
Result<std::vector<DeviceInfo>> selectDevices(std::vector<DeviceInfo> all,
                                              const DeviceFilter& filter);

}  // namespace dualpath::transport
