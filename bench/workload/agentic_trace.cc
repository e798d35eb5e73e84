#include "agentic_trace.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <string>

#include <fmt/format.h>

namespace dualpath::bench {

using loader::BlockId;
using loader::TokenId;

Result<AgenticTrace> makeAgenticTrace(const AgenticTraceShape& shape,
                                      const loader::ModelSpec& model) {
  auto bad = [](std::string_view field, std::string_view why) {
    return Status(StatusCode::invalid_argument,
                         fmt::format("agentic trace: {} {}", field, why));
  };
  if (shape.sessions == 0) return bad("sessions", "must be at least 1");
  if (shape.turns == 0) return bad("turns", "must be at least 1");
  if (shape.initial_blocks_min == 0) return bad("initial_blocks_min", "must be at least 1");
  if (shape.initial_blocks_min > shape.initial_blocks_max)
    return bad("initial_blocks_max", "is below initial_blocks_min");
  if (shape.new_tokens_min == 0) return bad("new_tokens_min", "must be at least 1");
  if (shape.new_tokens_min > shape.new_tokens_max)
    return bad("new_tokens_max", "is below new_tokens_min");
  if (model.block_tokens == 0) return bad("model block_tokens", "must be at least 1");

  std::mt19937_64 rng(shape.seed);
  auto uniform = [&](std::uint64_t lo, std::uint64_t hi) {
    return std::uniform_int_distribution<std::uint64_t>(lo, hi)(rng);
  };
  const std::uint64_t bt = model.block_tokens;
  struct Turn {
    std::uint64_t tokens, cached, reply;
  };
  AgenticTrace trace;
  std::vector<std::vector<Turn>> turns(shape.sessions);
  for (std::uint32_t s = 0; s < shape.sessions; ++s) {
    // Context already in storage before turn 0 (an agent's earlier history).
    std::uint64_t context =
        uniform(shape.initial_blocks_min, shape.initial_blocks_max) * bt + uniform(0, bt - 1);
    for (std::uint32_t t = 0; t < shape.turns; ++t) {
      const std::uint64_t cached = context / bt * bt;
      const std::uint64_t request = context + uniform(shape.new_tokens_min, shape.new_tokens_max);
      const std::uint64_t reply = uniform(shape.new_tokens_min, shape.new_tokens_max);
      turns[s].push_back({request, cached, reply});
      context = request + reply;
    }
    std::vector<TokenId> tokens(context);
    for (TokenId& tok : tokens) tok = static_cast<TokenId>(uniform(0, 150'000));
    trace.session_blocks.push_back(loader::blockIds(tokens, model.block_tokens));
    trace.session_tokens.push_back(std::move(tokens));
  }
  for (std::uint32_t t = 0; t < shape.turns; ++t) {
    for (std::uint32_t s = 0; s < shape.sessions; ++s) {
      const Turn& turn = turns[s][t];
      const std::vector<BlockId>& ids = trace.session_blocks[s];
      TraceRequest r{.id = trace.requests.size(),
                     .session = s,
                     .turn = t,
                     .tokens = turn.tokens,
                     .cached_tokens = turn.cached,
                     .reply_tokens = turn.reply,
                     .blocks = {}};
      r.blocks.assign(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(turn.cached / bt));
      for (const BlockId& id : r.blocks) trace.checksums.emplace(id, 0);
      trace.tokens += r.tokens;
      trace.cached_tokens += r.cached_tokens;
      trace.reply_tokens += r.reply_tokens;
      trace.block_reads += r.blocks.size();
      trace.max_blocks = std::max(trace.max_blocks, r.blocks.size());
      trace.max_new_blocks = std::max<std::size_t>(
          trace.max_new_blocks, (r.tokens + bt - 1) / bt - r.cached_tokens / bt);
      trace.requests.push_back(std::move(r));
    }
  }
  return trace;
}

void fillBlockPayload(const BlockId& id, std::uint64_t seed, std::span<std::byte> out) {
  std::uint64_t x = (id.hi ^ (id.lo * 0x9e3779b97f4a7c15ULL) ^ seed) | 1;
  std::size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out.data() + i, &x, 8);
  }
  for (; i < out.size(); ++i) out[i] = static_cast<std::byte>(i);
}

}  // namespace dualpath::bench
