// Rules that relate several fields of a policy. They run only on a policy
// whose every field was read with a valid value (policy_loader.cc).
#include <algorithm>
#include <array>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include <dualpath/common/text.h>

#include "reporter.h"

namespace dualpath::qos::detail {
namespace {

// Linux's default net.ipv4.ip_local_port_range.
constexpr PortRange kLinuxEphemeralPorts{32768, 60999};

// OpenSM routing engines (opensm(8), "routing_engine"); those that assign SLs
// themselves for deadlock avoidance are flagged.
constexpr std::array<std::string_view, 12> kRoutingEngines{"minhop", "updn", "dnup", "file",
                                                           "ftree",  "lash", "dor",  "torus-2QoS",
                                                           "dfsssp", "sssp", "nue",  "chain"};
constexpr std::array<std::string_view, 4> kSlAssigningEngines{"lash", "dfsssp", "torus-2QoS",
                                                              "nue"};

std::string classField(std::size_t index, std::string_view key) {
  return fmt::format("class[{}].{}", index, key);
}

std::string lineOf(const Policy& policy, const std::string& field) {
  return fmt::format("line {}", policy.locate(field).line);
}

class Validator {
 public:
  Validator(const Policy& policy, Reporter& reporter) : p_(policy), r_(reporter) {}

  void run() {
    checkClassIdentity();
    switch (p_.kind()) {
      case FabricKind::infiniband:
        checkInfiniband(*p_.infiniband());
        break;
      case FabricKind::roce:
        checkRoce(*p_.roce());
        break;
      case FabricKind::ethernet:
        checkEthernet(*p_.ethernet());
        break;
    }
    checkPortRanges();
    checkArbiter();
  }

 private:
  void error(const std::string& field, std::string message) {
    r_.error(p_.locate(field), field, std::move(message));
  }
  void warning(const std::string& field, std::string message) {
    r_.warning(p_.locate(field), field, std::move(message));
  }

  // ------------------------------------------------------------ all fabrics

  void checkClassIdentity() {
    std::map<std::string, std::size_t> names;
    std::map<std::int32_t, std::pair<std::size_t, std::size_t>> ids;  // id -> (class, position)
    std::vector<std::size_t> defaults;
    for (std::size_t i = 0; i < p_.classes.size(); ++i) {
      const TrafficClass& cls = p_.classes[i];
      auto [named, inserted] = names.emplace(cls.name, i);
      if (!inserted) {
        error(classField(i, "name"),
              fmt::format("class name \"{}\" is already used by class[{}] ({})", cls.name,
                          named->second, lineOf(p_, classField(named->second, "name"))));
      }
      if (cls.is_default) defaults.push_back(i);
      for (std::size_t j = 0; j < cls.nccl_traffic_classes.size(); ++j) {
        std::int32_t id = cls.nccl_traffic_classes[j];
        auto [owner, fresh] = ids.emplace(id, std::pair(i, j));
        if (fresh) continue;
        std::string owner_field =
            fmt::format("{}[{}]", classField(owner->second.first, "nccl_traffic_classes"),
                        owner->second.second);
        error(fmt::format("{}[{}]", classField(i, "nccl_traffic_classes"), j),
              fmt::format("NCCL trafficClass {} already selects class \"{}\" ({})", id,
                          p_.classes[owner->second.first].name, lineOf(p_, owner_field)));
      }
    }
    if (defaults.empty()) {
      error("class",
            "no default class: mark exactly one class default = true; NCCL communicators "
            "whose trafficClass is unset (-1) use it");
    }
    for (std::size_t k = 1; k < defaults.size(); ++k) {
      error(classField(defaults[k], "default"),
            fmt::format("class \"{}\" is default, but so is class \"{}\" ({}); exactly one class "
                        "may be the default",
                        p_.classes[defaults[k]].name, p_.classes[defaults[0]].name,
                        lineOf(p_, classField(defaults[0], "default"))));
    }
    if (p_.findRole(Role::kv) == nullptr) {
      warning("class",
              "no class has role = \"kv\": the loader's KV relays would ride the default class, "
              "with the collectives");
    }
  }

