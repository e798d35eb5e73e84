#include <algorithm>
#include <ctime>
#include <limits>

#include <fmt/format.h>

#include <dualpath/common/log.h>
#include <dualpath/qos/arbiter.h>

namespace dualpath::qos {
namespace {

// Virtual times grow without bound; rebasing keeps doubles exact enough to
// compare (2^53 ns-scaled units) on a process that runs for months.
constexpr double kVirtualTimeRebase = 1e15;

}  // namespace

TimeNs monotonicNowNs() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<TimeNs>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

ArbiterConfig ArbiterConfig::fromPolicy(const Policy& policy) {
  ArbiterConfig config;
  for (const TrafficClass& cls : policy.classes) {
    config.classes.push_back({cls.name, cls.priority, cls.weight});
  }
  config.settings = policy.arbiter;
  return config;
}

Result<std::unique_ptr<LinkArbiter>> LinkArbiter::create(ArbiterConfig config) {
  if (config.classes.empty() || config.classes.size() > kMaxArbiterClasses) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("an arbiter needs 1 to {} classes, got {}", kMaxArbiterClasses,
                              config.classes.size()));
  }
  for (const ArbiterClassSpec& cls : config.classes) {
    if (cls.weight == 0) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("class \"{}\": weight 0; weights are 1-255", cls.name));
    }
  }
  const ArbiterSettings& s = config.settings;
  if (!(s.low_share > 0.0 && s.low_share < 1.0) || s.chunk == 0 || s.burst == 0 ||
      (s.low_max_inflight != 0 && s.low_max_inflight < s.chunk) ||
      (s.max_inflight != 0 && s.max_inflight < s.chunk) || s.demand_hold_us == 0) {
    return Status(StatusCode::invalid_argument,
                  "arbiter settings out of range (see docs/qos.md, [arbiter])");
  }
  return std::unique_ptr<LinkArbiter>(new LinkArbiter(std::move(config)));
}

LinkArbiter::LinkArbiter(ArbiterConfig config)
    : config_(std::move(config)),
      class_count_(config_.classes.size()),
      bytes_per_ns_(config_.settings.link_rate
                        ? static_cast<double>(*config_.settings.link_rate) / 8.0 / 1e9
                        : 0.0),
      demand_hold_ns_(static_cast<TimeNs>(config_.settings.demand_hold_us) * 1000) {
  MutexLock lock(mu_);
  for (std::size_t i = 0; i < class_count_; ++i) {
    classes_[i].priority = config_.classes[i].priority;
    classes_[i].weight = config_.classes[i].weight;
  }
  tokens_ = static_cast<double>(config_.settings.burst);
}

Bytes LinkArbiter::maxPostBytes(ClassIndex cls) const noexcept {
  if (cls >= class_count_ || config_.classes[cls].priority == Priority::high) {
    return std::numeric_limits<Bytes>::max();
  }
  return config_.settings.chunk;
}

bool LinkArbiter::claimActive(const ClassState& state, TimeNs now) const {
  return state.claiming && now - state.last_refused <= demand_hold_ns_;
}

void LinkArbiter::refillTokens(TimeNs now) {
  if (bytes_per_ns_ == 0.0) return;
  if (!refilled_once_) {
    refilled_once_ = true;
    last_refill_ = now;
    return;
  }
  if (now <= last_refill_) return;  // callers' clocks may interleave slightly
  tokens_ = std::min(static_cast<double>(config_.settings.burst),
                     tokens_ + static_cast<double>(now - last_refill_) * bytes_per_ns_);
  last_refill_ = now;
}

// The share this class's grants are charged at: its level's share of the
// link, split by weight among the classes of that level that want it now.
double LinkArbiter::shareOf(ClassIndex cls, TimeNs now) const {
  const ClassState& me = classes_[cls];
  double level_weight = me.weight;
  for (std::size_t j = 0; j < class_count_; ++j) {
    if (j != cls && classes_[j].priority == me.priority && claimActive(classes_[j], now)) {
      level_weight += classes_[j].weight;
    }
  }
  const double low_share = config_.settings.low_share;
  const double level_share = me.priority == Priority::high ? 1.0 - low_share : low_share;
  return level_share * me.weight / level_weight;
}

