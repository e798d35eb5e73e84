// The simulator's links (internal). Two kinds, both fluid:
//
// A FifoLink serves one job at a time, first come first served, at a rate
// that may change while it works (an SNIC whose share of a narrow storage
// cluster changes). It models a node's storage read queue, as the scheduler
// sees it.
//
// SharedLinks carry flows that cross several links at once (a relay leaves
// the DE node's DRAM through its CNIC and lands through the PE's CNIC). A
// flow asks each of its links for bytes; it starts only when every link has
// at least kMinStartShare of its capacity free, takes a duration that fits
// every link's free capacity (and no shorter than the flow's own minimum,
// such as the compute it overlaps), and holds rate = bytes / duration on each
// link until it ends. So a link never hands out more than its capacity, and
// a flow never changes rate once started.
//
// Threading: none; the simulator's thread owns every link.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <string_view>
#include <vector>

namespace dualpath::sim::detail {

// A flow that found a link without room waits on it; the link wakes its
// waiters, in order, when a flow on it ends.
struct Waiter {
  enum class Kind : std::uint8_t { prefill_batch, decode_copy } kind;
  std::uint32_t id;  // the prefill engine or the agent
};

struct SharedLink {
  std::uint8_t kind = 0;  // an index into the simulator's link kinds
  double capacity = 0;
  double allocated = 0;
  double bytes = 0;
  double peak_allocated = 0;
  std::vector<Waiter> waiters;
};

struct Demand {
  std::uint32_t link = 0;
  double bytes = 0;
};

struct FifoJob {
  enum class Kind : std::uint8_t { read_prefill_path, read_decode_path, write_back } kind;
  std::uint32_t agent = 0;
  double bytes = 0;
  std::uint64_t tokens = 0;
};

class FifoLink {
 public:
  FifoLink(std::uint8_t kind, double capacity) : kind_(kind), capacity_(capacity), rate_(capacity) {}

  std::uint8_t kind() const noexcept { return kind_; }
  double capacity() const noexcept { return capacity_; }
  double rate() const noexcept { return rate_; }
  bool busy() const noexcept { return !queue_.empty(); }
  double bytes() const noexcept { return bytes_; }
  double peakRate() const noexcept { return peak_rate_; }
  std::uint64_t generation() const noexcept { return generation_; }
  const FifoJob& head() const noexcept { return queue_.front(); }

  // Adds a job; true when it is the head (the link was idle), so the caller
  // schedules its completion.
  bool push(double now, const FifoJob& job) {
    queue_.push_back(job);
    if (queue_.size() > 1) return false;
    head_done_ = 0;
    last_ = now;
    peak_rate_ = std::max(peak_rate_, rate_);
    ++generation_;
    return true;
  }
  // The head's completion time at the current rate.
  double headFinish(double now) const noexcept {
    return now + std::max(0.0, queue_.front().bytes - head_done_) / rate_;
  }
  // Settles the head's progress, changes the rate, invalidates the pending
  // completion (the caller schedules a new one if busy).
  void setRate(double now, double rate) {
    settle(now);
    rate_ = rate;
    if (busy()) peak_rate_ = std::max(peak_rate_, rate_);
    ++generation_;
  }
  // Precondition: busy() and the head is done at `now`. Returns it; the next
  // job, if any, starts now.
  FifoJob pop(double now) {
    FifoJob done = queue_.front();
    queue_.pop_front();
    bytes_ += done.bytes;
    head_done_ = 0;
    last_ = now;
    ++generation_;
    return done;
  }

 private:
  void settle(double now) {
    if (busy()) head_done_ += rate_ * (now - last_);
    last_ = now;
  }

  std::uint8_t kind_;
  double capacity_;
  double rate_;
  std::deque<FifoJob> queue_;
  double head_done_ = 0;
  double last_ = 0;
  double bytes_ = 0;
  double peak_rate_ = 0;
  std::uint64_t generation_ = 0;
};

}  // namespace dualpath::sim::detail
