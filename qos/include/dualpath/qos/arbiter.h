// The software link arbiter: decides, per link, when each traffic class may
// post its next message or chunk.
//
// Semantics (docs/qos.md, "The software arbiter"):
//  - Contention is when a class asks and is refused: it then holds a claim to
//    a turn for `demand_hold_us` after its latest refusal.
//  - Among claimants, turns follow start-time fair queueing over bytes: each
//    class advances its virtual finish time by bytes / share. High-priority
//    classes together get 1 - low_share, low-priority ones low_share, split by
//    weight; ties go to high priority. So a saturated link gives low priority
//    exactly its share, and a newly active high class goes first.
//  - Work-conserving: with no competing claim, a class posts as far as
//    capacity allows; low priority takes the whole link when high is idle.
//  - Capacity: a token bucket when link_rate is set (shaping), bytes in flight
//    on the link (max_inflight), and low-priority bytes in flight
//    (low_max_inflight), which bounds how much KV a collective can find
//    queued ahead of it. Low-priority posts are at most `chunk` bytes.
//
// Threading: every member function is thread-safe. tryAcquire/release/
// withdraw take one short, uncontended-by-design critical section; they never
// allocate, never make a system call (when given `now`), never block on I/O.
// Budget: one decision well under 100 ns uncontended (bench/qos).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/common/thread_annotations.h>
#include <dualpath/common/units.h>
#include <dualpath/qos/policy.h>

namespace dualpath::qos {

using TimeNs = std::int64_t;  // CLOCK_MONOTONIC nanoseconds
TimeNs monotonicNowNs() noexcept;

using ClassIndex = std::uint8_t;
inline constexpr std::size_t kMaxArbiterClasses = kMaxTrafficClasses;

struct ArbiterClassSpec {
  std::string name;
  Priority priority = Priority::high;
  std::uint32_t weight = 1;
};

struct ArbiterConfig {
  std::vector<ArbiterClassSpec> classes;  // a ClassIndex is a position here
  ArbiterSettings settings;

  // Classes in policy order, so Policy::indexOf(cls) is the ClassIndex.
  static ArbiterConfig fromPolicy(const Policy& policy);
};

struct ArbiterClassStats {
  std::uint64_t granted_posts = 0;
  std::uint64_t granted_bytes = 0;
  std::uint64_t refused_for_turn = 0;       // another class's turn came first
  std::uint64_t refused_for_capacity = 0;   // tokens or the in-flight window
  std::uint64_t refused_for_own_limit = 0;  // low_max_inflight
  Bytes inflight_bytes = 0;
};

class LinkArbiter {
 public:
  // Fails with invalid_argument on an empty or oversized class list, a zero
  // weight, or settings the loader would refuse.
  static Result<std::unique_ptr<LinkArbiter>> create(ArbiterConfig config);

  LinkArbiter(const LinkArbiter&) = delete;
  LinkArbiter& operator=(const LinkArbiter&) = delete;

  // May `bytes` of class `cls` go on the link now?
  //   ok            post them, then call release() when the post completes;
  //   again         not now: ask again (the class keeps its claim to a turn);
  //   invalid_usage unknown class, zero bytes, or a low-priority post larger
  //                 than maxPostBytes() (the caller must chunk).
  // `now` is monotonicNowNs() or a test's clock; it must not run backwards by
  // more than a few microseconds between callers.
  Status tryAcquire(ClassIndex cls, Bytes bytes, TimeNs now) noexcept DP_EXCLUDES(mu_);
  Status tryAcquire(ClassIndex cls, Bytes bytes) noexcept {
    return tryAcquire(cls, bytes, monotonicNowNs());
  }

  // A granted post completed or failed: its bytes leave the link.
  void release(ClassIndex cls, Bytes bytes) noexcept DP_EXCLUDES(mu_);

  // The class stops asking (its communicator closed): it gives up its claim,
  // so others need not wait demand_hold_us for it.
  void withdraw(ClassIndex cls) noexcept DP_EXCLUDES(mu_);

  // The largest post a class may ask for: `chunk` for low priority.
  Bytes maxPostBytes(ClassIndex cls) const noexcept;

  ArbiterClassStats stats(ClassIndex cls) const DP_EXCLUDES(mu_);
  const ArbiterConfig& config() const noexcept { return config_; }

 private:
  explicit LinkArbiter(ArbiterConfig config);

  struct ClassState {
    Priority priority = Priority::high;
    double weight = 1;
    double finish_tag = 0;  // virtual time at which its latest grant ends
    bool claiming = false;  // refused and still asking
    TimeNs last_refused = 0;
    ArbiterClassStats stats;
  };

  bool claimActive(const ClassState& state, TimeNs now) const DP_REQUIRES(mu_);
  void refillTokens(TimeNs now) DP_REQUIRES(mu_);
  bool turnBelongsToOther(ClassIndex cls, TimeNs now) const DP_REQUIRES(mu_);
  double shareOf(ClassIndex cls, TimeNs now) const DP_REQUIRES(mu_);
  void refuse(ClassState& state, TimeNs now) DP_REQUIRES(mu_);

  const ArbiterConfig config_;
  const std::size_t class_count_;
  const double bytes_per_ns_;  // 0 without shaping
  const TimeNs demand_hold_ns_;

  mutable Mutex mu_;
  std::array<ClassState, kMaxArbiterClasses> classes_ DP_GUARDED_BY(mu_);
  double virtual_time_ DP_GUARDED_BY(mu_) = 0;
  double tokens_ DP_GUARDED_BY(mu_) = 0;  // bytes; negative is debt
  TimeNs last_refill_ DP_GUARDED_BY(mu_) = 0;
  bool refilled_once_ DP_GUARDED_BY(mu_) = false;
  Bytes inflight_total_ DP_GUARDED_BY(mu_) = 0;
  Bytes inflight_low_ DP_GUARDED_BY(mu_) = 0;
};

}  // namespace dualpath::qos
