// Asynchronous runs' completion (a dropped RunDone) and Engine::Shutdown's drain, in virtual time.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <thread>

#include "core/engine_test_util.h"

namespace syncsched::testing {
namespace {

class AsyncRun : public EngineHarness {
 protected:
  // Defines github/issues (every hour, timeout 1 h) with `cb` as its callback and adds "acme",
  // whose schedule starts and runs at once.
  void DefineWith(AsyncSyncCallback cb) {
    ASSERT_TRUE(engine->RegisterAsyncCallback("github", "issues", std::move(cb)).ok());
    SyncDefinition def{.name = "issues", .frequency = "every 1h", .timeout = Millis(1h)};
    ASSERT_TRUE(engine->DefineSync("github", def).ok());
    ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
    Settle();
  }
};

// Regression: a run whose RunDone is destroyed uncalled stayed RUNNING until its timeout.
TEST_F(AsyncRun, DroppedRunDoneCompletesTheRunAsCancelledAtOnce) {
  std::vector<RunDone> held;
  DefineWith([&](const RunContext&, RunDone done) {
    held.push_back(done);  // two copies
    held.push_back(std::move(done));
  });
  ASSERT_EQ(held.size(), 2u);
  EXPECT_EQ(StatusOf("github", "acme", "issues").status, RunStatus::kRunning);
  held.pop_back();  // one copy left: still in flight
  Settle();
  EXPECT_EQ(StatusOf("github", "acme", "issues").status, RunStatus::kRunning);
  held.clear();  // the last copy: the run ends now, not at its timeout
  Settle();
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kError);
  EXPECT_EQ(st.last_error, "the callback dropped its completion");
  EXPECT_EQ(st.runs, 1u);
  EngineMetrics m = engine->GetMetrics();
  EXPECT_EQ(m.runs_in_flight, 0u);
  EXPECT_EQ(m.runs_cancelled, 1u);
  EXPECT_EQ(m.runs_timed_out, 0u);
  Run(1h);  // the grid goes on: the next slot's run is in flight
  EXPECT_EQ(held.size(), 2u);
  EXPECT_EQ(StatusOf("github", "acme", "issues").status, RunStatus::kRunning);
}

TEST_F(AsyncRun, RunDoneDroppedInsideTheCallbackCompletesTheRun) {
  int calls = 0;
  DefineWith([&](const RunContext&, RunDone) { ++calls; });
  EXPECT_EQ(calls, 1);
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kError);
  EXPECT_EQ(st.last_error, "the callback dropped its completion");
}

TEST_F(AsyncRun, RunDoneCalledThenDroppedCompletesOnce) {
  DefineWith([](const RunContext&, RunDone done) { done(RunReport::Success()); });
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kSuccess);
  EXPECT_EQ(st.runs, 1u);
  EXPECT_EQ(engine->GetMetrics().runs_cancelled, 0u);
}

TEST_F(AsyncRun, ACallbackThatThrowsFailsWithItsMessageNotAsDropped) {
  DefineWith([](const RunContext&, RunDone) { throw std::runtime_error("cannot start"); });
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.last_error, "cannot start");
  EXPECT_EQ(st.runs, 1u);
  EXPECT_EQ(engine->GetMetrics().runs_cancelled, 0u);
}

TEST_F(AsyncRun, ShutdownLetsARunInFlightFinishThenStops) {
  std::optional<RunDone> held;
  DefineWith([&](const RunContext&, RunDone done) { held = std::move(done); });
  ASSERT_TRUE(held.has_value());
  std::thread finisher([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    (*held)(RunReport::Success());
  });
  engine->Shutdown(std::chrono::steady_clock::now() + std::chrono::seconds(30));
  finisher.join();
  EngineMetrics m = engine->GetMetrics();
  EXPECT_EQ(m.runs_succeeded, 1u);
  EXPECT_EQ(m.runs_cancelled, 0u);
  EXPECT_EQ(m.runs_in_flight, 0u);
  auto st = engine->Start(T("github", "acme"));
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(st.status().IsFailedPrecondition()) << st.status();
  Run(5h);  // no timer fires after a shutdown
  EXPECT_EQ(engine->GetMetrics().runs_started, 1u);
  engine->Shutdown(std::chrono::steady_clock::now());  // idempotent; the destructor follows
}

TEST_F(AsyncRun, ShutdownCancelsRunsStillGoingAtTheDeadline) {
  std::optional<RunDone> held;
  std::atomic<int> cancelled{0};
  Status reason;
  DefineWith([&](const RunContext& ctx, RunDone done) {
    held = std::move(done);
    CancellationToken token = ctx.cancel;
    ctx.cancel.OnCancel([&cancelled, &reason, token] {
      reason = token.reason();
      ++cancelled;
    });
  });
  auto start = std::chrono::steady_clock::now();
  engine->Shutdown(start + std::chrono::milliseconds(50));
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(50));
  EXPECT_EQ(cancelled.load(), 1);
  EXPECT_EQ(reason.code(), StatusCode::kCancelled);
  (*held)(RunReport::Success());  // a late completion is ignored
  held.reset();
}

}  // namespace
}  // namespace syncsched::testing
