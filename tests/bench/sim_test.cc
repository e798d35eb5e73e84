// The cluster simulator (bench/sim): its invariants on every mode and
// policy (bytes conserved, no link above its capacity, every turn served,
// deterministic with a seed), the paper's figures it must reproduce, its
// planner and its errors.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <dualpath/scheduler/path_policy.h>
#include <dualpath/sim/config.h>
#include <dualpath/sim/output.h>
#include <dualpath/sim/planner.h>
#include <dualpath/sim/simulator.h>
#include <dualpath/sim/trace.h>

namespace dualpath::sim {
namespace {

using ::testing::HasSubstr;

SimConfig preset(std::string_view name) {
  Result<SimConfig> config = simPreset(name);
  EXPECT_TRUE(config.hasValue()) << config.status().toString();
  return config.value();
}

SimReport run(const SimConfig& config) {
  Result<SimReport> report = simulate(config);
  EXPECT_TRUE(report.hasValue()) << report.status().toString();
  return report.hasValue() ? report.value() : SimReport{};
}

double near(double a, double b) { return std::fabs(a / b - 1); }

std::uint64_t turnsOf(const SimConfig& config) {
  return makeTrace(config.effectiveTrace(), config.model.block_tokens, config.arrivals,
                   config.agents_per_second)
      .value()
      .turns.size();
}

void expectInvariants(const SimConfig& config, const SimReport& report) {
  EXPECT_EQ(report.requests, turnsOf(config)) << "every turn prefilled, decoded and written back";
  EXPECT_TRUE(report.link_bytes_match) << "the links' counters sum to the copies";
  EXPECT_TRUE(report.bytesConserved());
  EXPECT_LE(report.peak_link_utilisation, 1.0 + 1e-9);
  EXPECT_GT(report.peak_link_utilisation, 0.0);
  for (const LinkSummary& link : report.links) {
    EXPECT_LE(link.peak_utilisation, 1.0 + 1e-9) << link.kind;
    EXPECT_LE(link.mean_utilisation, 1.0 + 1e-9) << link.kind;
  }
}

TEST(SimTraceTest, PaperShapedAndWholeBlocks) {
  const SimConfig config = preset("ds660b-2p4d");
  const Trace trace = makeTrace(config.trace, 64, Arrivals::offline, 0).value();
  EXPECT_EQ(trace.agents(), 2048u);
  // Table 2's 64K trace: a hit rate of 98.7%, a mean context of 32.7K tokens.
  EXPECT_NEAR(trace.hitRate(), 0.987, 0.005);
  EXPECT_LT(near(static_cast<double>(trace.prompt_tokens) / static_cast<double>(trace.turns.size()), 32721),
            0.10);
  for (std::uint32_t a = 0; a < trace.agents(); ++a) {
    EXPECT_EQ(trace.agent_start_seconds[a], 0.0);
    EXPECT_EQ(trace.turns[trace.first_turn[a]].cached_tokens, 0u) << "turn 0 reads nothing";
  }
  for (const Turn& turn : trace.turns) {
    ASSERT_EQ(turn.cached_tokens % 64, 0u);
    ASSERT_LT(turn.cached_tokens, turn.tokens);
    ASSERT_LE(turn.tokens, 64u * 1024);
    ASSERT_GE(turn.generated_tokens, 2u);
  }
}

TEST(SimTraceTest, SeedDecidesTheTraceAndOnlineArrivalsArePoisson) {
  TraceShape shape = paperTrace(2000, 32 * 1024);
  const Trace a = makeTrace(shape, 64, Arrivals::online, 0.5).value();
  const Trace b = makeTrace(shape, 64, Arrivals::online, 0.5).value();
  EXPECT_EQ(a.prompt_tokens, b.prompt_tokens);
  EXPECT_EQ(a.agent_start_seconds, b.agent_start_seconds);
  shape.seed = 2;
  const Trace c = makeTrace(shape, 64, Arrivals::online, 0.5).value();
  EXPECT_NE(a.prompt_tokens, c.prompt_tokens);
  // 2,000 exponential gaps of mean 2 s: the mean is within 10% (about 4 sigma).
  EXPECT_LT(near(a.agent_start_seconds.back() / 2000, 2.0), 0.10);
  for (std::size_t i = 1; i < a.agent_start_seconds.size(); ++i) {
    ASSERT_GE(a.agent_start_seconds[i], a.agent_start_seconds[i - 1]);
  }
}

TEST(SimTraceTest, BadShapesNameTheField) {
  TraceShape shape = paperTrace(0, 32 * 1024);
  EXPECT_EQ(makeTrace(shape, 64, Arrivals::offline, 0).status().message(),
            "trace: agents must be positive");
  shape.agents = 1;
  EXPECT_THAT(makeTrace(shape, 64, Arrivals::online, 0).status().message(),
              HasSubstr("agents_per_second 0 must be positive"));
}

class SimInvariantTest : public ::testing::TestWithParam<std::string> {};

// Every read-path policy of scheduler/, each mode, with and without layerwise
// prefill, and a storage cluster narrower than the SNICs (rates then change
// while reads run).
TEST_P(SimInvariantTest, BytesConservedAndNoLinkOverCapacity) {
  SimConfig config = preset("tiny");
  config.policy = GetParam();
  for (bool layerwise : {true, false}) {
    config.layerwise = layerwise;
    SCOPED_TRACE(GetParam() + (layerwise ? " layerwise" : " whole loads"));
    const SimReport report = run(config);
    expectInvariants(config, report);
    EXPECT_EQ(report.policy, GetParam());
    const double read = report.traffic.storage_read_pe_path + report.traffic.storage_read_de_path;
    EXPECT_DOUBLE_EQ(read, static_cast<double>(report.cached_tokens) *
                               static_cast<double>(config.model.kvBytesPerToken()));
  }
  // Host buffers that hold about one context: reads wait for room, and a
  // split request's DE-path read may end before its PE-path read starts.
  SimConfig tight = config;
  tight.hardware.buffer_bytes = 1.5 * static_cast<double>(tight.trace.max_context_tokens) *
                                static_cast<double>(tight.model.kvBytesPerToken());
  expectInvariants(tight, run(tight));

  config.hardware.storage_bytes_per_s = config.hardware.base.snic_bytes_per_s * 1.5;
  const SimReport narrow = run(config);
  expectInvariants(config, narrow);
  double storage_bytes = 0;
  for (const LinkSummary& link : narrow.links) {
    if (link.kind == "snic-read" || link.kind == "snic-write") storage_bytes += link.bytes;
  }
  EXPECT_LE(storage_bytes, config.hardware.storage_bytes_per_s * narrow.makespan_seconds * (1 + 1e-9));
}

INSTANTIATE_TEST_SUITE_P(Policies, SimInvariantTest,
                         ::testing::ValuesIn(std::vector<std::string>(
                             scheduler::pathPolicyNames().begin(), scheduler::pathPolicyNames().end())));

TEST(SimTest, PoliciesChooseThePathTheySay) {
  SimConfig config = preset("tiny");
  config.policy = "pe-only";
  EXPECT_EQ(run(config).de_path_block_share, 0.0);
  config.policy = "de-only";
  EXPECT_EQ(run(config).de_path_block_share, 1.0);
  config.policy.reset();
  const SimReport dualpath = run(config);
  EXPECT_GT(dualpath.de_path_block_share, 0.2);
  EXPECT_LT(dualpath.de_path_block_share, 0.8);
  // Only the DE path relays KV over the compute NICs.
  EXPECT_GT(dualpath.traffic.relay, 0.0);
  config.mode = Mode::basic;
  EXPECT_EQ(run(config).traffic.relay, 0.0);
}

TEST(SimTest, OracleReadsAndWritesNothing) {
  SimConfig config = preset("tiny");
  config.mode = Mode::oracle;
  const SimReport report = run(config);
  expectInvariants(config, report);
  EXPECT_EQ(report.policy, "none (no I/O)");
  EXPECT_EQ(report.traffic.storage_read_pe_path + report.traffic.storage_read_de_path, 0.0);
  EXPECT_EQ(report.traffic.write_back, 0.0);
  EXPECT_EQ(report.traffic.relay + report.traffic.pe_host_to_device, 0.0);
}

TEST(SimTest, DeterministicWithASeed) {
  SimConfig config = preset("tiny");
  const std::string first = toJson(run(config)).dump();
  EXPECT_EQ(first, toJson(run(config)).dump());
  config.trace.seed = 7;
  EXPECT_NE(first, toJson(run(config)).dump());
}

TEST(SimTest, OnlineMeasuresTheSteadyStateWindow) {
  SimConfig config = preset("tiny");
  config.arrivals = Arrivals::online;
  config.agents_per_second = 0.2;
  EXPECT_EQ(config.effectiveTrace().agents, 120u);  // 0.2 agents/s for 600 s
  const SimReport report = run(config);
  expectInvariants(config, report);
  EXPECT_EQ(report.agents_per_second, 0.2);
  // Only the turns arriving from 300 s to 600 s count.
  EXPECT_GT(report.ttft.samples, 0u);
  EXPECT_LT(report.ttft.samples, report.requests);
  EXPECT_EQ(report.ttft.samples, report.tpot.samples);
  config.online_measure_from_seconds = 0;
  EXPECT_GT(run(config).ttft.samples, report.ttft.samples);
}

TEST(SimTest, SchedulerDecidingAtEveryInstantKeepsTheInvariants) {
  SimConfig config = preset("tiny");
  config.scheduler_interval_seconds = 0;
  const SimReport instant = run(config);
  expectInvariants(config, instant);
  // More rounds than with a 10 ms tick, and the same work done.
  config.scheduler_interval_seconds = 0.01;
  const SimReport ticked = run(config);
  EXPECT_GT(instant.scheduler_rounds, ticked.scheduler_rounds);
  EXPECT_EQ(instant.requests, ticked.requests);
}

TEST(SimTest, WriteBackCarriesEveryFilledBlock) {
  const SimConfig config = preset("tiny");
  const Trace trace = makeTrace(config.trace, 64, Arrivals::offline, 0).value();
  double blocks = 0;
  for (const Turn& turn : trace.turns) {
    blocks += static_cast<double>((turn.tokens + turn.generated_tokens) / 64 - turn.cached_tokens / 64);
  }
  EXPECT_DOUBLE_EQ(run(config).traffic.write_back,
                   blocks * static_cast<double>(config.model.fullBlockBytes()));
}

// The paper's headline (Fig. 7): DS 660B 2P4D, 64K, 2,048 agents: Basic's JCT
// is 1.87x DualPath's. The simulator must land within 15%.
TEST(SimPaperTest, Ds660bOfflineJctRatioWithin15Percent) {
  SimConfig config = preset("ds660b-2p4d");
  config.mode = Mode::basic;
  const SimReport basic = run(config);
  config.mode = Mode::dualpath;
  const SimReport dualpath = run(config);
  config.mode = Mode::oracle;
  const SimReport oracle = run(config);
  const double ratio = basic.makespan_seconds / dualpath.makespan_seconds;
  EXPECT_LE(std::fabs(ratio / 1.87 - 1), kPaperTolerance) << "basic/dualpath = " << ratio;
  // "DualPath ... demonstrates performance close to Oracle" on DS 660B.
  EXPECT_LT(dualpath.makespan_seconds / oracle.makespan_seconds, 1.10);
  // And the SNICs are balanced: the paper measures max/avg 1.18.
  EXPECT_LT(dualpath.snic_max_over_mean, 1.3);
}

// Fig. 8's equal pairs: the same storage bandwidth gives the same JCT.
TEST(SimPaperTest, PrefillDecodeEquivalences) {
  SimConfig config = preset("ds27b-1p1d");
  auto jct = [&](Mode mode, std::uint32_t p, std::uint32_t d) {
    config.mode = mode;
    config.prefill_nodes = p;
    config.decode_nodes = d;
    return run(config).makespan_seconds;
  };
  const double basic_1p1d = jct(Mode::basic, 1, 1);
  EXPECT_LT(near(basic_1p1d, jct(Mode::basic, 1, 2)), 0.05) << "basic 1P1D ~ basic 1P2D";
  const double dualpath_1p1d = jct(Mode::dualpath, 1, 1);
  EXPECT_LT(near(dualpath_1p1d, jct(Mode::basic, 2, 1)), 0.05) << "DualPath 1P1D ~ basic 2P1D";
  EXPECT_GT(basic_1p1d / dualpath_1p1d, 1.5);
}

TEST(SimPlannerTest, BottleneckFreeRangeIsThePapers) {
  const PdRange range = bottleneckFreeRange(preset("ds660b-2p4d").hardware);
  EXPECT_DOUBLE_EQ(range.s, 1.0);
  EXPECT_DOUBLE_EQ(range.lowest, 1.0 / 7);
  EXPECT_DOUBLE_EQ(range.highest, 3.5);
  EXPECT_EQ(range.lowest_limit, "PE CNIC write");
  EXPECT_EQ(range.highest_limit, "DE CNIC write and DE DRAM");
  NodeHardware narrow_dram = preset("ds660b-2p4d").hardware;
  narrow_dram.dram_bytes_per_s = 200e9;
  EXPECT_DOUBLE_EQ(bottleneckFreeRange(narrow_dram).highest, 0.5);
  EXPECT_EQ(bottleneckFreeRange(narrow_dram).highest_limit, "DE DRAM");
}

TEST(SimPlannerTest, CapacityMeetsTheSloAndSweepsCoverEveryRatio) {
  SimConfig config = preset("tiny");
  config.trace.agents = 24;
  const CapacityResult capacity = findCapacity(config, Slo{}, CapacitySearch{.start_agents_per_second = 0.05,
                                                                             .bisections = 3})
                                      .value();
  ASSERT_GT(capacity.agents_per_second, 0.0);
  EXPECT_TRUE(Slo{}.met(capacity.at_capacity));
  EXPECT_EQ(capacity.at_capacity.agents_per_second, capacity.agents_per_second);
  EXPECT_GE(capacity.runs, 4u);

  const std::vector<SweepPoint> points = sweepPrefillDecodeRatio(config, 4).value();
  ASSERT_EQ(points.size(), 3u);
  EXPECT_EQ(points[0].label, "1P3D");
  EXPECT_DOUBLE_EQ(points[2].x, 3.0);
  for (const SweepPoint& point : points) {
    expectInvariants(config, point.dualpath);
    EXPECT_EQ(point.basic.mode, "basic");
    EXPECT_EQ(point.oracle.mode, "oracle");
  }
  EXPECT_EQ(sweepSnicBandwidth(config, {0}).status().message(),
            "SNIC sweep: bandwidth 0 Gbps must be positive");
}

TEST(SimConfigTest, ErrorsNameTheField) {
  EXPECT_THAT(simPreset("ds670b").status().message(),
              HasSubstr("unknown preset 'ds670b': expected"));
  SimConfig config = preset("ds660b-2p4d");
  config.hardware.buffer_bytes = 1e9;
  EXPECT_EQ(simulate(config).status().message(),
            "simulation 'ds660b-2p4d': buffer_bytes (1.00 GB) cannot hold one context of "
            "max_context_tokens 65536 (2.62 GB)");
  config = preset("tiny");
  config.arrivals = Arrivals::online;
  EXPECT_EQ(config.validate().message(),
            "simulation 'tiny': agents_per_second must be positive for online arrivals");
  config = preset("tiny");
  config.policy = "fastest";
  EXPECT_THAT(simulate(config).status().message(), HasSubstr("unknown read-path policy 'fastest'"));
  EXPECT_THAT(parseMode("turbo").status().message(), HasSubstr("unknown mode 'turbo'"));
}

// gnuplot comes with the build dependencies (scripts/install-deps.sh).
TEST(SimOutputTest, PlotDrawsAnSvgFromTheSweep) {
  SimConfig config = preset("tiny");
  config.trace.agents = 12;
  const std::vector<SweepPoint> points = sweepSnicBandwidth(config, {10, 20}).value();
  const std::string path = std::string(DUALPATH_BINARY_DIR) + "/bench-scratch/sim-plot-test.svg";
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::filesystem::remove(path);
  ASSERT_TRUE(writePlot(points, path, "tiny: throughput", "SNIC Gbps", true).isOk());
  std::ifstream svg(path);
  const std::string text((std::istreambuf_iterator<char>(svg)), std::istreambuf_iterator<char>());
  EXPECT_THAT(text, HasSubstr("<svg"));
  EXPECT_THAT(text, HasSubstr("DualPath"));
  std::ifstream data(path + ".dat");
  std::string header, first;
  std::getline(data, header);
  std::getline(data, first);
  EXPECT_THAT(first, ::testing::StartsWith("10 \"10 Gbps\" "));
}

TEST(SimOutputTest, PlotNeedsAKnownExtension) {
  EXPECT_EQ(writePlot({}, "throughput.pdf", "t", "x", false).message(),
            "plot 'throughput.pdf': the file must end in .svg or .png");
}

}  // namespace
}  // namespace dualpath::sim
