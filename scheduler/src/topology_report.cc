// TopologyReport -> text tables for people, JSON for tools. Both show the
// same facts; the JSON schema is documented in docs/topology.md.
#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <dualpath/common/text.h>
#include <dualpath/scheduler/topology.h>

namespace dualpath::scheduler::topo {
namespace {

std::string numaText(int numa_node) {
  return numa_node == kUnknownNuma ? std::string("-") : std::to_string(numa_node);
}

std::string pciIdText(std::uint16_t vendor_id, std::uint16_t device_id) {
  return fmt::format("{:04x}:{:04x}", vendor_id, device_id);
}

// One decimal at most: PCIe links give 126.03 Gbit/s for 15.75 GB/s.
double roundedGbps(double gbps) {
  return std::round(gbps * 10) / 10;
}

std::string speedText(const NicReport& nic) {
  if (nic.speed_gbps <= 0) return "unknown";
  return fmt::format("{:g} Gbit/s", roundedGbps(nic.speed_gbps));
}

std::string plural(std::size_t count, std::string_view singular, std::string_view plural_form) {
  return fmt::format("{} {}", count, count == 1 ? singular : plural_form);
}

std::string summaryLine(const TopologyReport& report) {
  return fmt::format(
      "{}, {}, {}, {}, {}, {}\n", plural(report.packages.size(), "package", "packages"),
      plural(report.numa_nodes.size(), "NUMA node", "NUMA nodes"),
      plural(report.pcie_switches, "PCIe switch", "PCIe switches"),
      plural(report.gpus.size(), "GPU", "GPUs"), plural(report.nics.size(), "NIC", "NICs"),
      plural(report.nvme.size(), "NVMe", "NVMe"));
}

std::string gpuTable(const TopologyReport& report) {
  if (report.gpus.empty()) {
    return "No GPU found (no NVIDIA PCI display or 3D controller): no compute NIC to assign.\n";
  }
  TextTable table({"GPU", "PCI", "device", "NUMA", "CNIC", "CNIC PCI", "path", "chosen"});
  for (const GpuReport& gpu : report.gpus) {
    table.addRow({std::to_string(gpu.index), gpu.bus_id, pciIdText(gpu.vendor_id, gpu.device_id),
                  numaText(gpu.numa_node), gpu.cnic.empty() ? "-" : gpu.cnic,
                  gpu.cnic.empty() ? "-" : gpu.cnic_bus_id,
                  gpu.cnic_distance ? std::string(distanceClassName(*gpu.cnic_distance)) : "-",
                  gpu.pinned ? "pinned" : "auto"});
  }
  return table.render();
}

std::string storageLine(const TopologyReport& report) {
  std::vector<std::string> entries;
  for (const NicReport* nic : report.storageNics()) {
    entries.push_back(
        fmt::format("{} ({}, NUMA {})", nic->name, nic->bus_id, numaText(nic->numa_node)));
  }
  return fmt::format("Storage NICs: {}\n",
                     entries.empty() ? "none" : fmt::format("{}", fmt::join(entries, ", ")));
}

std::string nicTable(const TopologyReport& report) {
  if (report.nics.empty()) return "No NIC found.\n";
  TextTable table(
      {"NIC", "netdev", "PCI", "kind", "speed", "NUMA", "nearest GPU", "role", "reason"});
  for (const NicReport& nic : report.nics) {
    table.addRow({nic.name, nic.netdev.empty() ? "-" : nic.netdev, nic.bus_id,
                  std::string(nicKindName(nic.kind)), speedText(nic), numaText(nic.numa_node),
                  nic.nearest_gpu ? std::string(distanceClassName(*nic.nearest_gpu)) : "-",
                  std::string(nicRoleName(nic.role)), nic.reason});
  }
  return table.render();
}

std::string nvmeTable(const TopologyReport& report) {
  if (report.nvme.empty()) return "No NVMe found.\n";
  TextTable table({"NVMe", "PCI", "NUMA"});
  for (const NvmeReport& nvme : report.nvme) {
    table.addRow({nvme.name.empty() ? "-" : nvme.name, nvme.bus_id, numaText(nvme.numa_node)});
  }
  return table.render();
}

std::string warningLines(const TopologyReport& report) {
  std::string out;
  for (const std::string& warning : report.warnings) out += "warning: " + warning + '\n';
  return out;
}

nlohmann::ordered_json numaJson(int numa_node) {
  return numa_node == kUnknownNuma ? nlohmann::ordered_json(nullptr)
                                   : nlohmann::ordered_json(numa_node);
}

nlohmann::ordered_json gpuJson(const GpuReport& gpu) {
  nlohmann::ordered_json cnic = nullptr;
  if (!gpu.cnic.empty()) cnic = {{"name", gpu.cnic}, {"bus_id", gpu.cnic_bus_id}};
  return {
      {"index", gpu.index},
      {"bus_id", gpu.bus_id},
      {"pci_id", pciIdText(gpu.vendor_id, gpu.device_id)},
      {"numa", numaJson(gpu.numa_node)},
      {"cnic", cnic},
      {"distance", gpu.cnic_distance ? nlohmann::ordered_json(distanceClassName(*gpu.cnic_distance))
                                     : nlohmann::ordered_json(nullptr)},
      {"pinned", gpu.pinned}};
}

nlohmann::ordered_json nicJson(const NicReport& nic) {
  return {
      {"name", nic.name},
      {"netdev",
       nic.netdev.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(nic.netdev)},
      {"bus_id", nic.bus_id},
      {"pci_id", pciIdText(nic.vendor_id, nic.device_id)},
      {"kind", nicKindName(nic.kind)},
      {"speed_gbps", nic.speed_gbps > 0 ? nlohmann::ordered_json(roundedGbps(nic.speed_gbps))
                                        : nlohmann::ordered_json(nullptr)},
      {"speed_source", speedSourceName(nic.speed_source)},
      {"numa", numaJson(nic.numa_node)},
      {"nearest_gpu", nic.nearest_gpu ? nlohmann::ordered_json(distanceClassName(*nic.nearest_gpu))
                                      : nlohmann::ordered_json(nullptr)},
      {"role", nicRoleName(nic.role)},
      {"reason", nic.reason}};
}

}  // namespace

std::string renderTopologyText(const TopologyReport& report) {
  std::string out =
      fmt::format("Topology of {}: ",
                  report.source == kLiveSource ? "this machine (live)" : report.source) +
      summaryLine(report);
  out += '\n' + gpuTable(report);
  out += '\n' + storageLine(report);
  out += '\n' + nicTable(report);
  out += '\n' + nvmeTable(report);
  if (!report.warnings.empty()) out += '\n' + warningLines(report);
  return out;
}

std::string renderTopologyJson(const TopologyReport& report) {
  nlohmann::ordered_json json = {{"source", report.source},
                                 {"packages", report.packages},
                                 {"numa_nodes", report.numa_nodes},
                                 {"pcie_switches", report.pcie_switches},
                                 {"gpus", nlohmann::ordered_json::array()},
                                 {"snics", nlohmann::ordered_json::array()},
                                 {"nics", nlohmann::ordered_json::array()},
                                 {"nvme", nlohmann::ordered_json::array()},
                                 {"warnings", report.warnings}};
  for (const GpuReport& gpu : report.gpus) json["gpus"].push_back(gpuJson(gpu));
  for (const NicReport* nic : report.storageNics()) {
    json["snics"].push_back(
        {{"name", nic->name}, {"bus_id", nic->bus_id}, {"numa", numaJson(nic->numa_node)}});
  }
  for (const NicReport& nic : report.nics) json["nics"].push_back(nicJson(nic));
  for (const NvmeReport& nvme : report.nvme) {
    json["nvme"].push_back({{"name", nvme.name.empty() ? nlohmann::ordered_json(nullptr)
                                                       : nlohmann::ordered_json(nvme.name)},
                            {"bus_id", nvme.bus_id},
                            {"numa", numaJson(nvme.numa_node)}});
  }
  // Replacing invalid UTF-8 (a name from a hand-edited XML file) keeps dump() from throwing.
  return json.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + '\n';
}

}  // namespace dualpath::scheduler::topo
