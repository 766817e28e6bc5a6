// Scenario tests of SPEC §3-§5 in virtual time: a schedule's week runs in milliseconds.
#include <set>

#include "core/engine_test_util.h"

namespace syncsched::testing {
namespace {

class Scenario : public EngineHarness {};

SyncDefinition Def(std::string name, std::string frequency) {
  SyncDefinition d;
  d.name = std::move(name);
  d.frequency = std::move(frequency);
  d.auto_start = false;
  return d;
}

TEST_F(Scenario, StartRunsAtOnceThenEveryFrequencyOnTheAnchoredGrid) {
  Define("github", "issues", "every 1h");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  Run(10min);
  EXPECT_TRUE(calls.empty()) << "a paused schedule never runs";

  TimePoint anchor = clock.Now();
  auto r = engine->Start(T("github", "acme", {{"issues"}}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Count(Outcome::kStarted), 1u);
  ASSERT_EQ(r->outcomes.size(), 1u);
  EXPECT_EQ(r->outcomes[0].outcome, Outcome::kStarted);
  Settle();
  ASSERT_EQ(calls.size(), 1u) << "the start dispatches a run in the same turn";
  EXPECT_EQ(calls[0].at, anchor);
  EXPECT_EQ(calls[0].ctx.slot, anchor);

  Run(std::chrono::hours(24 * 7));
  ASSERT_EQ(calls.size(), 1u + 24 * 7);
  std::set<std::string> ids;
  for (std::size_t k = 0; k < calls.size(); ++k) {
    EXPECT_EQ(calls[k].ctx.slot, anchor + k * 1h) << k;
    EXPECT_EQ(calls[k].at, anchor + k * 1h) << "fired exactly on its slot, k=" << k;
    EXPECT_EQ(calls[k].ctx.mode, RunMode::kIncremental);
    EXPECT_EQ(calls[k].ctx.key.connection, "acme");
    ids.insert(calls[k].ctx.run_id);
  }
  EXPECT_EQ(ids.size(), calls.size()) << "run ids are unique per slot";
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.state, ScheduleState::kStarted);
  EXPECT_EQ(st.status, RunStatus::kSuccess);
  EXPECT_EQ(st.runs, calls.size());
  EXPECT_EQ(st.next_run, anchor + (24 * 7 + 1) * 1h);
  EXPECT_EQ(st.frequency, 1h);
}

TEST_F(Scenario, StartingAStartedScheduleChangesNothingNotEvenTheGrid) {
  Define("github", "issues", "every 1h");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  TimePoint anchor = clock.Now();
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  Run(25min);
  auto before = StatusOf("github", "acme", "issues");
  auto r = engine->Start(T("github", "acme"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Count(Outcome::kAlreadyStarted), 1u);
  EXPECT_EQ(r->Count(Outcome::kStarted), 0u);
  Settle();
  EXPECT_EQ(calls.size(), 1u) << "no run";
  auto after = StatusOf("github", "acme", "issues");
  EXPECT_EQ(before.next_run, after.next_run);
  Run(3h);
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[3].at, anchor + 3h);
}

TEST_F(Scenario, AddingAConnectionCreatesBaseSchedulesStartedWhenAutoStart) {
  Define("github", "issues", "every 30min", /*auto_start=*/true);
  Define("github", "prs", "every 1h", /*auto_start=*/false);
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].ctx.key.sync, "issues");
  EXPECT_EQ(StatusOf("github", "acme", "issues").state, ScheduleState::kStarted);
  EXPECT_EQ(StatusOf("github", "acme", "prs").state, ScheduleState::kPaused);
  EXPECT_EQ(StatusOf("github", "acme", "prs").status, RunStatus::kPaused);
  EXPECT_FALSE(StatusOf("github", "acme", "prs").next_run.has_value());
  Run(std::chrono::hours(24 * 7));
  for (const Call& c : calls) EXPECT_EQ(c.ctx.key.sync, "issues") << "prs never runs";
  EXPECT_EQ(calls.size(), 1u + 2 * 24 * 7);
}

