// Concurrency: ten threads issue random commands while runs fire on the engine's own threads and
// the real clock. Built and run under ThreadSanitizer in CI (ctest -R Concurrency). Bounded by
// operation count, not by time; nothing sleeps.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>

#include "syncsched/syncsched.h"

namespace syncsched {
namespace {

using namespace std::chrono_literals;

TEST(ConcurrencyTest, RandomCommandsFromTenThreadsWhileRunsFire) {
  // What the callbacks touch, declared before the engine: destroyed after it (its destructor joins
  // the workers), even when an assertion returns early.
  std::mutex mu;
  std::set<std::string> in_flight;  // schedule uid prefix of the run id
  std::atomic<int> overlaps{0};
  std::atomic<int> runs{0};
  std::condition_variable done_cv;
  bool final_ran = false;  // under mu
  auto uid_of = [](const std::string& run_id) { return run_id.substr(0, run_id.find('-')); };
  // Callbacks call back into the engine through a plain pointer: `engine.reset()` below nulls the
  // unique_ptr before the destructor has joined the workers, and the Engine object itself lives
  // until those callbacks have returned.
  Engine* raw = nullptr;

  Options o;
  o.frequency_bounds.min = 1ms;
  o.worker_threads = 3;
  auto opened = Engine::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<Engine> engine = std::move(opened).value();
  raw = engine.get();  // before any callback is registered, so before any can run
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

// ~Engine (engine.h): cancels the runs in flight (their tokens fire), does not wait for runs on a
// host executor that are still going, and ignores their late completions. Two host threads each
// run a callback that blocks until the test lets it go; eighteen more runs wait in the host's
// queue. The engine is destroyed while both callbacks block: it must return, having fired both
// tokens; once let go, the callbacks use their context (heartbeat included) and return into an
// engine that is gone; the queued runs' callbacks are never called.
TEST(ConcurrencyTest, EngineDestroyedWhileCallbacksRunOnHostThreads) {
  constexpr int kHostThreads = 2;
  constexpr int kConnections = 20;  // one immediate run each; the next slots are an hour away

  // What the callbacks touch, declared first: destroyed after the engine and the host threads.
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    int started = 0;              // callbacks entered
    int cancel_calls = 0;         // OnCancel functions called
    int ended = 0;                // callbacks about to return
    bool let_go = false;          // the test lets the blocked callbacks return
    std::vector<Status> reasons;  // each ended callback's token reason
  } shared;
  auto let_go = [&shared] {
    std::lock_guard lock(shared.mu);
    shared.let_go = true;
    shared.cv.notify_all();
  };

  // The host's executor and threads; joined (after letting the callbacks go) before `shared` dies,
  // even when an assertion returns early.
  boost::asio::io_context host;
  struct HostThreads {
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard;
    std::vector<std::thread> threads;
    std::function<void()> let_go;
    ~HostThreads() {
      let_go();
      guard.reset();
      for (auto& t : threads) t.join();
    }
  } host_threads{boost::asio::make_work_guard(host), {}, let_go};
  for (int i = 0; i < kHostThreads; ++i) host_threads.threads.emplace_back([&host] { host.run(); });

  Options o;
  o.run_executor = host.get_executor();
  auto opened = Engine::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<Engine> engine = std::move(opened).value();
  ASSERT_TRUE(engine
                  ->RegisterCallback("github", "issues",
                                     [&shared](const RunContext& ctx) {
                                       ctx.cancel.OnCancel([&shared] {
                                         std::lock_guard lock(shared.mu);
                                         ++shared.cancel_calls;
                                         shared.cv.notify_all();
                                       });
                                       std::unique_lock lock(shared.mu);
                                       ++shared.started;
                                       shared.cv.notify_all();
                                       shared.cv.wait(lock, [&] { return shared.let_go; });
                                       lock.unlock();
                                       ctx.heartbeat();  // after ~Engine: must touch nothing freed
                                       lock.lock();
                                       shared.reasons.push_back(ctx.cancel.reason());
                                       ++shared.ended;
                                       return RunReport::Success();
                                     })
                  .ok());
  SyncDefinition def;
  def.name = "issues";
  def.frequency = "1h";
  ASSERT_TRUE(engine->DefineSync("github", def).ok());
  for (int i = 0; i < kConnections; ++i) {
    ASSERT_TRUE(engine->AddConnection("github", "c" + std::to_string(i)).ok());
  }
  {
    std::unique_lock lock(shared.mu);
    ASSERT_TRUE(shared.cv.wait_for(lock, 60s, [&] { return shared.started == kHostThreads; }))
        << "the host threads never entered the callbacks";
  }
  EngineMetrics before = engine->GetMetrics();
  EXPECT_EQ(before.runs_in_flight, static_cast<std::uint64_t>(kConnections))
      << "every immediate run is dispatched (two in callbacks, the rest queued on the host)";

  // Destroy the engine on a thread of its own, so that a destructor waiting for the blocked host
  // callbacks shows as a failure rather than a hang (the wait is bounded by an event).
  std::promise<void> destroyed;
  std::future<void> destroyed_future = destroyed.get_future();
  std::thread destroyer([&] {
    engine.reset();
    destroyed.set_value();
  });
  bool returned = destroyed_future.wait_for(60s) == std::future_status::ready;
  {
    std::lock_guard lock(shared.mu);
    EXPECT_TRUE(returned) << "~Engine waited for callbacks running on the host's threads";
    EXPECT_EQ(shared.started, kHostThreads);
    EXPECT_EQ(shared.ended, 0);
    // Both tokens fired before ~Engine returned.
    if (returned) {
      EXPECT_EQ(shared.cancel_calls, kHostThreads) << "~Engine did not cancel the runs in flight";
    }
  }
  let_go();
  destroyer.join();

  // Drain the host: the blocked callbacks return into a destroyed engine, and the queued runs are
  // dropped (their tokens fired before their callbacks could start).
  host_threads.guard.reset();
  for (auto& t : host_threads.threads) t.join();
  host_threads.threads.clear();
  std::lock_guard lock(shared.mu);
  EXPECT_EQ(shared.started, kHostThreads) << "a callback started after ~Engine returned";
  EXPECT_EQ(shared.ended, kHostThreads);
  EXPECT_EQ(shared.cancel_calls, kHostThreads);
  ASSERT_EQ(shared.reasons.size(), static_cast<std::size_t>(kHostThreads));
  for (const Status& r : shared.reasons) EXPECT_EQ(r.code(), StatusCode::kCancelled) << r;
}

}  // namespace
}  // namespace syncsched
