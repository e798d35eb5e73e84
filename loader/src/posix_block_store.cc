#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <functional>
#include <optional>
#include <string_view>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dualpath/common/log.h>
#include <dualpath/loader/block_format.h>
#include <dualpath/loader/posix_block_store.h>

#include "posix_read.h"

namespace dualpath::loader {

using detail::AlignedBytes;
using detail::BlockFiles;
using detail::DioAlignment;
using detail::UniqueFd;

namespace {

constexpr std::string_view kTempMarker = ".tmp.";

// One sequence per process, so that two stores of one process never pick the
// same temp name.
std::atomic<std::uint64_t> g_temp_sequence{0};
std::atomic<bool> g_warned_no_io_uring{false};

Status ioError(std::string_view what, const std::string& path, int error) {
  return Status(StatusCode::io, fmt::format("{}: {}: {}", what, path, std::strerror(error)));
}

std::string hostName() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "unknown-host";
  return name;
}

// A temp file's suffix after ".tmp.": "<pid>.<seq>.<host>".
struct TempName {
  pid_t pid = 0;
  std::string_view host;
};

// The first ".tmp." ends the final name (which never contains one); the host
// name may.
std::optional<TempName> parseTempName(std::string_view name) {
  const std::size_t marker = name.find(kTempMarker);
  if (marker == std::string_view::npos) return std::nullopt;
  std::string_view rest = name.substr(marker + kTempMarker.size());
  TempName parsed;
  auto [pid_end, pid_error] = std::from_chars(rest.data(), rest.data() + rest.size(), parsed.pid);
  const char* end = rest.data() + rest.size();
  if (pid_error != std::errc() || pid_end == rest.data() || pid_end == end || *pid_end != '.' ||
      parsed.pid <= 0) {
    return std::nullopt;
  }
  rest.remove_prefix(static_cast<std::size_t>(pid_end - rest.data()) + 1);
  std::uint64_t sequence = 0;
  auto [seq_end, seq_error] = std::from_chars(rest.data(), rest.data() + rest.size(), sequence);
  if (seq_error != std::errc() || seq_end == rest.data() || seq_end == end || *seq_end != '.') {
    return std::nullopt;
  }
  rest.remove_prefix(static_cast<std::size_t>(seq_end - rest.data()) + 1);
  if (rest.empty()) return std::nullopt;
  parsed.host = rest;
  return parsed;
}

bool processAlive(pid_t pid) {
  return ::kill(pid, 0) == 0 || errno != ESRCH;
}

// Calls `fn(name, d_type)` for each entry of `path` but "." and "..".
Status forEachEntry(const std::string& path,
                    const std::function<void(std::string_view, unsigned char)>& fn) {
  DIR* dir = ::opendir(path.c_str());
  if (dir == nullptr) return ioError("opendir", path, errno);
  while (const dirent* entry = ::readdir(dir)) {
    const std::string_view name(entry->d_name);
    if (name == "." || name == "..") continue;
    fn(name, entry->d_type);
  }
  ::closedir(dir);
  return Status::ok();
}

bool isHexPair(std::string_view name) {
  return name.size() == 2 && std::isxdigit(static_cast<unsigned char>(name[0])) &&
         std::isxdigit(static_cast<unsigned char>(name[1]));
}

Status writeFully(int fd, std::span<const std::byte> bytes, std::uint64_t offset,
                  const std::string& path) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n =
        ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ioError("write", path, errno);
    }
    done += static_cast<std::size_t>(n);
  }
  return Status::ok();
}

Status fsyncPath(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return ioError("open directory", path, errno);
  if (::fsync(fd.get()) != 0) return ioError("fsync directory", path, errno);
  return Status::ok();
}

// mkdir that accepts an existing directory; `created` tells which.
Status makeDirectory(const std::string& path, bool& created) {
  created = ::mkdir(path.c_str(), 0755) == 0;
  if (!created && errno != EEXIST) return ioError("mkdir", path, errno);
  return Status::ok();
}

