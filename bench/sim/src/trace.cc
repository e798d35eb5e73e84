#include <dualpath/sim/trace.h>

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace dualpath::sim {
namespace {

// splitmix64: small, fast, and the same everywhere (std:: distributions are not).
class Random {
 public:
  explicit Random(std::uint64_t seed) : state_(seed) {}

  std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1]: never 0, so log() below is finite.
  double unit() noexcept { return (static_cast<double>(next() >> 11) + 1.0) * 0x1.0p-53; }
  double exponential(double mean) noexcept { return -std::log(unit()) * mean; }
  // An exponential length around `mean`, clamped to [1, 8 x mean].
  std::uint64_t length(std::uint64_t mean) noexcept {
    const double drawn = std::round(exponential(static_cast<double>(mean)));
    return static_cast<std::uint64_t>(std::clamp(drawn, 1.0, 8.0 * static_cast<double>(mean)));
  }

 private:
  std::uint64_t state_;
};

std::uint64_t wholeBlocks(std::uint64_t tokens, std::uint32_t block_tokens) {
  return tokens / block_tokens * block_tokens;
}

}  // namespace

Result<Trace> makeTrace(const TraceShape& shape, std::uint32_t block_tokens, Arrivals arrivals,
                        double agents_per_second) {
  DP_TRY(shape.validate());
  if (block_tokens == 0) return Status(StatusCode::invalid_argument, "trace: block_tokens is 0");
  if (arrivals == Arrivals::online && !(agents_per_second > 0 && std::isfinite(agents_per_second))) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("trace: agents_per_second {} must be positive for online arrivals",
                              agents_per_second));
  }
  Trace trace;
  trace.agent_start_seconds.reserve(shape.agents);
  trace.first_turn.reserve(shape.agents + 1);
  Random arrival_random(shape.seed ^ 0x5bd1e995ULL);
  double clock = 0;
  for (std::uint32_t agent = 0; agent < shape.agents; ++agent) {
    // Each agent draws from its own stream, so adding agents leaves the
    // earlier ones' sessions unchanged.
    Random random(shape.seed * 0x100000001b3ULL + agent);
    if (arrivals == Arrivals::online) clock += arrival_random.exponential(1.0 / agents_per_second);
    trace.agent_start_seconds.push_back(clock);
    trace.first_turn.push_back(static_cast<std::uint32_t>(trace.turns.size()));

    std::uint64_t context = std::min(random.length(shape.initial_tokens_mean),
                                     shape.max_context_tokens - 1);
    std::uint64_t cached = 0;
    while (true) {
      const std::uint64_t generated = std::max<std::uint64_t>(2, random.length(shape.generated_tokens_mean));
      trace.turns.push_back(Turn{.tokens = static_cast<std::uint32_t>(context),
                                 .cached_tokens = static_cast<std::uint32_t>(cached),
                                 .generated_tokens = static_cast<std::uint32_t>(generated),
                                 .tool_seconds = static_cast<float>(
                                     shape.tool_seconds_mean > 0
                                         ? random.exponential(shape.tool_seconds_mean)
                                         : 0.0)});
      trace.prompt_tokens += context;
      trace.cached_tokens += cached;
      trace.generated_tokens += generated;
      trace.longest_context = std::max(trace.longest_context, static_cast<std::uint32_t>(context));
      // The next turn: this context and its reply, whole blocks of which are
      // in storage, plus the next append. The session ends at the maximum.
      const std::uint64_t append = random.length(shape.append_tokens_mean);
      const std::uint64_t next = context + generated + append;
      if (next > shape.max_context_tokens) break;
      cached = wholeBlocks(context + generated, block_tokens);
      trace.append_tokens += append;
      context = next;
    }
  }
  trace.first_turn.push_back(static_cast<std::uint32_t>(trace.turns.size()));
  return trace;
}

}  // namespace dualpath::sim
