// dualpath-storage-bench: block reads from a PosixBlockStore, in GB/s.
//
// Writes --blocks Full Blocks of --model into --dir (a fresh store directory)
// and syncs them to disk (syncfs, untimed: otherwise the first O_DIRECT pass
// would pay for their write-back), then reads them all back as one batch,
// --reps times, with --queue-depth
// blocks in flight and the chosen engine, into 4 KiB-aligned destinations
// (registered with io_uring unless --no-register). Every read is verified
// (header and checksum, as always) and compared byte for byte with what was
// written; any mismatch or failed read exits 1.
//
// Prints one line that scripts parse (bench/loader/fio_compare.sh):
//   storage-bench: engine=io_uring direct=1 model=deepseek-v3.2 blocks=64 qd=32
//     file_bytes=2565120 reps=3 best_gbps=... median_gbps=... best_file_gbps=...
//     mean_file_gbps=... rep_ms=41.2/39.8/40.5
// gbps counts payload bytes; file_gbps counts whole files (header + payload),
// what fio reads from the same files; mean_file_gbps is all reps' bytes over
// all reps' time, as fio reports its loops; rep_ms is each pass, in order.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <dualpath/common/params.h>
#include <dualpath/loader/block_format.h>
#include <dualpath/loader/posix_block_store.h>

namespace {

using namespace dualpath;
using namespace dualpath::loader;

struct Args {
  std::string dir;
  std::string model = "deepseek-v3.2";
  std::uint32_t blocks = 64;
  std::uint32_t queue_depth = 32;
  std::string engine = "auto";
  bool direct = true;
  bool register_buffers = true;
  std::uint32_t reps = 3;
  bool keep = false;
};

void fillPayload(std::uint64_t seed, std::span<std::byte> out) {
  std::uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (std::size_t i = 0; i + 8 <= out.size(); i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out.data() + i, &x, 8);
  }
}

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};

