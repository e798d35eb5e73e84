#include "cli_run.h"

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

namespace dualpath::test_support {

CliRun runCli(CliMain main, std::string_view program, const std::vector<std::string>& args) {
  const std::string name(program);
  std::vector<const char*> argv;
  argv.reserve(args.size() + 1);
  argv.push_back(name.c_str());
  for (const std::string& arg : args) argv.push_back(arg.c_str());
  std::ostringstream out;
  std::ostringstream err;
  const int code = main(static_cast<int>(argv.size()), argv.data(), out, err);
  return {code, out.str(), err.str()};
}

std::string writeTempFile(const std::string& name, const std::string& text) {
  std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

}  // namespace dualpath::test_support
