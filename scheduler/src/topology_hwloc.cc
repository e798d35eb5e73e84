// hwloc -> TopologyModel. The only file that includes <hwloc.h>: everything
// else works on our own model, so tests need neither hwloc nor a GPU server.
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <hwloc.h>

#include <dualpath/scheduler/topology.h>

namespace dualpath::scheduler::topo {
namespace {

// hwloc_topology_t with one owner.
class HwlocTopology {
 public:
  static Result<HwlocTopology> create() {
    hwloc_topology_t handle = nullptr;
    if (hwloc_topology_init(&handle) != 0) {
      return Status(StatusCode::io,
                    fmt::format("hwloc_topology_init failed: {}", std::strerror(errno)));
    }
    return HwlocTopology(handle);
  }
  HwlocTopology(HwlocTopology&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  HwlocTopology& operator=(HwlocTopology&&) = delete;
  HwlocTopology(const HwlocTopology&) = delete;
  HwlocTopology& operator=(const HwlocTopology&) = delete;
  ~HwlocTopology() {
    if (handle_ != nullptr) hwloc_topology_destroy(handle_);
  }

  hwloc_topology_t get() const noexcept { return handle_; }

 private:
  explicit HwlocTopology(hwloc_topology_t handle) : handle_(handle) {}
  hwloc_topology_t handle_;
};

// Without this filter hwloc drops PCI bridges and devices (and NVSwitches
// even under KEEP_IMPORTANT); we need the whole PCIe tree.
Status keepAllIo(const HwlocTopology& topology) {
  if (hwloc_topology_set_io_types_filter(topology.get(), HWLOC_TYPE_FILTER_KEEP_ALL) != 0) {
    return Status(StatusCode::io, fmt::format("hwloc_topology_set_io_types_filter failed: {}",
                                              std::strerror(errno)));
  }
  return Status::ok();
}

std::string formatBusId(const hwloc_obj_attr_u::hwloc_pcidev_attr_s& pci) {
  return fmt::format("{:04x}:{:02x}:{:02x}.{:x}", pci.domain, pci.bus, pci.dev, pci.func);
}

OsDeviceKind osDeviceKind(hwloc_obj_osdev_type_t type) {
  switch (type) {
    case HWLOC_OBJ_OSDEV_NETWORK:
      return OsDeviceKind::network;
    case HWLOC_OBJ_OSDEV_OPENFABRICS:
      return OsDeviceKind::openfabrics;
    case HWLOC_OBJ_OSDEV_BLOCK:
      return OsDeviceKind::block;
    case HWLOC_OBJ_OSDEV_GPU:
    case HWLOC_OBJ_OSDEV_DMA:
    case HWLOC_OBJ_OSDEV_COPROC:
      return OsDeviceKind::other;
  }
  return OsDeviceKind::other;
}

// The single NUMA node of the nearest non-I/O ancestor (I/O objects have no
// nodeset); walked by hand, like every other walk here.
int numaNodeOf(hwloc_obj_t object) {
  while (object != nullptr && object->nodeset == nullptr) object = object->parent;
  if (object == nullptr || hwloc_bitmap_weight(object->nodeset) != 1) return kUnknownNuma;
  return hwloc_bitmap_first(object->nodeset);
}

void describePci(const hwloc_obj_attr_u::hwloc_pcidev_attr_s& pci, TopologyNode& node) {
  node.bus_id = formatBusId(pci);
  node.pci_class = pci.class_id;
  node.vendor_id = pci.vendor_id;
  node.device_id = pci.device_id;
  node.link_gbytes_per_s = pci.linkspeed;
}

TopologyNode describe(hwloc_obj_t object) {
  TopologyNode node;
  node.numa_node = numaNodeOf(object);
  switch (object->type) {
    case HWLOC_OBJ_MACHINE:
      node.kind = NodeKind::machine;
      break;
    case HWLOC_OBJ_PACKAGE:
      node.kind = NodeKind::package;
      node.os_index = object->os_index;
      break;
    case HWLOC_OBJ_NUMANODE:
      node.kind = NodeKind::numa;
      node.os_index = object->os_index;
      break;
    case HWLOC_OBJ_BRIDGE:
      if (object->attr->bridge.upstream_type == HWLOC_OBJ_BRIDGE_HOST) {
        node.kind = NodeKind::host_bridge;
      } else {
        node.kind = NodeKind::pci_bridge;
        describePci(object->attr->bridge.upstream.pci, node);
      }
      break;
    case HWLOC_OBJ_PCI_DEVICE:
      node.kind = NodeKind::pci_device;
      describePci(object->attr->pcidev, node);
      break;
    default:
      node.kind = NodeKind::other;
      break;
  }
  return node;
}

// Copies the tree depth-first, so parents precede children. OS devices become
// part of their PCI function; those hanging elsewhere (OpenCL co-processors
// under a host bridge, say) name no PCI function and are left out.
class TreeCopier {
 public:
  std::vector<TopologyNode> take() && { return std::move(nodes_); }

  void copy(hwloc_obj_t object, NodeId parent) {
    if (object->type == HWLOC_OBJ_OS_DEVICE) {
      attachOsDevice(object, parent);
      return;
    }
    if (object->type == HWLOC_OBJ_MISC) return;
    const auto id = static_cast<NodeId>(nodes_.size());
    TopologyNode node = describe(object);
    node.parent = parent;
    nodes_.push_back(std::move(node));
    for (hwloc_obj_t child = object->memory_first_child; child != nullptr;
         child = child->next_sibling) {
      copy(child, id);
    }
    for (hwloc_obj_t child = object->first_child; child != nullptr; child = child->next_sibling) {
      copy(child, id);
    }
    for (hwloc_obj_t child = object->io_first_child; child != nullptr;
         child = child->next_sibling) {
      copy(child, id);
    }
  }

