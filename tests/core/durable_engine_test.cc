// The engine on a SQLite file: restarts in virtual time keep grids, collapse missed slots into one
// run, record interrupted runs, and keep paused schedules paused (SPEC §6).
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/engine_access.h"
#include "core/engine_test_util.h"
#include "store/sqlite_store.h"

namespace syncsched::testing {
namespace {

class DurableEngine : public EngineHarness {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/syncsched-durable-XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/state.db";
    Reopen();
  }
  void TearDown() override {
    engine.reset();
    std::filesystem::remove_all(dir_);
  }
  // Closes the engine (runs in flight stay unfinished, as at a crash) and opens it again with
  // timers held, registers the callbacks, then releases the timers.
  void Reopen() {
    engine.reset();
    Options o;
    o.database_path = path_;
    o.hold_timers = true;
    Open(o);
    for (const char* sync : {"issues", "prs"}) {
      ASSERT_TRUE(engine->RegisterAsyncCallback("github", sync, Recorder()).ok());
    }
  }
  void DefineBoth() {
    for (const char* sync : {"issues", "prs"}) {
      SyncDefinition d;
      d.name = sync;
      d.frequency = "every 1h";
      d.auto_start = false;
      ASSERT_TRUE(engine->DefineSync("github", d).ok());
    }
  }
  std::string dir_, path_;
};

TEST_F(DurableEngine, StateSurvivesARestartAndGridsContinue) {
  DefineBoth();
  engine->ReleaseTimers();
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  TimePoint anchor = clock.Now();
  ASSERT_TRUE(engine->Start(T("github", "acme", {{"issues"}})).ok());
  ASSERT_TRUE(engine->UpdateFrequency({"github", "acme", "issues", "base"}, "30m").ok());
  ASSERT_TRUE(engine->CreateVariant({"github", "acme", "prs", "v1"}).ok());
  Run(100min);  // runs at 0, 30, 60, 90
  ASSERT_EQ(calls.size(), 4u);
  ScheduleStatus before = StatusOf("github", "acme", "issues");

  Reopen();
  DefineBoth();  // re-registering the same catalog is a no-op
  engine->ReleaseTimers();
  ScheduleStatus after = StatusOf("github", "acme", "issues");
  EXPECT_EQ(after.id, before.id);
  EXPECT_EQ(after.state, ScheduleState::kStarted);
  EXPECT_EQ(after.runs, 4u);
  EXPECT_EQ(after.frequency, 30min);
  EXPECT_TRUE(after.frequency_overridden);
  EXPECT_EQ(after.next_run, anchor + 120min);
  EXPECT_EQ(StatusOf("github", "acme", "prs").state, ScheduleState::kPaused);
  EXPECT_EQ(StatusOf("github", "acme", "prs", "v1").state, ScheduleState::kPaused);
  calls.clear();
  Run(65min);  // to 2h45
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].at, anchor + 120min);
  EXPECT_EQ(calls[1].at, anchor + 150min);
  EXPECT_EQ(calls[0].ctx.run_id, std::to_string(after.id) + "-" +
                                     std::to_string((anchor + 120min).time_since_epoch().count()));
}

TEST_F(DurableEngine, SlotsMissedWhileDownCollapseIntoOneRunInDueOrder) {
  DefineBoth();
  engine->ReleaseTimers();
  const TimePoint start = t0;
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  ASSERT_TRUE(engine->Start(T("github", "a", {{"issues"}})).ok());
  Run(20min);
  ASSERT_TRUE(engine->AddConnection("github", "b").ok());
  ASSERT_TRUE(engine->Start(T("github", "b", {{"issues"}})).ok());
  Settle();
  ASSERT_EQ(calls.size(), 2u);
  engine.reset();
  clock.AdvanceTo(clock.Now() + 5h);  // down for five hours

  calls.clear();
  Reopen();
  Settle();
  EXPECT_TRUE(calls.empty()) << "timers are held until released";
  engine->ReleaseTimers();
  Settle();
  ASSERT_EQ(calls.size(), 2u) << "one catch-up run per schedule";
  EXPECT_EQ(calls[0].ctx.key.connection, "a") << "in due order";
  EXPECT_EQ(calls[1].ctx.key.connection, "b");
  EXPECT_EQ(calls[0].ctx.slot, start + 5h) << "the latest missed slot of a's grid";
  EXPECT_EQ(calls[1].ctx.slot, start + 5h + 20min) << "b's grid is anchored 20 minutes later";
  ScheduleStatus a = StatusOf("github", "a", "issues");
  EXPECT_EQ(a.skipped, 4u) << "slots 1h..4h collapsed";
  EXPECT_EQ(a.next_run, start + 6h);
  Run(50min);
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[2].at, start + 6h);
}

