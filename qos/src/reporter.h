// Collects the diagnostics of one policy load (internal to libdualpath_qos).
//
// Threading: one Reporter per load, single-threaded.
#pragma once

#include <string>
#include <vector>

#include <dualpath/qos/policy_loader.h>

namespace dualpath::qos::detail {

class Reporter {
 public:
  explicit Reporter(std::string file) : file_(std::move(file)) {}

  void error(SourceLocation where, std::string field, std::string message) {
    add(Severity::error, where, std::move(field), std::move(message));
  }
  void warning(SourceLocation where, std::string field, std::string message) {
    add(Severity::warning, where, std::move(field), std::move(message));
  }

  bool hasErrors() const { return errors_ > 0; }
  const std::string& file() const { return file_; }
  std::vector<Diagnostic> take() { return std::move(diagnostics_); }

 private:
  void add(Severity severity, SourceLocation where, std::string field, std::string message) {
    if (severity == Severity::error) ++errors_;
    diagnostics_.push_back({severity, file_, where, std::move(field), std::move(message)});
  }

  std::string file_;
  std::vector<Diagnostic> diagnostics_;
  std::size_t errors_ = 0;
};

// Cross-field rules (validate.cc), run once every field has a valid value.
void validatePolicy(const Policy& policy, Reporter& reporter);

}  // namespace dualpath::qos::detail