 private:
  void attachOsDevice(hwloc_obj_t object, NodeId parent) {
    if (parent == kNoParent || nodes_[parent].kind != NodeKind::pci_device) return;
    if (object->name == nullptr) return;
    nodes_[parent].os_devices.push_back({object->name, osDeviceKind(object->attr->osdev.type), 0});
  }

  std::vector<TopologyNode> nodes_;
};

std::vector<TopologyNode> copyTree(const HwlocTopology& topology) {
  TreeCopier copier;
  copier.copy(hwloc_get_root_obj(topology.get()), kNoParent);
  return std::move(copier).take();
}

// ---------------------------------------------------------------- sysfs rates

std::optional<std::string> readFirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  return line;
}

// The leading decimal number of `text`, if positive: "400 Gb/sec (4X NDR)"
// -> 400, "25000" -> 25000, "-1" (link down) -> nothing.
std::optional<double> leadingPositiveNumber(std::string_view text) {
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end == text.data() || !(value > 0)) return std::nullopt;
  return value;
}

// /sys/class/net/<netdev>/speed is in Mb/s; the InfiniBand port rate in Gb/s.
double sysfsRateGbps(const std::string& sysfs_root, const OsDevice& device) {
  std::optional<std::string> text;
  double gbps_per_unit = 1;
  if (device.kind == OsDeviceKind::network) {
    text = readFirstLine(fmt::format("{}/class/net/{}/speed", sysfs_root, device.name));
    gbps_per_unit = 1e-3;
  } else if (device.kind == OsDeviceKind::openfabrics) {
    text =
        readFirstLine(fmt::format("{}/class/infiniband/{}/ports/1/rate", sysfs_root, device.name));
  }
  if (!text) return 0;
  std::optional<double> value = leadingPositiveNumber(*text);
  return value ? *value * gbps_per_unit : 0;
}

void addSysfsRates(std::vector<TopologyNode>& nodes, const std::string& sysfs_root) {
  for (TopologyNode& node : nodes) {
    for (OsDevice& device : node.os_devices) {
      device.sysfs_rate_gbps = sysfsRateGbps(sysfs_root, device);
    }
  }
}

// ---------------------------------------------------------------- XML files

Result<std::string> readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Status(StatusCode::io, fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return Status(StatusCode::io, fmt::format("{}: cannot read: {}", path, std::strerror(errno)));
  }
  return text.str();
}

// hwloc's built-in ("nolibxml") parser stops at `<!--`, and the shared server
// files open with license comments. It also wants `<topology` at the start of
// the line after the `<?xml` and `<!DOCTYPE` headers, so a comment leaves with
// the blanks after it up to its line's end: a comment line vanishes whole.
Result<std::string> withoutXmlComments(std::string_view xml, const std::string& path) {
  constexpr std::string_view kOpen = "<!--";
  constexpr std::string_view kClose = "-->";
  std::string out;
  out.reserve(xml.size());
  std::size_t at = 0;
  while (at < xml.size()) {
    std::size_t open = xml.find(kOpen, at);
    if (open == std::string_view::npos) {
      out.append(xml.substr(at));
      break;
    }
    out.append(xml.substr(at, open - at));
    std::size_t close = xml.find(kClose, open + kOpen.size());
    if (close == std::string_view::npos) {
      auto line =
          1 + std::count(xml.begin(), xml.begin() + static_cast<std::ptrdiff_t>(open), '\n');
      return Status(StatusCode::invalid_argument,
                    fmt::format("{}:{}: XML comment never closed (no \"-->\")", path, line));
    }
    at = close + kClose.size();
    while (at < xml.size() && (xml[at] == ' ' || xml[at] == '\t' || xml[at] == '\r')) ++at;
    if (at < xml.size() && xml[at] == '\n') ++at;
  }
  return out;
}

}  // namespace

Result<TopologyModel> loadLiveTopology(const LiveTopologyOptions& options) {
  DP_TRY_ASSIGN(HwlocTopology topology, HwlocTopology::create());
  DP_TRY(keepAllIo(topology));
  if (hwloc_topology_load(topology.get()) != 0) {
    return Status(StatusCode::io,
                  fmt::format("hwloc cannot discover this machine: {}", std::strerror(errno)));
  }
  std::vector<TopologyNode> nodes = copyTree(topology);
  addSysfsRates(nodes, options.sysfs_root);
  return TopologyModel::create(std::string(kLiveSource), std::move(nodes));
}

Result<TopologyModel> loadTopologyXml(const std::string& path) {
  DP_TRY_ASSIGN(std::string text, readFile(path));
  DP_TRY_ASSIGN(std::string xml, withoutXmlComments(text, path));
  if (xml.size() >= static_cast<std::size_t>(std::numeric_limits<int>::max())) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("{}: {} bytes is too large for hwloc", path, xml.size()));
  }
  DP_TRY_ASSIGN(HwlocTopology topology, HwlocTopology::create());
  DP_TRY(keepAllIo(topology));
  // The size counts the terminating NUL, as hwloc's own exporter does.
  if (hwloc_topology_set_xmlbuffer(topology.get(), xml.c_str(), static_cast<int>(xml.size() + 1)) !=
          0 ||
      hwloc_topology_load(topology.get()) != 0) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("{}: hwloc cannot load it as a topology (XML format v1 or v2): {} "
                              "(HWLOC_XML_VERBOSE=1 prints hwloc's parser messages)",
                              path, std::strerror(errno)));
  }
  return TopologyModel::create(path, copyTree(topology));
}

}  // namespace dualpath::scheduler::topo
