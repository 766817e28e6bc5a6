// Run policies in virtual time: concurrency caps, overlap, retries, phase spreading, catch-up
// rate, next-run hints, "why not" decisions and the forecast. Every outcome is exact: no sleeps,
// no timing tolerances (retry jitter is asserted as the range the contract allows).
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

#include "core/engine_test_util.h"

namespace syncsched::testing {
namespace {

class PolicyHarness : public EngineHarness {
 protected:
  // A sync definition with every policy at its default and auto_start off.
  static SyncDefinition Def(std::string name, std::string frequency) {
    SyncDefinition d;
    d.name = std::move(name);
    d.frequency = std::move(frequency);
    d.auto_start = false;
    return d;
  }

  // Defines a sync with policies, its recording callback registered first.
  void DefineP(const std::string& integration, const SyncDefinition& d) {
    ASSERT_TRUE(engine->RegisterAsyncCallback(integration, d.name, Recorder()).ok());
    Status s = engine->DefineSync(integration, d);
    ASSERT_TRUE(s.ok()) << s;
  }

  void Reopen(Options o) {
    engine.reset();
    Open(std::move(o));
  }

  void Add(const std::string& integration, const std::string& connection) {
    Status s = engine->AddConnection(integration, connection);
    ASSERT_TRUE(s.ok()) << s;
  }

  void StartOne(const std::string& integration, const std::string& connection) {
    auto r = engine->Start(T(integration, connection));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->Count(Outcome::kStarted), 1u);
    Settle();  // the run dispatched at once reaches its callback
  }

  static std::vector<Reason> Reasons(const ScheduleStatus& st) {
    std::vector<Reason> out;
    for (const Decision& d : st.decisions) out.push_back(d.reason);
    return out;
  }
  static bool Has(const ScheduleStatus& st, Reason r) {
    for (const Decision& d : st.decisions) {
      if (d.reason == r) return true;
    }
    return false;
  }

  static RunReport Hint(Millis next_run_in) {
    RunReport r = RunReport::Success();
    r.next_run_in = next_run_in;
    return r;
  }

  // Nonzero minutes of a forecast before `until` (the minute's start), checking that entries are
  // minute-aligned and ascending.
  static std::map<TimePoint, std::uint64_t> Nonzero(const std::vector<ForecastMinute>& f,
                                                    TimePoint until) {
    std::map<TimePoint, std::uint64_t> out;
    std::optional<TimePoint> prev;
    for (const ForecastMinute& m : f) {
      EXPECT_EQ(m.at, TimePoint(std::chrono::floor<std::chrono::minutes>(m.at)))
          << "minute-aligned: " << FormatTime(m.at);
      if (prev) {
        EXPECT_LT(*prev, m.at) << "ascending";
      }
      prev = m.at;
      if (m.runs != 0 && m.at < until) out[m.at] += m.runs;
    }
    return out;
  }
};

// ---------------------------------------------------------------------------------------------
// Concurrency caps

class PolicyCaps : public PolicyHarness {};

TEST_F(PolicyCaps, GlobalCapQueuesDueRunsBySlotTimeWithWaitInStatusAndMetrics) {
  Options o;
  o.max_concurrent_runs = 1;
  Reopen(o);
  auto_complete = false;
  Define("github", "issues", "every 1h");
  for (const char* c : {"a", "b", "c"}) Add("github", c);

  StartOne("github", "a");
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  Run(1min);
  StartOne("github", "c");  // due at t0+1min: waits
  Run(1min);
  StartOne("github", "b");  // due at t0+2min: waits behind c, though "b" < "c"
  Settle();
  ASSERT_EQ(calls.size(), 1u) << "the cap holds both";

  ScheduleStatus c = StatusOf("github", "c", "issues");
  EXPECT_EQ(c.waiting_since, t0 + 1min);
  ASSERT_FALSE(c.decisions.empty());
  EXPECT_EQ(c.decisions.back().reason, Reason::kWaitingForCap);
  EXPECT_EQ(c.decisions.back().at, t0 + 1min);
  EXPECT_EQ(StatusOf("github", "b", "issues").waiting_since, t0 + 2min);
  EXPECT_FALSE(StatusOf("github", "a", "issues").waiting_since.has_value());
  EngineMetrics m = engine->GetMetrics();
  EXPECT_EQ(m.runs_waiting, 2u);
  EXPECT_EQ(m.runs_in_flight, 1u);

  Run(3min);  // t0+5min
  Finish(0);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].ctx.key.connection, "c") << "earliest slot first";
  EXPECT_EQ(calls[1].at, t0 + 5min);
  EXPECT_EQ(calls[1].ctx.slot, t0 + 1min);
  EXPECT_FALSE(StatusOf("github", "c", "issues").waiting_since.has_value());
  m = engine->GetMetrics();
  EXPECT_EQ(m.runs_waiting, 1u);
  EXPECT_EQ(m.runs_in_flight, 1u);
  EXPECT_EQ(m.wait_seconds.sum, 240.0) << "c waited four minutes";

  Finish(1);
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[2].ctx.key.connection, "b");
  EXPECT_EQ(calls[2].at, t0 + 5min);
  EXPECT_EQ(calls[2].ctx.slot, t0 + 2min);
  m = engine->GetMetrics();
  EXPECT_EQ(m.runs_waiting, 0u);
  EXPECT_EQ(m.wait_seconds.sum, 420.0) << "plus b's three minutes";
}

