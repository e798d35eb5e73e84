// Small text helpers shared by parsers and command-line tools.
//
// Threading: pure functions.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dualpath {

// The candidate closest to `word` by edit distance, when close enough to be a
// plausible typo ("max_vl" -> "max_vls"); for "did you mean" hints.
std::optional<std::string_view> closestMatch(std::string_view word,
                                             std::span<const std::string_view> candidates);

// "a, b or c"
std::string joinAlternatives(std::span<const std::string_view> words);

// Left-aligned text columns separated by two spaces, for terminal reports.
class TextTable {
 public:
  explicit TextTable(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void addRow(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  // Every line, including the last, ends in '\n'; no trailing blanks.
  std::string render() const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace dualpath
