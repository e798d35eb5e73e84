// The transport core over UCX tcp on loopback, in one process: handshake,
// matching, chunking under the arbiter, puts, limits and handle checks.
#include <algorithm>
#include <array>
#include <chrono>
#include <atomic>
#include <thread>
#include <cstring>
#include <numeric>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "log_capture.h"
#include "transport_test_util.h"
#include "worker.h"

namespace dualpath::transport {
namespace {

using dualpath::testing::connectPair;
using dualpath::testing::EndpointPair;
using dualpath::testing::examplePolicy;
using dualpath::testing::loopbackEngine;
using dualpath::testing::pollUntil;
using dualpath::testing::waitRequest;
using ::testing::HasSubstr;

std::vector<char> pattern(std::size_t size, int seed) {
  std::vector<char> bytes(size);
  for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>((i * 131 + seed) & 0xff);
  return bytes;
}

// `target`, registered on the server end and imported on the client end.
struct PutTarget {
  std::unique_ptr<MemoryRegion> region;
  std::unique_ptr<RemoteRegion> remote;
};

::testing::AssertionResult exposeForPuts(EndpointPair& pair, std::vector<char>& target,
                                         PutTarget& out) {
  auto region = pair.server->registerMemory(target.data(), target.size());
  if (!region) return ::testing::AssertionFailure() << region.status().toString();
  auto key = (*region)->packRemoteKey();
  if (!key) return ::testing::AssertionFailure() << key.status().toString();
  auto remote = pair.client->importRemote(*key, reinterpret_cast<std::uint64_t>(target.data()),
                                          target.size());
  if (!remote) return ::testing::AssertionFailure() << remote.status().toString();
  out.region = std::move(region).value();
  out.remote = std::move(remote).value();
  return ::testing::AssertionSuccess();
}

// Posts (retrying `again`, bounded) and waits for remote completion.
Status putAndWait(EndpointPair& pair, const std::vector<char>& block, const RemoteRegion& remote,
                  std::size_t offset) {
  Result<Request*> put = Status(StatusCode::again);
  if (!pollUntil([&] {
        put = pair.client->postPut(block.data(), block.size(), nullptr, remote, offset);
        return put.hasValue() || put.status().code() != StatusCode::again;
      })) {
    return Status(StatusCode::timeout, "postPut kept saying again");
  }
  if (!put) return std::move(put).status();
  return waitRequest(*put);
}

class TransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    policy_ = examplePolicy("ethernet-testbed.toml");
    engine_ = loopbackEngine(policy_);
    ASSERT_NE(engine_, nullptr);
  }
  std::uint8_t classIndex(const char* name) {
    return static_cast<std::uint8_t>(policy_.indexOf(*policy_.findClass(name)));
  }

  qos::Policy policy_;
  std::shared_ptr<Engine> engine_;
};

TEST_F(TransportTest, LoopbackDeviceIsDescribed) {
  ASSERT_EQ(engine_->devices().size(), 1u);
  const DeviceInfo& lo = engine_->devices()[0];
  EXPECT_EQ(lo.name, "lo");
  EXPECT_EQ(lo.kind, DeviceKind::tcp);
  EXPECT_EQ(lo.ip, "127.0.0.1");
  EXPECT_TRUE(lo.loopback);
  EXPECT_THAT(lo.transports, ::testing::Contains("tcp"));
}