  // Warns once per pair of a collectives class and a kv class that the fabric
  // cannot tell apart. `lane` names what they share ("VL 0", "traffic class 3").
  template <class LaneOf>
  void warnSharedLanes(LaneOf lane_of, std::string_view field_key) {
    for (std::size_t kv = 0; kv < p_.classes.size(); ++kv) {
      if (p_.classes[kv].role != Role::kv) continue;
      std::optional<std::string> kv_lane = lane_of(p_.classes[kv]);
      if (!kv_lane) continue;
      for (std::size_t c = 0; c < p_.classes.size(); ++c) {
        if (p_.classes[c].role != Role::collectives || lane_of(p_.classes[c]) != kv_lane) continue;
        warning(classField(kv, field_key),
                fmt::format("KV class \"{}\" and collectives class \"{}\" share {}: the fabric "
                            "cannot keep KV traffic from slowing the collectives",
                            p_.classes[kv].name, p_.classes[c].name, *kv_lane));
      }
    }
  }

  // ------------------------------------------------------------ InfiniBand

  // Reports a problem once even if several port types share the table.
  void ibError(const std::string& field, std::optional<IbPortType> type, std::string message) {
    if (!reported_.emplace(field, message).second) return;
    if (type) message += fmt::format(" (port type {})", ibPortTypeName(*type));
    error(field, std::move(message));
  }

  void checkIbPort(const InfinibandFabric& fabric, std::optional<IbPortType> type) {
    const IbPortQos port = type ? fabric.forPort(*type) : fabric.defaults;
    const std::string operational =
        port.max_vls == 1 ? "only VL 0 is operational"
                          : fmt::format("only VLs 0-{} are operational", port.max_vls - 1);
    const std::string sl2vl_field = fabric.fieldPath(type, "sl2vl");
    for (std::size_t sl = 0; sl < kIbServiceLevels; ++sl) {
      std::uint8_t vl = port.sl2vl[sl];
      if (vl == kIbDropVl || vl < port.max_vls) continue;
      std::string users;
      for (const TrafficClass& cls : p_.classes) {
        if (cls.ib_sl == sl) users += fmt::format("{}\"{}\"", users.empty() ? "" : ", ", cls.name);
      }
      ibError(fmt::format("{}[{}]", sl2vl_field, sl), type,
              fmt::format("SL {} maps to VL {}, but {} (max_vls = {}); OpenSM would silently mask "
                          "it. Map it to an operational VL, or to 15 to drop the SL{}",
                          sl, vl, operational, port.max_vls,
                          users.empty() ? "" : fmt::format(" (used by class {})", users)));
    }
    for (auto [key, table] :
         {std::pair{"vlarb_high", &port.vlarb_high}, std::pair{"vlarb_low", &port.vlarb_low}}) {
      const std::string table_field = fabric.fieldPath(type, key);
      for (std::size_t i = 0; i < table->size(); ++i) {
        const VlArbEntry& entry = (*table)[i];
        if (entry.vl < port.max_vls) continue;
        ibError(fmt::format("{}[{}]", table_field, i), type,
                fmt::format("VL {} is not operational ({}, max_vls = {}); OpenSM would silently "
                            "mask this entry",
                            entry.vl, operational, port.max_vls));
      }
    }
    for (std::size_t i = 0; i < p_.classes.size(); ++i) {
      const TrafficClass& cls = p_.classes[i];
      if (!cls.ib_sl) continue;  // reported once in checkInfiniband
      std::uint8_t vl = port.vlOfSl(*cls.ib_sl);
      if (vl == kIbDropVl) {
        ibError(classField(i, "ib_sl"), type,
                fmt::format("class \"{}\" uses SL {}, which {} maps to VL 15: its packets would "
                            "be dropped",
                            cls.name, *cls.ib_sl, sl2vl_field));
        continue;
      }
      if (vl >= port.max_vls) continue;  // reported on the sl2vl entry
      unsigned high = port.highWeight(vl);
      unsigned low = port.lowWeight(vl);
      const std::string ride = fmt::format("VL {} (SL {})", vl, *cls.ib_sl);
      if (high == 0 && low == 0) {
        ibError(classField(i, "ib_sl"), type,
                fmt::format("class \"{}\" rides {}, which has weight 0 in both vlarb_high and "
                            "vlarb_low: it would never be served",
                            cls.name, ride));
      } else if (cls.priority == Priority::high && high == 0) {
        ibError(classField(i, "priority"), type,
                fmt::format("class \"{}\" is high priority, but its {} has weight 0 in "
                            "vlarb_high: the fabric would serve it only from the low-priority "
                            "table",
                            cls.name, ride));
      } else if (cls.priority == Priority::low && high > 0) {
        ibError(classField(i, "priority"), type,
                fmt::format("class \"{}\" is low priority, but its {} has weight {} in "
                            "vlarb_high: the fabric would serve it at high priority",
                            cls.name, ride, high));
      }
    }
    if (port.high_limit == 255) {
      std::string field = fabric.fieldPath(type, "high_limit");
      if (reported_.emplace(field, "high_limit 255").second) {
        warning(field,
                "255 means no limit: the high-priority VLs may starve the low-priority ones "
                "(the KV relays) indefinitely");
      }
    }
  }

