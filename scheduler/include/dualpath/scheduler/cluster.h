// The scheduler's view of a PD-disaggregated cluster: nodes of prefill (PE) or
// decode (DE) engines, one engine per GPU, and the loads they report.
//
// All engines of a node form one group; the group's leader reports for all of
// them (GroupReport): per engine the unfinished requests (seq_e), their tokens
// (tok_e), free KV memory and compute-NIC load; per node the storage read
// queue and the storage-NIC load. Between two reports the scheduler adds its
// own assignments to this view, so back-to-back decisions see each other; the
// next report replaces those estimates with what the engines measured.
//
// Units: tokens for tok_e and the read queue (KV tokens waiting to be read
// from storage on that node), bytes for memory, bytes per second for links.
// For a PE, tok_e counts the tokens it still has to prefill; for a DE, the
// context tokens of the requests it decodes (their KV occupies its HBM).
//
// Threading: none; a ClusterState belongs to one scheduler thread.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/scheduler/cost_model.h>

namespace dualpath::scheduler {

using EngineIndex = std::uint32_t;
using NodeIndex = std::uint32_t;

enum class EngineRole : std::uint8_t { prefill, decode };
std::string_view engineRoleName(EngineRole role) noexcept;

struct NodeSpec {
  EngineRole role = EngineRole::prefill;
  std::uint32_t engines = 0;      // one per GPU
  double snic_bytes_per_s = 0;    // the node's storage NICs together
  double cnic_bytes_per_s = 0;    // each engine's compute NIC
  std::uint64_t kv_hbm_bytes_per_engine = 0;
};

struct ClusterSpec {
  std::vector<NodeSpec> nodes;  // PE and DE nodes in any order; NodeIndex = position

  // `prefill_nodes` PE nodes, then `decode_nodes` DE nodes, all shaped by `hardware`.
  static ClusterSpec uniform(std::uint32_t prefill_nodes, std::uint32_t decode_nodes,
                             const HardwareSpec& hardware);
  // At least one PE node and one DE node; every node has engines and links.
  Status validate() const;
};

struct EngineLoad {
  std::uint32_t unfinished_requests = 0;  // seq_e
  std::uint64_t unfinished_tokens = 0;    // tok_e
  std::uint64_t free_kv_bytes = 0;        // HBM free for KV-cache
  double cnic_load_bytes_per_s = 0;
};

struct GroupReport {
  NodeIndex node = 0;
  std::uint64_t read_queue_tokens = 0;
  double snic_load_bytes_per_s = 0;
  std::vector<EngineLoad> engines;  // one per engine of the node, in order
};

struct EngineState {
  EngineRole role = EngineRole::prefill;
  NodeIndex node = 0;
  EngineLoad load;
};

struct NodeState {
  NodeSpec spec;
  EngineIndex first_engine = 0;
  std::uint64_t read_queue_tokens = 0;
  double snic_load_bytes_per_s = 0;
  std::uint64_t group_tokens = 0;  // Σ tok_e over the node's engines

  double snicFreeBytesPerS() const noexcept;
};

class ClusterState {
 public:
  // Precondition: spec.validate() is ok. Every engine starts idle with all of
  // its KV memory free.
  explicit ClusterState(const ClusterSpec& spec);

  // Replaces the node's view with the report. The error names the node and
  // what does not match the cluster's shape.
  Status apply(const GroupReport& report);

  std::span<const EngineState> engines() const noexcept { return engines_; }
  std::span<const NodeState> nodes() const noexcept { return nodes_; }
  std::span<const EngineIndex> prefillEngines() const noexcept { return prefill_engines_; }
  std::span<const NodeIndex> decodeNodes() const noexcept { return decode_nodes_; }
  const EngineState& engine(EngineIndex index) const noexcept { return engines_[index]; }
  const NodeState& node(NodeIndex index) const noexcept { return nodes_[index]; }
  const NodeState& nodeOf(EngineIndex index) const noexcept { return nodes_[engines_[index].node]; }
  double cnicFreeBytesPerS(EngineIndex index) const noexcept;

  // The scheduler's own estimates between reports.
  void addWork(EngineIndex engine, std::uint64_t tokens, std::uint64_t kv_bytes) noexcept;
  void removeWork(EngineIndex engine, std::uint64_t tokens, std::uint64_t kv_bytes) noexcept;
  void addReads(NodeIndex node, std::uint64_t tokens) noexcept;

 private:
  std::vector<EngineState> engines_;
  std::vector<NodeState> nodes_;
  std::vector<EngineIndex> prefill_engines_;
  std::vector<NodeIndex> decode_nodes_;
};

}  // namespace dualpath::scheduler
