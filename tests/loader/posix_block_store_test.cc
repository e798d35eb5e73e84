// Checks loader/src/posix_block_store.cc and its readers on real file systems:
// O_DIRECT and its fallback, registered buffers, atomic writes under a writer
// killed mid-write, the temp-file sweep, fsync policies, the io_uring fallback,
// and the options' parameters.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <fcntl.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dualpath/common/params.h>
#include <dualpath/loader/block_format.h>
#include <dualpath/loader/posix_block_store.h>

#include "log_capture.h"
#include "store_test_support.h"

namespace dualpath::loader {
namespace {

using testing::AlignedBuffers;
using testing::payloadFor;
using testing::preset;
using testing::ScratchDir;

Deadline later() {
  return Clock::now() + std::chrono::seconds(30);
}

std::unique_ptr<PosixBlockStore> openStore(const std::string& root, const ModelSpec& model,
                                           PosixBlockStoreOptions options = {}) {
  Result<std::unique_ptr<PosixBlockStore>> store = PosixBlockStore::open(root, model, options);
  EXPECT_TRUE(store.hasValue()) << store.status().toString();
  return store.hasValue() ? std::move(store).value() : nullptr;
}

std::vector<std::string> filesUnder(const std::string& root) {
  std::vector<std::string> files;
  std::error_code error;
  for (auto it = std::filesystem::recursive_directory_iterator(root, error);
       it != std::filesystem::recursive_directory_iterator(); it.increment(error)) {
    if (it->is_regular_file()) files.push_back(it->path().lexically_relative(root).string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

Status readOne(BlockStore& store, const BlockId& id, std::span<std::byte> destination) {
  ReadBatch batch;
  batch.add(id, destination);
  DP_TRY(store.read(batch, later()));
  return batch.reads()[0].status;
}

TEST(PosixBlockStoreTest, FilesFanOutByIdPrefix) {
  ScratchDir scratch;
  auto store = openStore(scratch.path(), preset("tiny"));
  ASSERT_NE(store, nullptr);
  const BlockId id{.hi = 0xabcdef0011223344ULL, .lo = 0x5566778899aabbccULL};
  EXPECT_EQ(store->blockPath(id), scratch.path() + "/ab/cd/abcdef00112233445566778899aabbcc.blk");
  ASSERT_TRUE(store->write(id, payloadFor(id, 4096)).isOk());
  EXPECT_EQ(filesUnder(scratch.path()),
            std::vector<std::string>{"ab/cd/abcdef00112233445566778899aabbcc.blk"});
  EXPECT_EQ(std::filesystem::file_size(store->blockPath(id)), kBlockHeaderBytes + 4096);
}

// The build directory is on a disk file system; O_DIRECT is used when statx
// reports an alignment for it, and registered buffers make the payload reads
// fixed-buffer reads.
TEST(PosixBlockStoreTest, DirectIoWithRegisteredBuffersOnTheBuildDirectory) {
  ScratchDir scratch;
  const ModelSpec model = preset("qwen2.5-32b");  // 16 MiB Full Blocks
  PosixBlockStoreOptions options;
  options.io_engine = IoEngine::io_uring;
  options.fsync = FsyncPolicy::none;
  auto store = openStore(scratch.path(), model, options);
  ASSERT_NE(store, nullptr);
  if (!store->directIo()) {
    GTEST_SKIP() << scratch.path() << ": the file system reports no O_DIRECT alignment";
  }
  constexpr std::size_t kBlocks = 3;
  AlignedBuffers buffers(kBlocks, model.fullBlockBytes());
  const std::span<std::byte> regions[] = {buffers.region()};
  // Registration pins 48 MiB: refused under the default 8 MiB memlock limit
  // without CAP_IPC_LOCK, with a message that says so; reads then go on
  // unregistered.
  const Status registered = store->registerBuffers(regions);
  const bool fixed = registered.isOk();
  if (!fixed) {
    EXPECT_EQ(registered.code(), StatusCode::io);
    EXPECT_NE(registered.message().find("RLIMIT_MEMLOCK"), std::string::npos)
        << registered.message();
  }
  ReadBatch batch;
  std::vector<BlockId> ids;
  for (std::size_t i = 0; i < kBlocks; ++i) {
    ids.push_back(BlockId{.hi = 7, .lo = i});
    ASSERT_TRUE(store->write(ids[i], payloadFor(ids[i], model.fullBlockBytes())).isOk());
    batch.add(ids[i], buffers[i]);
  }
  ASSERT_TRUE(store->read(batch, later()).isOk());
  for (std::size_t i = 0; i < kBlocks; ++i) {
    ASSERT_TRUE(batch.reads()[i].status.isOk()) << batch.reads()[i].status.toString();
    EXPECT_EQ(payloadFor(ids[i], model.fullBlockBytes()),
              std::vector<std::byte>(buffers[i].begin(), buffers[i].end()));
  }
  const StoreCounters counters = store->counters();
  EXPECT_EQ(counters.direct_reads, kBlocks);
  EXPECT_EQ(counters.buffered_reads, 0u);
  EXPECT_EQ(counters.fixed_buffer_reads, fixed ? kBlocks : 0u);

  // A destination off the O_DIRECT alignment is read through the page cache.
  std::vector<std::byte> unaligned_storage(model.fullBlockBytes() + 1);
  const std::span<std::byte> unaligned(unaligned_storage.data() + 1, model.fullBlockBytes());
  {
    dualpath::testing::LogCapture capture(log::Level::debug);
    ASSERT_TRUE(readOne(*store, ids[0], unaligned).isOk());
    ASSERT_EQ(capture.lines().size(), 1u);
    EXPECT_NE(capture.lines()[0].find("does not meet O_DIRECT's"), std::string::npos)
        << capture.lines()[0];
  }
  EXPECT_EQ(store->counters().buffered_reads, 1u);
  // Outside the registered region: not a fixed-buffer read.
  EXPECT_EQ(store->counters().fixed_buffer_reads, fixed ? kBlocks : 0u);
  EXPECT_EQ(payloadFor(ids[0], model.fullBlockBytes()),
            std::vector<std::byte>(unaligned.begin(), unaligned.end()));
}

// tmpfs reports no STATX_DIOALIGN: reads go through the page cache, and a
// debug line says so.
TEST(PosixBlockStoreTest, BufferedReadsWhereTheFileSystemReportsNoDirectIo) {
  if (!std::filesystem::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  ScratchDir scratch("/dev/shm");
  const ModelSpec model = preset("tiny");
  std::unique_ptr<PosixBlockStore> store;
  {
    dualpath::testing::LogCapture capture(log::Level::debug);
    store = openStore(scratch.path(), model);
    ASSERT_NE(store, nullptr);
    if (store->directIo()) GTEST_SKIP() << "tmpfs reports an O_DIRECT alignment on this kernel";
    ASSERT_EQ(capture.lines().size(), 1u);
    EXPECT_EQ(capture.lines()[0],
              fmt::format("debug: loader: {}: the file system reports no O_DIRECT alignment (statx "
                          "STATX_DIOALIGN); reads go through the page cache",
                          scratch.path()));
  }
  EXPECT_FALSE(store->directIo());
  const BlockId id{.hi = 1, .lo = 2};
  ASSERT_TRUE(store->write(id, payloadFor(id, 4096)).isOk());
  AlignedBuffers buffers(1, 4096);
  ASSERT_TRUE(readOne(*store, id, buffers[0]).isOk());
  EXPECT_EQ(store->counters().buffered_reads, 1u);
  EXPECT_EQ(store->counters().direct_reads, 0u);
}

TEST(PosixBlockStoreTest, DirectIoCanBeTurnedOff) {
  ScratchDir scratch;
  PosixBlockStoreOptions options;
  options.direct_io = false;
  auto store = openStore(scratch.path(), preset("tiny"), options);
  ASSERT_NE(store, nullptr);
  EXPECT_FALSE(store->directIo());
  const BlockId id{.hi = 2, .lo = 2};
  ASSERT_TRUE(store->write(id, payloadFor(id, 4096)).isOk());
  AlignedBuffers buffers(1, 4096);
  ASSERT_TRUE(readOne(*store, id, buffers[0]).isOk());
  EXPECT_EQ(store->counters().buffered_reads, 1u);
  EXPECT_EQ(store->counters().direct_reads, 0u);
  EXPECT_EQ(payloadFor(id, 4096), std::vector<std::byte>(buffers[0].begin(), buffers[0].end()));
}

TEST(PosixBlockStoreTest, RegisteringATooLargeRegionIsRefused) {
  ScratchDir scratch;
  PosixBlockStoreOptions options;
  options.io_engine = IoEngine::io_uring;
  auto store = openStore(scratch.path(), preset("tiny"), options);
  ASSERT_NE(store, nullptr);
  // Never touched: the size check comes first.
  std::byte probe{};
  const std::span<std::byte> regions[] = {std::span<std::byte>(&probe, (1ull << 30) + 1)};
  const Status status = store->registerBuffers(regions);
  EXPECT_EQ(status.code(), StatusCode::invalid_argument);
  EXPECT_EQ(status.message(),
            "registerBuffers: region 0 is 1073741825 B; a registered buffer is "
            "1 B to 1 GiB (io_uring's limit)");
}

// A writer killed between the header and the end of the payload leaves no
// visible block; the next store sweeps its temp file; a later write of the
// same block reads back byte-exact.
TEST(PosixBlockStoreTest, AWriterKilledMidWriteLeavesNoTornBlock) {
  ScratchDir scratch;
  const ModelSpec model = preset("deepseek-v3.2");
  const BlockId id{.hi = 0x5eed, .lo = 0xcafe};
  const std::vector<std::byte> payload = payloadFor(id, model.fullBlockBytes());

  int reached[2];
  int release[2];
  ASSERT_EQ(::pipe(reached), 0);
  ASSERT_EQ(::pipe(release), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(reached[0]);
    ::close(release[1]);
    PosixBlockStoreOptions options;
    options.io_engine = IoEngine::pread;
    options.test_hooks.mid_write = [&] {
      const char byte = 'm';
      if (::write(reached[1], &byte, 1) != 1) ::_exit(3);
      char ignored;
      // Blocks until killed (or until the parent goes away).
      while (::read(release[0], &ignored, 1) < 0 && errno == EINTR) {
      }
      ::_exit(4);
    };
    Result<std::unique_ptr<PosixBlockStore>> store =
        PosixBlockStore::open(scratch.path(), model, options);
    if (!store.hasValue()) ::_exit(2);
    (void)(*store)->write(id, payload);
    ::_exit(5);  // unreachable: the hook never returns
  }
  ::close(reached[1]);
  ::close(release[0]);
  pollfd wait_for_child{.fd = reached[0], .events = POLLIN, .revents = 0};
  ASSERT_EQ(::poll(&wait_for_child, 1, 10'000), 1) << "the writer never reached mid-write";
  char byte = 0;
  ASSERT_EQ(::read(reached[0], &byte, 1), 1);
  ASSERT_EQ(byte, 'm');
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int wait_status = 0;
  ASSERT_EQ(::waitpid(child, &wait_status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(wait_status));
  EXPECT_EQ(WTERMSIG(wait_status), SIGKILL);
  ::close(reached[0]);
  ::close(release[1]);

  // The torn temp file is there, with the header and half the payload.
  const std::string final_name =
      fmt::format("{}/{}/{}.blk", id.toHex().substr(0, 2), id.toHex().substr(2, 2), id.toHex());
  const std::vector<std::string> left = filesUnder(scratch.path());
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].rfind(final_name + ".tmp." + std::to_string(child) + ".", 0), 0u) << left[0];
  EXPECT_EQ(std::filesystem::file_size(scratch.path() + "/" + left[0]),
            kBlockHeaderBytes + payload.size() / 2);

  // A reader that does not sweep still sees no block.
  PosixBlockStoreOptions no_sweep;
  no_sweep.sweep_temp_files = false;
  auto reader = openStore(scratch.path(), model, no_sweep);
  ASSERT_NE(reader, nullptr);
  AlignedBuffers buffers(1, model.fullBlockBytes());
  const Status absent = readOne(*reader, id, buffers[0]);
  EXPECT_EQ(absent.code(), StatusCode::not_found) << absent.toString();
  EXPECT_EQ(filesUnder(scratch.path()).size(), 1u);

  // Opening a sweeping store removes the dead writer's temp file.
  auto store = openStore(scratch.path(), model);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->sweptTempFiles(), 1u);
  EXPECT_TRUE(filesUnder(scratch.path()).empty());
  EXPECT_EQ(readOne(*store, id, buffers[0]).code(), StatusCode::not_found);

  ASSERT_TRUE(store->write(id, payload).isOk());
  ASSERT_TRUE(readOne(*store, id, buffers[0]).isOk());
  EXPECT_EQ(payload, std::vector<std::byte>(buffers[0].begin(), buffers[0].end()));
  EXPECT_EQ(filesUnder(scratch.path()), std::vector<std::string>{final_name});
}

// Only temp files of dead writers on this host are swept; a temp file is
// never read as a block.
TEST(PosixBlockStoreTest, TheSweepRemovesOnlyTempFilesOfDeadLocalWriters) {
  ScratchDir scratch;
  const ModelSpec model = preset("tiny");
  char host[256] = {};
  ASSERT_EQ(::gethostname(host, sizeof(host) - 1), 0);
  // A pid that is certainly dead: a child that exited and was reaped.
  const pid_t dead = ::fork();
  ASSERT_GE(dead, 0);
  if (dead == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(dead, nullptr, 0), dead);

  const BlockId id{.hi = 0x1234, .lo = 1};
  const std::string directory = scratch.path() + "/00/00";
  std::filesystem::create_directories(directory);
  const std::string base = directory + "/" + id.toHex() + ".blk.tmp.";
  // Each holds a complete, valid block: still never read.
  std::vector<std::byte> stored(kBlockHeaderBytes + 4096);
  const std::vector<std::byte> payload = payloadFor(id, 4096);
  encodeBlockHeader(model, id, payload, std::span(stored).first(kBlockHeaderBytes));
  std::memcpy(stored.data() + kBlockHeaderBytes, payload.data(), payload.size());
  const std::map<std::string, bool> temps = {
      {base + fmt::format("{}.0.{}", dead, host), false},           // dead, this host: swept
      {base + fmt::format("{}.1.{}", ::getpid(), host), true},      // alive (us): kept
      {base + fmt::format("{}.2.other-host.example", dead), true},  // another host: kept
      {scratch.path() + fmt::format("/dio-probe.tmp.{}.3.{}", dead, host), false},  // root: swept
  };
  for (const auto& [path, kept] : temps) {
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(stored.data()),
               static_cast<std::streamsize>(stored.size()));
  }
  auto store = openStore(scratch.path(), model);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->sweptTempFiles(), 2u);
  for (const auto& [path, kept] : temps) EXPECT_EQ(std::filesystem::exists(path), kept) << path;
  AlignedBuffers buffers(1, 4096);
  EXPECT_EQ(readOne(*store, id, buffers[0]).code(), StatusCode::not_found);
}

TEST(PosixBlockStoreTest, EveryFsyncPolicyWritesReadableBlocks) {
  for (FsyncPolicy policy : {FsyncPolicy::none, FsyncPolicy::data, FsyncPolicy::full}) {
    ScratchDir scratch;
    PosixBlockStoreOptions options;
    options.fsync = policy;
    auto store = openStore(scratch.path(), preset("tiny"), options);
    ASSERT_NE(store, nullptr);
    const BlockId id{.hi = 3, .lo = static_cast<std::uint64_t>(policy)};
    ASSERT_TRUE(store->write(id, payloadFor(id, 4096)).isOk()) << params::fsyncPolicyName(policy);
    AlignedBuffers buffers(1, 4096);
    ASSERT_TRUE(readOne(*store, id, buffers[0]).isOk());
    EXPECT_EQ(payloadFor(id, 4096), std::vector<std::byte>(buffers[0].begin(), buffers[0].end()));
    EXPECT_EQ(filesUnder(scratch.path()).size(), 1u);  // no temp file left behind
  }
}

TEST(PosixBlockStoreTest, FsyncPoliciesAndEnginesByName) {
  EXPECT_EQ(*parseFsyncPolicy("none"), FsyncPolicy::none);
  EXPECT_EQ(*parseFsyncPolicy("data"), FsyncPolicy::data);
  EXPECT_EQ(*parseFsyncPolicy("full"), FsyncPolicy::full);
  Result<FsyncPolicy> bad = parseFsyncPolicy("sometimes");
  ASSERT_FALSE(bad.hasValue());
  EXPECT_EQ(bad.status().code(), StatusCode::invalid_argument);
  EXPECT_EQ(bad.status().message(), "fsync policy 'sometimes': expected none, data or full");
  EXPECT_FALSE(parseFsyncPolicy("Data").hasValue());

  EXPECT_EQ(*parseIoEngine("auto"), IoEngine::automatic);
  EXPECT_EQ(*parseIoEngine("io_uring"), IoEngine::io_uring);
  EXPECT_EQ(*parseIoEngine("pread"), IoEngine::pread);
  EXPECT_EQ(parseIoEngine("aio").status().message(),
            "io engine 'aio': expected auto, io_uring or pread");
}

params::EnvLookup fakeEnvironment(std::map<std::string, std::string> values) {
  return [values = std::move(values)](const char* name) -> const char* {
    auto it = values.find(name);
    return it == values.end() ? nullptr : it->second.c_str();
  };
}

TEST(PosixBlockStoreTest, OptionsComeFromTheParameters) {
  Result<params::Snapshot> defaults = params::parse(fakeEnvironment({}));
  ASSERT_TRUE(defaults.hasValue());
  PosixBlockStoreOptions options = PosixBlockStoreOptions::fromParams(*defaults);
  EXPECT_EQ(options.io_engine, IoEngine::automatic);
  EXPECT_EQ(options.fsync, FsyncPolicy::data);

  Result<params::Snapshot> set = params::parse(
      fakeEnvironment({{"DUALPATH_LOADER_IO_ENGINE", "pread"}, {"DUALPATH_LOADER_FSYNC", "full"}}));
  ASSERT_TRUE(set.hasValue()) << set.status().toString();
  options = PosixBlockStoreOptions::fromParams(*set);
  EXPECT_EQ(options.io_engine, IoEngine::pread);
  EXPECT_EQ(options.fsync, FsyncPolicy::full);

  Result<params::Snapshot> bad_engine =
      params::parse(fakeEnvironment({{"DUALPATH_LOADER_IO_ENGINE", "uring"}}));
  ASSERT_FALSE(bad_engine.hasValue());
  EXPECT_EQ(bad_engine.status().message(),
            "DUALPATH_LOADER_IO_ENGINE='uring': expected auto, io_uring or pread");
  Result<params::Snapshot> bad_fsync =
      params::parse(fakeEnvironment({{"DUALPATH_LOADER_FSYNC", "always"}}));
  ASSERT_FALSE(bad_fsync.hasValue());
  EXPECT_EQ(bad_fsync.status().message(),
            "DUALPATH_LOADER_FSYNC='always': expected none, data or full");
}

TEST(PosixBlockStoreTest, WithoutIoUringAutoFallsBackToPreadAndWarnsOnce) {
  ScratchDir scratch;
  const ModelSpec model = preset("tiny");
  PosixBlockStoreOptions options;
  options.test_hooks.io_uring_init_errno = EPERM;
  {
    dualpath::testing::LogCapture capture;
    auto first = openStore(scratch.path(), model, options);
    auto second = openStore(scratch.path(), model, options);
    ASSERT_NE(first, nullptr);
    ASSERT_NE(second, nullptr);
    EXPECT_EQ(first->engine(), IoEngine::pread);
    EXPECT_EQ(second->engine(), IoEngine::pread);
    ASSERT_EQ(capture.lines().size(), 1u);
    EXPECT_EQ(capture.lines()[0],
              "warn: loader: io_uring is unavailable (io_uring_queue_init: Operation not "
              "permitted), as under a container's default seccomp profile; block reads use "
              "pread, one at a time. DUALPATH_LOADER_IO_ENGINE=pread silences this");
    const BlockId id{.hi = 5, .lo = 5};
    ASSERT_TRUE(first->write(id, payloadFor(id, 4096)).isOk());
    AlignedBuffers buffers(1, 4096);
    EXPECT_TRUE(readOne(*second, id, buffers[0]).isOk());
  }
  options.io_engine = IoEngine::io_uring;
  Result<std::unique_ptr<PosixBlockStore>> forced =
      PosixBlockStore::open(scratch.path(), model, options);
  ASSERT_FALSE(forced.hasValue());
  EXPECT_EQ(forced.status().code(), StatusCode::unsupported);
  EXPECT_EQ(forced.status().message(),
            "io engine io_uring (DUALPATH_LOADER_IO_ENGINE) is unavailable: io_uring_queue_init: "
            "Operation not permitted");
}

TEST(PosixBlockStoreTest, BadOptionsAndDirectoriesAreRefused) {
  ScratchDir scratch;
  PosixBlockStoreOptions options;
  options.queue_depth = 0;
  Result<std::unique_ptr<PosixBlockStore>> zero =
      PosixBlockStore::open(scratch.path(), preset("tiny"), options);
  ASSERT_FALSE(zero.hasValue());
  EXPECT_EQ(zero.status().message(), "block store option queue_depth=0: expected 1 to 4096");

  const std::string file = scratch.path() + "/plain-file";
  std::ofstream(file) << "x";
  Result<std::unique_ptr<PosixBlockStore>> not_dir =
      PosixBlockStore::open(file, preset("tiny"), {});
  ASSERT_FALSE(not_dir.hasValue());
  EXPECT_EQ(not_dir.status().message(), "block store directory: " + file + ": not a directory");

  ModelSpec bad = preset("tiny");
  bad.block_tokens = 0;
  Result<std::unique_ptr<PosixBlockStore>> geometry =
      PosixBlockStore::open(scratch.path(), bad, {});
  ASSERT_FALSE(geometry.hasValue());
  EXPECT_EQ(geometry.status().message(), "model 'tiny': block_tokens: must be positive");
}

// A block written by a store of another model, in the same directory, is
// corrupt for this one: ids do not include the model, the header does.
TEST(PosixBlockStoreTest, ABlockOfAnotherModelIsCorrupt) {
  ScratchDir scratch;
  const ModelSpec tiny = preset("tiny");
  ModelSpec other = tiny;
  other.name = "tiny-8-layers";
  other.layers = 8;
  auto writer = openStore(scratch.path(), other);
  auto reader = openStore(scratch.path(), tiny);
  ASSERT_NE(writer, nullptr);
  ASSERT_NE(reader, nullptr);
  const BlockId id{.hi = 8, .lo = 8};
  ASSERT_TRUE(writer->write(id, payloadFor(id, other.fullBlockBytes())).isOk());
  AlignedBuffers buffers(1, tiny.fullBlockBytes());
  const Status status = readOne(*reader, id, buffers[0]);
  EXPECT_EQ(status.code(), StatusCode::corrupt);
  EXPECT_EQ(status.message(),
            fmt::format("block {} ({}): geometry 8 layers x 16 tokens x 64 B, the store's model "
                        "'tiny' is 4 x 16 x 64 B",
                        id.toHex(), reader->blockPath(id)));
}

TEST(PosixBlockStoreTest, AnUnreadableFileIsAnIoErrorNamingIt) {
  // Not a mode-000 file, which root reads anyway: a directory where the
  // file should be fails for everyone (read() gives EISDIR).
  ScratchDir scratch;
  auto store = openStore(scratch.path(), preset("tiny"));
  ASSERT_NE(store, nullptr);
  const BlockId id{.hi = 0x4444, .lo = 4};
  std::filesystem::create_directories(store->blockPath(id));
  AlignedBuffers buffers(1, 4096);
  const Status status = readOne(*store, id, buffers[0]);
  EXPECT_EQ(status.code(), StatusCode::io) << status.toString();
  EXPECT_EQ(status.message(),
            fmt::format("block {} ({}): read: Is a directory", id.toHex(), store->blockPath(id)));
}

// io_uring reads a block whose destination is not registered with one readv
// (header and payload), and one in a registered region with two fixed reads.
// A file cut short anywhere gives the same exact outcome either way, with
// O_DIRECT (where a short read that stops on the alignment is followed by one
// that meets the end of the file) and through the page cache.
TEST(PosixBlockStoreTest, TruncatedFilesGiveTheSameOutcomeWithOneReadOrTwo) {
  const ModelSpec model = preset("tiny");  // 4 KiB payloads
  const std::pair<std::uintmax_t, std::string> cuts[] = {
      {0, "truncated header: 0 of 4096 bytes"},
      {10, "truncated header: 10 of 4096 bytes"},
      {kBlockHeaderBytes, "truncated payload: 0 of 4096 bytes"},
      {kBlockHeaderBytes + 1000, "truncated payload: 1000 of 4096 bytes"},
      {kBlockHeaderBytes + 2048, "truncated payload: 2048 of 4096 bytes"},
      {kBlockHeaderBytes + 4096, ""},  // whole: ok
  };
  for (const bool direct : {true, false}) {
    SCOPED_TRACE(direct ? "O_DIRECT where the file system allows it" : "page cache");
    ScratchDir scratch;
    PosixBlockStoreOptions options;
    options.io_engine = IoEngine::io_uring;
    options.fsync = FsyncPolicy::none;
    options.direct_io = direct;
    auto store = openStore(scratch.path(), model, options);
    ASSERT_NE(store, nullptr);
    AlignedBuffers registered(std::size(cuts), model.fullBlockBytes());
    AlignedBuffers unregistered(std::size(cuts), model.fullBlockBytes());
    const std::span<std::byte> regions[] = {registered.region()};
    ASSERT_TRUE(store->registerBuffers(regions).isOk());

    ReadBatch batch;
    std::vector<BlockId> ids;
    for (std::size_t i = 0; i < std::size(cuts); ++i) {
      ids.push_back(BlockId{.hi = 0x5157, .lo = i});
      ASSERT_TRUE(store->write(ids[i], payloadFor(ids[i], model.fullBlockBytes())).isOk());
      std::filesystem::resize_file(store->blockPath(ids[i]), cuts[i].first);
      batch.add(ids[i], unregistered[i]);
      batch.add(ids[i], registered[i]);
    }
    ASSERT_TRUE(store->read(batch, later()).isOk());
    EXPECT_EQ(store->counters().fixed_buffer_reads, std::size(cuts));
    EXPECT_EQ(store->counters().direct_reads, store->directIo() ? 2 * std::size(cuts) : 0u);
    EXPECT_TRUE(direct || !store->directIo());
    for (std::size_t i = 0; i < std::size(cuts); ++i) {
      for (const std::size_t r : {2 * i, 2 * i + 1}) {
        const Status& status = batch.reads()[r].status;
        SCOPED_TRACE(r % 2 == 0 ? "one readv" : "two fixed reads");
        if (cuts[i].second.empty()) {
          EXPECT_TRUE(status.isOk()) << status.toString();
          continue;
        }
        EXPECT_EQ(status.code(), StatusCode::corrupt) << status.toString();
        EXPECT_EQ(status.message(), fmt::format("block {} ({}): {}", ids[i].toHex(),
                                                store->blockPath(ids[i]), cuts[i].second));
      }
    }
    const std::vector<std::byte> whole = payloadFor(ids.back(), model.fullBlockBytes());
    EXPECT_EQ(whole, std::vector<std::byte>(unregistered[std::size(cuts) - 1].begin(),
                                            unregistered[std::size(cuts) - 1].end()));
    EXPECT_EQ(whole, std::vector<std::byte>(registered[std::size(cuts) - 1].begin(),
                                            registered[std::size(cuts) - 1].end()));
  }
}

// The io_uring engine with a short queue, so that a batch outgrows it.
PosixBlockStoreOptions uringWithQueueDepth(std::uint32_t depth) {
  PosixBlockStoreOptions options;
  options.io_engine = IoEngine::io_uring;
  options.fsync = FsyncPolicy::none;
  options.queue_depth = depth;
  return options;
}

// poll() drives io_uring to the end of a batch larger than its queue: the
// completions it reaps free slots that it refills, with no wait().
TEST(PosixBlockStoreTest, PollingRefillsTheIoUringQueue) {
  ScratchDir scratch;
  const ModelSpec model = preset("tiny");
  auto store = openStore(scratch.path(), model, uringWithQueueDepth(2));
  ASSERT_NE(store, nullptr);
  constexpr std::size_t kBlocks = 50;
  AlignedBuffers buffers(kBlocks, model.fullBlockBytes());
  ReadBatch batch;
  for (std::size_t i = 0; i < kBlocks; ++i) {
    const BlockId id{.hi = 0x9011, .lo = i};
    ASSERT_TRUE(store->write(id, payloadFor(id, model.fullBlockBytes())).isOk());
    batch.add(id, buffers[i]);
  }
  ASSERT_TRUE(store->submit(batch).isOk());
  std::size_t polls = 0;
  const Deadline give_up = later();
  bool done = false;
  while (!done && Clock::now() < give_up) {
    Result<bool> polled = store->poll(batch);
    ASSERT_TRUE(polled.hasValue()) << polled.status().toString();
    done = *polled;
    ++polls;
  }
  ASSERT_TRUE(done);
  EXPECT_GT(polls, 1u);  // 2 in flight of 50: no single poll finds them all done
  EXPECT_FALSE(batch.inFlight());
  EXPECT_EQ(batch.failures(), 0u);
  for (std::size_t i = 0; i < kBlocks; ++i) {
    EXPECT_EQ(payloadFor(batch.reads()[i].id, model.fullBlockBytes()),
              std::vector<std::byte>(buffers[i].begin(), buffers[i].end()))
        << i;
  }
  EXPECT_EQ(store->counters().reads_ok, kBlocks);
}

TEST(PosixBlockStoreTest, TheIoUringEngineTakesOneBatchAtATimeAndSaysSo) {
  ScratchDir scratch;
  const ModelSpec model = preset("tiny");
  auto store = openStore(scratch.path(), model, uringWithQueueDepth(2));
  ASSERT_NE(store, nullptr);
  constexpr std::size_t kBlocks = 8;
  AlignedBuffers buffers(2 * kBlocks, model.fullBlockBytes());
  ReadBatch first, second;
  for (std::size_t i = 0; i < 2 * kBlocks; ++i) {
    const BlockId id{.hi = 0xba7c, .lo = i};
    ASSERT_TRUE(store->write(id, payloadFor(id, model.fullBlockBytes())).isOk());
    (i < kBlocks ? first : second).add(id, buffers[i]);
  }
  ASSERT_TRUE(store->submit(first).isOk());
  const Status refused = store->submit(second);
  EXPECT_EQ(refused.code(), StatusCode::invalid_usage);
  EXPECT_THAT(refused.message(),
              ::testing::HasSubstr("another batch in flight (it takes one at a time)"));
  EXPECT_THAT(refused.message(), ::testing::HasSubstr(second.reads()[0].id.toHex()));
  EXPECT_FALSE(second.inFlight()) << "a refused batch is not started";

  // Polling: a read whose status left `pending` is final before the batch ends.
  std::size_t final_before_the_end = 0;
  bool done = false;
  const Deadline give_up = later();
  while (!done && Clock::now() < give_up) {
    Result<bool> polled = store->poll(first);
    ASSERT_TRUE(polled.hasValue()) << polled.status().toString();
    done = *polled;
    if (done) break;
    for (const BlockRead& read : first.reads()) {
      if (read.status.code() == StatusCode::again) continue;
      ASSERT_TRUE(read.status.isOk()) << read.status.toString();
      EXPECT_EQ(payloadFor(read.id, model.fullBlockBytes()),
                std::vector<std::byte>(read.destination.begin(), read.destination.end()));
      ++final_before_the_end;
    }
  }
  ASSERT_TRUE(done);
  EXPECT_GT(final_before_the_end, 0u) << "2 in flight of 8: some finish before the batch";
  ASSERT_TRUE(store->read(second, later()).isOk());
  EXPECT_EQ(second.failures(), 0u);
  EXPECT_EQ(store->counters().reads_ok, 2 * kBlocks);
}

}  // namespace
}  // namespace dualpath::loader
