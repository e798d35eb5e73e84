// Ranks as processes, with the one service NCCL's bootstrap gives a net
// plugin's users: an all-gather of small blobs (the listen handles). On one
// machine (runRanks) the launcher forks the ranks and relays every all-gather
// over a socketpair per rank; across hosts (runHostRank) each host forks its
// own rank and rank 0's host relays over TCP. Each rank reports one line of
// text when it ends.
//
// The launcher must fork before anything in its process starts threads of
// its own or loads UCX: a rank loads the plugin after the fork.
//
// Threading: one thread per process. Every wait is bounded by the deadline
// given to runRanks or runHostRank (a local rank past it is killed and
// reported as timed out; a remote one is disconnected).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
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

// ---------------------------------------------------------------- several hosts
//
// One rank per host, every host running the same command with its own rank.
// Rank 0's host listens at the rendezvous address and relays the all-gathers
// of every rank over TCP, as runRanks does over socketpairs; the other ranks
// connect to it. Each rank is still a forked process, so every run starts
// from a fresh process on every host.

struct RendezvousAddress {
  std::string host;  // as every rank can reach rank 0's host
  std::uint16_t port = 0;
};

// "HOST:PORT"; invalid_argument naming the text otherwise.
Result<RendezvousAddress> parseRendezvous(std::string_view text);

// Rank 0's listening socket. It stays open across runs, so that a rank that
// connects before rank 0 has started the run waits in its backlog.
class RendezvousListener {
 public:
  static Result<std::unique_ptr<RendezvousListener>> open(const RendezvousAddress& address);
  ~RendezvousListener();
  RendezvousListener(const RendezvousListener&) = delete;
  RendezvousListener& operator=(const RendezvousListener&) = delete;

  int fd() const noexcept { return fd_; }

 private:
  explicit RendezvousListener(int fd) : fd_(fd) {}
  int fd_;
};

struct HostRank {
  int rank = 0;
  int ranks = 0;
  RendezvousAddress rendezvous;
  // Of the options every host must share: a rank with another is refused.
  std::uint64_t digest = 0;
};

// Runs this host's rank in a forked process. On rank 0 (with `listener`):
// accepts the other ranks (each must name a distinct rank, the same number
// of ranks and the same digest), relays their all-gathers, and returns every
// rank's outcome, as runRanks does. Elsewhere (no listener): the rank
// connects to rank 0, retrying until it listens, and this returns its own
// outcome only; its report went to rank 0. Every wait is bounded by
// `timeout`.
Result<std::vector<RankOutcome>> runHostRank(
    const HostRank& me, RendezvousListener* listener, const RankBody& body,
    std::chrono::milliseconds timeout,
    std::chrono::milliseconds after_failure = std::chrono::seconds(10));

}  // namespace dualpath::bench
