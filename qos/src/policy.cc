#include <fmt/format.h>

#include <cmath>

#include <dualpath/qos/policy.h>

namespace dualpath::qos {

std::string_view fabricKindName(FabricKind kind) noexcept {
  switch (kind) {
    case FabricKind::infiniband:
      return "infiniband";
    case FabricKind::roce:
      return "roce";
    case FabricKind::ethernet:
      return "ethernet";
  }
  return "unknown";
}

std::string_view priorityName(Priority priority) noexcept {
  switch (priority) {
    case Priority::high:
      return "high";
    case Priority::low:
      return "low";
  }
  return "unknown";
}

std::string_view roleName(Role role) noexcept {
  switch (role) {
    case Role::collectives:
      return "collectives";
    case Role::kv:
      return "kv";
    case Role::other:
      return "other";
  }
  return "unknown";
}

std::string_view ibPortTypeName(IbPortType type) noexcept {
  switch (type) {
    case IbPortType::ca:
      return "ca";
    case IbPortType::switch_external:
      return "switch_external";
    case IbPortType::switch_port0:
      return "switch_port0";
    case IbPortType::router:
      return "router";
  }
  return "unknown";
}

std::string_view openSmPortTypePrefix(IbPortType type) noexcept {
  switch (type) {
    case IbPortType::ca:
      return "ca";
    case IbPortType::switch_external:
      return "swe";
    case IbPortType::switch_port0:
      return "sw0";
    case IbPortType::router:
      return "rtr";
  }
  return "unknown";
}

std::string formatVlArbTable(const VlArbTable& table) {
  std::string out;
  for (const VlArbEntry& entry : table) {
    if (!out.empty()) out += ',';
    out += fmt::format("{}:{}", entry.vl, entry.weight);
  }
  return out;
}

namespace {
unsigned weightOf(const VlArbTable& table, std::uint8_t vl) {
  unsigned total = 0;
  for (const VlArbEntry& entry : table) {
    if (entry.vl == vl) total += entry.weight;
  }
  return total;
}
}  // namespace

unsigned IbPortQos::highWeight(std::uint8_t vl) const {
  return weightOf(vlarb_high, vl);
}
unsigned IbPortQos::lowWeight(std::uint8_t vl) const {
  return weightOf(vlarb_low, vl);
}

IbPortQos InfinibandFabric::forPort(IbPortType type) const {
  IbPortQos effective = defaults;
  auto it = overrides.find(type);
  if (it == overrides.end()) return effective;
  const IbPortQosOverride& o = it->second;
  if (o.max_vls) effective.max_vls = *o.max_vls;
  if (o.high_limit) effective.high_limit = *o.high_limit;
  if (o.vlarb_high) effective.vlarb_high = *o.vlarb_high;
  if (o.vlarb_low) effective.vlarb_low = *o.vlarb_low;
  if (o.sl2vl) effective.sl2vl = *o.sl2vl;
  return effective;
}

std::string InfinibandFabric::fieldPath(std::optional<IbPortType> type,
                                        std::string_view key) const {
  if (type) {
    auto it = overrides.find(*type);
    if (it != overrides.end()) {
      const IbPortQosOverride& o = it->second;
      bool overridden = (key == "max_vls" && o.max_vls) || (key == "high_limit" && o.high_limit) ||
                        (key == "vlarb_high" && o.vlarb_high) ||
                        (key == "vlarb_low" && o.vlarb_low) || (key == "sl2vl" && o.sl2vl);
      if (overridden) return fmt::format("fabric.{}.{}", ibPortTypeName(*type), key);
    }
  }
  return fmt::format("fabric.{}", key);
}

const TrafficClass& Policy::defaultClass() const {
  for (const TrafficClass& cls : classes) {
    if (cls.is_default) return cls;
  }
  // The loader refuses a policy without a default class.
  return classes.front();
}

const TrafficClass* Policy::findClass(std::string_view name) const {
  for (const TrafficClass& cls : classes) {
    if (cls.name == name) return &cls;
  }
  return nullptr;
}

const TrafficClass* Policy::findRole(Role role) const {
  for (const TrafficClass& cls : classes) {
    if (cls.role == role) return &cls;
  }
  return nullptr;
}

Result<const TrafficClass*> Policy::selectByNcclTrafficClass(std::int32_t traffic_class) const {
  if (traffic_class == kNcclTrafficClassUnset) return &defaultClass();
  std::string known;
  for (const TrafficClass& cls : classes) {
    for (std::int32_t id : cls.nccl_traffic_classes) {
      if (id == traffic_class) return &cls;
      known += fmt::format("{}{} -> {}", known.empty() ? "" : ", ", id, cls.name);
    }
  }
  return Status(
      StatusCode::invalid_argument,
      fmt::format("NCCL trafficClass {} selects no class in policy {} (it maps {}); add "
                  "it to a class's nccl_traffic_classes",
                  traffic_class, source_name,
                  known.empty() ? std::string("no ids, only the default for -1") : known));
}

SourceLocation Policy::locate(std::string_view field_path) const {
  std::string path(field_path);
  while (!path.empty()) {
    auto it = locations.find(path);
    if (it != locations.end()) return it->second;
    std::size_t cut = path.find_last_of(".[");
    path.resize(cut == std::string::npos ? 0 : cut);
  }
  return SourceLocation{1, 1};
}

std::vector<double> guaranteedShares(const Policy& policy) {
  double weight_high = 0;
  double weight_low = 0;
  for (const TrafficClass& cls : policy.classes) {
    (cls.priority == Priority::high ? weight_high : weight_low) += cls.weight;
  }
  double share_low = weight_high == 0 ? 1.0 : (weight_low == 0 ? 0.0 : policy.arbiter.low_share);
  std::vector<double> shares;
  for (const TrafficClass& cls : policy.classes) {
    shares.push_back(cls.priority == Priority::high ? (1.0 - share_low) * cls.weight / weight_high
                                                    : share_low * cls.weight / weight_low);
  }
  return shares;
}

std::string formatShare(double share) {
  double percent = share * 100.0;
  if (std::abs(percent - std::round(percent)) < 1e-9) return fmt::format("{:.0f}%", percent);
  return fmt::format("{:.1f}%", percent);
}

std::vector<UcxSetting> ucxSettingsFor(const Policy& policy, const TrafficClass& cls,
                                       bool rdma_devices) {
  std::vector<UcxSetting> settings;
  if (rdma_devices) {
    switch (policy.kind()) {
      case FabricKind::infiniband:
        if (cls.ib_sl) settings.push_back({"IB_SL", std::to_string(*cls.ib_sl)});
        break;
      case FabricKind::roce:
        // On RoCE the address handle's SL is the 802.1p priority.
        if (cls.roce_priority) settings.push_back({"IB_SL", std::to_string(*cls.roce_priority)});
        break;
      case FabricKind::ethernet:
        break;
    }
    // UCX takes the whole ToS byte here, not the DSCP.
    if (auto tos = cls.tosByte(); tos && policy.kind() != FabricKind::ethernet) {
      settings.push_back({"IB_TRAFFIC_CLASS", std::to_string(*tos)});
    }
  }
  if (cls.tcp_ports) {
    settings.push_back(
        {"PORT_RANGE", fmt::format("{}-{}", cls.tcp_ports->first, cls.tcp_ports->last)});
  }
  settings.insert(settings.end(), cls.ucx.begin(), cls.ucx.end());
  return settings;
}

}  // namespace dualpath::qos
