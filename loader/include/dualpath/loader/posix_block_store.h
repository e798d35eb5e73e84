// PosixBlockStore: Full Blocks as files in a directory, the embedded default.
//
// Any POSIX file system works: a local disk, a 3FS FUSE mount, NFS, Lustre.
// Block <hex> lives at <root>/<hex[0,2)>/<hex[2,4)>/<hex>.blk (two levels of
// 256 directories, created on first write, so no directory holds millions of
// entries). A file is the header and payload of block_format.h.
//
// Reads. The io_uring engine keeps up to `queue_depth` blocks in flight. A
// block whose destination lies in a region given to registerBuffers() is two
// fixed-buffer reads (header into the store's registered header slab, payload
// straight into the destination); any other block is one readv of the whole
// file (header into the slab, payload into the destination). Payloads are
// hashed after the freed slots are refilled, so verification overlaps the
// reads still in flight. poll() reaps the completions already posted
// (io_uring_peek_cqe) and refills the queue, never waiting. Files are opened
// with O_DIRECT when statx(STATX_DIOALIGN) on a probe file at open() reports
// an alignment and the destination and block size honour it; otherwise
// through the page cache (tmpfs, for one), which a debug line reports once.
// The pread engine reads header and payload one block at a time in wait(), or
// the whole batch in the first poll() (pread is synchronous).
// IoEngine::automatic takes io_uring and, when the kernel refuses a ring
// (EPERM, ENOSYS: a container's seccomp profile), pread, with one warning per
// process.
//
// Writes. A block is written to a temp file in its final directory,
// <hex>.blk.tmp.<pid>.<seq>.<host>, fsynced per FsyncPolicy, renamed over
// <hex>.blk, and (FsyncPolicy::full) the directory is fsynced. rename() is
// atomic, so a reader sees the old block, the new one or none, never a torn
// block, whatever happens to the writer. Readers open only final names, so a
// temp file is never read as a block. open() sweeps stale temp files: those
// written on this host by a process that no longer exists. Temp files of
// other hosts (a shared mount) are left to their own hosts' sweeps.
//
// Threading: as BlockStore. Several processes (and hosts, on a shared file
// system) may read and write the same directory at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include <dualpath/common/params.h>
#include <dualpath/common/status.h>
#include <dualpath/loader/block_store.h>

namespace dualpath::loader {

using params::FsyncPolicy;
using params::IoEngine;

// By name, as DUALPATH_LOADER_FSYNC and DUALPATH_LOADER_IO_ENGINE spell them.
// Errors: "fsync policy 'x': expected none, data or full",
//         "io engine 'x': expected auto, io_uring or pread".
Result<FsyncPolicy> parseFsyncPolicy(std::string_view name);
Result<IoEngine> parseIoEngine(std::string_view name);

// Test-only hooks. Production code leaves them empty.
struct PosixBlockStoreTestHooks {
  // Runs inside write() after the header and the first half of the payload
  // reached the temp file, before the rest.
  std::function<void()> mid_write;
  // Non-zero: io_uring_queue_init is not called and fails with this errno.
  int io_uring_init_errno = 0;
};

struct PosixBlockStoreOptions {
  IoEngine io_engine = IoEngine::automatic;
  FsyncPolicy fsync = FsyncPolicy::data;
  bool direct_io = true;           // O_DIRECT when the file system allows it
  std::uint32_t queue_depth = 64;  // blocks in flight (io_uring), 1 to 4096
  bool create_directory = true;    // create the root if missing
  bool sweep_temp_files = true;    // at open()
  // How long wait() waits for cancelled reads to let go of their buffers.
  std::chrono::milliseconds cancel_grace{10'000};
  PosixBlockStoreTestHooks test_hooks;

  // Defaults overridden by DUALPATH_LOADER_IO_ENGINE and DUALPATH_LOADER_FSYNC.
  static PosixBlockStoreOptions fromParams(const params::Snapshot& snapshot);
  // The same from the process environment (params::global()); an invalid
  // value of any DUALPATH_* variable fails with its name and expected form.
  static Result<PosixBlockStoreOptions> fromEnvironment();
};

class PosixBlockStore final : public BlockStore {
 public:
  // invalid_argument for a bad geometry or option, naming it; io when the
  // directory cannot be created or read; unsupported when io_uring is forced
  // but the kernel refuses a ring.
  static Result<std::unique_ptr<PosixBlockStore>> open(std::string root, ModelSpec model,
                                                       PosixBlockStoreOptions options);
  ~PosixBlockStore() override;

  // Registers caller memory with io_uring (io_uring_register_buffers), so that
  // payload reads into it skip per-read page pinning. Replaces any previous
  // set. Each region is at most 1 GiB; together they count against the memlock
  // limit (RLIMIT_MEMLOCK) unless the process has CAP_IPC_LOCK. The regions
  // must outlive the store or the next call. A no-op for the pread engine.
  // invalid_usage while a batch is in flight.
  Status registerBuffers(std::span<const std::span<std::byte>> regions);

  Status write(const BlockId& id, std::span<const std::byte> full_block) override;
  StoreCounters counters() const override;

  const std::string& root() const noexcept;
  std::string blockPath(const BlockId& id) const;
  IoEngine engine() const noexcept;  // io_uring or pread, after the fallback
  bool directIo() const noexcept;    // O_DIRECT is in use for reads
  // Stale temp files removed by open().
  std::uint64_t sweptTempFiles() const noexcept;

  class Impl;

 private:
  PosixBlockStore(ModelSpec model, std::unique_ptr<Impl> impl);
  Status doSubmit(std::span<BlockRead> reads) override;
  Status doWait(std::span<BlockRead> reads, Deadline deadline) override;
  Result<bool> doPoll(std::span<BlockRead> reads) override;
  bool doBusy() const override;

  std::unique_ptr<Impl> impl_;
};

}  // namespace dualpath::loader
