#include <dualpath/loader/storage_limiter.h>

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include <dualpath/common/units.h>

namespace dualpath::loader {

Result<std::unique_ptr<StorageRateLimiter>> StorageRateLimiter::create(double bytes_per_second,
                                                                       std::uint64_t burst_bytes) {
  if (!(bytes_per_second > 0) || !std::isfinite(bytes_per_second)) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("emulated storage NIC: rate {} bytes/s must be positive",
                              bytes_per_second));
  }
  if (burst_bytes == 0) {
    return Status(StatusCode::invalid_argument, "emulated storage NIC: burst must be positive");
  }
  return std::unique_ptr<StorageRateLimiter>(new StorageRateLimiter(bytes_per_second, burst_bytes));
}

StorageRateLimiter::Clock::time_point StorageRateLimiter::reserve(std::uint64_t bytes,
                                                                  Clock::time_point now) {
  std::lock_guard lock(mu_);
  if (!started_) {
    started_ = true;
    credit_ = burst_;
    refilled_at_ = now;
  }
  if (now > refilled_at_) {
    const double elapsed = std::chrono::duration<double>(now - refilled_at_).count();
    credit_ = std::min(burst_, credit_ + elapsed * rate_);
    refilled_at_ = now;
  }
  credit_ -= static_cast<double>(bytes);
  if (credit_ >= 0) return now;
  const std::chrono::duration<double> debt(-credit_ / rate_);
  return now + std::chrono::duration_cast<Clock::duration>(debt);
}

std::string StorageRateLimiter::describe() const {
  return fmt::format("emulated storage NIC ({}, burst {})",
                     formatBitRate(static_cast<BitsPerSecond>(std::llround(rate_ * 8))),
                     formatBytes(static_cast<Bytes>(burst_)));
}

}  // namespace dualpath::loader