TEST_F(Scenario, DefiningANewSyncCreatesItsScheduleOnExistingConnections) {
  Define("github", "issues", "every 1h");
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  ASSERT_TRUE(engine->AddConnection("github", "b").ok());
  Define("github", "prs", "every 1h", /*auto_start=*/true);
  Settle();
  EXPECT_EQ(calls.size(), 2u);
  EXPECT_EQ(StatusOf("github", "a", "prs").state, ScheduleState::kStarted);
  EXPECT_EQ(StatusOf("github", "b", "prs").state, ScheduleState::kStarted);
  // Defining it again with the same definition is a no-op.
  Define("github", "prs", "every 1h", /*auto_start=*/true);
  Settle();
  EXPECT_EQ(calls.size(), 2u);
}

TEST_F(Scenario, PauseDropsSlotsAndCancelsTheRunInFlightThroughItsToken) {
  auto_complete = false;
  Define("github", "issues", "every 1h");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  CancellationToken token = calls[0].ctx.cancel;
  bool on_cancel_called = false;
  token.OnCancel([&] { on_cancel_called = true; });
  EXPECT_FALSE(token.cancelled());

  auto r = engine->Pause(T("github", "acme", {{"issues"}}));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Count(Outcome::kPaused), 1u);
  EXPECT_TRUE(token.cancelled());
  EXPECT_TRUE(on_cancel_called);
  EXPECT_EQ(token.reason().code(), StatusCode::kCancelled);
  EXPECT_EQ(StatusOf("github", "acme", "issues").status, RunStatus::kRunning)
      << "RUNNING while the cancelled run has not returned";
  Finish(0);
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.state, ScheduleState::kPaused);
  EXPECT_EQ(st.status, RunStatus::kPaused);
  EXPECT_EQ(st.last_ok, false) << "a cancelled run is recorded as an error";
  EXPECT_FALSE(st.next_run.has_value());
  Run(std::chrono::hours(24 * 7));
  EXPECT_EQ(calls.size(), 1u) << "no slot after a pause";

  auto again = engine->Pause(T("github", "acme"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->Count(Outcome::kAlreadyPaused), 1u);
}

TEST_F(Scenario, RestartAfterPauseAnchorsANewGrid) {
  Define("github", "issues", "every 1h");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  Run(90min);
  ASSERT_TRUE(engine->Pause(T("github", "acme")).ok());
  Run(10min);
  TimePoint anchor = clock.Now();
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  Run(2h);
  ASSERT_EQ(calls.size(), 5u);
  EXPECT_EQ(calls[2].at, anchor);
  EXPECT_EQ(calls[3].at, anchor + 1h);
  EXPECT_EQ(calls[4].at, anchor + 2h);
}

TEST_F(Scenario, TriggerRunsAPausedScheduleOnceAndItStaysPaused) {
  Define("github", "issues", "every 1h");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  auto r = engine->Trigger(T("github", "acme"), RunMode::kIncremental);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Count(Outcome::kTriggered), 1u);
  Run(std::chrono::hours(24 * 7));
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].at, t0);
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.state, ScheduleState::kPaused);
  EXPECT_EQ(st.runs, 1u);
}

TEST_F(Scenario, TriggerDoesNotMoveTheGrid) {
  Define("github", "issues", "every 1h");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  Run(20min);
  ASSERT_TRUE(engine->Trigger(T("github", "acme"), RunMode::kIncremental).ok());
  Run(2h);
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[1].at, t0 + 20min);
  EXPECT_EQ(calls[2].at, t0 + 1h);
  EXPECT_EQ(calls[3].at, t0 + 2h);
  EXPECT_NE(calls[1].ctx.run_id, calls[0].ctx.run_id);
}

TEST_F(Scenario, IncrementalTriggerWhileRunningSaysAlreadyRunning) {
  auto_complete = false;
  Define("github", "issues", "every 1h");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  Settle();
  auto r = engine->Trigger(T("github", "acme"), RunMode::kIncremental);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Count(Outcome::kAlreadyRunning), 1u);
  Settle();
  EXPECT_EQ(calls.size(), 1u);
  EXPECT_FALSE(calls[0].ctx.cancel.cancelled());
}

