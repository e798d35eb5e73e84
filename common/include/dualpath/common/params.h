// DualPath's environment variables: one registry (params.def), parsed once.
//
// Every knob is DUALPATH_<AREA>_<KNOB>, declared with its type, default and
// help in params.def. global() parses the whole environment once, into an
// immutable Snapshot; any invalid value fails the parse with the variable's
// name and the expected form, and every later call returns the same error.
// Values that differ from their default are logged once, at info.
//
// Threading: global() and reloadAfterFork() are thread-safe; a Snapshot is
// immutable and lives until exit. parse() is pure, for tests.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>
#include <cstdint>

#include <dualpath/common/log.h>
#include <dualpath/common/status.h>

namespace dualpath::params {

// Kinds of values. Each parses text into its value_type with an error that
// states the expected form.
struct PathKind {
  using value_type = std::string;
  static constexpr std::string_view kForm = "a file path";
  static Result<value_type> parse(std::string_view text);
};
struct LogLevelKind {
  using value_type = log::Level;
  static constexpr std::string_view kForm = "trace, debug, info, warn, error or off";
  static Result<value_type> parse(std::string_view text);
};

struct PatternListKind {
  using value_type = std::vector<std::string>;
  static constexpr std::string_view kForm = "comma-separated non-empty shell patterns";
  static Result<value_type> parse(std::string_view text);
};
struct MillisecondsKind {
  using value_type = std::uint32_t;
  static constexpr std::string_view kForm = "an integer number of milliseconds, 1 to 86400000";
  static Result<value_type> parse(std::string_view text);
};
struct BoolKind {
  using value_type = bool;
  static constexpr std::string_view kForm = "0, 1, false, true, no or yes";
  static Result<value_type> parse(std::string_view text);
};

// The loader's choices. The enums live here, beside their kinds, because
// common depends on no other area; the loader's options use them directly.
//
// IoEngine: how the loader's POSIX store reads blocks. automatic uses io_uring
// and falls back to pread when the kernel refuses a ring (EPERM, ENOSYS: a
// container's seccomp profile).
enum class IoEngine : std::uint8_t { automatic, io_uring, pread };
// FsyncPolicy: what a block write makes durable before it returns. none: the
// page cache only; data: the block file is fsynced before it is renamed into
// place; full: the file and then its directory.
enum class FsyncPolicy : std::uint8_t { none, data, full };

std::string_view ioEngineName(IoEngine engine) noexcept;        // "auto", "io_uring", "pread"
std::string_view fsyncPolicyName(FsyncPolicy policy) noexcept;  // "none", "data", "full"

struct IoEngineKind {
  using value_type = IoEngine;
  static constexpr std::string_view kForm = "auto, io_uring or pread";
  static Result<value_type> parse(std::string_view text);
};
struct FsyncPolicyKind {
  using value_type = FsyncPolicy;
  static constexpr std::string_view kForm = "none, data or full";
  static Result<value_type> parse(std::string_view text);
};

struct Snapshot {
#define DP_PARAM(member, NAME, Kind, default_text, help) Kind::value_type member{};
#include <dualpath/common/params.def>
#undef DP_PARAM
};

struct Spec {
  std::string_view env_name;  // "DUALPATH_QOS_POLICY"
  std::string_view form;      // what a valid value looks like
  std::string_view default_text;
  std::string_view help;
};

std::span<const Spec> registry();

// Returns the variable's value, or nullptr when unset.
using EnvLookup = std::function<const char*(const char* name)>;

Result<Snapshot> parse(const EnvLookup& lookup);

// The process environment, parsed once. The error, if any, is sticky.
Result<const Snapshot*> global();

// Parses the environment again; global() returns the result from now on.
// Only for a process forked to run with another environment (a benchmark's
// ranks, each with its own policy or network device): fork() copies the
// parent's snapshot, and this library is shared with the NCCL plugin, so a
// plugin loaded in the child would otherwise see the parent's parameters.
// Call it after changing the environment, before any engine exists in the
// child. Snapshots returned earlier stay valid, with their old values.
Result<const Snapshot*> reloadAfterFork();

}  // namespace dualpath::params
