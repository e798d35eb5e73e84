// Inputs the fuzzers feed to DualPath's parsers. Shared by the libFuzzer
// targets (fuzz builds) and by corpus_replay_test (every build), so the
// corpus is checked under ASan/UBSan even where libFuzzer is not built.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dualpath::fuzz {

// Loads the bytes as a policy; when valid, renders it every way and builds
// its arbiter, so the renderers see every policy the loader accepts.
void fuzzPolicy(const std::uint8_t* data, std::size_t size);

// Feeds the bytes as smpquery sl2vl, vlarb and portinfo captures to the
// fabric check against the paper's policy.
void fuzzSmpquery(const std::uint8_t* data, std::size_t size);

}  // namespace dualpath::fuzz
