// Ranks as processes on one machine, with the one service NCCL's bootstrap
// gives a net plugin's users: an all-gather of small blobs (the listen
// handles). The launcher forks the ranks and relays every all-gather over a
// socketpair per rank; each rank reports one line of text when it ends.
//
// The launcher must fork before anything in its process starts threads of
// its own or loads UCX: a rank loads the plugin after the fork.
//
// Threading: one thread per process. Every wait is bounded by the deadline
// given to runRanks (a rank past it is killed and reported as timed out).
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include <dualpath/common/status.h>

namespace dualpath::bench {

using LaunchClock = std::chrono::steady_clock;

// A rank's end of the bootstrap.
class Bootstrap {
 public:
  Bootstrap(int rank, int ranks, int fd, LaunchClock::time_point deadline)
      : rank_(rank), ranks_(ranks), fd_(fd), deadline_(deadline) {}

  int rank() const noexcept { return rank_; }
  int ranks() const noexcept { return ranks_; }
  LaunchClock::time_point deadline() const noexcept { return deadline_; }

  // Every rank's `mine`, in rank order; every rank must pass the same size
  // (invalid_argument from the launcher otherwise). timeout at the deadline.
  Result<std::vector<std::byte>> allGather(std::span<const std::byte> mine);
  Status barrier();

 private:
  int rank_;
  int ranks_;
  int fd_;
  LaunchClock::time_point deadline_;
};

struct RankOutcome {
  int rank = 0;
  // ok when the rank's body returned ok and the process exited 0; otherwise
  // why, naming the rank (its error, its signal, or the timeout).
  Status status;
  std::string report;  // what the body put in *report
};

using RankBody = std::function<Status(Bootstrap& bootstrap, std::string* report)>;

// Forks `ranks` processes, each running `body` and exiting; relays their
// all-gathers; returns one outcome per rank once all ended, or kills the
// rest at `timeout` (their outcome: timeout). Once a rank has failed (its
// body's error, a signal), the others get `after_failure` to end on their
// own, since they may be waiting for it; then they are killed (their
// outcome: remote, naming the rank that failed first). invalid_argument for
// fewer than 1 rank; io when a process cannot be made.
Result<std::vector<RankOutcome>> runRanks(
    int ranks, const RankBody& body, std::chrono::milliseconds timeout,
    std::chrono::milliseconds after_failure = std::chrono::seconds(10));

}  // namespace dualpath::bench
