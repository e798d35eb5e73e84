#include <dualpath/scheduler/scheduler.h>

#include <algorithm>

#include <fmt/format.h>

#include <dualpath/common/units.h>

namespace dualpath::scheduler {

std::string_view roundStopName(RoundStop stop) noexcept {
  switch (stop) {
    case RoundStop::queue_empty: return "queue_empty";
    case RoundStop::round_full: return "round_full";
    case RoundStop::prefill_engines_busy: return "prefill_engines_busy";
    case RoundStop::decode_memory_full: return "decode_memory_full";
  }
  return "unknown";
}

Result<Scheduler> Scheduler::create(const ClusterSpec& cluster, CostModel cost,
                                    std::unique_ptr<PathPolicy> policy,
                                    const SchedulerConfig& config) {
  DP_TRY(cluster.validate());
  if (!policy) return Status(StatusCode::invalid_argument, "scheduler: no read-path policy");
  if (!(config.decode_balance_slack >= 1.0)) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("scheduler: decode_balance_slack {} must be at least 1",
                              config.decode_balance_slack));
  }
  if (config.max_round_requests == 0) {
    return Status(StatusCode::invalid_argument, "scheduler: max_round_requests must be positive");
  }
  if (!(config.alpha_read_seconds > 0) || !(config.beta_prefill_seconds > 0)) {
    return Status(StatusCode::invalid_argument,
                  "scheduler: alpha_read_seconds and beta_prefill_seconds must be positive");
  }
  return Scheduler(cluster, std::move(cost), std::move(policy), config);
}

Scheduler::Scheduler(const ClusterSpec& cluster, CostModel cost,
                     std::unique_ptr<PathPolicy> policy, const SchedulerConfig& config)
    : cluster_(cluster), cost_(std::move(cost)), policy_(std::move(policy)), config_(config) {
  alpha_tokens_ = config.alpha_tokens.value_or(cost_.tokensReadableIn(config.alpha_read_seconds));
  beta_tokens_ = config.beta_tokens.value_or(cost_.tokensPrefilledIn(config.beta_prefill_seconds));
  for (const NodeSpec& node : cluster.nodes) {
    if (node.role == EngineRole::decode) {
      max_kv_bytes_per_engine_ = std::max(max_kv_bytes_per_engine_, node.kv_hbm_bytes_per_engine);
    }
  }
}

Status Scheduler::submit(const Request& request) {
  auto invalid = [&](const std::string& problem) {
    return Status(StatusCode::invalid_argument, fmt::format("request {}: {}", request.id, problem));
  };
  const std::uint32_t block = cost_.model().block_tokens;
  if (request.tokens == 0) return invalid("tokens must be positive");
  if (request.cached_tokens % block != 0) {
    return invalid(fmt::format("cached_tokens {} is not a whole number of {}-token blocks",
                               request.cached_tokens, block));
  }
  if (request.cached_tokens >= request.tokens) {
    return invalid(fmt::format("cached_tokens {} must be fewer than tokens {}: at least one token "
                               "is prefilled",
                               request.cached_tokens, request.tokens));
  }
  const std::uint64_t kv_bytes = cost_.kvBytes(request.tokens);
  if (kv_bytes > max_kv_bytes_per_engine_) {
    return invalid(fmt::format("its KV-cache ({}) exceeds the KV memory of every decode engine ({})",
                               formatBytes(kv_bytes), formatBytes(max_kv_bytes_per_engine_)));
  }
  queue_.push_back(request);
  return Status::ok();
}

std::optional<EngineIndex> Scheduler::choosePrefillEngine() const noexcept {
  // Lexicographic (not preferred, tok_e, index): the preferred engines win,
  // then the fewest unfinished tokens, then the lower index.
  std::optional<EngineIndex> best;
  bool best_preferred = false;
  std::uint64_t best_tokens = 0;
  for (EngineIndex e : cluster_.prefillEngines()) {
    const std::uint64_t tokens = cluster_.engine(e).load.unfinished_tokens;
    if (tokens > beta_tokens_) continue;
    const bool preferred = cluster_.nodeOf(e).read_queue_tokens <= alpha_tokens_;
    if (!best || (preferred && !best_preferred) ||
        (preferred == best_preferred && tokens < best_tokens)) {
      best = e;
      best_preferred = preferred;
      best_tokens = tokens;
    }
  }
  return best;
}

