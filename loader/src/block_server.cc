// BlockServer (remote_block_store.h): serves a node's BlockStore to
// RemoteBlockStore clients, one read batch at a time across all clients.
#include <algorithm>
#include <deque>
#include <optional>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include <dualpath/common/log.h>
#include <dualpath/loader/block_format.h>
#include <dualpath/loader/remote_block_store.h>

#include "relay_channel.h"
#include "relay_protocol.h"

namespace dualpath::loader {
namespace {

// Blocks read per store batch: a client's next chunk is read while this one
// is on the wire, and a large request does not hold the store for long.
constexpr std::size_t kChunkBlocks = 8;
constexpr std::size_t kRequestWindow = 4;
// A write's payload is received into a buffer of the size its geometry
// declares, so a write of another model is refused with an outcome rather
// than a truncated receive; a declared size above this breaks the protocol.
constexpr std::uint64_t kMaxWritePayloadBytes = std::uint64_t{1} << 30;

// The geometry a request carries, as a model to compare with the store's.
template <class Message>
ModelSpec requestedModel(const Message& m) {
  ModelSpec model;
  model.name = "client's model";
  model.layers = m.layers;
  model.block_tokens = m.block_tokens;
  model.kv_bytes_per_token_per_layer = m.kv_bytes_per_token_per_layer;
  return model;
}

template <class Message>
std::optional<Deadline> budgetDeadline(const Message& m) {
  if (m.budget_ms == 0) return std::nullopt;
  return Clock::now() + std::chrono::milliseconds(m.budget_ms);
}

}  // namespace

struct BlockServer::Client {
  struct Read {
    relay::StoreReadMessage message;
    std::optional<Deadline> deadline;
    std::size_t next = 0;  // the first block not yet read
  };
  struct Write {
    relay::StoreWriteMessage message;
  };