int run(const Args& args) {
  Result<ModelSpec> model = scheduler::modelPreset(args.model);
  if (!model) {
    fmt::print(stderr, "dualpath-storage-bench: {}\n", model.status().message());
    return 2;
  }
  Result<IoEngine> engine = parseIoEngine(args.engine);
  if (!engine) {
    fmt::print(stderr, "dualpath-storage-bench: {}\n", engine.status().message());
    return 2;
  }
  const std::size_t block_bytes = model->fullBlockBytes();
  const std::size_t stride = (block_bytes + 4095) / 4096 * 4096;
  const std::uint64_t total = std::uint64_t{stride} * args.blocks;
  if (total > (1ull << 30)) {
    fmt::print(stderr,
               "dualpath-storage-bench: {} blocks of {} B need {} B of destinations; keep it at "
               "most 1 GiB (one registered buffer)\n",
               args.blocks, block_bytes, total);
    return 2;
  }

  std::error_code error;
  std::filesystem::remove_all(args.dir, error);
  PosixBlockStoreOptions options;
  options.io_engine = *engine;
  options.direct_io = args.direct;
  options.queue_depth = args.queue_depth;
  options.fsync = FsyncPolicy::none;  // writes are set-up: synced once below, not measured
  Result<std::unique_ptr<PosixBlockStore>> store = PosixBlockStore::open(args.dir, *model, options);
  if (!store) {
    fmt::print(stderr, "dualpath-storage-bench: {}\n", store.status().message());
    return 1;
  }
  std::unique_ptr<std::byte, FreeDeleter> memory(
      static_cast<std::byte*>(std::aligned_alloc(4096, total)));
  if (memory == nullptr) {
    fmt::print(stderr, "dualpath-storage-bench: cannot allocate {} B\n", total);
    return 1;
  }
  std::memset(memory.get(), 0, total);
  auto destination = [&](std::size_t i) {
    return std::span<std::byte>(memory.get() + i * stride, block_bytes);
  };

  std::vector<BlockId> ids;
  std::vector<std::uint64_t> checksums;
  std::vector<std::byte> payload(block_bytes);
  for (std::uint32_t i = 0; i < args.blocks; ++i) {
    const BlockId id{.hi = 0xbe4c000000000000ULL + i, .lo = i};
    fillPayload(i, payload);
    if (Status written = (*store)->write(id, payload); !written) {
      fmt::print(stderr, "dualpath-storage-bench: {}\n", written.message());
      return 1;
    }
    ids.push_back(id);
    checksums.push_back(payloadChecksum(payload));
  }
  // Without this the first timed pass pays for writing the blocks back: an
  // O_DIRECT read of a file with dirty pages first flushes them.
  if (const int dir_fd = ::open(args.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      dir_fd >= 0) {
    if (::syncfs(dir_fd) != 0) {
      fmt::print(stderr, "dualpath-storage-bench: syncfs {}: {}\n", args.dir, std::strerror(errno));
    }
    ::close(dir_fd);
  }
  if (args.register_buffers) {
    const std::span<std::byte> regions[] = {std::span<std::byte>(memory.get(), total)};
    if (Status registered = (*store)->registerBuffers(regions); !registered) {
      // Reads still work, unregistered; the output line says registered=0.
      fmt::print(stderr, "dualpath-storage-bench: {}; reading into unregistered buffers\n",
                 registered.message());
    }
  }

  std::vector<double> seconds;
  for (std::uint32_t rep = 0; rep < args.reps; ++rep) {
    std::memset(memory.get(), 0, total);
    ReadBatch batch;
    for (std::uint32_t i = 0; i < args.blocks; ++i) batch.add(ids[i], destination(i));
    const auto start = std::chrono::steady_clock::now();
    Status read = (*store)->read(batch, Clock::now() + std::chrono::minutes(5));
    const auto stop = std::chrono::steady_clock::now();
    if (!read) {
      fmt::print(stderr, "dualpath-storage-bench: {}\n", read.message());
      return 1;
    }
    for (std::uint32_t i = 0; i < args.blocks; ++i) {
      const Status& status = batch.reads()[i].status;
      if (!status) {
        fmt::print(stderr, "dualpath-storage-bench: {}\n", status.toString());
        return 1;
      }
      // Independent of the store's own check: what arrived is what was written.
      if (payloadChecksum(destination(i)) != checksums[i]) {
        fmt::print(stderr, "dualpath-storage-bench: block {}: bytes differ from the written ones\n",
                   ids[i].toHex());
        return 1;
      }
    }
    seconds.push_back(std::chrono::duration<double>(stop - start).count());
  }
  double total_seconds = 0;
  for (double s : seconds) total_seconds += s;
  std::string rep_ms;
  for (double s : seconds) rep_ms += fmt::format("{}{:.1f}", rep_ms.empty() ? "" : "/", s * 1e3);
  std::sort(seconds.begin(), seconds.end());
  const double payload_bytes = static_cast<double>(block_bytes) * args.blocks;
  const double file_bytes = static_cast<double>(block_bytes + kBlockHeaderBytes) * args.blocks;
  const double best = seconds.front();
  const double median = seconds[seconds.size() / 2];
  const StoreCounters counters = (*store)->counters();
  fmt::print(
      "storage-bench: engine={} direct={} registered={} model={} blocks={} qd={} file_bytes={} "
      "reps={} best_gbps={:.3f} median_gbps={:.3f} best_file_gbps={:.3f} mean_file_gbps={:.3f} "
      "rep_ms={}\n",
      params::ioEngineName((*store)->engine()), (*store)->directIo() ? 1 : 0,
      counters.fixed_buffer_reads > 0 ? 1 : 0, args.model, args.blocks, args.queue_depth,
      block_bytes + kBlockHeaderBytes, args.reps, payload_bytes / best / 1e9,
      payload_bytes / median / 1e9, file_bytes / best / 1e9,
      file_bytes * args.reps / total_seconds / 1e9, rep_ms);
  if (!args.keep) {
    store->reset();
    std::filesystem::remove_all(args.dir, error);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  CLI::App app{"Reads KV blocks from a POSIX block store and prints GB/s"};
  app.add_option("--dir", args.dir, "Store directory (emptied first)")->required();
  app.add_option("--model", args.model, "Model preset: deepseek-v3.2, qwen2.5-32b or tiny");
  app.add_option("--blocks", args.blocks, "Full Blocks to write and read")
      ->check(CLI::Range(1u, 100000u));
  app.add_option("--queue-depth", args.queue_depth, "Blocks in flight (io_uring)")
      ->check(CLI::Range(1u, 4096u));
  app.add_option("--engine", args.engine, "auto, io_uring or pread");
  app.add_option("--reps", args.reps, "Timed passes over all blocks")->check(CLI::Range(1u, 1000u));
  bool buffered = false;
  bool no_register = false;
  app.add_flag("--buffered", buffered, "Never use O_DIRECT");
  app.add_flag("--no-register", no_register, "Do not register the destinations with io_uring");
  app.add_flag("--keep", args.keep, "Leave the block files in --dir (for fio)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  args.direct = !buffered;
  args.register_buffers = !no_register;
  return run(args);
}
