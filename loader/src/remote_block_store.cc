#include <dualpath/loader/remote_block_store.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <limits>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <fmt/format.h>
#include <sys/socket.h>

#include <dualpath/common/log.h>
#include <dualpath/loader/block_format.h>

#include "relay_channel.h"
#include "relay_protocol.h"

namespace dualpath::loader {
namespace {

// Outcome receives kept posted, and payload receives posted ahead of the
// reads being served: with the outbox's sends, within the endpoint's pool of
// transport::kMaxRequestsPerEndpoint.
constexpr std::size_t kOutcomeWindow = 8;
constexpr std::size_t kPayloadWindow = 8;
// Nap of a thread that waits for the server.
constexpr std::chrono::microseconds kWaitNap{20};

template <class Message>
void setGeometry(Message& m, const ModelSpec& model, std::chrono::milliseconds budget) {
  m.layers = model.layers;
  m.block_tokens = model.block_tokens;
  m.kv_bytes_per_token_per_layer = model.kv_bytes_per_token_per_layer;
  m.budget_ms = static_cast<std::uint32_t>(
      std::clamp<std::int64_t>(budget.count(), 0, std::numeric_limits<std::uint32_t>::max()));
}

// "storage server 10.215.3.254:41231": the handle's address and the port of
// the class the store connects on.
Result<std::string> serverName(const transport::ConnectHandle& handle, std::uint8_t class_index) {
  if (ntohl(handle.magic) != transport::kConnectHandleMagic ||
      class_index >= handle.ports.size()) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("remote block store: not a transport handle for class {}",
                              class_index));
  }
  char text[INET6_ADDRSTRLEN] = {};
  if (inet_ntop(handle.family, handle.address.data(), text, sizeof text) == nullptr) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("remote block store: the handle's address family {} is not IP",
                              handle.family));
  }
  return fmt::format("storage server {}:{}", text, ntohs(handle.ports[class_index]));
}

}  // namespace

struct RemoteBlockStore::Connection {
  explicit Connection(std::unique_ptr<transport::Connector> c) : connector(std::move(c)) {}
  // The endpoint goes first: its receives and sends use the buffers below.
  ~Connection() { endpoint.reset(); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  std::unique_ptr<transport::Connector> connector;  // until the handshake ends
  std::unique_ptr<transport::Endpoint> endpoint;
  relay::Outbox requests{relay::kStoreRequestTag};
  relay::Inbox outcomes{relay::kStoreOutcomeTag, kOutcomeWindow, relay::kMaxStoreOutcomeBytes};
  std::uint64_t next_request_id = 1;

  // The batch in flight: its reads (the base's ReadBatch, stable while in
  // flight), the payload receives posted into their destinations (in read
  // order: [received, posted)), and what arrived per read.
  bool batch_active = false;
  std::uint64_t batch_id = 0;
  std::span<BlockRead> batch;
  std::size_t posted = 0;
  std::size_t received = 0;
  std::deque<transport::Request*> payloads;  // posted, not yet received, in order
  std::vector<std::size_t> received_bytes;
  std::vector<std::optional<relay::StoreOutcomeMessage>> outcome;
  // Reads with their final status: [0, finished). The server sends outcomes
  // and payloads in read order, so reads end in that order too.
  std::size_t finished = 0;

  // A write waiting for its outcome.
  std::uint64_t write_id = 0;
  std::optional<relay::StoreOutcomeMessage> write_outcome;
};

Result<std::unique_ptr<RemoteBlockStore>> RemoteBlockStore::create(
    BlockServerAddress address, ModelSpec model, RemoteBlockStoreOptions options) {
  if (!address.engine) {
    return Status(StatusCode::invalid_argument, "remote block store: no transport engine");
  }
  DP_TRY(validateBlockGeometry(model));
  if (options.write_timeout.count() <= 0) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("remote block store: write_timeout {} ms must be positive",
                              options.write_timeout.count()));
  }
  DP_TRY_ASSIGN(std::string server, serverName(address.handle, address.class_index));
  return std::unique_ptr<RemoteBlockStore>(
      new RemoteBlockStore(std::move(address), std::move(model), options, std::move(server)));
}

RemoteBlockStore::RemoteBlockStore(BlockServerAddress address, ModelSpec model,
                                   RemoteBlockStoreOptions options, std::string server)
    : BlockStore(std::move(model)),
      address_(std::move(address)),
      options_(options),
      server_(std::move(server)) {}

RemoteBlockStore::~RemoteBlockStore() = default;

bool RemoteBlockStore::doBusy() const { return connection_ && connection_->batch_active; }

