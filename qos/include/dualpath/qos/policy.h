// The QoS policy: which traffic rides which InfiniBand service level and
// virtual lane, which DSCP on RoCE, which HTB class on an Ethernet test bed,
// and how the software arbiter shares a link between classes.
//
// A Policy is built only by the loader (policy_loader.h), which validates it;
// every Policy in the program is therefore valid and consistent, and renderers
// and the transport may rely on it (e.g. every class's SL maps to an
// operational VL). The file format is documented in docs/qos.md.
//
// Threading: immutable after loading; share it freely between threads.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/common/units.h>

namespace dualpath::qos {

inline constexpr int kIbServiceLevels = 16;  // SL 0-15
inline constexpr int kIbDropVl = 15;         // SL2VL entry meaning "drop" (VL15 is management only)
inline constexpr int kMaxDscp = 63;
inline constexpr int kRocePriorities = 8;  // IEEE 802.1p priorities 0-7
inline constexpr int kNcclTrafficClassUnset = -1;
inline constexpr std::size_t kMaxTrafficClasses = 16;  // the arbiter's per-link limit

enum class FabricKind : std::uint8_t { infiniband, roce, ethernet };
enum class Priority : std::uint8_t { high, low };
// What a class carries; the validator warns when collectives and KV share a
// lane, and the loader finds its relay class by role.
enum class Role : std::uint8_t { collectives, kv, other };
// OpenSM's port types for per-port-type QoS settings (qos_ca_*, qos_swe_*, ...).
enum class IbPortType : std::uint8_t { ca, switch_external, switch_port0, router };

std::string_view fabricKindName(FabricKind kind) noexcept;
std::string_view priorityName(Priority priority) noexcept;
std::string_view roleName(Role role) noexcept;
std::string_view ibPortTypeName(IbPortType type) noexcept;        // "ca", "switch_external", ...
std::string_view openSmPortTypePrefix(IbPortType type) noexcept;  // "ca", "swe", "sw0", "rtr"

struct VlArbEntry {
  std::uint8_t vl = 0;
  std::uint8_t weight = 0;  // 0-255, in 64-byte units; 0 skips the entry
  bool operator==(const VlArbEntry&) const = default;
};
using VlArbTable = std::vector<VlArbEntry>;
using Sl2VlTable = std::array<std::uint8_t, kIbServiceLevels>;

// "0:192,1:192,2:0,3:192", as opensm.conf writes it.
std::string formatVlArbTable(const VlArbTable& table);

// The QoS settings of one IB port type, complete.
struct IbPortQos {
  std::uint8_t max_vls = 0;     // operational data VLs: 1, 2, 4, 8 or 15
  std::uint8_t high_limit = 0;  // 255 = unlimited (low priority may starve)
  VlArbTable vlarb_high;
  VlArbTable vlarb_low;
  Sl2VlTable sl2vl{};

  std::uint8_t vlOfSl(std::uint8_t sl) const { return sl2vl[sl]; }
  // Sum of the VL's weights in a table (a VL may appear in several entries).
  unsigned highWeight(std::uint8_t vl) const;
  unsigned lowWeight(std::uint8_t vl) const;
};

// Per-port-type overrides; an unset field keeps the fabric-wide value.
struct IbPortQosOverride {
  std::optional<std::uint8_t> max_vls;
  std::optional<std::uint8_t> high_limit;
  std::optional<VlArbTable> vlarb_high;
  std::optional<VlArbTable> vlarb_low;
  std::optional<Sl2VlTable> sl2vl;
};

struct InfinibandFabric {
  IbPortQos defaults;
  std::map<IbPortType, IbPortQosOverride> overrides;
  // Routing engine in use, when the policy names one ("minhop", "lash", ...).
  std::optional<std::string> routing_engine;