TEST_F(PolicyCaps, AWaitingRunRunsOnceAndSlotsPassingMeanwhileAreSkipped) {
  Options o;
  o.max_concurrent_runs = 1;
  Reopen(o);
  auto_complete = false;
  Define("github", "issues", "every 1h");
  Add("github", "a");
  Add("github", "b");
  StartOne("github", "a");  // runs until t0+3h30
  Run(1min);
  StartOne("github", "b");  // waits from t0+1min
  Run(3h + 29min);
  ASSERT_EQ(calls.size(), 1u);
  ScheduleStatus b = StatusOf("github", "b", "issues");
  EXPECT_EQ(b.waiting_since, t0 + 1min) << "still the same wait";
  EXPECT_EQ(b.skipped, 3u) << "slots 1h01, 2h01, 3h01 passed while waiting";
  EXPECT_EQ(StatusOf("github", "a", "issues").skipped, 3u) << "a's own slots overlap its run";
  EXPECT_EQ(engine->GetMetrics().runs_waiting, 1u) << "skipped slots are not queued";

  Finish(0);  // t0+3h30
  ASSERT_EQ(calls.size(), 2u) << "the waiting run, once";
  EXPECT_EQ(calls[1].ctx.key.connection, "b");
  EXPECT_EQ(calls[1].at, t0 + 3h + 30min);
  EXPECT_EQ(calls[1].ctx.slot, t0 + 1min) << "the slot it waited for";
  EXPECT_EQ(calls[1].ctx.attempt, 1);
  b = StatusOf("github", "b", "issues");
  EXPECT_FALSE(b.waiting_since.has_value());
  EXPECT_EQ(b.next_run, t0 + 4h + 1min);
  auto_complete = true;
  Finish(1);
  Run(31min);
  ASSERT_EQ(calls.size(), 4u) << "both back on their grids";
  EXPECT_EQ(calls[2].ctx.key.connection, "a");
  EXPECT_EQ(calls[2].at, t0 + 4h);
  EXPECT_EQ(calls[3].ctx.key.connection, "b");
  EXPECT_EQ(calls[3].at, t0 + 4h + 1min);
  EXPECT_EQ(engine->GetMetrics().runs_waiting, 0u);
}

TEST_F(PolicyCaps, PerIntegrationLimitCapsOnlyThatIntegration) {
  auto_complete = false;
  Define("github", "issues", "every 1h");
  Define("gitlab", "issues", "every 1h");
  IntegrationLimits lim;
  lim.max_concurrency = 1;
  ASSERT_TRUE(engine->SetIntegrationLimits("github", lim).ok());
  EXPECT_TRUE(engine->SetIntegrationLimits("nope", lim).IsNotFound());
  for (const char* c : {"a", "b", "c"}) Add("github", c);
  for (const char* c : {"x", "y", "z"}) Add("gitlab", c);
  ASSERT_TRUE(engine->Start(T("github", std::nullopt)).ok());
  ASSERT_TRUE(engine->Start(T("gitlab", std::nullopt)).ok());
  Settle();
  std::size_t github = 0, gitlab = 0;
  for (const Call& c : calls) (c.ctx.key.integration == "github" ? github : gitlab)++;
  EXPECT_EQ(github, 1u);
  EXPECT_EQ(gitlab, 3u) << "gitlab is not capped";
  auto st = engine->GetStatus(T("github", std::nullopt));
  ASSERT_TRUE(st.ok());
  std::size_t waiting = 0;
  for (const ScheduleStatus& s : *st) {
    if (s.waiting_since) {
      ++waiting;
      EXPECT_EQ(*s.waiting_since, t0);
      EXPECT_TRUE(Has(s, Reason::kWaitingForCap));
    }
  }
  EXPECT_EQ(waiting, 2u);
  EXPECT_EQ(engine->GetMetrics().runs_waiting, 2u);

  Run(10min);
  for (std::size_t i = 0; i < calls.size(); ++i) {
    if (calls[i].ctx.key.integration == "github" && !calls[i].finished) {
      Finish(i);
      break;
    }
  }
  ASSERT_EQ(calls.size(), 5u) << "one github run follows the finished one";
  EXPECT_EQ(calls[4].ctx.key.integration, "github");
  EXPECT_EQ(calls[4].at, t0 + 10min);
  EXPECT_EQ(calls[4].ctx.slot, t0);
  EXPECT_EQ(engine->GetMetrics().runs_waiting, 1u);
}

