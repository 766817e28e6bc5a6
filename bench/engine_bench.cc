// Engine benchmarks, each beside its baseline in this binary.
//
// BM_EngineStart/N: one Start command (no connection, all syncs) over N paused schedules
// (N/10 connections x 10 syncs, in memory), including the dispatch of their N immediate runs to
// no-op callbacks on the engine's worker pool and the recording of their outcomes. Counter
// bytes_per_schedule: the engine's heap per schedule (key, state, grid, timer, counters, indexes).
//
// BM_AsioBaselineStart/N: what the same takes with one boost::asio::steady_timer per schedule:
// N timers armed at the frequency, and N no-op handlers posted to a thread pool of the same size.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "syncsched/syncsched.h"

namespace {

using namespace std::chrono_literals;
constexpr int kSyncs = 10;

std::unique_ptr<syncsched::Engine> MakeEngine(std::int64_t schedules,
                                              std::atomic<std::int64_t>& ran) {
  syncsched::Options o;
  o.worker_threads = 2;
  auto engine = std::move(syncsched::Engine::Open(o)).value();
  for (int s = 0; s < kSyncs; ++s) {
    std::string name = "sync" + std::to_string(s);
    (void)engine->RegisterCallback("bench", name, [&ran](const syncsched::RunContext&) {
      ran.fetch_add(1, std::memory_order_relaxed);
      return syncsched::RunReport::Success();
    });
    syncsched::SyncDefinition def;
    def.name = name;
    def.frequency = "every " + std::to_string(1 + s) + "h";
    def.auto_start = false;
    (void)engine->DefineSync("bench", def);
  }
  for (std::int64_t c = 0; c < schedules / kSyncs; ++c) {
    (void)engine->AddConnection("bench", "conn-" + std::to_string(c));
  }
  return engine;
}

void BM_EngineStart(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  double bytes = 0;
  for (auto _ : state) {
    state.PauseTiming();
    std::atomic<std::int64_t> ran{0};
    auto engine = MakeEngine(n, ran);
    state.ResumeTiming();

    syncsched::Target all{"bench", std::nullopt, {}, /*report_keys=*/false};
    auto r = engine->Start(all);
    if (!r.ok() || static_cast<std::int64_t>(r->Count(syncsched::Outcome::kStarted)) != n) {
      state.SkipWithError("start failed");
      break;
    }
    // Until every immediate run has run and its outcome is recorded.
    while (engine->GetMetrics().runs_succeeded < static_cast<std::uint64_t>(n)) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // leave the cores to the engine
    }

    state.PauseTiming();
    bytes = static_cast<double>(engine->MemoryBytes()) / static_cast<double>(n);
    engine.reset();
    state.ResumeTiming();
  }
  state.counters["bytes_per_schedule"] = bytes;
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_EngineStart)
    ->Arg(1000000)
    ->Iterations(1)
    ->Repetitions(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_AsioBaselineStart(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  for (auto _ : state) {
    boost::asio::io_context io;
    boost::asio::thread_pool pool(2);
    std::atomic<std::int64_t> ran{0};
    std::vector<std::unique_ptr<boost::asio::steady_timer>> timers;
    timers.reserve(n);
    for (std::int64_t i = 0; i < n; ++i) {
      auto t = std::make_unique<boost::asio::steady_timer>(io);
      t->expires_after(std::chrono::hours(1 + i % kSyncs));
      t->async_wait([](boost::system::error_code) {});
      timers.push_back(std::move(t));
      boost::asio::post(pool, [&ran] { ran.fetch_add(1, std::memory_order_relaxed); });
    }
    pool.join();
    benchmark::DoNotOptimize(ran.load());
    state.PauseTiming();
    timers.clear();
    io.run();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_AsioBaselineStart)
    ->Arg(1000000)
    ->Iterations(1)
    ->Repetitions(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The steady load of BM_EngineSteadyFire and BM_EngineLateness: n / 60 connections, each with 60
// syncs of periods 1 min .. 60 min, phase spreading on, every run going to `callback`.
void AddSteadyLoad(syncsched::Engine& engine, std::int64_t n,
                   const syncsched::SyncCallback& callback) {
  constexpr int kPeriods = 60;
  for (int p = 0; p < kPeriods; ++p) {
    std::string name = "every" + std::to_string(p + 1) + "m";
    (void)engine.RegisterCallback("bench", name, callback);
    syncsched::SyncDefinition def;
    def.name = name;
    def.frequency = std::to_string(p + 1) + "m";
    def.spread = true;
    (void)engine.DefineSync("bench", def);
  }
  for (std::int64_t c = 0; c < n / kPeriods; ++c) {
    (void)engine.AddConnection("bench", "conn-" + std::to_string(c));
  }
}

// BM_EngineSteadyFire: 1M started schedules with frequencies spread over 1 min .. 1 h (60 distinct
// periods), no-op callbacks, all on one thread in virtual time: each iteration advances the clock
// by one minute and runs every slot due in it. items_per_second = runs the engine sustains per
// second of CPU (dispatch, callback, outcome, re-arm). Baseline in the same binary:
// BM_AsioTimerSteadyFire, one steady_timer per schedule re-armed at each expiry, handlers run on
// one thread (the per-fire cost of that design at the same scale).
void BM_EngineSteadyFire(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  boost::asio::io_context io;
  syncsched::VirtualClock clock;
  syncsched::Options o;
  o.clock = &clock;
  o.executor = io.get_executor();
  o.run_executor = io.get_executor();
  o.max_fires_per_wakeup = 1 << 20;
  auto engine = std::move(syncsched::Engine::Open(o)).value();
  std::int64_t ran = 0;
  AddSteadyLoad(*engine, n, [&ran](const syncsched::RunContext&) {
    ++ran;
    return syncsched::RunReport::Success();
  });
  clock.RunFor(io, std::chrono::seconds(0));  // the immediate runs
  clock.RunFor(io, std::chrono::hours(1));    // warm up: one full hour of every period
  std::int64_t before = ran;
  for (auto _ : state) clock.RunFor(io, std::chrono::minutes(1));
  state.SetItemsProcessed(ran - before);
  state.counters["runs_per_minute"] =
      static_cast<double>(ran - before) / static_cast<double>(state.iterations());
}
BENCHMARK(BM_EngineSteadyFire)->Arg(1000000)->Iterations(20)->Unit(benchmark::kMillisecond);

void BM_AsioTimerSteadyFire(benchmark::State& state) {
  // The same per-fire work on one steady_timer per schedule: expiry -> handler -> re-arm.
  const std::int64_t n = state.range(0);
  boost::asio::io_context io;
  std::vector<std::unique_ptr<boost::asio::steady_timer>> timers;
  timers.reserve(n);
  std::int64_t fired = 0;
  std::function<void(std::size_t)> arm = [&](std::size_t i) {
    timers[i]->expires_at(timers[i]->expiry() + std::chrono::hours(24));
    timers[i]->async_wait([&, i](boost::system::error_code ec) {
      if (ec) return;
      ++fired;
      arm(i);
    });
  };
  auto base = std::chrono::steady_clock::now() - std::chrono::hours(1);
  for (std::int64_t i = 0; i < n; ++i) {
    timers.push_back(std::make_unique<boost::asio::steady_timer>(io));
    timers.back()->expires_at(base + std::chrono::microseconds(i));
  }
  for (std::int64_t i = 0; i < n; ++i) {
    timers[i]->async_wait([&, i](boost::system::error_code ec) {
      if (ec) return;
      ++fired;
      arm(static_cast<std::size_t>(i));
    });
  }
  constexpr std::int64_t kPerIteration = 69000;  // ~ the engine's runs per virtual minute
  for (auto _ : state) {
    std::int64_t target = fired + kPerIteration;
    while (fired < target && io.run_one() > 0) {
    }
  }
  state.SetItemsProcessed(state.iterations() * kPerIteration);
  io.stop();  // the timers' pending waits are destroyed with them and the io_context
}
BENCHMARK(BM_AsioTimerSteadyFire)->Arg(1000000)->Iterations(10)->Unit(benchmark::kMillisecond);

// BM_EngineLateness: the same load in real time on the engine's own threads (SystemClock,
// 2 workers), for 100 seconds; counters p50/p99/p999 of dispatch time minus slot time in ms (slots
// have millisecond resolution), over the scheduled runs after the start's immediate burst.
void BM_EngineLateness(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  std::mutex mu;
  std::vector<std::int64_t> lateness;
  lateness.reserve(1 << 20);
  std::atomic<std::int64_t> measure_from{INT64_MAX};
  for (auto _ : state) {
    syncsched::Options o;
    o.worker_threads = 2;
    auto engine = std::move(syncsched::Engine::Open(o)).value();
    syncsched::Clock* clock = &engine->clock();
    AddSteadyLoad(*engine, n, [&, clock](const syncsched::RunContext& ctx) {
      if (ctx.slot.time_since_epoch().count() >= measure_from.load(std::memory_order_relaxed)) {
        std::int64_t late = (clock->Now() - ctx.slot).count();
        std::lock_guard lock(mu);
        lateness.push_back(late);
      }
      return syncsched::RunReport::Success();
    });
    // Spread schedules first run half a period or more after the start: from 30 s on, the
    // 1-minute schedules fire on their phases; measure from then, for 70 s.
    measure_from = (clock->Now() + std::chrono::seconds(30)).time_since_epoch().count();
    std::this_thread::sleep_for(std::chrono::seconds(100));
    engine.reset();
  }
  std::sort(lateness.begin(), lateness.end());
  auto pct = [&](double q) {
    if (lateness.empty()) return -1.0;
    return static_cast<double>(lateness[static_cast<std::size_t>(q * (lateness.size() - 1))]);
  };
  state.counters["runs_measured"] = static_cast<double>(lateness.size());
  state.counters["p50_ms"] = pct(0.5);
  state.counters["p99_ms"] = pct(0.99);
  state.counters["p999_ms"] = pct(0.999);
  state.counters["max_ms"] = lateness.empty() ? -1.0 : static_cast<double>(lateness.back());
}
BENCHMARK(BM_EngineLateness)
    ->Arg(1000000)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