TEST_F(TransportTest, SendArrivesIntact) {
  EndpointPair pair = connectPair(*engine_, *engine_, classIndex("collective"));
  ASSERT_TRUE(pair.client && pair.server);
  std::vector<char> sent = pattern(100'000, 7);
  std::vector<char> received(sent.size());
  RecvSlot slot{received.data(), received.size(), 3};
  auto recv = pair.server->postRecv({&slot, 1});
  ASSERT_TRUE(recv.hasValue()) << recv.status().toString();
  auto send = pair.client->postSend(sent.data(), sent.size(), 3, nullptr);
  ASSERT_TRUE(send.hasValue()) << send.status().toString();
  std::size_t sizes[1] = {0};
  Status send_status = waitRequest(*send);
  ASSERT_TRUE(send_status.isOk()) << send_status.toString();
  Status got = waitRequest(*recv, sizes, 1);
  ASSERT_TRUE(got.isOk()) << got.toString();
  EXPECT_EQ(sizes[0], sent.size());
  EXPECT_EQ(received, sent);
}

TEST_F(TransportTest, LowPriorityMessagesGoInChunksTheArbiterGrants) {
  const std::uint8_t kv = classIndex("kv");
  EndpointPair pair = connectPair(*engine_, *engine_, kv);
  ASSERT_TRUE(pair.client && pair.server);
  const std::size_t chunk = engine_->arbiter(0).maxPostBytes(kv);
  ASSERT_EQ(chunk, policy_.arbiter.chunk);
  const auto before = engine_->arbiter(0).stats(kv);
  // Exactly three chunks' worth: three full chunks plus the empty closing one.
  std::vector<char> sent = pattern(3 * chunk, 11);
  std::vector<char> received(4 * chunk);
  RecvSlot slot{received.data(), received.size(), 0};
  auto recv = pair.server->postRecv({&slot, 1});
  ASSERT_TRUE(recv.hasValue()) << recv.status().toString();
  Result<Request*> send = Status(StatusCode::again);
  ASSERT_TRUE(pollUntil([&] {
    send = pair.client->postSend(sent.data(), sent.size(), 0, nullptr);
    return send.hasValue() || send.status().code() != StatusCode::again;
  }));
  ASSERT_TRUE(send.hasValue()) << send.status().toString();
  std::size_t sizes[1] = {0};
  ASSERT_TRUE(waitRequest(*send).isOk());
  Status got = waitRequest(*recv, sizes, 1);
  ASSERT_TRUE(got.isOk()) << got.toString();
  EXPECT_EQ(sizes[0], sent.size());
  EXPECT_TRUE(std::equal(sent.begin(), sent.end(), received.begin()));
  const auto after = engine_->arbiter(0).stats(kv);
  EXPECT_EQ(after.granted_posts - before.granted_posts, 3u) << "one grant per non-empty chunk";
  EXPECT_EQ(after.granted_bytes - before.granted_bytes, sent.size());
  EXPECT_EQ(after.inflight_bytes, 0u) << "every chunk released";
}

TEST_F(TransportTest, GroupedReceiveLetsTagsPickBuffers) {
  EndpointPair pair = connectPair(*engine_, *engine_, classIndex("collective"));
  ASSERT_TRUE(pair.client && pair.server);
  std::vector<char> a(64), b(64);
  RecvSlot slots[2] = {{a.data(), a.size(), 10}, {b.data(), b.size(), 20}};
  auto recv = pair.server->postRecv(slots);
  ASSERT_TRUE(recv.hasValue());
  auto m20 = pattern(20, 2);
  auto m10 = pattern(10, 1);
  auto s20 = pair.client->postSend(m20.data(), m20.size(), 20, nullptr);
  auto s10 = pair.client->postSend(m10.data(), m10.size(), 10, nullptr);
  ASSERT_TRUE(s20.hasValue() && s10.hasValue());
  std::size_t sizes[2] = {0, 0};
  ASSERT_TRUE(waitRequest(*recv, sizes, 2).isOk());
  EXPECT_EQ(sizes[0], 10u);
  EXPECT_EQ(sizes[1], 20u);
  EXPECT_TRUE(std::equal(m10.begin(), m10.end(), a.begin()));
  EXPECT_TRUE(std::equal(m20.begin(), m20.end(), b.begin()));
  ASSERT_TRUE(waitRequest(*s20).isOk());
  ASSERT_TRUE(waitRequest(*s10).isOk());
}

TEST_F(TransportTest, PutLandsInTheRemoteRegion) {
  const std::uint8_t kv = classIndex("kv");
  EndpointPair pair = connectPair(*engine_, *engine_, kv);
  ASSERT_TRUE(pair.client && pair.server);
  std::vector<char> target(2 << 20, 0);
  PutTarget put_target;
  ASSERT_TRUE(exposeForPuts(pair, target, put_target));
  const RemoteRegion& remote = *put_target.remote;
  // Larger than a chunk, at an offset: several granted puts, one flush.
  std::vector<char> block = pattern(policy_.arbiter.chunk + 4096, 5);
  Status done = putAndWait(pair, block, remote, 4096);
  ASSERT_TRUE(done.isOk()) << done.toString();
  EXPECT_TRUE(std::equal(block.begin(), block.end(), target.begin() + 4096));
  EXPECT_EQ(target[4095], 0);

  auto overrun = pair.client->postPut(block.data(), block.size(), nullptr, remote,
                                      target.size() - 10);
  ASSERT_FALSE(overrun.hasValue());
  EXPECT_EQ(overrun.status().code(), StatusCode::invalid_argument);
  EXPECT_THAT(overrun.status().message(), HasSubstr("overruns the 2097152-byte remote region"));
}

// High priority is not chunked: one 4 MiB put is one message (over TCP, one
// eager active message that the peer reassembles).
TEST_F(TransportTest, AWholeFourMiBPutLandsOnTheHighPriorityClass) {
  EndpointPair pair = connectPair(*engine_, *engine_, classIndex("collective"));
  ASSERT_TRUE(pair.client && pair.server);
  std::vector<char> target(6 << 20, 0);
  PutTarget put_target;
  ASSERT_TRUE(exposeForPuts(pair, target, put_target));
  std::vector<char> block = pattern(4 << 20, 9);
  Status done = putAndWait(pair, block, *put_target.remote, 1 << 20);
  ASSERT_TRUE(done.isOk()) << done.toString();
  EXPECT_TRUE(std::equal(block.begin(), block.end(), target.begin() + (1 << 20)));
  EXPECT_EQ(target[(1 << 20) - 1], 0);
  EXPECT_EQ(target[(5 << 20)], 0);
}

TEST_F(TransportTest, ThirtyThirdReceiveWaitsForAFreeRequest) {
  EndpointPair pair = connectPair(*engine_, *engine_, classIndex("collective"));
  ASSERT_TRUE(pair.client && pair.server);
  std::vector<char> buffer(64);
  RecvSlot slot{buffer.data(), buffer.size(), 1};
  for (std::size_t i = 0; i < kMaxRequestsPerEndpoint; ++i) {
    ASSERT_TRUE(pair.server->postRecv({&slot, 1}).hasValue()) << i;
  }
  auto extra = pair.server->postRecv({&slot, 1});
  ASSERT_FALSE(extra.hasValue());
  EXPECT_EQ(extra.status().code(), StatusCode::again);
}

TEST_F(TransportTest, HandlesFromElsewhereAreRefused) {
  ConnectHandle handle{};
  auto listener = engine_->listen(0, classIndex("collective"), &handle);
  ASSERT_TRUE(listener.hasValue());

  ConnectHandle foreign = handle;
  foreign.magic = 0;
  auto refused = engine_->connect(0, foreign, kAnyClass);
  ASSERT_FALSE(refused.hasValue());
  EXPECT_THAT(refused.status().message(), HasSubstr("not a DualPath handle"));

  // The peer runs another class table: refused before any packet is sent.
  qos::Policy other = policy_;
  other.classes[1].name = "kv-renamed";
  auto other_engine = loopbackEngine(other);
  ASSERT_NE(other_engine, nullptr);
  auto mismatch = other_engine->connect(0, handle, kAnyClass);
  ASSERT_FALSE(mismatch.hasValue());
  EXPECT_THAT(mismatch.status().message(), HasSubstr("both ends must load the same policy"));

  auto wrong_class = engine_->connect(0, handle, classIndex("kv"));
  ASSERT_FALSE(wrong_class.hasValue());
  EXPECT_THAT(wrong_class.status().message(),
              HasSubstr("the listener serves class 'collective' but class 'kv' was requested"));
}

TEST_F(TransportTest, ConnectingToNobodyFailsWithThePeerAddress) {
  ConnectHandle handle{};
  {
    auto listener = engine_->listen(0, classIndex("collective"), &handle);
    ASSERT_TRUE(listener.hasValue());
  }  // closed: nobody listens on that port any more
  auto connector = engine_->connect(0, handle, kAnyClass);
  ASSERT_TRUE(connector.hasValue()) << connector.status().toString();
  dualpath::testing::LogCapture capture;
  Status outcome = Status::ok();
  ASSERT_TRUE(pollUntil([&] {
    auto polled = (*connector)->poll();
    if (polled.hasValue()) return true;
    outcome = polled.status();
    return outcome.code() != StatusCode::again;
  }));
  EXPECT_EQ(outcome.code(), StatusCode::remote) << outcome.toString();
  EXPECT_THAT(outcome.message(), HasSubstr("127.0.0.1:"));
}

// NCCL drives one comm from its service and progress threads, and the loader
// adds its own: every call must be safe from any thread (run under TSan too).
TEST_F(TransportTest, ThreadsSharingAnEndpointLoseNothing) {
  const std::uint8_t kv = classIndex("kv");
  EndpointPair pair = connectPair(*engine_, *engine_, kv);
  ASSERT_TRUE(pair.client && pair.server);
  constexpr int kThreads = 4;
  constexpr int kMessages = 100;
  constexpr std::size_t kSize = 3000;
  std::atomic<int> failures{0};
  auto sender = [&](int tag) {
    for (int k = 0; k < kMessages; ++k) {
      std::vector<char> message = pattern(kSize, tag * 1000 + k);
      Result<Request*> send = Status(StatusCode::again);
      if (!pollUntil([&] {
            send = pair.client->postSend(message.data(), message.size(),
                                         static_cast<std::uint32_t>(tag), nullptr);
            return send.hasValue() || send.status().code() != StatusCode::again;
          }) ||
          !send.hasValue() || !waitRequest(*send).isOk()) {
        ++failures;
        return;
      }
    }
  };
  auto receiver = [&](int tag) {
    std::vector<char> buffer(kSize);
    for (int k = 0; k < kMessages; ++k) {
      RecvSlot slot{buffer.data(), buffer.size(), static_cast<std::uint32_t>(tag)};
      Result<Request*> recv = Status(StatusCode::again);
      if (!pollUntil([&] {
            recv = pair.server->postRecv({&slot, 1});
            return recv.hasValue() || recv.status().code() != StatusCode::again;
          }) ||
          !recv.hasValue()) {
        ++failures;
        return;
      }
      std::size_t size = 0;
      if (!waitRequest(*recv, &size, 1).isOk() || size != kSize ||
          buffer != pattern(kSize, tag * 1000 + k)) {
        ++failures;
        return;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back(sender, t);
    threads.emplace_back(receiver, t);
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(engine_->arbiter(0).stats(kv).inflight_bytes, 0u);
}

// A peer that is alive but never takes the data (a stopped process looks the
// same): the send fails once it has made no progress for the timeout.
TEST(TransportTimeoutTest, ASendThatMakesNoProgressFailsWithinTheTimeout) {
  qos::Policy policy = examplePolicy("ethernet-testbed.toml");
  auto engine = loopbackEngine(policy, /*timeout_ms=*/300);
  ASSERT_NE(engine, nullptr);
  EndpointPair pair = connectPair(*engine, *engine, 0);
  ASSERT_TRUE(pair.client && pair.server);
  // Large enough for UCX's rendezvous protocol: it waits for a receive that
  // never comes.
  std::vector<char> data = pattern(8 << 20, 3);
  auto send = pair.client->postSend(data.data(), data.size(), 1, nullptr);
  ASSERT_TRUE(send.hasValue()) << send.status().toString();
  dualpath::testing::LogCapture capture;
  const auto started = std::chrono::steady_clock::now();
  Status outcome = waitRequest(*send);
  const auto waited = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(outcome.code(), StatusCode::timeout) << outcome.toString();
  EXPECT_THAT(outcome.message(), HasSubstr("made no progress for 300 ms"));
  EXPECT_LT(waited, std::chrono::seconds(5));
  EXPECT_EQ(engine->counters().timeouts, 1u);
  EXPECT_THAT(capture.lines(), ::testing::Contains(HasSubstr("failed")));
  // The connection is unusable now, and says why.
  auto after = pair.client->postSend(data.data(), 8, 1, nullptr);
  ASSERT_FALSE(after.hasValue());
  EXPECT_EQ(after.status().code(), StatusCode::timeout);
}

// ---------------------------------------------------------------- reply routes

// Two engines (two "processes") with a connection each way, as NCCL's one-way
// comms give a pair of ranks: `forward` from a to b, `back` from b to a.
class ReplyRouteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    policy_ = examplePolicy("ethernet-testbed.toml");
    a_ = loopbackEngine(policy_);
    b_ = loopbackEngine(policy_);
    ASSERT_TRUE(a_ && b_);
    forward_ = connectPair(*a_, *b_, 0);
    back_ = connectPair(*b_, *a_, 0);
    ASSERT_TRUE(forward_.client && forward_.server && back_.client && back_.server);
    // Routes are for TCP lanes; with shared memory (the unprefixed run) the
    // data endpoints have no bare ACKs to save.
    tcp_only_ = allLanesTcp(forward_.client->lanes()) && allLanesTcp(back_.client->lanes());
  }

  // One message from `from` to `to`; returns the bytes that arrived.
  static std::vector<char> deliver(Endpoint& from, Endpoint& to, const std::vector<char>& message,
                                   std::uint32_t tag) {
    std::vector<char> received(message.size() + 16, 0);
    RecvSlot slot{received.data(), received.size(), tag};
    auto recv = to.postRecv({&slot, 1});
    EXPECT_TRUE(recv.hasValue()) << recv.status().toString();
    if (!recv) return {};
    auto send = from.postSend(message.data(), message.size(), tag, nullptr);
    EXPECT_TRUE(send.hasValue()) << send.status().toString();
    if (!send) return {};
    // Test both together: each test() progresses only its own engine's
    // worker, and a rendezvous send needs the receiver's.
    bool sent = false;
    bool got = false;
    std::size_t size = 0;
    Status failure;
    const bool finished = pollUntil([&] {
      if (!sent) {
        Status s = transport::test(*send, &sent, {});
        if (!s.isOk()) failure = s;
      }
      if (!got) {
        Status s = transport::test(*recv, &got, std::span<std::size_t>(&size, 1));
        if (!s.isOk()) failure = s;
      }
      return (sent && got) || !failure.isOk();
    });
    EXPECT_TRUE(finished && failure.isOk()) << failure.toString();
    if (!got) return {};
    received.resize(size);
    return received;
  }

  // Ping on `forward`, pong on `back`, `count` times, each checked.
  void pingPong(int count, std::size_t size) {
    for (int i = 0; i < count; ++i) {
      std::vector<char> ping = pattern(size, i);
      ASSERT_EQ(deliver(*forward_.client, *forward_.server, ping, 5), ping) << "ping " << i;
      std::vector<char> pong = pattern(size, i + 1000);
      ASSERT_EQ(deliver(*back_.client, *back_.server, pong, 5), pong) << "pong " << i;
    }
  }

  qos::Policy policy_;
  std::shared_ptr<Engine> a_;
  std::shared_ptr<Engine> b_;
  EndpointPair forward_;
  EndpointPair back_;
  bool tcp_only_ = false;
};

TEST_F(ReplyRouteTest, OneWorkerSendsItsRepliesOverTheOtherDirectionsConnection) {
  pingPong(50, 8);
  if (!tcp_only_) {
    EXPECT_EQ(a_->counters().reply_route_sends + b_->counters().reply_route_sends, 0u);
    return;
  }
  // The lower-named worker's own connection is the route, so its sends are
  // not rerouted; every send of the other worker is.
  const std::uint64_t routed_a = a_->counters().reply_route_sends;
  const std::uint64_t routed_b = b_->counters().reply_route_sends;
  EXPECT_EQ(routed_a + routed_b, 50u);
  EXPECT_TRUE(routed_a == 0 || routed_b == 0) << routed_a << " and " << routed_b;
  // Up to 64 KiB take the route; larger messages keep their own socket.
  pingPong(2, 64 * 1024);
  EXPECT_EQ(a_->counters().reply_route_sends + b_->counters().reply_route_sends, 52u);
  pingPong(2, 64 * 1024 + 1);
  EXPECT_EQ(a_->counters().reply_route_sends + b_->counters().reply_route_sends, 52u);
}

TEST_F(ReplyRouteTest, TheRouteStaysOpenWhileTheOtherDirectionLives) {
  if (!tcp_only_) GTEST_SKIP() << "shared-memory lanes take no route; the tcp. run covers this";
  pingPong(1, 8);
  // The worker whose sends were rerouted is the higher-named one; the route
  // is the connection the other worker opened. Close that one, both ends,
  // while the other direction stays.
  const bool a_rerouted = a_->counters().reply_route_sends == 1;
  EndpointPair& route = a_rerouted ? back_ : forward_;
  EndpointPair& other = a_rerouted ? forward_ : back_;
  Engine& rerouting = a_rerouted ? *a_ : *b_;
  route.client.reset();
  route.server.reset();
  // The surviving direction's messages still arrive, and still go over the
  // parked route when sent by the rerouting worker.
  const std::uint64_t before = rerouting.counters().reply_route_sends;
  for (int i = 0; i < 20; ++i) {
    std::vector<char> message = pattern(8, i);
    ASSERT_EQ(deliver(*other.client, *other.server, message, 9), message) << "message " << i;
  }
  const bool other_is_rerouting = (&other == &forward_) == a_rerouted;
  EXPECT_EQ(rerouting.counters().reply_route_sends - before, other_is_rerouting ? 20u : 0u);
}

TEST_F(ReplyRouteTest, ASendOverTheRouteFailsOnceThePeerHasClosedEverything) {
  if (!tcp_only_) GTEST_SKIP() << "shared-memory lanes take no route; the tcp. run covers this";
  pingPong(1, 8);
  const bool a_rerouted = a_->counters().reply_route_sends == 1;
  // The lower-named worker closes every connection to the other, which
  // closes the route; the other's next small send must fail, not hang.
  EndpointPair& to_lower = a_rerouted ? forward_ : back_;   // rerouting worker is the client
  EndpointPair& from_lower = a_rerouted ? back_ : forward_;
  to_lower.server.reset();
  from_lower.client.reset();
  from_lower.server.reset();
  std::vector<char> message = pattern(8, 1);
  Status outcome;
  ASSERT_TRUE(pollUntil([&] {
    auto send = to_lower.client->postSend(message.data(), message.size(), 2, nullptr);
    if (!send) {
      if (send.status().code() == StatusCode::again) return false;
      outcome = std::move(send).status();
      return true;
    }
    outcome = waitRequest(*send);
    return !outcome.isOk();
  })) << "sends kept succeeding after the peer closed every connection";
  EXPECT_EQ(outcome.code(), StatusCode::remote) << outcome.toString();
}

// Only compiled paths on our machines (no HCA): the judgement itself.
TEST(LaneTest, OnlyAllTcpLanesCountAsAnRdmaFallback) {
  EXPECT_TRUE(isTcpFallback({"tcp/ib0"}));
  EXPECT_TRUE(isTcpFallback({"tcp/eth0", "tcp/ib0"}));
  EXPECT_FALSE(isTcpFallback({"rc_mlx5/mlx5_0:1", "ud_mlx5/mlx5_0:1"}));
  EXPECT_FALSE(isTcpFallback({"posix/memory", "cma/memory"})) << "same host: shm is better";
  EXPECT_FALSE(isTcpFallback({}));
  EXPECT_TRUE(isSharedMemoryLane("sysv/memory"));
  EXPECT_FALSE(isSharedMemoryLane("tcp/lo"));
}

// UCX 1.13 has no RMA lane on TCP: such connections carry puts as our own
// active messages (worker.h, amput); any other lane keeps UCX's puts.
TEST(LaneTest, PutsGoAsActiveMessagesOnlyWhenEveryLaneIsTcp) {
  EXPECT_TRUE(allLanesTcp({"tcp/lo"}));
  EXPECT_TRUE(allLanesTcp({"tcp/eth0", "tcp/ib0"}));
  EXPECT_FALSE(allLanesTcp({"tcp/lo", "cma/memory"}));
  EXPECT_FALSE(allLanesTcp({"rc_mlx5/mlx5_0:1"}));
  EXPECT_FALSE(allLanesTcp({}));
}

TEST(DeviceSelectionTest, PatternsThatMatchNothingAreErrors) {
  DeviceInfo lo;
  lo.name = "lo";
  lo.ip = "127.0.0.1";
  lo.loopback = true;
  DeviceInfo eth;
  eth.name = "eth0";
  eth.ip = "10.0.0.2";
  DeviceInfo docker;
  docker.name = "docker0";
  docker.ip = "172.17.0.1";
  docker.is_virtual = true;

  auto typo = selectDevices({lo, eth}, DeviceFilter{{"eht*"}, {}});
  ASSERT_FALSE(typo.hasValue());
  EXPECT_EQ(typo.status().message(),
            "DUALPATH_NET_DEVICES: 'eht*' matches no UCX network device; devices: lo, eth0");

  auto automatic = selectDevices({lo, docker, eth}, DeviceFilter{});
  ASSERT_TRUE(automatic.hasValue());
  ASSERT_EQ(automatic->size(), 1u);
  EXPECT_EQ((*automatic)[0].name, "eth0") << "physical NIC first; never docker0 or lo silently";

  auto only_lo = selectDevices({lo, docker}, DeviceFilter{});
  ASSERT_TRUE(only_lo.hasValue());
  EXPECT_EQ((*only_lo)[0].name, "lo");

  auto excluded = selectDevices({lo, eth}, DeviceFilter{{"*"}, {"eth*", "lo"}});
  ASSERT_FALSE(excluded.hasValue());
  EXPECT_THAT(excluded.status().message(), HasSubstr("no usable network device"));
}

}  // namespace
}  // namespace dualpath::transport
