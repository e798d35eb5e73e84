// Test support for the transport: an engine on loopback, bounded polling, and
// a connected pair of endpoints in one process.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include <dualpath/qos/policy_loader.h>
#include <dualpath/transport/transport.h>

namespace dualpath::testing {

// Every wait in the transport tests is bounded by this.
inline constexpr std::chrono::seconds kTestDeadline{20};

// Polls `step` until it returns true or the deadline passes. No sleeps: the
// step itself drives UCX progress.
bool pollUntil(const std::function<bool()>& step,
               std::chrono::milliseconds deadline = kTestDeadline);

// The built-in policy or a qos/examples file, as a loaded Policy.
qos::Policy examplePolicy(const std::string& file_name = "");

// An engine on the loopback device (UCX tcp over lo, plus shm when allowed).
std::shared_ptr<transport::Engine> loopbackEngine(const qos::Policy& policy,
                                                  std::uint32_t timeout_ms = 30'000);

struct EndpointPair {
  std::unique_ptr<transport::Endpoint> client;
  std::unique_ptr<transport::Endpoint> server;
};

// Listens on `server_engine`, connects from `client_engine`, and drives both
// until each side has its endpoint.
EndpointPair connectPair(transport::Engine& client_engine, transport::Engine& server_engine,
                         std::uint8_t class_index);

// Tests a request until it is done; fails the test on an error or deadline.
Status waitRequest(transport::Request* request, std::size_t* sizes = nullptr,
                              std::size_t size_count = 0);

}  // namespace dualpath::testing