  void checkInfiniband(const InfinibandFabric& fabric) {
    for (std::size_t i = 0; i < p_.classes.size(); ++i) {
      if (!p_.classes[i].ib_sl) {
        error(fmt::format("class[{}]", i),
              fmt::format("class \"{}\" has no ib_sl; an InfiniBand policy gives every class a "
                          "service level",
                          p_.classes[i].name));
      }
    }
    checkIbPort(fabric, std::nullopt);
    for (const auto& [type, unused] : fabric.overrides) checkIbPort(fabric, type);

    const IbPortQos& ports = fabric.defaults;
    warnSharedLanes(
        [&](const TrafficClass& cls) -> std::optional<std::string> {
          if (!cls.ib_sl) return std::nullopt;
          return fmt::format("VL {}", ports.vlOfSl(*cls.ib_sl));
        },
        "ib_sl");

    if (fabric.routing_engine) checkRoutingEngines(*fabric.routing_engine);
  }

  void checkRoutingEngines(const std::string& engines) {
    std::stringstream list(engines);
    std::string engine;
    while (std::getline(list, engine, ',')) {
      engine.erase(0, engine.find_first_not_of(" \t"));
      engine.erase(engine.find_last_not_of(" \t") + 1);
      if (std::find(kRoutingEngines.begin(), kRoutingEngines.end(), engine) ==
          kRoutingEngines.end()) {
        auto guess = closestMatch(engine, kRoutingEngines);
        error("fabric.routing_engine",
              fmt::format("\"{}\" is not an OpenSM routing engine{}", engine,
                          guess ? fmt::format("; did you mean \"{}\"?", *guess) : ""));
        continue;
      }
      if (std::find(kSlAssigningEngines.begin(), kSlAssigningEngines.end(), engine) ==
          kSlAssigningEngines.end()) {
        continue;
      }
      std::set<int> sls;
      for (const TrafficClass& cls : p_.classes) {
        if (cls.ib_sl) sls.insert(*cls.ib_sl);
      }
      warning("fabric.routing_engine",
              fmt::format("the {} routing engine assigns SLs itself for deadlock avoidance; the "
                          "SLs DualPath's classes write into their connections ({}) may collide "
                          "with its choice",
                          engine, fmt::join(sls, ", ")));
    }
  }

  // ------------------------------------------------------------ RoCE

  void checkRoce(const RoceFabric& fabric) {
    std::map<std::uint8_t, std::size_t> dscp_owner;
    for (std::size_t i = 0; i < p_.classes.size(); ++i) {
      const TrafficClass& cls = p_.classes[i];
      for (auto [present, key, why] :
           {std::tuple{cls.dscp.has_value(), "dscp", "the DSCP that marks its packets"},
            std::tuple{cls.roce_priority.has_value(), "roce_priority",
                       "the priority its DSCP maps to"}}) {
        if (!present) {
          error(fmt::format("class[{}]", i),
                fmt::format("class \"{}\" has no {}; a RoCE policy gives every class {}", cls.name,
                            key, why));
        }
      }
      if (!cls.dscp || !cls.roce_priority) continue;
      auto [owner, fresh] = dscp_owner.emplace(*cls.dscp, i);
      if (fresh) continue;
      const TrafficClass& other = p_.classes[owner->second];
      if (other.roce_priority != cls.roce_priority) {
        error(classField(i, "dscp"),
              fmt::format("DSCP {} already maps to priority {} for class \"{}\" ({}); one DSCP "
                          "maps to one priority",
                          *cls.dscp, *other.roce_priority, other.name,
                          lineOf(p_, classField(owner->second, "dscp"))));
      }
    }
    warnSharedLanes(
        [&](const TrafficClass& cls) -> std::optional<std::string> {
          if (!cls.roce_priority) return std::nullopt;
          return fmt::format("traffic class {}", fabric.prio_tc[*cls.roce_priority]);
        },
        "roce_priority");
    if (fabric.pfc_priorities.empty()) {
      warning("fabric",
              "no pfc_priorities: RoCE without PFC is lossy and needs ECN-based congestion "
              "control on every NIC and switch");
    }
  }

