// `dualpath-qos`: the cluster admin's tool for QoS policy files.
//
//   validate  check a policy; exit 0 valid, 2 errors (--strict: warnings too)
//   render    opensm | roce | tc | env configuration from a policy
//   explain   what the policy does, as a table or --json
//   check     compare captured smpquery output with the policy (exit 1 on mismatch)
//   params    DualPath's environment variables, their values and defaults
//   builtin   print the built-in policy used when DUALPATH_QOS_POLICY is unset
//
// The commands live here, not in main(), so tests run them in-process.
// Threading: run() is reentrant; it writes only to the streams it is given.
#pragma once

#include <iosfwd>

namespace dualpath::qos::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitMismatch = 1;  // `check`: the fabric differs from the policy
inline constexpr int kExitInvalid = 2;   // bad policy, bad arguments, unreadable input

int run(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

}  // namespace dualpath::qos::cli
