// Wall-clock jumps (issue 11, "Time"): an NTP step forward or back, small or large, moves no grid.
// A step forward past several slots is seen as downtime: one catch-up run per schedule, at its
// latest missed slot, not a burst; a step back re-runs no slot (run ids stay unique); slots stay
// on anchor + k * frequency throughout.
//
// In virtual time (VirtualClock::AdvanceTo in one step is a jump: the engine wakes once, at the
// new time), and with the real SystemClock reading a wall clock the test steps (forward and back)
// while the engine runs on its own threads.
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "core/engine_test_util.h"

namespace syncsched::testing {
namespace {

class ClockJumps : public EngineHarness {
 protected:
  // `n` connections of github/issues every minute, started at t0 (each runs at once).
  void StartSchedules(int n) {
    Define("github", "issues", "every 1m", /*auto_start=*/true);
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(engine->AddConnection("github", "c" + std::to_string(i)).ok());
    }
    Settle();
    ASSERT_EQ(calls.size(), static_cast<std::size_t>(n));
  }
  // Jumps the clock to `t` in one step (as an NTP step does) and runs what is then due.
  void JumpTo(TimePoint t) {
    clock.AdvanceTo(t);
    Settle();
  }
  void ExpectUniqueRunIds() {
    std::set<std::string> ids;
    for (const Call& c : calls) EXPECT_TRUE(ids.insert(c.ctx.run_id).second) << c.ctx.run_id;
  }
};

TEST_F(ClockJumps, AStepForwardPastSeveralSlotsRunsEachScheduleOnceAtItsLatestMissedSlot) {
  StartSchedules(5);
  Run(20s);
  JumpTo(t0 + 5min + 30s);  // slots t0+1m .. t0+5m passed unseen
  ASSERT_EQ(calls.size(), 10u) << "one catch-up run per schedule, not a burst";
  for (std::size_t i = 5; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].ctx.slot, t0 + 5min) << "the latest missed slot";
    EXPECT_EQ(calls[i].at, t0 + 5min + 30s);
  }
  for (int i = 0; i < 5; ++i) {
    ScheduleStatus st = StatusOf("github", "c" + std::to_string(i), "issues");
    EXPECT_EQ(st.skipped, 4u) << "t0+1m .. t0+4m collapsed";
    ASSERT_TRUE(st.next_run);
    EXPECT_EQ(*st.next_run, t0 + 6min) << "the grid did not move";
  }
  Run(30s);  // to t0+6m: the grid goes on
  ASSERT_EQ(calls.size(), 15u);
  for (std::size_t i = 10; i < calls.size(); ++i) EXPECT_EQ(calls[i].ctx.slot, t0 + 6min);
  ExpectUniqueRunIds();
}

TEST_F(ClockJumps, ASmallStepForwardWithinAPeriodChangesNothing) {
  StartSchedules(3);
  Run(10s);
  JumpTo(t0 + 50s);  // before the next slot
  EXPECT_EQ(calls.size(), 3u);
  JumpTo(t0 + 1min + 700ms);  // just past it: one run, at its slot
  ASSERT_EQ(calls.size(), 6u);
  for (std::size_t i = 3; i < 6; ++i) EXPECT_EQ(calls[i].ctx.slot, t0 + 1min);
  EXPECT_EQ(StatusOf("github", "c0", "issues").skipped, 0u);
  ExpectUniqueRunIds();
}

TEST_F(ClockJumps, ALargeStepForwardIsOneRunPerScheduleWhateverItsLength) {
  StartSchedules(4);
  JumpTo(t0 + std::chrono::hours(24 * 30) + 15s);  // a month: 43,200 slots
  ASSERT_EQ(calls.size(), 8u);
  for (std::size_t i = 4; i < 8; ++i) {
    EXPECT_EQ(calls[i].ctx.slot, t0 + std::chrono::hours(24 * 30));
  }
  EXPECT_EQ(*StatusOf("github", "c3", "issues").next_run, t0 + std::chrono::hours(24 * 30) + 1min);
  ExpectUniqueRunIds();
}

// ---- The real SystemClock, its wall clock stepped by the test ----

// A wall clock the test sets; read by the SystemClock under test.
struct SteppedWall {
  std::atomic<std::int64_t> ms{1767225600000};  // 2026-01-01T00:00:00Z
  TimePoint Read() const { return TimePoint(Millis(ms.load())); }
  void Set(TimePoint t) { ms.store(t.time_since_epoch().count()); }
};

