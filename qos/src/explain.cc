// `dualpath-qos explain`: what a policy does, for humans (a table) and tools (JSON).

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <dualpath/common/text.h>
#include <dualpath/qos/render.h>

namespace dualpath::qos {
namespace {

std::string orDash(const std::optional<std::uint8_t>& value) {
  return value ? std::to_string(*value) : "-";
}

std::string trafficClassIds(const TrafficClass& cls) {
  std::vector<std::string> ids;
  if (cls.is_default) ids.emplace_back("unset");
  for (std::int32_t id : cls.nccl_traffic_classes) ids.push_back(std::to_string(id));
  return ids.empty() ? "-" : fmt::format("{}", fmt::join(ids, ","));
}

std::string fabricSummary(const Policy& policy) {
  switch (policy.kind()) {
    case FabricKind::infiniband: {
      const IbPortQos& d = policy.infiniband()->defaults;
      std::string out = fmt::format(
          "InfiniBand, {} operational VL{}, high_limit {}\n  vlarb_high {}\n  vlarb_low  {}\n"
          "  sl2vl      {}\n",
          d.max_vls, d.max_vls == 1 ? "" : "s", d.high_limit, formatVlArbTable(d.vlarb_high),
          formatVlArbTable(d.vlarb_low), fmt::join(d.sl2vl, ","));
      for (const auto& [type, unused] : policy.infiniband()->overrides) {
        out += fmt::format("  port type {} overrides some of these (see render --format opensm)\n",
                           ibPortTypeName(type));
      }
      return out;
    }
    case FabricKind::roce: {
      const RoceFabric& r = *policy.roce();
      return fmt::format(
          "RoCE, DSCP trust, prio_tc {}, PFC on priorities {}\n", fmt::join(r.prio_tc, ","),
          r.pfc_priorities.empty() ? std::string("none")
                                   : fmt::format("{}", fmt::join(r.pfc_priorities, ",")));
    }
    case FabricKind::ethernet: {
      const auto& rate = policy.ethernet()->link_rate;
      return fmt::format("Ethernet, link {}\n", rate ? formatBitRate(*rate) : "rate not set");
    }
  }
  return "";
}

std::string arbiterSummary(const ArbiterSettings& a) {
  auto limit = [](Bytes bytes) {
    return bytes == 0 ? std::string("no limit") : formatBytes(bytes);
  };
  return fmt::format(
      "Software arbiter: low-priority classes keep {} of a contended link and post at most {} at a "
      "time; {}; in flight: {} for all classes, {} for low priority.\n",
      formatShare(a.low_share), formatBytes(a.chunk),
      a.link_rate ? fmt::format("shapes to {} with a {} burst", formatBitRate(*a.link_rate),
                                formatBytes(a.burst))
                  : std::string("no software shaping"),
      limit(a.max_inflight), limit(a.low_max_inflight));
}

}  // namespace

std::string explainText(const Policy& policy) {
  const std::vector<double> shares = guaranteedShares(policy);
  std::vector<std::string> columns{"class", "role", "priority", "share", "NCCL trafficClass"};
  switch (policy.kind()) {
    case FabricKind::infiniband:
      for (const char* c : {"SL", "VL", "high", "low", "DSCP"}) columns.emplace_back(c);
      break;
    case FabricKind::roce:
      for (const char* c : {"DSCP", "ToS", "prio", "TC", "PFC"}) columns.emplace_back(c);
      break;
    case FabricKind::ethernet:
      for (const char* c : {"DSCP", "ToS", "tcp_ports"}) columns.emplace_back(c);
      break;
  }
  TextTable table(std::move(columns));
  for (std::size_t i = 0; i < policy.classes.size(); ++i) {
    const TrafficClass& cls = policy.classes[i];
    std::vector<std::string> row{cls.name, std::string(roleName(cls.role)),
                                 std::string(priorityName(cls.priority)), formatShare(shares[i]),
                                 trafficClassIds(cls)};
    switch (policy.kind()) {
      case FabricKind::infiniband: {
        const IbPortQos& d = policy.infiniband()->defaults;
        std::uint8_t vl = d.vlOfSl(*cls.ib_sl);
        row.insert(row.end(), {std::to_string(*cls.ib_sl), std::to_string(vl),
                               std::to_string(d.highWeight(vl)), std::to_string(d.lowWeight(vl)),
                               orDash(cls.dscp)});
        break;
      }
      case FabricKind::roce: {
        const RoceFabric& r = *policy.roce();
        bool pfc = std::find(r.pfc_priorities.begin(), r.pfc_priorities.end(),
                             *cls.roce_priority) != r.pfc_priorities.end();
        row.insert(row.end(), {orDash(cls.dscp), orDash(cls.tosByte()), orDash(cls.roce_priority),
                               std::to_string(r.prio_tc[*cls.roce_priority]), pfc ? "on" : "off"});
        break;
      }
      case FabricKind::ethernet:
        row.insert(row.end(),
                   {orDash(cls.dscp), orDash(cls.tosByte()),
                    cls.tcp_ports ? fmt::format("{}-{}", cls.tcp_ports->first, cls.tcp_ports->last)
                                  : "-"});
        break;
    }
    table.addRow(std::move(row));
  }
  return fmt::format("Policy {}\nFabric: {}\n{}\n{}", policy.source_name, fabricSummary(policy),
                     table.render(), arbiterSummary(policy.arbiter));
}

std::string explainJson(const Policy& policy) {
  using nlohmann::json;
  const std::vector<double> shares = guaranteedShares(policy);
  json fabric{{"kind", fabricKindName(policy.kind())}};
  if (const InfinibandFabric* ib = policy.infiniband()) {
    fabric["max_vls"] = ib->defaults.max_vls;
    fabric["high_limit"] = ib->defaults.high_limit;
    fabric["vlarb_high"] = formatVlArbTable(ib->defaults.vlarb_high);
    fabric["vlarb_low"] = formatVlArbTable(ib->defaults.vlarb_low);
    fabric["sl2vl"] = ib->defaults.sl2vl;
  } else if (const RoceFabric* roce = policy.roce()) {
    fabric["prio_tc"] = roce->prio_tc;
    fabric["pfc_priorities"] = roce->pfc_priorities;
  } else if (policy.ethernet()->link_rate) {
    fabric["link_rate_bps"] = *policy.ethernet()->link_rate;
  }
  json classes = json::array();
  for (std::size_t i = 0; i < policy.classes.size(); ++i) {
    const TrafficClass& cls = policy.classes[i];
    json c{{"name", cls.name},
           {"role", roleName(cls.role)},
           {"priority", priorityName(cls.priority)},
           {"weight", cls.weight},
           {"share", shares[i]},
           {"default", cls.is_default},
           {"nccl_traffic_classes", cls.nccl_traffic_classes}};
    if (cls.ib_sl) {
      c["ib_sl"] = *cls.ib_sl;
      if (const InfinibandFabric* ib = policy.infiniband()) {
        std::uint8_t vl = ib->defaults.vlOfSl(*cls.ib_sl);
        c["vl"] = vl;
        c["vl_high_weight"] = ib->defaults.highWeight(vl);
        c["vl_low_weight"] = ib->defaults.lowWeight(vl);
      }
    }
    if (cls.dscp) {
      c["dscp"] = *cls.dscp;
      c["tos"] = *cls.tosByte();
    }
    if (cls.roce_priority) c["roce_priority"] = *cls.roce_priority;
    if (cls.tcp_ports) c["tcp_ports"] = {cls.tcp_ports->first, cls.tcp_ports->last};
    json ucx = json::object();
    for (const UcxSetting& s : ucxSettingsFor(policy, cls, /*rdma_devices=*/true)) {
      ucx[s.name] = s.value;
    }
    c["ucx"] = std::move(ucx);
    classes.push_back(std::move(c));
  }
  const ArbiterSettings& a = policy.arbiter;
  json arbiter{{"low_share", a.low_share},
               {"burst_bytes", a.burst},
               {"chunk_bytes", a.chunk},
               {"max_inflight_bytes", a.max_inflight},
               {"low_max_inflight_bytes", a.low_max_inflight},
               {"demand_hold_us", a.demand_hold_us}};
  arbiter["link_rate_bps"] = a.link_rate ? json(*a.link_rate) : json(nullptr);
  json out{{"source", policy.source_name},
           {"fabric", std::move(fabric)},
           {"classes", std::move(classes)},
           {"arbiter", std::move(arbiter)}};
  // A path need not be UTF-8; JSON must be, so bad bytes become U+FFFD.
  return out.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace dualpath::qos
