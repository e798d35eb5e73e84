#include <map>
#include <string>

#include <gtest/gtest.h>

#include <dualpath/common/params.h>

namespace dualpath::params {
namespace {

EnvLookup fakeEnvironment(std::map<std::string, std::string> values) {
  return [values = std::move(values)](const char* name) -> const char* {
    auto it = values.find(name);
    return it == values.end() ? nullptr : it->second.c_str();
  };
}

TEST(ParamsTest, DefaultsApplyWhenUnset) {
  Result<Snapshot> snapshot = parse(fakeEnvironment({}));
  ASSERT_TRUE(snapshot.hasValue()) << snapshot.status().toString();
  EXPECT_EQ(snapshot->log_level, log::Level::warn);
  EXPECT_EQ(snapshot->qos_policy, "");
}

TEST(ParamsTest, ValuesAreParsed) {
  Result<Snapshot> snapshot = parse(fakeEnvironment(
      {{"DUALPATH_LOG_LEVEL", "debug"}, {"DUALPATH_QOS_POLICY", "/etc/dualpath/qos.toml"}}));
  ASSERT_TRUE(snapshot.hasValue());
  EXPECT_EQ(snapshot->log_level, log::Level::debug);
  EXPECT_EQ(snapshot->qos_policy, "/etc/dualpath/qos.toml");
}

TEST(ParamsTest, AnInvalidValueFailsWithNameAndForm) {
  Result<Snapshot> snapshot = parse(fakeEnvironment({{"DUALPATH_LOG_LEVEL", "loud"}}));
  ASSERT_FALSE(snapshot.hasValue());
  EXPECT_EQ(snapshot.status().message(),
            "DUALPATH_LOG_LEVEL='loud': expected trace, debug, info, warn, error or off");
}

TEST(ParamsTest, RegistryNamesFollowTheConvention) {
  for (const Spec& spec : registry()) {
    EXPECT_EQ(spec.env_name.rfind("DUALPATH_", 0), 0u) << spec.env_name;
    EXPECT_FALSE(spec.help.empty()) << spec.env_name;
    for (char c : spec.env_name) {
      EXPECT_TRUE((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_') << spec.env_name;
    }
  }
}

}  // namespace
}  // namespace dualpath::params
