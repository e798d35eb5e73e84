#include <dualpath/common/status.h>

namespace dualpath {

std::string_view statusCodeName(StatusCode code) noexcept {
  switch (code) {
    case StatusCode::ok:
      return "ok";
    case StatusCode::again:
      return "again";
    case StatusCode::invalid_argument:
      return "invalid_argument";
    case StatusCode::invalid_usage:
      return "invalid_usage";
    case StatusCode::not_found:
      return "not_found";
    case StatusCode::unsupported:
      return "unsupported";
    case StatusCode::timeout:
      return "timeout";
    case StatusCode::remote:
      return "remote";
    case StatusCode::io:
      return "io";
    case StatusCode::corrupt:
      return "corrupt";
    case StatusCode::internal:
      return "internal";
  }
  return "unknown";
}

std::string Status::toString() const {
  std::string out(statusCodeName(code_));
  if (!message_.empty()) {
    out += ": ";
    out += message_;
  }
  return out;
}

}  // namespace dualpath