TEST_F(PolicyCaps, TheQueueIsFairAcrossIntegrations) {
  Options o;
  o.max_concurrent_runs = 1;
  Reopen(o);
  auto_complete = false;
  Define("other", "blocker", "every 1d");
  Define("github", "issues", "every 1d");
  Define("gitlab", "issues", "every 1d");
  Add("other", "z");
  for (const char* c : {"a", "b", "c", "d"}) Add("github", c);
  Add("gitlab", "x");
  StartOne("other", "z");
  // Five runs due at the same instant, github's queued first.
  ASSERT_TRUE(engine->Start(T("github", std::nullopt)).ok());
  ASSERT_TRUE(engine->Start(T("gitlab", std::nullopt)).ok());
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(engine->GetMetrics().runs_waiting, 5u);
  for (std::size_t i = 0; i < 5; ++i) {
    Finish(i);
    ASSERT_EQ(calls.size(), i + 2);
  }
  std::vector<std::string> order;
  for (std::size_t i = 1; i < calls.size(); ++i) order.push_back(calls[i].ctx.key.integration);
  auto pos = std::find(order.begin(), order.end(), "gitlab") - order.begin();
  EXPECT_LE(pos, 1) << "gitlab's run does not wait behind all four of github's";
  EXPECT_EQ(std::count(order.begin(), order.end(), "github"), 4);
}

// ---------------------------------------------------------------------------------------------
// Overlap

class PolicyOverlap : public PolicyHarness {};

TEST_F(PolicyOverlap, SkipIsTheDefaultAndSkippedSlotsAreCountedAndExplained) {
  EXPECT_EQ(SyncDefinition().overlap, OverlapPolicy::kSkip);
  auto_complete = false;
  Define("github", "issues", "every 1h");
  Add("github", "acme");
  StartOne("github", "acme");
  Run(2h + 30min);
  Finish(0);
  ASSERT_EQ(calls.size(), 1u) << "no run after a long one";
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.skipped, 2u);
  EXPECT_EQ(st.next_run, t0 + 3h);
  EXPECT_TRUE(Has(st, Reason::kSkippedOverlap));
  EXPECT_FALSE(Has(st, Reason::kBufferedOverlap));
  Run(30min);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].at, t0 + 3h);
}

TEST_F(PolicyOverlap, BufferOneRunsOnceRightAfterARunThatOverlappedSlots) {
  auto_complete = false;
  SyncDefinition d = Def("issues", "every 1h");
  d.overlap = OverlapPolicy::kBufferOne;
  DefineP("github", d);
  Add("github", "acme");
  StartOne("github", "acme");
  Run(2h + 30min);  // slots 1h and 2h pass during the run
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_TRUE(Has(StatusOf("github", "acme", "issues"), Reason::kBufferedOverlap));
  Finish(0);
  ASSERT_EQ(calls.size(), 2u) << "one buffered run, not two";
  EXPECT_EQ(calls[1].at, t0 + 2h + 30min) << "right after the run ends";
  EXPECT_NE(calls[1].ctx.run_id, calls[0].ctx.run_id);
  Finish(1);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(StatusOf("github", "acme", "issues").next_run, t0 + 3h) << "the grid resumes";
  Run(30min);
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[2].at, t0 + 3h);
  Run(30min);
  Finish(2);  // no slot passed during this run: nothing buffered
  ASSERT_EQ(calls.size(), 3u);
  Run(30min);
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[3].at, t0 + 4h);
}

// ---------------------------------------------------------------------------------------------
// Retries

class PolicyRetry : public PolicyHarness {
 protected:
  void SetUp() override {
    Options o;
    o.random_seed = 42;
    Open(o);
  }
  // github/acme's "issues" every `frequency`, retried up to `max` times after `backoff`, paused
  // (auto_start off); its runs end only when the test finishes them.
  void DefineRetried(const std::string& frequency, int max, Millis backoff) {
    auto_complete = false;
    SyncDefinition d = Def("issues", frequency);
    d.retry.max = max;
    d.retry.backoff = backoff;
    DefineP("github", d);
    Add("github", "acme");
  }
};

TEST_F(PolicyRetry, FailedRunRetriesWithDoublingBackoffJitterSameRunIdAndAttempts) {
  DefineRetried("every 1d", 3, 1min);
  StartOne("github", "acme");
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].ctx.attempt, 1);

  for (int k = 1; k <= 3; ++k) {
    SCOPED_TRACE("retry " + std::to_string(k));
    const TimePoint finish = clock.Now();
    Finish(k - 1, RunReport::Failure("boom"));
    ScheduleStatus st = StatusOf("github", "acme", "issues");
    ASSERT_TRUE(st.next_retry.has_value());
    const Millis base = 1min * (1 << (k - 1));
    EXPECT_GE(*st.next_retry, finish + base);
    EXPECT_LE(*st.next_retry, finish + base * 6 / 5);
    ASSERT_FALSE(st.decisions.empty());
    EXPECT_EQ(st.decisions.back().reason, Reason::kRetryBackoff);
    EXPECT_EQ(st.next_run, t0 + 24h) << "the grid does not move";
    ASSERT_EQ(calls.size(), static_cast<std::size_t>(k));
    Run(base * 6 / 5);
    ASSERT_EQ(calls.size(), static_cast<std::size_t>(k + 1));
    const Call& retry = calls[k];
    EXPECT_EQ(retry.at, *st.next_retry);
    EXPECT_GE(retry.at, finish + base);
    EXPECT_LE(retry.at, finish + base * 6 / 5);
    EXPECT_EQ(retry.ctx.attempt, k + 1);
    EXPECT_EQ(retry.ctx.run_id, calls[0].ctx.run_id);
    EXPECT_EQ(retry.ctx.slot, calls[0].ctx.slot);
  }
  Finish(3, RunReport::Failure("boom"));  // the fourth attempt: no retries left
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_FALSE(st.next_retry.has_value());
  EXPECT_EQ(st.last_ok, false);
  EXPECT_EQ(engine->GetMetrics().retries, 3u);
  Run(1h);
  EXPECT_EQ(calls.size(), 4u);
}