TEST_F(Scenario, FullResyncPreemptsTheRunInFlight) {
  auto_complete = false;
  Define("github", "issues", "every 1h");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  Run(5min);
  auto r = engine->Trigger(T("github", "acme"), RunMode::kFullResync);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Count(Outcome::kTriggered), 1u);
  EXPECT_TRUE(calls[0].ctx.cancel.cancelled());
  Settle();
  EXPECT_EQ(calls.size(), 1u) << "never two runs of one schedule in flight";
  Finish(0);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].ctx.mode, RunMode::kFullResync);
  EXPECT_EQ(calls[1].at, t0 + 5min);
  Finish(1);
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kSuccess);
  EXPECT_EQ(st.runs, 2u);
  EXPECT_EQ(st.failures, 1u);
  EXPECT_EQ(st.next_run, t0 + 1h) << "the grid did not move";
}

TEST_F(Scenario, ALongRunSkipsSlotsAndNeverOverlaps) {
  auto_complete = false;
  Define("github", "issues", "every 1h");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  Run(3h + 30min);
  ASSERT_EQ(calls.size(), 1u) << "slots at 1h, 2h, 3h are skipped";
  EXPECT_EQ(StatusOf("github", "acme", "issues").skipped, 3u);
  Finish(0);
  EXPECT_EQ(calls.size(), 1u) << "no catch-up run after the long one";
  Run(30min);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].at, t0 + 4h) << "the next future slot";
  EXPECT_EQ(calls[1].ctx.slot, t0 + 4h);
}

TEST_F(Scenario, FrequencyChangeRegridsFromTheSameAnchor) {
  Define("github", "issues", "every 1h");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  Run(90min);
  ScheduleKey key{"github", "acme", "issues", "base"};
  auto f = engine->UpdateFrequency(key, "30m");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*f, 30min);
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.next_run, t0 + 2h) << "first slot of anchor + k*30min after now (1h30)";
  EXPECT_TRUE(st.frequency_overridden);
  Run(40min);  // now 2h10
  EXPECT_EQ(calls.back().at, t0 + 2h);
  f = engine->UpdateFrequency(key, "45m");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(StatusOf("github", "acme", "issues").next_run, t0 + 135min);
  // Revert to the sync's default.
  f = engine->UpdateFrequency(key, std::nullopt);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(*f, 1h);
  st = StatusOf("github", "acme", "issues");
  EXPECT_FALSE(st.frequency_overridden);
  EXPECT_EQ(st.next_run, t0 + 3h);
  // A bad frequency changes nothing.
  auto bad = engine->UpdateFrequency(key, "every 5 fortnights");
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(bad.status().IsInvalidArgument());
  EXPECT_NE(bad.status().message().find("every 5 fortnights"), std::string::npos);
  EXPECT_EQ(StatusOf("github", "acme", "issues").next_run, t0 + 3h);
}

TEST_F(Scenario, ChangedDefaultFrequencyAppliesToSchedulesWithoutOverride) {
  Define("github", "issues", "every 1h");
  ASSERT_TRUE(engine->AddConnection("github", "a").ok());
  ASSERT_TRUE(engine->AddConnection("github", "b").ok());
  ASSERT_TRUE(engine->CreateVariant({"github", "a", "issues", "v1"}).ok());
  ASSERT_TRUE(engine->Start(T("github", std::nullopt)).ok());
  ASSERT_TRUE(engine->UpdateFrequency({"github", "b", "issues", "base"}, "2h").ok());
  Run(10min);
  Define("github", "issues", "every 15m");
  EXPECT_EQ(StatusOf("github", "a", "issues").frequency, 15min);
  EXPECT_EQ(StatusOf("github", "a", "issues").next_run, t0 + 15min);
  EXPECT_EQ(StatusOf("github", "a", "issues", "v1").frequency, 15min);
  EXPECT_EQ(StatusOf("github", "b", "issues").frequency, 2h) << "the override stays";
}

