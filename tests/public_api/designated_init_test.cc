// Regression: every public aggregate initialises with designated initialisers naming only some of
// its fields, warning-free. CMake compiles this file with -Werror=missing-field-initializers, so a
// member added without a default member initialiser fails the build here (GCC warns for every
// member after a designated one that has no initialiser of its own; Clang for none).
#include <gtest/gtest.h>

#include "syncsched/syncsched.h"

namespace {

using namespace std::chrono_literals;

TEST(DesignatedInit, EveryPublicAggregateTakesPartialDesignatedInitialisers) {
  syncsched::SyncDefinition def{.name = "contacts", .frequency = "every hour"};
  EXPECT_TRUE(def.auto_start);
  EXPECT_FALSE(def.timeout.has_value());
  EXPECT_EQ(def.retry.max, 0);
  syncsched::SyncDefinition def2{.name = "deals", .frequency = "every 30min", .auto_start = false};
  EXPECT_FALSE(def2.auto_start);
  syncsched::RetryPolicy retry{.max = 2};
  EXPECT_EQ(retry.backoff, std::chrono::milliseconds(30s));
  syncsched::IntegrationLimits limits{.max_concurrency = 3};
  EXPECT_EQ(limits.max_concurrency, 3u);
  syncsched::Target target{.integration = "crm"};
  EXPECT_FALSE(target.connection.has_value());
  EXPECT_TRUE(target.report_keys);
  syncsched::Target target2{.integration = "crm", .connection = "c1", .syncs = {{.name = "x"}}};
  EXPECT_EQ(target2.syncs[0].variant, "base");
  syncsched::ScheduleKey key{.integration = "crm", .connection = "c1", .sync = "contacts"};
  EXPECT_EQ(key.variant, "base");
  syncsched::SyncSelector sel{.name = "contacts"};
  EXPECT_EQ(sel.variant, "base");
  syncsched::KeyOutcome outcome{.key = key};
  EXPECT_EQ(outcome.outcome, syncsched::Outcome::kStarted);
  syncsched::ModelCounts counts{.model = "contact", .added = 1};
  EXPECT_EQ(counts.deleted, 0u);
  syncsched::Decision decision{.reason = syncsched::Reason::kHint};
  EXPECT_TRUE(decision.detail.empty());
  syncsched::ScheduleStatus status{.key = key, .id = 1};
  EXPECT_FALSE(status.next_run.has_value());
  syncsched::RunContext ctx{.key = key, .run_id = "r1"};
  EXPECT_FALSE(ctx.cancel.cancelled());
  syncsched::RunReport report{.status = syncsched::Status::Internal("x")};
  EXPECT_FALSE(report.next_run_in.has_value());
  syncsched::RunReport report2{.next_run_in = syncsched::Millis(5min)};
  EXPECT_TRUE(report2.status.ok());
  syncsched::Histogram h{.sum = 1};
  EXPECT_TRUE(h.bounds.empty());
  syncsched::EngineMetrics m{.runs_started = 1};
  EXPECT_TRUE(m.store_healthy);
  syncsched::ForecastMinute fm{.runs = 2};
  EXPECT_EQ(fm.at, syncsched::TimePoint{});
  syncsched::FrequencyBounds bounds{.max = std::chrono::hours(1)};
  EXPECT_EQ(bounds.min, std::chrono::milliseconds(30s));
  syncsched::Options o{.worker_threads = 2, .database_path = ""};
  EXPECT_EQ(o.clock, nullptr);
  EXPECT_FALSE(o.executor.has_value());
}

}  // namespace
