#include <arpa/inet.h>
#include <fnmatch.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <uct/api/uct.h>

#include <dualpath/common/log.h>
#include <dualpath/transport/device.h>

namespace dualpath::transport {

namespace {

namespace fs = std::filesystem;

bool isRdmaTransport(std::string_view tl) {
  return tl.starts_with("rc") || tl.starts_with("ud") || tl.starts_with("dc");
}

// Interfaces that are never a compute or storage NIC unless named explicitly.
bool looksVirtual(std::string_view name) {
  for (std::string_view prefix : {"docker", "veth", "virbr", "br-", "bmc", "cni", "flannel",
                                  "cali", "tun", "tap", "vxlan", "kube"}) {
    if (name.starts_with(prefix)) return true;
  }
  return false;
}

std::string readLine(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// For "mlx5_0:1" the kernel interface is listed under the IB device.
std::string netdevOf(std::string_view ucx_name) {
  std::string device(ucx_name.substr(0, ucx_name.find(':')));
  std::error_code ec;
  fs::path net = fs::path("/sys/class/infiniband") / device / "device" / "net";
  if (fs::is_directory(net, ec)) {
    for (const auto& entry : fs::directory_iterator(net, ec)) return entry.path().filename();
  }
  return device;
}

std::map<std::string, std::string> interfaceAddresses() {
  std::map<std::string, std::string> addresses;  // IPv4 preferred over IPv6
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return addresses;
  for (ifaddrs* a = list; a != nullptr; a = a->ifa_next) {
    if (a->ifa_addr == nullptr) continue;
    char text[INET6_ADDRSTRLEN] = {};
    if (a->ifa_addr->sa_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, text,
                sizeof(text));
      addresses[a->ifa_name] = text;
    } else if (a->ifa_addr->sa_family == AF_INET6 && !addresses.contains(a->ifa_name)) {
      const auto* in6 = reinterpret_cast<sockaddr_in6*>(a->ifa_addr);
      if (IN6_IS_ADDR_LINKLOCAL(&in6->sin6_addr)) continue;  // needs a scope id
      inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
      addresses[a->ifa_name] = text;
    }
  }
  freeifaddrs(list);
  return addresses;
}

void describeFromSysfs(DeviceInfo& info) {
  std::error_code ec;
  fs::path sys = fs::path("/sys/class/net") / info.netdev;
  fs::path device = sys / "device";
  if (fs::exists(device, ec)) {
    fs::path resolved = fs::canonical(device, ec);
    if (!ec && resolved.string().find("/pci") != std::string::npos) info.pci_path = resolved;
  }
  info.is_virtual = info.pci_path.empty();
  const std::string speed = readLine(sys / "speed");
  if (!speed.empty()) {
    long mbps = std::strtol(speed.c_str(), nullptr, 10);
    if (mbps > 0 && mbps < INT_MAX) info.speed_mbps = static_cast<std::uint32_t>(mbps);
  }
  if (info.kind == DeviceKind::rdma) {
    // "200 Gb/sec (4X HDR)" in the IB port's rate file wins over the netdev.
    std::string ib_device = info.name.substr(0, info.name.find(':'));
    std::string port = info.name.find(':') == std::string::npos
                           ? "1"
                           : info.name.substr(info.name.find(':') + 1);
    std::string rate = readLine(fs::path("/sys/class/infiniband") / ib_device / "ports" / port / "rate");
    if (!rate.empty()) {
      long gbps = std::strtol(rate.c_str(), nullptr, 10);
      if (gbps > 0) info.speed_mbps = static_cast<std::uint32_t>(gbps * 1000);
    }
    fs::path ib_pci = fs::canonical(fs::path("/sys/class/infiniband") / ib_device / "device", ec);
    if (!ec) info.pci_path = ib_pci;
    info.is_virtual = false;
  }
}

bool matchesAny(const std::vector<std::string>& patterns, const std::string& name) {
  return std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) {
    return fnmatch(p.c_str(), name.c_str(), 0) == 0;
  });
}

}  // namespace

std::string_view deviceKindName(DeviceKind kind) noexcept {
  switch (kind) {
    case DeviceKind::tcp:
      return "tcp";
    case DeviceKind::rdma:
      return "rdma";
  }
  return "unknown";
}