std::optional<EngineIndex> Scheduler::chooseDecodeEngine(NodeIndex group, const Request& request,
                                                         double z) const noexcept {
  const NodeState& node = cluster_.node(group);
  const std::uint64_t kv_bytes = cost_.kvBytes(request.tokens);
  std::optional<EngineIndex> balanced;  // tok_e + length <= Z: fewest requests
  std::optional<EngineIndex> lightest;  // otherwise: fewest tokens
  for (EngineIndex e = node.first_engine; e < node.first_engine + node.spec.engines; ++e) {
    const EngineLoad& load = cluster_.engine(e).load;
    if (load.free_kv_bytes < kv_bytes) continue;
    if (static_cast<double>(load.unfinished_tokens + request.tokens) <= z) {
      const EngineLoad* current = balanced ? &cluster_.engine(*balanced).load : nullptr;
      if (!current || load.unfinished_requests < current->unfinished_requests ||
          (load.unfinished_requests == current->unfinished_requests &&
           load.unfinished_tokens < current->unfinished_tokens)) {
        balanced = e;
      }
    }
    if (!lightest || load.unfinished_tokens < cluster_.engine(*lightest).load.unfinished_tokens) {
      lightest = e;
    }
  }
  return balanced ? balanced : lightest;
}

std::vector<NodeIndex> Scheduler::decodeGroupsByLoad() const {
  std::vector<NodeIndex> groups(cluster_.decodeNodes().begin(), cluster_.decodeNodes().end());
  std::stable_sort(groups.begin(), groups.end(), [&](NodeIndex a, NodeIndex b) {
    return cluster_.node(a).group_tokens < cluster_.node(b).group_tokens;
  });
  return groups;
}

double Scheduler::decodeBalanceTarget(NodeIndex group, std::uint64_t round_tokens) const noexcept {
  const NodeState& node = cluster_.node(group);
  return config_.decode_balance_slack * static_cast<double>(round_tokens + node.group_tokens) /
         static_cast<double>(node.spec.engines);
}

std::optional<EngineIndex> Scheduler::placeOnDecode(const Request& request, NodeIndex first_group,
                                                    double first_z,
                                                    std::vector<NodeIndex>& groups) {
  if (auto engine = chooseDecodeEngine(first_group, request, first_z)) return engine;
  // The round's group is out of KV memory for this request: the next groups
  // by load, each balanced for this request alone.
  if (groups.empty()) groups = decodeGroupsByLoad();
  for (NodeIndex group : groups) {
    if (group == first_group) continue;
    if (auto engine = chooseDecodeEngine(group, request, decodeBalanceTarget(group, request.tokens))) {
      return engine;
    }
  }
  return std::nullopt;
}

RoundResult Scheduler::scheduleRound(std::vector<Assignment>& out) {
  RoundResult result;
  const std::size_t limit = std::min<std::size_t>(queue_.size(), config_.max_round_requests);
  result.stop = limit < queue_.size() ? RoundStop::round_full : RoundStop::queue_empty;
  if (limit == 0) return result;

  // One decode group takes the round: the one with the fewest tokens.
  std::uint64_t round_tokens = 0;
  for (std::size_t i = 0; i < limit; ++i) round_tokens += queue_[i].tokens;
  NodeIndex group = cluster_.decodeNodes().front();
  for (NodeIndex candidate : cluster_.decodeNodes()) {
    if (cluster_.node(candidate).group_tokens < cluster_.node(group).group_tokens) group = candidate;
  }
  const double z = decodeBalanceTarget(group, round_tokens);
  std::vector<NodeIndex> fallback_groups;  // sorted only if a request needs them

  // Each request in turn, so every decision sees the ones before it.
  const std::uint32_t block = cost_.model().block_tokens;
  for (std::size_t i = 0; i < limit; ++i) {
    const Request& request = queue_[i];
    const std::optional<EngineIndex> prefill = choosePrefillEngine();
    if (!prefill) {
      result.stop = RoundStop::prefill_engines_busy;
      break;
    }
    cluster_.addWork(*prefill, request.newTokens(), 0);
    const std::optional<EngineIndex> decode = placeOnDecode(request, group, z, fallback_groups);
    if (!decode) {
      cluster_.removeWork(*prefill, request.newTokens(), 0);
      result.stop = RoundStop::decode_memory_full;
      break;
    }
    cluster_.addWork(*decode, request.tokens, cost_.kvBytes(request.tokens));
    const auto cached_blocks = static_cast<std::uint32_t>(request.cached_tokens / block);
    const ReadPlan plan = policy_->choose(PathChoice{.cluster = cluster_,
                                                     .prefill_engine = *prefill,
                                                     .decode_engine = *decode,
                                                     .cached_blocks = cached_blocks});
    cluster_.addReads(cluster_.engine(*prefill).node, std::uint64_t{plan.pe_path_blocks} * block);
    cluster_.addReads(cluster_.engine(*decode).node, std::uint64_t{plan.de_path_blocks} * block);
    out.push_back(Assignment{.request_id = request.id,
                             .prefill_engine = *prefill,
                             .decode_engine = *decode,
                             .read = plan});
    ++result.assigned;
  }
  queue_.erase(queue_.begin(), queue_.begin() + result.assigned);
  return result;
}

}  // namespace dualpath::scheduler
