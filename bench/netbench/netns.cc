#include "netns.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <regex>
#include <sstream>

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <poll.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dualpath/common/log.h>

namespace dualpath::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct CommandOutput {
  int exit_code = -1;  // the exit status, or -1 when killed by a signal
  std::string out;
  std::string err;
};

std::string commandText(const std::vector<std::string>& argv) {
  return fmt::format("{}", fmt::join(argv, " "));
}

int remainingMs(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::clamp<std::int64_t>(left.count(), 0, 1'000'000));
}

// Runs argv (PATH lookup) with stdout and stderr captured, in its own process
// group so a timeout kills the script's children too. io when it cannot be
// started; timeout (naming the command) when it outlives `timeout`.
Result<CommandOutput> runCommand(const std::vector<std::string>& argv,
                                 std::chrono::milliseconds timeout) {
  const std::string text = commandText(argv);
  int out_pipe[2];
  int err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    return Status(StatusCode::io, fmt::format("{}: pipe: {}", text, std::strerror(errno)));
  }
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    const int saved = errno;
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    return Status(StatusCode::io, fmt::format("{}: pipe: {}", text, std::strerror(saved)));
  }
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int saved = errno;
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) ::close(fd);
    return Status(StatusCode::io, fmt::format("{}: fork: {}", text, std::strerror(saved)));
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    ::dup2(out_pipe[1], STDOUT_FILENO);
    ::dup2(err_pipe[1], STDERR_FILENO);
    ::execvp(args[0], args.data());
    const std::string why = fmt::format("exec {}: {}\n", argv[0], std::strerror(errno));
    [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, why.data(), why.size());
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  // The pid's own descriptor: its exit is one more thing to poll, so no wait
  // below can outlast the deadline.
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  const Clock::time_point deadline = Clock::now() + timeout;
  CommandOutput result;
  bool out_open = true;
  bool err_open = true;
  bool timed_out = false;
  while (out_open || err_open) {
    pollfd pfds[2] = {{out_open ? out_pipe[0] : -1, POLLIN, 0},
                      {err_open ? err_pipe[0] : -1, POLLIN, 0}};
    const int ready = ::poll(pfds, 2, remainingMs(deadline));
    if (ready == 0) {
      timed_out = true;
      break;
    }
    if (ready < 0) {
      if (errno == EINTR) continue;
      timed_out = true;  // cannot watch it any more: end it below
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (pfds[i].revents == 0) continue;
      char buffer[4096];
      const ssize_t n = ::read(pfds[i].fd, buffer, sizeof(buffer));
      if (n > 0) {
        (i == 0 ? result.out : result.err).append(buffer, static_cast<std::size_t>(n));
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        (i == 0 ? out_open : err_open) = false;
      }
    }
  }
  if (!timed_out && pidfd >= 0) {
    pollfd pfd{pidfd, POLLIN, 0};
    timed_out = ::poll(&pfd, 1, remainingMs(deadline)) == 0;
  }
  if (timed_out) ::kill(-pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (pidfd >= 0) ::close(pidfd);
  ::close(out_pipe[0]);
  ::close(err_pipe[0]);
  if (timed_out) {
    return Status(StatusCode::timeout,
                  fmt::format("'{}' still running after {} ms; killed", text, timeout.count()));
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// The script's failure text: its own message (it names the namespace, device
// or command) or, failing that, the exit status.
Status scriptFailure(const std::vector<std::string>& argv, const CommandOutput& output) {
  std::string why = output.err;
  while (!why.empty() && why.back() == '\n') why.pop_back();
  if (why.empty()) why = "no message";
  return Status(StatusCode::io,
                fmt::format("'{}' exited {}: {}", commandText(argv), output.exit_code, why));
}

std::string uniqueId() {
  // The pid keeps concurrent runs apart; the counter, clusters of one process.
  static std::atomic<int> made{0};
  return fmt::format("{}n{}", ::getpid(), made.fetch_add(1));
}

bool executable(const std::string& path) {
  return ::access(path.c_str(), X_OK) == 0;
}

bool onPath(const std::string& tool) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/sbin:/usr/bin:/sbin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (!dir.empty() && executable(dir + "/" + tool)) return true;
  }
  return false;
}

Status sysError(const std::string& what) {
  return Status(StatusCode::io, fmt::format("{}: {}", what, std::strerror(errno)));
}

}  // namespace

std::string tcRate(double gbps) {
  return fmt::format("{}kbit", static_cast<long long>(std::llround(gbps * 1e6)));
}

std::string defaultNetnsScript() {
  return DUALPATH_NETNS_SCRIPT;
}

std::string defaultQosBinary() {
  return DUALPATH_QOS_BINARY;
}

