// The rules of docs/topology.md, on our own model: distance classes, the
// inventory, NIC eligibility, CNIC assignment and SNIC selection. No I/O.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <tuple>

#include <fmt/format.h>
#include <fnmatch.h>

#include <dualpath/scheduler/topology.h>

namespace dualpath::scheduler::topo {

std::string_view distanceClassName(DistanceClass distance) noexcept {
  switch (distance) {
    case DistanceClass::pix:
      return "PIX";
    case DistanceClass::pxb:
      return "PXB";
    case DistanceClass::phb:
      return "PHB";
    case DistanceClass::node:
      return "NODE";
    case DistanceClass::sys:
      return "SYS";
  }
  return "?";
}

std::string_view nicKindName(NicKind kind) noexcept {
  switch (kind) {
    case NicKind::rdma:
      return "rdma";
    case NicKind::ethernet:
      return "ethernet";
  }
  return "?";
}

std::string_view nicRoleName(NicRole role) noexcept {
  switch (role) {
    case NicRole::cnic:
      return "cnic";
    case NicRole::snic:
      return "snic";
    case NicRole::unused:
      return "unused";
    case NicRole::excluded:
      return "excluded";
  }
  return "?";
}

std::string_view speedSourceName(SpeedSource source) noexcept {
  switch (source) {
    case SpeedSource::unknown:
      return "unknown";
    case SpeedSource::pcie_link:
      return "pcie_link";
    case SpeedSource::sysfs:
      return "sysfs";
  }
  return "?";
}

// ---------------------------------------------------------------- the model

Result<TopologyModel> TopologyModel::create(std::string source, std::vector<TopologyNode> nodes) {
  if (nodes.empty() || nodes[0].parent != kNoParent) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("{}: a topology starts with its root node", source));
  }
  TopologyModel model;
  model.depths_.assign(nodes.size(), 0);
  for (NodeId id = 1; id < nodes.size(); ++id) {
    if (nodes[id].parent >= id) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("{}: node {} has parent {}; a parent precedes its children", source,
                                id, nodes[id].parent));
    }
    model.depths_[id] = model.depths_[nodes[id].parent] + 1;
  }
  model.source_ = std::move(source);
  model.nodes_ = std::move(nodes);
  return model;
}

// ---------------------------------------------------------------- distances

namespace {

NodeId lowestCommonAncestor(const TopologyModel& model, NodeId a, NodeId b) {
  while (model.depth(a) > model.depth(b)) a = model.node(a).parent;
  while (model.depth(b) > model.depth(a)) b = model.node(b).parent;
  while (a != b) {
    a = model.node(a).parent;
    b = model.node(b).parent;
  }
  return a;
}

// PCI bridges strictly between `from` and its ancestor `ancestor`.
std::uint32_t bridgesBetween(const TopologyModel& model, NodeId from, NodeId ancestor) {
  std::uint32_t bridges = 0;
  for (NodeId at = from; at != ancestor; at = model.node(at).parent) {
    if (at != from && model.node(at).kind == NodeKind::pci_bridge) ++bridges;
  }
  return bridges;
}

}  // namespace

DistanceClass distanceBetween(const TopologyModel& model, NodeId a, NodeId b) {
  const NodeId ancestor = lowestCommonAncestor(model, a, b);
  switch (model.node(ancestor).kind) {
    case NodeKind::pci_bridge:
    case NodeKind::pci_device:
      // One bridge each: the downstream ports of one switch (NCCL's PIX).
      return bridgesBetween(model, a, ancestor) <= 1 && bridgesBetween(model, b, ancestor) <= 1
                 ? DistanceClass::pix
                 : DistanceClass::pxb;
    case NodeKind::host_bridge:
      return DistanceClass::phb;
    case NodeKind::machine:
    case NodeKind::package:
    case NodeKind::numa:
    case NodeKind::other:
      break;
  }
  const int numa_a = model.node(a).numa_node;
  return numa_a != kUnknownNuma && numa_a == model.node(b).numa_node ? DistanceClass::node
                                                                     : DistanceClass::sys;
}

// ---------------------------------------------------------------- inventory

