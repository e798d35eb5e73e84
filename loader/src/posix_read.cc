#include "posix_read.h"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <fmt/format.h>

#include <dualpath/common/log.h>
#include <dualpath/loader/block_format.h>

namespace dualpath::loader::detail {
namespace {

bool aligned(const void* p, std::uint32_t alignment) noexcept {
  return reinterpret_cast<std::uintptr_t>(p) % alignment == 0;
}

std::string where(const BlockRead& read, const std::string& path) {
  return fmt::format("block {} ({})", read.id.toHex(), path);
}

}  // namespace

AlignedBytes allocateAligned(std::size_t alignment, std::size_t bytes) {
  const std::size_t rounded = (bytes + alignment - 1) / alignment * alignment;
  auto* memory = static_cast<std::byte*>(std::aligned_alloc(alignment, rounded));
  if (memory != nullptr) std::memset(memory, 0, rounded);
  return AlignedBytes(memory);
}

std::string BlockFiles::directory(const BlockId& id) const {
  const std::string hex = id.toHex();
  return fmt::format("{}/{}/{}", root_, hex.substr(0, 2), hex.substr(2, 2));
}

std::string BlockFiles::path(const BlockId& id) const {
  return fmt::format("{}/{}.blk", directory(id), id.toHex());
}

bool BlockFiles::open(BlockRead& read, OpenBlock& out) {
  out.path = path(read.id);
  bool direct = false;
  if (dio_.usable()) {
    direct = aligned(read.destination.data(), dio_.memory) &&
             read.destination.size() % dio_.offset == 0 && kBlockHeaderBytes % dio_.offset == 0;
    if (!direct && !logged_misaligned_) {
      logged_misaligned_ = true;
      DP_LOG_DEBUG(
          "loader: block {}: destination {} or size {} B does not meet O_DIRECT's {} B memory / "
          "{} B offset alignment; such reads go through the page cache",
          read.id.toHex(), static_cast<const void*>(read.destination.data()),
          read.destination.size(), dio_.memory, dio_.offset);
    }
  }
  int fd = ::open(out.path.c_str(), O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
  if (fd < 0 && direct && errno == EINVAL) {
    // The file system refused O_DIRECT for this file after all.
    direct = false;
    fd = ::open(out.path.c_str(), O_RDONLY | O_CLOEXEC);
  }
  if (fd < 0) {
    const int error = errno;
    if (error == ENOENT) {
      fail(read,
           Status(StatusCode::not_found, fmt::format("{}: no such block", where(read, out.path))));
    } else {
      fail(read, Status(StatusCode::io,
                        fmt::format("{}: open: {}", where(read, out.path), std::strerror(error))));
    }
    return false;
  }
  out.fd.reset(fd);
  out.direct = direct;
  ++(direct ? counters_.direct_reads : counters_.buffered_reads);
  return true;
}

void BlockFiles::finish(BlockRead& read, const std::string& path, std::span<const std::byte> header,
                        std::size_t header_bytes, std::size_t payload_bytes, int error) {
  const std::optional<std::uint64_t> checksum =
      checkHeader(read, path, header, header_bytes, payload_bytes, error);
  if (checksum) verifyPayload(read, path, *checksum);
}

std::optional<std::uint64_t> BlockFiles::checkHeader(BlockRead& read, const std::string& path,
                                                     std::span<const std::byte> header,
                                                     std::size_t header_bytes,
                                                     std::size_t payload_bytes, int error) {
  if (error != 0) {
    fail(read, Status(StatusCode::io,
                      fmt::format("{}: read: {}", where(read, path), std::strerror(error))));
    return std::nullopt;
  }
  Result<std::uint64_t> checksum = verifyBlockHeader(header.first(header_bytes), model_, read.id);
  if (!checksum) {
    fail(read, std::move(checksum).status().withContext(where(read, path)));
    return std::nullopt;
  }
  if (payload_bytes != read.destination.size()) {
    fail(read, Status(StatusCode::corrupt,
                      fmt::format("{}: truncated payload: {} of {} bytes", where(read, path),
                                  payload_bytes, read.destination.size())));
    return std::nullopt;
  }
  return *checksum;
}

void BlockFiles::verifyPayload(BlockRead& read, const std::string& path, std::uint64_t checksum) {
  Status verified = verifyBlockPayload(read.destination, checksum);
  if (!verified) {
    fail(read, std::move(verified).withContext(where(read, path)));
    return;
  }
  read.status = Status::ok();
  ++counters_.reads_ok;
  counters_.bytes_read += read.destination.size();
}

void BlockFiles::timeOut(BlockRead& read, const std::string& path) {
  fail(read, Status(StatusCode::timeout,
                    fmt::format("{}: timed out: the deadline passed before the read completed",
                                where(read, path))));
}

void BlockFiles::fail(BlockRead& read, Status status) {
  read.status = std::move(status);
  ++counters_.reads_failed;
}

}  // namespace dualpath::loader::detail
