// The PCIe topology of one GPU server, and which NICs DualPath uses on it.
//
// DualPath moves KV-cache over two kinds of NIC: each GPU's compute NIC
// (CNIC), which should share the GPU's PCIe switch (GPUDirect RDMA without
// crossing a host bridge), and the storage NICs (SNICs), which read from
// storage and should stay off the GPUs' switches so that storage reads do
// not compete with the GPUs' PCIe links. This component:
//
//   1. loads the machine's PCIe tree from hwloc (the live machine or an
//      exported XML file) into an immutable TopologyModel
//      (topology_hwloc.cc, the only file that includes <hwloc.h>);
//   2. reads an optional TOML override file into a TopologyConfig
//      (topology_config.cc);
//   3. applies pure rules to the model (topology.cc): the distance class of
//      every GPU-NIC path, which NICs are eligible, each GPU's CNIC, the
//      SNICs; the result is a TopologyReport;
//   4. renders a report as a text table or JSON (topology_report.cc).
//
// The rules are written down in docs/topology.md; the model holds no hwloc
// types, so tests build small machines by hand.
//
// Threading: values and pure functions, no shared state; every function may
// run on any thread. The loaders block on file, sysfs and hwloc discovery
// (tens of milliseconds): call them at start-up, never on a fast path.
// Errors: Status/Result, no exceptions; messages name the file, line, field,
// GPU or NIC concerned.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <dualpath/common/status.h>

namespace dualpath::scheduler::topo {

// ---------------------------------------------------------------- the model

using NodeId = std::uint32_t;  // index into TopologyModel::nodes()
inline constexpr NodeId kNoParent = std::numeric_limits<NodeId>::max();
inline constexpr int kUnknownNuma = -1;
inline constexpr std::string_view kLiveSource = "live";  // the source of loadLiveTopology()

enum class NodeKind : std::uint8_t {
  machine,
  package,
  numa,
  host_bridge,  // a PCI host bridge (root complex); never has a bus id
  pci_bridge,   // a PCI-to-PCI bridge: a root port or a switch port
  pci_device,
  other,  // cores, caches, groups: kept so that parent links stay true
};

enum class OsDeviceKind : std::uint8_t { network, openfabrics, block, other };

// A device the kernel names below a PCI function: "eth0", "mlx5_0", "nvme0n1".
struct OsDevice {
  std::string name;
  OsDeviceKind kind = OsDeviceKind::other;
  // The port rate the kernel reports in sysfs, Gbit/s; loaded for the live
  // machine only. 0 = unknown (link down, not a NIC, or read from XML).
  double sysfs_rate_gbps = 0;
};

struct TopologyNode {
  NodeKind kind = NodeKind::other;
  NodeId parent = kNoParent;
  std::uint32_t os_index = 0;   // packages and NUMA nodes
  std::string bus_id;           // PCI bridges and devices: "0000:53:00.0" (lower-case hex)
  std::uint16_t pci_class = 0;  // class and subclass: 0x0302 is a 3D controller
  std::uint16_t vendor_id = 0;
  std::uint16_t device_id = 0;
  double link_gbytes_per_s = 0;  // hwloc's pci_link_speed (GB/s); 0 = unknown
  std::vector<OsDevice> os_devices;
  // os_index of the NUMA node of the nearest non-I/O ancestor, when that
  // ancestor has exactly one; kUnknownNuma otherwise.
  int numa_node = kUnknownNuma;
};

// A machine's tree of nodes. Immutable once created: parents precede their
// children, so every walk towards the root ends.
class TopologyModel {
 public:
  // `source` is kLiveSource or the XML file's path. Errors (invalid_argument): no
  // nodes, a root that is not nodes[0], or a parent index that does not
  // precede its child.
  static Result<TopologyModel> create(std::string source, std::vector<TopologyNode> nodes);

  const std::string& source() const noexcept { return source_; }
  std::span<const TopologyNode> nodes() const noexcept { return nodes_; }
  const TopologyNode& node(NodeId id) const { return nodes_[id]; }
  // Edges from the root to `id`: 0 for the root.
  std::uint32_t depth(NodeId id) const { return depths_[id]; }

 private:
  TopologyModel() = default;
  std::string source_;
  std::vector<TopologyNode> nodes_;
  std::vector<std::uint32_t> depths_;
};

// ---------------------------------------------------------------- loading

struct LiveTopologyOptions {
  // Where NIC rates are read (class/net/<netdev>/speed,
  // class/infiniband/<device>/ports/1/rate); tests point it at a fake tree.
  std::string sysfs_root = "/sys";
};

// The machine this process runs on, PCI and OS devices included, with the
// sysfs rate of each NIC. Errors: io when hwloc cannot discover the machine.
Result<TopologyModel> loadLiveTopology(const LiveTopologyOptions& options = {});

// An `lstopo --of xml` export (hwloc v1 or v2 format). XML comments are
// removed first: hwloc's built-in XML parser rejects them. Errors name the
// file: io (cannot read it), invalid_argument (hwloc rejects it).
Result<TopologyModel> loadTopologyXml(const std::string& path);

// ---------------------------------------------------------------- config

// Where a configured value was written, for error messages.
struct ConfigSite {
  std::uint32_t line = 0;
  std::uint32_t column = 0;
  std::string field;  // "storage.nics[1]", "pin[0].nic"
};

// A shell pattern (fnmatch) matched against a NIC's names and PCI bus id.
struct NicPattern {
  std::string pattern;
  ConfigSite site;
};

// `[[pin]]`: this GPU uses this NIC as its CNIC.
struct PinRule {
  std::variant<std::uint32_t, std::string> gpu;  // GPU index, or its PCI bus id
  std::string nic;                               // a NIC name or PCI bus id
  ConfigSite gpu_site;
  ConfigSite nic_site;
};

inline constexpr double kDefaultMinSpeedGbps = 25;

struct TopologyConfig {
  std::string source;             // the file; empty for the defaults
  std::vector<NicPattern> allow;  // when not empty, only NICs matching one are used
  std::vector<NicPattern> deny;
  double min_speed_gbps = kDefaultMinSpeedGbps;
  std::vector<NicPattern> storage_nics;  // empty: SNICs are chosen automatically
  std::vector<PinRule> pins;