std::string parentOf(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

Result<FsyncPolicy> parseFsyncPolicy(std::string_view name) {
  Result<FsyncPolicy> policy = params::FsyncPolicyKind::parse(name);
  if (!policy)
    return std::move(policy).status().withContext(fmt::format("fsync policy '{}'", name));
  return policy;
}

Result<IoEngine> parseIoEngine(std::string_view name) {
  Result<IoEngine> engine = params::IoEngineKind::parse(name);
  if (!engine) return std::move(engine).status().withContext(fmt::format("io engine '{}'", name));
  return engine;
}

PosixBlockStoreOptions PosixBlockStoreOptions::fromParams(const params::Snapshot& snapshot) {
  PosixBlockStoreOptions options;
  options.io_engine = snapshot.loader_io_engine;
  options.fsync = snapshot.loader_fsync;
  return options;
}

Result<PosixBlockStoreOptions> PosixBlockStoreOptions::fromEnvironment() {
  DP_TRY_ASSIGN(const params::Snapshot* snapshot, params::global());
  return fromParams(*snapshot);
}

class PosixBlockStore::Impl {
 public:
  Impl(std::string root, const ModelSpec& model, PosixBlockStoreOptions options)
      : options_(std::move(options)),
        host_(hostName()),
        files_(std::move(root), model, DioAlignment{}, counters_) {}

  Status init() {
    const std::string& root = files_.root();
    if (options_.create_directory) DP_TRY(makeDirectories(root));
    struct stat st {};
    if (::stat(root.c_str(), &st) != 0) return ioError("block store directory", root, errno);
    if (!S_ISDIR(st.st_mode)) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("block store directory: {}: not a directory", root));
    }
    if (options_.sweep_temp_files) DP_TRY(sweep());
    if (options_.direct_io) files_.setDio(probeDirectIo());
    return startEngine();
  }

  Status write(const BlockId& id, std::span<const std::byte> full_block) {
    DP_TRY(checkFullBlockToWrite(files_.model(), id, full_block.size()));
    const std::string directory = files_.directory(id);
    DP_TRY(makeFanOut(directory).withContext(fmt::format("writing block {}", id.toHex())));
    const std::string path = files_.path(id);
    const std::string temp = tempName(path);
    Status written = writeTemp(id, full_block, temp);
    if (written && ::rename(temp.c_str(), path.c_str()) != 0) {
      written = ioError("rename temp file to", path, errno);
    }
    if (!written) {
      ::unlink(temp.c_str());
      return std::move(written).withContext(fmt::format("writing block {}", id.toHex()));
    }
    if (options_.fsync == FsyncPolicy::full) {
      DP_TRY(fsyncPath(directory).withContext(fmt::format("writing block {}", id.toHex())));
    }
    ++counters_.writes;
    return Status::ok();
  }

  std::string tempName(const std::string& path) const {
    return fmt::format("{}{}{}.{}.{}", path, kTempMarker, ::getpid(),
                       g_temp_sequence.fetch_add(1, std::memory_order_relaxed), host_);
  }

  PosixBlockStoreOptions options_;
  std::string host_;
  StoreCounters counters_;
  BlockFiles files_;
  std::unique_ptr<detail::Reader> reader_;
  IoEngine engine_ = IoEngine::pread;
  std::uint64_t swept_ = 0;

 private:
  Status makeDirectories(const std::string& path) {
    if (path.empty() || path == "/" || path == ".") return Status::ok();
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) return Status::ok();
    DP_TRY(makeDirectories(parentOf(path)));
    bool created = false;
    return makeDirectory(path, created);
  }

  // Creates <root>/ab and <root>/ab/cd as needed. Under FsyncPolicy::full a
  // new directory's entry is made durable in its parent.
  Status makeFanOut(const std::string& leaf) {
    const std::string middle = parentOf(leaf);
    for (const std::string& dir : {middle, leaf}) {
      bool created = false;
      DP_TRY(makeDirectory(dir, created));
      if (created && options_.fsync == FsyncPolicy::full) DP_TRY(fsyncPath(parentOf(dir)));
    }
    return Status::ok();
  }

  Status writeTemp(const BlockId& id, std::span<const std::byte> payload, const std::string& temp) {
    UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd.valid()) return ioError("create temp file", temp, errno);
    std::byte header[kBlockHeaderBytes];
    encodeBlockHeader(files_.model(), id, payload, header);
    DP_TRY(writeFully(fd.get(), header, 0, temp));
    const std::size_t half = payload.size() / 2;
    DP_TRY(writeFully(fd.get(), payload.first(half), kBlockHeaderBytes, temp));
    if (options_.test_hooks.mid_write) options_.test_hooks.mid_write();
    DP_TRY(writeFully(fd.get(), payload.subspan(half), kBlockHeaderBytes + half, temp));
    if (options_.fsync != FsyncPolicy::none && ::fsync(fd.get()) != 0) {
      return ioError("fsync", temp, errno);
    }
    // close() reports deferred write errors on NFS.
    if (::close(fd.release()) != 0) return ioError("close", temp, errno);
    return Status::ok();
  }

  // Removes temp files left by dead writers of this host: in the root (the
  // O_DIRECT probe) and in every fan-out directory.
  Status sweep() {
    const std::string& root = files_.root();
    std::vector<std::string> directories{root};
    DP_TRY(forEachEntry(root, [&](std::string_view name, unsigned char /*type*/) {
      if (isHexPair(name)) directories.push_back(fmt::format("{}/{}", root, name));
    }));
    for (std::size_t i = 1, n = directories.size(); i < n; ++i) {
      const std::string middle = directories[i];
      DP_TRY(forEachEntry(middle, [&](std::string_view name, unsigned char /*type*/) {
        if (isHexPair(name)) directories.push_back(fmt::format("{}/{}", middle, name));
      }));
    }
    std::uint64_t foreign = 0;
    for (const std::string& directory : directories) {
      std::vector<std::string> stale;
      DP_TRY(forEachEntry(directory, [&](std::string_view name, unsigned char /*type*/) {
        std::optional<TempName> temp = parseTempName(name);
        if (!temp) return;
        if (temp->host != host_) {
          ++foreign;
        } else if (temp->pid != ::getpid() && !processAlive(temp->pid)) {
          stale.push_back(fmt::format("{}/{}", directory, name));
        }
      }));
      for (const std::string& path : stale) {
        if (::unlink(path.c_str()) == 0) {
          ++swept_;
          DP_LOG_DEBUG("loader: removed stale temp file {}", path);
        } else if (errno != ENOENT) {
          DP_LOG_WARN("loader: cannot remove stale temp file {}: {}", path, std::strerror(errno));
        }
      }
    }
    if (swept_ > 0) DP_LOG_INFO("loader: {}: removed {} stale temp files", root, swept_);
    if (foreign > 0) {
      DP_LOG_DEBUG("loader: {}: left {} temp files of other hosts to their own sweeps", root,
                   foreign);
    }
    return Status::ok();
  }

  // statx(STATX_DIOALIGN) on a probe file, which also checks that O_DIRECT
  // opens succeed. Zero alignment: read through the page cache.
  DioAlignment probeDirectIo() {
    const std::string& root = files_.root();
    const std::string probe = tempName(root + "/dio-probe");
    UniqueFd fd(::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd.valid()) {
      DP_LOG_DEBUG(
          "loader: {}: cannot create an O_DIRECT probe ({}); reads go through the page "
          "cache",
          root, std::strerror(errno));
      return {};
    }
    struct statx stx {};
    DioAlignment dio;
    const int statx_result = ::statx(fd.get(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx);
    const int statx_errno = errno;
    if (statx_result == 0 && (stx.stx_mask & STATX_DIOALIGN) != 0 && stx.stx_dio_mem_align != 0 &&
        stx.stx_dio_offset_align != 0 && stx.stx_dio_offset_align <= kBlockHeaderBytes) {
      UniqueFd direct(::open(probe.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
      if (direct.valid()) dio = {stx.stx_dio_mem_align, stx.stx_dio_offset_align};
    }
    ::unlink(probe.c_str());
    if (dio.usable()) {
      DP_LOG_DEBUG("loader: {}: O_DIRECT reads, alignment {} B memory / {} B offset", root,
                   dio.memory, dio.offset);
    } else if (statx_result != 0) {
      DP_LOG_DEBUG("loader: {}: statx: {}; reads go through the page cache", root,
                   std::strerror(statx_errno));
    } else {
      DP_LOG_DEBUG(
          "loader: {}: the file system reports no O_DIRECT alignment (statx "
          "STATX_DIOALIGN); reads go through the page cache",
          root);
    }
    return dio;
  }

  Status startEngine() {
    if (options_.io_engine == IoEngine::pread) {
      reader_ = detail::makePreadReader(files_);
      engine_ = IoEngine::pread;
      return Status::ok();
    }
    Result<std::unique_ptr<detail::Reader>> uring =
        detail::makeUringReader(files_, options_.queue_depth, options_.cancel_grace,
                                options_.test_hooks.io_uring_init_errno);
    if (uring) {
      reader_ = std::move(uring).value();
      engine_ = IoEngine::io_uring;
      return Status::ok();
    }
    if (options_.io_engine == IoEngine::io_uring) {
      return std::move(uring).status().withContext(
          "io engine io_uring (DUALPATH_LOADER_IO_ENGINE) is unavailable");
    }
    if (!g_warned_no_io_uring.exchange(true)) {
      DP_LOG_WARN(
          "loader: io_uring is unavailable ({}), as under a container's default seccomp "
          "profile; block reads use pread, one at a time. "
          "DUALPATH_LOADER_IO_ENGINE=pread silences this",
          uring.status().message());
    }
    reader_ = detail::makePreadReader(files_);
    engine_ = IoEngine::pread;
    return Status::ok();
  }
};

Result<std::unique_ptr<PosixBlockStore>> PosixBlockStore::open(std::string root, ModelSpec model,
                                                               PosixBlockStoreOptions options) {
  DP_TRY(validateBlockGeometry(model));
  if (root.empty()) {
    return Status(StatusCode::invalid_argument, "block store directory: empty path");
  }
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  if (options.queue_depth < 1 || options.queue_depth > 4096) {
    return Status(
        StatusCode::invalid_argument,
        fmt::format("block store option queue_depth={}: expected 1 to 4096", options.queue_depth));
  }
  // The store owns the model; Impl refers to the store's copy.
  std::unique_ptr<PosixBlockStore> store(new PosixBlockStore(std::move(model), nullptr));
  store->impl_ = std::make_unique<Impl>(std::move(root), store->model(), std::move(options));
  DP_TRY(store->impl_->init());
  return store;
}

PosixBlockStore::PosixBlockStore(ModelSpec model, std::unique_ptr<Impl> impl)
    : BlockStore(std::move(model)), impl_(std::move(impl)) {}

PosixBlockStore::~PosixBlockStore() = default;

Status PosixBlockStore::registerBuffers(std::span<const std::span<std::byte>> regions) {
  return impl_->reader_->registerBuffers(regions);
}

Status PosixBlockStore::write(const BlockId& id, std::span<const std::byte> full_block) {
  return impl_->write(id, full_block);
}

StoreCounters PosixBlockStore::counters() const {
  return impl_->counters_;
}

const std::string& PosixBlockStore::root() const noexcept {
  return impl_->files_.root();
}

std::string PosixBlockStore::blockPath(const BlockId& id) const {
  return impl_->files_.path(id);
}

IoEngine PosixBlockStore::engine() const noexcept {
  return impl_->engine_;
}

bool PosixBlockStore::directIo() const noexcept {
  return impl_->files_.dio().usable();
}

std::uint64_t PosixBlockStore::sweptTempFiles() const noexcept {
  return impl_->swept_;
}

Status PosixBlockStore::doSubmit(std::span<BlockRead> reads) {
  return impl_->reader_->submit(reads);
}

Status PosixBlockStore::doWait(std::span<BlockRead> reads, Deadline deadline) {
  return impl_->reader_->wait(reads, deadline);
}

Result<bool> PosixBlockStore::doPoll(std::span<BlockRead> reads) {
  return impl_->reader_->poll(reads);
}

bool PosixBlockStore::doBusy() const {
  return impl_->reader_->busy();
}

}  // namespace dualpath::loader