Status netnsAvailable(const std::string& script, const std::string& qos_binary) {
  if (::geteuid() != 0) {
    return Status(
        StatusCode::unsupported,
        fmt::format("network namespaces and tc need root (running as uid {})", ::geteuid()));
  }
  for (const char* tool : {"ip", "tc"}) {
    if (!onPath(tool)) {
      return Status(StatusCode::unsupported,
                    fmt::format("needs iproute2: '{}' is not on PATH", tool));
    }
  }
  if (!executable(script)) {
    return Status(StatusCode::unsupported, fmt::format("{}: not an executable script", script));
  }
  if (!executable(qos_binary)) {
    return Status(
        StatusCode::unsupported,
        fmt::format("{}: not an executable dualpath-qos (it renders the tc script)", qos_binary));
  }
  return Status::ok();
}

Status NetnsCluster::parseListing(const std::string& listing, bool with_nodes) {
  std::istringstream lines(listing);
  std::string line;
  classes_.clear();
  if (with_nodes) nodes_.clear();
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string kind;
    words >> kind;
    if (kind == "subnet") {
      words >> subnet_;
    } else if (kind == "class") {
      std::string name;
      std::string classid;
      words >> name >> classid;
      classes_.emplace_back(name, classid);
    } else if (kind == "node" && with_nodes) {
      NetnsNode node;
      words >> node.index >> node.ns >> node.device >> node.address;
      nodes_.push_back(node);
    } else if (kind == "storage" && with_nodes) {
      NetnsNode storage;
      storage.index = -1;
      words >> storage.ns >> storage.device >> storage.address;
      storage_ = storage;
    } else if (kind == "storage-link" && with_nodes) {
      int index = -1;
      std::string device, address;
      words >> index >> device >> address;
      if (index < 0 || index >= static_cast<int>(nodes_.size())) {
        return Status(StatusCode::internal,
                      fmt::format("{}: a storage link for node {} of {}:\n{}", options_.script,
                                  index, nodes_.size(), listing));
      }
      nodes_[static_cast<std::size_t>(index)].storage_device = device;
      nodes_[static_cast<std::size_t>(index)].storage_address = address;
    }
  }
  if (classes_.empty()) {
    return Status(StatusCode::internal,
                  fmt::format("{}: printed no 'class' line for cluster '{}':\n{}", options_.script,
                              id_, listing));
  }
  const bool storage_listed =
      storage_.has_value() && std::all_of(nodes_.begin(), nodes_.end(), [](const NetnsNode& n) {
        return !n.storage_device.empty();
      });
  if (with_nodes && storage_listed != !options_.storage_rate.empty()) {
    return Status(StatusCode::internal,
                  fmt::format("{}: storage links {}listed for cluster '{}' (storage rate '{}'):\n{}",
                              options_.script, storage_listed ? "" : "not ", id_,
                              options_.storage_rate, listing));
  }
  if (with_nodes && static_cast<int>(nodes_.size()) != options_.nodes) {
    return Status(StatusCode::internal,
                  fmt::format("{}: listed {} nodes of {} for cluster '{}':\n{}", options_.script,
                              nodes_.size(), options_.nodes, id_, listing));
  }
  return Status::ok();
}

Result<std::unique_ptr<NetnsCluster>> NetnsCluster::up(const NetnsOptions& options) {
  DP_TRY(netnsAvailable(options.script, options.qos_binary));
  std::unique_ptr<NetnsCluster> cluster(new NetnsCluster(options, uniqueId()));
  std::vector<std::string> argv = {options.script, "up",
                                   "--id",         cluster->id_,
                                   "--nodes",      std::to_string(options.nodes),
                                   "--policy",     options.policy_path,
                                   "--rate",       options.rate,
                                   "--qos",        options.qos_binary};
  if (!options.storage_rate.empty()) {
    argv.push_back("--storage-rate");
    argv.push_back(options.storage_rate);
  }
  // From here on the destructor runs `down`, whatever `up` did.
  cluster->up_ = true;
  DP_TRY_ASSIGN(CommandOutput output, runCommand(argv, options.command_timeout));
  if (output.exit_code != 0) return scriptFailure(argv, output);
  DP_TRY(cluster->parseListing(output.out, true));
  return cluster;
}

NetnsCluster::~NetnsCluster() {
  if (!up_) return;
  const std::vector<std::string> argv = {options_.script, "down", "--id", id_};
  Result<CommandOutput> output = runCommand(argv, options_.command_timeout);
  if (!output) {
    DP_LOG_ERROR("netns cluster '{}': {}; remove it with `{} down --id {}`", id_,
                 output.status().toString(), options_.script, id_);
  } else if (output->exit_code != 0) {
    DP_LOG_ERROR("netns cluster '{}': {}; remove it with `{} down --id {}`", id_,
                 scriptFailure(argv, *output).toString(), options_.script, id_);
  }
}

Status NetnsCluster::shape(const std::string& policy_path) {
  const std::vector<std::string> argv = {
      options_.script, "shape",  "--id",        id_,     "--policy",
      policy_path,     "--rate", options_.rate, "--qos", options_.qos_binary};
  DP_TRY_ASSIGN(CommandOutput output, runCommand(argv, options_.command_timeout));
  if (output.exit_code != 0) return scriptFailure(argv, output);
  return parseListing(output.out, false);
}

