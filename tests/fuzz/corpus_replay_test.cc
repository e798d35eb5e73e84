// Replays every file of the fuzz corpora through the fuzz targets, so each
// build (including ASan+UBSan) checks the inputs that once mattered.
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "fuzz_targets.h"

namespace dualpath::fuzz {
namespace {

std::vector<std::string> corpus(const std::string& name) {
  std::vector<std::string> inputs;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(DUALPATH_SOURCE_DIR) +
                                                               "/tests/fuzz/corpus/" + name)) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::ostringstream bytes;
    bytes << in.rdbuf();
    inputs.push_back(bytes.str());
  }
  return inputs;
}

TEST(CorpusReplayTest, PolicyCorpus) {
  std::vector<std::string> inputs = corpus("policy");
  ASSERT_GE(inputs.size(), 10u);
  for (const std::string& input : inputs) {
    fuzzPolicy(reinterpret_cast<const std::uint8_t*>(input.data()), input.size());
  }
}

TEST(CorpusReplayTest, SmpqueryCorpus) {
  std::vector<std::string> inputs = corpus("smpquery");
  ASSERT_GE(inputs.size(), 5u);
  for (const std::string& input : inputs) {
    fuzzSmpquery(reinterpret_cast<const std::uint8_t*>(input.data()), input.size());
  }
}

}  // namespace
}  // namespace dualpath::fuzz
