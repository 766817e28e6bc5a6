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

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <memory>
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

}  // namespace