TEST_F(Scenario, AnUnknownNameAnywhereFailsTheWholeCommandAndChangesNothing) {
  Define("github", "issues", "every 1h");
  Define("github", "prs", "every 1h");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  struct Case {
    Target target;
    std::string named;
    StatusCode code;
  };
  std::vector<Case> cases = {
      {T("github", "acme", {{"issues"}, {"nope"}}), "nope", StatusCode::kNotFound},
      {T("gitlab", "acme", {{"issues"}}), "gitlab", StatusCode::kNotFound},
      {T("github", "ghost", {{"issues"}}), "ghost", StatusCode::kNotFound},
      {T("github", "acme", {{"issues"}, {"prs", "v9"}}), "v9", StatusCode::kNotFound},
      {T("github", std::nullopt, {{"issues"}, {"nope"}}), "nope", StatusCode::kNotFound},
  };
  for (const Case& c : cases) {
    for (int cmd = 0; cmd < 4; ++cmd) {
      Result<CommandResult> r = cmd == 0   ? engine->Start(c.target)
                                : cmd == 1 ? engine->Pause(c.target)
                                : cmd == 2 ? engine->Trigger(c.target, RunMode::kIncremental)
                                           : engine->Trigger(c.target, RunMode::kFullResync);
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.status().code(), c.code);
      EXPECT_NE(r.status().message().find(c.named), std::string::npos) << r.status();
    }
    EXPECT_FALSE(engine->GetStatus(c.target).ok());
  }
  Run(std::chrono::hours(24));
  EXPECT_TRUE(calls.empty());
  EXPECT_EQ(StatusOf("github", "acme", "issues").state, ScheduleState::kPaused);
  EXPECT_EQ(StatusOf("github", "acme", "prs").state, ScheduleState::kPaused);
}

TEST_F(Scenario, CommandsWithoutAConnectionApplyToEveryConnection) {
  Define("github", "issues", "every 1h");
  Define("github", "prs", "every 1h");
  for (int i = 0; i < 50; ++i)
    ASSERT_TRUE(engine->AddConnection("github", "c" + std::to_string(i)).ok());
  auto r = engine->Start(T("github", std::nullopt, {{"issues"}}));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Count(Outcome::kStarted), 50u);
  Settle();
  EXPECT_EQ(calls.size(), 50u);
  r = engine->Start(T("github", std::nullopt));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Count(Outcome::kStarted), 50u);
  EXPECT_EQ(r->Count(Outcome::kAlreadyStarted), 50u);
  auto st = engine->GetStatus(T("github", std::nullopt));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->size(), 100u);
  for (std::size_t i = 1; i < st->size(); ++i) {
    EXPECT_LE((*st)[i - 1].key.connection, (*st)[i].key.connection);
  }
}

TEST_F(Scenario, VariantsAreSchedulesOfTheirOwn) {
  Define("github", "issues", "every 1h", /*auto_start=*/true);
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ScheduleKey v1{"github", "acme", "issues", "v1"};
  ASSERT_TRUE(engine->CreateVariant(v1).ok());
  Settle();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].ctx.key.variant, "v1");
  EXPECT_TRUE(engine->CreateVariant(v1).status().IsAlreadyExists());
  EXPECT_TRUE(
      engine->CreateVariant({"github", "acme", "issues", "base"}).status().IsInvalidArgument());
  EXPECT_TRUE(engine->DeleteVariant({"github", "acme", "issues", "base"}).IsInvalidArgument());
  EXPECT_TRUE(
      engine->CreateVariant({"github", "acme", "issues", "bad name"}).status().IsInvalidArgument());
  EXPECT_TRUE(engine->CreateVariant({"github", "acme", "nope", "v2"}).status().IsNotFound());
  EXPECT_TRUE(engine->CreateVariant({"github", "ghost", "issues", "v2"}).status().IsNotFound());

  auto r = engine->Pause(T("github", "acme", {{"issues", "v1"}}));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Count(Outcome::kPaused), 1u);
  EXPECT_EQ(StatusOf("github", "acme", "issues").state, ScheduleState::kStarted);
  std::uint64_t old_id = StatusOf("github", "acme", "issues", "v1").id;

  ASSERT_TRUE(engine->DeleteVariant(v1).ok());
  EXPECT_TRUE(engine->DeleteVariant(v1).IsNotFound());
  EXPECT_EQ(engine->Start(T("github", "acme", {{"issues", "v1"}})).status().code(),
            StatusCode::kNotFound);
  ASSERT_TRUE(engine->CreateVariant(v1).ok());
  EXPECT_NE(StatusOf("github", "acme", "issues", "v1").id, old_id) << "a recreated key is new";
}