Result<std::vector<DeviceInfo>> queryUcxDevices() {
  uct_component_h* components = nullptr;
  unsigned component_count = 0;
  if (uct_query_components(&components, &component_count) != UCS_OK) {
    return Status(StatusCode::unsupported, "UCX reports no transport components");
  }
  std::map<std::string, DeviceInfo> by_name;
  for (unsigned c = 0; c < component_count; ++c) {
    uct_component_attr_t attr{};
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_NAME | UCT_COMPONENT_ATTR_FIELD_MD_RESOURCE_COUNT;
    if (uct_component_query(components[c], &attr) != UCS_OK) continue;
    std::vector<uct_md_resource_desc_t> mds(attr.md_resource_count);
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_MD_RESOURCES;
    attr.md_resources = mds.data();
    if (uct_component_query(components[c], &attr) != UCS_OK) continue;
    for (const uct_md_resource_desc_t& md_resource : mds) {
      uct_md_config_t* md_config = nullptr;
      if (uct_md_config_read(components[c], nullptr, nullptr, &md_config) != UCS_OK) continue;
      uct_md_h md = nullptr;
      ucs_status_t opened = uct_md_open(components[c], md_resource.md_name, md_config, &md);
      uct_config_release(md_config);
      if (opened != UCS_OK) continue;
      uct_tl_resource_desc_t* resources = nullptr;
      unsigned resource_count = 0;
      if (uct_md_query_tl_resources(md, &resources, &resource_count) == UCS_OK) {
        for (unsigned r = 0; r < resource_count; ++r) {
          if (resources[r].dev_type != UCT_DEVICE_TYPE_NET) continue;
          DeviceInfo& info = by_name[resources[r].dev_name];
          info.name = resources[r].dev_name;
          if (isRdmaTransport(resources[r].tl_name)) info.kind = DeviceKind::rdma;
          info.transports.emplace_back(resources[r].tl_name);
        }
        uct_release_tl_resource_list(resources);
      }
      uct_md_close(md);
    }
  }
  uct_release_component_list(components);
  if (by_name.empty()) {
    return Status(StatusCode::unsupported,
                  "UCX reports no network device (check UCX_TLS and UCX_NET_DEVICES)");
  }

  const std::map<std::string, std::string> addresses = interfaceAddresses();
  std::vector<DeviceInfo> devices;
  for (auto& [name, info] : by_name) {
    info.netdev = info.kind == DeviceKind::rdma ? netdevOf(name) : name;
    info.loopback = info.netdev == "lo";
    if (auto it = addresses.find(info.netdev); it != addresses.end()) info.ip = it->second;
    describeFromSysfs(info);
    if (info.loopback) info.is_virtual = true;
    devices.push_back(std::move(info));
  }
  return devices;
}

Result<std::vector<DeviceInfo>> selectDevices(std::vector<DeviceInfo> all,
                                              const DeviceFilter& filter) {
  std::vector<std::string> names;
  for (const DeviceInfo& d : all) names.push_back(d.name);

  for (const std::string& pattern : filter.include) {
    if (std::none_of(all.begin(), all.end(),
                     [&](const DeviceInfo& d) { return matchesAny({pattern}, d.name); })) {
      return Status(StatusCode::not_found,
                    fmt::format("DUALPATH_NET_DEVICES: '{}' matches no UCX network device; "
                                "devices: {}",
                                pattern, fmt::join(names, ", ")));
    }
  }
  std::vector<DeviceInfo> chosen;
  auto usable = [&](const DeviceInfo& d) {
    return !matchesAny(filter.exclude, d.name) && !d.ip.empty();
  };
  if (!filter.include.empty()) {
    for (DeviceInfo& d : all) {
      if (matchesAny(filter.include, d.name) && usable(d)) chosen.push_back(d);
    }
  } else {
    // Automatic: RDMA first; else physical TCP NICs; else loopback.
    for (DeviceKind kind : {DeviceKind::rdma, DeviceKind::tcp}) {
      for (DeviceInfo& d : all) {
        if (d.kind == kind && !d.loopback && !looksVirtual(d.name) && usable(d)) chosen.push_back(d);
      }
      if (!chosen.empty()) break;
    }
    if (chosen.empty()) {
      for (DeviceInfo& d : all) {
        if (d.loopback && usable(d)) chosen.push_back(d);
      }
    }
  }
  if (chosen.empty()) {
    return Status(StatusCode::not_found,
                  fmt::format("no usable network device after DUALPATH_NET_DEVICES='{}' and "
                              "DUALPATH_NET_DEVICES_EXCLUDE='{}' (a device also needs an IP "
                              "address); UCX devices: {}",
                              fmt::join(filter.include, ","), fmt::join(filter.exclude, ","),
                              fmt::join(names, ", ")));
  }
  // Fastest first, as NCCL orders NICs; names break ties so the order is stable.
  std::stable_sort(chosen.begin(), chosen.end(), [](const DeviceInfo& a, const DeviceInfo& b) {
    if (a.kind != b.kind) return a.kind == DeviceKind::rdma;
    return a.name < b.name;
  });
  return chosen;
}

}  // namespace dualpath::transport
