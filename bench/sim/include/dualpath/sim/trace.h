// The simulator's agentic trace: agents (sessions) of turns, drawn from a
// TraceShape and a seed with a generator of our own (splitmix64 and inverse
// transforms), so a seed gives the same trace with every standard library.
//
// Turn k of an agent prefills `tokens` tokens of context, of which the first
// `cached_tokens` (whole blocks: what earlier turns wrote back) are read from
// storage, and generates `generated_tokens`. The next turn's context is this
// one's plus the reply plus its own append.
//
// Threading: values and pure functions only.
#pragma once

#include <cstdint>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/sim/config.h>

namespace dualpath::sim {

struct Turn {
  std::uint32_t tokens = 0;
  std::uint32_t cached_tokens = 0;
  std::uint32_t generated_tokens = 0;
  float tool_seconds = 0;  // after the reply, before the next turn
};

struct Trace {
  std::vector<double> agent_start_seconds;  // one per agent
  std::vector<std::uint32_t> first_turn;    // agent i's turns: [first_turn[i], first_turn[i + 1])
  std::vector<Turn> turns;
  std::uint64_t prompt_tokens = 0, cached_tokens = 0, generated_tokens = 0;
  std::uint64_t append_tokens = 0;  // new tokens of turns after the first
  std::uint32_t longest_context = 0;

  std::uint32_t agents() const noexcept {
    return static_cast<std::uint32_t>(agent_start_seconds.size());
  }
  std::uint32_t turnsOf(std::uint32_t agent) const noexcept {
    return first_turn[agent + 1] - first_turn[agent];
  }
  double hitRate() const noexcept {
    return prompt_tokens == 0 ? 0
                              : static_cast<double>(cached_tokens) / static_cast<double>(prompt_tokens);
  }
};

// Agents start at 0 (offline) or as a Poisson process (online). The error
// names the field of a shape that cannot make one turn.
Result<Trace> makeTrace(const TraceShape& shape, std::uint32_t block_tokens, Arrivals arrivals,
                        double agents_per_second);

}  // namespace dualpath::sim
