// Read-path policies: for a request already placed on a prefill engine (PE)
// and a decode engine (DE), which node reads its cached KV blocks from storage.
//
//   PE path: storage -> PE node's host buffer -> PE HBM.
//   DE path: storage -> DE node's host buffer -> RDMA over both engines'
//            compute NICs (kv class) -> PE HBM.
//
// A policy returns a ReadPlan: how many of the request's cached blocks go
// each way. Blocks [0, de_path_blocks) take the DE path, the rest the PE path.
// Policies are pure functions of the cluster view, so the live scheduler and
// the simulator compare them on equal terms. To add one, derive from
// PathPolicy and register it in makePathPolicy (docs/scheduler.md).
//
// Threading: a policy is immutable after construction; choose() is const.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include <dualpath/common/status.h>
#include <dualpath/scheduler/cluster.h>

namespace dualpath::scheduler {

struct ReadPlan {
  std::uint32_t de_path_blocks = 0;
  std::uint32_t pe_path_blocks = 0;

  std::uint32_t blocks() const noexcept { return de_path_blocks + pe_path_blocks; }
  bool operator==(const ReadPlan&) const = default;
};

struct PathChoice {
  const ClusterState& cluster;
  EngineIndex prefill_engine;
  EngineIndex decode_engine;
  std::uint32_t cached_blocks;

  const NodeState& prefillNode() const noexcept { return cluster.nodeOf(prefill_engine); }
  const NodeState& decodeNode() const noexcept { return cluster.nodeOf(decode_engine); }
  // Bandwidth the PE path has left: the PE node's storage NICs.
  double prefillPathFreeBytesPerS() const noexcept;
  // Bandwidth the DE path has left: the narrowest of the DE node's storage
  // NICs, the DE's compute NIC and the PE's compute NIC.
  double decodePathFreeBytesPerS() const noexcept;
};

class PathPolicy {
 public:
  virtual ~PathPolicy() = default;
  virtual std::string_view name() const noexcept = 0;
  virtual ReadPlan choose(const PathChoice& choice) const noexcept = 0;
};

// The paper's rule: all blocks from the side whose node has the shorter read
// queue; a tie reads on the PE node, which saves the relay.
class ShorterReadQueuePolicy final : public PathPolicy {
 public:
  std::string_view name() const noexcept override { return "shorter-queue"; }
  ReadPlan choose(const PathChoice& choice) const noexcept override;
};

// The baseline without DualPath: the PE always reads.
class PrefillPathOnlyPolicy final : public PathPolicy {
 public:
  std::string_view name() const noexcept override { return "pe-only"; }
  ReadPlan choose(const PathChoice& choice) const noexcept override;
};

// Every read relayed through the DE; for experiments.
class DecodePathOnlyPolicy final : public PathPolicy {
 public:
  std::string_view name() const noexcept override { return "de-only"; }
  ReadPlan choose(const PathChoice& choice) const noexcept override;
};

// Splits a request's blocks across both paths in proportion to their free
// bandwidth (the paper leaves this as future work), rounding to the nearest
// block. When neither path has free bandwidth it falls back to the shorter
// read queue.
class BandwidthSplitPolicy final : public PathPolicy {
 public:
  std::string_view name() const noexcept override { return "split"; }
  ReadPlan choose(const PathChoice& choice) const noexcept override;
};

// "shorter-queue", "pe-only", "de-only" or "split"; the error lists them.
Result<std::unique_ptr<PathPolicy>> makePathPolicy(std::string_view name);
std::span<const std::string_view> pathPolicyNames() noexcept;

}  // namespace dualpath::scheduler
