#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include <dualpath/loader/block_format.h>
#include <dualpath/loader/memory_block_store.h>

namespace dualpath::loader {

Result<std::unique_ptr<MemoryBlockStore>> MemoryBlockStore::create(ModelSpec model) {
  DP_TRY(validateBlockGeometry(model));
  return std::unique_ptr<MemoryBlockStore>(new MemoryBlockStore(std::move(model)));
}

Status MemoryBlockStore::write(const BlockId& id, std::span<const std::byte> full_block) {
  DP_TRY(checkFullBlockToWrite(model(), id, full_block.size()));
  std::vector<std::byte> stored(kBlockHeaderBytes + full_block.size());
  encodeBlockHeader(model(), id, full_block, std::span<std::byte>(stored).first(kBlockHeaderBytes));
  std::memcpy(stored.data() + kBlockHeaderBytes, full_block.data(), full_block.size());
  blocks_[id] = std::move(stored);
  ++counters_.writes;
  return Status::ok();
}

std::span<std::byte> MemoryBlockStore::mutableStoredBytes(const BlockId& id) {
  auto it = blocks_.find(id);
  if (it == blocks_.end()) return {};
  return it->second;
}

void MemoryBlockStore::truncate(const BlockId& id, std::size_t bytes) {
  auto it = blocks_.find(id);
  if (it != blocks_.end() && it->second.size() > bytes) it->second.resize(bytes);
}

Status MemoryBlockStore::doSubmit(std::span<BlockRead> /*reads*/) {
  return Status::ok();  // reads run in doWait()
}

Status MemoryBlockStore::doWait(std::span<BlockRead> reads, Deadline deadline) {
  for (BlockRead& read : reads) {
    if (Clock::now() >= deadline) {
      read.status = Status(StatusCode::timeout,
                           fmt::format("block {} in memory: the deadline passed before the read "
                                       "started",
                                       read.id.toHex()));
      ++counters_.reads_failed;
      continue;
    }
    read.status = readOne(read);
  }
  return Status::ok();
}

Result<bool> MemoryBlockStore::doPoll(std::span<BlockRead> reads) {
  for (BlockRead& read : reads) read.status = readOne(read);
  return true;
}

// Copies and verifies one block; counts its outcome.
Status MemoryBlockStore::readOne(BlockRead& read) {
  const std::string where = fmt::format("block {} in memory", read.id.toHex());
  Status outcome = [&]() -> Status {
    auto it = blocks_.find(read.id);
    if (it == blocks_.end()) return Status(StatusCode::not_found, fmt::format("{}: absent", where));
    const std::span<const std::byte> stored = it->second;
    Result<std::uint64_t> checksum = verifyBlockHeader(
        stored.first(std::min(stored.size(), kBlockHeaderBytes)), model(), read.id);
    if (!checksum) return std::move(checksum).status().withContext(where);
    const std::size_t available = stored.size() - kBlockHeaderBytes;
    if (available != read.destination.size()) {
      return Status(StatusCode::corrupt, fmt::format("{}: truncated payload: {} of {} bytes", where,
                                                     available, read.destination.size()));
    }
    std::memcpy(read.destination.data(), stored.data() + kBlockHeaderBytes, available);
    Status verified = verifyBlockPayload(read.destination, *checksum);
    if (!verified) return std::move(verified).withContext(where);
    return Status::ok();
  }();
  if (outcome) {
    ++counters_.reads_ok;
    counters_.bytes_read += read.destination.size();
  } else {
    ++counters_.reads_failed;
  }
  return outcome;
}

}  // namespace dualpath::loader