Status RemoteBlockStore::ensureConnection() {
  if (connection_) return Status::ok();
  Result<std::unique_ptr<transport::Connector>> connector =
      address_.engine->connect(address_.device, address_.handle, address_.class_index);
  if (!connector) return std::move(connector).status().withContext(server_ + ": connect");
  connection_ = std::make_unique<Connection>(std::move(connector).value());
  ++connects_;
  return Status::ok();
}

Status RemoteBlockStore::doSubmit(std::span<BlockRead> reads) {
  DP_TRY(ensureConnection());
  Connection& c = *connection_;
  relay::StoreReadMessage message;
  message.request_id = c.next_request_id++;
  // No budget: the deadline is wait()'s, which the server never learns; a
  // batch that passes it closes the connection, and the server drops it.
  setGeometry(message, model(), std::chrono::milliseconds(0));
  message.blocks.reserve(reads.size());
  for (const BlockRead& read : reads) message.blocks.push_back(read.id);
  std::vector<std::byte> bytes;
  DP_TRY(relay::encode(message, bytes));
  c.requests.push(std::move(bytes));
  c.batch_active = true;
  c.batch_id = message.request_id;
  c.batch = reads;
  c.posted = 0;
  c.received = 0;
  c.payloads.clear();
  c.received_bytes.assign(reads.size(), 0);
  c.outcome.assign(reads.size(), std::nullopt);
  c.finished = 0;
  return Status::ok();
}

Status RemoteBlockStore::pump() {
  Connection& c = *connection_;
  const std::span<BlockRead> reads = c.batch;
  if (!c.endpoint) {
    Result<std::unique_ptr<transport::Endpoint>> connected = c.connector->poll();
    if (!connected) {
      if (connected.status().code() == StatusCode::again) return Status::ok();
      return std::move(connected).status();
    }
    c.endpoint = std::move(connected).value();
    c.connector.reset();
  }
  transport::Endpoint& endpoint = *c.endpoint;
  DP_TRY(c.requests.pump(endpoint));

  if (c.batch_active) {
    while (c.posted < reads.size() && c.payloads.size() < kPayloadWindow) {
      BlockRead& read = reads[c.posted];
      const transport::RecvSlot slot{read.destination.data(), read.destination.size(),
                                     relay::kStoreDataTag};
      Result<transport::Request*> posted = endpoint.postRecv({&slot, 1});
      if (!posted) {
        if (posted.status().code() == StatusCode::again) break;
        return std::move(posted).status();
      }
      c.payloads.push_back(*posted);
      ++c.posted;
    }
    while (!c.payloads.empty()) {
      bool done = false;
      std::size_t size = 0;
      Status s = transport::test(c.payloads.front(), &done, {&size, 1});
      if (!s.isOk()) {
        c.payloads.pop_front();  // recycled by test()
        return s;
      }
      if (!done) break;
      c.payloads.pop_front();
      c.received_bytes[c.received++] = size;
    }
  }

  DP_TRY(c.outcomes.pump(endpoint, [&](std::span<const std::byte> bytes) -> Status {
    DP_TRY_ASSIGN(relay::StoreOutcomeMessage m, relay::decodeStoreOutcome(bytes));
    if (c.write_id != 0 && m.request_id == c.write_id) {
      c.write_outcome = std::move(m);
      return Status::ok();
    }
    if (!c.batch_active || m.request_id != c.batch_id || m.block_index >= reads.size() ||
        c.outcome[m.block_index] || m.block != reads[m.block_index].id) {
      return Status(StatusCode::corrupt,
                    fmt::format("an outcome for request {} block {} ({}) that was not asked for",
                                m.request_id, m.block_index, m.block.toHex()));
    }
    c.outcome[m.block_index] = std::move(m);
    return Status::ok();
  }));

  if (!c.batch_active) return Status::ok();
  // A read ends once both its outcome and its payload message are in.
  for (; c.finished < c.received && c.outcome[c.finished]; ++c.finished) {
    BlockRead& read = reads[c.finished];
    const std::size_t received = c.received_bytes[c.finished];
    const relay::StoreOutcomeMessage& m = *c.outcome[c.finished];
    if (!m.status.isOk()) {
      read.status = Status(m.status.code(), fmt::format("{}: {}", server_, m.status.message()));
    } else if (received != read.destination.size()) {
      read.status = Status(StatusCode::corrupt,
                           fmt::format("{}: block {}: received {} B, a Full Block is {} B",
                                       server_, read.id.toHex(), received,
                                       read.destination.size()));
    } else if (const std::uint64_t got = payloadChecksum(read.destination); got != m.checksum) {
      read.status = Status(
          StatusCode::corrupt,
          fmt::format("{}: block {}: the payload received (checksum {:016x}) is not the one sent "
                      "({:016x})",
                      server_, read.id.toHex(), got, m.checksum));
    } else {
      read.status = Status::ok();
    }
    if (read.status.isOk()) {
      ++counters_.reads_ok;
      counters_.bytes_read += read.destination.size();
    } else {
      ++counters_.reads_failed;
    }
  }
  if (c.finished == reads.size()) c.batch_active = false;
  return Status::ok();
}

