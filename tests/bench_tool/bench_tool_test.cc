// syncsched-bench: flag parsing, the JSON workload file, the JSON result, and a short smoke run of
// each engine and baseline (seconds; the result's shape and counts are asserted, not its speed).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "tool/runners.h"

namespace syncsched::benchtool {
namespace {

namespace fs = std::filesystem;

ParseOutcome Parse(std::vector<std::string> args) { return ParseArgs(args); }

TEST(BenchToolFlags, Counts) {
  EXPECT_EQ(ParseCount("10000"), 10000);
  EXPECT_EQ(ParseCount("10k"), 10000);
  EXPECT_EQ(ParseCount("1M"), 1000000);
  EXPECT_EQ(ParseCount("1.5M"), 1500000);
  EXPECT_EQ(ParseCount("2G"), 2000000000);
  EXPECT_FALSE(ParseCount("").has_value());
  EXPECT_FALSE(ParseCount("ten").has_value());
  EXPECT_FALSE(ParseCount("1.5").has_value());
  EXPECT_FALSE(ParseCount("-3").has_value());
  EXPECT_FALSE(ParseCount("10x").has_value());
}

TEST(BenchToolFlags, Durations) {
  EXPECT_EQ(ParseDurationMs("250ms"), 250);
  EXPECT_EQ(ParseDurationMs("60s"), 60000);
  EXPECT_EQ(ParseDurationMs("1.5s"), 1500);
  EXPECT_EQ(ParseDurationMs("5m"), 300000);
  EXPECT_EQ(ParseDurationMs("1h"), 3600000);
  EXPECT_EQ(ParseDurationMs("1d"), 86400000);
  EXPECT_EQ(ParseDurationMs("20"), 20);                // bare: milliseconds
  EXPECT_FALSE(ParseDurationMs("500us").has_value());  // not whole milliseconds
  EXPECT_EQ(ParseDurationUs("500us"), 500);
  EXPECT_FALSE(ParseDurationMs("1 fortnight").has_value());
}

TEST(BenchToolFlags, Mix) {
  std::string why;
  auto mix = ParseMix("1m:10%,1h:90%", &why);
  ASSERT_TRUE(mix.has_value()) << why;
  ASSERT_EQ(mix->size(), 2u);
  EXPECT_EQ((*mix)[0].period_ms, 60000);
  EXPECT_DOUBLE_EQ((*mix)[0].share, 0.1);
  EXPECT_EQ((*mix)[1].period_ms, 3600000);
  EXPECT_FALSE(ParseMix("1m:10%,1h:80%", &why).has_value());
  EXPECT_NE(why.find("90%"), std::string::npos) << why;
  EXPECT_FALSE(ParseMix("soon:100%", &why).has_value());
  EXPECT_NE(why.find("soon"), std::string::npos) << why;
  EXPECT_TRUE(ParseMix("30s", &why).has_value());  // one period, all schedules

  Workload w;
  w.schedules = 1001;
  w.mix = *ParseMix("1m:10%,1h:90%", &why);
  auto counts = w.Counts();
  EXPECT_EQ(counts[0], 100);
  EXPECT_EQ(counts[1], 901);
}

TEST(BenchToolFlags, CallbackDistributions) {
  auto d = ParseDurationDist("0");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->kind, DurationDist::Kind::kZero);
  d = ParseDurationDist("5ms");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->kind, DurationDist::Kind::kFixed);
  EXPECT_EQ(d->Sample(0.7), 5000);
  d = ParseDurationDist("uniform:1ms-3ms");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->Sample(0.0), 1000);
  EXPECT_EQ(d->Sample(0.5), 2000);
  d = ParseDurationDist("exp:20ms");
  ASSERT_TRUE(d);
  double sum = 0;
  for (int i = 0; i < 10000; ++i) sum += static_cast<double>(d->Sample((i + 0.5) / 10000));
  EXPECT_NEAR(sum / 10000, 20000, 1000);
  EXPECT_FALSE(ParseDurationDist("uniform:3ms-1ms"));
  EXPECT_FALSE(ParseDurationDist("gauss:1ms"));
}