Result<std::vector<KernelClassCounters>> NetnsCluster::classCounters(int index) const {
  if (index < 0 || index >= static_cast<int>(nodes_.size())) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("netns cluster '{}': no node {}", id_, index));
  }
  const NetnsNode& node = nodes_[static_cast<std::size_t>(index)];
  const std::vector<std::string> argv = {options_.script,
                                         "exec",
                                         "--id",
                                         id_,
                                         "--node",
                                         std::to_string(index),
                                         "--",
                                         "tc",
                                         "-s",
                                         "class",
                                         "show",
                                         "dev",
                                         node.device};
  DP_TRY_ASSIGN(CommandOutput output, runCommand(argv, options_.command_timeout));
  if (output.exit_code != 0) return scriptFailure(argv, output);
  std::vector<KernelClassCounters> counters;
  for (const auto& [name, classid] : classes_) {
    // "class htb 1:11 parent 1:1 prio 1 rate ...\n Sent 123 bytes 4 pkt (...)"
    const std::regex pattern("class htb " + classid +
                             " [^\\n]*\\n\\s*Sent (\\d+) bytes (\\d+) pkt");
    std::smatch match;
    if (!std::regex_search(output.out, match, pattern)) {
      return Status(
          StatusCode::internal,
          fmt::format("{} on {} in {}: no counters for class '{}' ({}) in:\n{}", commandText(argv),
                      node.device, node.ns, name, classid, output.out));
    }
    counters.push_back(KernelClassCounters{name, classid, std::stoull(match[1].str()),
                                           std::stoull(match[2].str())});
  }
  return counters;
}

Result<std::uint64_t> NetnsCluster::storageLinkBytesToNode(int index) const {
  if (!storage_ || index < 0 || index >= static_cast<int>(nodes_.size())) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("netns cluster '{}': no storage link to node {}", id_, index));
  }
  const std::string device = fmt::format("dpst{}", index);  // scripts/netns-cluster.sh
  const std::vector<std::string> argv = {options_.script, "exec", "--id", id_, "--node",
                                         "storage", "--", "tc", "-s", "qdisc", "show", "dev",
                                         device};
  DP_TRY_ASSIGN(CommandOutput output, runCommand(argv, options_.command_timeout));
  if (output.exit_code != 0) return scriptFailure(argv, output);
  // "qdisc tbf 8001: root refcnt 2 rate ...\n Sent 123 bytes 4 pkt (...)"
  const std::regex pattern("qdisc tbf [^\\n]*\\n\\s*Sent (\\d+) bytes");
  std::smatch match;
  if (!std::regex_search(output.out, match, pattern)) {
    return Status(StatusCode::internal,
                  fmt::format("{}: no tbf counters on {} in {}:\n{}", commandText(argv), device,
                              storage_->ns, output.out));
  }
  return std::stoull(match[1].str());
}

Status enterNetnsNode(const NetnsNode& node) {
  const std::string path = "/run/netns/" + node.ns;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sysError(fmt::format("network namespace {}: opening {}", node.ns, path));
  const int joined = ::setns(fd, CLONE_NEWNET);
  const int saved = errno;
  ::close(fd);
  if (joined != 0) {
    errno = saved;
    return sysError(fmt::format("network namespace {}: setns", node.ns));
  }
  // A private mount namespace whose changes never propagate back to the host
  // (MS_SLAVE), so that the sysfs mounted below only this process sees.
  if (::unshare(CLONE_NEWNS) != 0) {
    return sysError(fmt::format("network namespace {}: unshare(CLONE_NEWNS)", node.ns));
  }
  if (::mount("", "/", nullptr, MS_SLAVE | MS_REC, nullptr) != 0) {
    return sysError(fmt::format("network namespace {}: making / a slave mount", node.ns));
  }
  // EINVAL: /sys was not a mount point; the new sysfs simply goes on top.
  if (::umount2("/sys", MNT_DETACH) != 0 && errno != EINVAL) {
    return sysError(fmt::format("network namespace {}: unmounting the host's /sys", node.ns));
  }
  if (::mount(node.ns.c_str(), "/sys", "sysfs", 0, nullptr) != 0) {
    return sysError(fmt::format("network namespace {}: mounting its sysfs on /sys", node.ns));
  }
  std::error_code ec;
  if (!std::filesystem::exists("/sys/class/net/" + node.device, ec)) {
    return Status(StatusCode::not_found,
                  fmt::format("network namespace {}: device {} is not in /sys/class/net", node.ns,
                              node.device));
  }
  // The transport (in the plugin) reads it when it starts: this rank's only link.
  if (::setenv("DUALPATH_NET_DEVICES", node.device.c_str(), 1) != 0) {
    return sysError("setenv DUALPATH_NET_DEVICES");
  }
  return Status::ok();
}

}  // namespace dualpath::bench