namespace {

constexpr std::uint16_t kNvidiaVendor = 0x10de;
constexpr std::uint16_t kDisplayClass = 0x03;  // PCI base class: VGA, XGA, 3D controllers
constexpr std::uint16_t kNvmeClass = 0x0108;

bool hasOsDevice(const TopologyNode& node, OsDeviceKind kind) {
  return std::any_of(node.os_devices.begin(), node.os_devices.end(),
                     [kind](const OsDevice& device) { return device.kind == kind; });
}

bool isNic(const TopologyNode& node) {
  return node.kind == NodeKind::pci_device &&
         (hasOsDevice(node, OsDeviceKind::openfabrics) || hasOsDevice(node, OsDeviceKind::network));
}

bool isNvme(const TopologyNode& node) {
  return node.kind == NodeKind::pci_device && node.pci_class == kNvmeClass;
}

}  // namespace

bool isGpu(const TopologyNode& node) noexcept {
  return node.kind == NodeKind::pci_device && (node.pci_class >> 8) == kDisplayClass &&
         node.vendor_id == kNvidiaVendor;
}

namespace {

struct Inventory {
  std::vector<NodeId> gpus;  // PCI bus order, like every list here
  std::vector<NodeId> nics;
  std::vector<NodeId> nvme;
  std::vector<std::uint32_t> packages;
  std::vector<std::uint32_t> numa_nodes;
  std::uint32_t pcie_switches = 0;
};

// A switch is counted by its upstream port: a PCI bridge with bridges below
// it, whose parent is a root port or a downstream port of another switch. A
// bridge directly below a host bridge is a root port; the bridges directly
// below an upstream port are that switch's downstream ports. hwloc gives no
// PCIe port types, so the roles alternate by position.
std::uint32_t countPcieSwitches(const TopologyModel& model) {
  const auto nodes = model.nodes();
  std::vector<bool> has_bridge_below(nodes.size(), false);
  for (const TopologyNode& node : nodes) {
    if (node.kind == NodeKind::pci_bridge) has_bridge_below[node.parent] = true;
  }
  std::vector<bool> upstream_port(nodes.size(), false);
  std::uint32_t switches = 0;
  for (NodeId id = 1; id < nodes.size(); ++id) {
    const NodeId parent = nodes[id].parent;
    upstream_port[id] = nodes[id].kind == NodeKind::pci_bridge && has_bridge_below[id] &&
                        nodes[parent].kind == NodeKind::pci_bridge && !upstream_port[parent];
    if (upstream_port[id]) ++switches;
  }
  return switches;
}

void sortByBusId(const TopologyModel& model, std::vector<NodeId>& ids) {
  std::sort(ids.begin(), ids.end(),
            [&](NodeId a, NodeId b) { return model.node(a).bus_id < model.node(b).bus_id; });
}

Inventory takeInventory(const TopologyModel& model) {
  Inventory inventory;
  std::set<std::uint32_t> packages;
  std::set<std::uint32_t> numa_nodes;
  for (NodeId id = 0; id < model.nodes().size(); ++id) {
    const TopologyNode& node = model.node(id);
    if (node.kind == NodeKind::package) packages.insert(node.os_index);
    if (node.kind == NodeKind::numa) numa_nodes.insert(node.os_index);
    if (isGpu(node)) inventory.gpus.push_back(id);
    if (isNic(node)) inventory.nics.push_back(id);
    if (isNvme(node)) inventory.nvme.push_back(id);
  }
  sortByBusId(model, inventory.gpus);
  sortByBusId(model, inventory.nics);
  sortByBusId(model, inventory.nvme);
  inventory.packages.assign(packages.begin(), packages.end());
  inventory.numa_nodes.assign(numa_nodes.begin(), numa_nodes.end());
  inventory.pcie_switches = countPcieSwitches(model);
  return inventory;
}

std::string firstOsDevice(const TopologyNode& node, OsDeviceKind kind) {
  for (const OsDevice& device : node.os_devices) {
    if (device.kind == kind) return device.name;
  }
  return {};
}

// The best upper bound known: the PCIe link (GB/s x 8) or, on the live
// machine, the port rate the kernel reports, whichever is smaller.
void measureSpeed(const TopologyNode& node, NicReport& nic) {
  if (node.link_gbytes_per_s > 0) {
    nic.speed_gbps = node.link_gbytes_per_s * 8;
    nic.speed_source = SpeedSource::pcie_link;
  }
  for (const OsDevice& device : node.os_devices) {
    const double rate = device.sysfs_rate_gbps;
    if (rate > 0 && (nic.speed_gbps == 0 || rate < nic.speed_gbps)) {
      nic.speed_gbps = rate;
      nic.speed_source = SpeedSource::sysfs;
    }
  }
}

NicReport describeNic(const TopologyNode& node) {
  NicReport nic;
  nic.netdev = firstOsDevice(node, OsDeviceKind::network);
  std::string rdma_device = firstOsDevice(node, OsDeviceKind::openfabrics);
  nic.kind = rdma_device.empty() ? NicKind::ethernet : NicKind::rdma;
  nic.name = rdma_device.empty() ? nic.netdev : rdma_device;
  nic.bus_id = node.bus_id;
  nic.vendor_id = node.vendor_id;
  nic.device_id = node.device_id;
  nic.numa_node = node.numa_node;
  measureSpeed(node, nic);
  return nic;
}

GpuReport describeGpu(const TopologyNode& node, std::uint32_t index) {
  GpuReport gpu;
  gpu.index = index;
  gpu.bus_id = node.bus_id;
  gpu.vendor_id = node.vendor_id;
  gpu.device_id = node.device_id;
  gpu.numa_node = node.numa_node;
  return gpu;
}

// ---------------------------------------------------------------- patterns

// lspci's form, without the PCI domain, when the domain is 0000.
std::string_view shortBusId(std::string_view bus_id) {
  constexpr std::string_view kDomainZero = "0000:";
  return bus_id.starts_with(kDomainZero) ? bus_id.substr(kDomainZero.size()) : std::string_view{};
}

// Every name a user may call the NIC by.
std::vector<std::string> namesOf(const NicReport& nic) {
  std::vector<std::string> names{nic.name, nic.netdev, nic.bus_id,
                                 std::string(shortBusId(nic.bus_id))};
  std::erase_if(names, [](const std::string& name) { return name.empty(); });
  return names;
}

bool matchesPattern(const std::string& pattern, const NicReport& nic) {
  for (const std::string& name : namesOf(nic)) {
    if (fnmatch(pattern.c_str(), name.c_str(), 0) == 0) return true;
  }
  return false;
}

const NicPattern* firstMatch(std::span<const NicPattern> patterns, const NicReport& nic) {
  for (const NicPattern& pattern : patterns) {
    if (matchesPattern(pattern.pattern, nic)) return &pattern;
  }
  return nullptr;
}

std::string formatGbps(double gbps) {
  return fmt::format("{:g}", std::round(gbps * 10) / 10);
}

// Hypervisor NICs: virtio, Hyper-V, VMware, Xen.
std::optional<std::string_view> virtualNicFamily(std::uint16_t vendor_id) {
  switch (vendor_id) {
    case 0x1af4:
      return "virtio";
    case 0x1414:
      return "Hyper-V";
    case 0x15ad:
      return "VMware";
    case 0x5853:
      return "Xen";
    default:
      return std::nullopt;
  }
}

std::string joinNames(const std::vector<std::string>& names) {
  return names.empty() ? std::string("none") : fmt::format("{}", fmt::join(names, ", "));
}

// A p5 has 56 spare NICs: a warning names the first few, the NIC table all.
std::string abbreviatedNames(std::vector<std::string> names) {
  constexpr std::size_t kShown = 8;
  if (names.size() <= kShown) return joinNames(names);
  const std::size_t hidden = names.size() - kShown;
  names.resize(kShown);
  return fmt::format("{} and {} more in the NIC table", joinNames(names), hidden);
}

// ---------------------------------------------------------------- planning

// What the planner knows about one NIC beyond its report.
struct NicState {
  bool eligible = false;
  bool storage = false;    // named in [storage] nics
  bool candidate = false;  // may become a CNIC
  std::string named_by;    // "[nics] allow" or "[storage] nics": explicitly wanted
  std::string concession;  // why it would be excluded, had it not been named
  std::uint32_t load = 0;  // GPUs using it as their CNIC
  std::optional<std::uint32_t> nearest_gpu;
};

class Planner {
 public:
  Planner(const TopologyModel& model, const TopologyConfig& config)
      : model_(model), config_(config), inventory_(takeInventory(model)) {}