TEST(BenchToolFlags, AllFlags) {
  auto p = Parse({"--schedules",
                  "1M",
                  "--mix=1m:10%,1h:90%",
                  "--duration",
                  "60s",
                  "--virtual",
                  "--store",
                  "/tmp/x.db",
                  "--engine",
                  "nango",
                  "--json",
                  "out.json",
                  "--callback",
                  "exp:20ms",
                  "--failure-rate",
                  "5%",
                  "--max-concurrency",
                  "100",
                  "--spread",
                  "--retries",
                  "3",
                  "--retry-backoff",
                  "2s",
                  "--workers",
                  "4",
                  "--seed",
                  "7",
                  "--recovery",
                  "--quiet"});
  ASSERT_EQ(p.kind, ParseOutcome::Kind::kRun) << p.error;
  const Workload& w = p.workload;
  EXPECT_EQ(w.schedules, 1000000);
  EXPECT_EQ(w.mix.size(), 2u);
  EXPECT_EQ(w.duration_ms, 60000);
  EXPECT_TRUE(w.virtual_time);
  EXPECT_EQ(w.store, "/tmp/x.db");
  EXPECT_TRUE(w.durable());
  EXPECT_EQ(w.engine, EngineKind::kNango);
  EXPECT_EQ(w.json_path, "out.json");
  EXPECT_EQ(w.callback.kind, DurationDist::Kind::kExponential);
  EXPECT_DOUBLE_EQ(w.failure_rate, 0.05);
  EXPECT_EQ(w.max_concurrency, 100);
  EXPECT_TRUE(w.spread);
  EXPECT_EQ(w.retries, 3);
  EXPECT_EQ(w.retry_backoff_ms, 2000);
  EXPECT_EQ(w.workers, 4);
  EXPECT_EQ(w.seed, 7u);
  EXPECT_TRUE(w.recovery);
  EXPECT_EQ(w.progress, Workload::Progress::kNever);
}

TEST(BenchToolFlags, Warmup) {
  auto p = Parse({"--warmup", "round", "--warmup-limit", "2m"});
  ASSERT_EQ(p.kind, ParseOutcome::Kind::kRun) << p.error;
  EXPECT_EQ(p.workload.warmup, Workload::Warmup::kRound);
  EXPECT_EQ(p.workload.warmup_limit_ms, 120000);
  EXPECT_EQ(Parse({"--warmup=start"}).workload.warmup, Workload::Warmup::kStart);
  EXPECT_EQ(Parse({}).workload.warmup, Workload::Warmup::kNone);
}

TEST(BenchToolFlags, Defaults) {
  auto p = Parse({});
  ASSERT_EQ(p.kind, ParseOutcome::Kind::kRun);
  EXPECT_EQ(p.workload.engine, EngineKind::kSyncsched);
  EXPECT_EQ(p.workload.store, "memory");
  EXPECT_EQ(p.workload.duration_ms, 10000);
  p = Parse({"--virtual"});
  EXPECT_EQ(p.workload.duration_ms, 86400000);  // a day of schedules in virtual time
  p = Parse({"--store", "postgresql://bench@localhost/syncsched"});
  ASSERT_EQ(p.kind, ParseOutcome::Kind::kRun) << p.error;  // passed to the engine as is
  EXPECT_EQ(p.workload.store, "postgresql://bench@localhost/syncsched");
}

// Every bad flag: an error naming the flag.
TEST(BenchToolFlags, ErrorsNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string named;
  } cases[] = {
      {{"--schedules", "lots"}, "--schedules"},
      {{"--schedules", "0"}, "--schedules"},
      {{"--schedules"}, "--schedules"},
      {{"--mix", "1m:50%"}, "--mix"},
      {{"--duration", "forever"}, "--duration"},
      {{"--engine", "quartz"}, "--engine"},
      {{"--callback", "gauss:1ms"}, "--callback"},
      {{"--failure-rate", "150%"}, "--failure-rate"},
      {{"--max-concurrency", "-1"}, "--max-concurrency"},
      {{"--retries", "many"}, "--retries"},
      {{"--retry-backoff", "0s"}, "--retry-backoff"},
      {{"--workers", "0"}, "--workers"},
      {{"--progress", "sometimes"}, "--progress"},
      {{"--frobnicate"}, "--frobnicate"},
      {{"--spread=yes"}, "--spread"},
      {{"--engine", "asio", "--virtual"}, "--virtual"},
      {{"--engine", "heap", "--store", "/tmp/h.db"}, "--store"},
      {{"--recovery"}, "--recovery"},
      {{"--config", "/nonexistent/w.json"}, "--config"},
      {{"schedules"}, "schedules"},
      {{"--warmup", "later"}, "--warmup"},
      {{"--warmup-limit", "0s"}, "--warmup-limit"},
      {{"--warmup", "round", "--virtual"}, "--warmup"},
  };
  for (const auto& c : cases) {
    auto p = Parse(c.args);
    EXPECT_EQ(p.kind, ParseOutcome::Kind::kError) << c.named;
    EXPECT_NE(p.error.find(c.named), std::string::npos) << p.error;
  }
}