TEST_F(DurableEngine, ARunInFlightAtTheCrashIsRecordedAsInterrupted) {
  auto_complete = false;
  DefineBoth();
  engine->ReleaseTimers();
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme", {{"issues"}})).ok());
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  std::string run_id = calls[0].ctx.run_id;
  Reopen();  // the run never finished
  engine->ReleaseTimers();
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kError);
  EXPECT_NE(st.last_error.find("interrupted"), std::string::npos);
  EXPECT_EQ(st.failures, 1u);
  EXPECT_EQ(st.skipped, 1u);
  EXPECT_EQ(st.state, ScheduleState::kStarted);
  calls[0].done(RunReport::Success());  // the old engine's run: ignored
  Settle();
  EXPECT_EQ(calls.size(), 1u) << "the interrupted slot is not run again";
  Run(1h);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_NE(calls[1].ctx.run_id, run_id);
}

TEST_F(DurableEngine, ARunThatTimedOutIsRecordedAsTimedOutNotInterrupted) {
  auto_complete = false;
  SyncDefinition d;
  d.name = "issues";
  d.frequency = "every 1h";
  d.auto_start = false;
  d.timeout = 5min;
  ASSERT_TRUE(engine->DefineSync("github", d).ok());
  engine->ReleaseTimers();
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme", {{"issues"}})).ok());
  Run(10min);  // the run never answers: the engine ends it at 5 minutes
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_NE(StatusOf("github", "acme", "issues").last_error.find("timed out"), std::string::npos);
  Reopen();
  engine->ReleaseTimers();
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_NE(st.last_error.find("timed out"), std::string::npos) << st.last_error;
  EXPECT_EQ(st.runs, 1u);
  EXPECT_EQ(st.failures, 1u);
  EXPECT_EQ(st.skipped, 0u) << "the timed-out run is not counted again as interrupted";
}

TEST_F(DurableEngine, ACommandThatFailsToCommitChangesNothingInMemory) {
  DefineBoth();
  engine->ReleaseTimers();
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  store::Store& store = internal::EngineAccess::StoreOf(*engine);
  auto pages = store::internal::PageCountForTest(store);
  ASSERT_TRUE(pages.ok()) << pages.status();
  ASSERT_TRUE(store::internal::SetMaxPageCountForTest(store, *pages).ok());  // the disk is full
  // New connections fill the last page; the first that needs another one fails.
  Status failed;
  int n = 0;
  for (; n < 5000 && failed.ok(); ++n) {
    failed = engine->AddConnection("github", "c" + std::to_string(n) + std::string(100, 'x'));
  }
  ASSERT_FALSE(failed.ok()) << "the cap never bit";
  EXPECT_EQ(failed.code(), StatusCode::kUnavailable) << failed;
  EXPECT_NE(failed.message().find("full"), std::string::npos) << failed;
  std::string refused = "c" + std::to_string(n - 1) + std::string(100, 'x');
  EXPECT_TRUE(engine->GetStatus(T("github", refused)).status().IsNotFound())
      << "the refused connection is not in memory";
  EXPECT_EQ(engine->GetMetrics().schedules_paused, 2u * static_cast<std::uint64_t>(n))
      << "acme's two schedules and those of the n - 1 connections that were committed";
  // Space comes back: the same command succeeds, and everything survives a restart.
  ASSERT_TRUE(store::internal::SetMaxPageCountForTest(store, 1 << 30).ok());
  ASSERT_TRUE(engine->AddConnection("github", refused).ok());
  Reopen();
  engine->ReleaseTimers();
  EXPECT_EQ(engine->GetMetrics().schedules_paused, 2u * static_cast<std::uint64_t>(n + 1));
}