TEST_F(Scenario, DeletingAConnectionCancelsItsRunAndTheIdCanBeAddedAgain) {
  auto_complete = false;
  Define("github", "issues", "every 1h", /*auto_start=*/true);
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  ASSERT_TRUE(engine->DeleteConnection("github", "acme").ok());
  EXPECT_TRUE(calls[0].ctx.cancel.cancelled());
  EXPECT_EQ(engine->GetStatus(T("github", "acme")).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(engine->DeleteConnection("github", "acme").IsNotFound());
  Finish(0);  // a late completion is ignored
  Run(std::chrono::hours(24));
  EXPECT_EQ(calls.size(), 1u);
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  Settle();
  EXPECT_EQ(calls.size(), 2u);
  EXPECT_EQ(StatusOf("github", "acme", "issues").runs, 0u) << "fresh schedule";
  EXPECT_TRUE(engine->AddConnection("github", "acme").IsAlreadyExists());
}

TEST_F(Scenario, CallbackErrorsAndExceptionsAreRecordedNotFatal) {
  ASSERT_TRUE(engine->DefineSync("github", Def("issues", "every 1h")).ok());
  int n = 0;
  ASSERT_TRUE(engine
                  ->RegisterCallback("github", "issues",
                                     [&](const RunContext&) -> RunReport {
                                       if (++n == 1) throw std::runtime_error("boom: rate limited");
                                       if (n == 2) return RunReport::Failure("token expired");
                                       return RunReport::Success({{"Issue", 3, 2, 1}});
                                     })
                  .ok());
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  Settle();
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kError);
  EXPECT_EQ(st.last_error, "boom: rate limited");
  Run(1h);
  st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.last_error, "token expired");
  EXPECT_EQ(st.failures, 2u);
  Run(1h);
  st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kSuccess);
  EXPECT_TRUE(st.last_error.empty());
  ASSERT_EQ(st.last_counts.size(), 1u);
  EXPECT_EQ(st.last_counts[0], (ModelCounts{"Issue", 3, 2, 1}));
  EXPECT_EQ(st.runs, 3u);
}

TEST_F(Scenario, ARunWithoutACallbackFailsWithAClearError) {
  ASSERT_TRUE(engine->DefineSync("github", Def("issues", "every 1h")).ok());
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Trigger(T("github", "acme")).ok());
  Settle();
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kPaused) << "a triggered paused schedule stays paused";
  EXPECT_EQ(st.last_ok, false);
  EXPECT_NE(st.last_error.find("no callback"), std::string::npos);
}

TEST_F(Scenario, ARunOutlivingItsTimeoutIsCancelledAndItsLateCompletionIgnored) {
  auto_complete = false;
  Define("github", "issues", "every 1h", false, /*timeout=*/90min);
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  Run(89min);
  EXPECT_FALSE(calls[0].ctx.cancel.cancelled());
  Run(1min);
  EXPECT_TRUE(calls[0].ctx.cancel.cancelled());
  EXPECT_EQ(calls[0].ctx.cancel.reason().code(), StatusCode::kDeadlineExceeded);
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kError);
  EXPECT_NE(st.last_error.find("timed out"), std::string::npos) << st.last_error;
  EXPECT_EQ(st.runs, 1u);
  Finish(0);  // late: ignored
  st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.runs, 1u);
  EXPECT_EQ(st.status, RunStatus::kError);
  Run(30min);
  ASSERT_EQ(calls.size(), 2u) << "the 2h slot runs";
  EXPECT_EQ(calls[1].at, t0 + 2h);
}