TEST_F(PolicyRetry, ASuccessfulRetryEndsTheRetries) {
  DefineRetried("every 1d", 3, 1min);
  StartOne("github", "acme");
  Finish(0, RunReport::Failure("boom"));
  Run(72s);
  ASSERT_EQ(calls.size(), 2u);
  Finish(1);
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_FALSE(st.next_retry.has_value());
  EXPECT_EQ(st.last_ok, true);
  Run(1h);
  EXPECT_EQ(calls.size(), 2u);
  EXPECT_EQ(engine->GetMetrics().retries, 1u);
}

TEST_F(PolicyRetry, NoRetriesByDefault) {
  EXPECT_EQ(SyncDefinition().retry.max, 0);
  auto_complete = false;
  Define("github", "issues", "every 1d");
  Add("github", "acme");
  StartOne("github", "acme");
  Finish(0, RunReport::Failure("boom"));
  EXPECT_FALSE(StatusOf("github", "acme", "issues").next_retry.has_value());
  Run(1h);
  EXPECT_EQ(calls.size(), 1u);
  EXPECT_EQ(engine->GetMetrics().retries, 0u);
}

TEST_F(PolicyRetry, ARetryThatWouldReachTheNextSlotIsDroppedAndTheSlotWins) {
  DefineRetried("every 10min", 2, 5min);
  StartOne("github", "acme");
  Run(6min);
  Finish(0, RunReport::Failure("boom"));  // a retry would be due at 11..12 min, after the slot
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_FALSE(st.next_retry.has_value());
  ASSERT_FALSE(st.decisions.empty());
  EXPECT_EQ(st.decisions.back().reason, Reason::kRetryDropped);
  EXPECT_EQ(st.decisions.back().at, t0 + 6min);
  EXPECT_EQ(st.next_run, t0 + 10min);
  Run(4min);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].at, t0 + 10min);
  EXPECT_EQ(calls[1].ctx.attempt, 1) << "the slot's own first attempt";
  EXPECT_NE(calls[1].ctx.run_id, calls[0].ctx.run_id);
  EXPECT_EQ(engine->GetMetrics().retries, 0u);
}

// Starting a schedule runs it at once, and that run stands for a retry still pending from a run
// before (as a triggered run does): the retry is dropped, and a failure of the start's run
// arms its own. Found by syncsched_sim seed 2346: a retry armed while the schedule was paused
// survived its start, and was still armed after the start's run failed with its own retry
// dropped (it would have reached the next slot), so an older slot was retried after a newer run.
TEST_F(PolicyRetry, TheStartsRunStandsForAPendingRetry) {
  DefineRetried("every 1h", 2, 40min);  // paused
  ASSERT_TRUE(engine->Trigger(T("github", "acme")).ok());
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  Finish(0, RunReport::Failure("boom"));  // paused: its retry is armed, at 40..48 min
  ASSERT_TRUE(StatusOf("github", "acme", "issues").next_retry.has_value());
  Run(10min);
  StartOne("github", "acme");
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].at, t0 + 10min);
  EXPECT_FALSE(StatusOf("github", "acme", "issues").next_retry.has_value())
      << "the start's run stands for the pending retry";
  Finish(1, RunReport::Failure("boom"));  // its own retry: at 50..58 min, before the slot at 70
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  ASSERT_TRUE(st.next_retry.has_value());
  EXPECT_GE(*st.next_retry, t0 + 50min);
  EXPECT_LE(*st.next_retry, t0 + 58min);
  Run(48min);
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[2].at, *st.next_retry);
  EXPECT_EQ(calls[2].ctx.run_id, calls[1].ctx.run_id) << "the newest failed run is retried";
  EXPECT_EQ(calls[2].ctx.attempt, 2);
  EXPECT_EQ(engine->GetMetrics().retries, 1u);
}

