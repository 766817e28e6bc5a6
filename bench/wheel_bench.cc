// Timer wheel against its baseline, one boost::asio::steady_timer per schedule, in the same run.
//
// Every benchmark keeps N timers armed (N = 10k, 1M, 10M) and reports ns per operation in the
// Time column (one operation per iteration) and in items_per_second, except the fire+re-arm ones,
// whose iterations are batches: read them from the `per_fire` counter (CPU time per fire) or
// items_per_second.
// Setup happens outside the timed region. The 10M cases run few iterations: their setup alone
// allocates gigabytes for Asio.
//
// Asio baseline: basic_waitable_timer<steady_clock, ..., io_context::executor_type> (the faster
// executor type; the default any_io_executor is slower, see /work/shared/PERFORMANCE.md) on an
// io_context with concurrency hint 1, single thread.
#include <malloc.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "benchmark/benchmark.h"
#include "wheel/timer_wheel.h"

namespace {

using syncsched::wheel::TimerId;
using syncsched::wheel::TimerWheel;

using AsioTimer =
    boost::asio::basic_waitable_timer<std::chrono::steady_clock,
                                      boost::asio::wait_traits<std::chrono::steady_clock>,
                                      boost::asio::io_context::executor_type>;

constexpr std::int64_t kMinute = 60'000;
constexpr std::int64_t kHour = 3'600'000;
constexpr std::int64_t kPeriods[] = {1'000, 10'000, 60'000, 300'000, 3'600'000};

// Deadlines for arm and cancel: uniform over [1 min, 1 h) from now.
std::int64_t RandomDeadline(std::mt19937_64& rng) {
  return kMinute + static_cast<std::int64_t>(rng() % (kHour - kMinute));
}

// The extra timers an arm benchmark arms before it pauses to cancel them again: small against N.
std::size_t ArmBatch(std::size_t n) { return std::clamp<std::size_t>(n / 8, 1024, 65536); }

std::size_t HeapBytesInUse() {
  const struct mallinfo2 info = mallinfo2();
  return info.uordblks + info.hblkhd;
}

void SetPerOpCounters(benchmark::State& state, std::size_t ops) {
  state.SetItemsProcessed(static_cast<std::int64_t>(ops));
}

// ---- Wheel. ----

void ArmRandom(TimerWheel& w, std::size_t n, std::mt19937_64& rng) {
  w.Reserve(n);
  for (std::size_t i = 0; i < n; ++i) w.Arm(static_cast<TimerId>(i), RandomDeadline(rng));
}

void BM_WheelArm(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const std::size_t batch = ArmBatch(n);
  std::mt19937_64 rng(1);
  TimerWheel w;
  ArmRandom(w, n + batch, rng);  // sizes the slab and the slot vectors for the extras too
  for (std::size_t i = n; i < n + batch; ++i) w.Cancel(static_cast<TimerId>(i));
  std::vector<std::int64_t> deadlines(batch);
  for (auto& d : deadlines) d = RandomDeadline(rng);
  std::size_t i = 0;
  for (auto _ : state) {
    if (i == batch) {
      state.PauseTiming();
      for (std::size_t j = 0; j < batch; ++j) w.Cancel(static_cast<TimerId>(n + j));
      i = 0;
      state.ResumeTiming();
    }
    w.Arm(static_cast<TimerId>(n + i), deadlines[i]);
    ++i;
  }
  SetPerOpCounters(state, state.iterations());
  state.counters["bytes_per_timer"] = static_cast<double>(w.MemoryBytes()) / static_cast<double>(n);
}

// Cancels in a random order of ids (schedules are deleted in no particular order), so at 1M and
// 10M each cancel pays a cache miss on its entry; BM_WheelCancelInIdOrder shows the cost without.
void CancelBench(benchmark::State& state, bool shuffle) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::mt19937_64 rng(2);
  TimerWheel w;
  ArmRandom(w, n, rng);
  std::vector<TimerId> order(n);
  std::iota(order.begin(), order.end(), TimerId{0});
  if (shuffle) std::shuffle(order.begin(), order.end(), rng);
  const std::size_t batch = std::min<std::size_t>(n, 65536);
  std::size_t i = 0;
  std::size_t start = 0;
  for (auto _ : state) {
    if (i == batch) {
      state.PauseTiming();
      for (std::size_t j = start; j < start + batch; ++j) {
        w.Arm(order[j % n], RandomDeadline(rng));
      }
      start = (start + batch) % n;
      i = 0;
      state.ResumeTiming();
    }
    benchmark::DoNotOptimize(w.Cancel(order[(start + i) % n]));
    ++i;
  }
  SetPerOpCounters(state, state.iterations());
  state.counters["bytes_per_timer"] = static_cast<double>(w.MemoryBytes()) / static_cast<double>(n);
}
void BM_WheelCancel(benchmark::State& state) { CancelBench(state, /*shuffle=*/true); }
void BM_WheelCancelInIdOrder(benchmark::State& state) { CancelBench(state, /*shuffle=*/false); }

