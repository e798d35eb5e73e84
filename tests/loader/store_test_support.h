// Test support for the loader's block stores: payloads, aligned buffers and
// scratch directories.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <unistd.h>

#include <dualpath/loader/block.h>

namespace dualpath::loader::testing {

// Distinct, reproducible bytes for each block.
inline void fillPayload(const BlockId& id, std::span<std::byte> out) {
  std::uint64_t x = id.lo ^ (id.hi * 0x9e3779b97f4a7c15ULL) ^ 0x2545f4914f6cdd1dULL;
  for (std::byte& b : out) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<std::byte>(x);
  }
}

inline std::vector<std::byte> payloadFor(const BlockId& id, std::size_t bytes) {
  std::vector<std::byte> payload(bytes);
  fillPayload(id, payload);
  return payload;
}

// `count` buffers of `bytes` each, back to back in one 4 KiB-aligned region
// (`stride` rounds each up to 4 KiB), for O_DIRECT and registered buffers.
class AlignedBuffers {
 public:
  AlignedBuffers(std::size_t count, std::size_t bytes)
      : bytes_(bytes), stride_((bytes + 4095) / 4096 * 4096), count_(count) {
    memory_.reset(static_cast<std::byte*>(std::aligned_alloc(4096, stride_ * count)));
  }
  std::span<std::byte> operator[](std::size_t i) { return {memory_.get() + i * stride_, bytes_}; }
  std::span<std::byte> region() { return {memory_.get(), stride_ * count_}; }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::size_t bytes_;
  std::size_t stride_;
  std::size_t count_;
  std::unique_ptr<std::byte, Free> memory_;
};

// A fresh directory, removed with its contents at the end of the test.
// `parent` defaults to the build directory (a real disk file system).
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& parent = DUALPATH_BINARY_DIR "/loader-test-scratch") {
    const ::testing::TestInfo* test = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = test != nullptr ? std::string(test->test_suite_name()) + "." + test->name()
                                       : std::string("scratch");
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    path_ = parent + "/" + name + "." + std::to_string(::getpid());
    std::error_code error;
    std::filesystem::remove_all(path_, error);
    std::filesystem::create_directories(path_, error);
    EXPECT_FALSE(error) << path_ << ": " << error.message();
  }
  ~ScratchDir() {
    std::error_code error;
    std::filesystem::remove_all(path_, error);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline ModelSpec preset(std::string_view name) {
  Result<ModelSpec> model = scheduler::modelPreset(name);
  EXPECT_TRUE(model.hasValue()) << model.status().toString();
  return model.hasValue() ? *model : ModelSpec{};
}

}  // namespace dualpath::loader::testing
