#include <array>
#include <atomic>
#include <charconv>
#include <cstdlib>
#include <deque>

#include <fmt/format.h>

#include <dualpath/common/params.h>
#include <dualpath/common/thread_annotations.h>

namespace dualpath::params {

Result<std::string> PathKind::parse(std::string_view text) {
  return std::string(text);
}

Result<log::Level> LogLevelKind::parse(std::string_view text) {
  for (log::Level level : {log::Level::trace, log::Level::debug, log::Level::info, log::Level::warn,
                           log::Level::error, log::Level::off}) {
    if (text == log::levelName(level)) return level;
  }
  return Status(StatusCode::invalid_argument, fmt::format("expected {}", kForm));
}

Result<std::vector<std::string>> PatternListKind::parse(std::string_view text) {
  std::vector<std::string> patterns;
  if (text.empty()) return patterns;
  std::size_t begin = 0;
  while (true) {
    std::size_t end = text.find(',', begin);
    std::string_view item = text.substr(begin, end == std::string_view::npos ? end : end - begin);
    if (item.empty()) return Status(StatusCode::invalid_argument, fmt::format("empty item; expected {}", kForm));
    patterns.emplace_back(item);
    if (end == std::string_view::npos) return patterns;
    begin = end + 1;
  }
}

Result<std::uint32_t> MillisecondsKind::parse(std::string_view text) {
  std::uint64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value < 1 || value > 86'400'000) {
    return Status(StatusCode::invalid_argument, fmt::format("expected {}", kForm));
  }
  return static_cast<std::uint32_t>(value);
}

Result<bool> BoolKind::parse(std::string_view text) {
  if (text == "1" || text == "true" || text == "yes") return true;
  if (text == "0" || text == "false" || text == "no") return false;
  return Status(StatusCode::invalid_argument, fmt::format("expected {}", kForm));
}

std::string_view ioEngineName(IoEngine engine) noexcept {
  switch (engine) {
    case IoEngine::automatic:
      return "auto";
    case IoEngine::io_uring:
      return "io_uring";
    case IoEngine::pread:
      return "pread";
  }
  return "?";
}

std::string_view fsyncPolicyName(FsyncPolicy policy) noexcept {
  switch (policy) {
    case FsyncPolicy::none:
      return "none";
    case FsyncPolicy::data:
      return "data";
    case FsyncPolicy::full:
      return "full";
  }
  return "?";
}

Result<IoEngine> IoEngineKind::parse(std::string_view text) {
  for (IoEngine engine : {IoEngine::automatic, IoEngine::io_uring, IoEngine::pread}) {
    if (text == ioEngineName(engine)) return engine;
  }
  return Status(StatusCode::invalid_argument, fmt::format("expected {}", kForm));
}

Result<FsyncPolicy> FsyncPolicyKind::parse(std::string_view text) {
  for (FsyncPolicy policy : {FsyncPolicy::none, FsyncPolicy::data, FsyncPolicy::full}) {
    if (text == fsyncPolicyName(policy)) return policy;
  }
  return Status(StatusCode::invalid_argument, fmt::format("expected {}", kForm));
}

namespace {

#define DP_PARAM(member, NAME, Kind, default_text, help) \
  Spec{"DUALPATH_" #NAME, Kind::kForm, default_text, help},
constexpr std::array kRegistry{
#include <dualpath/common/params.def>
};
#undef DP_PARAM

template <class Kind>
Status parseOne(const EnvLookup& lookup, const char* env_name, std::string_view default_text,
                typename Kind::value_type& out) {
  const char* raw = lookup(env_name);
  std::string_view text = raw != nullptr ? std::string_view(raw) : default_text;
  Result<typename Kind::value_type> value = Kind::parse(text);
  if (!value) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("{}='{}': {}", env_name, text, value.status().message()));
  }
  out = std::move(value).value();
  return Status::ok();
}

}  // namespace

std::span<const Spec> registry() {
  return kRegistry;
}

Result<Snapshot> parse(const EnvLookup& lookup) {
  Snapshot snapshot;
#define DP_PARAM(member, NAME, Kind, default_text, help) \
  DP_TRY(parseOne<Kind>(lookup, "DUALPATH_" #NAME, default_text, snapshot.member));
#include <dualpath/common/params.def>
#undef DP_PARAM
  return snapshot;
}

namespace {

// Every parse of the process environment, kept until exit so that a pointer
// global() handed out never dangles after reloadAfterFork().
struct Parsed {
  Mutex mu;
  std::deque<Result<Snapshot>> all DP_GUARDED_BY(mu);
  std::atomic<const Result<Snapshot>*> current{nullptr};
};

Parsed& parsed() {
  static Parsed p;
  return p;
}

Result<const Snapshot*> view(const Result<Snapshot>& result) {
  if (!result) return result.status();
  return &*result;
}

// Parses, applies DUALPATH_LOG_LEVEL and logs what differs from a default.
const Result<Snapshot>* parseEnvironment(Parsed& p) DP_REQUIRES(p.mu) {
  Result<Snapshot>& result = p.all.emplace_back(parse([](const char* name) { return std::getenv(name); }));
  if (result) {
    log::setLevel(result->log_level);
    for (const Spec& spec : kRegistry) {
      const char* raw = std::getenv(std::string(spec.env_name).c_str());
      if (raw != nullptr && std::string_view(raw) != spec.default_text) {
        DP_LOG_INFO("{}={} (default '{}')", spec.env_name, raw, spec.default_text);
      }
    }
  }
  p.current.store(&result, std::memory_order_release);
  return &result;
}

}  // namespace

Result<const Snapshot*> global() {
  Parsed& p = parsed();
  if (const Result<Snapshot>* current = p.current.load(std::memory_order_acquire)) {
    return view(*current);
  }
  MutexLock lock(p.mu);
  const Result<Snapshot>* current = p.current.load(std::memory_order_acquire);
  return view(current != nullptr ? *current : *parseEnvironment(p));
}

Result<const Snapshot*> reloadAfterFork() {
  Parsed& p = parsed();
  MutexLock lock(p.mu);
  return view(*parseEnvironment(p));
}

}  // namespace dualpath::params