  Result<TopologyReport> run() && {
    describeInventory();
    measureDistances();
    judgeEligibility();
    checkStoragePatterns();
    chooseCandidates();
    applyPins();
    if (!errors_.empty()) return errorStatus();
    assignComputeNics();
    if (config_.storage_nics.empty()) chooseStorageNicsAutomatically();
    explainRoles();
    warn();
    return std::move(report_);
  }

 private:
  Status errorStatus() const {
    return Status(StatusCode::invalid_argument, fmt::format("{}", fmt::join(errors_, "\n")));
  }
  void error(const ConfigSite& site, std::string_view message) {
    errors_.push_back(fmt::format("{}: {}", config_.where(site), message));
  }
  std::size_t nicCount() const { return report_.nics.size(); }
  std::size_t gpuCount() const { return report_.gpus.size(); }
  std::vector<std::string> allNicNames() const {
    return nicNames([](std::size_t) { return true; });
  }
  std::vector<std::string> nicNames(auto&& keep) const {
    std::vector<std::string> names;
    for (std::size_t n = 0; n < nicCount(); ++n) {
      if (keep(n)) names.push_back(report_.nics[n].name);
    }
    return names;
  }

  void describeInventory() {
    report_.source = model_.source();
    report_.packages = inventory_.packages;
    report_.numa_nodes = inventory_.numa_nodes;
    report_.pcie_switches = inventory_.pcie_switches;
    for (std::uint32_t g = 0; g < inventory_.gpus.size(); ++g) {
      report_.gpus.push_back(describeGpu(model_.node(inventory_.gpus[g]), g));
    }
    for (NodeId id : inventory_.nics) report_.nics.push_back(describeNic(model_.node(id)));
    for (NodeId id : inventory_.nvme) {
      const TopologyNode& node = model_.node(id);
      report_.nvme.push_back(
          {firstOsDevice(node, OsDeviceKind::block), node.bus_id, node.numa_node});
    }
    state_.resize(nicCount());
  }

