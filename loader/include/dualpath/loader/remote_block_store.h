// Block storage across a network: a BlockServer serves its node's BlockStore
// over one transport connection per client, and a RemoteBlockStore is the
// client, a BlockStore like any other. It is how an engine reaches shared
// storage through its storage NIC when the storage is another machine (3FS
// in the paper); the network namespace cluster uses it for its storage links
// (docs/loader.md, "Remote block store").
//
//   client (RemoteBlockStore)                  server (BlockServer)
//     -- store_read(batch, ids) ------------>    store.submit / poll
//     <-- store_outcome(i, status, checksum) --   one per read, in order
//     <-- data: payload (or 0 bytes) ---------   one per read, in order,
//                                                received straight into the
//                                                caller's destination
//     -- store_write(id, checksum), data ----->  store.write
//     <-- store_outcome(status) --------------
//
// Guarantees:
//  - End to end verification: the server's store verifies each block it
//    reads (block_format.h); the client checks the payload it received
//    against the server's XXH3-64 of what it sent, so a read is ok only
//    when the caller's bytes are the stored payload. A write carries the
//    payload's checksum and the server refuses (corrupt) a payload that does
//    not match it.
//  - Outcomes keep the server store's code (not_found, corrupt, io, timeout)
//    and message, prefixed by the server's address: "storage server
//    10.214.3.3:41231: block 0123... (/srv/kv/01/...): not found".
//  - Every wait is bounded: a batch by its deadline, a write by
//    RemoteBlockStoreOptions::write_timeout, a dead or silent server by the
//    transport's DUALPATH_NET_TIMEOUT_MS. A batch that ends with reads still
//    on the wire (its deadline passed, or the connection failed) closes the
//    connection, the only fence that keeps late payloads out of the caller's
//    buffers. The store connects lazily, on its first submit() or write(),
//    and again on the first one after a connection was closed, so it stays
//    usable after a timeout and across a server's restart.
//
// The connection's class: a write() holds its thread until the outcome
// arrives, so a thread that drives several stores stops pumping the others
// meanwhile, and payloads the server already sent them wait unreceived. On a
// link whose arbiter bounds bytes in flight (the low-priority classes'
// low_max_inflight) those payloads can use up the server's budget and hold
// back the very outcome the write waits for, until write_timeout. Give a
// storage link's engine no in-flight bounds (it carries no collectives to
// protect), as the miniature PD cluster does, or drive each store from its
// own thread.
//
// Threading: as BlockStore (one thread at a time). A BlockServer is driven by
// one thread (its poll()); it has no thread of its own. Other components may
// use the same transport Engine from other threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <dualpath/common/status.h>
#include <dualpath/loader/block_store.h>
#include <dualpath/transport/transport.h>

namespace dualpath::loader {

struct RemoteBlockStoreOptions {
  // Bound of one write(): the server's outcome must arrive within it.
  std::chrono::milliseconds write_timeout{30'000};
};

// Where a BlockServer listens, as a client reaches it: the client's engine
// and device (on a node with a storage NIC, that NIC), the server's handle,
// and the traffic class to connect on.
struct BlockServerAddress {
  std::shared_ptr<transport::Engine> engine;
  std::size_t device = 0;
  transport::ConnectHandle handle{};
  std::uint8_t class_index = 0;
};

class RemoteBlockStore final : public BlockStore {
 public:
  // A store of `model` on the server at `address`; nothing is connected yet.
  // The model must be the server store's: the server refuses requests of
  // another geometry, naming both. invalid_argument for a bad geometry, no
  // engine, or a handle that is not a transport handle.
  static Result<std::unique_ptr<RemoteBlockStore>> create(BlockServerAddress address,
                                                          ModelSpec model,
                                                          RemoteBlockStoreOptions options = {});
  ~RemoteBlockStore() override;

  Status write(const BlockId& id, std::span<const std::byte> full_block) override;
  StoreCounters counters() const override { return counters_; }

  // "storage server <address>:<port>", from the handle.
  const std::string& server() const noexcept { return server_; }
  // Why the latest connection was closed; ok when none was.
  const Status& lastFailure() const noexcept { return last_failure_; }
  // Connections made so far (1 after the first use; more after failures).
  std::uint64_t connects() const noexcept { return connects_; }

 private:
  struct Connection;
  RemoteBlockStore(BlockServerAddress address, ModelSpec model, RemoteBlockStoreOptions options,
                   std::string server);

  // Starts a connection when there is none; the handshake finishes in pump().
  Status ensureConnection();

  Status doSubmit(std::span<BlockRead> reads) override;
  Status doWait(std::span<BlockRead> reads, Deadline deadline) override;
  Result<bool> doPoll(std::span<BlockRead> reads) override;
  bool doBusy() const override;

  // Moves the connection on: the handshake, sends, the batch's payload
  // receives, outcomes.
  Status pump();
  // Ends the connection after `why`; the batch's pending reads end with it.
  void breakConnection(Status why);

  BlockServerAddress address_;
  RemoteBlockStoreOptions options_;
  std::string server_;
  std::unique_ptr<Connection> connection_;  // null between connections
  Status last_failure_ = Status::ok();
  std::uint64_t connects_ = 0;
  StoreCounters counters_;
};

struct BlockServerCounters {
  std::uint64_t connections = 0;
  std::uint64_t connections_closed = 0;  // a client went away or broke the protocol
  std::uint64_t reads_ok = 0;
  std::uint64_t reads_failed = 0;
  std::uint64_t writes_ok = 0;
  std::uint64_t writes_failed = 0;
  std::uint64_t bytes_sent = 0;  // payload bytes of ok reads
};

class BlockServer {
 public:
  // Listens on `device` for connections of class `class_index` (or
  // transport::kAnyClass); handle() is what clients connect to. Serves
  // `store`, which must outlive the server, one read batch at a time (the
  // POSIX store's io_uring engine takes one), connections in turn.
  static Result<std::unique_ptr<BlockServer>> create(transport::Engine& engine,
                                                     std::size_t device,
                                                     std::uint8_t class_index, BlockStore& store);
  ~BlockServer();
  BlockServer(const BlockServer&) = delete;
  BlockServer& operator=(const BlockServer&) = delete;

  const transport::ConnectHandle& handle() const noexcept { return handle_; }

  // Accepts, reads requests, serves them; never blocks. An error means the
  // listener broke; a client's failure only closes that client's connection
  // (logged, counted).
  Status poll();

  BlockServerCounters counters() const noexcept { return counters_; }
  std::size_t connections() const noexcept;

 private:
  struct Client;
  BlockServer(std::unique_ptr<transport::Listener> listener, transport::ConnectHandle handle,
              BlockStore& store);
  Status serve(Client& client);
  // true once the queue's front write has its outcome queued.
  Result<bool> serveWrite(Client& client);

  std::unique_ptr<transport::Listener> listener_;
  transport::ConnectHandle handle_;
  BlockStore& store_;
  std::vector<std::unique_ptr<Client>> clients_;
  std::size_t next_client_ = 0;  // who may start the next read batch
  BlockServerCounters counters_;
};

}  // namespace dualpath::loader
