// The transport core over UCX tcp on loopback, in one process: handshake,
// matching, chunking under the arbiter, puts, limits and handle checks.
#include <array>
#include <cstring>
#include <numeric>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "log_capture.h"
#include "transport_test_util.h"

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

}  // namespace
}  // namespace dualpath::transport
