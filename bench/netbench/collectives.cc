#include "collectives.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <thread>
#include <utility>

#include <fmt/format.h>

namespace dualpath::bench {

namespace abi = plugin::abi;

// ------------------------------------------------------------ the transfers

// Slices to move, and the order they may move in. Each (peer, direction) is
// one NCCL connection, whose sends meet receives in posting order, so every
// queue posts in the order its transfers were added; a transfer may also wait
// for another one (a slice is forwarded once it has arrived).
class Transfers {
 public:
  enum class Kind : std::uint8_t { send, recv };

  Transfers(NetMesh& mesh, std::string_view collective)
      : mesh_(mesh), collective_(collective), queues_(2 * static_cast<std::size_t>(mesh.ranks())) {}

  // `after`: runs once the transfer is done (a receive's reduction). Returns
  // the transfer's index, for `wait_for`.
  std::size_t add(Kind kind, int peer, const MeshBuffer& buffer, std::size_t offset,
                  std::size_t bytes, std::ptrdiff_t wait_for = -1,
                  std::function<void()> after = {}) {
    const std::size_t index = items_.size();
    void* handle = kind == Kind::send ? buffer.send_handles_[static_cast<std::size_t>(peer)]
                                      : buffer.recv_handles_[static_cast<std::size_t>(peer)];
    items_.push_back(Item{kind, peer, buffer.bytes_.data() + offset, bytes, handle, wait_for,
                          std::move(after)});
    queue(kind, peer).order.push_back(index);
    return index;
  }

  Status run(CollectiveDeadline deadline) {
    std::size_t done = 0;
    std::size_t spins = 0;
    while (done < items_.size()) {
      if ((++spins & 63) == 0 && LaunchClock::now() > deadline) return stalled(done);
      // Ranks share the machine's cores with each other (and with a KV
      // stream's thread): a pass that moved nothing gives the core away.
      const std::size_t done_before = done;
      for (std::size_t q = 0; q < queues_.size(); ++q) {
        Queue& queue = queues_[q];
        for (std::size_t& slot : queue.in_flight) {
          if (slot == kNone) continue;
          Item& item = items_[slot];
          bool finished = false;
          int size = 0;
          DP_TRY(mesh_.plugin_.test(item.request, &finished, &size).withContext(where(item)));
          if (!finished) continue;
          if (item.kind == Kind::recv && static_cast<std::size_t>(size) != item.bytes) {
            return Status(StatusCode::corrupt,
                          fmt::format("{}: {} B arrived, {} B expected", where(item), size,
                                      item.bytes));
          }
          item.done = true;
          if (item.after) item.after();
          ++done;
          slot = kNone;
        }
        DP_TRY(post(queue));
      }
      if (done == done_before) std::this_thread::yield();
    }
    return Status::ok();
  }

 private:
  static constexpr std::size_t kNone = ~std::size_t{0};

  struct Item {
    Kind kind;
    int peer;
    std::byte* data;
    std::size_t bytes;
    void* mhandle;
    std::ptrdiff_t wait_for;
    std::function<void()> after;
    void* request = nullptr;
    bool done = false;
  };
  struct Queue {
    std::vector<std::size_t> order;  // indexes into items_, in posting order
    std::size_t next = 0;
    std::vector<std::size_t> in_flight;  // indexes, kNone for a free slot
  };

  Queue& queue(Kind kind, int peer) {
    return queues_[2 * static_cast<std::size_t>(peer) + (kind == Kind::send ? 0 : 1)];
  }

  std::string where(const Item& item) const {
    return fmt::format("{} on rank {}: {} {} B {} rank {}", collective_, mesh_.rank(),
                       item.kind == Kind::send ? "send of" : "receive of", item.bytes,
                       item.kind == Kind::send ? "to" : "from", item.peer);
  }

  Status post(Queue& queue) {
    if (queue.in_flight.empty()) queue.in_flight.assign(mesh_.options().window, kNone);
    while (queue.next < queue.order.size()) {
      auto free_slot = std::find(queue.in_flight.begin(), queue.in_flight.end(), kNone);
      if (free_slot == queue.in_flight.end()) return Status::ok();
      Item& item = items_[queue.order[queue.next]];
      if (item.wait_for >= 0 && !items_[static_cast<std::size_t>(item.wait_for)].done) {
        return Status::ok();
      }
      const auto peer = static_cast<std::size_t>(item.peer);
      if (item.kind == Kind::send) {
        DP_TRY(mesh_.plugin_
                   .isend(mesh_.send_comms_[peer], item.data, item.bytes, 0, item.mhandle,
                          &item.request)
                   .withContext(where(item)));
      } else {
        DP_TRY(mesh_.plugin_
                   .irecv(mesh_.recv_comms_[peer], item.data, item.bytes, 0, item.mhandle,
                          &item.request)
                   .withContext(where(item)));
      }
      if (item.request == nullptr) return Status::ok();  // the plugin is full: later
      *free_slot = queue.order[queue.next];
      ++queue.next;
    }
    return Status::ok();
  }

