// Runs a command-line tool's run() in-process, as the tools' tests do:
// `dualpath-qos` and `dualpath-topo` keep their commands in a library so tests
// see the exit code and both streams without spawning a process.
//
// Threading: runCli is reentrant; writeTempFile writes under GoogleTest's
// temporary directory.
#pragma once

#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

namespace dualpath::test_support {

using CliMain = int (*)(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

struct CliRun {
  int code = 0;
  std::string out;
  std::string err;
};

// argv[0] is `program`; `args` follow.
CliRun runCli(CliMain main, std::string_view program, const std::vector<std::string>& args);

// Writes `text` to `name` in the test's temporary directory; returns the path.
std::string writeTempFile(const std::string& name, const std::string& text);

}  // namespace dualpath::test_support