TEST_F(PolicyRetry, CancelledAndTimedOutRunsAreNotRetried) {
  auto_complete = false;
  SyncDefinition d = Def("issues", "every 1d");
  d.retry.max = 3;
  d.retry.backoff = 1min;
  d.timeout = 5min;
  DefineP("github", d);
  Add("github", "timeout");
  Add("github", "resync");
  StartOne("github", "timeout");
  StartOne("github", "resync");
  Settle();
  ASSERT_EQ(calls.size(), 2u);
  ASSERT_EQ(calls[1].ctx.key.connection, "resync");
  // A full resync pre-empts (cancels) the resync connection's run.
  ASSERT_TRUE(engine->Trigger(T("github", "resync"), RunMode::kFullResync).ok());
  EXPECT_TRUE(calls[1].ctx.cancel.cancelled());
  Finish(1, RunReport::Failure("cancelled"));
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[2].ctx.mode, RunMode::kFullResync);
  EXPECT_EQ(calls[2].ctx.attempt, 1);
  EXPECT_FALSE(StatusOf("github", "resync", "issues").next_retry.has_value());
  Finish(2);

  Run(5min);  // the timeout connection's run times out
  EXPECT_EQ(calls[0].ctx.cancel.reason().code(), StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(StatusOf("github", "timeout", "issues").next_retry.has_value());
  Run(1h);
  EXPECT_EQ(calls.size(), 3u) << "no retry of either";
  EXPECT_EQ(engine->GetMetrics().retries, 0u);
}

// ---------------------------------------------------------------------------------------------
// Phase spreading

class PolicySpread : public PolicyHarness {
 protected:
  // Defines `syncs` spread (or not) syncs every `period` on `connections` connections, starts them
  // all in one command, and counts the runs per second in the second period.
  std::vector<std::uint32_t> RunsPerSecondOfSecondPeriod(int connections, int syncs, bool spread,
                                                         std::chrono::seconds period,
                                                         std::uint64_t& in_window) {
    const std::string freq = "every " + std::to_string(period.count()) + "s";
    const TimePoint from = t0 + period, to = t0 + 2 * period;
    buckets_.assign(static_cast<std::size_t>(period.count()), 0);
    in_window_ = 0;
    for (int s = 0; s < syncs; ++s) {
      SyncDefinition d = Def("s" + std::to_string(s), freq);
      d.spread = spread;
      EXPECT_TRUE(
          engine
              ->RegisterAsyncCallback("github", d.name,
                                      [this, from, to](const RunContext&, RunDone done) {
                                        TimePoint now = clock.Now();
                                        if (now >= from && now < to) {
                                          ++buckets_[static_cast<std::size_t>((now - from) / 1s)];
                                          ++in_window_;
                                        }
                                        done(RunReport::Success());
                                      })
              .ok());
      EXPECT_TRUE(engine->DefineSync("github", d).ok());
    }
    for (int c = 0; c < connections; ++c) {
      EXPECT_TRUE(engine->AddConnection("github", "c" + std::to_string(c)).ok());
    }
    Target all = T("github", std::nullopt);
    all.report_keys = false;
    auto r = engine->Start(all);
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) {
      EXPECT_EQ(r->Count(Outcome::kStarted), std::size_t(connections) * syncs);
    }
    Run(2 * period);
    in_window = in_window_;
    return buckets_;
  }
  std::vector<std::uint32_t> buckets_;
  std::uint64_t in_window_ = 0;
};

TEST_F(PolicySpread, APhaseIsAStablePerKeyHashAndTheFirstScheduledRunWaitsHalfAPeriod) {
  SyncDefinition d = Def("issues", "every 1h");
  d.spread = true;
  DefineP("github", d);
  Add("github", "acme");
  StartOne("github", "acme");
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].at, t0) << "the first run is immediate";
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  ASSERT_TRUE(st.next_run.has_value());
  const TimePoint n1 = *st.next_run;
  EXPECT_GE(n1, t0 + 30min);
  EXPECT_LT(n1, t0 + 90min);

  Run(4h);
  std::vector<TimePoint> expected;
  for (TimePoint t = n1; t <= t0 + 4h; t += 1h) expected.push_back(t);
  ASSERT_EQ(calls.size(), 1 + expected.size());
  for (std::size_t k = 0; k < expected.size(); ++k) {
    EXPECT_EQ(calls[k + 1].at, expected[k]) << k;
  }

  // Restarted later: the same phase.
  ASSERT_TRUE(engine->Pause(T("github", "acme")).ok());
  Run(17min);
  const TimePoint restart = clock.Now();
  StartOne("github", "acme");
  st = StatusOf("github", "acme", "issues");
  ASSERT_TRUE(st.next_run.has_value());
  EXPECT_EQ((*st.next_run - n1) % 1h, 0ms) << "the phase is the key's";
  EXPECT_GE(*st.next_run, restart + 30min);
  EXPECT_LT(*st.next_run, restart + 90min);

  // Another engine (a restart of the process), the same key: the same phase.
  Reopen({});
  DefineP("github", d);
  Add("github", "acme");
  Run(3min);
  StartOne("github", "acme");
  st = StatusOf("github", "acme", "issues");
  ASSERT_TRUE(st.next_run.has_value());
  EXPECT_EQ((*st.next_run - n1) % 1h, 0ms);
}

