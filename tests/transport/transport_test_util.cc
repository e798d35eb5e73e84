#include "transport_test_util.h"

#include <array>

#include <fmt/format.h>

namespace dualpath::testing {

bool pollUntil(const std::function<bool()>& step, std::chrono::milliseconds deadline) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  while (std::chrono::steady_clock::now() < end) {
    if (step()) return true;
  }
  return false;
}

qos::Policy examplePolicy(const std::string& file_name) {
  std::string path = file_name.empty()
                         ? std::string()
                         : std::string(DUALPATH_SOURCE_DIR) + "/qos/examples/" + file_name;
  Result<qos::Policy> policy = qos::loadPolicyOrError(path, false);
  EXPECT_TRUE(policy.hasValue()) << policy.status().toString();
  return std::move(policy).value();
}

std::shared_ptr<transport::Engine> loopbackEngine(const qos::Policy& policy,
                                                  std::uint32_t timeout_ms) {
  transport::EngineConfig config{policy, transport::DeviceFilter{{"lo"}, {}}, timeout_ms, false};
  Result<std::shared_ptr<transport::Engine>> engine = transport::Engine::create(std::move(config));
  EXPECT_TRUE(engine.hasValue()) << engine.status().toString();
  return engine.hasValue() ? std::move(engine).value() : nullptr;
}

EndpointPair connectPair(transport::Engine& client_engine, transport::Engine& server_engine,
                         std::uint8_t class_index) {
  EndpointPair pair;
  transport::ConnectHandle handle{};
  auto listener = server_engine.listen(0, class_index, &handle);
  EXPECT_TRUE(listener.hasValue()) << listener.status().toString();
  if (!listener) return pair;
  auto connector = client_engine.connect(0, handle, class_index);
  EXPECT_TRUE(connector.hasValue()) << connector.status().toString();
  if (!connector) return pair;
  bool ok = pollUntil([&] {
    if (!pair.client) {
      auto polled = (*connector)->poll();
      if (polled) pair.client = std::move(polled).value();
      else if (polled.status().code() != StatusCode::again) {
        ADD_FAILURE() << "connect: " << polled.status().toString();
        return true;
      }
    }
    if (!pair.server) {
      auto accepted = (*listener)->tryAccept();
      if (accepted) pair.server = std::move(accepted).value();
      else if (accepted.status().code() != StatusCode::again) {
        ADD_FAILURE() << "accept: " << accepted.status().toString();
        return true;
      }
    }
    return pair.client && pair.server;
  });
  EXPECT_TRUE(ok) << "connect/accept did not finish within the deadline";
  return pair;
}

Status waitRequest(transport::Request* request, std::size_t* sizes, std::size_t size_count) {
  Status result = Status(StatusCode::timeout, "request did not finish within the test deadline");
  pollUntil([&] {
    bool done = false;
    Status s = transport::test(request, &done, std::span<std::size_t>(sizes, size_count));
    if (!s.isOk() || done) {
      result = std::move(s);
      return true;
    }
    return false;
  });
  return result;
}

}  // namespace dualpath::testing
