// Loading and validating a QoS policy file.
//
// The loader reads TOML, builds a Policy and checks it against the fabric's
// rules. Every problem becomes a Diagnostic that names the file, line, column
// and field ("paper-ib.toml:14:9: error: class[1].ib_sl: 16 is out of range
// ..."). Loading reports every problem of a stage at once: non-ASCII text
// outside comments and syntax errors first (parsing stops there), then every
// key, type and range error; the rules that relate fields run when every field
// has a valid value. A policy with
// errors yields no Policy; warnings leave it usable.
//
// Threading: pure functions of their input; call from any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/qos/policy.h>

namespace dualpath::qos {

enum class Severity : std::uint8_t { error, warning };

struct Diagnostic {
  Severity severity = Severity::error;
  std::string file;
  SourceLocation where;
  std::string field;  // "fabric.sl2vl[4]"; empty for syntax errors
  std::string message;

  // "file:line:column: error: field: message"
  std::string toString() const;
};

struct LoadedPolicy {
  std::optional<Policy> policy;  // set when there is no error
  std::vector<Diagnostic> diagnostics;

  std::size_t errorCount() const;
  std::size_t warningCount() const;
};

// `source_name` names the text in diagnostics (normally the file path).
LoadedPolicy loadPolicyText(std::string_view text, std::string source_name);
LoadedPolicy loadPolicyFile(const std::string& path);
// A file, or the built-in policy when `path` is empty (DUALPATH_QOS_POLICY's rule).
LoadedPolicy loadPolicy(const std::string& path);

// The policy used when DUALPATH_QOS_POLICY is unset: collectives on the
// default high-priority class, KV relays on a low-priority class keeping 5%
// under contention. It sets no fabric QoS (Ethernet, DSCP only).
std::string_view builtinPolicyText();
inline constexpr std::string_view kBuiltinPolicyName = "<built-in>";

// For programs that need a Policy or a reason: loads `path` (the built-in
// policy when empty), logs each warning, and fails with every error in the
// message. With `warnings_are_errors`, warnings fail too.
Result<Policy> loadPolicyOrError(const std::string& path, bool warnings_are_errors);

}  // namespace dualpath::qos