  void measureDistances() {
    distance_.assign(gpuCount(), std::vector<DistanceClass>(nicCount(), DistanceClass::sys));
    for (std::size_t g = 0; g < gpuCount(); ++g) {
      for (std::size_t n = 0; n < nicCount(); ++n) {
        distance_[g][n] = distanceBetween(model_, inventory_.gpus[g], inventory_.nics[n]);
        std::optional<DistanceClass>& nearest = report_.nics[n].nearest_gpu;
        if (!nearest || distance_[g][n] < *nearest) {
          nearest = distance_[g][n];
          state_[n].nearest_gpu = static_cast<std::uint32_t>(g);
        }
      }
    }
  }

  // Virtual and slow (management) NICs are never picked silently.
  std::string exclusionConcern(const NicReport& nic) const {
    if (auto family = virtualNicFamily(nic.vendor_id)) {
      return fmt::format("virtual NIC ({}, vendor {:04x})", *family, nic.vendor_id);
    }
    if (nic.speed_gbps > 0 && nic.speed_gbps < config_.min_speed_gbps) {
      return fmt::format("{} Gbit/s ({}) is below min_speed_gbps = {}", formatGbps(nic.speed_gbps),
                         nic.speed_source == SpeedSource::sysfs ? "sysfs" : "PCIe link",
                         formatGbps(config_.min_speed_gbps));
    }
    return {};
  }

  void exclude(std::size_t n, std::string reason) {
    report_.nics[n].role = NicRole::excluded;
    report_.nics[n].reason = std::move(reason);
  }

  void judgeEligibility() {
    for (std::size_t n = 0; n < nicCount(); ++n) {
      const NicReport& nic = report_.nics[n];
      NicState& state = state_[n];
      const NicPattern* storage = firstMatch(config_.storage_nics, nic);
      const NicPattern* allowed = firstMatch(config_.allow, nic);
      if (const NicPattern* denied = firstMatch(config_.deny, nic)) {
        exclude(n, fmt::format("denied by [nics] deny \"{}\"", denied->pattern));
        continue;
      }
      if (storage != nullptr) {
        state.named_by = "[storage] nics";
      } else if (allowed != nullptr) {
        state.named_by = "[nics] allow";
      } else if (!config_.allow.empty()) {
        exclude(n, "not matched by [nics] allow");
        continue;
      }
      std::string concern = exclusionConcern(nic);
      if (!concern.empty() && state.named_by.empty()) {
        exclude(n, concern + "; name it in [nics] allow or [storage] nics to use it");
        continue;
      }
      state.concession = std::move(concern);
      state.eligible = true;
      state.storage = storage != nullptr;
      if (state.storage) report_.nics[n].role = NicRole::snic;
    }
  }

