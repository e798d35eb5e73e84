// The one error vocabulary of DualPath: Status and Result<T>.
//
// Our code does not throw. Every fallible function returns a [[nodiscard]]
// Status or Result<T>; the error carries a code that callers switch on and a
// message that names the file, field, peer or block concerned. The plugin's C
// ABI layer translates a Status into ncclResult_t exactly once.
//
// Threading: values only; safe to move between threads.
// Cost: an ok Status or an error without a message does not allocate, so the
// fast path (arbiter grants, isend/irecv/test) may return StatusCode::again freely.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace dualpath {

enum class StatusCode : std::uint8_t {
  ok = 0,
  again,             // Back-pressure: retry later. Not a failure.
  invalid_argument,  // Bad input from a user: a file, a field, a flag.
  invalid_usage,     // An API called out of contract (a bug in the caller).
  not_found,
  unsupported,  // Valid request that this build or machine cannot serve.
  timeout,      // A bounded wait ran out.
  remote,       // The peer failed or went away.
  io,           // A system call or device failed.
  corrupt,      // Data failed a checksum or a format check.
  internal,     // A bug in DualPath.
};

std::string_view statusCodeName(StatusCode code) noexcept;

class [[nodiscard]] Status {
 public:
  Status() noexcept = default;
  Status(StatusCode code, std::string message) noexcept
      : code_(code), message_(std::move(message)) {}
  explicit Status(StatusCode code) noexcept : code_(code) {}

  static Status ok() noexcept { return Status(); }

  bool isOk() const noexcept { return code_ == StatusCode::ok; }
  explicit operator bool() const noexcept { return isOk(); }
  StatusCode code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }

  // Prefixes context as the error climbs: "loading policy: <message>".
  Status&& withContext(std::string_view context) && {
    message_ = std::string(context) + ": " + message_;
    return std::move(*this);
  }

  // "invalid_argument: <message>", for logs.
  std::string toString() const;

 private:
  StatusCode code_ = StatusCode::ok;
  std::string message_;
};

// A value or an error Status, shaped like C++23 std::expected.
template <class T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<std::remove_cv_t<T>, Status>, "use Status directly");

 public:
  Result(T value) : value_(std::move(value)) {}       // NOLINT(google-explicit-constructor)
  Result(Status error) : status_(std::move(error)) {  // NOLINT(google-explicit-constructor)
    if (status_.isOk()) {
      status_ = Status(StatusCode::internal, "Result built from an ok Status without a value");
    }
  }

  bool hasValue() const noexcept { return value_.has_value(); }
  explicit operator bool() const noexcept { return hasValue(); }

  // Precondition: hasValue().
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

  // Ok when hasValue().
  const Status& status() const& noexcept { return status_; }
  Status&& status() && noexcept { return std::move(status_); }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace dualpath

#define DP_STATUS_CONCAT_INNER(a, b) a##b
#define DP_STATUS_CONCAT(a, b) DP_STATUS_CONCAT_INNER(a, b)

// Returns the Status of `expr` from the enclosing function if it is an error.
#define DP_TRY(expr)                                   \
  do {                                                 \
    ::dualpath::Status dp_try_status_ = (expr);        \
    if (!dp_try_status_.isOk()) return dp_try_status_; \
  } while (0)

// `DP_TRY_ASSIGN(auto policy, loadPolicy(path));` declares `policy` from the
// Result's value, or returns its error Status.
#define DP_TRY_ASSIGN(lhs, expr) \
  DP_TRY_ASSIGN_IMPL(DP_STATUS_CONCAT(dp_try_result_, __LINE__), lhs, expr)
#define DP_TRY_ASSIGN_IMPL(tmp, lhs, expr)             \
  auto tmp = (expr);                                   \
  if (!tmp.hasValue()) return std::move(tmp).status(); \
  lhs = std::move(tmp).value()
