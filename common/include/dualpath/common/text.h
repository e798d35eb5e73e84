// Small text helpers shared by parsers and command-line tools.
//
// Threading: pure functions.
#pragma once

#include <cstdint>
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

// A non-ASCII byte of a TOML file found outside its comments (1-based).
struct NonAsciiByte {
  std::uint32_t line = 0;
  std::uint32_t column = 0;
  unsigned char value = 0;
};

// toml++ 3.3.0, the version Debian 12 ships, reaches __builtin_unreachable()
// while classifying some non-ASCII code points (is_non_ascii_horizontal_
// whitespace on U+00E9, found by tests/fuzz): undefined behaviour. So toml++
// only ever sees ASCII. Returns `text` with every non-ASCII byte inside a
// comment blanked, and appends to `outside_comments` the first non-ASCII byte
// of each line outside comments, for the caller to report as errors. Strings
// are tracked so that a '#' inside one does not start a comment.
std::string blankNonAsciiTomlComments(std::string_view text,
                                      std::vector<NonAsciiByte>& outside_comments);

}  // namespace dualpath