  void checkStoragePatterns() {
    for (const NicPattern& pattern : config_.storage_nics) {
      std::vector<std::string> denied;
      bool usable = false;
      for (std::size_t n = 0; n < nicCount(); ++n) {
        if (!matchesPattern(pattern.pattern, report_.nics[n])) continue;
        if (state_[n].storage) {
          usable = true;
        } else {
          denied.push_back(report_.nics[n].name);
        }
      }
      if (usable) continue;
      if (denied.empty()) {
        error(pattern.site, fmt::format("\"{}\" matches no NIC; the NICs are {}", pattern.pattern,
                                        joinNames(allNicNames())));
      } else {
        error(pattern.site, fmt::format("\"{}\" matches only NICs that [nics] deny excludes: {}",
                                        pattern.pattern, joinNames(denied)));
      }
    }
  }

  // Eligible NICs that are not storage NICs; RDMA NICs only when there are any.
  void chooseCandidates() {
    bool any_rdma = false;
    for (std::size_t n = 0; n < nicCount(); ++n) {
      if (state_[n].eligible && !state_[n].storage && report_.nics[n].kind == NicKind::rdma) {
        any_rdma = true;
      }
    }
    for (std::size_t n = 0; n < nicCount(); ++n) {
      state_[n].candidate = state_[n].eligible && !state_[n].storage &&
                            (!any_rdma || report_.nics[n].kind == NicKind::rdma);
    }
  }

  void assign(std::uint32_t g, std::size_t n, bool pinned) {
    GpuReport& gpu = report_.gpus[g];
    NicReport& nic = report_.nics[n];
    gpu.cnic = nic.name;
    gpu.cnic_bus_id = nic.bus_id;
    gpu.cnic_distance = distance_[g][n];
    gpu.pinned = pinned;
    nic.role = NicRole::cnic;
    ++state_[n].load;
  }

  std::optional<std::uint32_t> resolvePinnedGpu(const PinRule& pin) {
    if (const auto* index = std::get_if<std::uint32_t>(&pin.gpu)) {
      if (*index < gpuCount()) return *index;
      error(pin.gpu_site,
            gpuCount() == 0
                ? fmt::format("no GPU {}; this machine has no GPU", *index)
                : fmt::format("no GPU {}; this machine has GPUs 0-{}", *index, gpuCount() - 1));
      return std::nullopt;
    }
    const std::string& bus_id = std::get<std::string>(pin.gpu);
    for (const GpuReport& gpu : report_.gpus) {
      if (gpu.bus_id == bus_id || shortBusId(gpu.bus_id) == bus_id) return gpu.index;
    }
    std::vector<std::string> bus_ids;
    for (const GpuReport& gpu : report_.gpus) bus_ids.push_back(gpu.bus_id);
    error(pin.gpu_site, fmt::format("no GPU at PCI bus id \"{}\"; the GPUs are at {}", bus_id,
                                    joinNames(bus_ids)));
    return std::nullopt;
  }

  std::optional<std::size_t> resolvePinnedNic(const PinRule& pin) {
    for (std::size_t n = 0; n < nicCount(); ++n) {
      const std::vector<std::string> names = namesOf(report_.nics[n]);
      if (std::find(names.begin(), names.end(), pin.nic) == names.end()) continue;
      const NicReport& nic = report_.nics[n];
      if (nic.role == NicRole::excluded) {
        error(pin.nic_site, fmt::format("{} is excluded: {}", nic.name, nic.reason));
      } else if (state_[n].storage) {
        error(pin.nic_site, fmt::format("{} is a storage NIC ([storage] nics); a GPU's compute "
                                        "NIC cannot be one",
                                        nic.name));
      } else {
        return n;
      }
      return std::nullopt;
    }
    error(pin.nic_site,
          fmt::format("no NIC \"{}\"; the NICs are {}", pin.nic, joinNames(allNicNames())));
    return std::nullopt;
  }

