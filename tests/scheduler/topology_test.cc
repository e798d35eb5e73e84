// The topology rules (scheduler/src/topology*.cc) on real AWS server exports,
// on our DGX-H100-like fixtures, on small machines built here, and on the
// live machine. Every expectation was worked out by hand from the XML files
// (tests/scheduler/data/README.md describes the fixtures).
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <dualpath/scheduler/topology.h>

namespace dualpath::scheduler::topo {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

const std::string kShared = DUALPATH_SHARED_TOPOLOGIES;
const std::string kData = DUALPATH_TOPOLOGY_DATA;
const std::string kDgx1Snic = kData + "/dgx-h100-like-1snic.xml";
const std::string kDgx2Snic = kData + "/dgx-h100-like-2snic.xml";
const std::string kDgx2SnicV1 = kData + "/dgx-h100-like-2snic-v1.xml";

// The NICs of dgx-h100-like-1snic.xml in PCI bus order (mlx5_8 at 0xaa).
constexpr std::string_view kDgx1SnicNics =
    "eno1, mlx5_0, mlx5_1, mlx5_2, mlx5_3, mlx5_8, mlx5_4, mlx5_5, mlx5_6, mlx5_7";

TopologyModel loadXml(const std::string& path) {
  Result<TopologyModel> model = loadTopologyXml(path);
  EXPECT_TRUE(model) << model.status().message();
  if (!model) std::abort();
  return std::move(*model);
}

TopologyConfig configFrom(const std::string& toml) {
  Result<TopologyConfig> config = parseTopologyConfig(toml, "topo.toml");
  EXPECT_TRUE(config) << config.status().message();
  if (!config) std::abort();
  return std::move(*config);
}

TopologyReport plan(const std::string& path, const TopologyConfig& config = {}) {
  Result<TopologyReport> report = planTopology(loadXml(path), config);
  EXPECT_TRUE(report) << report.status().message();
  if (!report) std::abort();
  return std::move(*report);
}

// The error planTopology() gives for this config on this file.
std::string planError(const std::string& path, const std::string& toml) {
  Result<TopologyReport> report = planTopology(loadXml(path), configFrom(toml));
  EXPECT_FALSE(report);
  return report ? std::string() : report.status().message();
}

std::string configError(const std::string& toml) {
  Result<TopologyConfig> config = parseTopologyConfig(toml, "topo.toml");
  EXPECT_FALSE(config);
  return config ? std::string() : config.status().message();
}

NodeId nodeAt(const TopologyModel& model, std::string_view bus_id) {
  for (NodeId id = 0; id < model.nodes().size(); ++id) {
    if (model.node(id).bus_id == bus_id && model.node(id).kind == NodeKind::pci_device) return id;
  }
  ADD_FAILURE() << "no PCI device " << bus_id;
  return 0;
}

std::vector<std::string> cnicNames(const TopologyReport& report) {
  std::vector<std::string> names;
  for (const GpuReport& gpu : report.gpus) names.push_back(gpu.cnic);
  return names;
}

std::vector<std::string> snicNames(const TopologyReport& report) {
  std::vector<std::string> names;
  for (const NicReport* nic : report.storageNics()) names.push_back(nic->name);
  return names;
}

const NicReport& nic(const TopologyReport& report, std::string_view name) {
  const NicReport* found = report.findNic(name);
  EXPECT_NE(found, nullptr) << name;
  if (found == nullptr) std::abort();
  return *found;
}

std::string writeTemp(const std::string& name, const std::string& text) {
  std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

// ---------------------------------------------------------------- small machines

// Builds a machine node by node, parents first.
class MachineBuilder {
 public:
  MachineBuilder() {
    nodes_.push_back(TopologyNode{});
    nodes_[0].kind = NodeKind::machine;
  }

  NodeId package(std::uint32_t os_index) {
    TopologyNode& package = add(NodeKind::package, 0);
    package.os_index = os_index;
    package.numa_node = static_cast<int>(os_index);
    const NodeId id = last();
    TopologyNode& numa = add(NodeKind::numa, id);
    numa.os_index = os_index;
    return id;
  }
  NodeId hostBridge(NodeId parent) {
    add(NodeKind::host_bridge, parent);
    return last();
  }
  NodeId bridge(NodeId parent, std::string bus_id) {
    pci(NodeKind::pci_bridge, parent, std::move(bus_id), 0x0604, 0x1000, 0);
    return last();
  }
  NodeId gpu(NodeId parent, std::string bus_id) {
    pci(NodeKind::pci_device, parent, std::move(bus_id), 0x0302, 0x10de, 63).device_id = 0x2330;
    return last();
  }
  NodeId nic(NodeId parent, std::string bus_id, std::vector<OsDevice> devices,
             double link_gbytes_per_s = 31.5, std::uint16_t vendor_id = 0x15b3) {
    pci(NodeKind::pci_device, parent, std::move(bus_id), 0x0207, vendor_id, link_gbytes_per_s)
        .os_devices = std::move(devices);
    return last();
  }
  NodeId rdmaNic(NodeId parent, std::string bus_id, std::string name) {
    return nic(parent, std::move(bus_id), {{std::move(name), OsDeviceKind::openfabrics, 0}});
  }

  TopologyModel build() {
    Result<TopologyModel> model = TopologyModel::create("built-in-test", nodes_);
    EXPECT_TRUE(model) << model.status().message();
    if (!model) std::abort();
    return std::move(*model);
  }

 private:
  // A child in its parent's NUMA node.
  TopologyNode& add(NodeKind kind, NodeId parent) {
    TopologyNode node;
    node.kind = kind;
    node.parent = parent;
    node.numa_node = nodes_[parent].numa_node;
    nodes_.push_back(std::move(node));
    return nodes_.back();
  }
  TopologyNode& pci(NodeKind kind, NodeId parent, std::string bus_id, std::uint16_t pci_class,
                    std::uint16_t vendor_id, double link_gbytes_per_s) {
    TopologyNode& node = add(kind, parent);
    node.bus_id = std::move(bus_id);
    node.pci_class = pci_class;
    node.vendor_id = vendor_id;
    node.device_id = 0x1021;
    node.link_gbytes_per_s = link_gbytes_per_s;
    return node;
  }
  NodeId last() const { return static_cast<NodeId>(nodes_.size() - 1); }

  std::vector<TopologyNode> nodes_;
};

// Two packages. Package 0: host bridge A with a switch whose downstream port
// leads to a second switch (GPU a, NIC a1 on the first level, NIC a2 behind
// the second), host bridge B with a GPU and a NIC on two root ports.
// Package 1: host bridge C with one NIC.
struct SmallMachine {
  TopologyModel model;
  NodeId gpu_a = 0, nic_a1 = 0, nic_a2 = 0, gpu_b = 0, nic_b = 0, nic_c = 0;

  static SmallMachine make() {
    MachineBuilder m;
    NodeId package0 = m.package(0);
    NodeId package1 = m.package(1);
    NodeId host_a = m.hostBridge(package0);
    NodeId root_a = m.bridge(host_a, "0000:10:01.0");
    NodeId upstream = m.bridge(root_a, "0000:11:00.0");
    NodeId port_gpu = m.bridge(upstream, "0000:12:00.0");
    NodeId port_nic = m.bridge(upstream, "0000:12:01.0");
    NodeId port_nested = m.bridge(upstream, "0000:12:02.0");
    NodeId nested_upstream = m.bridge(port_nested, "0000:15:00.0");
    NodeId nested_port = m.bridge(nested_upstream, "0000:16:00.0");
    NodeId gpu_a = m.gpu(port_gpu, "0000:13:00.0");
    NodeId nic_a1 = m.rdmaNic(port_nic, "0000:14:00.0", "mlx5_a1");
    NodeId nic_a2 = m.rdmaNic(nested_port, "0000:17:00.0", "mlx5_a2");
    NodeId host_b = m.hostBridge(package0);
    NodeId gpu_b = m.gpu(m.bridge(host_b, "0000:20:01.0"), "0000:21:00.0");
    NodeId nic_b = m.rdmaNic(m.bridge(host_b, "0000:20:02.0"), "0000:22:00.0", "mlx5_b");
    NodeId host_c = m.hostBridge(package1);
    NodeId nic_c = m.rdmaNic(m.bridge(host_c, "0000:80:01.0"), "0000:81:00.0", "mlx5_c");
    return {m.build(), gpu_a, nic_a1, nic_a2, gpu_b, nic_b, nic_c};
  }
};

TEST(TopologyDistanceTest, EachClassOnABuiltMachine) {
  SmallMachine m = SmallMachine::make();
  EXPECT_EQ(distanceBetween(m.model, m.gpu_a, m.nic_a1), DistanceClass::pix);
  EXPECT_EQ(distanceBetween(m.model, m.gpu_a, m.nic_a2), DistanceClass::pxb);
  EXPECT_EQ(distanceBetween(m.model, m.gpu_b, m.nic_b), DistanceClass::phb);
  EXPECT_EQ(distanceBetween(m.model, m.gpu_a, m.nic_b), DistanceClass::node);
  EXPECT_EQ(distanceBetween(m.model, m.gpu_a, m.nic_c), DistanceClass::sys);
  EXPECT_EQ(distanceBetween(m.model, m.nic_c, m.gpu_a), DistanceClass::sys);
  EXPECT_EQ(distanceBetween(m.model, m.gpu_a, m.gpu_a), DistanceClass::pix);
}

TEST(TopologyDistanceTest, ClassesOnTheServerFiles) {
  TopologyModel dgx = loadXml(kDgx1Snic);
  NodeId gpu0 = nodeAt(dgx, "0000:18:00.0");
  NodeId gpu4 = nodeAt(dgx, "0000:b8:00.0");
  EXPECT_EQ(distanceBetween(dgx, gpu0, nodeAt(dgx, "0000:13:00.0")), DistanceClass::pix);  // mlx5_0
  EXPECT_EQ(distanceBetween(dgx, gpu0, nodeAt(dgx, "0000:23:00.0")),
            DistanceClass::node);  // mlx5_2
  EXPECT_EQ(distanceBetween(dgx, gpu0, nodeAt(dgx, "0000:aa:00.0")),
            DistanceClass::node);  // mlx5_8
  EXPECT_EQ(distanceBetween(dgx, gpu4, nodeAt(dgx, "0000:aa:00.0")), DistanceClass::sys);
  EXPECT_EQ(distanceBetween(dgx, gpu0, nodeAt(dgx, "0000:b3:00.0")), DistanceClass::sys);  // mlx5_4

  // p4d: GPUs and EFA sit directly below a shared host bridge.
  TopologyModel p4d = loadXml(kShared + "/aws-p4d.24xl.xml");
  EXPECT_EQ(distanceBetween(p4d, nodeAt(p4d, "0000:10:1c.0"), nodeAt(p4d, "0000:10:1b.0")),
            DistanceClass::phb);
  EXPECT_EQ(distanceBetween(p4d, nodeAt(p4d, "0000:10:1c.0"), nodeAt(p4d, "0000:20:1b.0")),
            DistanceClass::node);
}

TEST(TopologyDistanceTest, NamesFollowNccl) {
  EXPECT_EQ(distanceClassName(DistanceClass::pix), "PIX");
  EXPECT_EQ(distanceClassName(DistanceClass::pxb), "PXB");
  EXPECT_EQ(distanceClassName(DistanceClass::phb), "PHB");
  EXPECT_EQ(distanceClassName(DistanceClass::node), "NODE");
  EXPECT_EQ(distanceClassName(DistanceClass::sys), "SYS");
  EXPECT_LT(DistanceClass::pix, DistanceClass::pxb);
  EXPECT_LT(DistanceClass::phb, DistanceClass::node);
}

TEST(TopologyModelTest, ParentsMustPrecedeChildren) {
  std::vector<TopologyNode> nodes(2);
  nodes[1].parent = 1;
  Result<TopologyModel> model = TopologyModel::create("hand-made", nodes);
  ASSERT_FALSE(model);
  EXPECT_EQ(model.status().message(),
            "hand-made: node 1 has parent 1; a parent precedes its children");
  nodes[0].parent = 0;
  EXPECT_EQ(TopologyModel::create("hand-made", nodes).status().message(),
            "hand-made: a topology starts with its root node");
}

TEST(TopologyPlanTest, BuiltMachineCountsTwoSwitchesAndPrefersTheSwitch) {
  SmallMachine m = SmallMachine::make();
  Result<TopologyReport> report = planTopology(m.model, {});
  ASSERT_TRUE(report) << report.status().message();
  EXPECT_EQ(report->pcie_switches, 2u);  // 11:00.0 and the nested 15:00.0
  EXPECT_THAT(cnicNames(*report), ElementsAre("mlx5_a1", "mlx5_b"));
  EXPECT_EQ(report->gpus[1].cnic_distance, DistanceClass::phb);
  // mlx5_a2 is PXB from GPU 0: on a GPU switch, so no storage NIC; mlx5_c is
  // the only NIC off the GPUs' switches.
  EXPECT_THAT(snicNames(*report), ElementsAre("mlx5_c"));
  EXPECT_EQ(nic(*report, "mlx5_a2").reason,
            "spare compute NIC; on GPU 0's PCIe switch (PXB), so not a storage NIC");
  EXPECT_EQ(nic(*report, "mlx5_c").reason,
            "fastest NIC off the GPUs' PCIe switches (nearest GPU: SYS)");
}

// ---------------------------------------------------------------- NIC speeds

TopologyReport planOneNic(std::vector<OsDevice> devices, double link_gbytes_per_s,
                          std::uint16_t vendor_id = 0x15b3, const TopologyConfig& config = {}) {
  MachineBuilder m;
  NodeId host = m.hostBridge(m.package(0));
  m.gpu(m.bridge(host, "0000:01:00.0"), "0000:02:00.0");
  m.nic(m.bridge(host, "0000:01:01.0"), "0000:03:00.0", std::move(devices), link_gbytes_per_s,
        vendor_id);
  Result<TopologyReport> report = planTopology(m.build(), config);
  EXPECT_TRUE(report) << report.status().message();
  if (!report) std::abort();
  return std::move(*report);
}

TEST(TopologySpeedTest, TheSmallerOfPcieLinkAndSysfsRate) {
  TopologyReport slower_port = planOneNic({{"mlx5_0", OsDeviceKind::openfabrics, 100}}, 31.5);
  EXPECT_EQ(slower_port.nics[0].speed_gbps, 100);
  EXPECT_EQ(slower_port.nics[0].speed_source, SpeedSource::sysfs);

  TopologyReport slower_link = planOneNic({{"eth2", OsDeviceKind::network, 400}}, 15.75);
  EXPECT_EQ(slower_link.nics[0].speed_gbps, 126);
  EXPECT_EQ(slower_link.nics[0].speed_source, SpeedSource::pcie_link);

  TopologyReport unknown = planOneNic({{"eth2", OsDeviceKind::network, 0}}, 0);
  EXPECT_EQ(unknown.nics[0].speed_gbps, 0);
  EXPECT_EQ(unknown.nics[0].speed_source, SpeedSource::unknown);
  EXPECT_EQ(unknown.nics[0].role, NicRole::cnic);  // unknown speed passes
}

TEST(TopologySpeedTest, SlowSysfsRateExcludesWithItsSource) {
  TopologyReport report = planOneNic({{"eth2", OsDeviceKind::network, 10}}, 31.5);
  EXPECT_EQ(report.nics[0].role, NicRole::excluded);
  EXPECT_EQ(report.nics[0].reason,
            "10 Gbit/s (sysfs) is below min_speed_gbps = 25; name it in [nics] allow or "
            "[storage] nics to use it");
}

// ---------------------------------------------------------------- virtual NICs

TEST(TopologyEligibilityTest, VirtualNicsOnlyWhenNamed) {
  const std::vector<OsDevice> virtio = {{"eth0", OsDeviceKind::network, 0}};
  TopologyReport silent = planOneNic(virtio, 0, 0x1af4);
  EXPECT_EQ(silent.nics[0].role, NicRole::excluded);
  EXPECT_EQ(silent.nics[0].reason,
            "virtual NIC (virtio, vendor 1af4); name it in [nics] allow or [storage] nics to use "
            "it");
  EXPECT_EQ(silent.gpus[0].cnic, "");
  EXPECT_THAT(silent.warnings,
              ElementsAre("no storage NIC off the GPUs' PCIe switches; name one in [storage] nics "
                          "(candidates: none)",
                          "GPU 0 has no compute NIC: no eligible NIC outside [storage] nics"));

  TopologyReport named = planOneNic(virtio, 0, 0x1af4, configFrom("[nics]\nallow = [\"eth*\"]\n"));
  EXPECT_EQ(named.gpus[0].cnic, "eth0");
  EXPECT_THAT(named.warnings,
              ElementsAre("no storage NIC off the GPUs' PCIe switches; name one in [storage] nics "
                          "(candidates: none)",
                          "eth0: virtual NIC (virtio, vendor 1af4); used as cnic because [nics] "
                          "allow names it"));

  for (auto [vendor, family] :
       {std::pair{0x1414, "Hyper-V"}, std::pair{0x15ad, "VMware"}, std::pair{0x5853, "Xen"}}) {
    TopologyReport report = planOneNic(virtio, 0, static_cast<std::uint16_t>(vendor));
    EXPECT_THAT(report.nics[0].reason, StartsWith(fmt::format("virtual NIC ({}, vendor", family)));
  }
}

// ---------------------------------------------------------------- AWS servers

struct AwsServer {
  std::string file;
  std::string gpu0_cnic;
  std::string gpu7_cnic;
  DistanceClass distance;      // of every GPU to its CNIC
  std::uint32_t gpus_per_nic;  // ceil(8 GPUs / RDMA NICs)
  std::uint32_t pcie_switches;
  std::vector<std::string> snics;
};

class AwsServerTest : public ::testing::TestWithParam<AwsServer> {};

TEST_P(AwsServerTest, CnicsSnicsAndSwitches) {
  const AwsServer& expected = GetParam();
  TopologyReport report = plan(kShared + "/" + expected.file);
  ASSERT_EQ(report.gpus.size(), 8u);
  EXPECT_EQ(report.gpus[0].cnic, expected.gpu0_cnic);
  EXPECT_EQ(report.gpus[7].cnic, expected.gpu7_cnic);
  std::map<std::string, std::uint32_t> gpus_per_nic;
  for (const GpuReport& gpu : report.gpus) {
    EXPECT_EQ(gpu.cnic_distance, expected.distance) << "GPU " << gpu.index;
    ++gpus_per_nic[gpu.cnic];
  }
  for (auto [name, count] : gpus_per_nic) EXPECT_EQ(count, expected.gpus_per_nic) << name;
  EXPECT_EQ(report.pcie_switches, expected.pcie_switches);
  EXPECT_EQ(snicNames(report), expected.snics);
  if (expected.snics.empty()) {
    ASSERT_EQ(report.warnings.size(), 1u);
    EXPECT_THAT(report.warnings[0],
                StartsWith("no storage NIC off the GPUs' PCIe switches; name one in [storage] "
                           "nics (candidates: enp71s0, enp72s0, "));
  } else {
    EXPECT_THAT(report.warnings, IsEmpty());
  }
}

// Read from the files: p4d has no PCIe switch (GPUs, EFA and ENA share four
// host bridges, 2 GPUs and 1 EFA each); p5 has one switch per GPU with 4 EFA
// and 4 ENA; p5en and p6-b200 have 2 GPUs per switch with 4 (p5en) or 2
// (p6-b200) EFA, plus two ConnectX-7 IB NICs at 31.5 Gbit/s on p6-b200's
// third switch, which lose to the 504 Gbit/s EFA.
INSTANTIATE_TEST_SUITE_P(
    SharedTopologies, AwsServerTest,
    ::testing::Values(
        AwsServer{"aws-p4d.24xl.xml",
                  "rdmap16s27",
                  "rdmap160s27",
                  DistanceClass::phb,
                  2,
                  0,
                  {"ens32", "ens65", "ens129", "ens161"}},
        AwsServer{"aws-p5.48xl.xml", "rdmap79s0", "rdmap198s0", DistanceClass::pix, 1, 8, {}},
        AwsServer{"aws-p5en.48xl.xml", "rdmap85s0", "rdmap161s0", DistanceClass::pix, 1, 4, {}},
        AwsServer{"aws-p6-b200.48xl.xml", "rdmap79s0", "rdmap133s0", DistanceClass::pix, 1, 4, {}}),
    [](const ::testing::TestParamInfo<AwsServer>& server) {
      std::string name = server.param.file.substr(4, server.param.file.find('.') - 4);
      std::erase(name, '-');
      return name;
    });

TEST(AwsServerDetailTest, P4dStorageNicsAreEthernetOfUnknownSpeed) {
  TopologyReport report = plan(kShared + "/aws-p4d.24xl.xml");
  const NicReport& ens32 = nic(report, "ens32");
  EXPECT_EQ(ens32.kind, NicKind::ethernet);
  EXPECT_EQ(ens32.speed_source, SpeedSource::unknown);
  EXPECT_EQ(ens32.nearest_gpu, DistanceClass::phb);
  EXPECT_EQ(ens32.reason, "fastest NIC off the GPUs' PCIe switches (nearest GPU: PHB)");
  EXPECT_EQ(nic(report, "rdmap16s27").reason, "compute NIC of GPUs 0, 1");
  EXPECT_EQ(report.gpus[0].bus_id, "0000:10:1c.0");
  EXPECT_EQ(report.gpus[7].bus_id, "0000:a0:1d.0");
  // The boot NVMe hangs off a host bridge below the machine, not a package.
  EXPECT_EQ(report.nvme[0].name, "nvme0n1");
  EXPECT_EQ(report.nvme[0].numa_node, kUnknownNuma);
}

TEST(AwsServerDetailTest, P6B200InfinibandNicsAreSpare) {
  TopologyReport report = plan(kShared + "/aws-p6-b200.48xl.xml");
  const NicReport& ib = nic(report, "ibp115s0f0");
  EXPECT_EQ(ib.kind, NicKind::rdma);
  EXPECT_EQ(ib.netdev, "ibp115s0f0");
  EXPECT_NEAR(ib.speed_gbps, 31.5, 0.01);  // pci_link_speed 3.938462 GB/s
  EXPECT_EQ(ib.role, NicRole::unused);
  EXPECT_EQ(ib.reason, "spare compute NIC; on GPU 4's PCIe switch (PIX), so not a storage NIC");
  EXPECT_EQ(report.gpus[4].cnic, "rdmap113s0");
}

// ---------------------------------------------------------------- DGX fixtures

TEST(DgxFixtureTest, GpuIUsesMlx5IAndOneStorageNic) {
  TopologyReport report = plan(kDgx1Snic);
  EXPECT_EQ(report.source, kDgx1Snic);
  ASSERT_EQ(report.gpus.size(), 8u);
  for (const GpuReport& gpu : report.gpus) {
    EXPECT_EQ(gpu.cnic, fmt::format("mlx5_{}", gpu.index));
    EXPECT_EQ(gpu.cnic_distance, DistanceClass::pix);
    EXPECT_EQ(gpu.numa_node, gpu.index < 4 ? 0 : 1);
    EXPECT_FALSE(gpu.pinned);
  }
  EXPECT_THAT(snicNames(report), ElementsAre("mlx5_8"));
  EXPECT_EQ(nic(report, "mlx5_8").numa_node, 0);
  EXPECT_EQ(nic(report, "mlx5_8").netdev, "enp170s0f0");
  EXPECT_THAT(report.warnings, IsEmpty());
}

TEST(DgxFixtureTest, TwoStorageNicsOnePerPackage) {
  TopologyReport report = plan(kDgx2Snic);
  EXPECT_THAT(cnicNames(report), ElementsAre("mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3", "mlx5_4",
                                             "mlx5_5", "mlx5_6", "mlx5_7"));
  EXPECT_THAT(snicNames(report), ElementsAre("mlx5_8", "mlx5_9"));
  EXPECT_EQ(nic(report, "mlx5_9").numa_node, 1);
  EXPECT_EQ(nic(report, "mlx5_9").nearest_gpu, DistanceClass::node);
}

TEST(DgxFixtureTest, V1FileGivesTheSameResultAsV2) {
  TopologyReport v1 = plan(kDgx2SnicV1);
  TopologyReport v2 = plan(kDgx2Snic);
  v1.source = v2.source;
  EXPECT_EQ(renderTopologyJson(v1), renderTopologyJson(v2));
}

TEST(DgxFixtureTest, NvswitchesAndAspeedAreNotGpus) {
  TopologyModel model = loadXml(kDgx1Snic);
  EXPECT_FALSE(isGpu(model.node(nodeAt(model, "0000:e3:00.0"))));  // NVSwitch, class 0680
  EXPECT_FALSE(isGpu(model.node(nodeAt(model, "0000:02:00.0"))));  // ASPEED VGA, 1a03:2000
  EXPECT_TRUE(isGpu(model.node(nodeAt(model, "0000:18:00.0"))));
  Result<TopologyReport> report = planTopology(model, {});
  ASSERT_TRUE(report);
  std::vector<std::string> bus_ids;
  for (const GpuReport& gpu : report->gpus) bus_ids.push_back(gpu.bus_id);
  EXPECT_THAT(bus_ids, ElementsAre("0000:18:00.0", "0000:1a:00.0", "0000:28:00.0", "0000:2a:00.0",
                                   "0000:b8:00.0", "0000:ba:00.0", "0000:c8:00.0", "0000:ca:00.0"));
}

TEST(DgxFixtureTest, ManagementNicIsExcludedAsTooSlow) {
  TopologyReport report = plan(kDgx1Snic);
  const NicReport& eno1 = nic(report, "eno1");
  EXPECT_EQ(eno1.role, NicRole::excluded);
  EXPECT_EQ(eno1.speed_gbps, 2);
  EXPECT_EQ(eno1.reason,
            "2 Gbit/s (PCIe link) is below min_speed_gbps = 25; name it in [nics] allow or "
            "[storage] nics to use it");
}

TEST(DgxFixtureTest, InventoryCounts) {
  TopologyReport report = plan(kDgx1Snic);
  EXPECT_THAT(report.packages, ElementsAre(0u, 1u));
  EXPECT_THAT(report.numa_nodes, ElementsAre(0u, 1u));
  // Four GPU switches, plus the switch in front of the four NVSwitches.
  EXPECT_EQ(report.pcie_switches, 5u);
  EXPECT_EQ(report.nics.size(), 10u);
  std::vector<std::string> nvme;
  for (const NvmeReport& device : report.nvme) {
    nvme.push_back(fmt::format("{}@{}/{}", device.name, device.bus_id, device.numa_node));
  }
  EXPECT_THAT(nvme, ElementsAre("nvme4n1@0000:03:00.0/0", "nvme0n1@0000:16:00.0/0",
                                "nvme1n1@0000:26:00.0/0", "nvme2n1@0000:b6:00.0/1",
                                "nvme3n1@0000:c6:00.0/1"));
}

// ---------------------------------------------------------------- config rules

TEST(TopologyConfigRulesTest, AllowListBalancesGpusOverFewerNics) {
  // Four NICs for eight GPUs: two GPUs each. GPUs 0-3 take their own PIX NIC
  // first; GPUs 4-7 (package 1) then cross the sockets, each to the least
  // loaded NIC: mlx5_0 to mlx5_3 in bus order. mlx5_8 is not allowed, so
  // there is no SNIC.
  TopologyReport report = plan(kDgx1Snic, configFrom("[nics]\nallow = [\"mlx5_[0-3]\"]\n"));
  EXPECT_THAT(cnicNames(report), ElementsAre("mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3", "mlx5_0",
                                             "mlx5_1", "mlx5_2", "mlx5_3"));
  EXPECT_EQ(report.gpus[1].cnic_distance, DistanceClass::pix);
  EXPECT_EQ(report.gpus[4].cnic_distance, DistanceClass::sys);
  EXPECT_EQ(nic(report, "mlx5_4").reason, "not matched by [nics] allow");
  EXPECT_EQ(nic(report, "mlx5_8").role, NicRole::excluded);
  EXPECT_THAT(snicNames(report), IsEmpty());
  EXPECT_THAT(report.warnings,
              ElementsAre("no storage NIC off the GPUs' PCIe switches; name one in [storage] nics "
                          "(candidates: none)",
                          "GPU 4's compute NIC mlx5_0 is SYS: its traffic leaves the GPU's host "
                          "bridge",
                          "GPU 5's compute NIC mlx5_1 is SYS: its traffic leaves the GPU's host "
                          "bridge",
                          "GPU 6's compute NIC mlx5_2 is SYS: its traffic leaves the GPU's host "
                          "bridge",
                          "GPU 7's compute NIC mlx5_3 is SYS: its traffic leaves the GPU's host "
                          "bridge"));
}

TEST(TopologyConfigRulesTest, DenyByNameAndBusId) {
  // Six NICs left on the GPUs' switches (mlx5_2-7) for eight GPUs: at most two
  // GPUs each. GPUs 2-7 take their own PIX NIC; GPUs 0 and 1 have none and
  // take the NODE NICs of their package, one each. mlx5_8 sits on a host
  // bridge without a GPU, so it is no compute NIC candidate and stays the SNIC.
  TopologyReport report =
      plan(kDgx1Snic, configFrom("[nics]\ndeny = [\"mlx5_0\", \"0000:14:00.0\"]\n"));
  EXPECT_EQ(nic(report, "mlx5_0").reason, "denied by [nics] deny \"mlx5_0\"");
  EXPECT_EQ(nic(report, "mlx5_1").reason, "denied by [nics] deny \"0000:14:00.0\"");
  EXPECT_THAT(cnicNames(report), ElementsAre("mlx5_2", "mlx5_3", "mlx5_2", "mlx5_3", "mlx5_4",
                                             "mlx5_5", "mlx5_6", "mlx5_7"));
  EXPECT_EQ(report.gpus[0].cnic_distance, DistanceClass::node);
  EXPECT_EQ(report.gpus[2].cnic_distance, DistanceClass::pix);
  EXPECT_THAT(snicNames(report), ElementsAre("mlx5_8"));
  EXPECT_THAT(report.warnings,
              ElementsAre("GPU 0's compute NIC mlx5_2 is NODE: its traffic leaves the GPU's host "
                          "bridge",
                          "GPU 1's compute NIC mlx5_3 is NODE: its traffic leaves the GPU's host "
                          "bridge"));
}

TEST(TopologyConfigRulesTest, MinSpeed) {
  TopologyReport strict = plan(kDgx1Snic, configFrom("[nics]\nmin_speed_gbps = 300\n"));
  EXPECT_EQ(nic(strict, "mlx5_0").reason,
            "252 Gbit/s (PCIe link) is below min_speed_gbps = 300; name it in [nics] allow or "
            "[storage] nics to use it");
  EXPECT_THAT(cnicNames(strict), ElementsAre("", "", "", "", "", "", "", ""));

  // With no minimum the I210 is eligible, but Ethernet and slower than mlx5_8.
  TopologyReport lenient = plan(kDgx1Snic, configFrom("[nics]\nmin_speed_gbps = 0\n"));
  EXPECT_EQ(nic(lenient, "eno1").role, NicRole::unused);
  EXPECT_EQ(nic(lenient, "eno1").reason,
            "Ethernet; the compute NICs are RDMA NICs here; slower than the storage NIC");
  EXPECT_THAT(snicNames(lenient), ElementsAre("mlx5_8"));
}

TEST(TopologyConfigRulesTest, StorageByNameBusIdAndPattern) {
  TopologyReport by_name = plan(kDgx2Snic, configFrom("[storage]\nnics = [\"mlx5_9\"]\n"));
  EXPECT_THAT(snicNames(by_name), ElementsAre("mlx5_9"));
  EXPECT_EQ(nic(by_name, "mlx5_9").reason, "named in [storage] nics (\"mlx5_9\")");
  // mlx5_8 now competes for GPUs and loses to the PIX NICs.
  EXPECT_EQ(nic(by_name, "mlx5_8").reason, "spare compute NIC");

  TopologyReport by_bus_id = plan(kDgx2Snic, configFrom("[storage]\nnics = [\"0000:aa:00.0\"]\n"));
  EXPECT_THAT(snicNames(by_bus_id), ElementsAre("mlx5_8"));
  TopologyReport by_short_bus_id = plan(kDgx2Snic, configFrom("[storage]\nnics = [\"aa:00.0\"]\n"));
  EXPECT_THAT(snicNames(by_short_bus_id), ElementsAre("mlx5_8"));

  TopologyReport by_pattern = plan(kDgx2Snic, configFrom("[storage]\nnics = [\"enp*s0f0\"]\n"));
  EXPECT_THAT(snicNames(by_pattern), ElementsAre("mlx5_8", "mlx5_9"));
}

TEST(TopologyConfigRulesTest, NamingTheManagementNicAsStorageWarns) {
  TopologyReport report = plan(kDgx1Snic, configFrom("[storage]\nnics = [\"eno1\"]\n"));
  EXPECT_THAT(snicNames(report), ElementsAre("eno1"));
  EXPECT_THAT(report.warnings,
              ElementsAre("eno1: 2 Gbit/s (PCIe link) is below min_speed_gbps = 25; used as snic "
                          "because [storage] nics names it"));
}

TEST(TopologyConfigRulesTest, StoragePatternMustMatchAUsableNic) {
  EXPECT_EQ(planError(kDgx1Snic, "[storage]\nnics = [\"mlx5_42\"]\n"),
            fmt::format("topo.toml:2:9: storage.nics[0]: \"mlx5_42\" matches no NIC; the NICs "
                        "are {}",
                        kDgx1SnicNics));
  EXPECT_EQ(planError(kDgx1Snic, "[nics]\ndeny = [\"mlx5_8\"]\n[storage]\nnics = [\"mlx5_8\"]\n"),
            "topo.toml:4:9: storage.nics[0]: \"mlx5_8\" matches only NICs that [nics] deny "
            "excludes: mlx5_8");
}

TEST(TopologyConfigRulesTest, PinsComeFirst) {
  TopologyReport report = plan(kDgx1Snic, configFrom(R"([[pin]]
gpu = 0
nic = "mlx5_1"

[[pin]]
gpu = "0000:28:00.0"
nic = "0000:24:00.0"
)"));
  EXPECT_THAT(cnicNames(report), ElementsAre("mlx5_1", "mlx5_0", "mlx5_3", "mlx5_2", "mlx5_4",
                                             "mlx5_5", "mlx5_6", "mlx5_7"));
  EXPECT_TRUE(report.gpus[0].pinned);
  EXPECT_FALSE(report.gpus[1].pinned);
  EXPECT_TRUE(report.gpus[2].pinned);
  EXPECT_EQ(nic(report, "mlx5_1").reason, "pinned compute NIC of GPU 0");
}

TEST(TopologyConfigRulesTest, EachPinErrorNamesItsLine) {
  EXPECT_EQ(planError(kDgx1Snic, "[[pin]]\ngpu = 8\nnic = \"mlx5_0\"\n"),
            "topo.toml:2:7: pin[0].gpu: no GPU 8; this machine has GPUs 0-7");
  EXPECT_EQ(planError(kDgx1Snic, "[[pin]]\ngpu = \"0000:99:00.0\"\nnic = \"mlx5_0\"\n"),
            "topo.toml:2:7: pin[0].gpu: no GPU at PCI bus id \"0000:99:00.0\"; the GPUs are at "
            "0000:18:00.0, 0000:1a:00.0, 0000:28:00.0, 0000:2a:00.0, 0000:b8:00.0, "
            "0000:ba:00.0, 0000:c8:00.0, 0000:ca:00.0");
  EXPECT_EQ(
      planError(kDgx1Snic, "[[pin]]\ngpu = 0\nnic = \"mlx5_42\"\n"),
      fmt::format("topo.toml:3:7: pin[0].nic: no NIC \"mlx5_42\"; the NICs are {}", kDgx1SnicNics));
  EXPECT_EQ(planError(kDgx1Snic, "[[pin]]\ngpu = 0\nnic = \"eno1\"\n"),
            "topo.toml:3:7: pin[0].nic: eno1 is excluded: 2 Gbit/s (PCIe link) is below "
            "min_speed_gbps = 25; name it in [nics] allow or [storage] nics to use it");
  EXPECT_EQ(planError(kDgx1Snic,
                      "[storage]\nnics = [\"mlx5_8\"]\n[[pin]]\ngpu = 0\nnic = "
                      "\"mlx5_8\"\n"),
            "topo.toml:5:7: pin[0].nic: mlx5_8 is a storage NIC ([storage] nics); a GPU's "
            "compute NIC cannot be one");
  EXPECT_EQ(planError(kDgx1Snic,
                      "[[pin]]\ngpu = 0\nnic = \"mlx5_0\"\n[[pin]]\ngpu = "
                      "\"18:00.0\"\nnic = \"mlx5_1\"\n"),
            "topo.toml:5:7: pin[1].gpu: GPU 0 is already pinned by pin[0].gpu (line 2)");
  // Every error at once, one per line.
  EXPECT_EQ(planError(kDgx1Snic, "[[pin]]\ngpu = 9\nnic = \"mlx5_42\"\n"),
            fmt::format("topo.toml:2:7: pin[0].gpu: no GPU 9; this machine has GPUs 0-7\n"
                        "topo.toml:3:7: pin[0].nic: no NIC \"mlx5_42\"; the NICs are {}",
                        kDgx1SnicNics));
}

// ---------------------------------------------------------------- config file

TEST(TopologyConfigFileTest, ReadsEveryKey) {
  TopologyConfig config = configFrom(R"([nics]
allow = ["mlx5_*"]
deny = ["mlx5_bond*"]
min_speed_gbps = 100.5
[storage]
nics = ["mlx5_8", "0000:aa:00.0"]
[[pin]]
gpu = 0
nic = "mlx5_3"
)");
  ASSERT_EQ(config.allow.size(), 1u);
  EXPECT_EQ(config.allow[0].pattern, "mlx5_*");
  EXPECT_EQ(config.where(config.allow[0].site), "topo.toml:2:10: nics.allow[0]");
  EXPECT_EQ(config.deny[0].pattern, "mlx5_bond*");
  EXPECT_EQ(config.min_speed_gbps, 100.5);
  ASSERT_EQ(config.storage_nics.size(), 2u);
  EXPECT_EQ(config.where(config.storage_nics[1].site), "topo.toml:6:19: storage.nics[1]");
  ASSERT_EQ(config.pins.size(), 1u);
  EXPECT_EQ(std::get<std::uint32_t>(config.pins[0].gpu), 0u);
  EXPECT_EQ(config.pins[0].nic, "mlx5_3");
  EXPECT_EQ(config.where(config.pins[0].nic_site), "topo.toml:9:7: pin[0].nic");
}

TEST(TopologyConfigFileTest, DefaultsWhenEmpty) {
  TopologyConfig config = configFrom("");
  EXPECT_EQ(config.min_speed_gbps, kDefaultMinSpeedGbps);
  EXPECT_THAT(config.allow, IsEmpty());
  EXPECT_THAT(config.storage_nics, IsEmpty());
}

TEST(TopologyConfigFileTest, UnknownKeysSuggestTheClosest) {
  EXPECT_EQ(configError("[nics]\nalow = [\"mlx5_*\"]\n"),
            "topo.toml:2:1: nics.alow: unknown key; did you mean \"allow\"?");
  EXPECT_EQ(configError("[storage]\nnic = [\"mlx5_8\"]\n"),
            "topo.toml:2:1: storage.nic: unknown key; did you mean \"nics\"?");
  EXPECT_EQ(configError("[[pin]]\ngpu = 0\nnic = \"mlx5_0\"\ngpus = 1\n"),
            "topo.toml:4:1: pin[0].gpus: unknown key; did you mean \"gpu\"?");
  EXPECT_EQ(configError("[nic]\n"), "topo.toml:1:2: nic: unknown key; did you mean \"nics\"?");
  EXPECT_EQ(configError("[qos]\n"),
            "topo.toml:1:2: qos: unknown key; expected \"nics\", \"storage\" or \"pin\"");
}

TEST(TopologyConfigFileTest, WrongTypesAndValues) {
  EXPECT_EQ(configError("[nics]\nmin_speed_gbps = \"fast\"\n"),
            "topo.toml:2:18: nics.min_speed_gbps: expected a speed in Gbit/s, e.g. 25, got a "
            "string");
  EXPECT_EQ(configError("[nics]\nmin_speed_gbps = -1\n"),
            "topo.toml:2:18: nics.min_speed_gbps: -1 is not a speed in Gbit/s (0 to 1000000)");
  EXPECT_EQ(configError("[nics]\nallow = \"mlx5_*\"\n"),
            "topo.toml:2:9: nics.allow: expected an array of NIC names, PCI bus ids or shell "
            "patterns, e.g. [\"mlx5_*\"], got a string");
  EXPECT_EQ(configError("[storage]\nnics = [\"\"]\n"),
            "topo.toml:2:9: storage.nics[0]: an empty pattern matches no NIC");
  EXPECT_EQ(configError("storage = 3\n"),
            "topo.toml:1:11: storage: expected a [storage] table, got an integer");
  EXPECT_EQ(configError("[pin]\ngpu = 0\n"),
            "topo.toml:1:1: pin: expected [[pin]] sections, each with gpu and nic, got a table");
  EXPECT_EQ(configError("[[pin]]\ngpu = -1\n"),
            "topo.toml:2:7: pin[0].gpu: -1 is not a GPU index\n"
            "topo.toml:1:1: pin[0]: missing \"nic\": a NIC name or PCI bus id");
  EXPECT_EQ(configError("[[pin]]\ngpu = true\nnic = 3\n"),
            "topo.toml:2:7: pin[0].gpu: expected a GPU index or PCI bus id, got a boolean\n"
            "topo.toml:3:7: pin[0].nic: expected a NIC name or PCI bus id, got an integer");
}

TEST(TopologyConfigFileTest, SyntaxAndEncodingErrors) {
  EXPECT_THAT(configError("[nics\n"), StartsWith("topo.toml:1:6: syntax error: "));
  // Non-ASCII in a comment is blanked; outside one it is an error.
  EXPECT_TRUE(parseTopologyConfig("# caf\xc3\xa9\n[nics]\nmin_speed_gbps = 10\n", "topo.toml"));
  EXPECT_EQ(configError("[storage]\nnics = [\"caf\xc3\xa9\"]\n"),
            "topo.toml:2:13: non-ASCII byte 0xC3: a topology file is ASCII outside comments");
}

TEST(TopologyConfigFileTest, MissingFile) {
  Result<TopologyConfig> config = loadTopologyConfig("/nonexistent/topo.toml");
  ASSERT_FALSE(config);
  EXPECT_EQ(config.status().code(), StatusCode::io);
  EXPECT_EQ(config.status().message(),
            "/nonexistent/topo.toml: cannot open: No such file or directory");
}

TEST(TopologyConfigFileTest, LoadsFromAFile) {
  std::string path = writeTemp("storage.toml", "[storage]\nnics = [\"mlx5_9\"]\n");
  Result<TopologyConfig> config = loadTopologyConfig(path);
  ASSERT_TRUE(config) << config.status().message();
  EXPECT_EQ(config->where(config->storage_nics[0].site), path + ":2:9: storage.nics[0]");
}

// ---------------------------------------------------------------- XML loading

TEST(TopologyXmlTest, MissingFileIsNamed) {
  Result<TopologyModel> model = loadTopologyXml("/nonexistent/server.xml");
  ASSERT_FALSE(model);
  EXPECT_EQ(model.status().code(), StatusCode::io);
  EXPECT_EQ(model.status().message(),
            "/nonexistent/server.xml: cannot open: No such file or directory");
}

TEST(TopologyXmlTest, InvalidXmlIsNamedWithHwlocsReason) {
  std::string path = writeTemp("garbage.xml", "<?xml version=\"1.0\"?>\n<not-a-topology/>\n");
  Result<TopologyModel> model = loadTopologyXml(path);
  ASSERT_FALSE(model);
  EXPECT_EQ(model.status().code(), StatusCode::invalid_argument);
  EXPECT_EQ(model.status().message(),
            path +
                ": hwloc cannot load it as a topology (XML format v1 or v2): Invalid argument "
                "(HWLOC_XML_VERBOSE=1 prints hwloc's parser messages)");
}

TEST(TopologyXmlTest, UnclosedCommentIsNamedWithItsLine) {
  std::string path = writeTemp("unclosed.xml", "<?xml version=\"1.0\"?>\n\n<!-- license\n");
  EXPECT_EQ(loadTopologyXml(path).status().message(),
            path + ":3: XML comment never closed (no \"-->\")");
}

TEST(TopologyXmlTest, CommentsAnywhereAreRemoved) {
  std::ifstream in(kDgx1Snic);
  std::string xml((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::size_t header_end = xml.find('\n') + 1;
  xml.insert(header_end, "<!-- one -->\n<!--\n  two\n-->\n");
  const std::size_t first_object = xml.find("<object type=\"Package\"");
  xml.insert(first_object, "<!-- inside the tree --> ");
  TopologyReport report = plan(writeTemp("commented.xml", xml));
  EXPECT_EQ(report.gpus.size(), 8u);
  EXPECT_THAT(snicNames(report), ElementsAre("mlx5_8"));
}

// ---------------------------------------------------------------- the live machine

std::size_t gpusIn(const TopologyModel& model) {
  return static_cast<std::size_t>(
      std::count_if(model.nodes().begin(), model.nodes().end(),
                    [](const TopologyNode& node) { return isGpu(node); }));
}

TEST(LiveTopologyTest, LoadsAndPlansWithOrWithoutGpu) {
  Result<TopologyModel> model = loadLiveTopology();
  ASSERT_TRUE(model) << model.status().message();
  EXPECT_EQ(model->source(), kLiveSource);
  Result<TopologyReport> report = planTopology(*model, {});
  ASSERT_TRUE(report) << report.status().message();
  EXPECT_EQ(report->gpus.size(), gpusIn(*model));
  EXPECT_FALSE(report->numa_nodes.empty());
  if (report->gpus.empty()) {  // our development machines and CI
    EXPECT_THAT(renderTopologyText(*report), HasSubstr("\nNo GPU found"));
    EXPECT_THAT(report->warnings, IsEmpty());
  }
}

// A fake sysfs tree gives every live NIC a known rate.
TEST(LiveTopologyTest, ReadsNicRatesFromSysfs) {
  Result<TopologyModel> real = loadLiveTopology();
  ASSERT_TRUE(real) << real.status().message();
  const std::filesystem::path sysfs = ::testing::TempDir() + "/fake-sysfs";
  std::filesystem::remove_all(sysfs);
  std::size_t devices = 0;
  for (const TopologyNode& node : real->nodes()) {
    for (const OsDevice& device : node.os_devices) {
      std::filesystem::path file;
      std::string rate;
      if (device.kind == OsDeviceKind::network) {
        file = sysfs / "class/net" / device.name / "speed";
        rate = "10000";  // Mb/s
      } else if (device.kind == OsDeviceKind::openfabrics) {
        file = sysfs / "class/infiniband" / device.name / "ports/1/rate";
        rate = "10 Gb/sec (4X SDR)";
      } else {
        continue;
      }
      std::filesystem::create_directories(file.parent_path());
      std::ofstream(file) << rate << '\n';
      ++devices;
    }
  }
  if (devices == 0) GTEST_SKIP() << "this machine has no NIC on a PCI function";
  Result<TopologyModel> faked = loadLiveTopology({.sysfs_root = sysfs.string()});
  ASSERT_TRUE(faked) << faked.status().message();
  for (const TopologyNode& node : faked->nodes()) {
    for (const OsDevice& device : node.os_devices) {
      if (device.kind == OsDeviceKind::network || device.kind == OsDeviceKind::openfabrics) {
        EXPECT_EQ(device.sysfs_rate_gbps, 10) << device.name;
      }
    }
  }
  Result<TopologyReport> report = planTopology(*faked, {});
  ASSERT_TRUE(report);
  for (const NicReport& nic : report->nics) EXPECT_LE(nic.speed_gbps, 10) << nic.name;
}

}  // namespace
}  // namespace dualpath::scheduler::topo
