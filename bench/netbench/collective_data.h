// What one collective at one size starts from and must end with on one rank,
// whichever library moves the bytes (the plugin's net API in collectives.h,
// or NCCL on GPUs in nccl_collectives.h): inputs filled from known patterns,
// every element of the result checked.
//
// Layouts, `ranks` chunks of chunkBytes() each:
//   all_gather      `input` in place: this rank fills its own chunk, and
//                   chunk c must end as rank c's;
//   reduce_scatter  `input` holds one float chunk per destination rank;
//                   `reduced` (one chunk) must end as their sum over ranks;
//   alltoall        `input` chunk p goes to rank p; `exchanged` chunk q must
//                   end as what rank q sent here.
//
// Threading: CollectiveData is immutable; a SizeRun belongs to one thread.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>

#include <dualpath/common/status.h>

#include "rank_launcher.h"

namespace dualpath::bench {

inline std::byte patternByte(std::uint64_t seed, std::size_t i) {
  return static_cast<std::byte>((seed * 131 + i * 7 + i / 251) & 0xff);
}

inline float contribution(std::size_t rank, std::size_t chunk, std::size_t i) {
  return static_cast<float>((rank + 1) * 3 + chunk * 5 + i % 11);
}

class CollectiveData {
 public:
  // `bytes` is nccl-tests' size: the whole buffer, cut into one chunk per rank.
  CollectiveData(std::string op, std::size_t ranks, std::size_t rank, std::size_t bytes)
      : op_(std::move(op)), n_(ranks), me_(rank) {
    chunk_bytes_ = std::max<std::size_t>(bytes / n_, sizeof(float));
    chunk_bytes_ -= chunk_bytes_ % sizeof(float);
  }

  const std::string& op() const { return op_; }
  std::size_t ranks() const { return n_; }
  std::size_t rank() const { return me_; }
  std::size_t chunkBytes() const { return chunk_bytes_; }
  std::size_t bufferBytes() const { return chunk_bytes_ * n_; }
  // nccl-tests' count: elements per chunk (floats for reduce_scatter).
  std::size_t count() const {
    return op_ == "reduce_scatter" ? chunk_bytes_ / sizeof(float) : chunk_bytes_;
  }
  // Bytes this rank sends in one run.
  std::size_t bytesSent() const { return chunk_bytes_ * (n_ - 1); }

  void fill(std::span<std::byte> input) const {
    if (op_ == "all_gather") {
      for (std::size_t i = 0; i < chunk_bytes_; ++i) {
        input[me_ * chunk_bytes_ + i] = patternByte(me_, i);
      }
    } else if (op_ == "reduce_scatter") {
      const std::size_t floats = chunk_bytes_ / sizeof(float);
      auto* in = reinterpret_cast<float*>(input.data());
      for (std::size_t c = 0; c < n_; ++c) {
        for (std::size_t i = 0; i < floats; ++i) in[c * floats + i] = contribution(me_, c, i);
      }
    } else {
      for (std::size_t p = 0; p < n_; ++p) {
        for (std::size_t i = 0; i < chunk_bytes_; ++i) {
          input[p * chunk_bytes_ + i] = patternByte(me_ * n_ + p, i);
        }
      }
    }
  }

  // Elements of the result that differ from what the ranks' inputs imply.
  std::uint64_t wrongElements(std::span<const std::byte> input,
                              std::span<const std::byte> exchanged,
                              std::span<const float> reduced) const {
    std::uint64_t wrong = 0;
    if (op_ == "all_gather") {
      for (std::size_t c = 0; c < n_; ++c) {
        for (std::size_t i = 0; i < chunk_bytes_; ++i) {
          wrong += input[c * chunk_bytes_ + i] != patternByte(c, i);
        }
      }
    } else if (op_ == "reduce_scatter") {
      for (std::size_t i = 0; i < reduced.size(); ++i) {
        float expected = 0;
        for (std::size_t r = 0; r < n_; ++r) expected += contribution(r, me_, i);
        wrong += reduced[i] != expected;
      }
    } else {
      for (std::size_t q = 0; q < n_; ++q) {
        for (std::size_t i = 0; i < chunk_bytes_; ++i) {
          wrong += exchanged[q * chunk_bytes_ + i] != patternByte(q * n_ + me_, i);
        }
      }
    }
    return wrong;
  }

 private:
  std::string op_;
  std::size_t n_;
  std::size_t me_;
  std::size_t chunk_bytes_;
};

// One collective at one size on one rank, whatever moves it.
class SizeRun {
 public:
  explicit SizeRun(CollectiveData data) : data_(std::move(data)) {}
  virtual ~SizeRun() = default;
  SizeRun(const SizeRun&) = delete;
  SizeRun& operator=(const SizeRun&) = delete;

  const CollectiveData& data() const { return data_; }

  virtual Status prepare() = 0;  // the buffers
  // Fills the inputs, runs once, returns the wrong elements of the result.
  virtual Result<std::uint64_t> verify(LaunchClock::time_point deadline) = 0;
  virtual Status once(LaunchClock::time_point deadline) = 0;

 private:
  CollectiveData data_;
};

}  // namespace dualpath::bench
