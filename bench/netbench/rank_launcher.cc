#include "rank_launcher.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include <fmt/format.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace dualpath::bench {
namespace {

// Rank -> launcher messages: [kind: 1 byte][length: 4 bytes, little-endian][payload].
// Launcher -> rank: the gathered blobs, [length: 4][payload]. A rank ends with
// `report` (its body succeeded) or `failure` (the error's text): for a rank
// on another host that is all the relay learns.
enum class Kind : std::uint8_t { gather = 1, report = 2, failure = 3 };

// What a rank on another host sends first over its TCP connection.
constexpr std::uint32_t kHelloMagic = 0x44505256;  // "DPRV"
struct Hello {
  std::uint32_t magic;
  std::uint32_t rank;
  std::uint32_t ranks;
  std::uint32_t reserved;
  std::uint64_t digest;
};

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
  for (int i = 0; i < 4; ++i)
    length |= std::uint32_t{std::to_integer<std::uint8_t>(in[i])} << (8 * i);
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
  pid_t pid = -1;  // -1: a rank on another host, known only by its connection
  int fd = -1;
  bool eof = false;
  bool exited = false;
  int wait_status = 0;
  std::vector<std::byte> inbox;   // bytes read, not yet a whole message
  std::vector<std::byte> gather;  // this round's blob, once sent
  bool gathered = false;
  std::string report;
  bool reported = false;  // a report or a failure arrived
  bool reported_failure = false;
  Status failure;
};

// The rank's side once forked: its body, then its report, then exit.
// `local_fd`, when not the bootstrap's, is a socketpair to this host's
// launcher, which hears the report too.
[[noreturn]] void runRankProcess(int rank, int ranks, int fd, LaunchClock::time_point deadline,
                                 const RankBody& body, int local_fd = -1) {
  Bootstrap bootstrap(rank, ranks, fd, deadline);
  std::string report;
  Status status = body(bootstrap, &report);
  const std::string text = status.isOk() ? report : status.toString();
  const Kind kind = status.isOk() ? Kind::report : Kind::failure;
  const std::span<const std::byte> bytes{reinterpret_cast<const std::byte*>(text.data()),
                                         text.size()};
  Status sent = sendMessage(fd, kind, bytes, deadline);
  if (local_fd >= 0) {
    const Status told = sendMessage(local_fd, kind, bytes, deadline);
    if (sent.isOk()) sent = told;
  }
  ::_exit(status.isOk() && sent.isOk() ? 0 : 1);
}

// Relays the ranks' all-gathers and collects their reports until every rank
// closed its end, then makes one outcome per rank (see runRanks).
Result<std::vector<RankOutcome>> relay(std::vector<Child>& children,
                                       LaunchClock::time_point deadline,
                                       std::chrono::milliseconds timeout,
                                       std::chrono::milliseconds after_failure);

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
      runRankProcess(r, ranks, fds[1], deadline, body);
    }
    ::close(fds[1]);
    Child& child = children[static_cast<std::size_t>(r)];
    child.rank = r;
    child.pid = pid;
    child.fd = fds[0];
  }

  return relay(children, deadline, timeout, after_failure);
}

