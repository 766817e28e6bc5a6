// The engine on a database, SQLite file and PostgreSQL alike (each test runs on both): restarts in
// virtual time keep grids, collapse missed slots into one run, record interrupted runs, and keep
// paused schedules paused (SPEC §6).
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "core/engine_access.h"
#include "core/engine_test_util.h"
#include "core/fault_store.h"
#include "store/sqlite_store.h"
#include "support/pg_server.h"

namespace syncsched::testing {
namespace {

enum class StoreKind { kSqlite, kPostgres };

class DurableEngine : public EngineHarness, public ::testing::WithParamInterface<StoreKind> {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/syncsched-durable-XXXXXX";
    dir_ = mkdtemp(tmpl);
    if (postgres()) {
      auto uri = SharedPgServer().CreateDatabase(&db_);
      ASSERT_TRUE(uri.ok()) << uri.status();
      path_ = *uri;
    } else {
      path_ = dir_ + "/state.db";
    }
    Reopen();
  }
  void TearDown() override {
    engine.reset();
    std::filesystem::remove_all(dir_);
    if (!db_.empty()) (void)SharedPgServer().DropDatabase(db_);
  }
  bool postgres() const { return GetParam() == StoreKind::kPostgres; }
  // Closes the engine (runs in flight stay unfinished, as at a crash) and opens it again with
  // timers held, registers the callbacks, then releases the timers.
  void Reopen(Options o = {}) {
    engine.reset();
    o.database_path = path_;
    o.hold_timers = true;
    if (!o.clock) o.clock = &clock;
    o.executor = io.get_executor();
    o.run_executor = io.get_executor();
    plan = std::make_shared<FaultPlan>();  // counts commits; a test may set a fault
    auto e = internal::EngineAccess::OpenWrapped(o, WrapWith(plan));
    ASSERT_TRUE(e.ok()) << e.status();
    engine = std::move(e).value();
    t0 = clock.Now();
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
  // Every store commit the next command makes fails (kFail) or is the crash (kCrash).
  void FailNextCommit(FaultPlan::Mode mode = FaultPlan::Mode::kFail) {
    std::lock_guard lock(plan->mu);
    plan->mode = mode;
    plan->at = plan->commits.load() + 1;
  }
  // Defines `sync` (not auto-started, every hour, the given retry policy).
  void DefineOne(const std::string& sync, bool auto_start = false, int retry_max = 0) {
    SyncDefinition d;
    d.name = sync;
    d.frequency = "every 1h";
    d.auto_start = auto_start;
    d.retry.max = retry_max;
    d.retry.backoff = 1min;
    ASSERT_TRUE(engine->DefineSync("github", d).ok());
  }
  std::size_t CallsOf(const std::string& connection) const {
    std::size_t n = 0;
    for (const Call& c : calls) n += c.ctx.key.connection == connection;
    return n;
  }
  std::string dir_, path_;
  std::string db_;  // PostgreSQL: the test's database
  std::shared_ptr<FaultPlan> plan;
};

TEST_P(DurableEngine, StateSurvivesARestartAndGridsContinue) {
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

TEST_P(DurableEngine, SlotsMissedWhileDownCollapseIntoOneRunInDueOrder) {
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

TEST_P(DurableEngine, ARunInFlightAtTheCrashIsRecordedAsInterrupted) {
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

TEST_P(DurableEngine, ARunThatTimedOutIsRecordedAsTimedOutNotInterrupted) {
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

TEST_P(DurableEngine, ACommandThatFailsToCommitChangesNothingInMemory) {
  DefineBoth();
  engine->ReleaseTimers();
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  if (postgres()) {
    // A real refusal by the server: a constraint the next connection violates.
    ASSERT_TRUE(PgExec(path_,
                       "ALTER TABLE syncsched.connections ADD CONSTRAINT short "
                       "CHECK (length(connection) < 50)")
                    .ok());
    std::string refused = "c" + std::string(100, 'x');
    Status failed = engine->AddConnection("github", refused);
    ASSERT_FALSE(failed.ok());
    EXPECT_EQ(failed.code(), StatusCode::kInternal) << failed;
    EXPECT_NE(failed.message().find("short"), std::string::npos) << failed;
    EXPECT_TRUE(engine->GetStatus(T("github", refused)).status().IsNotFound())
        << "the refused connection is not in memory";
    EXPECT_EQ(engine->GetMetrics().schedules_paused, 2u);
    ASSERT_TRUE(PgExec(path_, "ALTER TABLE syncsched.connections DROP CONSTRAINT short").ok());
    ASSERT_TRUE(engine->AddConnection("github", refused).ok());
    Reopen();
    engine->ReleaseTimers();
    EXPECT_EQ(engine->GetMetrics().schedules_paused, 4u);
    return;
  }
  store::Store& store = static_cast<FaultStore&>(internal::EngineAccess::StoreOf(*engine)).inner();
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

TEST_P(DurableEngine, ASpreadGridIsCommittedByTheStartItself) {
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

TEST_P(DurableEngine, DeletedConnectionsStayDeletedAndAKeyCanBeRecreated) {
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

TEST_P(DurableEngine, RunPoliciesAndIntegrationLimitsSurviveARestart) {
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

TEST_P(DurableEngine, ASecondEngineOnTheSameFileIsRefused) {
  Options o;
  o.database_path = path_;
  auto second = Engine::Open(o);
  ASSERT_FALSE(second.ok());
  EXPECT_TRUE(second.status().IsUnavailable()) << second.status();
  EXPECT_NE(second.status().message().find(path_), std::string::npos);
}

TEST_P(DurableEngine, AFileThatIsNotADatabaseIsRefusedAndNotOverwritten) {
  if (postgres()) {
    // PostgreSQL's equivalent: a schema `syncsched` of another application.
    engine.reset();
    std::string name;
    auto uri = SharedPgServer().CreateDatabase(&name);
    ASSERT_TRUE(uri.ok()) << uri.status();
    ASSERT_TRUE(PgExec(*uri, "CREATE SCHEMA syncsched; CREATE TABLE syncsched.t(x int)").ok());
    Options o;
    o.database_path = *uri;
    auto e = Engine::Open(o);
    ASSERT_FALSE(e.ok());
    EXPECT_NE(e.status().message().find(*uri), std::string::npos) << e.status();
    EXPECT_EQ(*PgQuery(*uri, "SELECT count(*) FROM pg_tables WHERE schemaname = 'syncsched'"), "1");
    (void)SharedPgServer().DropDatabase(name);
    return;
  }
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

// ---- Issue 9: whatever a command acknowledged survives a restart (one regression test each) ----

// Item 1: a trigger whose run waits for a cap is acknowledged; it runs once after a restart.
TEST_P(DurableEngine, ATriggerWaitingForACapRunsOnceAfterARestart) {
  DefineOne("issues");
  ASSERT_TRUE(engine->SetIntegrationLimits("github", {.max_concurrency = 1}).ok());
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  ASSERT_TRUE(engine->AddConnection("github", "b").ok());
  engine->ReleaseTimers();
  auto_complete = false;
  ASSERT_TRUE(engine->Trigger(T("github", "a"), RunMode::kIncremental).ok());
  auto r = engine->Trigger(T("github", "b", {{"issues"}}), RunMode::kIncremental);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Count(Outcome::kTriggered), 1u);
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  ASSERT_TRUE(StatusOf("github", "b", "issues").waiting_since.has_value());
  Reopen();  // a clean close: a's run is in flight, b's waits
  calls.clear();
  auto_complete = true;
  engine->ReleaseTimers();
  Settle();
  EXPECT_EQ(CallsOf("b"), 1u) << "the acknowledged trigger ran once";
  EXPECT_EQ(CallsOf("a"), 0u) << "a's run was interrupted, not run again";
  ScheduleStatus b = StatusOf("github", "b", "issues");
  EXPECT_EQ(b.runs, 1u);
  EXPECT_EQ(b.failures, 0u) << "the waiting run is not 'interrupted': it had never started";
  EXPECT_NE(StatusOf("github", "a", "issues").last_error.find("interrupted"), std::string::npos);
  Run(10h);
  EXPECT_EQ(CallsOf("b"), 1u) << "paused schedules: nothing more";
}

// Item 2: a full resync acknowledged while a run is in flight follows it, across a restart.
TEST_P(DurableEngine, AFullResyncPendingBehindARunHappensAfterARestart) {
  DefineOne("issues");
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  engine->ReleaseTimers();
  auto_complete = false;
  ASSERT_TRUE(engine->Trigger(T("github", "a"), RunMode::kIncremental).ok());
  Settle();
  auto r = engine->Trigger(T("github", "a"), RunMode::kFullResync);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Count(Outcome::kTriggered), 1u);
  Reopen();  // the cancelled run never answered
  calls.clear();
  engine->ReleaseTimers();
  Settle();
  ASSERT_EQ(calls.size(), 1u) << "the full resync ran after the restart";
  EXPECT_EQ(calls[0].ctx.mode, RunMode::kFullResync);
  Finish(0);
  Run(10h);
  EXPECT_EQ(calls.size(), 1u);
}

// Item 3: a start whose immediate run waits for a cap keeps that run across a restart, and reads
// as waiting, not as a failed "interrupted" run.
TEST_P(DurableEngine, AStartWhoseImmediateRunWaitsKeepsItAcrossARestart) {
  DefineOne("issues");
  ASSERT_TRUE(engine->SetIntegrationLimits("github", {.max_concurrency = 1}).ok());
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  ASSERT_TRUE(engine->AddConnection("github", "b").ok());
  engine->ReleaseTimers();
  auto_complete = false;
  ASSERT_TRUE(engine->Start(T("github", "a")).ok());
  const TimePoint started = clock.Now();
  ASSERT_TRUE(engine->Start(T("github", "b")).ok());
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  Reopen();
  ScheduleStatus b = StatusOf("github", "b", "issues");
  EXPECT_EQ(b.failures, 0u);
  EXPECT_EQ(b.runs, 0u);
  EXPECT_TRUE(b.waiting_since.has_value());
  EXPECT_EQ(b.next_run, started + 1h) << "the grid is the start's";
  calls.clear();
  auto_complete = true;
  engine->ReleaseTimers();
  Settle();
  ASSERT_EQ(CallsOf("b"), 1u) << "the immediate run happened after the restart";
  for (const Call& c : calls) {
    if (c.ctx.key.connection == "b") {
      EXPECT_EQ(c.ctx.slot, started);
    }
  }
}

// What a reopen must read back of each schedule, one line each (the decision log and the
// unrecorded mark live in memory only).
std::vector<std::string> Durable(const Result<std::vector<ScheduleStatus>>& all) {
  std::vector<std::string> out;
  if (!all.ok()) return {all.status().ToString()};
  auto ms = [](const std::optional<TimePoint>& t) {
    return t ? std::to_string(t->time_since_epoch().count()) : std::string("-");
  };
  for (const ScheduleStatus& st : *all) {
    out.push_back(st.key.connection + "/" + st.key.sync + "/" + st.key.variant + " id " +
                  std::to_string(st.id) + " state " + std::to_string(static_cast<int>(st.state)) +
                  " next " + ms(st.next_run) + " start " + ms(st.last_start) + " finish " +
                  ms(st.last_finish) + " runs " + std::to_string(st.runs) + " failures " +
                  std::to_string(st.failures) + " skipped " + std::to_string(st.skipped) +
                  " waiting " + ms(st.waiting_since) + " retry " + ms(st.next_retry));
  }
  return out;
}

// A command over more schedules than a part holds streams its rows to the store (Store::
// CommitStream; here 7 rows a part): still one commit, all or nothing, and what a reopen reads is
// what memory held. On SQLite the parts are written as they come; on PostgreSQL gathered.
TEST_P(DurableEngine, ABigStartIsCommittedInPartsAsOneTransaction) {
  DefineBoth();
  constexpr int kConnections = 50;  // 100 schedules: 15 parts
  for (int c = 0; c < kConnections; ++c) {
    ASSERT_TRUE(engine->AddConnection("github", "c" + std::to_string(c)).ok());
  }
  internal::EngineAccess::SetStreamRows(*engine, 7);
  engine->ReleaseTimers();
  auto before = Durable(engine->GetStatus(T("github", std::nullopt)));

  // A failed streamed commit changes nothing, in memory or on disk.
  FailNextCommit();
  Result<CommandResult> failed = engine->Start(T("github", std::nullopt));
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), StatusCode::kUnavailable) << failed.status();
  Settle();
  EXPECT_TRUE(calls.empty()) << "no run of a command that failed";
  EXPECT_EQ(Durable(engine->GetStatus(T("github", std::nullopt))), before);

  const TimePoint started = clock.Now();
  auto r = engine->Start(T("github", std::nullopt));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Count(Outcome::kStarted), 2u * kConnections);
  Settle();
  EXPECT_EQ(calls.size(), 2u * kConnections) << "every immediate run, once";
  auto in_memory = Durable(engine->GetStatus(T("github", std::nullopt)));
  Reopen();
  auto reopened = engine->GetStatus(T("github", std::nullopt));
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ(Durable(reopened), in_memory) << "the reopen reads every part";
  for (const ScheduleStatus& st : *reopened) {
    EXPECT_EQ(st.state, ScheduleState::kStarted);
    EXPECT_EQ(st.next_run, started + 1h);
  }

  // The crash at a streamed commit: nothing of it is on disk.
  internal::EngineAccess::SetStreamRows(*engine, 7);
  engine->ReleaseTimers();
  Settle();
  FailNextCommit(FaultPlan::Mode::kCrash);
  EXPECT_FALSE(engine->Pause(T("github", std::nullopt)).ok());
  Reopen();
  auto after_crash = engine->GetStatus(T("github", std::nullopt));
  ASSERT_TRUE(after_crash.ok());
  for (const ScheduleStatus& st : *after_crash) EXPECT_EQ(st.state, ScheduleState::kStarted);
}

// The store refuses a later part of a streamed commit (SQLite: the file may not grow, as on a
// full disk): the command answers UNAVAILABLE, nothing of any part is applied, memory is as
// before, and once space comes back the same command succeeds.
TEST_P(DurableEngine, AStreamedCommitRefusedMidwayChangesNothing) {
  if (postgres()) {
    GTEST_SKIP() << "the page cap is SQLite's; PostgreSQL's streamed commit refused midway: "
                    "PgStoreTest.AStreamedCommitIsOneTransactionWhereverItFails";
  }
  DefineBoth();
  constexpr int kConnections = 400;  // 800 schedules, 100 parts
  for (int c = 0; c < kConnections; ++c) {
    ASSERT_TRUE(engine->AddConnection("github", "c" + std::to_string(c)).ok());
  }
  internal::EngineAccess::SetStreamRows(*engine, 8);
  engine->ReleaseTimers();
  auto before = Durable(engine->GetStatus(T("github", std::nullopt)));
  store::Store& store = static_cast<FaultStore&>(internal::EngineAccess::StoreOf(*engine)).inner();
  auto pages = store::internal::PageCountForTest(store);
  ASSERT_TRUE(pages.ok()) << pages.status();
  ASSERT_TRUE(store::internal::SetMaxPageCountForTest(store, *pages).ok());
  // Each started row grows by its run in flight: the rows outgrow the pages they have.
  Result<CommandResult> failed = engine->Start(T("github", std::nullopt));
  ASSERT_FALSE(failed.ok()) << "the cap never bit";
  EXPECT_EQ(failed.status().code(), StatusCode::kUnavailable) << failed.status();
  EXPECT_NE(failed.status().message().find("full"), std::string::npos) << failed.status();
  Settle();
  EXPECT_TRUE(calls.empty());
  EXPECT_EQ(Durable(engine->GetStatus(T("github", std::nullopt))), before);
  ASSERT_TRUE(store::internal::SetMaxPageCountForTest(store, 1 << 30).ok());
  Reopen();
  EXPECT_EQ(Durable(engine->GetStatus(T("github", std::nullopt))), before)
      << "no part of the refused commit is on disk";
  internal::EngineAccess::SetStreamRows(*engine, 8);
  engine->ReleaseTimers();
  auto r = engine->Start(T("github", std::nullopt));
  ASSERT_TRUE(r.ok()) << r.status();
  Settle();
  EXPECT_EQ(calls.size(), 2u * kConnections);
}

// Item 4: creating a schedule that auto-starts commits once: the schedule with its first run.
TEST_P(DurableEngine, CreationCommitsTheScheduleAndItsFirstRunInOneTransaction) {
  DefineOne("issues", /*auto_start=*/true);
  engine->ReleaseTimers();
  auto_complete = false;
  std::uint64_t before = plan->commits.load();
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  EXPECT_EQ(plan->commits.load(), before + 1) << "one commit for the command";
  before = plan->commits.load();
  ASSERT_TRUE(engine->CreateVariant({"github", "a", "issues", "v1"}).ok());
  EXPECT_EQ(plan->commits.load(), before + 1);
  // The crash at the creation's commit: nothing of it survives, and the caller heard an error.
  FailNextCommit(FaultPlan::Mode::kCrash);
  EXPECT_FALSE(engine->AddConnection("github", "b").ok());
  Reopen();
  EXPECT_TRUE(engine->GetStatus(T("github", "b")).status().IsNotFound());
  ScheduleStatus a = StatusOf("github", "a", "issues");
  EXPECT_EQ(a.state, ScheduleState::kStarted);
  EXPECT_EQ(a.runs, 1u) << "its first run was recorded with it (interrupted by the close)";
}

TEST_P(DurableEngine, AFailedCreationLeavesNothingInMemory) {
  DefineOne("issues", /*auto_start=*/true);
  engine->ReleaseTimers();
  FailNextCommit();
  EXPECT_TRUE(engine->AddConnection("github", "a").IsUnavailable());
  Settle();
  EXPECT_TRUE(calls.empty()) << "no run of an unacknowledged creation";
  EXPECT_TRUE(engine->GetStatus(T("github", "a")).status().IsNotFound());
  EXPECT_EQ(engine->GetMetrics().schedules_started, 0u);
  ASSERT_TRUE(engine->AddConnection("github", "a").ok()) << "the fault was transient";
  FailNextCommit();
  SyncDefinition d;
  d.name = "prs";
  d.frequency = "every 2h";
  EXPECT_TRUE(engine->DefineSync("github", d).IsUnavailable());
  EXPECT_TRUE(engine->GetStatus(T("github", "a", {{"prs"}})).status().IsNotFound());
  FailNextCommit();
  EXPECT_TRUE(engine->DefineSync("gitlab", d).IsUnavailable());
  EXPECT_TRUE(engine->GetStatus(T("gitlab", std::nullopt)).status().IsNotFound())
      << "the integration the failed definition created is gone";
  Settle();
  EXPECT_EQ(calls.size(), 1u) << "only a's acknowledged first run";
}

// Item 8: a redefinition whose commit fails leaves every schedule exactly as it was: hints,
// spread anchors and overdue slots included.
TEST_P(DurableEngine, AFailedRedefinitionRestoresEverySchedulesState) {
  SyncDefinition d;
  d.name = "issues";
  d.frequency = "every 1h";
  d.auto_start = true;
  ASSERT_TRUE(engine->DefineSync("github", d).ok());
  d.name = "prs";
  d.spread = true;
  ASSERT_TRUE(engine->DefineSync("github", d).ok());
  engine->ReleaseTimers();
  auto_complete = false;
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  Settle();
  for (Call& c : calls) {
    if (c.ctx.key.sync == "issues") {
      c.finished = true;
      RunReport report = RunReport::Success();
      report.next_run_in = 17min;  // a hint: off the grid
      c.done(std::move(report));
    }
  }
  Settle();
  Run(5min);
  auto before = engine->GetStatus(T("github", "a"));
  ASSERT_TRUE(before.ok());
  auto fail_definition = [&] {
    std::lock_guard lock(plan->mu);
    plan->fired = false;
    plan->mode = FaultPlan::Mode::kFail;
    plan->match = [](const store::Batch& b) { return !b.syncs.empty(); };
  };
  fail_definition();
  d.frequency = "every 2h";
  EXPECT_TRUE(engine->DefineSync("github", d).IsUnavailable());
  d.name = "issues";
  d.spread = false;
  fail_definition();
  EXPECT_TRUE(engine->DefineSync("github", d).IsUnavailable());
  auto after = engine->GetStatus(T("github", "a"));
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->size(), before->size());
  for (std::size_t i = 0; i < after->size(); ++i) {
    SCOPED_TRACE((*after)[i].key.sync);
    EXPECT_EQ((*after)[i].next_run, (*before)[i].next_run);
    EXPECT_EQ((*after)[i].frequency, (*before)[i].frequency);
    EXPECT_EQ((*after)[i].status, (*before)[i].status);
    EXPECT_EQ((*after)[i].decisions.size(), (*before)[i].decisions.size());
  }
  Run(12min);  // to the hint: it still fires
  EXPECT_EQ(calls.back().ctx.key.sync, "issues");
  EXPECT_EQ(calls.back().at, t0 + 17min);
}

// Simulation seed 1193: a creation whose immediate run waited for the global cap failed to commit;
// its rollback freed the schedule's index but left its entry in github's wait queue. A hubspot
// schedule created next took that index (and, when the wait counter was rolled back too, the
// same place in line), so the stale github entry dispatched it past hubspot's own cap when a
// github run ended.
TEST_P(DurableEngine, ARolledBackWaitNeverDispatchesTheScheduleThatReusesItsPlace) {
  Options o;
  o.max_concurrent_runs = 2;
  Reopen(o);
  DefineOne("issues", /*auto_start=*/true);  // variants are created started
  SyncDefinition deals;
  deals.name = "deals";
  deals.frequency = "every 1h";
  ASSERT_TRUE(engine->DefineSync("hubspot", deals).ok());
  ASSERT_TRUE(engine->RegisterAsyncCallback("hubspot", "deals", Recorder()).ok());
  ASSERT_TRUE(engine->SetIntegrationLimits("hubspot", {.max_concurrency = 1}).ok());
  engine->ReleaseTimers();
  auto_complete = false;
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  ASSERT_TRUE(engine->AddConnection("hubspot", "h").ok());
  Settle();
  ASSERT_EQ(calls.size(), 2u);  // both first runs: the global cap (2) is reached

  FailNextCommit();
  EXPECT_TRUE(engine->CreateVariant({"github", "a", "issues", "v1"}).status().IsUnavailable());
  ASSERT_TRUE(engine->CreateVariant({"hubspot", "h", "deals", "v1"}).ok());  // waits
  Settle();
  ASSERT_EQ(calls.size(), 2u);

  std::size_t github = calls[0].ctx.key.integration == "github" ? 0 : 1;
  Finish(github);  // the global cap frees a place; hubspot's own cap (1) still holds
  Settle();
  ASSERT_EQ(calls.size(), 2u) << "a hubspot run dispatched while hubspot's only place was taken";
  Finish(1 - github);  // now hubspot's waiting run goes
  Settle();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[2].ctx.key.variant, "v1");
  EXPECT_EQ(calls[2].ctx.key.integration, "hubspot");
}

// Issue 11: an outcome the database refused is visible (metrics, status, the health callback)
// until a later commit writes it, and that commit does.
TEST_P(DurableEngine, AnOutcomeTheDatabaseRefusedIsShownUntilALaterCommitWritesIt) {
  std::vector<Status> events;
  std::mutex events_mu;
  Options o;
  o.on_store_status = [&](const Status& s) {
    std::lock_guard lock(events_mu);
    events.push_back(s);
  };
  Reopen(o);
  DefineOne("issues", /*auto_start=*/true);
  engine->ReleaseTimers();
  auto_complete = false;
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  {
    std::lock_guard lock(plan->mu);
    plan->mode = FaultPlan::Mode::kFail;
    plan->match = [](const store::Batch& b) { return !b.runs.empty(); };  // the outcome's
  }
  calls[0].finished = true;
  calls[0].done(RunReport::Success());
  for (int i = 0; i < 200 && !plan->fired.load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // the writer's thread
  }
  ASSERT_TRUE(plan->fired.load());
  (void)engine->Start(T("github", "a"));  // a command that commits nothing waits for the writer
  EngineMetrics m = engine->GetMetrics();
  EXPECT_FALSE(m.store_healthy);
  EXPECT_NE(m.store_error.find("fault injection"), std::string::npos) << m.store_error;
  EXPECT_EQ(m.store_commits_failed, 1u);
  EXPECT_EQ(m.store_rows_unrecorded, 2u);  // the schedule's row and its finished run
  ScheduleStatus st = StatusOf("github", "a", "issues");
  EXPECT_TRUE(st.unrecorded);
  EXPECT_EQ(st.runs, 1u);  // memory has it
  {
    std::lock_guard lock(events_mu);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_TRUE(events[0].IsUnavailable());
  }

  ASSERT_TRUE(engine->Trigger(T("github", "a")).ok());  // the next commit carries the outcome
  m = engine->GetMetrics();
  EXPECT_TRUE(m.store_healthy);
  EXPECT_EQ(m.store_rows_unrecorded, 0u);
  EXPECT_FALSE(StatusOf("github", "a", "issues").unrecorded);
  {
    std::lock_guard lock(events_mu);
    ASSERT_EQ(events.size(), 2u);
    EXPECT_TRUE(events[1].ok());
  }
  Settle();
  ASSERT_EQ(calls.size(), 2u);
  Finish(1);
  Reopen();
  st = StatusOf("github", "a", "issues");
  EXPECT_EQ(st.runs, 2u);  // the refused outcome, then the trigger's
  EXPECT_EQ(st.last_ok, std::optional<bool>(true));
  EXPECT_FALSE(st.unrecorded);
}

// The SQLite page cache is reported (EngineMetrics::store_cache_bytes, read after each commit)
// and stays near its bound (Options::database_cache_bytes) however many pages the commits touch;
// PostgreSQL has no cache of the engine's to report.
TEST_P(DurableEngine, ThePageCacheIsReportedAndStaysWithinItsBound) {
  for (std::uint64_t bound : {std::uint64_t{64} << 10, std::uint64_t{64} << 20}) {
    SCOPED_TRACE(bound);
    Options o;
    o.database_cache_bytes = bound;
    Reopen(o);
    DefineBoth();
    for (int i = 0; i < 400; ++i) {
      ASSERT_TRUE(
          engine->AddConnection("github", "c" + std::to_string(i) + "-" + std::to_string(bound))
              .ok());
    }
    std::uint64_t used = engine->GetMetrics().store_cache_bytes;
    if (postgres()) {
      EXPECT_EQ(used, 0u);
      continue;
    }
    EXPECT_GT(used, 0u);
    // 1,600 schedule rows take more than 64 KiB of pages: the small cache holds a few pages
    // (SQLite keeps at least ten) and no more; the large one holds every page touched.
    if (bound == (std::uint64_t{64} << 10)) {
      EXPECT_LE(used, 10u * (16u << 10) + (64u << 10)) << used;
    } else {
      EXPECT_LE(used, bound);
      EXPECT_GT(used, std::uint64_t{256} << 10) << "every page touched stays cached";
    }
  }
}

// Item 9: a schedule paused while waiting for a cap and queued again goes to the back.
TEST_P(DurableEngine, AWaitQueuedAgainGoesToTheBackOfTheQueue) {
  DefineOne("issues");
  ASSERT_TRUE(engine->SetIntegrationLimits("github", {.max_concurrency = 1}).ok());
  for (const char* c : {"a", "b", "c"}) ASSERT_TRUE(engine->AddConnection("github", c).ok());
  engine->ReleaseTimers();
  auto_complete = false;
  ASSERT_TRUE(engine->Start(T("github", "a")).ok());
  ASSERT_TRUE(engine->Start(T("github", "b")).ok());
  Run(1min);
  ASSERT_TRUE(engine->Start(T("github", "c")).ok());
  ASSERT_TRUE(engine->Pause(T("github", "b")).ok());
  ASSERT_TRUE(engine->Start(T("github", "b")).ok());  // waits again, behind c
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  Finish(0);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].ctx.key.connection, "c");
  Finish(1);
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[2].ctx.key.connection, "b");
}

// Run ids are idempotency keys: never reused, even when the clock reads an instant again after a
// restart (a trigger's suffix used to restart at 1).
TEST_P(DurableEngine, RunIdsAreNeverReusedAcrossRestartsAtTheSameInstant) {
  DefineOne("issues");
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  engine->ReleaseTimers();
  std::set<std::string> ids;
  for (int life = 0; life < 3; ++life) {
    ASSERT_TRUE(engine->Trigger(T("github", "a"), RunMode::kIncremental).ok());
    Settle();
    ASSERT_TRUE(engine->Start(T("github", "a")).ok());  // the immediate run
    Settle();
    ASSERT_TRUE(engine->Pause(T("github", "a")).ok());
    ASSERT_TRUE(engine->Start(T("github", "a")).ok());  // again, in the same millisecond
    Settle();
    ASSERT_TRUE(engine->Pause(T("github", "a")).ok());
    Reopen();  // the virtual clock has not moved
    engine->ReleaseTimers();
  }
  EXPECT_EQ(calls.size(), 9u);
  for (const Call& c : calls) EXPECT_TRUE(ids.insert(c.ctx.run_id).second) << c.ctx.run_id;
}

// Item 5: the heartbeat a callback keeps is safe to call after the engine is gone.
TEST(EngineLifetime, AHeartbeatAfterTheEngineIsDestroyedDoesNothing) {
  boost::asio::io_context io;
  Options o;  // the engine's own SystemClock: it dies with the engine
  o.executor = io.get_executor();
  o.run_executor = io.get_executor();
  auto engine = Engine::Open(o).value();
  std::function<void()> heartbeat;
  ASSERT_TRUE(engine
                  ->RegisterCallback("github", "issues",
                                     [&](const RunContext& ctx) {
                                       heartbeat = ctx.heartbeat;
                                       return RunReport::Success();
                                     })
                  .ok());
  SyncDefinition d;
  d.name = "issues";
  d.frequency = "every 1h";
  ASSERT_TRUE(engine->DefineSync("github", d).ok());
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  while (!heartbeat && io.run_one() > 0) {
  }
  ASSERT_TRUE(heartbeat);
  engine.reset();
  heartbeat();  // under ASan a use of the freed clock would abort here
  io.poll();
}

// Item 6: durations are bounded (the error names the field); retry backoff saturates.
TEST_P(DurableEngine, DurationsAreBoundedAndNamed) {
  SyncDefinition d;
  d.name = "issues";
  d.frequency = "every 1h";
  d.timeout = Millis::max();
  Status s = engine->DefineSync("github", d);
  EXPECT_TRUE(s.IsInvalidArgument());
  EXPECT_NE(s.message().find("timeout"), std::string::npos) << s;
  d.timeout.reset();
  d.heartbeat_timeout = Millis::max();
  s = engine->DefineSync("github", d);
  EXPECT_NE(s.message().find("heartbeat_timeout"), std::string::npos) << s;
  d.heartbeat_timeout.reset();
  d.retry.max = 3;
  d.retry.backoff = Millis::max();
  s = engine->DefineSync("github", d);
  EXPECT_NE(s.message().find("retry.backoff"), std::string::npos) << s;
  Options o;
  o.default_run_timeout = Millis::max();
  auto bad = Engine::Open(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("default_run_timeout"), std::string::npos);
  // The largest backoff accepted, at the 100th attempt: no overflow, the retry is dropped.
  d.retry.max = 100;
  d.retry.backoff = std::chrono::hours(24 * 366);
  d.frequency = "every 31d";
  ASSERT_TRUE(engine->DefineSync("github", d).ok()) << "a year's backoff is accepted";
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  engine->ReleaseTimers();
  auto_complete = false;
  ASSERT_TRUE(engine->Start(T("github", "a")).ok());
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  Finish(0, RunReport::Failure("503"));
  EXPECT_FALSE(StatusOf("github", "a", "issues").next_retry.has_value())
      << "a retry beyond the next slot is dropped";
}

// Found by the review of issue 9: a clock stepped back across a restart, then a pause and a start,
// re-anchored the grid onto slots already run, and their ids repeated.
TEST_P(DurableEngine, AClockSteppedBackDoesNotRerunSlotsUnderTheirIds) {
  DefineOne("issues");
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  engine->ReleaseTimers();
  const TimePoint start = clock.Now();
  ASSERT_TRUE(engine->Start(T("github", "a")).ok());
  Run(1h);  // the immediate run and the slot at +1h
  ASSERT_EQ(calls.size(), 2u);
  VirtualClock back(start);  // NTP or a VM restore: the clock reads an hour earlier
  Options o;
  o.clock = &back;
  Reopen(o);
  engine->ReleaseTimers();
  ASSERT_TRUE(engine->Pause(T("github", "a")).ok());
  ASSERT_TRUE(engine->Start(T("github", "a")).ok());
  back.RunFor(io, 2h);
  engine.reset();  // before `back`, which it reads
  std::set<std::string> ids;
  for (const Call& c : calls) EXPECT_TRUE(ids.insert(c.ctx.run_id).second) << c.ctx.run_id;
  EXPECT_GE(calls.size(), 3u);
}

// The backstop of grid slots (PostgreSQL, schema v4; docs/cluster.md "Each slot once"): when the
// database says a grid slot of a schedule was dispatched already (here written by hand, as another
// engine would have), the engine's dispatch of it is refused: its callback is not called, the
// other schedules of the same commit run, and the schedule's later slots run.
TEST_P(DurableEngine, AGridSlotTheDatabaseSaysWasDispatchedIsNotCalledAgain) {
  if (!postgres()) GTEST_SKIP() << "the backstop is the PostgreSQL store's";
  DefineOne("issues");
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  ASSERT_TRUE(engine->AddConnection("github", "b").ok());
  engine->ReleaseTimers();
  const TimePoint start = clock.Now();
  ASSERT_TRUE(engine->Start(T("github", "a")).ok());
  ASSERT_TRUE(engine->Start(T("github", "b")).ok());
  Run(1min);  // both immediate runs (off the grid)
  ASSERT_EQ(calls.size(), 2u);
  const std::uint64_t uid = StatusOf("github", "a", "issues").id;
  const std::int64_t taken = (start + 2h).time_since_epoch().count();
  ASSERT_TRUE(PgExec(path_, "UPDATE syncsched.schedules SET grid_slot_ms = " +
                                std::to_string(taken) + " WHERE uid = " + std::to_string(uid))
                  .ok());
  Run(3h);  // slots at +1h, +2h (refused for a) and +3h
  std::vector<TimePoint> a_at, b_at;
  for (const Call& c : calls) (c.ctx.key.connection == "a" ? a_at : b_at).push_back(c.at);
  EXPECT_EQ(a_at, (std::vector<TimePoint>{start, start + 3h}));
  EXPECT_EQ(b_at, (std::vector<TimePoint>{start, start + 1h, start + 2h, start + 3h}));
  // Both refusals are in a's history as cancelled runs that say why; none is retried.
  auto refused =
      PgQuery(path_, "SELECT count(DISTINCT run_id) FROM syncsched.history WHERE schedule_uid = " +
                         std::to_string(uid) +
                         " AND ok = 0 AND position('dispatched before' in "
                         "convert_from(error, 'UTF8')) > 0");
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_EQ(*refused, "2");
  EXPECT_EQ(StatusOf("github", "a", "issues").status, RunStatus::kSuccess);
  EXPECT_EQ(engine->GetMetrics().slots_refused, 2u);
  // A restart keeps the mark: nothing of a's past slots runs again, the grid goes on.
  calls.clear();
  Reopen();
  DefineOne("issues");
  engine->ReleaseTimers();
  Run(1h);
  ASSERT_EQ(calls.size(), 2u);
  for (const Call& c : calls) EXPECT_EQ(c.at, start + 4h) << c.ctx.key.connection;
}

TEST_P(DurableEngine, AClockAtTheEndOfItsRangeDoesNotOverflow) {
  VirtualClock far(TimePoint(Millis::max() - 1h));
  Options o;
  o.clock = &far;
  Reopen(o);
  SyncDefinition d;
  d.name = "issues";
  d.frequency = "every 31d";
  ASSERT_TRUE(engine->DefineSync("github", d).ok());
  engine->ReleaseTimers();
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());  // UBSan: no signed overflow
  Settle();
  EXPECT_EQ(calls.size(), 1u);
  engine.reset();  // before `far`, which it reads
}

