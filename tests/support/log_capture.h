// Test support: DualPath's log lines under test.
//
// Every test binary's main() installs a log sink under which a warning or an
// error that no LogCapture expects fails the running test, naming the line.
// A test that expects log lines holds a LogCapture and asserts on lines().
//
// Threading: the sink is thread-safe; a LogCapture belongs to one test.
#pragma once

#include <string>
#include <vector>

#include <dualpath/common/log.h>

namespace dualpath::testing {

class LogCapture {
 public:
  // Collects lines at `min_level` and above while alive.
  explicit LogCapture(log::Level min_level = log::Level::warn);
  ~LogCapture();
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  // "warn: <message>", in order.
  std::vector<std::string> lines() const;

 private:
  log::Level previous_level_;
};

// Installs the guarding sink; called by the test main().
void installUnexpectedLogGuard();

}  // namespace dualpath::testing