TEST_F(PolicySpread, EveryScheduleWaitsAtLeastHalfAPeriodAndPhasesCoverThePeriod) {
  SyncDefinition d = Def("issues", "every 1h");
  d.spread = true;
  DefineP("github", d);
  for (int c = 0; c < 1000; ++c) Add("github", "c" + std::to_string(c));
  Target all = T("github", std::nullopt);
  all.report_keys = false;
  ASSERT_TRUE(engine->Start(all).ok());
  Settle();
  EXPECT_EQ(calls.size(), 1000u) << "each runs at once";
  auto st = engine->GetStatus(T("github", std::nullopt));
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(st->size(), 1000u);
  std::array<int, 6> tens{};  // next runs per ten minutes of [t0+30min, t0+90min)
  for (const ScheduleStatus& s : *st) {
    ASSERT_TRUE(s.next_run.has_value());
    ASSERT_GE(*s.next_run, t0 + 30min) << ToString(s.key);
    ASSERT_LT(*s.next_run, t0 + 90min) << ToString(s.key);
    ++tens[static_cast<std::size_t>((*s.next_run - (t0 + 30min)) / 10min)];
  }
  for (int n : tens) EXPECT_LE(n * 6, 2 * 1000) << "no ten minutes hold twice the mean";
}

TEST_F(PolicySpread, HundredThousandSchedulesStartedTogetherSpreadEvenlyAfterTheFirstPeriod) {
  std::uint64_t n = 0;
  auto buckets = RunsPerSecondOfSecondPeriod(10000, 10, /*spread=*/true, 1800s, n);
  ASSERT_EQ(n, 100000u) << "each schedule runs once per period";
  const std::uint32_t max = *std::max_element(buckets.begin(), buckets.end());
  // mean = 100000 / 1800 runs per second
  EXPECT_LE(std::uint64_t(max) * 1800, 2u * 100000u) << "max per second " << max;
}

TEST_F(PolicySpread, WithoutSpreadTheSameStartPutsAPeriodsRunsInOneSecond) {
  std::uint64_t n = 0;
  auto buckets = RunsPerSecondOfSecondPeriod(10000, 10, /*spread=*/false, 1800s, n);
  ASSERT_EQ(n, 100000u);
  EXPECT_EQ(buckets[0], 100000u) << "the herd: all at t0 + 1 period";
}

// ---------------------------------------------------------------------------------------------
// Catch-up rate

class PolicyCatchUp : public PolicyHarness {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/syncsched-policy-XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/state.db";
    Options o;
    o.database_path = path_;
    o.hold_timers = false;  // timers fire from the start (the default holds them with a database)
    Open(o);
  }
  void TearDown() override {
    engine.reset();
    std::filesystem::remove_all(dir_);
  }
  std::string dir_, path_;
};

TEST_F(PolicyCatchUp, CatchUpRunsAreReleasedAtTheRateInDueOrder) {
  DefineP("github", Def("issues", "every 1h"));
  char name[8];
  for (int i = 0; i < 20; ++i) {
    std::snprintf(name, sizeof name, "c%02d", i);
    Add("github", name);
    StartOne("github", name);  // anchored at t0 + i min
    Run(1min);
  }
  ASSERT_EQ(calls.size(), 20u);
  const TimePoint start = t0;
  engine.reset();
  clock.AdvanceTo(clock.Now() + 5h);  // down for five hours

  calls.clear();
  Options o;
  o.database_path = path_;
  o.hold_timers = true;
  o.catch_up_per_second = 4;
  Reopen(o);
  DefineP("github", Def("issues", "every 1h"));
  engine->ReleaseTimers();
  const TimePoint released = clock.Now();
  Settle();
  EXPECT_LE(calls.size(), 4u) << "no more than the rate at once";
  ScheduleStatus last = StatusOf("github", "c19", "issues");
  EXPECT_TRUE(Has(last, Reason::kCatchUpRate)) << "the last one is held back by the rate";

  Run(10s);
  ASSERT_EQ(calls.size(), 20u) << "one catch-up run per schedule";
  std::array<int, 10> per_second{};
  for (std::size_t i = 0; i < calls.size(); ++i) {
    std::snprintf(name, sizeof name, "c%02d", static_cast<int>(i));
    EXPECT_EQ(calls[i].ctx.key.connection, name) << "in due order";
    EXPECT_EQ(calls[i].ctx.slot, start + 5h + i * 1min) << "the latest missed slot";
    ASSERT_GE(calls[i].at, released);
    ASSERT_LT(calls[i].at, released + 5s) << "the rate is used: 20 runs in five seconds";
    ++per_second[static_cast<std::size_t>((calls[i].at - released) / 1s)];
  }
  for (int s = 0; s < 5; ++s) EXPECT_EQ(per_second[s], 4) << "second " << s;
}

// ---------------------------------------------------------------------------------------------
// Next-run hint

class PolicyHint : public PolicyHarness {};

