// Private to the loader: what the KV relay (kv_relay.cc) and the KV handoff
// (kv_handoff.cc) share on their connections: ordered message streams over
// one transport endpoint, and the checks both run on their buffers.
//
// Threading: an Outbox or Inbox belongs to the one thread that drives its
// endpoint's server, client, sender or receiver.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <dualpath/common/params.h>
#include <dualpath/common/status.h>
#include <dualpath/loader/block.h>
#include <dualpath/loader/block_store.h>
#include <dualpath/loader/buffer_pool.h>
#include <dualpath/transport/transport.h>

#include "relay_protocol.h"

namespace dualpath::loader::relay {

// Sends a relay or handoff keeps in flight; the endpoint's request pool is the
// hard limit (postSend says `again`).
inline constexpr std::size_t kMaxSendsInFlight = 8;

inline bool connectionLost(const Status& status) {
  return status.code() == StatusCode::remote || status.code() == StatusCode::timeout;
}

inline std::string geometry(std::uint32_t layers, std::uint32_t tokens, std::uint32_t bytes) {
  return fmt::format("{} layers x {} tokens x {} B", layers, tokens, bytes);
}

inline Status checkPool(const BufferPool& pool, const ModelSpec& model, std::string_view who) {
  DP_TRY(validateBlockGeometry(model));
  if (pool.slotBytes() < model.fullBlockBytes()) {
    return Status(
        StatusCode::invalid_argument,
        fmt::format("{}: buffer '{}' has {}-byte slots, a Full Block of '{}' is {} B", who,
                    pool.name(), pool.slotBytes(), model.name, model.fullBlockBytes()));
  }
  return Status::ok();
}

// DUALPATH_NET_TIMEOUT_MS: how long a side waits for a peer's answer by
// default (a cancel's acknowledgement, a quiet peer's end).
inline std::chrono::milliseconds defaultCancelGrace() {
  Result<const params::Snapshot*> snapshot = params::global();
  return std::chrono::milliseconds(snapshot ? (*snapshot)->net_timeout_ms : 30'000u);
}

// The store serves the model the connection carries.
inline Status checkStore(const BlockStore& store, const ModelSpec& model, std::string_view who,
                         std::string_view carries) {
  const ModelSpec& stored = store.model();
  if (stored.layers == model.layers && stored.block_tokens == model.block_tokens &&
      stored.kv_bytes_per_token_per_layer == model.kv_bytes_per_token_per_layer) {
    return Status::ok();
  }
  return Status(
      StatusCode::invalid_argument,
      fmt::format("{}: the store holds '{}' ({}), the {} '{}' ({})", who, stored.name,
                  geometry(stored.layers, stored.block_tokens, stored.kv_bytes_per_token_per_layer),
                  carries, model.name,
                  geometry(model.layers, model.block_tokens, model.kv_bytes_per_token_per_layer)));
}

// A buffer pool's whole region registered with an endpoint, and the packed
// key a peer needs to put into it (empty unless asked for).
struct RegisteredPool {
  std::unique_ptr<transport::MemoryRegion> region;
  std::vector<std::byte> remote_key;
};

inline Result<RegisteredPool> registerPool(transport::Endpoint& endpoint, const BufferPool& pool,
                                           std::string_view who, bool pack_key) {
  RegisteredPool registered;
  auto region = endpoint.registerMemory(pool.region().data(), pool.region().size());
  if (!region) {
    return std::move(region).status().withContext(
        fmt::format("{}: registering buffer '{}'", who, pool.name()));
  }
  registered.region = std::move(region).value();
  if (!pack_key) return registered;
  auto key = registered.region->packRemoteKey();
  if (!key) return std::move(key).status().withContext(who);
  if (key->empty() || key->size() > kMaxRemoteKeyBytes) {
    return Status(StatusCode::unsupported,
                  fmt::format("{}: UCX packed a {}-byte remote key; 1 to {} B fit a message", who,
                              key->size(), kMaxRemoteKeyBytes));
  }
  registered.remote_key = std::move(key).value();
  return registered;
}

// Messages of one direction, sent in the order they were pushed: one tag is
// one ordered stream, so posting order is arrival order.
class Outbox {
 public:
  explicit Outbox(std::uint32_t tag) : tag_(tag) {}

  void push(std::vector<std::byte> bytes, std::uint64_t request_id = 0,
            MessageKind kind = MessageKind::done) {
    queued_.push_back(Queued{std::move(bytes), request_id, kind});
  }

  // Removes a queued, not yet posted message; false when it was posted.
  bool unqueue(std::uint64_t request_id, MessageKind kind) {
    auto it = std::find_if(queued_.begin(), queued_.end(), [&](const Queued& q) {
      return q.request_id == request_id && q.kind == kind;
    });
    if (it == queued_.end()) return false;
    queued_.erase(it);
    return true;
  }

  // Reaps completed sends and posts queued ones. The connection's error, if
  // a send failed.
  Status pump(transport::Endpoint& endpoint) {
    for (InFlight& f : inflight_) {
      if (f.done) continue;
      Status s = transport::test(f.request, &f.done, {});
      if (!s.isOk()) {
        f.done = true;  // a failed request is recycled too
        return s;
      }
    }
    while (!inflight_.empty() && inflight_.front().done) inflight_.pop_front();
    while (!queued_.empty() && inflight_.size() < kMaxSendsInFlight) {
      std::vector<std::byte>& bytes = queued_.front().bytes;
      Result<transport::Request*> posted = endpoint.postSend(bytes.data(), bytes.size(), tag_, nullptr);
      if (!posted) {
        if (posted.status().code() == StatusCode::again) break;
        return std::move(posted).status();
      }
      inflight_.push_back(InFlight{std::move(bytes), *posted, false});
      queued_.pop_front();
    }
    return Status::ok();
  }

  bool empty() const noexcept { return queued_.empty() && inflight_.empty(); }
  // Messages queued or on the wire.
  std::size_t pending() const noexcept { return queued_.size() + inflight_.size(); }
  // After the endpoint is closed: its requests are gone.
  void drop() noexcept {
    queued_.clear();
    inflight_.clear();
  }

 private:
  struct Queued {
    std::vector<std::byte> bytes;
    std::uint64_t request_id;
    MessageKind kind;
  };
  struct InFlight {
    std::vector<std::byte> bytes;  // owned until the send completes
    transport::Request* request;
    bool done;
  };
  std::uint32_t tag_;
  std::deque<Queued> queued_;
  std::deque<InFlight> inflight_;
};

// A window of receives of one tag, handed over in posting order (the k-th
// receive of a tag meets the k-th send of that tag).
class Inbox {
 public:
  using Handler = std::function<Status(std::span<const std::byte>)>;

  Inbox(std::uint32_t tag, std::size_t window, std::size_t capacity) : tag_(tag), slots_(window) {
    for (Slot& slot : slots_) slot.buffer.resize(capacity);
  }

  // Keeps the window posted and hands every completed receive, oldest first,
  // to `handler`. The first error (the connection's, or the handler's).
  Status pump(transport::Endpoint& endpoint, const Handler& handler) {
    while (true) {
      while (posted_ < slots_.size()) {
        Slot& slot = slots_[(head_ + posted_) % slots_.size()];
        transport::RecvSlot recv{slot.buffer.data(), slot.buffer.size(), tag_};
        Result<transport::Request*> r = endpoint.postRecv({&recv, 1});
        if (!r) {
          if (r.status().code() == StatusCode::again) break;
          return std::move(r).status();
        }
        slot.request = *r;
        ++posted_;
      }
      if (posted_ == 0) return Status::ok();
      Slot& head = slots_[head_];
      bool done = false;
      std::size_t size = 0;
      Status s = transport::test(head.request, &done, {&size, 1});
      if (!s.isOk()) {
        // Recycled by test(); the rest die with the connection.
        head_ = (head_ + 1) % slots_.size();
        --posted_;
        return s;
      }
      if (!done) return Status::ok();
      head.request = nullptr;
      head_ = (head_ + 1) % slots_.size();
      --posted_;
      DP_TRY(handler(std::span<const std::byte>(head.buffer.data(), size)));
    }
  }

  void drop() noexcept {
    posted_ = 0;
    for (Slot& slot : slots_) slot.request = nullptr;
  }

 private:
  struct Slot {
    std::vector<std::byte> buffer;
    transport::Request* request = nullptr;
  };
  std::uint32_t tag_;
  std::vector<Slot> slots_;
  std::size_t head_ = 0;
  std::size_t posted_ = 0;
};

inline std::uint64_t rawRequestId(std::span<const std::byte> message) {
  if (message.size() < kHeaderBytes) return 0;
  std::uint64_t id = 0;
  for (int i = 0; i < 8; ++i)
    id |= std::uint64_t{std::to_integer<std::uint8_t>(message[8 + i])} << (8 * i);
  return id;
}

}  // namespace dualpath::loader::relay
