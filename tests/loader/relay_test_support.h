// Test support for loader tests that need the KV relay: a PE engine and a DE
// engine on loopback joined by one `kv` connection, the tiny model, block ids
// and random Full Blocks. The same setup as kv_relay_test.cc's harness.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <dualpath/loader/block.h>
#include <dualpath/scheduler/cost_model.h>

#include "transport_test_util.h"

namespace dualpath::loader::testing {

inline ModelSpec tinyModel() {
  return scheduler::modelPreset("tiny").value();
}

// The tiny geometry with 64 layers: a relay then takes many server polls (at
// most 32 puts in flight), so a test can stop the DE between two layers.
inline ModelSpec deepTinyModel() {
  ModelSpec model = tinyModel();
  model.name = "tiny-64-layers";
  model.layers = 64;
  return model;
}

inline BlockId idOf(std::uint64_t n) {
  return BlockId{.hi = 0x5eed, .lo = n};
}

// `count` Full Blocks of random bytes, each different.
inline std::vector<std::vector<std::byte>> randomBlocks(const ModelSpec& model, std::size_t count,
                                                        std::uint64_t seed = 12345) {
  std::mt19937_64 random(seed);
  std::vector<std::vector<std::byte>> blocks;
  for (std::size_t i = 0; i < count; ++i) {
    std::vector<std::byte> payload(model.fullBlockBytes());
    for (std::byte& b : payload) b = static_cast<std::byte>(random() & 0xff);
    blocks.push_back(std::move(payload));
  }
  return blocks;
}

// Two engines on loopback (UCX tcp over lo) and one `kv` connection between
// them: `pe` connected from the PE engine, `de` accepted on the DE engine.
struct KvConnection {
  explicit KvConnection(std::uint32_t timeout_ms = 30'000) {
    policy = dualpath::testing::examplePolicy("ethernet-testbed.toml");
    const auto kv = static_cast<std::uint8_t>(policy.indexOf(*policy.findClass("kv")));
    pe_engine = dualpath::testing::loopbackEngine(policy, timeout_ms);
    de_engine = dualpath::testing::loopbackEngine(policy, timeout_ms);
    if (!pe_engine || !de_engine) return;
    dualpath::testing::EndpointPair pair =
        dualpath::testing::connectPair(*pe_engine, *de_engine, kv);
    pe = std::move(pair.client);
    de = std::move(pair.server);
  }
  bool ready() const { return pe && de; }

  qos::Policy policy;
  std::shared_ptr<transport::Engine> pe_engine;
  std::shared_ptr<transport::Engine> de_engine;
  std::unique_ptr<transport::Endpoint> pe;  // handed to the RelayClient
  std::unique_ptr<transport::Endpoint> de;  // handed to the RelayServer
};

}  // namespace dualpath::loader::testing