  explicit Client(std::unique_ptr<transport::Endpoint> e)
      : endpoint(std::move(e)), peer(endpoint->peerName()) {}
  // The endpoint goes first: its receives and sends use the buffers below.
  ~Client() { endpoint.reset(); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  std::unique_ptr<transport::Endpoint> endpoint;
  std::string peer;
  relay::Inbox requests{relay::kStoreRequestTag, kRequestWindow, relay::kMaxStoreReadBytes};
  relay::Outbox outcomes{relay::kStoreOutcomeTag};
  relay::Outbox data{relay::kStoreDataTag};
  std::deque<std::variant<Read, Write>> queue;  // in arrival order
  // The payload of the queue's front write, while its receive is posted.
  std::vector<std::byte> write_payload;
  transport::Request* write_receive = nullptr;
  // The chunk being read for the queue's front read, while submitted.
  ReadBatch batch;
  std::vector<std::vector<std::byte>> buffers;
  bool reading = false;
};

Result<std::unique_ptr<BlockServer>> BlockServer::create(transport::Engine& engine,
                                                         std::size_t device,
                                                         std::uint8_t class_index,
                                                         BlockStore& store) {
  DP_TRY(validateBlockGeometry(store.model()));
  transport::ConnectHandle handle{};
  DP_TRY_ASSIGN(std::unique_ptr<transport::Listener> listener,
                engine.listen(device, class_index, &handle));
  return std::unique_ptr<BlockServer>(new BlockServer(std::move(listener), handle, store));
}

BlockServer::BlockServer(std::unique_ptr<transport::Listener> listener,
                         transport::ConnectHandle handle, BlockStore& store)
    : listener_(std::move(listener)), handle_(handle), store_(store) {}

BlockServer::~BlockServer() {
  // A batch in flight still owns its buffers: end it before they go.
  for (const std::unique_ptr<Client>& client : clients_) {
    if (client->reading) (void)store_.wait(client->batch, Clock::now());
  }
}

std::size_t BlockServer::connections() const noexcept { return clients_.size(); }

Status BlockServer::poll() {
  for (;;) {
    Result<std::unique_ptr<transport::Endpoint>> accepted = listener_->tryAccept();
    if (!accepted) {
      if (accepted.status().code() == StatusCode::again) break;
      return std::move(accepted).status().withContext("block server: accept");
    }
    clients_.push_back(std::make_unique<Client>(std::move(accepted).value()));
    ++counters_.connections;
  }
  if (clients_.empty()) return Status::ok();
  // Connections in turn, starting from a different one each time, so that
  // one client's requests cannot keep the store from the others.
  next_client_ %= clients_.size();
  std::rotate(clients_.begin(), clients_.begin() + static_cast<std::ptrdiff_t>(next_client_),
              clients_.end());
  next_client_ = 1;
  for (std::size_t i = 0; i < clients_.size();) {
    Client& client = *clients_[i];
    Status s = serve(client);
    if (s.isOk()) {
      ++i;
      continue;
    }
    if (client.reading) (void)store_.wait(client.batch, Clock::now());
    // A client that goes away is routine; one that breaks the protocol is not.
    if (relay::connectionLost(s)) {
      DP_LOG_INFO("block server: client {}: connection closed: {}", client.peer, s.toString());
    } else {
      DP_LOG_WARN("block server: client {}: closing the connection: {}", client.peer,
                  s.toString());
    }
    clients_.erase(clients_.begin() + static_cast<std::ptrdiff_t>(i));
    ++counters_.connections_closed;
  }
  return Status::ok();
}

Status BlockServer::serve(Client& client) {
  transport::Endpoint& endpoint = *client.endpoint;
  DP_TRY(client.requests.pump(endpoint, [&](std::span<const std::byte> bytes) -> Status {
    DP_TRY_ASSIGN(relay::Header header, relay::decodeHeader(bytes));
    if (header.kind == relay::MessageKind::store_read) {
      DP_TRY_ASSIGN(relay::StoreReadMessage m, relay::decodeStoreRead(bytes));
      const std::optional<Deadline> deadline = budgetDeadline(m);
      client.queue.emplace_back(Client::Read{std::move(m), deadline, 0});
      return Status::ok();
    }
    DP_TRY_ASSIGN(relay::StoreWriteMessage m, relay::decodeStoreWrite(bytes));
    client.queue.emplace_back(Client::Write{std::move(m)});
    return Status::ok();
  }));

  // The queue's front, in order: a write once its payload is in; a read
  // chunk by chunk, the next chunk once this one's payloads are mostly out.
  while (!client.queue.empty()) {
    if (std::holds_alternative<Client::Write>(client.queue.front())) {
      DP_TRY_ASSIGN(bool written, serveWrite(client));
      if (!written) break;
      continue;
    }
    Client::Read& read = std::get<Client::Read>(client.queue.front());
    const relay::StoreReadMessage& m = read.message;
    if (!client.reading) {
      if (client.data.pending() > kChunkBlocks) break;
      const bool store_free = std::none_of(clients_.begin(), clients_.end(),
                                           [](const auto& c) { return c->reading; });
      if (!store_free) break;
      Status geometry =
          relay::checkStore(store_, requestedModel(m), "block server", "request asks for");
      if (!geometry.isOk()) {
        // Every read of the request fails alike; nothing is read.
        for (std::size_t i = read.next; i < m.blocks.size(); ++i) {
          std::vector<std::byte> bytes;
          relay::encode(relay::StoreOutcomeMessage{m.request_id, static_cast<std::uint32_t>(i),
                                                   m.blocks[i], geometry, 0},
                        bytes);
          client.outcomes.push(std::move(bytes));
          client.data.push({});
          ++counters_.reads_failed;
        }
        client.queue.pop_front();
        continue;
      }
      const std::size_t n = std::min(kChunkBlocks, m.blocks.size() - read.next);
      client.batch.clear();
      client.buffers.resize(n);
      for (std::size_t i = 0; i < n; ++i) {
        client.buffers[i].resize(store_.model().fullBlockBytes());
        client.batch.add(m.blocks[read.next + i], client.buffers[i]);
      }
      DP_TRY(store_.submit(client.batch));
      client.reading = true;
    }
    bool done = false;
    if (read.deadline && Clock::now() >= *read.deadline) {
      DP_TRY(store_.wait(client.batch, Clock::now()));  // ends the rest as timeout
      done = true;
    } else {
      DP_TRY_ASSIGN(done, store_.poll(client.batch));
    }
    if (!done) break;
    client.reading = false;
    std::span<const BlockRead> reads = client.batch.reads();
    for (std::size_t i = 0; i < reads.size(); ++i) {
      const bool ok = reads[i].status.isOk();
      std::vector<std::byte> bytes;
      relay::encode(
          relay::StoreOutcomeMessage{m.request_id, static_cast<std::uint32_t>(read.next + i),
                                     reads[i].id, reads[i].status,
                                     ok ? payloadChecksum(client.buffers[i]) : 0},
          bytes);
      client.outcomes.push(std::move(bytes));
      if (ok) {
        counters_.bytes_sent += client.buffers[i].size();
        ++counters_.reads_ok;
        client.data.push(std::move(client.buffers[i]));
      } else {
        ++counters_.reads_failed;
        client.data.push({});
      }
    }
    read.next += reads.size();
    if (read.next == m.blocks.size()) client.queue.pop_front();
  }
  DP_TRY(client.outcomes.pump(endpoint));
  DP_TRY(client.data.pump(endpoint));
  return Status::ok();
}

Result<bool> BlockServer::serveWrite(Client& client) {
  const relay::StoreWriteMessage& m = std::get<Client::Write>(client.queue.front()).message;
  if (client.write_receive == nullptr) {
    const std::uint64_t declared = std::uint64_t{m.layers} * m.block_tokens *
                                   m.kv_bytes_per_token_per_layer;
    if (declared > kMaxWritePayloadBytes) {
      return Status(StatusCode::corrupt,
                    fmt::format("store_write {}: a {} B Full Block; at most {} B are taken",
                                m.request_id, declared, kMaxWritePayloadBytes));
    }
    client.write_payload.resize(declared);
    const transport::RecvSlot slot{client.write_payload.data(), client.write_payload.size(),
                                   relay::kStoreDataTag};
    Result<transport::Request*> posted = client.endpoint->postRecv({&slot, 1});
    if (!posted) {
      if (posted.status().code() == StatusCode::again) return false;
      return std::move(posted).status();
    }
    client.write_receive = *posted;
  }
  bool arrived = false;
  std::size_t size = 0;
  Status received = transport::test(client.write_receive, &arrived, {&size, 1});
  if (!received.isOk()) {
    client.write_receive = nullptr;  // recycled by test()
    return received;
  }
  if (!arrived) return false;
  client.write_receive = nullptr;

  Status outcome =
      relay::checkStore(store_, requestedModel(m), "block server", "write carries");
  const std::span<const std::byte> payload(client.write_payload.data(), size);
  if (outcome.isOk() && payload.size() != store_.model().fullBlockBytes()) {
    outcome = Status(StatusCode::corrupt,
                     fmt::format("block {}: {} B of payload arrived, a Full Block is {} B",
                                 m.block.toHex(), payload.size(), store_.model().fullBlockBytes()));
  }
  if (outcome.isOk()) {
    if (const std::uint64_t got = payloadChecksum(payload); got != m.checksum) {
      outcome = Status(StatusCode::corrupt,
                       fmt::format("block {}: the payload that arrived (checksum {:016x}) is not "
                                   "the one sent ({:016x}); nothing written",
                                   m.block.toHex(), got, m.checksum));
    }
  }
  if (outcome.isOk()) outcome = store_.write(m.block, payload);
  ++(outcome.isOk() ? counters_.writes_ok : counters_.writes_failed);
  std::vector<std::byte> bytes;
  relay::encode(relay::StoreOutcomeMessage{m.request_id, 0, m.block, outcome, 0}, bytes);
  client.outcomes.push(std::move(bytes));
  client.queue.pop_front();
  return true;
}

}  // namespace dualpath::loader
