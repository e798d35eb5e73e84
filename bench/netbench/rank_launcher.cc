#include "rank_launcher.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

namespace dualpath::bench {
namespace {

// Rank -> launcher messages: [kind: 1 byte][length: 4 bytes, little-endian][payload].
// Launcher -> rank: the gathered blobs, [length: 4][payload].
enum class Kind : std::uint8_t { gather = 1, report = 2 };

int remainingMs(LaunchClock::time_point deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - LaunchClock::now());
  return static_cast<int>(std::clamp<std::int64_t>(left.count(), 0, 1'000'000));
}

Status ioError(std::string_view what) {
  return Status(StatusCode::io, fmt::format("{}: {}", what, std::strerror(errno)));
}

// Whole buffers over a blocking socket, each wait bounded by `deadline`.
Status writeAll(int fd, const void* data, std::size_t size, LaunchClock::time_point deadline,
                std::string_view what) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    pollfd pfd{fd, POLLOUT, 0};
    const int ready = ::poll(&pfd, 1, remainingMs(deadline));
    if (ready == 0) return Status(StatusCode::timeout, fmt::format("{}: timed out", what));
    if (ready < 0 && errno != EINTR) return ioError(what);
    if (ready < 0) continue;
    const ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL);
    if (n < 0 && errno != EINTR && errno != EAGAIN) return ioError(what);
    if (n > 0) {
      p += n;
      size -= static_cast<std::size_t>(n);
    }
  }
  return Status::ok();
}

Status readAll(int fd, void* data, std::size_t size, LaunchClock::time_point deadline,
               std::string_view what) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    pollfd pfd{fd, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, remainingMs(deadline));
    if (ready == 0) return Status(StatusCode::timeout, fmt::format("{}: timed out", what));
    if (ready < 0 && errno != EINTR) return ioError(what);
    if (ready < 0) continue;
    const ssize_t n = ::recv(fd, p, size, 0);
    if (n == 0) return Status(StatusCode::remote, fmt::format("{}: the other side closed", what));
    if (n < 0 && errno != EINTR && errno != EAGAIN) return ioError(what);
    if (n > 0) {
      p += n;
      size -= static_cast<std::size_t>(n);
    }
  }
  return Status::ok();
}

void putLength(std::byte* out, std::uint32_t length) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<std::byte>((length >> (8 * i)) & 0xff);
}
std::uint32_t getLength(const std::byte* in) {
  std::uint32_t length = 0;
  for (int i = 0; i < 4; ++i) length |= std::uint32_t{std::to_integer<std::uint8_t>(in[i])} << (8 * i);
  return length;
}

Status sendMessage(int fd, Kind kind, std::span<const std::byte> payload,
                   LaunchClock::time_point deadline) {
  std::byte header[5];
  header[0] = static_cast<std::byte>(kind);
  putLength(header + 1, static_cast<std::uint32_t>(payload.size()));
  DP_TRY(writeAll(fd, header, sizeof(header), deadline, "bootstrap: sending to the launcher"));
  return writeAll(fd, payload.data(), payload.size(), deadline,
                  "bootstrap: sending to the launcher");
}

struct Child {
  int rank = 0;
  pid_t pid = -1;
  int fd = -1;
  bool eof = false;
  bool exited = false;
  int wait_status = 0;
  std::vector<std::byte> inbox;  // bytes read, not yet a whole message
  std::vector<std::byte> gather;  // this round's blob, once sent
  bool gathered = false;
  std::string report;
  Status failure;
};

}  // namespace

Result<std::vector<std::byte>> Bootstrap::allGather(std::span<const std::byte> mine) {
  DP_TRY(sendMessage(fd_, Kind::gather, mine, deadline_)
             .withContext(fmt::format("rank {}: all-gather", rank_)));
  std::byte length[4];
  DP_TRY(readAll(fd_, length, sizeof(length), deadline_, "bootstrap: all-gather")
             .withContext(fmt::format("rank {}", rank_)));
  std::vector<std::byte> all(getLength(length));
  DP_TRY(readAll(fd_, all.data(), all.size(), deadline_, "bootstrap: all-gather")
             .withContext(fmt::format("rank {}", rank_)));
  if (all.size() != mine.size() * static_cast<std::size_t>(ranks_)) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("rank {}: all-gather: the launcher sent {} B for {} ranks of {} B "
                              "(the ranks passed different sizes)",
                              rank_, all.size(), ranks_, mine.size()));
  }
  return all;
}

Status Bootstrap::barrier() {
  const std::byte one{1};
  return allGather({&one, 1}).status();
}

