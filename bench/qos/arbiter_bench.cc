// The arbiter's grant decision against the fast-path budget (< 100 ns
// uncontended), with two references measured in the same run: an
// uncontended lock/unlock of the same mutex type, and a clock read.
// docs/performance.md records results as ratios to these references.
#include <benchmark/benchmark.h>

#include <dualpath/qos/arbiter.h>

namespace dualpath::qos {
namespace {

constexpr ClassIndex kHigh = 0;
constexpr ClassIndex kLow = 1;

std::unique_ptr<LinkArbiter> makeArbiter(bool shaped) {
  ArbiterSettings s;
  s.low_share = 0.05;
  s.chunk = 64 * 1024;
  if (shaped) s.link_rate = 400'000'000'000;  // 400gbit: tokens never run out here
  return std::move(
      LinkArbiter::create({{{"collective", Priority::high, 1}, {"kv", Priority::low, 1}}, s})
          .value());
}

void BM_ReferenceMutexLockUnlock(benchmark::State& state) {
  Mutex mu;
  for (auto _ : state) {
    mu.lock();
    benchmark::ClobberMemory();
    mu.unlock();
  }
}
BENCHMARK(BM_ReferenceMutexLockUnlock);

void BM_ReferenceClockRead(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(monotonicNowNs());
}
BENCHMARK(BM_ReferenceClockRead);

// One decision and its release, time supplied by the caller (the transport
// reads the clock once per progress call).
void BM_GrantAndRelease(benchmark::State& state) {
  auto arbiter = makeArbiter(state.range(0) != 0);
  TimeNs now = 0;
  const ClassIndex cls = state.range(1) != 0 ? kLow : kHigh;
  for (auto _ : state) {
    now += 100;
    Status granted = arbiter->tryAcquire(cls, 4096, now);
    benchmark::DoNotOptimize(granted);
    arbiter->release(cls, 4096);
  }
}
BENCHMARK(BM_GrantAndRelease)
    ->ArgNames({"shaped", "low"})
    ->Args({0, 0})
    ->Args({0, 1})
    ->Args({1, 0})
    ->Args({1, 1});

// The same with the arbiter reading the clock itself.
void BM_GrantAndReleaseWithClock(benchmark::State& state) {
  auto arbiter = makeArbiter(/*shaped=*/true);
  for (auto _ : state) {
    Status granted = arbiter->tryAcquire(kHigh, 4096);
    benchmark::DoNotOptimize(granted);
    arbiter->release(kHigh, 4096);
  }
}
BENCHMARK(BM_GrantAndReleaseWithClock);

// Contended: threads alternate classes on one link arbiter.
void BM_GrantAndReleaseContended(benchmark::State& state) {
  static std::unique_ptr<LinkArbiter> arbiter;
  if (state.thread_index() == 0) arbiter = makeArbiter(/*shaped=*/false);
  const ClassIndex cls = state.thread_index() % 2 == 0 ? kHigh : kLow;
  for (auto _ : state) {
    Status granted = arbiter->tryAcquire(cls, 4096);
    if (granted.isOk()) arbiter->release(cls, 4096);
    benchmark::DoNotOptimize(granted);
  }
}
BENCHMARK(BM_GrantAndReleaseContended)->Threads(1)->Threads(2)->Threads(8)->UseRealTime();

}  // namespace
}  // namespace dualpath::qos

BENCHMARK_MAIN();