TEST(BenchToolFlags, JsonWorkloadFile) {
  fs::path dir = fs::temp_directory_path() / ("bench_tool_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::path file = dir / "w.json";
  std::ofstream(file) << R"({"schedules": "100k", "mix": {"1m": "10%", "1h": "90%"},
      "duration": "30s", "engine": "heap", "spread": true, "failure_rate": 0.01,
      "max_concurrency": 50, "retries": 2})";
  auto p = Parse({"--config", file.string(), "--duration", "5s"});
  ASSERT_EQ(p.kind, ParseOutcome::Kind::kRun) << p.error;
  EXPECT_EQ(p.workload.schedules, 100000);
  EXPECT_EQ(p.workload.mix.size(), 2u);
  EXPECT_EQ(p.workload.duration_ms, 5000);  // the flag overrides the file
  EXPECT_EQ(p.workload.engine, EngineKind::kHeap);
  EXPECT_TRUE(p.workload.spread);
  EXPECT_DOUBLE_EQ(p.workload.failure_rate, 0.01);
  EXPECT_EQ(p.workload.max_concurrency, 50);
  EXPECT_EQ(p.workload.retries, 2);

  auto bad = ParseJsonWorkload(R"({"schedules": "lots"})", "w.json");
  EXPECT_EQ(bad.kind, ParseOutcome::Kind::kError);
  EXPECT_NE(bad.error.find("\"schedules\""), std::string::npos) << bad.error;
  bad = ParseJsonWorkload(R"({"colour": "blue"})", "w.json");
  EXPECT_NE(bad.error.find("\"colour\""), std::string::npos) << bad.error;
  bad = ParseJsonWorkload(R"({"spread": "yes"})", "w.json");
  EXPECT_NE(bad.error.find("\"spread\""), std::string::npos) << bad.error;
  bad = ParseJsonWorkload("[1, 2]", "w.json");
  EXPECT_EQ(bad.kind, ParseOutcome::Kind::kError);
  bad = ParseJsonWorkload("{", "w.json");
  EXPECT_NE(bad.error.find("not valid JSON"), std::string::npos) << bad.error;
  fs::remove_all(dir);
}

TEST(BenchToolResult, HistogramPercentiles) {
  for (std::int64_t v : {0, 1, 500, 1023, 1024, 1500, 60000, 3600000}) {
    int b = LatenessHistogram::BucketOf(v);
    std::int64_t lo = LatenessHistogram::LowerBound(b);
    EXPECT_LE(lo, v);
    EXPECT_GE(static_cast<double>(lo), static_cast<double>(v) * 0.98) << v;
    if (b + 1 < LatenessHistogram::kBuckets) {
      EXPECT_GT(LatenessHistogram::LowerBound(b + 1), v);
    }
  }
  LatenessHistogram h;
  for (int i = 0; i < 100; ++i) h.Add(i);
  auto snap = h.Snapshot();
  EXPECT_EQ(Percentile(snap, 0.5), 49);
  EXPECT_EQ(Percentile(snap, 0.99), 98);
  EXPECT_EQ(Percentile(std::vector<std::uint64_t>(LatenessHistogram::kBuckets), 0.5), -1);
}

// Draws are the same for every engine: a function of (seed, schedule, slot, attempt).
TEST(BenchToolResult, RunPlansAreDeterministic) {
  Workload w;
  w.failure_rate = 0.25;
  w.callback = *ParseDurationDist("uniform:1ms-9ms");
  int fails = 0;
  for (std::uint64_t k = 0; k < 4000; ++k) {
    RunPlan a = PlanRun(w, k, 1000 * static_cast<std::int64_t>(k), 1);
    RunPlan b = PlanRun(w, k, 1000 * static_cast<std::int64_t>(k), 1);
    EXPECT_EQ(a.fail, b.fail);
    EXPECT_EQ(a.duration_us, b.duration_us);
    EXPECT_GE(a.duration_us, 1000);
    EXPECT_LE(a.duration_us, 9000);
    fails += a.fail;
  }
  EXPECT_NEAR(fails, 1000, 150);
}