namespace {

Result<std::vector<RankOutcome>> relay(std::vector<Child>& children,
                                       LaunchClock::time_point deadline,
                                       std::chrono::milliseconds timeout,
                                       std::chrono::milliseconds after_failure) {
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
    if (ready < 0 && errno != EINTR) return ioError("launcher: poll");
    for (Child& c : children) {
      if (c.eof) continue;
      auto it =
          std::find_if(pfds.begin(), pfds.end(), [&](const pollfd& p) { return p.fd == c.fd; });
      if (it == pfds.end() || it->revents == 0) continue;
      std::byte chunk[4096];
      const ssize_t n = ::recv(c.fd, chunk, sizeof(chunk), 0);
      if (n <= 0) {
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        c.eof = true;
        bool failed = false;
        if (c.pid > 0) {
          // The rank closes its end only by exiting (the socket is close-on-exec).
          c.exited = ::waitpid(c.pid, &c.wait_status, 0) == c.pid;
          failed = c.exited && (WIFSIGNALED(c.wait_status) || WEXITSTATUS(c.wait_status) != 0);
        } else {
          // A rank on another host: its last message is all there is.
          c.exited = true;
          failed = !c.reported || c.reported_failure;
        }
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
        if (kind == Kind::report || kind == Kind::failure) {
          c.report.assign(reinterpret_cast<const char*>(payload.data()), payload.size());
          c.reported = true;
          c.reported_failure = kind == Kind::failure;
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
    // A rank on another host cannot be killed from here: closing its
    // connection fails its next bootstrap call, and its own host's deadline
    // ends it.
    if (!c.eof && c.pid > 0) ::kill(c.pid, SIGKILL);
    if (!c.exited && c.pid > 0) ::waitpid(c.pid, &c.wait_status, 0);
    ::close(c.fd);
    RankOutcome outcome;
    outcome.rank = c.rank;
    outcome.report = c.report;
    if (c.pid < 0 && c.eof && (!c.reported || c.reported_failure)) {
      outcome.status =
          Status(StatusCode::remote,
                 fmt::format("rank {} (another host): {}", c.rank,
                             c.reported ? c.report : "closed its connection without a report"));
      outcome.report.clear();
    } else if (!c.eof && give_up && *give_up < deadline) {
      outcome.status = Status(
          StatusCode::remote,
          fmt::format("rank {}: still running {} ms after rank {} failed; {}", c.rank,
                      after_failure.count(), failed_first, c.pid > 0 ? "killed" : "disconnected"));
    } else if (!c.eof) {
      outcome.status = Status(StatusCode::timeout,
                              fmt::format("rank {}: still running after {} ms; {}", c.rank,
                                          timeout.count(), c.pid > 0 ? "killed" : "disconnected"));
    } else if (WIFSIGNALED(c.wait_status)) {
      outcome.status = Status(StatusCode::remote, fmt::format("rank {}: killed by signal {} ({})",
                                                              c.rank, WTERMSIG(c.wait_status),
                                                              strsignal(WTERMSIG(c.wait_status))));
    } else if (WEXITSTATUS(c.wait_status) != 0) {
      outcome.status = Status(
          StatusCode::remote,
          fmt::format("rank {}: exited {}: {}", c.rank, WEXITSTATUS(c.wait_status), c.report));
      outcome.report.clear();
    } else if (!c.failure.isOk()) {
      outcome.status = std::move(c.failure);
    }
    outcomes.push_back(std::move(outcome));
  }
  return outcomes;
}

}  // namespace

// ---------------------------------------------------------------- several hosts

namespace {

// Resolves the rendezvous address (IPv4, TCP).
Result<addrinfo*> resolve(const RendezvousAddress& address, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(address.port);
  const int error = ::getaddrinfo(address.host.c_str(), port.c_str(), &hints, &found);
  if (error != 0) {
    return Status(StatusCode::invalid_argument, fmt::format("rendezvous {}:{}: {}", address.host,
                                                            address.port, ::gai_strerror(error)));
  }
  return found;
}

// Connects to rank 0, retrying while it does not listen yet; bounded.
Result<int> connectToRankZero(const RendezvousAddress& address, LaunchClock::time_point deadline) {
  DP_TRY_ASSIGN(addrinfo * found, resolve(address, false));
  for (;;) {
    const int fd = ::socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      ::freeaddrinfo(found);
      return ioError("rendezvous: socket");
    }
    if (::connect(fd, found->ai_addr, found->ai_addrlen) == 0) {
      ::freeaddrinfo(found);
      return fd;
    }
    const int error = errno;
    ::close(fd);
    if ((error != ECONNREFUSED && error != EINTR) || LaunchClock::now() > deadline) {
      ::freeaddrinfo(found);
      return Status(error == ECONNREFUSED ? StatusCode::timeout : StatusCode::io,
                    fmt::format("rendezvous: connecting to rank 0 at {}:{}: {}", address.host,
                                address.port, std::strerror(error)));
    }
    // Rank 0 has not started listening yet: try again shortly.
    ::poll(nullptr, 0, 50);
  }
}

// Waits for a forked rank to exit, bounded: its end of the socketpair
// `fd` closes when it does (nothing more is sent after its report). Killed at
// the deadline.
int waitForExit(int fd, pid_t pid, LaunchClock::time_point deadline, bool* timed_out) {
  *timed_out = false;
  for (;;) {
    pollfd pfd{fd, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, remainingMs(deadline));
    if (ready == 0) {
      ::kill(pid, SIGKILL);
      *timed_out = true;
      break;
    }
    std::byte ignored[256];
    const ssize_t n = ready > 0 ? ::recv(fd, ignored, sizeof(ignored), 0) : -1;
    if (n > 0 || (n < 0 && errno == EINTR)) continue;
    if (n < 0) ::kill(pid, SIGKILL);  // cannot watch it: end it, so the reaping is bounded
    break;                            // end of file: it exited
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

Status refuse(Child& local, std::vector<Child>& remotes, Status why) {
  ::kill(local.pid, SIGKILL);
  ::waitpid(local.pid, nullptr, 0);
  ::close(local.fd);
  for (Child& r : remotes) ::close(r.fd);
  return why;
}

}  // namespace

Result<RendezvousAddress> parseRendezvous(std::string_view text) {
  const std::size_t colon = text.rfind(':');
  RendezvousAddress address;
  unsigned long port = 0;
  if (colon != std::string_view::npos && colon > 0 && colon + 1 < text.size()) {
    address.host = std::string(text.substr(0, colon));
    const std::string digits(text.substr(colon + 1));
    char* end = nullptr;
    port = std::strtoul(digits.c_str(), &end, 10);
    if (*end != '\0') port = 0;
  }
  if (port == 0 || port > 65535) {
    return Status(
        StatusCode::invalid_argument,
        fmt::format("--rendezvous '{}': expected HOST:PORT with a port from 1 to 65535", text));
  }
  address.port = static_cast<std::uint16_t>(port);
  return address;
}

Result<std::unique_ptr<RendezvousListener>> RendezvousListener::open(
    const RendezvousAddress& address) {
  DP_TRY_ASSIGN(addrinfo * found, resolve(address, true));
  const int fd = ::socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC, 0);
  const int one = 1;
  const bool ok = fd >= 0 && ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
                  ::bind(fd, found->ai_addr, found->ai_addrlen) == 0 && ::listen(fd, 64) == 0;
  const int error = errno;
  ::freeaddrinfo(found);
  if (!ok) {
    if (fd >= 0) ::close(fd);
    return Status(StatusCode::io, fmt::format("rendezvous: listening at {}:{}: {}", address.host,
                                              address.port, std::strerror(error)));
  }
  return std::unique_ptr<RendezvousListener>(new RendezvousListener(fd));
}

RendezvousListener::~RendezvousListener() {
  ::close(fd_);
}

Result<std::vector<RankOutcome>> runHostRank(const HostRank& me, RendezvousListener* listener,
                                             const RankBody& body,
                                             std::chrono::milliseconds timeout,
                                             std::chrono::milliseconds after_failure) {
  if (me.ranks < 2 || me.rank < 0 || me.rank >= me.ranks ||
      (me.rank == 0) != (listener != nullptr)) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("runHostRank: rank {} of {} ({} listener)", me.rank, me.ranks,
                              listener != nullptr ? "with a" : "without a"));
  }
  const LaunchClock::time_point deadline = LaunchClock::now() + timeout;
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return ioError("runHostRank: socketpair");
  }
  const pid_t pid = ::fork();
  if (pid < 0) return ioError("runHostRank: fork");
  if (pid == 0) {
    ::close(fds[0]);
    if (listener != nullptr) {
      ::close(listener->fd());
      runRankProcess(0, me.ranks, fds[1], deadline, body);
    }
    Result<int> connected = connectToRankZero(me.rendezvous, deadline);
    if (!connected) {
      const std::string text =
          std::move(connected).status().withContext(fmt::format("rank {}", me.rank)).toString();
      (void)sendMessage(fds[1], Kind::failure,
                        {reinterpret_cast<const std::byte*>(text.data()), text.size()}, deadline);
      ::_exit(1);
    }
    const Hello hello{kHelloMagic, static_cast<std::uint32_t>(me.rank),
                      static_cast<std::uint32_t>(me.ranks), 0, me.digest};
    const Status said = writeAll(*connected, &hello, sizeof(hello), deadline, "rendezvous: hello");
    if (!said.isOk()) ::_exit(1);
    runRankProcess(me.rank, me.ranks, *connected, deadline, body, fds[1]);
  }
  ::close(fds[1]);
  Child local;
  local.rank = me.rank;
  local.pid = pid;
  local.fd = fds[0];

  if (listener == nullptr) {
    // This host's rank only: its report (or failure) also comes here.
    bool timed_out = false;
    std::vector<Child> mine{std::move(local)};
    Child& c = mine.front();
    std::byte header[5];
    if (readAll(c.fd, header, sizeof(header), deadline, "rank report").isOk()) {
      std::string text(getLength(header + 1), '\0');
      if (readAll(c.fd, text.data(), text.size(), deadline, "rank report").isOk()) {
        c.report = std::move(text);
        c.reported = true;
        c.reported_failure =
            static_cast<Kind>(std::to_integer<std::uint8_t>(header[0])) == Kind::failure;
      }
    }
    c.wait_status = waitForExit(c.fd, c.pid, deadline, &timed_out);
    ::close(c.fd);
    RankOutcome outcome;
    outcome.rank = me.rank;
    if (timed_out) {
      outcome.status = Status(
          StatusCode::timeout,
          fmt::format("rank {}: still running after {} ms; killed", me.rank, timeout.count()));
    } else if (!c.reported || c.reported_failure || c.wait_status != 0) {
      outcome.status = Status(
          StatusCode::remote,
          fmt::format("rank {}: {}", me.rank, c.reported ? c.report : "ended without a report"));
    }
    return std::vector<RankOutcome>{std::move(outcome)};
  }

  // Rank 0: the others join, each once, with the same options.
  std::vector<Child> remotes;
  while (static_cast<int>(remotes.size()) < me.ranks - 1) {
    pollfd pfd{listener->fd(), POLLIN, 0};
    const int ready = ::poll(&pfd, 1, remainingMs(deadline));
    if (ready == 0) {
      return refuse(local, remotes,
                    Status(StatusCode::timeout,
                           fmt::format("rendezvous: {} of {} other ranks joined before the "
                                       "deadline",
                                       remotes.size(), me.ranks - 1)));
    }
    if (ready < 0) {
      if (errno == EINTR) continue;
      return refuse(local, remotes, ioError("rendezvous: poll"));
    }
    sockaddr_storage peer{};
    socklen_t peer_length = sizeof(peer);
    const int fd =
        ::accept4(listener->fd(), reinterpret_cast<sockaddr*>(&peer), &peer_length, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return refuse(local, remotes, ioError("rendezvous: accept"));
    }
    char host[NI_MAXHOST] = "?";
    char port[NI_MAXSERV] = "?";
    ::getnameinfo(reinterpret_cast<sockaddr*>(&peer), peer_length, host, sizeof(host), port,
                  sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV);
    Hello hello{};
    Status heard = readAll(fd, &hello, sizeof(hello), deadline, "rendezvous: hello");
    const int rank = static_cast<int>(hello.rank);
    if (heard.isOk()) {
      if (hello.magic != kHelloMagic) {
        heard = Status(StatusCode::invalid_argument, "not a dualpath-bench rank");
      } else if (static_cast<int>(hello.ranks) != me.ranks) {
        heard = Status(
            StatusCode::invalid_argument,
            fmt::format("rank {} runs {} ranks, rank 0 runs {}", rank, hello.ranks, me.ranks));
      } else if (rank <= 0 || rank >= me.ranks ||
                 std::any_of(remotes.begin(), remotes.end(),
                             [&](const Child& c) { return c.rank == rank; })) {
        heard = Status(StatusCode::invalid_argument,
                       fmt::format("rank {} is not a free rank of 1..{}", rank, me.ranks - 1));
      } else if (hello.digest != me.digest) {
        heard = Status(StatusCode::invalid_argument,
                       fmt::format("rank {} runs other options than rank 0 (every host must run "
                                   "the same command but for its rank)",
                                   rank));
      }
    }
    if (!heard.isOk()) {
      ::close(fd);
      return refuse(local, remotes,
                    std::move(heard).withContext(fmt::format("rendezvous: {}:{}", host, port)));
    }
    Child remote;
    remote.rank = rank;
    remote.fd = fd;
    remotes.push_back(std::move(remote));
  }
  std::vector<Child> children;
  children.push_back(std::move(local));
  for (Child& r : remotes) children.push_back(std::move(r));
  std::sort(children.begin(), children.end(),
            [](const Child& a, const Child& b) { return a.rank < b.rank; });
  return relay(children, deadline, timeout, after_failure);
}

}  // namespace dualpath::bench
