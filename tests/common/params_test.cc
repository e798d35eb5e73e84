#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <string>
#include <vector>

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

TEST(ParamsTest, NetworkKnobsParse) {
  Result<Snapshot> defaults = parse(fakeEnvironment({}));
  ASSERT_TRUE(defaults.hasValue());
  EXPECT_TRUE(defaults->net_devices.empty());
  EXPECT_EQ(defaults->net_timeout_ms, 30'000u);
  EXPECT_FALSE(defaults->net_require_rdma);

  Result<Snapshot> snapshot = parse(fakeEnvironment({{"DUALPATH_NET_DEVICES", "mlx5_*,eth0"},
                                                     {"DUALPATH_NET_TIMEOUT_MS", "2500"},
                                                     {"DUALPATH_NET_REQUIRE_RDMA", "yes"}}));
  ASSERT_TRUE(snapshot.hasValue()) << snapshot.status().toString();
  EXPECT_EQ(snapshot->net_devices, (std::vector<std::string>{"mlx5_*", "eth0"}));
  EXPECT_EQ(snapshot->net_timeout_ms, 2500u);
  EXPECT_TRUE(snapshot->net_require_rdma);
}

TEST(ParamsTest, BadNetworkKnobsNameTheVariableAndForm) {
  const std::map<std::string, std::string> cases[] = {
      {{"DUALPATH_NET_DEVICES", "eth0,,lo"}},
      {{"DUALPATH_NET_TIMEOUT_MS", "0"}},
      {{"DUALPATH_NET_TIMEOUT_MS", "30s"}},
      {{"DUALPATH_NET_REQUIRE_RDMA", "maybe"}},
  };
  const char* expected[] = {
      ("DUALPATH_NET_DEVICES='eth0,,lo': empty item; expected comma-separated non-empty shell "
       "patterns"),
      "DUALPATH_NET_TIMEOUT_MS='0': expected an integer number of milliseconds, 1 to 86400000",
      "DUALPATH_NET_TIMEOUT_MS='30s': expected an integer number of milliseconds, 1 to 86400000",
      "DUALPATH_NET_REQUIRE_RDMA='maybe': expected 0, 1, false, true, no or yes",
  };
  for (std::size_t i = 0; i < std::size(cases); ++i) {
    Result<Snapshot> snapshot = parse(fakeEnvironment(cases[i]));
    ASSERT_FALSE(snapshot.hasValue()) << i;
    EXPECT_EQ(snapshot.status().message(), expected[i]);
  }
}

TEST(ParamsTest, LoaderKnobsParse) {
  Result<Snapshot> defaults = parse(fakeEnvironment({}));
  ASSERT_TRUE(defaults.hasValue());
  EXPECT_EQ(defaults->loader_io_engine, IoEngine::automatic);
  EXPECT_EQ(defaults->loader_fsync, FsyncPolicy::data);

  Result<Snapshot> snapshot = parse(fakeEnvironment(
      {{"DUALPATH_LOADER_IO_ENGINE", "io_uring"}, {"DUALPATH_LOADER_FSYNC", "none"}}));
  ASSERT_TRUE(snapshot.hasValue()) << snapshot.status().toString();
  EXPECT_EQ(snapshot->loader_io_engine, IoEngine::io_uring);
  EXPECT_EQ(snapshot->loader_fsync, FsyncPolicy::none);
  EXPECT_EQ(ioEngineName(IoEngine::automatic), "auto");
  EXPECT_EQ(fsyncPolicyName(FsyncPolicy::full), "full");

  Result<Snapshot> bad = parse(fakeEnvironment({{"DUALPATH_LOADER_IO_ENGINE", "AUTO"}}));
  ASSERT_FALSE(bad.hasValue());
  EXPECT_EQ(bad.status().message(),
            "DUALPATH_LOADER_IO_ENGINE='AUTO': expected auto, io_uring or pread");
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

// What a benchmark's forked rank does: it inherits the launcher's snapshot,
// sets its own environment and reloads. The child reports by exit code, since
// a failed expectation in a forked child would not reach the parent's result.
TEST(ParamsTest, AForkedChildReloadsItsOwnEnvironment) {
  ::unsetenv("DUALPATH_QOS_POLICY");
  Result<const Snapshot*> inherited = global();
  ASSERT_TRUE(inherited.hasValue()) << inherited.status().toString();
  const std::string before = (*inherited)->qos_policy;

  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::setenv("DUALPATH_QOS_POLICY", "/etc/dualpath/rank-policy.toml", 1);
    Result<const Snapshot*> still = global();
    if (!still || (*still)->qos_policy != before) ::_exit(2);  // parsed once, until reload
    Result<const Snapshot*> reloaded = reloadAfterFork();
    if (!reloaded || (*reloaded)->qos_policy != "/etc/dualpath/rank-policy.toml") ::_exit(3);
    Result<const Snapshot*> now = global();
    if (!now || *now != *reloaded) ::_exit(4);
    if ((*still)->qos_policy != before) ::_exit(5);  // an earlier snapshot stays valid
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "2: global() changed without reload; 3: reload missed the new value; "
         "4: global() does not return the reload; 5: an earlier snapshot changed";
}

}  // namespace
}  // namespace dualpath::params
