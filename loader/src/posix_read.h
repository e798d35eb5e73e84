// Private to the POSIX block store: what its two read engines share.
//
// BlockFiles names, opens and verifies block files; a Reader (io_uring or
// pread) moves the bytes. Both belong to one PosixBlockStore and inherit its
// threading rule: one thread at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include <unistd.h>

#include <dualpath/loader/block_store.h>

namespace dualpath::loader::detail {

// An owned file descriptor; closes on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  ~UniqueFd() { reset(); }

  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

struct FreeDeleter {
  void operator()(std::byte* p) const noexcept { std::free(p); }
};
using AlignedBytes = std::unique_ptr<std::byte[], FreeDeleter>;

// `bytes` rounded up to `alignment` (a power of two), zero-filled; null on
// allocation failure.
AlignedBytes allocateAligned(std::size_t alignment, std::size_t bytes);

// O_DIRECT alignment from statx(STATX_DIOALIGN); zero when O_DIRECT is not
// used.
struct DioAlignment {
  std::uint32_t memory = 0;  // buffer address alignment
  std::uint32_t offset = 0;  // file offset and length alignment
  bool usable() const noexcept { return memory != 0 && offset != 0; }
};

// A block file open for reading.
struct OpenBlock {
  UniqueFd fd;
  bool direct = false;
  std::string path;
};

class BlockFiles {
 public:
  BlockFiles(std::string root, const ModelSpec& model, DioAlignment dio, StoreCounters& counters)
      : root_(std::move(root)), model_(model), dio_(dio), counters_(counters) {}

  const std::string& root() const noexcept { return root_; }
  const ModelSpec& model() const noexcept { return model_; }
  DioAlignment dio() const noexcept { return dio_; }
  void setDio(DioAlignment dio) noexcept { dio_ = dio; }

  // <root>/<hex[0,2)>/<hex[2,4)>
  std::string directory(const BlockId& id) const;
  // <directory>/<hex>.blk
  std::string path(const BlockId& id) const;

  // Opens the file of `read.id`, with O_DIRECT when the store uses it and the
  // destination honours the alignment. On failure, gives `read` its outcome
  // (not_found or io) and returns false.
  bool open(BlockRead& read, OpenBlock& out);

  // Gives `read` its outcome from what its reads did: `header_bytes` of the
  // header and `payload_bytes` of the payload arrived, or `error` (an errno,
  // 0 when none) stopped them. checkHeader() then verifyPayload().
  void finish(BlockRead& read, const std::string& path, std::span<const std::byte> header,
              std::size_t header_bytes, std::size_t payload_bytes, int error);

  // finish() in two steps, so that an engine can reuse the header buffer and
  // start more reads before it hashes the payload. checkHeader() checks
  // everything but the payload checksum and returns that checksum; on failure
  // it gives `read` its outcome and returns nullopt. verifyPayload() gives
  // `read` its outcome from the payload checksum.
  std::optional<std::uint64_t> checkHeader(BlockRead& read, const std::string& path,
                                           std::span<const std::byte> header,
                                           std::size_t header_bytes, std::size_t payload_bytes,
                                           int error);
  void verifyPayload(BlockRead& read, const std::string& path, std::uint64_t checksum);

  // Gives `read` the timeout outcome.
  void timeOut(BlockRead& read, const std::string& path);
  // Gives `read` any other failure.
  void fail(BlockRead& read, Status status);

  StoreCounters& counters() noexcept { return counters_; }

 private:
  std::string root_;
  const ModelSpec& model_;
  DioAlignment dio_;
  StoreCounters& counters_;
  bool logged_misaligned_ = false;
};

// Moves the bytes of a batch: submit() starts, wait() ends every read;
// poll() ends those that have completed, as BlockStore::doPoll().
class Reader {
 public:
  virtual ~Reader() = default;
  virtual Status registerBuffers(std::span<const std::span<std::byte>> regions) = 0;
  virtual Status submit(std::span<BlockRead> reads) = 0;
  virtual Status wait(std::span<BlockRead> reads, Deadline deadline) = 0;
  virtual Result<bool> poll(std::span<BlockRead> reads) = 0;
  // A batch's reads are still in the engine: it cannot take another.
  virtual bool busy() const noexcept { return false; }
};

std::unique_ptr<Reader> makePreadReader(BlockFiles& files);

// Fails with the errno of io_uring_queue_init (or of `init_errno_for_test`
// when non-zero) in the message; the caller decides whether to fall back.
Result<std::unique_ptr<Reader>> makeUringReader(BlockFiles& files, std::uint32_t queue_depth,
                                                std::chrono::milliseconds cancel_grace,
                                                int init_errno_for_test);

}  // namespace dualpath::loader::detail