  Status stalled(std::size_t done) const {
    for (const Item& item : items_) {
      if (!item.done) {
        return Status(StatusCode::timeout,
                      fmt::format("{}: {} of {} slices moved by the deadline; waiting for the {}",
                                  collective_, done, items_.size(), where(item)));
      }
    }
    return Status(StatusCode::timeout, fmt::format("{}: deadline", collective_));
  }

  NetMesh& mesh_;
  std::string collective_;
  std::vector<Item> items_;
  std::vector<Queue> queues_;
};

namespace {

// [offset, offset + bytes) of slice k of a chunk.
struct Slice {
  std::size_t offset;
  std::size_t bytes;
};

std::vector<Slice> slicesOf(std::size_t chunk_bytes, std::size_t slice_bytes) {
  std::vector<Slice> slices;
  for (std::size_t at = 0; at < chunk_bytes; at += slice_bytes) {
    slices.push_back(Slice{at, std::min(slice_bytes, chunk_bytes - at)});
  }
  return slices;
}

int wrap(int value, int ranks) {
  return ((value % ranks) + ranks) % ranks;
}

Status checkBuffer(std::string_view collective, std::string_view name, const MeshBuffer& buffer,
                   std::size_t needed) {
  if (buffer.bytes().size() < needed) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("{}: {} holds {} B, {} B needed", collective, name,
                              buffer.bytes().size(), needed));
  }
  return Status::ok();
}

}  // namespace

// ------------------------------------------------------------ the mesh

MeshBuffer::MeshBuffer(MeshBuffer&& other) noexcept
    : mesh_(std::exchange(other.mesh_, nullptr)),
      storage_(std::move(other.storage_)),
      bytes_(std::exchange(other.bytes_, {})),
      send_handles_(std::move(other.send_handles_)),
      recv_handles_(std::move(other.recv_handles_)) {}

MeshBuffer& MeshBuffer::operator=(MeshBuffer&& other) noexcept {
  if (this != &other) {
    if (mesh_ != nullptr) mesh_->deregister(*this);
    mesh_ = std::exchange(other.mesh_, nullptr);
    storage_ = std::move(other.storage_);
    bytes_ = std::exchange(other.bytes_, {});
    send_handles_ = std::move(other.send_handles_);
    recv_handles_ = std::move(other.recv_handles_);
  }
  return *this;
}

MeshBuffer::~MeshBuffer() {
  if (mesh_ != nullptr) mesh_->deregister(*this);
}

Result<std::unique_ptr<NetMesh>> NetMesh::connect(NetPlugin& plugin, Bootstrap& bootstrap,
                                                  const MeshOptions& options) {
  if (options.slice_bytes == 0 || options.window == 0) {
    return Status(StatusCode::invalid_argument, "net mesh: slice_bytes and window must be positive");
  }
  const int rank = bootstrap.rank();
  const int ranks = bootstrap.ranks();
  std::unique_ptr<NetMesh> mesh(new NetMesh(plugin, rank, ranks, options));
  DP_TRY_ASSIGN(mesh->ctx_, plugin.init(0x6d657368 /* "mesh" */, options.traffic_class));
  const auto n = static_cast<std::size_t>(ranks);
  mesh->send_comms_.assign(n, nullptr);
  mesh->recv_comms_.assign(n, nullptr);

  // One listen per peer: the handle row this rank publishes.
  std::vector<std::byte> row(n * abi::kHandleBytes);
  std::vector<void*> listens(n, nullptr);
  auto closeListens = [&] {
    for (void* listen : listens) {
      if (listen != nullptr) static_cast<void>(plugin.closeListen(listen));
    }
  };
  for (std::size_t p = 0; p < n; ++p) {
    if (static_cast<int>(p) == rank) continue;
    Status listened = plugin.listen(mesh->ctx_, options.device,
                                    row.data() + p * abi::kHandleBytes, &listens[p]);
    if (!listened.isOk()) {
      closeListens();
      return std::move(listened).withContext(fmt::format("net mesh: rank {}", rank));
    }
  }
  Result<std::vector<std::byte>> table = bootstrap.allGather(row);
  if (!table) {
    closeListens();
    return std::move(table).status();
  }
  // Rank p's row, entry `rank`: the handle p listens on for us. connect()
  // may keep state in it between calls, so each peer gets its own copy.
  std::vector<std::array<std::byte, abi::kHandleBytes>> handles(n);
  for (std::size_t p = 0; p < n; ++p) {
    std::memcpy(handles[p].data(),
                table->data() + (p * n + static_cast<std::size_t>(rank)) * abi::kHandleBytes,
                abi::kHandleBytes);
  }
  std::size_t connected = 0;
  const std::size_t wanted = 2 * (n - 1);
  while (connected < wanted) {
    if (LaunchClock::now() > bootstrap.deadline()) {
      closeListens();
      return Status(StatusCode::timeout,
                    fmt::format("net mesh: rank {}: {} of {} connections by the deadline", rank,
                                connected, wanted));
    }
    connected = 0;
    for (std::size_t p = 0; p < n; ++p) {
      if (static_cast<int>(p) == rank) continue;
      Status step = Status::ok();
      if (mesh->send_comms_[p] == nullptr) {
        step = plugin.connect(mesh->ctx_, options.device, handles[p].data(), &mesh->send_comms_[p]);
      }
      if (step.isOk() && mesh->recv_comms_[p] == nullptr) {
        step = plugin.accept(listens[p], &mesh->recv_comms_[p]);
      }
      if (!step.isOk()) {
        closeListens();
        return std::move(step).withContext(
            fmt::format("net mesh: rank {} connecting with rank {}", rank, p));
      }
      connected += (mesh->send_comms_[p] != nullptr) + (mesh->recv_comms_[p] != nullptr);
    }
  }
  closeListens();
  return mesh;
}

