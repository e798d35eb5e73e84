#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <dualpath/common/log.h>

namespace dualpath::log {

namespace detail {
std::atomic<Level> g_level{Level::warn};
}  // namespace detail

namespace {

std::atomic<Sink> g_sink{nullptr};
thread_local const ScopedRoute* t_route = nullptr;

spdlog::level::level_enum toSpdlog(Level level) noexcept {
  switch (level) {
    case Level::trace:
      return spdlog::level::trace;
    case Level::debug:
      return spdlog::level::debug;
    case Level::info:
      return spdlog::level::info;
    case Level::warn:
      return spdlog::level::warn;
    case Level::error:
      return spdlog::level::err;
    case Level::off:
      return spdlog::level::off;
  }
  return spdlog::level::err;
}

spdlog::logger& spdlogLogger() {
  // A private logger (not spdlog's registry default) so an application that
  // configures spdlog for itself keeps its own settings.
  static const std::shared_ptr<spdlog::logger> logger = [] {
    auto created = std::make_shared<spdlog::logger>(
        "dualpath", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    created->set_pattern("[%H:%M:%S.%e] [dualpath] [%^%l%$] %v");
    created->set_level(spdlog::level::trace);  // our own level check runs first
    return created;
  }();
  return *logger;
}

void spdlogSink(Level level, const char* /*file*/, int /*line*/,
                std::string_view message) noexcept {
  try {
    spdlogLogger().log(toSpdlog(level), "{}", message);
  } catch (...) {
    // Nothing left to report the failure to.
  }
}

}  // namespace

std::string_view levelName(Level level) noexcept {
  switch (level) {
    case Level::trace:
      return "trace";
    case Level::debug:
      return "debug";
    case Level::info:
      return "info";
    case Level::warn:
      return "warn";
    case Level::error:
      return "error";
    case Level::off:
      return "off";
  }
  return "unknown";
}

void setSink(Sink sink) noexcept {
  g_sink.store(sink, std::memory_order_release);
}

void setLevel(Level level) noexcept {
  detail::g_level.store(level, std::memory_order_relaxed);
}

Level level() noexcept {
  return detail::g_level.load(std::memory_order_relaxed);
}

ScopedRoute::ScopedRoute(Sink route_sink, Level route_level) noexcept
    : outer_(t_route), sink_(route_sink), level_(route_level) {
  t_route = this;
}

ScopedRoute::~ScopedRoute() {
  t_route = outer_;
}

bool detail::routedEnabled(Level level) noexcept {
  const ScopedRoute* route = t_route;
  return route != nullptr && level >= route->level();
}

void detail::emit(Level level, const char* file, int line, std::string_view message) noexcept {
  if (const ScopedRoute* route = t_route) {
    // A sink that itself logs through this facade (a host's NCCL logger that
    // forwards to DualPath's log, as the benchmarks' does) reaches the outer
    // route or the process sink, not itself again.
    t_route = route->outer();
    route->sink()(level, file, line, message);
    t_route = route;
    return;
  }
  Sink sink = g_sink.load(std::memory_order_acquire);
  (sink != nullptr ? sink : spdlogSink)(level, file, line, message);
}

}  // namespace dualpath::log
