#include <dualpath/scheduler/cluster.h>

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace dualpath::scheduler {

std::string_view engineRoleName(EngineRole role) noexcept {
  return role == EngineRole::prefill ? "prefill" : "decode";
}

ClusterSpec ClusterSpec::uniform(std::uint32_t prefill_nodes, std::uint32_t decode_nodes,
                                 const HardwareSpec& hardware) {
  ClusterSpec spec;
  spec.nodes.reserve(prefill_nodes + decode_nodes);
  for (std::uint32_t i = 0; i < prefill_nodes + decode_nodes; ++i) {
    spec.nodes.push_back(NodeSpec{
        .role = i < prefill_nodes ? EngineRole::prefill : EngineRole::decode,
        .engines = hardware.gpus_per_node,
        .snic_bytes_per_s = hardware.snic_bytes_per_s,
        .cnic_bytes_per_s = hardware.cnic_bytes_per_s,
        .kv_hbm_bytes_per_engine = hardware.kv_hbm_bytes_per_gpu,
    });
  }
  return spec;
}

Status ClusterSpec::validate() const {
  bool has_prefill = false;
  bool has_decode = false;
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const NodeSpec& node = nodes[i];
    auto invalid = [&](std::string_view problem) {
      return Status(StatusCode::invalid_argument, fmt::format("cluster node {}: {}", i, problem));
    };
    if (node.engines == 0) return invalid("has no engines");
    if (!(node.snic_bytes_per_s > 0) || !std::isfinite(node.snic_bytes_per_s)) {
      return invalid("snic_bytes_per_s must be positive");
    }
    if (!(node.cnic_bytes_per_s > 0) || !std::isfinite(node.cnic_bytes_per_s)) {
      return invalid("cnic_bytes_per_s must be positive");
    }
    if (node.role == EngineRole::decode && node.kv_hbm_bytes_per_engine == 0) {
      return invalid("a decode node needs kv_hbm_bytes_per_engine");
    }
    (node.role == EngineRole::prefill ? has_prefill : has_decode) = true;
  }
  if (!has_prefill || !has_decode) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("cluster: needs at least one prefill and one decode node (has {} "
                              "prefill, {} decode)",
                              has_prefill ? "some" : "no", has_decode ? "some" : "no"));
  }
  return Status::ok();
}

double NodeState::snicFreeBytesPerS() const noexcept {
  return std::max(0.0, spec.snic_bytes_per_s - snic_load_bytes_per_s);
}

ClusterState::ClusterState(const ClusterSpec& spec) {
  nodes_.reserve(spec.nodes.size());
  for (NodeIndex n = 0; n < spec.nodes.size(); ++n) {
    const NodeSpec& node_spec = spec.nodes[n];
    nodes_.push_back(NodeState{.spec = node_spec,
                               .first_engine = static_cast<EngineIndex>(engines_.size())});
    if (node_spec.role == EngineRole::decode) decode_nodes_.push_back(n);
    for (std::uint32_t e = 0; e < node_spec.engines; ++e) {
      if (node_spec.role == EngineRole::prefill) {
        prefill_engines_.push_back(static_cast<EngineIndex>(engines_.size()));
      }
      engines_.push_back(EngineState{
          .role = node_spec.role,
          .node = n,
          .load = EngineLoad{.free_kv_bytes = node_spec.kv_hbm_bytes_per_engine}});
    }
  }
}

Status ClusterState::apply(const GroupReport& report) {
  if (report.node >= nodes_.size()) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("report from node {}: the cluster has nodes 0 to {}", report.node,
                              nodes_.size() - 1));
  }
  NodeState& node = nodes_[report.node];
  if (report.engines.size() != node.spec.engines) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("report from node {}: {} engine loads for {} engines", report.node,
                              report.engines.size(), node.spec.engines));
  }
  node.read_queue_tokens = report.read_queue_tokens;
  node.snic_load_bytes_per_s = report.snic_load_bytes_per_s;
  node.group_tokens = 0;
  for (std::uint32_t e = 0; e < node.spec.engines; ++e) {
    engines_[node.first_engine + e].load = report.engines[e];
    node.group_tokens += report.engines[e].unfinished_tokens;
  }
  return Status::ok();
}

double ClusterState::cnicFreeBytesPerS(EngineIndex index) const noexcept {
  const EngineState& engine = engines_[index];
  return std::max(0.0, nodes_[engine.node].spec.cnic_bytes_per_s - engine.load.cnic_load_bytes_per_s);
}

void ClusterState::addWork(EngineIndex engine, std::uint64_t tokens,
                           std::uint64_t kv_bytes) noexcept {
  EngineLoad& load = engines_[engine].load;
  load.unfinished_requests += 1;
  load.unfinished_tokens += tokens;
  load.free_kv_bytes -= std::min(load.free_kv_bytes, kv_bytes);
  nodes_[engines_[engine].node].group_tokens += tokens;
}

void ClusterState::removeWork(EngineIndex engine, std::uint64_t tokens,
                              std::uint64_t kv_bytes) noexcept {
  EngineLoad& load = engines_[engine].load;
  load.unfinished_requests -= std::min<std::uint32_t>(load.unfinished_requests, 1);
  load.unfinished_tokens -= std::min(load.unfinished_tokens, tokens);
  load.free_kv_bytes += kv_bytes;
  NodeState& node = nodes_[engines_[engine].node];
  node.group_tokens -= std::min(node.group_tokens, tokens);
}

void ClusterState::addReads(NodeIndex node, std::uint64_t tokens) noexcept {
  nodes_[node].read_queue_tokens += tokens;
}

}  // namespace dualpath::scheduler