// The period of timer i. Derived from the id rather than read from a table: an N-sized table
// read at random costs a cache miss per fire that is the caller's, not the timer structure's.
std::int64_t PeriodOf(std::size_t i) { return kPeriods[i % std::size(kPeriods)]; }

// N periodic schedules, periods from kPeriods (a fifth each), random phases; time advances in
// 10 ms steps and each fire re-arms its timer at deadline + period, as the engine does.
void BM_WheelFireRearm(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::mt19937_64 rng(3);
  TimerWheel w;
  w.Reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    w.Arm(static_cast<TimerId>(i), 1 + static_cast<std::int64_t>(rng() % PeriodOf(i)));
  }
  constexpr std::int64_t kStep = 10;
  std::int64_t now = 0;
  std::size_t fires = 0;
  for (auto _ : state) {
    now += kStep;
    fires += w.Advance(
        now, [&](TimerId id, std::int64_t deadline) { w.Arm(id, deadline + PeriodOf(id)); });
  }
  SetPerOpCounters(state, fires);
  state.counters["per_fire"] = benchmark::Counter(
      static_cast<double>(fires), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["fires_per_iter"] =
      static_cast<double>(fires) / static_cast<double>(state.iterations());
  state.counters["bytes_per_timer"] = static_cast<double>(w.MemoryBytes()) / static_cast<double>(n);
}

// ---- Asio baseline. ----

struct NoopHandler {
  void operator()(const boost::system::error_code&) const {}
};

// N timers armed at now + [1 min, 1 h); records the heap bytes they took.
struct AsioFixture {
  explicit AsioFixture(std::size_t n, std::size_t extra, std::mt19937_64& rng) : ioc(1) {
    base = std::chrono::steady_clock::now();
    const std::size_t before = HeapBytesInUse();
    timers.reserve(n + extra);
    for (std::size_t i = 0; i < n; ++i) {
      AsioTimer& t = timers.emplace_back(ioc.get_executor());
      t.expires_at(base + std::chrono::milliseconds(RandomDeadline(rng)));
      t.async_wait(NoopHandler{});
    }
    bytes_per_timer = static_cast<double>(HeapBytesInUse() - before) / static_cast<double>(n);
    for (std::size_t i = 0; i < extra; ++i) timers.emplace_back(ioc.get_executor());
  }
  // Runs the handlers of cancelled waits.
  void Drain() {
    ioc.restart();
    ioc.poll();
    ioc.restart();
  }

  boost::asio::io_context ioc;
  std::chrono::steady_clock::time_point base;
  std::vector<AsioTimer> timers;
  double bytes_per_timer = 0;
};

void BM_AsioTimerArm(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const std::size_t batch = ArmBatch(n);
  std::mt19937_64 rng(1);
  AsioFixture f(n, batch, rng);
  std::vector<std::chrono::steady_clock::time_point> deadlines(batch);
  for (auto& d : deadlines) d = f.base + std::chrono::milliseconds(RandomDeadline(rng));
  std::size_t i = 0;
  for (auto _ : state) {
    if (i == batch) {
      state.PauseTiming();
      for (std::size_t j = 0; j < batch; ++j) f.timers[n + j].cancel();
      f.Drain();
      i = 0;
      state.ResumeTiming();
    }
    AsioTimer& t = f.timers[n + i];
    t.expires_at(deadlines[i]);
    t.async_wait(NoopHandler{});
    ++i;
  }
  SetPerOpCounters(state, state.iterations());
  state.counters["bytes_per_timer"] = f.bytes_per_timer;
}

// Times cancel() alone; the cancelled handlers run outside the timed region, and their cost is
// reported apart as `handler_ns`.
void BM_AsioTimerCancel(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::mt19937_64 rng(2);
  AsioFixture f(n, 0, rng);
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::shuffle(order.begin(), order.end(), rng);
  const std::size_t batch = std::min<std::size_t>(n, 65536);
  std::size_t i = 0;
  std::size_t start = 0;
  double drain_ns = 0;
  std::size_t drained = 0;
  const auto drain = [&] {
    const auto t0 = std::chrono::steady_clock::now();
    f.Drain();
    drain_ns +=
        std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    drained += i;
  };
  for (auto _ : state) {
    if (i == batch) {
      state.PauseTiming();
      drain();
      for (std::size_t j = start; j < start + batch; ++j) {
        AsioTimer& t = f.timers[order[j % n]];
        t.expires_at(f.base + std::chrono::milliseconds(RandomDeadline(rng)));
        t.async_wait(NoopHandler{});
      }
      start = (start + batch) % n;
      i = 0;
      state.ResumeTiming();
    }
    benchmark::DoNotOptimize(f.timers[order[(start + i) % n]].cancel());
    ++i;
  }
  drain();  // the loop has stopped timing
  SetPerOpCounters(state, state.iterations());
  state.counters["handler_ns"] = drained ? drain_ns / static_cast<double>(drained) : 0;
  state.counters["bytes_per_timer"] = f.bytes_per_timer;
}