  IbPortQos forPort(IbPortType type) const;
  // The policy path of `key` ("max_vls", "vlarb_low", ...) as it applies to a
  // port type: "fabric.ca.vlarb_low" when that port type overrides it, else
  // "fabric.vlarb_low" (also for std::nullopt, the fabric-wide settings).
  std::string fieldPath(std::optional<IbPortType> type, std::string_view key) const;
};

struct RoceFabric {
  std::array<std::uint8_t, kRocePriorities> prio_tc{0, 1, 2, 3, 4, 5, 6, 7};
  std::vector<std::uint8_t> pfc_priorities;  // lossless priorities, ascending
};

struct EthernetFabric {
  std::optional<BitsPerSecond> link_rate;  // for tc rendering
};

using Fabric = std::variant<InfinibandFabric, RoceFabric, EthernetFabric>;

struct PortRange {
  std::uint16_t first = 0;
  std::uint16_t last = 0;
  bool overlaps(const PortRange& other) const { return first <= other.last && other.first <= last; }
};

struct UcxSetting {
  std::string name;  // without the UCX_ prefix, as ucp_config_modify() takes it
  std::string value;
  bool operator==(const UcxSetting&) const = default;
};

struct TrafficClass {
  std::string name;
  Role role = Role::other;
  Priority priority = Priority::high;
  std::uint32_t weight = 1;  // share among classes of the same priority, 1-255
  bool is_default = false;   // selected when NCCL's trafficClass is unset (-1)
  std::vector<std::int32_t> nccl_traffic_classes;  // ids >= 0 that select this class
  std::optional<std::uint8_t> ib_sl;
  std::optional<std::uint8_t> dscp;           // 0-63, never the ToS byte
  std::optional<std::uint8_t> roce_priority;  // 802.1p priority 0-7
  std::optional<PortRange> tcp_ports;         // UCX tcp PORT_RANGE on Ethernet
  std::vector<UcxSetting> ucx;                // extra per-class UCX settings

  // The IP ToS byte carrying this class's DSCP (ECN bits zero).
  std::optional<std::uint8_t> tosByte() const {
    if (!dscp) return std::nullopt;
    return static_cast<std::uint8_t>(*dscp << 2);
  }
};

struct ArbiterSettings {
  double low_share = 0.05;                   // share low classes keep under contention, in (0, 1)
  std::optional<BitsPerSecond> link_rate;    // software shaping when set
  Bytes burst = 256 * 1024;                  // token-bucket depth
  Bytes chunk = 512 * 1024;                  // largest low-priority post
  Bytes max_inflight = 64 * 1024 * 1024;     // all classes; 0 = no limit
  Bytes low_max_inflight = 2 * 1024 * 1024;  // low classes; 0 = no limit
  std::uint32_t demand_hold_us = 200;        // how long a refused class keeps its claim
};

// A source position in the policy file, 1-based; 0 when unknown.
struct SourceLocation {
  std::uint32_t line = 0;
  std::uint32_t column = 0;
};

struct Policy {
  std::string source_name;  // file path, or "<built-in>"
  Fabric fabric;
  std::vector<TrafficClass> classes;
  ArbiterSettings arbiter;
  std::vector<UcxSetting> ucx_global;  // process-wide UCX_* variables for the job
  // Where each field was written, keyed by its path ("class[1].ib_sl").
  std::unordered_map<std::string, SourceLocation> locations;

  FabricKind kind() const { return static_cast<FabricKind>(fabric.index()); }
  const InfinibandFabric* infiniband() const { return std::get_if<InfinibandFabric>(&fabric); }
  const RoceFabric* roce() const { return std::get_if<RoceFabric>(&fabric); }
  const EthernetFabric* ethernet() const { return std::get_if<EthernetFabric>(&fabric); }

  const TrafficClass& defaultClass() const;
  const TrafficClass* findClass(std::string_view name) const;
  const TrafficClass* findRole(Role role) const;  // first class with this role
  std::size_t indexOf(const TrafficClass& cls) const {
    return static_cast<std::size_t>(&cls - classes.data());
  }

  // The class NCCL's trafficClass selects: -1 (unset) selects the default
  // class; an id no class lists is an invalid_argument error naming the ids
  // the policy knows, never a silent fallback.
  Result<const TrafficClass*> selectByNcclTrafficClass(std::int32_t traffic_class) const;

  // Where a field was written; falls back to its parents, then to 1:1.
  SourceLocation locate(std::string_view field_path) const;
};

static_assert(
    std::variant_size_v<Fabric> == 3 &&
        std::is_same_v<
            std::variant_alternative_t<static_cast<std::size_t>(FabricKind::roce), Fabric>,
            RoceFabric>,
    "Fabric alternatives follow FabricKind's order");

// Each class's guaranteed share of a saturated link, in class order: the
// high-priority classes split 1 - low_share by weight and the low-priority
// classes split low_share; a level with no classes leaves its share to the
// other. The fabric renderers (ETS, HTB) and the arbiter use the same numbers.
std::vector<double> guaranteedShares(const Policy& policy);

// A share as admins read it: "95%", "0.4%".
std::string formatShare(double share);

// The UCX settings the transport applies to this class's UCP context, names
// without the UCX_ prefix. IB/RoCE keys (IB_SL, IB_TRAFFIC_CLASS) are included
// only when `rdma_devices` is true: UCX warns about keys no opened interface
// uses (see ../shared/FACTS.md). PORT_RANGE is included whenever set.
std::vector<UcxSetting> ucxSettingsFor(const Policy& policy, const TrafficClass& cls,
                                       bool rdma_devices);

}  // namespace dualpath::qos