NetMesh::~NetMesh() {
  for (void* comm : send_comms_) {
    if (comm != nullptr) static_cast<void>(plugin_.closeSend(comm));
  }
  for (void* comm : recv_comms_) {
    if (comm != nullptr) static_cast<void>(plugin_.closeRecv(comm));
  }
  if (ctx_ != nullptr) static_cast<void>(plugin_.finalize(ctx_));
}

Result<MeshBuffer> NetMesh::allocate(std::size_t bytes) {
  MeshBuffer buffer;
  buffer.storage_.assign(std::max<std::size_t>(bytes, 1), std::byte{0});
  buffer.bytes_ = std::span<std::byte>(buffer.storage_.data(), bytes);
  buffer.send_handles_.assign(send_comms_.size(), nullptr);
  buffer.recv_handles_.assign(recv_comms_.size(), nullptr);
  buffer.mesh_ = this;  // from here on the destructor deregisters what was registered
  for (std::size_t p = 0; p < send_comms_.size(); ++p) {
    if (send_comms_[p] == nullptr) continue;
    DP_TRY(plugin_.regMr(send_comms_[p], buffer.storage_.data(), buffer.storage_.size(),
                         &buffer.send_handles_[p]));
    DP_TRY(plugin_.regMr(recv_comms_[p], buffer.storage_.data(), buffer.storage_.size(),
                         &buffer.recv_handles_[p]));
  }
  return buffer;
}

void NetMesh::deregister(MeshBuffer& buffer) noexcept {
  for (std::size_t p = 0; p < buffer.send_handles_.size(); ++p) {
    if (buffer.send_handles_[p] != nullptr) {
      static_cast<void>(plugin_.deregMr(send_comms_[p], buffer.send_handles_[p]));
    }
    if (buffer.recv_handles_[p] != nullptr) {
      static_cast<void>(plugin_.deregMr(recv_comms_[p], buffer.recv_handles_[p]));
    }
  }
  buffer.mesh_ = nullptr;
}

// ------------------------------------------------------------ the collectives

Status NetMesh::allGather(MeshBuffer& buffer, std::size_t chunk_bytes,
                          CollectiveDeadline deadline) {
  constexpr std::string_view kName = "all-gather";
  DP_TRY(checkBuffer(kName, "the buffer", buffer, chunk_bytes * static_cast<std::size_t>(ranks_)));
  if (ranks_ == 1 || chunk_bytes == 0) return Status::ok();
  const int next = wrap(rank_ + 1, ranks_);
  const int prev = wrap(rank_ - 1, ranks_);
  const std::vector<Slice> slices = slicesOf(chunk_bytes, options_.slice_bytes);
  Transfers transfers(*this, kName);
  // Step s forwards the chunk that arrived in step s - 1, slice by slice.
  std::vector<std::ptrdiff_t> arrived(slices.size(), -1);
  for (int s = 0; s + 1 < ranks_; ++s) {
    const auto send_chunk = static_cast<std::size_t>(wrap(rank_ - s, ranks_));
    const auto recv_chunk = static_cast<std::size_t>(wrap(rank_ - s - 1, ranks_));
    for (std::size_t k = 0; k < slices.size(); ++k) {
      transfers.add(Transfers::Kind::send, next, buffer,
                    send_chunk * chunk_bytes + slices[k].offset, slices[k].bytes, arrived[k]);
      arrived[k] = static_cast<std::ptrdiff_t>(
          transfers.add(Transfers::Kind::recv, prev, buffer,
                        recv_chunk * chunk_bytes + slices[k].offset, slices[k].bytes));
    }
  }
  return transfers.run(deadline);
}