bool LinkArbiter::turnBelongsToOther(ClassIndex cls, TimeNs now) const {
  const ClassState& me = classes_[cls];
  const double my_start = std::max(me.finish_tag, virtual_time_);
  for (std::size_t j = 0; j < class_count_; ++j) {
    if (j == cls || !claimActive(classes_[j], now)) continue;
    const double their_start = std::max(classes_[j].finish_tag, virtual_time_);
    if (their_start < my_start) return true;
    bool outranks = classes_[j].priority == Priority::high && me.priority == Priority::low;
    if (their_start == my_start && outranks) return true;
  }
  return false;
}

void LinkArbiter::refuse(ClassState& state, TimeNs now) {
  state.claiming = true;
  state.last_refused = now;
}

Status LinkArbiter::tryAcquire(ClassIndex cls, Bytes bytes, TimeNs now) noexcept {
  if (cls >= class_count_ || bytes == 0 || bytes > maxPostBytes(cls)) {
    std::string reason = fmt::format(
        "post of {} bytes for class {} refused: classes 0-{}, low-priority posts at most {} bytes "
        "(split them into chunks)",
        bytes, cls, class_count_ - 1, config_.settings.chunk);
    DP_LOG_ERROR("arbiter: {}", reason);
    return Status(StatusCode::invalid_usage, std::move(reason));
  }
  const ArbiterSettings& s = config_.settings;
  MutexLock lock(mu_);
  ClassState& me = classes_[cls];
  refillTokens(now);

  if (me.priority == Priority::low && s.low_max_inflight != 0 && inflight_low_ > 0 &&
      inflight_low_ + bytes > s.low_max_inflight) {
    // Its own limit, not contention for the link: no claim on others' turns.
    ++me.stats.refused_for_own_limit;
    return Status(StatusCode::again);
  }
  if (turnBelongsToOther(cls, now)) {
    refuse(me, now);
    ++me.stats.refused_for_turn;
    return Status(StatusCode::again);
  }
  const bool out_of_tokens = bytes_per_ns_ != 0.0 && tokens_ < 0.0;
  const bool window_full =
      s.max_inflight != 0 && inflight_total_ > 0 && inflight_total_ + bytes > s.max_inflight;
  if (out_of_tokens || window_full) {
    refuse(me, now);
    ++me.stats.refused_for_capacity;
    return Status(StatusCode::again);
  }

  const double start = std::max(me.finish_tag, virtual_time_);
  me.finish_tag = start + static_cast<double>(bytes) / shareOf(cls, now);
  virtual_time_ = start;
  if (virtual_time_ > kVirtualTimeRebase) {
    for (std::size_t j = 0; j < class_count_; ++j) {
      classes_[j].finish_tag = std::max(0.0, classes_[j].finish_tag - virtual_time_);
    }
    virtual_time_ = 0;
  }
  me.claiming = false;
  if (bytes_per_ns_ != 0.0) tokens_ -= static_cast<double>(bytes);
  inflight_total_ += bytes;
  if (me.priority == Priority::low) inflight_low_ += bytes;
  me.stats.inflight_bytes += bytes;
  ++me.stats.granted_posts;
  me.stats.granted_bytes += bytes;
  return Status::ok();
}

void LinkArbiter::release(ClassIndex cls, Bytes bytes) noexcept {
  if (cls >= class_count_) return;
  MutexLock lock(mu_);
  ClassState& me = classes_[cls];
  if (bytes > me.stats.inflight_bytes) {
    DP_LOG_ERROR("arbiter: class {} released {} bytes but had only {} in flight", cls, bytes,
                 me.stats.inflight_bytes);
    bytes = me.stats.inflight_bytes;
  }
  me.stats.inflight_bytes -= bytes;
  inflight_total_ -= bytes;
  if (me.priority == Priority::low) inflight_low_ -= bytes;
}

void LinkArbiter::withdraw(ClassIndex cls) noexcept {
  if (cls >= class_count_) return;
  MutexLock lock(mu_);
  classes_[cls].claiming = false;
}

ArbiterClassStats LinkArbiter::stats(ClassIndex cls) const {
  if (cls >= class_count_) return {};
  MutexLock lock(mu_);
  return classes_[cls].stats;
}

}  // namespace dualpath::qos