Result<std::vector<RankOutcome>> runRanks(int ranks, const RankBody& body,
                                          std::chrono::milliseconds timeout,
                                          std::chrono::milliseconds after_failure) {
  if (ranks < 1) {
    return Status(StatusCode::invalid_argument, fmt::format("runRanks: {} ranks", ranks));
  }
  const LaunchClock::time_point deadline = LaunchClock::now() + timeout;
  std::vector<Child> children(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
      return ioError("runRanks: socketpair");
    }
    const pid_t pid = ::fork();
    if (pid < 0) return ioError("runRanks: fork");
    if (pid == 0) {
      ::close(fds[0]);
      for (const Child& earlier : children) {
        if (earlier.fd >= 0) ::close(earlier.fd);
      }
      Bootstrap bootstrap(r, ranks, fds[1], deadline);
      std::string report;
      Status status = body(bootstrap, &report);
      const std::string text = status.isOk() ? report : status.toString();
      const Status sent = sendMessage(
          fds[1], Kind::report,
          {reinterpret_cast<const std::byte*>(text.data()), text.size()}, deadline);
      ::_exit(status.isOk() && sent.isOk() ? 0 : 1);
    }
    ::close(fds[1]);
    Child& child = children[static_cast<std::size_t>(r)];
    child.rank = r;
    child.pid = pid;
    child.fd = fds[0];
  }

  auto allGathered = [&] {
    return std::all_of(children.begin(), children.end(), [](const Child& c) { return c.gathered; });
  };
  // Once a rank failed, the others end by this time or are killed.
  std::optional<LaunchClock::time_point> give_up;
  int failed_first = -1;
  // Relays gathers and collects reports until every rank closed its end.
  while (std::any_of(children.begin(), children.end(), [](const Child& c) { return !c.eof; })) {
    std::vector<pollfd> pfds;
    for (const Child& c : children) {
      if (!c.eof) pfds.push_back(pollfd{c.fd, POLLIN, 0});
    }
    const int ready = ::poll(pfds.data(), pfds.size(), remainingMs(give_up.value_or(deadline)));
    if (ready == 0) break;  // the deadline: whoever is left is killed below
    if (ready < 0 && errno != EINTR) return ioError("runRanks: poll");
    for (Child& c : children) {
      if (c.eof) continue;
      auto it = std::find_if(pfds.begin(), pfds.end(), [&](const pollfd& p) { return p.fd == c.fd; });
      if (it == pfds.end() || it->revents == 0) continue;
      std::byte chunk[4096];
      const ssize_t n = ::recv(c.fd, chunk, sizeof(chunk), 0);
      if (n <= 0) {
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        c.eof = true;
        // The rank closes its end only by exiting (the socket is close-on-exec).
        c.exited = ::waitpid(c.pid, &c.wait_status, 0) == c.pid;
        const bool failed = c.exited && (WIFSIGNALED(c.wait_status) || WEXITSTATUS(c.wait_status) != 0);
        if (failed && !give_up) {
          give_up = std::min(deadline, LaunchClock::now() + after_failure);
          failed_first = c.rank;
        }
        continue;
      }
      c.inbox.insert(c.inbox.end(), chunk, chunk + n);
      while (c.inbox.size() >= 5) {
        const std::uint32_t length = getLength(c.inbox.data() + 1);
        if (c.inbox.size() < 5 + length) break;
        const auto kind = static_cast<Kind>(std::to_integer<std::uint8_t>(c.inbox[0]));
        std::vector<std::byte> payload(c.inbox.begin() + 5, c.inbox.begin() + 5 + length);
        c.inbox.erase(c.inbox.begin(), c.inbox.begin() + 5 + length);
        if (kind == Kind::report) {
          c.report.assign(reinterpret_cast<const char*>(payload.data()), payload.size());
        } else {
          c.gather = std::move(payload);
          c.gathered = true;
        }
      }
    }
    if (allGathered()) {
      std::vector<std::byte> all;
      for (const Child& c : children) all.insert(all.end(), c.gather.begin(), c.gather.end());
      std::byte length[4];
      putLength(length, static_cast<std::uint32_t>(all.size()));
      for (Child& c : children) {
        c.gathered = false;
        Status sent = writeAll(c.fd, length, sizeof(length), deadline, "runRanks: all-gather");
        if (sent.isOk()) {
          sent = writeAll(c.fd, all.data(), all.size(), deadline, "runRanks: all-gather");
        }
        if (!sent.isOk() && c.failure.isOk()) c.failure = std::move(sent);
      }
    }
  }

  std::vector<RankOutcome> outcomes;
  for (Child& c : children) {
    if (!c.eof) ::kill(c.pid, SIGKILL);
    if (!c.exited) ::waitpid(c.pid, &c.wait_status, 0);
    ::close(c.fd);
    RankOutcome outcome;
    outcome.rank = c.rank;
    outcome.report = c.report;
    if (!c.eof && give_up && *give_up < deadline) {
      outcome.status = Status(
          StatusCode::remote,
          fmt::format("rank {}: still running {} ms after rank {} failed; killed", c.rank,
                      after_failure.count(), failed_first));
    } else if (!c.eof) {
      outcome.status = Status(StatusCode::timeout,
                              fmt::format("rank {}: still running after {} ms; killed", c.rank,
                                          timeout.count()));
    } else if (WIFSIGNALED(c.wait_status)) {
      outcome.status = Status(StatusCode::remote, fmt::format("rank {}: killed by signal {} ({})",
                                                              c.rank, WTERMSIG(c.wait_status),
                                                              strsignal(WTERMSIG(c.wait_status))));
    } else if (WEXITSTATUS(c.wait_status) != 0) {
      outcome.status = Status(StatusCode::remote,
                              fmt::format("rank {}: exited {}: {}", c.rank,
                                          WEXITSTATUS(c.wait_status), c.report));
      outcome.report.clear();
    } else if (!c.failure.isOk()) {
      outcome.status = std::move(c.failure);
    }
    outcomes.push_back(std::move(outcome));
  }
  return outcomes;
}

}  // namespace dualpath::bench
