#include "log_capture.h"

#include <mutex>

#include <gtest/gtest.h>

namespace dualpath::testing {
namespace {

std::mutex g_mu;
bool g_capturing = false;
log::Level g_capture_level = log::Level::warn;
std::vector<std::string> g_lines;

void guardingSink(log::Level level, const char* file, int line, std::string_view message) noexcept {
  std::string text = std::string(log::levelName(level)) + ": " + std::string(message);
  {
    std::lock_guard lock(g_mu);
    if (g_capturing) {
      if (level >= g_capture_level) g_lines.push_back(std::move(text));
      return;
    }
  }
  if (level >= log::Level::warn) {
    ADD_FAILURE_AT(file, line) << "unexpected log line: " << text;
  }
}

}  // namespace

LogCapture::LogCapture(log::Level min_level) : previous_level_(log::level()) {
  std::lock_guard lock(g_mu);
  g_capturing = true;
  g_capture_level = min_level;
  g_lines.clear();
  if (min_level < previous_level_) log::setLevel(min_level);
}

LogCapture::~LogCapture() {
  std::lock_guard lock(g_mu);
  g_capturing = false;
  g_lines.clear();
  log::setLevel(previous_level_);
}

std::vector<std::string> LogCapture::lines() const {
  std::lock_guard lock(g_mu);
  return g_lines;
}

void installUnexpectedLogGuard() {
  log::setSink(guardingSink);
}

}  // namespace dualpath::testing
