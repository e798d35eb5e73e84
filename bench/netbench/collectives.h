// Collectives over a NCCL net plugin, moving data the way NCCL moves it
// between nodes: ring AllGather, ring ReduceScatter (sum of floats) and
// pairwise AllToAll, each cut into slices that are pipelined through the
// plugin's isend/irecv/test with a bounded number in flight per connection.
// They exist to measure how KV traffic slows collectives (dualpath-bench
// interference); on a GPU cluster NCCL itself runs them.
//
// NetMesh connects one rank to every other rank both ways, as NCCL's proxy
// does: every rank listens once per peer, the handles travel through the
// bootstrap, and rank i's send connection to j uses the handle j made for i.
//
// Threading: one thread per rank drives its mesh and every collective on it.
// Every call is bounded by its deadline.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <dualpath/common/status.h>

#include "net_plugin.h"
#include "rank_launcher.h"

namespace dualpath::bench {

using CollectiveDeadline = LaunchClock::time_point;

struct MeshOptions {
  int traffic_class = plugin::abi::kTrafficClassUndef;  // the communicator's class
  int device = 0;
  std::size_t slice_bytes = 512 * 1024;  // NCCL's default net chunk is 512 KiB
  std::size_t window = 8;                // slices in flight per connection and direction
};

class NetMesh;

// A host buffer registered with every connection of a mesh; deregistered
// when destroyed (before its mesh).
class MeshBuffer {
 public:
  MeshBuffer() = default;  // empty, registered nowhere
  MeshBuffer(MeshBuffer&& other) noexcept;
  MeshBuffer& operator=(MeshBuffer&& other) noexcept;
  MeshBuffer(const MeshBuffer&) = delete;
  MeshBuffer& operator=(const MeshBuffer&) = delete;
  ~MeshBuffer();

  std::span<std::byte> bytes() const noexcept { return bytes_; }
  template <class T>
  std::span<T> as() const noexcept {
    return {reinterpret_cast<T*>(bytes_.data()), bytes_.size() / sizeof(T)};
  }
  // The plugin's memory handles for the connection to or from `rank`.
  void* sendHandle(int rank) const { return send_handles_[static_cast<std::size_t>(rank)]; }
  void* recvHandle(int rank) const { return recv_handles_[static_cast<std::size_t>(rank)]; }

 private:
  friend class NetMesh;
  friend class Transfers;
  NetMesh* mesh_ = nullptr;
  std::vector<std::byte> storage_;
  std::span<std::byte> bytes_;
  std::vector<void*> send_handles_;  // per rank; null for our own
  std::vector<void*> recv_handles_;
};

class NetMesh {
 public:
  // Connects to every other rank (bounded by the bootstrap's deadline).
  static Result<std::unique_ptr<NetMesh>> connect(NetPlugin& plugin, Bootstrap& bootstrap,
                                                  const MeshOptions& options);
  ~NetMesh();  // closes every connection and finalizes the context
  NetMesh(const NetMesh&) = delete;
  NetMesh& operator=(const NetMesh&) = delete;

  int rank() const noexcept { return rank_; }
  int ranks() const noexcept { return ranks_; }
  const MeshOptions& options() const noexcept { return options_; }
  // The plugin's comms to and from `rank`, for traffic of one's own beside
  // the collectives (one thread per comm at a time).
  void* sendComm(int rank) const { return send_comms_[static_cast<std::size_t>(rank)]; }
  void* recvComm(int rank) const { return recv_comms_[static_cast<std::size_t>(rank)]; }

  // A zeroed buffer of `bytes`, registered with every connection.
  Result<MeshBuffer> allocate(std::size_t bytes);

  // buffer: ranks() chunks of chunk_bytes; this rank's chunk (index rank())
  // is its input. Afterwards every chunk holds its rank's input.
  Status allGather(MeshBuffer& buffer, std::size_t chunk_bytes, CollectiveDeadline deadline);

  // input: ranks() chunks of `count` floats, this rank's contribution to
  // every chunk; it is used as the working copy (its contents change).
  // scratch: at least (ranks() - 1) x count floats. output: `count` floats,
  // the sum over ranks of chunk rank().
  Status reduceScatter(MeshBuffer& input, MeshBuffer& scratch, std::span<float> output,
                       std::size_t count, CollectiveDeadline deadline);

  // send and recv: ranks() chunks of chunk_bytes. Chunk p of send goes to rank
  // p, arriving as chunk rank() of p's recv; our own chunk is copied.
  Status allToAll(const MeshBuffer& send, MeshBuffer& recv, std::size_t chunk_bytes,
                  CollectiveDeadline deadline);

 private:
  friend class MeshBuffer;
  friend class Transfers;
  NetMesh(NetPlugin& plugin, int rank, int ranks, MeshOptions options)
      : plugin_(plugin), rank_(rank), ranks_(ranks), options_(options) {}
  void deregister(MeshBuffer& buffer) noexcept;

  NetPlugin& plugin_;
  int rank_;
  int ranks_;
  MeshOptions options_;
  void* ctx_ = nullptr;
  std::vector<void*> send_comms_;  // per rank; null for our own
  std::vector<void*> recv_comms_;
};

}  // namespace dualpath::bench
