// The SQLite store's commit beside its floor: the same row writes as plain prepared INSERTs.
//
// BM_StoreCommit1M: one Store::Commit of 1M fresh ScheduleRow upserts (100k connections x 10
// syncs), each holding its run in flight, on a new file in WAL mode, synchronous=NORMAL.
// BM_RawSqliteInsert/1000000: the same rows, as plain `INSERT` statements prepared once and bound
// by index, into a table with the store's schema (same keys and index), in one transaction, with
// the same pragmas. The difference is what the store adds: upserts, its bookkeeping (max_uid) and
// the batch layout. These are also the rows a durable start of 1M schedules writes (BM_DurableStart
// below), so BM_RawSqliteInsert is its floor too.
//
// Page checksums (docs/reliability.md): the last argument of BM_StoreCommit1M,
// BM_StoreCommitRunsAtHistoryBound, BM_DurableStart, BM_Recovery and BM_DurableFire is 1 with
// them (the default) and 0 without (SqliteStoreOptions::page_checksums, or, for the engine's
// store, internal::SetPageChecksumsForTest), so that one run gives both and their ratio:
//   ./store_bench --benchmark_filter='StoreCommit|DurableStart|Recovery|DurableFire/1'
//
// Opening, closing (the final checkpoint) and building the rows are outside the timed region.
// Files go to $TMPDIR (default /tmp). Run:
//   ./store_bench --benchmark_filter='StoreCommit1M|RawSqliteInsert'
#include <benchmark/benchmark.h>

#include <sqlite3.h>
#include <stdlib.h>
#include <unistd.h>
#include <atomic>
#include <thread>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "store/sqlite_store.h"
#include "store/store.h"
#include "syncsched/syncsched.h"