// The timed-out run's slot of the run table is reused by the schedule's next run: the old run's
// late answer must not end the new one.
TEST_F(Scenario, ALateAnswerAfterATimeoutDoesNotEndTheNextRun) {
  auto_complete = false;
  Define("github", "issues", "every 10min", false, /*timeout=*/5min);
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  Run(10min);  // the first run times out at 5 min; the second starts at 10
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_TRUE(calls[0].ctx.cancel.cancelled());
  Finish(0);  // the first run's late answer
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kRunning) << "the second run is still in flight";
  EXPECT_EQ(st.runs, 1u);
  EXPECT_EQ(engine->GetMetrics().runs_in_flight, 1u);
  EXPECT_FALSE(calls[1].ctx.cancel.cancelled());
  Run(4min);
  Finish(1);
  st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kSuccess);
  EXPECT_EQ(st.runs, 2u);
  EXPECT_EQ(engine->GetMetrics().runs_in_flight, 0u);
}

TEST_F(Scenario, AMissedHeartbeatFailsTheRun) {
  auto_complete = false;
  Define("github", "issues", "every 1d", false, std::nullopt, /*heartbeat=*/10min);
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  ASSERT_TRUE(engine->Start(T("github", "acme")).ok());
  for (int i = 0; i < 6; ++i) {
    Run(8min);
    calls[0].ctx.heartbeat();
  }
  EXPECT_FALSE(calls[0].ctx.cancel.cancelled()) << "48 minutes alive on heartbeats";
  Run(9min);
  EXPECT_FALSE(calls[0].ctx.cancel.cancelled());
  Run(1min);
  EXPECT_TRUE(calls[0].ctx.cancel.cancelled());
  EXPECT_NE(StatusOf("github", "acme", "issues").last_error.find("heartbeat"), std::string::npos);
}

TEST_F(Scenario, BadDefinitionsAndNamesAreRejectedNamingTheInput) {
  EXPECT_TRUE(engine->DefineSync("git hub!", Def("issues", "1h")).IsInvalidArgument());
  auto s = engine->DefineSync("github", Def("issues", "5s"));
  EXPECT_TRUE(s.IsInvalidArgument());
  EXPECT_NE(s.message().find("\"5s\""), std::string::npos) << s;
  EXPECT_TRUE(engine->DefineSync("github", Def("is sues", "1h")).IsInvalidArgument());
  EXPECT_TRUE(engine->AddConnection("github", "acme").IsNotFound()) << "no such integration";
  Define("github", "issues", "1h");
  EXPECT_TRUE(engine->AddConnection("github", std::string("a\nb")).IsInvalidArgument());
  EXPECT_TRUE(engine->AddConnection("github", std::string(256, 'x')).IsInvalidArgument());
  EXPECT_TRUE(engine->AddConnection("github", std::string(255, 'x')).ok());
  EXPECT_TRUE(
      engine->UpdateFrequency({"github", "nope", "issues", "base"}, "1h").status().IsNotFound());
}

TEST_F(Scenario, ErrorMessagesQuoteTheInputOnOneLine) {
  Define("github", "issues", "1h");
  auto r = engine->Start(T("github", std::string("ac\"me\n"), {{"issues"}}));
  ASSERT_FALSE(r.ok());
  // A connection id with a newline is malformed, not missing (it said NOT_FOUND before issue 10).
  EXPECT_TRUE(r.status().IsInvalidArgument()) << r.status();
  EXPECT_EQ(r.status().subject(), StatusSubject::kConnection);
  EXPECT_NE(r.status().message().find("\"ac\\\"me\\x0a\""), std::string::npos) << r.status();
  EXPECT_EQ(r.status().message().find('\n'), std::string::npos);
}

TEST(SyncSelectorTest, ParsesNamesAndVariants) {
  auto a = SyncSelector::Parse("issues");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->name, "issues");
  EXPECT_EQ(a->variant, "base");
  auto b = SyncSelector::Parse("issues::v-1");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->variant, "v-1");
  EXPECT_FALSE(SyncSelector::Parse("issues::").ok());
  EXPECT_FALSE(SyncSelector::Parse("::v").ok());
  EXPECT_FALSE(SyncSelector::Parse("a::b::c").ok());
  EXPECT_FALSE(SyncSelector::Parse("").ok());
}