nlohmann::json RunOnce(const Workload& w) {
  Recorder rec;
  Harness h(w, rec);
  std::string error = RunWorkload(h);
  EXPECT_EQ(error, "");
  nlohmann::json j = h.ResultJson();
  EXPECT_FALSE(h.Summary().empty());
  return j;
}

void ExpectShape(const nlohmann::json& j) {
  for (const char* key : {"runs", "runs_per_second", "bytes_per_schedule", "config", "machine",
                          "series", "lateness_histogram_ms", "memory", "cpu", "timing"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_TRUE(j["lateness_ms"].contains("p50"));
  EXPECT_TRUE(j["lateness_ms"].contains("p99"));
  EXPECT_TRUE(j["cpu"].contains("cpu_us_per_run"));
  EXPECT_TRUE(j["machine"].contains("cpus"));
  EXPECT_GT(j["runs_per_second"].get<double>(), 0);
  // Round trip through text, as --json writes it.
  EXPECT_EQ(nlohmann::json::parse(j.dump(1)), j);
}

// Virtual time: the counts are exact. 100 schedules every minute for 10 minutes: the start's 100
// immediate runs, then 10 slots each.
class VirtualSmoke : public ::testing::TestWithParam<EngineKind> {};

TEST_P(VirtualSmoke, CountsAreExact) {
  Workload w;
  w.engine = GetParam();
  w.schedules = 100;
  w.mix = {{60000, 1.0, "1m"}};
  w.virtual_time = true;
  w.duration_ms = 600000;
  w.progress = Workload::Progress::kNever;
  nlohmann::json j = RunOnce(w);
  ExpectShape(j);
  EXPECT_EQ(j["runs"], 1100);
  EXPECT_EQ(j["initial_runs"], 100);
  EXPECT_EQ(j["succeeded"], 1100);
  EXPECT_EQ(j["failed"], 0);
  EXPECT_EQ(j["lateness_ms"]["count"], 1000);
  EXPECT_GE(j["window_seconds"].get<double>(), 600);
  // Memory is read once the start's immediate runs have finished, after malloc_trim.
  EXPECT_EQ(j["memory"]["measured"], "start_runs_done");
  EXPECT_EQ(j["memory"]["malloc_trim"], true);
  EXPECT_TRUE(j["memory"].contains("rss_settled"));
  EXPECT_LE(j["window_runs"].get<std::uint64_t>(), 1100u);
}

TEST_P(VirtualSmoke, FailuresRetriesCapAndDurations) {
  Workload w;
  w.engine = GetParam();
  w.schedules = 200;
  w.mix = {{60000, 0.5, "1m"}, {300000, 0.5, "5m"}};
  w.virtual_time = true;
  w.duration_ms = 1800000;
  w.spread = true;
  w.failure_rate = 0.2;
  w.retries = 1;
  w.retry_backoff_ms = 1000;
  w.max_concurrency = 20;
  w.callback = *ParseDurationDist("uniform:1ms-200ms");
  w.progress = Workload::Progress::kNever;
  nlohmann::json j = RunOnce(w);
  ExpectShape(j);
  // 100 x 30 + 100 x 6 slots (spread: each schedule's first slot lies at least half a period
  // after the start, so a few fall beyond the window) plus the 200 immediate runs and retries.
  auto runs = j["runs"].get<std::uint64_t>();
  auto retries = j["retries"].get<std::uint64_t>();
  EXPECT_EQ(j["initial_runs"], 200);
  EXPECT_GT(retries, 0u);
  EXPECT_GT(runs - retries, 3200u);
  EXPECT_LE(runs - retries, 3800u);
  EXPECT_GT(j["failed"].get<std::uint64_t>(), 0u);
  // Runs still in flight at the window's end have not finished.
  EXPECT_LE(runs - j["succeeded"].get<std::uint64_t>() - j["failed"].get<std::uint64_t>(), 20u);
}

INSTANTIATE_TEST_SUITE_P(Engines, VirtualSmoke,
                         ::testing::Values(EngineKind::kSyncsched, EngineKind::kHeap,
                                           EngineKind::kNango),
                         [](const auto& info) { return std::string(ToString(info.param)); });

// Real time: 300 schedules every 250 ms for 1.5 s on each engine.
class RealSmoke : public ::testing::TestWithParam<EngineKind> {};

TEST_P(RealSmoke, RunsAndReports) {
  Workload w;
  w.engine = GetParam();
  w.schedules = 300;
  w.mix = {{250, 1.0, "250ms"}};
  w.duration_ms = 1500;
  w.spread = true;
  w.progress = Workload::Progress::kNever;
  nlohmann::json j = RunOnce(w);
  ExpectShape(j);
  EXPECT_EQ(j["initial_runs"], 300);
  // ~6 slots each in 1.5 s; a loaded machine may run fewer, never more.
  EXPECT_GT(j["runs"].get<std::uint64_t>(), 600u);
  EXPECT_LE(j["runs"].get<std::uint64_t>(), 300u * 8);
  EXPECT_GT(j["lateness_ms"]["count"].get<std::uint64_t>(), 0u);
  EXPECT_GE(j["series"].size(), 1u);
  EXPECT_GT(j["bytes_per_schedule"].get<double>(), 0);
}

// --warmup round: the window begins once the start's runs are done and one period has passed;
// the window's runs exclude the warm-up's, and memory was read during the warm-up.
TEST_P(RealSmoke, WarmupRound) {
  Workload w;
  w.engine = GetParam();
  w.schedules = 300;
  w.mix = {{250, 1.0, "250ms"}};
  w.duration_ms = 1000;
  w.spread = true;
  w.warmup = Workload::Warmup::kRound;
  w.warmup_limit_ms = 60000;
  w.progress = Workload::Progress::kNever;
  nlohmann::json j = RunOnce(w);
  ExpectShape(j);
  EXPECT_EQ(j["warmup"]["mode"], "round");
  EXPECT_EQ(j["warmup"]["ended"], "start_runs_done_and_round");
  EXPECT_GE(j["timing"]["warmup_ms"].get<double>(), 250);
  EXPECT_EQ(j["memory"]["measured"], "start_runs_done");
  auto runs = j["runs"].get<std::uint64_t>();
  auto window = j["window_runs"].get<std::uint64_t>();
  auto before = j["warmup"]["runs"].get<std::uint64_t>();
  EXPECT_GE(before, 300u);           // the start's runs, and a round's
  EXPECT_LE(before + window, runs);  // (runs go on until the engine stops)
  EXPECT_GT(window, 0u);
}

INSTANTIATE_TEST_SUITE_P(Engines, RealSmoke,
                         ::testing::Values(EngineKind::kSyncsched, EngineKind::kAsio,
                                           EngineKind::kHeap, EngineKind::kNango),
                         [](const auto& info) { return std::string(ToString(info.param)); });

// On a file, with --recovery: the store is reopened and every schedule found started.
class DurableSmoke : public ::testing::TestWithParam<EngineKind> {};

TEST_P(DurableSmoke, RecoversEverySchedule) {
  fs::path dir = fs::temp_directory_path() / ("bench_tool_durable_" + std::to_string(::getpid()) +
                                              "_" + std::string(ToString(GetParam())));
  fs::remove_all(dir);
  fs::create_directories(dir);
  Workload w;
  w.engine = GetParam();
  w.schedules = 500;
  w.mix = {{200, 1.0, "200ms"}};
  w.duration_ms = 1000;
  w.spread = true;
  w.store = (dir / "bench.db").string();
  w.recovery = true;
  w.progress = Workload::Progress::kNever;
  nlohmann::json j = RunOnce(w);
  ExpectShape(j);
  EXPECT_EQ(j["initial_runs"], 500);
  EXPECT_EQ(j["timing"]["recovered_schedules"], 500);
  EXPECT_GE(j["timing"]["recovery_ms"].get<double>(), 0);
  // A second run on the same file is refused: the tool creates its schedules afresh.
  Recorder rec;
  Harness h(w, rec);
  EXPECT_NE(RunWorkload(h).find("exists"), std::string::npos);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Engines, DurableSmoke,
                         ::testing::Values(EngineKind::kSyncsched, EngineKind::kNango),
                         [](const auto& info) { return std::string(ToString(info.param)); });

}  // namespace
}  // namespace syncsched::benchtool
