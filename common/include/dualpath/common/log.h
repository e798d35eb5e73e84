// The one logging facade of DualPath.
//
// Callers format with fmt syntax; the formatted line goes to one process-wide
// sink. The default sink is spdlog on stderr, quiet by default (warnings and
// errors only; DUALPATH_LOG_LEVEL raises it).
//
// A ScopedRoute sends the lines its thread writes, while it lives, to another
// sink at another level. The NCCL plugin routes each of its calls to NCCL's
// logger this way, so NCCL_DEBUG governs the lines of NCCL's connections while
// the loader's lines in the same process (the library is shared) stay on
// spdlog.
//
// Threading: logging is thread-safe. setSink()/setLevel() are meant for start-up
// (they are atomic, but a line racing a sink change may reach either sink).
// A ScopedRoute affects only its own thread and must end on it.
// DP_LOG_TRACE compiles out of release (NDEBUG) builds.
#pragma once

#include <atomic>
#include <cstdint>
#include <string_view>

#include <fmt/format.h>

namespace dualpath::log {

enum class Level : std::uint8_t { trace, debug, info, warn, error, off };

std::string_view levelName(Level level) noexcept;

// A sink receives one formatted line (without a trailing newline). It must not
// throw and must be callable from any thread.
using Sink = void (*)(Level level, const char* file, int line, std::string_view message) noexcept;

void setSink(Sink sink) noexcept;  // nullptr restores the spdlog sink
void setLevel(Level level) noexcept;
Level level() noexcept;

// While alive, this thread's lines go to `sink` only, and lines down to
// `level` are written even below the process level (a route lowers the
// threshold on its thread, never raises it). Routes nest; the innermost one
// wins. Cheap enough for every call of a hot path: two thread-local writes,
// no atomic.
class ScopedRoute {
 public:
  ScopedRoute(Sink route_sink, Level route_level) noexcept;
  ~ScopedRoute();
  ScopedRoute(const ScopedRoute&) = delete;
  ScopedRoute& operator=(const ScopedRoute&) = delete;

  Sink sink() const noexcept { return sink_; }
  Level level() const noexcept { return level_; }
  const ScopedRoute* outer() const noexcept { return outer_; }

 private:
  const ScopedRoute* outer_;
  Sink sink_;
  Level level_;
};

namespace detail {
extern std::atomic<Level> g_level;
// Whether this thread's route asks for `level` (false without a route).
bool routedEnabled(Level level) noexcept;
void emit(Level level, const char* file, int line, std::string_view message) noexcept;
}  // namespace detail

// Lines at the process level and above cost one relaxed load; only a line
// below it looks for this thread's route.
inline bool enabled(Level l) noexcept {
  return l >= detail::g_level.load(std::memory_order_relaxed) || detail::routedEnabled(l);
}

template <class... Args>
void write(Level l, const char* file, int line, fmt::format_string<Args...> format,
           Args&&... args) noexcept {
  try {
    fmt::memory_buffer buffer;
    fmt::format_to(std::back_inserter(buffer), format, std::forward<Args>(args)...);
    detail::emit(l, file, line, std::string_view(buffer.data(), buffer.size()));
  } catch (...) {
    // Formatting can only fail on allocation; a lost log line must not take
    // the caller (possibly NCCL's progress thread) down with it.
  }
}

}  // namespace dualpath::log

#define DP_LOG_AT(lvl, ...)                                         \
  do {                                                              \
    if (::dualpath::log::enabled(lvl))                              \
      ::dualpath::log::write(lvl, __FILE__, __LINE__, __VA_ARGS__); \
  } while (0)

#define DP_LOG_ERROR(...) DP_LOG_AT(::dualpath::log::Level::error, __VA_ARGS__)
#define DP_LOG_WARN(...) DP_LOG_AT(::dualpath::log::Level::warn, __VA_ARGS__)
#define DP_LOG_INFO(...) DP_LOG_AT(::dualpath::log::Level::info, __VA_ARGS__)
#define DP_LOG_DEBUG(...) DP_LOG_AT(::dualpath::log::Level::debug, __VA_ARGS__)
#ifdef NDEBUG
#define DP_LOG_TRACE(...) \
  do {                    \
  } while (0)
#else
#define DP_LOG_TRACE(...) DP_LOG_AT(::dualpath::log::Level::trace, __VA_ARGS__)
#endif
