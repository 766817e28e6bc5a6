// Concurrency: ten threads issue random commands while runs fire on the engine's own threads and
// the real clock. Built and run under ThreadSanitizer in CI (ctest -R Concurrency). Bounded by
// operation count, not by time; nothing sleeps.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>

#include "syncsched/syncsched.h"

namespace syncsched {
namespace {

using namespace std::chrono_literals;

TEST(ConcurrencyTest, RandomCommandsFromTenThreadsWhileRunsFire) {
  Options o;
  o.frequency_bounds.min = 1ms;
  o.worker_threads = 3;
  auto opened = Engine::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<Engine> engine = std::move(opened).value();
  // Callbacks call back into the engine through a plain pointer: `engine.reset()` below nulls the
  // unique_ptr before the destructor has joined the workers, and the Engine object itself lives
  // until those callbacks have returned.
  Engine* raw = engine.get();

  std::mutex mu;
  std::set<std::string> in_flight;  // schedule uid prefix of the run id
  std::atomic<int> overlaps{0};
  std::atomic<int> runs{0};
  std::condition_variable done_cv;
  bool final_ran = false;  // under mu
  auto uid_of = [](const std::string& run_id) { return run_id.substr(0, run_id.find('-')); };
  SyncCallback cb = [&](const RunContext& ctx) {
    std::string uid = uid_of(ctx.run_id);
    {
      std::lock_guard lock(mu);
      if (!in_flight.insert(uid).second) ++overlaps;
    }
    // A callback may call back into the engine.
    (void)raw->GetStatus(Target{ctx.key.integration, ctx.key.connection, {}});
    ++runs;
    {
      std::lock_guard lock(mu);
      in_flight.erase(uid);
      if (ctx.key.connection == "final") {
        final_ran = true;
        done_cv.notify_all();
      }
    }
    return RunReport::Success();
  };
  for (const char* sync : {"issues", "prs", "users"}) {
    ASSERT_TRUE(engine->RegisterCallback("github", sync, cb).ok());
    SyncDefinition def;
    def.name = sync;
    def.frequency = "5ms";
    def.auto_start = std::string(sync) != "users";
    ASSERT_TRUE(engine->DefineSync("github", def).ok());
  }

  constexpr int kThreads = 10;
  constexpr int kOpsPerThread = 400;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1234 + t);
      auto pick = [&](int n) { return static_cast<int>(rng() % n); };
      const char* syncs[] = {"issues", "prs", "users"};
      for (int i = 0; i < kOpsPerThread; ++i) {
        std::string conn = "c" + std::to_string(pick(8));
        SyncSelector sel{syncs[pick(3)], pick(4) == 0 ? "v1" : "base"};
        Target target{"github", pick(5) == 0 ? std::nullopt : std::optional(conn), {sel}};
        switch (pick(10)) {
          case 0:
            (void)engine->AddConnection("github", conn);
            break;
          case 1:
            (void)engine->DeleteConnection("github", conn);
            break;
          case 2:
            (void)engine->Start(target);
            break;
          case 3:
            (void)engine->Pause(target);
            break;
          case 4:
            (void)engine->Trigger(target, RunMode::kIncremental);
            break;
          case 5:
            (void)engine->Trigger(target, RunMode::kFullResync);
            break;
          case 6:
            (void)engine->GetStatus(target);
            break;
          case 7:
            (void)engine->UpdateFrequency(
                {"github", conn, sel.name, sel.variant},
                pick(2) ? std::optional<std::string>("2ms") : std::nullopt);
            break;
          case 8:
            (void)engine->CreateVariant({"github", conn, sel.name, "v1"});
            break;
          case 9:
            (void)engine->DeleteVariant({"github", conn, sel.name, "v1"});
            break;
        }
        (void)engine->GetMetrics();
      }
    });
  }
  for (auto& t : threads) t.join();
  // A last trigger of a known schedule, and a bounded wait for its run (an event, not a delay).
  (void)engine->AddConnection("github", "final");
  ASSERT_TRUE(engine->Trigger(Target{"github", "final", {{"issues"}}}).ok());
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(done_cv.wait_for(lock, 60s, [&] { return final_ran; }))
        << "the triggered run never ran";
  }
  EngineMetrics m = engine->GetMetrics();
  engine.reset();  // shuts down while runs may be in flight
  EXPECT_EQ(overlaps.load(), 0) << "two runs of one schedule were in flight at once";
  EXPECT_GT(m.runs_started, 0u);
  EXPECT_GT(runs.load(), 0);
  EXPECT_EQ(m.runs_started, m.runs_succeeded + m.runs_failed + m.runs_in_flight)
      << "every dispatched run is accounted for";
}

TEST(ConcurrencyTest, EngineDestroyedWhileCallbacksRunOnHostThreads) {
  boost::asio::io_context host;
  auto guard = boost::asio::make_work_guard(host);
  std::thread host_thread([&] { host.run(); });
  {
    Options o;
    o.frequency_bounds.min = 1ms;
    o.run_executor = host.get_executor();
    auto opened = Engine::Open(o);
    ASSERT_TRUE(opened.ok());
    auto engine = std::move(opened).value();
    std::atomic<int> n{0};
    ASSERT_TRUE(engine
                    ->RegisterCallback("github", "issues",
                                       [&](const RunContext& ctx) {
                                         ++n;
                                         while (!ctx.cancel.cancelled() && n < 50) {
                                           std::this_thread::yield();
                                         }
                                         return RunReport::Success();
                                       })
                    .ok());
    SyncDefinition def;
    def.name = "issues";
    def.frequency = "1ms";
    ASSERT_TRUE(engine->DefineSync("github", def).ok());
    for (int i = 0; i < 20; ++i)
      ASSERT_TRUE(engine->AddConnection("github", "c" + std::to_string(i)).ok());
  }
  guard.reset();
  host_thread.join();
}

}  // namespace
}  // namespace syncsched