void RemoteBlockStore::breakConnection(Status why) {
  if (connection_ && connection_->batch_active) {
    for (BlockRead& read : connection_->batch) {
      if (read.status.code() != StatusCode::again) continue;
      read.status = Status(why.code(), fmt::format("{}: block {}: {}", server_, read.id.toHex(),
                                                   why.message()));
      ++counters_.reads_failed;
    }
  }
  // Closing the endpoint is the fence: no late payload lands in a caller's
  // buffer after this. The next submit() or write() connects again.
  connection_.reset();
  DP_LOG_WARN("remote block store: {}: connection closed: {}", server_, why.toString());
  last_failure_ = std::move(why);
}

Result<bool> RemoteBlockStore::doPoll(std::span<BlockRead> /*reads: the submitted batch*/) {
  if (!connection_ || !connection_->batch_active) return true;
  if (Status s = pump(); !s.isOk()) {
    breakConnection(std::move(s));
    return true;
  }
  return !connection_->batch_active;
}

Status RemoteBlockStore::doWait(std::span<BlockRead> reads, Deadline deadline) {
  for (;;) {
    // A deadline already past ends the pending reads without looking further.
    if (Clock::now() < deadline) {
      DP_TRY_ASSIGN(bool done, doPoll(reads));
      if (done) return Status::ok();
    }
    if (Clock::now() >= deadline) {
      for (BlockRead& read : reads) {
        if (read.status.code() != StatusCode::again) continue;
        read.status = Status(StatusCode::timeout,
                             fmt::format("{}: block {}: not read before the deadline", server_,
                                         read.id.toHex()));
        ++counters_.reads_failed;
      }
      // Payload receives may still be posted into the callers' buffers.
      breakConnection(Status(StatusCode::timeout, "a read batch passed its deadline"));
      return Status::ok();
    }
    std::this_thread::sleep_for(kWaitNap);
  }
}

Status RemoteBlockStore::write(const BlockId& id, std::span<const std::byte> full_block) {
  DP_TRY(checkFullBlockToWrite(model(), id, full_block.size()));
  DP_TRY(ensureConnection());
  Connection& c = *connection_;
  const Deadline deadline = Clock::now() + options_.write_timeout;
  relay::StoreWriteMessage message;
  message.request_id = c.next_request_id++;
  setGeometry(message, model(), options_.write_timeout);
  message.block = id;
  message.checksum = payloadChecksum(full_block);
  std::vector<std::byte> bytes;
  relay::encode(message, bytes);
  c.requests.push(std::move(bytes));
  c.write_id = message.request_id;
  c.write_outcome.reset();

  // Ends the write: the connection too when the payload may still be on its
  // way out of the caller's buffer.
  auto fail = [&](Status why) {
    c.write_id = 0;
    breakConnection(why);
    return Status(why.code(), fmt::format("{}: block {}: write: {}", server_, id.toHex(),
                                          why.message()));
  };
  transport::Request* payload = nullptr;
  bool payload_sent = false;
  while (!payload_sent || !c.write_outcome) {
    if (Status s = pump(); !s.isOk()) return fail(std::move(s));
    if (!c.endpoint) {
      // Still connecting.
    } else if (payload == nullptr) {
      // The server pairs payloads with store_writes in order, one each.
      Result<transport::Request*> posted = c.endpoint->postSend(
          full_block.data(), full_block.size(), relay::kStoreDataTag, nullptr);
      if (posted) {
        payload = *posted;
      } else if (posted.status().code() != StatusCode::again) {
        return fail(std::move(posted).status());
      }
    } else if (!payload_sent) {
      if (Status s = transport::test(payload, &payload_sent, {}); !s.isOk()) {
        return fail(std::move(s));
      }
    }
    if (payload_sent && c.write_outcome) break;
    if (Clock::now() >= deadline) {
      return fail(Status(StatusCode::timeout,
                         fmt::format("no outcome within {} ms", options_.write_timeout.count())));
    }
    std::this_thread::sleep_for(kWaitNap);
  }
  c.write_id = 0;
  const Status outcome = std::move(c.write_outcome->status);
  c.write_outcome.reset();
  if (!outcome.isOk()) {
    return Status(outcome.code(), fmt::format("{}: {}", server_, outcome.message()));
  }
  ++counters_.writes;
  return Status::ok();
}

}  // namespace dualpath::loader
