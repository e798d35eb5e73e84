// KV-cache blocks: their layout and their identity.
//
// Layout (DualPath paper, App. A.5). A Layer Block is [1, tokens, bytes]: the
// KV of `block_tokens` tokens for one layer, `kv_bytes_per_token_per_layer`
// bytes per token. A Full Block is [layers, tokens, bytes]: its Layer Blocks end
// to end, layer-major, so Layer Block l starts at l x layerBlockBytes(). Storage
// moves Full Blocks; layerwise copies move Layer Blocks. The geometry comes from
// scheduler::ModelSpec (the presets "deepseek-v3.2", "qwen2.5-32b", "tiny").
//
// Identity. Blocks form a trie, as in vLLM's prefix caching: the id of block k
// of a token sequence is H(id of block k-1, token ids of block k), and block 0
// hangs off a fixed root. H is XXH3-128 over the parent id and the tokens, both
// little-endian, so an id names a whole prefix, not just one block's tokens.
// Only full blocks get ids: a trailing partial block is not cacheable.
// Ids do not include the model: keep one store (directory) per model; a store
// also rejects a block whose header carries another geometry.
//
// Threading: values and pure functions.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/scheduler/cost_model.h>

namespace dualpath::loader {

using scheduler::ModelSpec;
using TokenId = std::uint32_t;

// A 128-bit block id. Printed as 32 lowercase hex digits, `hi` first.
struct BlockId {
  std::uint64_t hi = 0;
  std::uint64_t lo = 0;

  friend constexpr auto operator<=>(const BlockId&, const BlockId&) = default;

  std::string toHex() const;
  // Exactly 32 hex digits (either case). The error quotes the text.
  static Result<BlockId> fromHex(std::string_view text);
};

// The parent of every sequence's first block: XXH3-128 of "dualpath.kv.root.v1".
BlockId rootBlockId() noexcept;

// H(parent, tokens): the id of the block holding `tokens` under `parent`.
BlockId chainBlockId(const BlockId& parent, std::span<const TokenId> tokens) noexcept;

// The ids of the full blocks of `tokens`, in order, cut every `block_tokens`
// tokens (which must be positive); a trailing partial block gets none.
std::vector<BlockId> blockIds(std::span<const TokenId> tokens, std::uint32_t block_tokens,
                              const BlockId& root = rootBlockId());

// Where Layer Block `layer` sits inside a Full Block.
struct ByteRange {
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
};

// Precondition: layer < model.layers.
inline ByteRange layerBlockRange(const ModelSpec& model, std::uint32_t layer) noexcept {
  return ByteRange{.offset = std::uint64_t{layer} * model.layerBlockBytes(),
                   .size = model.layerBlockBytes()};
}

// Layer Block `layer` of `full_block` (fullBlockBytes() long). Precondition:
// layer < model.layers and full_block.size() == model.fullBlockBytes().
template <class Byte>
std::span<Byte> layerBlock(const ModelSpec& model, std::span<Byte> full_block,
                           std::uint32_t layer) noexcept {
  const ByteRange range = layerBlockRange(model, layer);
  return full_block.subspan(range.offset, range.size);
}

// The three geometry fields are positive and a Full Block is at most 1 GiB
// (io_uring's limit for one registered buffer, and far above any real model's
// block). The error names the model and the field. Unlike ModelSpec::validate,
// the cost fields (FLOPs) are not required.
Status validateBlockGeometry(const ModelSpec& model);

// What every BlockStore::write() checks first: `bytes` is one Full Block of
// `model`. invalid_usage naming the block otherwise.
Status checkFullBlockToWrite(const ModelSpec& model, const BlockId& id, std::size_t bytes);

}  // namespace dualpath::loader