TEST_P(DurableEngine, BadOptionsAndInputsAreNamed) {
  for (double rate : {-1.0, std::nan(""), HUGE_VAL}) {
    Options o;
    o.catch_up_per_second = rate;
    auto e = Engine::Open(o);
    ASSERT_FALSE(e.ok());
    EXPECT_NE(e.status().message().find("catch_up_per_second"), std::string::npos);
  }
  auto f = engine->Forecast(-5ms, std::nullopt);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("-5 ms"), std::string::npos) << f.status();
}

TEST_P(DurableEngine, ARunsErrorIsBoundedInMemoryAndOnDisk) {
  DefineOne("issues");
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  engine->ReleaseTimers();
  auto_complete = false;
  ASSERT_TRUE(engine->Trigger(T("github", "a"), RunMode::kIncremental).ok());
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  Finish(0, RunReport::Failure(std::string(100000, 'x')));
  EXPECT_LT(StatusOf("github", "a", "issues").last_error.size(), 4200u);
  Reopen();
  EXPECT_LT(StatusOf("github", "a", "issues").last_error.size(), 4200u);
}

// Options::hold_timers unset with a database: the timers are held until ReleaseTimers(), so a
// host that opens, then registers its callbacks loses no recovered run to "no callback
// registered". Commands still dispatch their runs meanwhile.
TEST_P(DurableEngine, TimersAreHeldByDefaultWithADatabase) {
  engine.reset();
  Options o;
  o.database_path = path_;
  o.clock = &clock;
  o.executor = io.get_executor();
  o.run_executor = io.get_executor();
  auto opened = Engine::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status();
  engine = std::move(opened).value();
  ASSERT_TRUE(engine->RegisterAsyncCallback("github", "issues", Recorder()).ok());
  DefineOne("issues");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme", {{"issues"}})).ok());
  Run(3h);
  EXPECT_EQ(calls.size(), 1u);  // the start's own run; no slot fired
  engine->ReleaseTimers();
  Run(1h);
  EXPECT_GE(calls.size(), 2u);  // the held slots collapse into one catch-up run, then the grid
  for (const Call& c : calls) EXPECT_TRUE(c.finished);
}

INSTANTIATE_TEST_SUITE_P(Stores, DurableEngine,
                         ::testing::Values(StoreKind::kSqlite, StoreKind::kPostgres),
                         [](const ::testing::TestParamInfo<StoreKind>& info) {
                           return info.param == StoreKind::kSqlite ? "SQLite" : "PostgreSQL";
                         });

}  // namespace
}  // namespace syncsched::testing
