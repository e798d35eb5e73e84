// Test support: the smallest interference run that still measures every case
// (2 ranks, one op at 64 KiB, a few iterations), in a work directory of its
// own that the fixture removes.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>
#include <unistd.h>

#include "interference.h"

namespace dualpath::bench {

class SmallInterferenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    work_dir_ = ::testing::TempDir() + "/interference-" + std::to_string(::getpid());
    std::filesystem::create_directories(work_dir_);
  }
  void TearDown() override { std::filesystem::remove_all(work_dir_); }

  InterferenceOptions smallRun(const std::string& op) const {
    InterferenceOptions o;
    o.ranks = 2;
    o.ops = {op};
    o.min_bytes = 64 * 1024;
    o.max_bytes = 64 * 1024;
    o.iters = 2;
    o.warmup = 1;
    o.min_seconds = 0.1;
    o.work_dir = work_dir_;
    o.timeout = std::chrono::seconds(120);
    return o;
  }

  std::string work_dir_;
};

}  // namespace dualpath::bench
