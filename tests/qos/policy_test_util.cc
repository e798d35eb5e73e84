#include "policy_test_util.h"

#include <sstream>

namespace dualpath::qos::testing {

std::string replaceLine(const std::string& base, int line, const std::string& text) {
  std::istringstream in(base);
  std::string out;
  std::string current;
  for (int number = 1; std::getline(in, current); ++number) {
    if (number == line) {
      if (!text.empty()) out += text + "\n";
    } else {
      out += current + "\n";
    }
  }
  return out;
}

std::string appendLines(const std::string& base, const std::string& text) {
  return base + text + "\n";
}

std::vector<std::string> diagnosticTexts(const LoadedPolicy& loaded) {
  std::vector<std::string> texts;
  for (const Diagnostic& d : loaded.diagnostics) texts.push_back(d.toString());
  return texts;
}

LoadedPolicy loadTestPolicy(const std::string& text) {
  return loadPolicyText(text, "policy.toml");
}

}  // namespace dualpath::qos::testing
