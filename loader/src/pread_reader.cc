// The pread engine: each block read with two blocking pread loops, in wait().
// The fallback when io_uring is unavailable, and a baseline for the benchmark.
// pread is synchronous, so poll() does the whole batch's reads itself and
// returns true: it never waits for another read to complete, but it takes as
// long as the reads take.
#include <cerrno>

#include <dualpath/loader/block_format.h>

#include "posix_read.h"

namespace dualpath::loader::detail {
namespace {

struct Transfer {
  std::size_t bytes = 0;
  int error = 0;
};

// Reads until `buffer` is full, end of file, or an error.
Transfer preadFully(int fd, std::span<std::byte> buffer, std::uint64_t offset) {
  Transfer done;
  while (done.bytes < buffer.size()) {
    const ssize_t n = ::pread(fd, buffer.data() + done.bytes, buffer.size() - done.bytes,
                              static_cast<off_t>(offset + done.bytes));
    if (n < 0) {
      if (errno == EINTR) continue;
      done.error = errno;
      break;
    }
    if (n == 0) break;
    done.bytes += static_cast<std::size_t>(n);
  }
  return done;
}

class PreadReader final : public Reader {
 public:
  explicit PreadReader(BlockFiles& files)
      : files_(files), header_(allocateAligned(kBlockHeaderBytes, kBlockHeaderBytes)) {}

  Status registerBuffers(std::span<const std::span<std::byte>> /*regions*/) override {
    return Status::ok();
  }

  Status submit(std::span<BlockRead> /*reads*/) override { return Status::ok(); }

  // A block, once started, is read to the end: pread cannot be interrupted,
  // so the deadline is checked between blocks.
  Status wait(std::span<BlockRead> reads, Deadline deadline) override {
    if (header_ == nullptr) {
      return Status(StatusCode::internal, "pread engine: no header buffer (allocation failed)");
    }
    const std::span<std::byte> header(header_.get(), kBlockHeaderBytes);
    for (BlockRead& read : reads) {
      if (Clock::now() >= deadline) {
        files_.timeOut(read, files_.path(read.id));
        continue;
      }
      OpenBlock block;
      if (!files_.open(read, block)) continue;
      const Transfer head = preadFully(block.fd.get(), header, 0);
      Transfer body;
      if (head.error == 0) body = preadFully(block.fd.get(), read.destination, kBlockHeaderBytes);
      files_.finish(read, block.path, header, head.bytes, body.bytes,
                    head.error != 0 ? head.error : body.error);
    }
    return Status::ok();
  }

  Result<bool> poll(std::span<BlockRead> reads) override {
    DP_TRY(wait(reads, Deadline::max()));
    return true;
  }

 private:
  BlockFiles& files_;
  AlignedBytes header_;  // 4 KiB aligned, for O_DIRECT
};

}  // namespace

std::unique_ptr<Reader> makePreadReader(BlockFiles& files) {
  return std::make_unique<PreadReader>(files);
}

}  // namespace dualpath::loader::detail