Status NetMesh::reduceScatter(MeshBuffer& input, MeshBuffer& scratch, std::span<float> output,
                              std::size_t count, CollectiveDeadline deadline) {
  constexpr std::string_view kName = "reduce-scatter";
  const std::size_t chunk_bytes = count * sizeof(float);
  const auto n = static_cast<std::size_t>(ranks_);
  DP_TRY(checkBuffer(kName, "the input", input, chunk_bytes * n));
  DP_TRY(checkBuffer(kName, "the scratch buffer", scratch, chunk_bytes * (n - 1)));
  if (output.size() < count) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("{}: the output holds {} floats, {} needed", kName, output.size(),
                              count));
  }
  std::span<float> in = input.as<float>();
  std::span<float> tmp = scratch.as<float>();
  const auto mine = static_cast<std::size_t>(rank_);
  if (ranks_ == 1 || count == 0) {
    std::copy_n(in.begin() + static_cast<std::ptrdiff_t>(mine * count), count, output.begin());
    return Status::ok();
  }
  const int next = wrap(rank_ + 1, ranks_);
  const int prev = wrap(rank_ - 1, ranks_);
  const std::size_t slice_floats = std::max<std::size_t>(options_.slice_bytes / sizeof(float), 1);
  const std::vector<Slice> slices = slicesOf(count, slice_floats);  // in floats
  Transfers transfers(*this, kName);
  // Step s sends the partial sum of chunk (rank - s - 1): our own part at
  // s = 0, afterwards what arrived in step s - 1 plus our part. The last
  // step receives the partial of our own chunk.
  std::vector<std::ptrdiff_t> arrived(slices.size(), -1);
  for (int s = 0; s + 1 < ranks_; ++s) {
    const auto send_chunk = static_cast<std::size_t>(wrap(rank_ - s - 1, ranks_));
    const auto recv_chunk = static_cast<std::size_t>(wrap(rank_ - s - 2, ranks_));
    const bool last = s + 2 == ranks_;
    const std::size_t scratch_at = static_cast<std::size_t>(s) * count;
    for (std::size_t k = 0; k < slices.size(); ++k) {
      const Slice slice = slices[k];
      transfers.add(Transfers::Kind::send, next, input,
                    (send_chunk * count + slice.offset) * sizeof(float),
                    slice.bytes * sizeof(float), arrived[k]);
      auto reduce = [=] {
        const float* partial = tmp.data() + scratch_at + slice.offset;
        float* own = in.data() + recv_chunk * count + slice.offset;
        float* out = last ? output.data() + slice.offset : own;
        for (std::size_t i = 0; i < slice.bytes; ++i) out[i] = own[i] + partial[i];
      };
      arrived[k] = static_cast<std::ptrdiff_t>(transfers.add(
          Transfers::Kind::recv, prev, scratch, (scratch_at + slice.offset) * sizeof(float),
          slice.bytes * sizeof(float), -1, reduce));
    }
  }
  return transfers.run(deadline);
}

Status NetMesh::allToAll(const MeshBuffer& send, MeshBuffer& recv, std::size_t chunk_bytes,
                         CollectiveDeadline deadline) {
  constexpr std::string_view kName = "all-to-all";
  const auto n = static_cast<std::size_t>(ranks_);
  DP_TRY(checkBuffer(kName, "the send buffer", send, chunk_bytes * n));
  DP_TRY(checkBuffer(kName, "the receive buffer", recv, chunk_bytes * n));
  const auto mine = static_cast<std::size_t>(rank_);
  std::memcpy(recv.bytes().data() + mine * chunk_bytes, send.bytes().data() + mine * chunk_bytes,
              chunk_bytes);
  if (ranks_ == 1 || chunk_bytes == 0) return Status::ok();
  const std::vector<Slice> slices = slicesOf(chunk_bytes, options_.slice_bytes);
  Transfers transfers(*this, kName);
  // Pairwise: in step k every rank sends to rank + k and receives from
  // rank - k; each pair is its own connection, so all steps overlap.
  for (int k = 1; k < ranks_; ++k) {
    const int to = wrap(rank_ + k, ranks_);
    const int from = wrap(rank_ - k, ranks_);
    for (const Slice& slice : slices) {
      transfers.add(Transfers::Kind::send, to, send,
                    static_cast<std::size_t>(to) * chunk_bytes + slice.offset, slice.bytes);
      transfers.add(Transfers::Kind::recv, from, recv,
                    static_cast<std::size_t>(from) * chunk_bytes + slice.offset, slice.bytes);
    }
  }
  return transfers.run(deadline);
}

}  // namespace dualpath::bench