TEST(SystemClockSteps, NowFollowsAStepForwardAndStandsStillAfterAStepBack) {
  SteppedWall wall;
  SystemClock clock([&] { return wall.Read(); }, 2ms);
  TimePoint w0 = wall.Read();
  EXPECT_EQ(clock.Now(), w0);
  wall.Set(w0 + 1h);
  EXPECT_EQ(clock.Now(), w0 + 1h);
  wall.Set(w0 + 10min);  // a step back
  EXPECT_EQ(clock.Now(), w0 + 1h);
  wall.Set(w0 + 1h + 1ms);
  EXPECT_EQ(clock.Now(), w0 + 1h + 1ms);
}

TEST(SystemClockSteps, TheRealWallClockIsRead) {
  SystemClock clock;
  auto wall = std::chrono::time_point_cast<Millis>(std::chrono::system_clock::now());
  EXPECT_LE(std::chrono::abs(clock.Now() - wall), 1s);
}

TEST(SystemClockSteps, AnAlarmFiresAtItsDeadlineInWallTimeAcrossSteps) {
  SteppedWall wall;
  SystemClock clock([&] { return wall.Read(); }, 2ms);
  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);
  std::thread runner([&] { io.run(); });
  std::mutex mu;
  std::condition_variable cv;
  int fired = 0;
  auto alarm = clock.MakeAlarm(io.get_executor());
  auto wait_fired = [&](int n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return fired >= n; });
  };
  auto handler = [&] {
    std::lock_guard lock(mu);
    ++fired;
    cv.notify_all();
  };
  TimePoint w0 = wall.Read();
  // Forward: an alarm an hour away fires as soon as the wall clock is stepped past it.
  alarm->SetAt(w0 + 1h, handler);
  EXPECT_FALSE(wait_fired(1, 30ms));
  wall.Set(w0 + 2h);
  EXPECT_TRUE(wait_fired(1, 10s));
  // Back: an alarm 50 ms ahead does not fire while the wall clock is an hour behind...
  alarm->SetAt(w0 + 2h + 50ms, handler);
  wall.Set(w0 + 1h);
  EXPECT_FALSE(wait_fired(2, 150ms));
  // ...and fires once it reaches the deadline again.
  wall.Set(w0 + 2h + 50ms);
  EXPECT_TRUE(wait_fired(2, 10s));
  alarm.reset();
  work.reset();
  runner.join();
}

// The engine on its own threads with the stepped SystemClock: schedules every minute; the wall
// clock steps forward 5.5 minutes, back 3, then walks to the next slot.
TEST(SystemClockSteps, TheEngineRunsEachSlotOnceAcrossStepsForwardAndBack) {
  SteppedWall wall;
  SystemClock clock([&] { return wall.Read(); }, 2ms);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<RunContext> runs;
  Options o;
  o.clock = &clock;
  auto opened = Engine::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<Engine> engine = std::move(opened).value();
  ASSERT_TRUE(engine
                  ->RegisterCallback("github", "issues",
                                     [&](const RunContext& ctx) {
                                       std::lock_guard lock(mu);
                                       runs.push_back(ctx);
                                       cv.notify_all();
                                       return RunReport::Success();
                                     })
                  .ok());
  auto wait_runs = [&](std::size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return runs.size() >= n; });
  };
  SyncDefinition d;
  d.name = "issues";
  d.frequency = "every 1m";
  ASSERT_TRUE(engine->DefineSync("github", d).ok());
  const TimePoint w0 = wall.Read();
  for (const char* c : {"a", "b", "c"}) ASSERT_TRUE(engine->AddConnection("github", c).ok());
  ASSERT_TRUE(wait_runs(3, 10s));

  wall.Set(w0 + 5min + 30s);  // forward past five slots
  ASSERT_TRUE(wait_runs(6, 10s));
  wall.Set(w0 + 2min + 30s);  // back three minutes: slots t0+3m..t0+5m already ran
  EXPECT_FALSE(wait_runs(7, 100ms));
  wall.Set(w0 + 5min + 59s);  // still before the next slot of the engine's time
  EXPECT_FALSE(wait_runs(7, 50ms));
  wall.Set(w0 + 6min);
  ASSERT_TRUE(wait_runs(9, 10s));
  EXPECT_FALSE(wait_runs(10, 50ms)) << "no burst";
  engine.reset();

  std::lock_guard lock(mu);
  ASSERT_EQ(runs.size(), 9u);
  std::set<std::string> ids;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const RunContext& r = runs[i];
    EXPECT_TRUE(ids.insert(r.run_id).second) << "run id " << r.run_id << " twice";
    TimePoint expected = i < 3 ? w0 : i < 6 ? w0 + 5min : w0 + 6min;
    EXPECT_EQ(r.slot, expected) << "run " << i << " of " << r.key.connection;
  }
}

}  // namespace
}  // namespace syncsched::testing