  void applyPins() {
    std::map<std::uint32_t, const PinRule*> pinned;
    for (const PinRule& pin : config_.pins) {
      std::optional<std::uint32_t> gpu = resolvePinnedGpu(pin);
      std::optional<std::size_t> nic = resolvePinnedNic(pin);
      if (!gpu) continue;
      if (auto [it, inserted] = pinned.emplace(*gpu, &pin); !inserted) {
        error(pin.gpu_site, fmt::format("GPU {} is already pinned by {} (line {})", *gpu,
                                        it->second->gpu_site.field, it->second->gpu_site.line));
        continue;
      }
      if (nic) assign(*gpu, *nic, true);
    }
  }

  // Compute NICs come from the candidates that share at least a host bridge
  // with a GPU when there are any (GPUDirect RDMA should not cross the CPU);
  // NICs on host bridges without a GPU are left for storage. Each NIC serves at most
  // ceil(GPUs / NICs) GPUs: 1:1 with enough NICs, balanced otherwise. Closest
  // class first; within a class each GPU, in index order, takes the least
  // loaded NIC, then the fastest, then the lowest bus id, so two GPUs share a
  // NIC only when no equally close NIC is free, and the result never depends
  // on discovery order.
  void assignComputeNics() {
    std::vector<std::size_t> candidates;
    std::vector<std::size_t> near_gpus;
    for (std::size_t n = 0; n < nicCount(); ++n) {
      if (!state_[n].candidate) continue;
      candidates.push_back(n);
      const std::optional<DistanceClass>& nearest = report_.nics[n].nearest_gpu;
      if (nearest && *nearest <= DistanceClass::phb) near_gpus.push_back(n);
    }
    if (!near_gpus.empty()) candidates = std::move(near_gpus);
    if (candidates.empty()) return;
    const auto capacity =
        static_cast<std::uint32_t>((gpuCount() + candidates.size() - 1) / candidates.size());
    auto preference = [&](std::size_t n) {
      const NicReport& nic = report_.nics[n];
      return std::tuple(state_[n].load, -nic.speed_gbps, std::string_view(nic.bus_id));
    };
    for (DistanceClass distance : {DistanceClass::pix, DistanceClass::pxb, DistanceClass::phb,
                                   DistanceClass::node, DistanceClass::sys}) {
      for (std::uint32_t g = 0; g < gpuCount(); ++g) {
        if (!report_.gpus[g].cnic.empty()) continue;
        std::optional<std::size_t> best;
        for (std::size_t n : candidates) {
          if (distance_[g][n] != distance || state_[n].load >= capacity) continue;
          if (!best || preference(n) < preference(*best)) best = n;
        }
        if (best) assign(g, *best, false);
      }
    }
  }

  bool offGpuSwitches(std::size_t n) const {
    const std::optional<DistanceClass>& nearest = report_.nics[n].nearest_gpu;
    return !nearest || *nearest >= DistanceClass::phb;
  }

  // Eligible NICs left over by CNIC assignment and sharing no PCIe switch
  // with a GPU; the fastest of them (all of them when they tie).
  void chooseStorageNicsAutomatically() {
    std::vector<std::size_t> off_switch;
    for (std::size_t n = 0; n < nicCount(); ++n) {
      if (state_[n].eligible && report_.nics[n].role != NicRole::cnic && offGpuSwitches(n)) {
        off_switch.push_back(n);
      }
    }
    double fastest = 0;
    for (std::size_t n : off_switch) fastest = std::max(fastest, report_.nics[n].speed_gbps);
    for (std::size_t n : off_switch) {
      if (report_.nics[n].speed_gbps == fastest) report_.nics[n].role = NicRole::snic;
    }
    if (off_switch.empty() && gpuCount() > 0) {
      report_.warnings.push_back(
          fmt::format("no storage NIC off the GPUs' PCIe switches; name one in [storage] nics "
                      "(candidates: {})",
                      abbreviatedNames(nicNames([&](std::size_t n) {
                        return state_[n].eligible && report_.nics[n].role != NicRole::cnic;
                      }))));
    }
  }