TEST(SyncSelectorTest, ErrorsQuoteTheWholeText) {
  auto empty_name = SyncSelector::Parse("::v1");
  ASSERT_FALSE(empty_name.ok());
  EXPECT_TRUE(empty_name.status().IsInvalidArgument());
  EXPECT_EQ(empty_name.status().subject(), StatusSubject::kSync);
  EXPECT_NE(empty_name.status().message().find("\"::v1\""), std::string::npos)
      << empty_name.status();
  auto bad_variant = SyncSelector::Parse("issues::b c");
  ASSERT_FALSE(bad_variant.ok());
  EXPECT_EQ(bad_variant.status().subject(), StatusSubject::kVariant);
  EXPECT_NE(bad_variant.status().message().find("\"issues::b c\""), std::string::npos)
      << bad_variant.status();
}

// A malformed name is INVALID_ARGUMENT, with the name's part as subject, in every command;
// NOT_FOUND is only for a well-formed name that does not exist, with the first missing part.
TEST_F(Scenario, MalformedNamesAreInvalidInEveryCommandAndMissingOnesNotFound) {
  Define("github", "issues", "1h");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  const std::string nl("ac\nme");
  using S = StatusSubject;
  auto invalid = [](const Status& s, S subject) {
    EXPECT_TRUE(s.IsInvalidArgument()) << s;
    EXPECT_EQ(s.subject(), subject) << s;
  };
  auto missing = [](const Status& s, S subject) {
    EXPECT_TRUE(s.IsNotFound()) << s;
    EXPECT_EQ(s.subject(), subject) << s;
  };
  // The four target commands and status, with a malformed name in each part.
  std::vector<std::pair<Target, S>> bad = {
      {T("git hub!", "acme"), S::kIntegration},
      {T("github", nl), S::kConnection},
      {T("github", "acme", {{"bad sync!"}}), S::kSync},
      {T("github", "acme", {{"issues", "bad variant!"}}), S::kVariant},
      {T("github", std::nullopt, {{"issues", ""}}), S::kVariant},
  };
  for (const auto& [t, subject] : bad) {
    invalid(engine->Start(t).status(), subject);
    invalid(engine->Pause(t).status(), subject);
    invalid(engine->Trigger(t, RunMode::kIncremental).status(), subject);
    invalid(engine->Trigger(t, RunMode::kFullResync).status(), subject);
    invalid(engine->GetStatus(t).status(), subject);
  }
  // Key commands.
  std::vector<std::pair<ScheduleKey, S>> bad_keys = {
      {{"git hub!", "acme", "issues", "v1"}, S::kIntegration},
      {{"github", nl, "issues", "v1"}, S::kConnection},
      {{"github", "acme", "bad sync!", "v1"}, S::kSync},
      {{"github", "acme", "issues", "bad variant!"}, S::kVariant},
  };
  for (const auto& [k, subject] : bad_keys) {
    invalid(engine->UpdateFrequency(k, "2h").status(), subject);
    invalid(engine->UpdateFrequency(k, std::nullopt).status(), subject);
    invalid(engine->CreateVariant(k).status(), subject);
    invalid(engine->DeleteVariant(k), subject);
  }
  invalid(engine->AddConnection("git hub!", "x"), S::kIntegration);
  invalid(engine->AddConnection("github", nl), S::kConnection);
  invalid(engine->DeleteConnection("git hub!", "acme"), S::kIntegration);
  invalid(engine->DeleteConnection("github", nl), S::kConnection);
  invalid(engine->SetIntegrationLimits("git hub!", {}), S::kIntegration);
  invalid(engine->Forecast(std::chrono::hours(1), "git hub!").status(), S::kIntegration);
  invalid(engine->DefineSync("git hub!", Def("issues", "1h")), S::kIntegration);
  invalid(engine->DefineSync("github", Def("bad sync!", "1h")), S::kSync);
  auto freq = engine->UpdateFrequency({"github", "acme", "issues", "base"}, "every fortnight");
  invalid(freq.status(), S::kField);
  EXPECT_EQ(freq.status().field(), "frequency");
  auto horizon = engine->Forecast(std::chrono::hours(24 * 8));
  invalid(horizon.status(), S::kField);
  EXPECT_EQ(horizon.status().field(), "horizon");
  invalid(engine->CreateVariant({"github", "acme", "issues", "base"}).status(), S::kVariant);
  invalid(engine->DeleteVariant({"github", "acme", "issues", "base"}), S::kVariant);

  // Well formed but absent: NOT_FOUND naming the first missing part.
  missing(engine->Start(T("gitlab", "acme")).status(), S::kIntegration);
  missing(engine->Pause(T("github", "acme", {{"prs"}})).status(), S::kSync);
  missing(engine->Trigger(T("github", "ghost", {{"issues"}})).status(), S::kConnection);
  missing(engine->GetStatus(T("github", "acme", {{"issues", "v9"}})).status(), S::kVariant);
  missing(engine->GetStatus(T("github", std::nullopt, {{"issues", "v9"}})).status(), S::kVariant);
  // The sync is checked before the connection, the connection before the variant.
  missing(engine->Start(T("github", "ghost", {{"prs", "v9"}})).status(), S::kSync);
  missing(engine->Start(T("github", "ghost", {{"issues", "v9"}})).status(), S::kConnection);
  missing(engine->UpdateFrequency({"gitlab", "acme", "issues", "base"}, "2h").status(),
          S::kIntegration);
  missing(engine->UpdateFrequency({"github", "acme", "prs", "base"}, "2h").status(), S::kSync);
  missing(engine->UpdateFrequency({"github", "ghost", "issues", "base"}, "2h").status(),
          S::kConnection);
  missing(engine->UpdateFrequency({"github", "acme", "issues", "v9"}, "2h").status(), S::kVariant);
  missing(engine->CreateVariant({"github", "acme", "prs", "v1"}).status(), S::kSync);
  missing(engine->CreateVariant({"github", "ghost", "issues", "v1"}).status(), S::kConnection);
  missing(engine->DeleteVariant({"github", "acme", "issues", "v9"}), S::kVariant);
  missing(engine->DeleteConnection("github", "ghost"), S::kConnection);
  missing(engine->DeleteConnection("gitlab", "acme"), S::kIntegration);
  missing(engine->AddConnection("gitlab", "acme"), S::kIntegration);
  missing(engine->SetIntegrationLimits("gitlab", {}), S::kIntegration);
  missing(engine->Forecast(std::chrono::hours(1), "gitlab").status(), S::kIntegration);

  ASSERT_TRUE(engine->CreateVariant({"github", "acme", "issues", "v1"}).ok());
  Status twice = engine->CreateVariant({"github", "acme", "issues", "v1"}).status();
  EXPECT_TRUE(twice.IsAlreadyExists());
  EXPECT_EQ(twice.subject(), S::kVariant);
  Status again = engine->AddConnection("github", "acme");
  EXPECT_TRUE(again.IsAlreadyExists());
  EXPECT_EQ(again.subject(), S::kConnection);
}

TEST_F(Scenario, CreateVariantReturnsTheCreatedSchedule) {
  Define("github", "issues", "1h", /*auto_start=*/true);
  Define("github", "prs", "1h");
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  auto paused = engine->CreateVariant({"github", "acme", "prs", "v1"});
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_EQ(paused->state, ScheduleState::kPaused);
  auto created = engine->CreateVariant({"github", "acme", "issues", "v1"});
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->key, (ScheduleKey{"github", "acme", "issues", "v1"}));
  EXPECT_EQ(created->state, ScheduleState::kStarted);  // auto_start
  auto status = engine->GetStatus(T("github", "acme", {{"issues", "v1"}}));
  ASSERT_TRUE(status.ok());
  ASSERT_EQ(status->size(), 1u);
  EXPECT_EQ(created->id, status->front().id);
  EXPECT_NE(created->id, StatusOf("github", "acme", "issues").id);
}

TEST(FormatTimeTest, Iso8601Utc) {
  EXPECT_EQ(FormatTime(TimePoint(std::chrono::milliseconds(1767225600123))),
            "2026-01-01T00:00:00.123Z");
}

}  // namespace
}  // namespace syncsched::testing