TEST_F(DurableEngine, ASpreadGridIsCommittedByTheStartItself) {
  auto_complete = false;  // the first run is still in flight at the crash: no later row
  SyncDefinition d;
  d.name = "issues";
  d.frequency = "every 1h";
  d.auto_start = false;
  d.spread = true;
  ASSERT_TRUE(engine->DefineSync("github", d).ok());
  engine->ReleaseTimers();
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  std::optional<TimePoint> next = StatusOf("github", "acme", "issues").next_run;
  ASSERT_TRUE(next.has_value());
  ASSERT_NE(*next, clock.Now() + 1h) << "this key's phase is not the start's (pick another key)";
  Reopen();
  engine->ReleaseTimers();
  EXPECT_EQ(StatusOf("github", "acme", "issues").next_run, next);
}

TEST_F(DurableEngine, DeletedConnectionsStayDeletedAndAKeyCanBeRecreated) {
  DefineBoth();
  engine->ReleaseTimers();
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  std::uint64_t old_id = StatusOf("github", "acme", "issues").id;
  ASSERT_TRUE(engine->DeleteConnection("github", "acme").ok());
  Reopen();
  engine->ReleaseTimers();
  EXPECT_TRUE(engine->GetStatus(T("github", "acme")).status().IsNotFound());
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  EXPECT_GT(StatusOf("github", "acme", "issues").id, old_id) << "uids are never reused";
}

TEST_F(DurableEngine, RunPoliciesAndIntegrationLimitsSurviveARestart) {
  SyncDefinition d;
  d.name = "issues";
  d.frequency = "every 1h";
  d.auto_start = false;
  d.retry.max = 2;
  d.retry.backoff = 1min;
  ASSERT_TRUE(engine->DefineSync("github", d).ok());
  ASSERT_TRUE(engine->SetIntegrationLimits("github", {.max_concurrency = 1}).ok());
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  ASSERT_TRUE(engine->AddConnection("github", "b").ok());
  Reopen();  // the catalog is not defined again: it comes from the file
  engine->ReleaseTimers();
  auto_complete = false;
  ASSERT_TRUE(engine->Start(T("github", std::nullopt)).ok());
  Settle();
  ASSERT_EQ(calls.size(), 1u) << "max_concurrency 1 was kept";
  std::string waiting = calls[0].ctx.key.connection == "a" ? "b" : "a";
  EXPECT_TRUE(StatusOf("github", waiting, "issues").waiting_since.has_value());
  Finish(0, RunReport::Failure("503"));
  EXPECT_TRUE(StatusOf("github", calls[0].ctx.key.connection, "issues").next_retry.has_value())
      << "the retry policy was kept";
  ASSERT_EQ(calls.size(), 2u) << "the waiting run went when the first ended";
}

TEST_F(DurableEngine, ASecondEngineOnTheSameFileIsRefused) {
  Options o;
  o.database_path = path_;
  auto second = Engine::Open(o);
  ASSERT_FALSE(second.ok());
  EXPECT_TRUE(second.status().IsUnavailable()) << second.status();
  EXPECT_NE(second.status().message().find(path_), std::string::npos);
}

TEST_F(DurableEngine, AFileThatIsNotADatabaseIsRefusedAndNotOverwritten) {
  std::string bad = dir_ + "/bad.db";
  {
    std::ofstream f(bad, std::ios::binary);
    for (int i = 0; i < 4096; ++i) f.put(static_cast<char>((i * 7919) & 0xff));
  }
  auto size = std::filesystem::file_size(bad);
  Options o;
  o.database_path = bad;
  auto e = Engine::Open(o);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find(bad), std::string::npos) << e.status();
  EXPECT_EQ(std::filesystem::file_size(bad), size);
}

}  // namespace
}  // namespace syncsched::testing