  std::string computeReason(std::size_t n) const {
    std::vector<std::string> gpus;
    bool pinned = false;
    for (const GpuReport& gpu : report_.gpus) {
      if (gpu.cnic_bus_id != report_.nics[n].bus_id) continue;
      gpus.push_back(std::to_string(gpu.index));
      pinned = pinned || gpu.pinned;
    }
    return fmt::format("{}compute NIC of GPU{} {}", pinned ? "pinned " : "",
                       gpus.size() == 1 ? "" : "s", fmt::join(gpus, ", "));
  }

  std::string storageReason(std::size_t n) const {
    if (const NicPattern* pattern = firstMatch(config_.storage_nics, report_.nics[n])) {
      return fmt::format("named in [storage] nics (\"{}\")", pattern->pattern);
    }
    if (gpuCount() == 0) return "fastest eligible NIC (no GPU)";
    return fmt::format("fastest NIC off the GPUs' PCIe switches (nearest GPU: {})",
                       distanceClassName(*report_.nics[n].nearest_gpu));
  }

  std::string unusedReason(std::size_t n) const {
    std::string reason;
    if (state_[n].candidate) {
      reason = gpuCount() == 0 ? "spare compute NIC: no GPU" : "spare compute NIC";
    } else {
      reason = "Ethernet; the compute NICs are RDMA NICs here";
    }
    if (!config_.storage_nics.empty()) return reason;
    if (!offGpuSwitches(n)) {
      return reason + fmt::format("; on GPU {}'s PCIe switch ({}), so not a storage NIC",
                                  *state_[n].nearest_gpu,
                                  distanceClassName(*report_.nics[n].nearest_gpu));
    }
    return reason + "; slower than the storage NIC";
  }

  void explainRoles() {
    for (std::size_t n = 0; n < nicCount(); ++n) {
      NicReport& nic = report_.nics[n];
      switch (nic.role) {
        case NicRole::cnic:
          nic.reason = computeReason(n);
          break;
        case NicRole::snic:
          nic.reason = storageReason(n);
          break;
        case NicRole::unused:
          nic.reason = unusedReason(n);
          break;
        case NicRole::excluded:
          break;  // said when excluded
      }
    }
  }

  void warn() {
    for (std::size_t n = 0; n < nicCount(); ++n) {
      const NicReport& nic = report_.nics[n];
      if (state_[n].concession.empty() ||
          (nic.role != NicRole::cnic && nic.role != NicRole::snic)) {
        continue;
      }
      report_.warnings.push_back(fmt::format("{}: {}; used as {} because {} names it", nic.name,
                                             state_[n].concession, nicRoleName(nic.role),
                                             state_[n].named_by));
    }
    for (const GpuReport& gpu : report_.gpus) {
      if (gpu.cnic.empty()) {
        report_.warnings.push_back(fmt::format(
            "GPU {} has no compute NIC: no eligible NIC outside [storage] nics", gpu.index));
      } else if (*gpu.cnic_distance >= DistanceClass::node) {
        report_.warnings.push_back(
            fmt::format("GPU {}'s compute NIC {} is {}: its traffic leaves the GPU's host bridge",
                        gpu.index, gpu.cnic, distanceClassName(*gpu.cnic_distance)));
      }
    }
  }

  const TopologyModel& model_;
  const TopologyConfig& config_;
  Inventory inventory_;
  TopologyReport report_;
  std::vector<NicState> state_;                       // per NIC, as report_.nics
  std::vector<std::vector<DistanceClass>> distance_;  // [GPU][NIC]
  std::vector<std::string> errors_;
};

}  // namespace

const NicReport* TopologyReport::findNic(std::string_view name) const {
  for (const NicReport& nic : nics) {
    if (nic.name == name || nic.netdev == name || nic.bus_id == name) return &nic;
  }
  return nullptr;
}

std::vector<const NicReport*> TopologyReport::storageNics() const {
  std::vector<const NicReport*> out;
  for (const NicReport& nic : nics) {
    if (nic.role == NicRole::snic) out.push_back(&nic);
  }
  return out;
}

Result<TopologyReport> planTopology(const TopologyModel& model, const TopologyConfig& config) {
  return Planner(model, config).run();
}

}  // namespace dualpath::scheduler::topo
