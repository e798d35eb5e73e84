#include "fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  dualpath::fuzz::fuzzSmpquery(data, size);
  return 0;
}
