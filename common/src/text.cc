#include <algorithm>
#include <string>
#include <vector>

#include <dualpath/common/text.h>

namespace dualpath {
namespace {

std::size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      std::size_t substitution = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      row[j] = std::min({above + 1, row[j - 1] + 1, substitution});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

std::optional<std::string_view> closestMatch(std::string_view word,
                                             std::span<const std::string_view> candidates) {
  // A third of the word, at least two edits: catches "max_vl", "hihg_limit",
  // "vlarb-high" without proposing unrelated keys for short words.
  const std::size_t budget = std::max<std::size_t>(2, word.size() / 3);
  std::optional<std::string_view> best;
  std::size_t best_distance = budget + 1;
  for (std::string_view candidate : candidates) {
    std::size_t distance = editDistance(word, candidate);
    if (distance < best_distance) {
      best_distance = distance;
      best = candidate;
    }
  }
  return best;
}

std::string joinAlternatives(std::span<const std::string_view> words) {
  std::string out;
  for (std::size_t i = 0; i < words.size(); ++i) {
    if (i > 0) out += (i + 1 == words.size()) ? " or " : ", ";
    out += words[i];
  }
  return out;
}

std::string TextTable::render() const {
  std::vector<std::size_t> widths;
  for (const auto& row : rows_) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows_) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line.append(widths[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line;
    out += '\n';
  }
  return out;
}

std::string blankNonAsciiTomlComments(std::string_view text,
                                      std::vector<NonAsciiByte>& outside_comments) {
  enum class State { code, comment, basic, literal, multiline_basic, multiline_literal };
  constexpr std::string_view kBasicFence = R"(""")";
  constexpr std::string_view kLiteralFence = R"(''')";
  State state = State::code;
  std::string out(text);
  std::uint32_t line = 1;
  std::uint32_t column = 1;
  std::uint32_t reported_line = 0;
  std::size_t i = 0;
  // Consumes `token` at i if it is there.
  auto take = [&](std::string_view token) {
    if (text.substr(i, token.size()) != token) return false;
    i += token.size() - 1;
    column += static_cast<std::uint32_t>(token.size() - 1);
    return true;
  };
  auto skipEscaped = [&] {
    if (i + 1 < text.size() && text[i + 1] != '\n') {
      ++i;
      ++column;
    }
  };
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (static_cast<unsigned char>(c) >= 0x80) {
      if (state == State::comment) {
        out[i] = ' ';
      } else if (reported_line != line) {
        reported_line = line;
        outside_comments.push_back({line, column, static_cast<unsigned char>(c)});
      }
      ++column;
      continue;
    }
    switch (state) {
      case State::code:
        if (c == '#') {
          state = State::comment;
        } else if (take(kBasicFence)) {
          state = State::multiline_basic;
        } else if (take(kLiteralFence)) {
          state = State::multiline_literal;
        } else if (c == '"') {
          state = State::basic;
        } else if (c == '\'') {
          state = State::literal;
        }
        break;
      case State::comment:
        if (c == '\n') state = State::code;
        break;
      case State::basic:
        if (c == '\\') {
          skipEscaped();
        } else if (c == '"' || c == '\n') {
          state = State::code;
        }
        break;
      case State::literal:
        if (c == '\'' || c == '\n') state = State::code;
        break;
      case State::multiline_basic:
        if (c == '\\') {
          skipEscaped();
        } else if (take(kBasicFence)) {
          state = State::code;
        }
        break;
      case State::multiline_literal:
        if (take(kLiteralFence)) state = State::code;
        break;
    }
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return out;
}


}  // namespace dualpath