TEST_F(PolicyHint, ALaterHintMovesTheNextRunThenTheGridResumes) {
  auto_complete = false;
  Define("github", "issues", "every 1h");
  Add("github", "acme");
  StartOne("github", "acme");
  Run(5min);
  Finish(0, Hint(90min));  // rate-limited: come back in 1h30
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.next_run, t0 + 95min);
  ASSERT_FALSE(st.decisions.empty());
  EXPECT_EQ(st.decisions.back().reason, Reason::kHint);
  EXPECT_EQ(st.decisions.back().at, t0 + 5min);
  auto_complete = true;
  Run(2h);  // to t0+2h05
  ASSERT_EQ(calls.size(), 3u) << "the 1h slot gave way to the hint";
  EXPECT_EQ(calls[1].at, t0 + 95min);
  EXPECT_EQ(calls[2].at, t0 + 2h) << "the grid resumes";
  EXPECT_EQ(StatusOf("github", "acme", "issues").next_run, t0 + 3h);
}

TEST_F(PolicyHint, ASoonerHintRunsEarlyThenTheGridResumes) {
  auto_complete = false;
  Define("github", "issues", "every 1h");
  Add("github", "acme");
  StartOne("github", "acme");
  Finish(0, Hint(10min));
  EXPECT_EQ(StatusOf("github", "acme", "issues").next_run, t0 + 10min);
  auto_complete = true;
  Run(1h);
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[1].at, t0 + 10min);
  EXPECT_EQ(calls[2].at, t0 + 1h);
}

TEST_F(PolicyHint, TheHintIsClampedToTheFrequencyBounds) {
  auto_complete = false;
  Define("github", "issues", "every 1h");
  Add("github", "acme");
  StartOne("github", "acme");
  Finish(0, Hint(1s));
  EXPECT_EQ(StatusOf("github", "acme", "issues").next_run, t0 + 30s) << "the 30 s minimum";
  Run(30s);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].at, t0 + 30s);
  Finish(1, Hint(std::chrono::hours(24 * 40)));
  EXPECT_EQ(StatusOf("github", "acme", "issues").next_run, t0 + 30s + std::chrono::hours(24 * 31))
      << "the 31 d maximum";
}

TEST_F(PolicyHint, APausedScheduleIgnoresTheHint) {
  auto_complete = false;
  Define("github", "issues", "every 1h");
  Add("github", "acme");
  ASSERT_TRUE(engine->Trigger(T("github", "acme")).ok());
  Settle();
  ASSERT_EQ(calls.size(), 1u);
  Finish(0, Hint(10min));
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.state, ScheduleState::kPaused);
  EXPECT_FALSE(st.next_run.has_value());
  Run(std::chrono::hours(24));
  EXPECT_EQ(calls.size(), 1u);
}

// ---------------------------------------------------------------------------------------------
// Why not

class PolicyWhyNot : public PolicyHarness {
 protected:
  // A failure with a retry (kRetryBackoff), the retry's success with a hint (kHint), a pause
  // (kPaused). Returns the times of the three decisions.
  std::array<TimePoint, 3> ThreeDecisions() {
    auto_complete = false;
    SyncDefinition d = Def("issues", "every 1d");
    d.retry.max = 1;
    d.retry.backoff = 1min;
    DefineP("github", d);
    Add("github", "acme");
    StartOne("github", "acme");
    const TimePoint failed = clock.Now();
    Finish(0, RunReport::Failure("boom"));
    Run(72s);
    EXPECT_EQ(calls.size(), 2u);
    Run(1s);
    const TimePoint hinted = clock.Now();
    if (calls.size() == 2) Finish(1, Hint(2h));
    Run(1min);
    const TimePoint paused = clock.Now();
    EXPECT_TRUE(engine->Pause(T("github", "acme")).ok());
    return {failed, hinted, paused};
  }
};

TEST_F(PolicyWhyNot, DecisionsCarryReasonCodesOldestFirst) {
  auto at = ThreeDecisions();
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  ASSERT_EQ(Reasons(st),
            (std::vector<Reason>{Reason::kRetryBackoff, Reason::kHint, Reason::kPaused}));
  EXPECT_EQ(st.decisions[0].at, at[0]);
  EXPECT_EQ(st.decisions[1].at, at[1]);
  EXPECT_EQ(st.decisions[2].at, at[2]);
  EXPECT_EQ(ToString(Reason::kRetryBackoff), "retry_backoff");
  EXPECT_EQ(ToString(Reason::kPaused), "paused");
}

TEST_F(PolicyWhyNot, DecisionsAreBoundedByDecisionsKept) {
  Options o;
  o.decisions_kept = 2;
  Reopen(o);
  auto at = ThreeDecisions();
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  ASSERT_EQ(Reasons(st), (std::vector<Reason>{Reason::kHint, Reason::kPaused}))
      << "the oldest dropped";
  EXPECT_EQ(st.decisions[0].at, at[1]);
  EXPECT_EQ(st.decisions[1].at, at[2]);
}

// ---------------------------------------------------------------------------------------------
// Forecast

class PolicyForecast : public PolicyHarness {};

