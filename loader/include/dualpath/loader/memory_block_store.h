// MemoryBlockStore: Full Blocks in process memory, for tests and fakes.
//
// Same interface and same verification as the POSIX store: each block is kept
// in its stored form (header, then payload, block_format.h), and every read
// checks the header and the payload checksum, so a test can flip a byte or cut
// a block short (mutableStoredBytes(), truncate()) and see corrupt. Reads run
// in wait(), in order; a read that starts after the deadline ends as timeout.
// The first poll() runs them all and returns true: memory never makes a read
// wait.
//
// Threading: as BlockStore.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include <dualpath/loader/block_store.h>

namespace dualpath::loader {

class MemoryBlockStore final : public BlockStore {
 public:
  // invalid_argument for a bad geometry.
  static Result<std::unique_ptr<MemoryBlockStore>> create(ModelSpec model);

  Status write(const BlockId& id, std::span<const std::byte> full_block) override;
  StoreCounters counters() const override { return counters_; }

  bool contains(const BlockId& id) const { return blocks_.contains(id); }
  // The stored form of block `id` (header and payload), or an empty span.
  std::span<std::byte> mutableStoredBytes(const BlockId& id);
  // Cuts the stored form of `id` to `bytes` (no-op when absent or shorter).
  void truncate(const BlockId& id, std::size_t bytes);
  void erase(const BlockId& id) { blocks_.erase(id); }

 private:
  explicit MemoryBlockStore(ModelSpec model) : BlockStore(std::move(model)) {}
  Status doSubmit(std::span<BlockRead> reads) override;
  Status doWait(std::span<BlockRead> reads, Deadline deadline) override;
  Result<bool> doPoll(std::span<BlockRead> reads) override;
  Status readOne(BlockRead& read);

  std::map<BlockId, std::vector<std::byte>> blocks_;
  StoreCounters counters_;
};

}  // namespace dualpath::loader