  // "file:line:column: field", the prefix of an error about that value.
  std::string where(const ConfigSite& site) const;
};

// Errors (invalid_argument), one per line: "file:line:column: field: message";
// unknown keys get a "did you mean". A missing file is io.
Result<TopologyConfig> loadTopologyConfig(const std::string& path);
Result<TopologyConfig> parseTopologyConfig(std::string_view text, std::string source_name);

// ---------------------------------------------------------------- rules

// How far apart two PCI devices are, after NCCL's path types (PIX, PXB, PHB,
// SYS; NCCL's graph/topo.h) with nvidia-smi's NODE added. Smaller is closer.
enum class DistanceClass : std::uint8_t {
  pix,   // both hang off ports of the same PCIe switch (at most one bridge each)
  pxb,   // several PCIe bridges apart, without crossing a host bridge
  phb,   // under the same host bridge
  node,  // different host bridges of the same NUMA node
  sys,   // across NUMA nodes (the CPU interconnect)
};
std::string_view distanceClassName(DistanceClass distance) noexcept;  // "PIX"

// Walks parent links to the lowest common ancestor; never hwloc's
// hwloc_get_common_ancestor_obj (it crashes on hwloc 2.9 for PCI objects at
// different depths).
DistanceClass distanceBetween(const TopologyModel& model, NodeId a, NodeId b);

// PCI class 03xx (display) from NVIDIA: the GPUs. NVSwitches (class 0680)
// and other vendors' display controllers are not GPUs.
bool isGpu(const TopologyNode& node) noexcept;

// ---------------------------------------------------------------- the result

enum class NicKind : std::uint8_t { rdma, ethernet };
enum class NicRole : std::uint8_t { cnic, snic, unused, excluded };
enum class SpeedSource : std::uint8_t { unknown, pcie_link, sysfs };
std::string_view nicKindName(NicKind kind) noexcept;
std::string_view nicRoleName(NicRole role) noexcept;
std::string_view speedSourceName(SpeedSource source) noexcept;

struct GpuReport {
  std::uint32_t index = 0;  // PCI bus order
  std::string bus_id;
  std::uint16_t vendor_id = 0;
  std::uint16_t device_id = 0;
  int numa_node = kUnknownNuma;
  std::string cnic;  // empty when the GPU has no compute NIC
  std::string cnic_bus_id;
  std::optional<DistanceClass> cnic_distance;
  bool pinned = false;  // chosen by a [[pin]] of the config
};

// One NIC per PCI function, even when it has both an RDMA and a net device.
struct NicReport {
  std::string name;    // the OpenFabrics (RDMA) device when there is one, else the netdev
  std::string netdev;  // empty when none
  std::string bus_id;
  std::uint16_t vendor_id = 0;
  std::uint16_t device_id = 0;
  NicKind kind = NicKind::ethernet;
  double speed_gbps = 0;  // the best upper bound known; 0 = unknown
  SpeedSource speed_source = SpeedSource::unknown;
  int numa_node = kUnknownNuma;
  std::optional<DistanceClass> nearest_gpu;  // empty when there is no GPU
  NicRole role = NicRole::unused;
  std::string reason;  // why it has its role
};

struct NvmeReport {
  std::string name;  // the block device, or empty
  std::string bus_id;
  int numa_node = kUnknownNuma;
};

struct TopologyReport {
  std::string source;                   // kLiveSource or the XML file
  std::vector<std::uint32_t> packages;  // os indexes
  std::vector<std::uint32_t> numa_nodes;
  std::uint32_t pcie_switches = 0;
  std::vector<GpuReport> gpus;
  std::vector<NicReport> nics;  // PCI bus order
  std::vector<NvmeReport> nvme;
  std::vector<std::string> warnings;

  const NicReport* findNic(std::string_view name) const;
  std::vector<const NicReport*> storageNics() const;
};

// Applies the rules of docs/topology.md. Errors (invalid_argument) name the
// config's file:line and field: a [storage] pattern that matches no usable
// NIC, a pin to an unknown GPU or NIC, to an excluded or a storage NIC, or a
// GPU pinned twice.
Result<TopologyReport> planTopology(const TopologyModel& model, const TopologyConfig& config);

// For people: tables of the GPU-CNIC pairs, SNICs, NICs (with the reason for
// each role), NVMe and warnings.
std::string renderTopologyText(const TopologyReport& report);
// For tools: the same data as one JSON object (schema in docs/topology.md).
std::string renderTopologyJson(const TopologyReport& report);

}  // namespace dualpath::scheduler::topo