  // ------------------------------------------------------------ Ethernet

  void checkEthernet(const EthernetFabric& fabric) {
    for (std::size_t i = 0; i < p_.classes.size(); ++i) {
      const TrafficClass& cls = p_.classes[i];
      if (!cls.is_default && cls.dscp == 0) {
        error(classField(i, "dscp"),
              fmt::format("DSCP 0 is what unmarked packets carry: every unmarked packet on the "
                          "link would join class \"{}\"; pick another DSCP",
                          cls.name));
      }
      for (std::size_t j = 0; j < i && cls.dscp; ++j) {
        if (p_.classes[j].dscp != cls.dscp) continue;
        error(classField(i, "dscp"),
              fmt::format("DSCP {} is also class \"{}\"'s ({}): on an Ethernet fabric the two "
                          "classes' marked packets could not be told apart",
                          *cls.dscp, p_.classes[j].name, lineOf(p_, classField(j, "dscp"))));
      }
      if (cls.is_default || cls.dscp || cls.tcp_ports) continue;
      error(fmt::format("class[{}]", i),
            fmt::format("class \"{}\" has neither dscp nor tcp_ports: on an Ethernet fabric "
                        "nothing would steer its packets away from the default class",
                        cls.name));
    }
    warnSharedLanes(
        [](const TrafficClass& cls) -> std::optional<std::string> {
          if (cls.tcp_ports || !cls.dscp) return std::nullopt;
          return fmt::format("DSCP {} (and no tcp_ports)", *cls.dscp);
        },
        "dscp");
    if (fabric.link_rate && p_.arbiter.link_rate && *p_.arbiter.link_rate > *fabric.link_rate) {
      warning("arbiter.link_rate",
              fmt::format("the arbiter shapes to {}, faster than the link ({}): the shaping "
                          "never takes effect",
                          formatBitRate(*p_.arbiter.link_rate), formatBitRate(*fabric.link_rate)));
    }
  }

  // ------------------------------------------------------------ ports, arbiter

  void checkPortRanges() {
    for (std::size_t i = 0; i < p_.classes.size(); ++i) {
      const auto& mine = p_.classes[i].tcp_ports;
      if (!mine) continue;
      for (std::size_t j = 0; j < i; ++j) {
        const auto& theirs = p_.classes[j].tcp_ports;
        if (!theirs || !mine->overlaps(*theirs)) continue;
        error(classField(i, "tcp_ports"),
              fmt::format("{}-{} overlaps class \"{}\"'s tcp_ports {}-{} ({})", mine->first,
                          mine->last, p_.classes[j].name, theirs->first, theirs->last,
                          lineOf(p_, classField(j, "tcp_ports"))));
      }
      if (mine->overlaps(kLinuxEphemeralPorts)) {
        warning(classField(i, "tcp_ports"),
                fmt::format("{}-{} overlaps Linux's default ephemeral ports {}-{}: another "
                            "class's outgoing connection may get a port in this range and be "
                            "classified as \"{}\"",
                            mine->first, mine->last, kLinuxEphemeralPorts.first,
                            kLinuxEphemeralPorts.last, p_.classes[i].name));
      }
    }
  }

  void checkArbiter() {
    const ArbiterSettings& a = p_.arbiter;
    if (a.chunk == 0) error("arbiter.chunk", "0 bytes; a chunk must be positive");
    if (a.burst == 0) error("arbiter.burst", "0 bytes; the burst must be positive");
    for (auto [key, limit] : {std::pair{"max_inflight", a.max_inflight},
                              std::pair{"low_max_inflight", a.low_max_inflight}}) {
      if (limit != 0 && limit < a.chunk) {
        error(fmt::format("arbiter.{}", key),
              fmt::format("{} is smaller than one chunk ({}): a full low-priority chunk could "
                          "never be posted; raise it, lower arbiter.chunk, or set 0 for no limit",
                          formatBytes(limit), formatBytes(a.chunk)));
      }
    }
  }

  const Policy& p_;
  Reporter& r_;
  std::set<std::pair<std::string, std::string>> reported_;
};

}  // namespace

void validatePolicy(const Policy& policy, Reporter& reporter) {
  Validator(policy, reporter).run();
}

}  // namespace dualpath::qos::detail