namespace syncsched::store {
namespace {

namespace fs = std::filesystem;

// As syncschedd does at start-up (and as the README suggests to hosts): no SQLite memory
// statistics, whose global mutex every SQLite allocation takes. Before main, so before any SQLite
// use; it applies to the raw baselines as much as to the engine.
const bool kSqliteMemstatusOff = sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) == SQLITE_OK;

constexpr int kRows = 1'000'000;
constexpr int kSyncsPerConnection = 10;

// The rows both benchmarks write, built once.
const Batch& Rows() {
  static const Batch* batch = [] {
    auto* b = new Batch;
    b->schedules.reserve(kRows);
    b->runs.reserve(kRows);
    char connection[32];
    char sync[16];
    for (int i = 0; i < kRows; ++i) {
      std::snprintf(connection, sizeof connection, "conn-%06d", i / kSyncsPerConnection);
      std::snprintf(sync, sizeof sync, "sync-%d", i % kSyncsPerConnection);
      ScheduleRow& s = b->schedules.emplace_back();
      s.uid = static_cast<std::uint64_t>(i) + 1;
      s.integration = "github";
      s.connection = connection;
      s.sync = sync;
      s.variant = "base";
      s.state = 1;
      s.anchor_ms = 1'700'000'000'000 + i;
      s.next_slot_ms = s.anchor_ms + 1'800'000;
      s.runs = 1;
      s.last_start_ms = s.anchor_ms;
      s.last_finish_ms = s.anchor_ms + 250;
      s.last_ok = 1;
      RunRow& r = s.in_flight;
      r.run_id = std::to_string(s.uid) + "-" + std::to_string(s.anchor_ms);
      r.schedule_uid = s.uid;
      r.slot_ms = s.anchor_ms;
      r.mode = 0;
      r.attempt = 1;
      r.started_ms = s.anchor_ms;
    }
    return b;
  }();
  return *batch;
}

std::string NewTempDir() {
  std::string pattern = (fs::temp_directory_path() / "syncsched-bench-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) return {};
  return pattern;
}

void BM_StoreCommit1M(benchmark::State& state) {
  const Batch& batch = Rows();
  for (auto _ : state) {
    state.PauseTiming();
    std::string dir = NewTempDir();
    SqliteStoreOptions options;
    options.path = dir + "/state.db";
    options.page_checksums = state.range(0) != 0;
    auto store = OpenSqliteStore(options);
    if (!store.ok()) {
      state.SkipWithError(store.status().ToString().c_str());
      break;
    }
    state.ResumeTiming();
    Status s = (*store)->Commit(batch);
    state.PauseTiming();
    if (!s.ok()) state.SkipWithError(s.ToString().c_str());
    store->reset();  // closes the store (and checkpoints) untimed
    fs::remove_all(dir);
    state.ResumeTiming();
    if (!s.ok()) break;
  }
  state.counters["rows/s"] =
      benchmark::Counter(kRows, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_StoreCommit1M)
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(3);

// Steady state of group commit: 10k schedules, each with a full history, and a batch that
// finishes one run of each: 10k history places overwritten and 10k schedule rows updated.
void BM_StoreCommitRunsAtHistoryBound(benchmark::State& state) {
  constexpr int kSchedules = 10'000;
  constexpr int kHistory = 20;
  std::string dir = NewTempDir();
  SqliteStoreOptions options;
  options.path = dir + "/state.db";
  options.history_per_schedule = kHistory;
  options.page_checksums = state.range(0) != 0;
  auto store = OpenSqliteStore(options);
  if (!store.ok()) {
    state.SkipWithError(store.status().ToString().c_str());
    return;
  }
  Batch setup;
  for (int i = 0; i < kSchedules; ++i) setup.schedules.push_back(Rows().schedules[i]);
  Status s = (*store)->Commit(setup);
  std::uint64_t round = 0;
  auto next_batch = [&] {
    Batch batch;
    ++round;
    for (int i = 0; i < kSchedules; ++i) {
      ScheduleRow& row = batch.schedules.emplace_back(Rows().schedules[i]);
      row.in_flight = RunRow{};
      row.runs = round;
      RunRow& r = batch.runs.emplace_back();
      r.schedule_uid = row.uid;
      r.number = round;
      r.run_id = std::to_string(r.schedule_uid) + "-" + std::to_string(round);
      r.slot_ms = r.started_ms = static_cast<std::int64_t>(round) * 1000;
      r.finished_ms = r.started_ms + 250;
      r.ok = 1;
    }
    return batch;
  };
  for (int k = 0; s.ok() && k < kHistory; ++k) s = (*store)->Commit(next_batch());
  for (auto _ : state) {
    state.PauseTiming();
    Batch batch = next_batch();
    state.ResumeTiming();
    if (s.ok()) s = (*store)->Commit(batch);
  }
  if (!s.ok()) state.SkipWithError(s.ToString().c_str());
  store->reset();
  fs::remove_all(dir);
  state.counters["runs/s"] =
      benchmark::Counter(kSchedules, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_StoreCommitRunsAtHistoryBound)
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(30);

// The store's schedules table (schema version 3), as the floor's table.
constexpr const char* kSchema = R"sql(
CREATE TABLE schedules(
  uid INTEGER PRIMARY KEY, integration TEXT NOT NULL, connection TEXT NOT NULL,
  sync TEXT NOT NULL, variant TEXT NOT NULL, state INTEGER NOT NULL, anchor_ms INTEGER NOT NULL,
  frequency_override_ms INTEGER NOT NULL, next_slot_ms INTEGER NOT NULL, runs INTEGER NOT NULL,
  failures INTEGER NOT NULL, skipped INTEGER NOT NULL, last_start_ms INTEGER NOT NULL,
  last_finish_ms INTEGER NOT NULL, last_ok INTEGER NOT NULL, last_error TEXT NOT NULL,
  run_id TEXT NOT NULL, run_slot_ms INTEGER NOT NULL, run_mode INTEGER NOT NULL,
  run_attempt INTEGER NOT NULL, run_started_ms INTEGER NOT NULL);
CREATE UNIQUE INDEX schedules_by_key ON schedules(integration, connection, sync, variant);
)sql";

void BM_RawSqliteInsert(benchmark::State& state) {
  const Batch& batch = Rows();
  const auto n = static_cast<std::size_t>(state.range(0));
  auto check = [&](int rc, sqlite3* db) {
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
      state.SkipWithError(sqlite3_errmsg(db));
      return false;
    }
    return true;
  };
  for (auto _ : state) {
    state.PauseTiming();
    std::string dir = NewTempDir();
    std::string path = dir + "/raw.db";
    sqlite3* db = nullptr;
    sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
    bool ok = check(sqlite3_exec(db,
                                 "PRAGMA page_size=16384; PRAGMA journal_mode=WAL; "
                                 "PRAGMA synchronous=NORMAL; PRAGMA cache_size=-65536;",
                                 nullptr, nullptr, nullptr),
                    db) &&
              check(sqlite3_exec(db, kSchema, nullptr, nullptr, nullptr), db);
    sqlite3_stmt* ins_schedule = nullptr;
    ok = ok && check(sqlite3_prepare_v2(db,
                                        "INSERT INTO schedules VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
                                        "?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, "
                                        "?20, ?21)",
                                        -1, &ins_schedule, nullptr),
                     db);
    state.ResumeTiming();

    ok = ok && check(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), db);
    for (std::size_t i = 0; ok && i < n; ++i) {
      const ScheduleRow& r = batch.schedules[i];
      sqlite3_stmt* q = ins_schedule;
      sqlite3_bind_int64(q, 1, static_cast<std::int64_t>(r.uid));
      sqlite3_bind_text(q, 2, r.integration.data(), static_cast<int>(r.integration.size()),
                        SQLITE_STATIC);
      sqlite3_bind_text(q, 3, r.connection.data(), static_cast<int>(r.connection.size()),
                        SQLITE_STATIC);
      sqlite3_bind_text(q, 4, r.sync.data(), static_cast<int>(r.sync.size()), SQLITE_STATIC);
      sqlite3_bind_text(q, 5, r.variant.data(), static_cast<int>(r.variant.size()), SQLITE_STATIC);
      sqlite3_bind_int64(q, 6, r.state);
      sqlite3_bind_int64(q, 7, r.anchor_ms);
      sqlite3_bind_int64(q, 8, r.frequency_override_ms);
      sqlite3_bind_int64(q, 9, r.next_slot_ms);
      sqlite3_bind_int64(q, 10, static_cast<std::int64_t>(r.runs));
      sqlite3_bind_int64(q, 11, static_cast<std::int64_t>(r.failures));
      sqlite3_bind_int64(q, 12, static_cast<std::int64_t>(r.skipped));
      sqlite3_bind_int64(q, 13, r.last_start_ms);
      sqlite3_bind_int64(q, 14, r.last_finish_ms);
      sqlite3_bind_int64(q, 15, r.last_ok);
      sqlite3_bind_text(q, 16, r.last_error.data(), static_cast<int>(r.last_error.size()),
                        SQLITE_STATIC);
      const RunRow& run = r.in_flight;
      sqlite3_bind_text(q, 17, run.run_id.data(), static_cast<int>(run.run_id.size()),
                        SQLITE_STATIC);
      sqlite3_bind_int64(q, 18, run.slot_ms);
      sqlite3_bind_int64(q, 19, run.mode);
      sqlite3_bind_int64(q, 20, run.attempt);
      sqlite3_bind_int64(q, 21, run.started_ms);
      ok = check(sqlite3_step(q), db);
      sqlite3_reset(q);
    }
    ok = ok && check(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr), db);

    state.PauseTiming();
    sqlite3_finalize(ins_schedule);
    sqlite3_close(db);
    fs::remove_all(dir);
    state.ResumeTiming();
    if (!ok) break;
  }
  state.counters["rows/s"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_RawSqliteInsert)
    ->Arg(kRows)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(3);

// ---- The engine on SQLite, beside BM_RawSqliteInsert above ----
//
// BM_DurableStart/N: one Start of N paused schedules (N/10 connections x 10 syncs) on a database
// file, returning only when committed: N schedule rows, each holding its immediate run in flight,
// in one transaction (the rows BM_RawSqliteInsert inserts), and then until the N runs have ended
// (their outcomes are queued to the writer meanwhile, not waited for). The file it leaves is what
// BM_Recovery/N opens: N started schedules, re-armed at open.
// BM_DurableFire: runs per second with every run's dispatch and outcome committed (no-op
// callbacks, 2000 schedules due every millisecond, so the engine is saturated).

// The file BM_DurableStart/N/C leaves for BM_Recovery/N/C, by C (page checksums).
std::string& DurableFile(bool checksums) {
  static std::string path[2];
  return path[checksums ? 1 : 0];
}

std::unique_ptr<Engine> OpenDurable(const std::string& path, std::atomic<std::int64_t>* ran,
                                    bool hold = false) {
  Options o;
  o.database_path = path;
  o.frequency_bounds.min = std::chrono::milliseconds(1);
  o.worker_threads = 2;
  o.hold_timers = hold;
  auto opened = Engine::Open(o);
  if (!opened.ok()) return nullptr;
  auto engine = std::move(opened).value();
  for (int s = 0; s < 10; ++s) {
    std::string name = "sync" + std::to_string(s);
    (void)engine->RegisterCallback("bench", name, [ran](const RunContext&) {
      if (ran) ran->fetch_add(1, std::memory_order_relaxed);
      return RunReport::Success();
    });
  }
  return engine;
}

void BM_DurableStart(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const bool checksums = state.range(1) != 0;
  internal::SetPageChecksumsForTest(checksums);
  for (auto _ : state) {
    state.PauseTiming();
    std::string dir = NewTempDir();
    DurableFile(checksums) = dir + "/durable.db";
    std::atomic<std::int64_t> ran{0};
    auto engine = OpenDurable(DurableFile(checksums), &ran);
    for (int s = 0; s < 10; ++s) {
      SyncDefinition def;
      def.name = "sync" + std::to_string(s);
      def.frequency = "every " + std::to_string(s + 1) + "h";
      def.auto_start = false;
      (void)engine->DefineSync("bench", def);
    }
    for (std::int64_t c = 0; c < n / 10; ++c) {
      (void)engine->AddConnection("bench", "conn-" + std::to_string(c));
    }
    state.ResumeTiming();

    auto r = engine->Start(Target{"bench", std::nullopt, {}, /*report_keys=*/false});

    state.PauseTiming();
    if (!r.ok() || static_cast<std::int64_t>(r->Count(Outcome::kStarted)) != n) {
      state.SkipWithError("start failed");
      break;
    }
    while (engine->GetMetrics().runs_succeeded < static_cast<std::uint64_t>(n)) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // leave the cores to the engine
    }
    engine.reset();
    state.ResumeTiming();
  }
  internal::SetPageChecksumsForTest(true);
  state.counters["rows/s"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_DurableStart)
    ->Args({kRows, 0})
    ->Args({kRows, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(1);

void BM_Recovery(benchmark::State& state) {
  const bool checksums = state.range(1) != 0;
  if (DurableFile(checksums).empty()) {
    state.SkipWithError("run BM_DurableStart first (it makes the file)");
    return;
  }
  internal::SetPageChecksumsForTest(checksums);
  std::int64_t armed = 0;
  for (auto _ : state) {
    auto engine = OpenDurable(DurableFile(checksums), nullptr, /*hold=*/true);
    if (!engine) {
      state.SkipWithError("open failed");
      break;
    }
    state.PauseTiming();
    armed = static_cast<std::int64_t>(engine->GetMetrics().schedules_started);
    engine.reset();
    state.ResumeTiming();
  }
  internal::SetPageChecksumsForTest(true);
  state.counters["schedules"] = static_cast<double>(armed);
  fs::remove_all(fs::path(DurableFile(checksums)).parent_path());
}
BENCHMARK(BM_Recovery)
    ->Args({kRows, 0})
    ->Args({kRows, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(1);

// CPU seconds (user + system) used so far by this process's threads named `name`.
double ThreadCpuSeconds(const std::string& name) {
  double total = 0;
  static const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  for (const auto& task : fs::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string thread;
    std::getline(comm, thread);
    if (thread != name) continue;
    std::ifstream stat(task.path() / "stat");
    std::string line;
    std::getline(stat, line);
    std::istringstream fields(line.substr(line.rfind(')') + 2));
    std::string field;
    double utime = 0, stime = 0;
    for (int i = 3; i <= 15 && fields >> field; ++i) {  // fields 14 and 15: utime, stime
      if (i == 14) utime = std::stod(field);
      if (i == 15) stime = std::stod(field);
    }
    total += (utime + stime) / ticks;
  }
  return total;
}

void BM_DurableFire(benchmark::State& state) {
  std::string dir = NewTempDir();
  std::atomic<std::int64_t> ran{0};
  // Arg 0: in memory (the engine's own ceiling, the baseline); 1: on a database file. Arg 1: page
  // checksums (on a file).
  internal::SetPageChecksumsForTest(state.range(1) != 0);
  auto engine = OpenDurable(state.range(0) ? dir + "/fire.db" : "", &ran);
  internal::SetPageChecksumsForTest(true);
  SyncDefinition def;
  def.name = "sync0";
  def.frequency = "1ms";
  (void)engine->DefineSync("bench", def);
  for (int c = 0; c < 2000; ++c)
    (void)engine->AddConnection("bench", std::string("c").append(std::to_string(c)));
  constexpr std::int64_t kBatch = 20000;
  double writer_before = ThreadCpuSeconds("syncsched-write");
  double io_before = ThreadCpuSeconds("syncsched-io");
  double run_before = ThreadCpuSeconds("syncsched-run");
  for (auto _ : state) {
    std::int64_t target = ran.load() + kBatch;
    while (ran.load(std::memory_order_relaxed) < target) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // leave the cores to the engine
    }
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  // The writer's CPU time per run: the figure the store's work is judged by, steadier than the
  // rate on a shared machine (the writer is the bottleneck on a file).
  if (state.range(0)) {
    state.counters["writer_us/run"] = 1e6 * (ThreadCpuSeconds("syncsched-write") - writer_before) /
                                      static_cast<double>(state.iterations() * kBatch);
  }
  state.counters["io_us/run"] = 1e6 * (ThreadCpuSeconds("syncsched-io") - io_before) /
                                static_cast<double>(state.iterations() * kBatch);
  state.counters["workers_us/run"] = 1e6 * (ThreadCpuSeconds("syncsched-run") - run_before) /
                                     static_cast<double>(state.iterations() * kBatch);
  engine.reset();
  fs::remove_all(dir);
}
BENCHMARK(BM_DurableFire)
    ->Args({0, 0})
    ->Args({1, 0})
    ->Args({1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(10);

// BM_DurableFireSpread/N/F: the same with N schedules (one sync, N connections) every 250 ms with
// phase spreading, so they fire in an order unrelated to their rows' order: every run dirties pages
// of its own (its schedule row, its history places) rather than pages its neighbours share. F = 0:
// in memory (the baseline); F = 1: on a file. Timed after the start's immediate runs.
void BM_DurableFireSpread(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  std::string dir = NewTempDir();
  std::atomic<std::int64_t> ran{0};
  auto engine = OpenDurable(state.range(1) ? dir + "/spread.db" : "", &ran);
  SyncDefinition def;
  def.name = "sync0";
  def.frequency = "250ms";
  def.auto_start = false;
  def.spread = true;
  (void)engine->DefineSync("bench", def);
  for (std::int64_t c = 0; c < n; ++c) {
    (void)engine->AddConnection("bench", std::string("c").append(std::to_string(c)));
  }
  auto started = engine->Start(Target{"bench", std::nullopt, {}, /*report_keys=*/false});
  if (!started.ok() || static_cast<std::int64_t>(started->Count(Outcome::kStarted)) != n) {
    state.SkipWithError("start failed");
    return;
  }
  while (ran.load() < n) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  constexpr std::int64_t kBatch = 20000;
  double writer_before = ThreadCpuSeconds("syncsched-write");
  for (auto _ : state) {
    std::int64_t target = ran.load() + kBatch;
    while (ran.load(std::memory_order_relaxed) < target) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  if (state.range(1)) {
    state.counters["writer_us/run"] = 1e6 * (ThreadCpuSeconds("syncsched-write") - writer_before) /
                                      static_cast<double>(state.iterations() * kBatch);
  }
  engine.reset();
  fs::remove_all(dir);
}
BENCHMARK(BM_DurableFireSpread)
    ->Args({100'000, 0})
    ->Args({100'000, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(10);

}  // namespace
}  // namespace syncsched::store