TEST_F(PolicyForecast, CountsRunsPerMinuteOnKnownGrids) {
  Define("github", "issues", "every 15min");
  for (const char* c : {"a", "b", "c"}) Add("github", c);
  ASSERT_TRUE(engine->Start(T("github", std::nullopt)).ok());
  Settle();
  ASSERT_EQ(calls.size(), 3u);
  auto f = engine->Forecast(50min);
  ASSERT_TRUE(f.ok()) << f.status();
  for (const ForecastMinute& m : *f) {
    EXPECT_GE(m.at, t0);
    EXPECT_LE(m.at, t0 + 50min);
  }
  EXPECT_EQ(Nonzero(*f, t0 + 50min), (std::map<TimePoint, std::uint64_t>{
                                         {t0 + 15min, 3}, {t0 + 30min, 3}, {t0 + 45min, 3}}));
}

TEST_F(PolicyForecast, SpreadingSpreadsTheCountsOverTheMinutes) {
  SyncDefinition d = Def("issues", "every 15min");
  d.spread = true;
  DefineP("github", d);
  for (int c = 0; c < 30; ++c) Add("github", "c" + std::to_string(c));
  ASSERT_TRUE(engine->Start(T("github", std::nullopt)).ok());
  Settle();
  auto st = engine->GetStatus(T("github", std::nullopt));
  ASSERT_TRUE(st.ok());
  const TimePoint until = t0 + 49min;
  std::map<TimePoint, std::uint64_t> expected;
  for (const ScheduleStatus& s : *st) {
    ASSERT_TRUE(s.next_run.has_value());
    for (TimePoint t = *s.next_run; t < until; t += 15min) {
      TimePoint minute = std::chrono::floor<std::chrono::minutes>(t);
      if (minute < until) ++expected[minute];
    }
  }
  auto f = engine->Forecast(50min);
  ASSERT_TRUE(f.ok()) << f.status();
  auto got = Nonzero(*f, until);
  EXPECT_EQ(got, expected);
  std::set<TimePoint> minutes;
  for (const auto& [m, n] : got) {
    if (m < t0 + 22min + 30s) minutes.insert(m);
  }
  EXPECT_GE(minutes.size(), 8u) << "not one herd minute (3 schedules per herd minute otherwise)";
}

TEST_F(PolicyForecast, CapsMoveRunsToTheFollowingMinutes) {
  auto_complete = false;
  Define("github", "issues", "every 15min");
  for (const char* c : {"a", "b", "c"}) Add("github", c);
  ASSERT_TRUE(engine->Start(T("github", std::nullopt)).ok());
  Run(1min);
  for (std::size_t i = 0; i < 3; ++i) Finish(i);  // the mean run takes a minute
  IntegrationLimits lim;
  lim.max_concurrency = 1;
  ASSERT_TRUE(engine->SetIntegrationLimits("github", lim).ok());
  auto f = engine->Forecast(50min, "github");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(Nonzero(*f, t0 + 50min), (std::map<TimePoint, std::uint64_t>{{t0 + 15min, 1},
                                                                         {t0 + 16min, 1},
                                                                         {t0 + 17min, 1},
                                                                         {t0 + 30min, 1},
                                                                         {t0 + 31min, 1},
                                                                         {t0 + 32min, 1},
                                                                         {t0 + 45min, 1},
                                                                         {t0 + 46min, 1},
                                                                         {t0 + 47min, 1}}));
}

TEST_F(PolicyForecast, FiltersByIntegration) {
  Define("github", "issues", "every 15min");
  Define("gitlab", "issues", "every 15min");
  Add("github", "a");
  Add("github", "b");
  Add("gitlab", "x");
  ASSERT_TRUE(engine->Start(T("github", std::nullopt)).ok());
  ASSERT_TRUE(engine->Start(T("gitlab", std::nullopt)).ok());
  Settle();
  using M = std::map<TimePoint, std::uint64_t>;
  auto all = engine->Forecast(50min);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(Nonzero(*all, t0 + 50min), (M{{t0 + 15min, 3}, {t0 + 30min, 3}, {t0 + 45min, 3}}));
  auto gh = engine->Forecast(50min, "github");
  ASSERT_TRUE(gh.ok()) << gh.status();
  EXPECT_EQ(Nonzero(*gh, t0 + 50min), (M{{t0 + 15min, 2}, {t0 + 30min, 2}, {t0 + 45min, 2}}));
  auto gl = engine->Forecast(50min, "gitlab");
  ASSERT_TRUE(gl.ok()) << gl.status();
  EXPECT_EQ(Nonzero(*gl, t0 + 50min), (M{{t0 + 15min, 1}, {t0 + 30min, 1}, {t0 + 45min, 1}}));
}

TEST_F(PolicyForecast, RejectsABadHorizonAndAnUnknownIntegration) {
  Define("github", "issues", "every 15min");
  EXPECT_EQ(engine->Forecast(0ms).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Forecast(-1min).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Forecast(std::chrono::hours(24 * 7) + 1ms).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(engine->Forecast(std::chrono::hours(24 * 7)).ok());
  EXPECT_TRUE(engine->Forecast(1h, "github").ok());
  EXPECT_EQ(engine->Forecast(1h, "nope").status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace syncsched::testing
