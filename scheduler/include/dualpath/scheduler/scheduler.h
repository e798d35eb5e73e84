// The global DualPath scheduler: assigns each request to a prefill engine
// (PE) and a decode engine (DE) and picks its read path (paper §6, App. A.4).
//
// Requests wait in one FIFO queue. A round takes up to max_round_requests
// from its head and decides them one at a time, each seeing the ones before:
//  1. PE (Algorithm 1): engines with more than β unfinished tokens are
//     skipped; engines whose node's read queue is at most α are preferred;
//     the one with the fewest unfinished tokens wins.
//  2. DE: the decode group (node) with the fewest tokens at the start of the
//     round takes the round.
//     Z = slack x (Σ round request lengths + Σ group tok_e) / |group|; among
//     the group's DEs with enough free KV memory, those with
//     tok_e + length <= Z are preferred and the fewest requests wins;
//     otherwise the fewest tokens wins. A request that fits no DE of that
//     group goes to the next group by total tokens.
//  3. Read path: the PathPolicy (the paper's: the shorter read queue).
// Ties go to the lowest index, so a run is a pure function of its inputs. A
// request that finds no PE under β, or no DE with enough memory, stops the
// round: it and everything behind it wait for the next round (FIFO order is
// kept). Group reports overwrite the scheduler's own estimates.
//
// The core does no I/O and reads no clock: the live loader and the cluster
// simulator run the same decisions.
//
// Threading: none; one thread drives a Scheduler.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/scheduler/cluster.h>
#include <dualpath/scheduler/cost_model.h>
#include <dualpath/scheduler/path_policy.h>

namespace dualpath::scheduler {

struct Request {
  std::uint64_t id = 0;
  std::uint64_t tokens = 0;         // context length after this turn's new tokens
  std::uint64_t cached_tokens = 0;  // the prefix already in storage: whole blocks

  std::uint64_t newTokens() const noexcept { return tokens - cached_tokens; }
};

struct SchedulerConfig {
  double alpha_read_seconds = 3.0;    // α = tokens a node's SNICs read in this time
  double beta_prefill_seconds = 5.0;  // β = tokens one GPU prefills in this time
  std::optional<std::uint64_t> alpha_tokens;  // profiled values override the model
  std::optional<std::uint64_t> beta_tokens;
  double decode_balance_slack = 1.05;  // the factor in Z
  std::uint32_t max_round_requests = 32;
};

struct Assignment {
  std::uint64_t request_id = 0;
  EngineIndex prefill_engine = 0;
  EngineIndex decode_engine = 0;
  ReadPlan read;

  bool operator==(const Assignment&) const = default;
};

enum class RoundStop : std::uint8_t {
  queue_empty,           // every queued request was assigned
  round_full,            // max_round_requests assigned; more are queued
  prefill_engines_busy,  // every PE is above β
  decode_memory_full,    // no DE has KV memory for the head request
};
std::string_view roundStopName(RoundStop stop) noexcept;

struct RoundResult {
  std::uint32_t assigned = 0;
  RoundStop stop = RoundStop::queue_empty;
};

class Scheduler {
 public:
  static Result<Scheduler> create(const ClusterSpec& cluster, CostModel cost,
                                  std::unique_ptr<PathPolicy> policy,
                                  const SchedulerConfig& config = {});

  // Queues a request. The error names the request and the field: no tokens,
  // cached tokens not whole blocks or not fewer than its tokens, or more KV
  // than any decode engine holds.
  Status submit(const Request& request);
  Status apply(const GroupReport& report) { return cluster_.apply(report); }

  // Assigns requests from the head of the queue; appends them to `out`.
  RoundResult scheduleRound(std::vector<Assignment>& out);

  std::size_t queued() const noexcept { return queue_.size(); }
  const ClusterState& cluster() const noexcept { return cluster_; }
  const CostModel& cost() const noexcept { return cost_; }
  const PathPolicy& policy() const noexcept { return *policy_; }
  std::uint64_t alphaTokens() const noexcept { return alpha_tokens_; }
  std::uint64_t betaTokens() const noexcept { return beta_tokens_; }

  // The single decisions, exposed for tests and for other drivers.
  std::optional<EngineIndex> choosePrefillEngine() const noexcept;
  // The DE for `request` inside `group`, given its Z; none when no DE there
  // has enough free KV memory.
  std::optional<EngineIndex> chooseDecodeEngine(NodeIndex group, const Request& request,
                                                double z) const noexcept;
  // Decode nodes by total tokens, fewest first (ties: lower index).
  std::vector<NodeIndex> decodeGroupsByLoad() const;

 private:
  Scheduler(const ClusterSpec& cluster, CostModel cost, std::unique_ptr<PathPolicy> policy,
            const SchedulerConfig& config);

  std::optional<EngineIndex> placeOnDecode(const Request& request, NodeIndex first_group,
                                           double first_z, std::vector<NodeIndex>& groups);
  double decodeBalanceTarget(NodeIndex group, std::uint64_t round_tokens) const noexcept;

  ClusterState cluster_;
  CostModel cost_;
  std::unique_ptr<PathPolicy> policy_;
  SchedulerConfig config_;
  std::uint64_t alpha_tokens_ = 0;
  std::uint64_t beta_tokens_ = 0;
  std::uint64_t max_kv_bytes_per_engine_ = 0;
  std::deque<Request> queue_;
};

}  // namespace dualpath::scheduler
