// An emulated storage NIC: a token bucket on one node's storage reads, so a
// single machine shows the storage-bandwidth bottleneck that DualPath removes
// (the PE nodes' SNICs saturated while the DE nodes' sit idle). Reads are not
// slowed down; their completion is held back until the time the emulated link
// would have delivered them.
//
// The bucket holds up to `burst` bytes of credit and refills at `rate`. A read
// takes its bytes from the bucket, going into debt when there are not enough;
// it completes when the debt is repaid, so reads queue in FIFO order behind
// each other exactly as on a link of that rate.
//
// Every output that uses it must say that the storage NIC is emulated:
// describe() gives the words.
//
// Threading: reserve() is thread-safe; time is the caller's (tests pass it).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include <dualpath/common/status.h>

namespace dualpath::loader {

class StorageRateLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  // invalid_argument unless bytes_per_second and burst_bytes are positive.
  static Result<std::unique_ptr<StorageRateLimiter>> create(double bytes_per_second,
                                                            std::uint64_t burst_bytes);

  // When a read of `bytes`, issued at `now`, completes on the emulated link.
  Clock::time_point reserve(std::uint64_t bytes, Clock::time_point now);

  double bytesPerSecond() const noexcept { return rate_; }
  // "emulated storage NIC (10gbit, burst 8MiB)"
  std::string describe() const;

 private:
  StorageRateLimiter(double rate, std::uint64_t burst) : rate_(rate), burst_(static_cast<double>(burst)) {}

  const double rate_;   // bytes per second
  const double burst_;  // bytes
  std::mutex mu_;
  double credit_ = 0;  // bytes; negative is debt
  Clock::time_point refilled_at_{};
  bool started_ = false;
};

}  // namespace dualpath::loader