// The equivalent of the wheel's fire+re-arm without waiting real hours: N timers are armed at
// past deadlines (staggered by 1 ns, in a random order of timers) and the io_context runs until
// all N have fired; each handler re-arms its timer at expiry + period, shifted one day ahead so
// that it cannot fire again in the same pass (the shift keeps the heap order of expiry + period).
void BM_AsioTimerFireRearm(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::mt19937_64 rng(3);
  boost::asio::io_context ioc(1);
  std::vector<AsioTimer> timers;
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::shuffle(order.begin(), order.end(), rng);
  const std::size_t before = HeapBytesInUse();
  timers.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    timers.emplace_back(ioc.get_executor());
  }
  std::size_t fired = 0;
  std::size_t total_fires = 0;
  struct RearmHandler {
    std::vector<AsioTimer>* timers;
    boost::asio::io_context* ioc;
    std::size_t* fired;
    std::size_t n;
    std::size_t i;
    void operator()(const boost::system::error_code& ec) const {
      if (ec) return;
      AsioTimer& t = (*timers)[i];
      t.expires_at(t.expiry() + std::chrono::milliseconds(PeriodOf(i)) + std::chrono::hours(24));
      t.async_wait(*this);
      if (++*fired == n) ioc->stop();
    }
  };
  double bytes_per_timer = 0;
  for (auto _ : state) {
    state.PauseTiming();
    for (AsioTimer& t : timers) t.cancel();
    ioc.restart();
    ioc.poll();  // the cancelled re-arms of the previous iteration
    ioc.restart();
    const auto past = std::chrono::steady_clock::now() - std::chrono::seconds(1);
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t i = order[k];
      timers[i].expires_at(past + std::chrono::nanoseconds(k));
      timers[i].async_wait(RearmHandler{&timers, &ioc, &fired, n, i});
    }
    if (bytes_per_timer == 0) {
      bytes_per_timer = static_cast<double>(HeapBytesInUse() - before) / static_cast<double>(n);
    }
    fired = 0;
    state.ResumeTiming();
    ioc.run();
    total_fires += fired;
  }
  SetPerOpCounters(state, total_fires);
  state.counters["per_fire"] = benchmark::Counter(
      static_cast<double>(total_fires), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["bytes_per_timer"] = bytes_per_timer;
}

// Iteration counts are fixed per N (so that each case's expensive setup runs once) and sized for
// a few seconds at most; the wheel's fire+re-arm cases make about 20M fires each (2.24 fires per
// timer per 10 s of virtual time).
void Register(const char* name, void (*fn)(benchmark::State&),
              std::initializer_list<std::pair<std::int64_t, std::int64_t>> n_and_iterations) {
  for (const auto& [n, iterations] : n_and_iterations) {
    benchmark::RegisterBenchmark(name, fn)
        ->Arg(n)
        ->Iterations(iterations)
        ->Unit(benchmark::kNanosecond);
  }
}

const bool kRegistered = [] {
  Register("BM_WheelArm", BM_WheelArm,
           {{10'000, 2'000'000}, {1'000'000, 2'000'000}, {10'000'000, 2'000'000}});
  Register("BM_AsioTimerArm", BM_AsioTimerArm,
           {{10'000, 1'000'000}, {1'000'000, 1'000'000}, {10'000'000, 200'000}});
  Register("BM_WheelCancel", BM_WheelCancel,
           {{10'000, 2'000'000}, {1'000'000, 2'000'000}, {10'000'000, 2'000'000}});
  Register("BM_WheelCancelInIdOrder", BM_WheelCancelInIdOrder,
           {{10'000, 2'000'000}, {1'000'000, 2'000'000}, {10'000'000, 2'000'000}});
  Register("BM_AsioTimerCancel", BM_AsioTimerCancel,
           {{10'000, 1'000'000}, {1'000'000, 1'000'000}, {10'000'000, 200'000}});
  Register("BM_WheelFireRearm", BM_WheelFireRearm,
           {{10'000, 900'000}, {1'000'000, 9'000}, {10'000'000, 900}});
  Register("BM_AsioTimerFireRearm", BM_AsioTimerFireRearm,
           {{10'000, 200}, {1'000'000, 3}, {10'000'000, 1}});
  return true;
}();

}  // namespace
