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
#include <sys/wait.h>
#include <unistd.h>
#include <atomic>
#include <thread>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

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

// BM_SqliteLoadJournalTail/R: recovery's read of the SQLite store (open and Load) of 1M
// schedules whose run journal holds R records that a killed process left (no fold at close),
// against R = 0: the same rows, folded at a clean close (the baseline). The tail is what runs
// leave between folds: each record pair a schedule's new row and its finished run, over schedules
// spread across the uids. With the fold's threshold at 10 records per uid (at most 4,194,304,
// SqliteStoreOptions::journal_fold_per_uid), a crash at 1M schedules leaves up to ~4M records (and
// a fold's worth more, if it crashed during one).
void BM_SqliteLoadJournalTail(benchmark::State& state) {
  const std::int64_t tail = state.range(0);
  std::string dir = NewTempDir();
  std::string path = dir + "/tail.db";
  const Batch& rows = Rows();
  const pid_t child = ::fork();
  if (child == 0) {
    SqliteStoreOptions o;
    o.path = path;
    o.journal_from_uid = 0;
    o.journal_fold_records = std::size_t{1} << 30;
    o.journal_fold_per_uid = 0;
    auto store = OpenSqliteStore(o);
    if (!store.ok() || !(*store)->Commit(rows).ok()) ::_exit(1);
    Batch b;
    std::int64_t records = 0;
    for (std::uint64_t i = 0; records < std::max<std::int64_t>(tail, 1'000'000); ++i) {
      const std::uint64_t at = (i * 7919) % kRows;  // spread over the uids
      ScheduleRow row = rows.schedules[at];
      row.update_only = true;
      row.integration.clear();
      row.connection.clear();
      row.sync.clear();
      row.variant.clear();
      row.runs = 2 + i / kRows;
      row.in_flight = RunRow{};
      RunRow run = rows.schedules[at].in_flight;
      run.number = row.runs;
      run.run_id += "-" + std::to_string(row.runs);
      run.finished_ms = run.started_ms + 250;
      run.ok = 1;
      b.schedules.push_back(std::move(row));
      b.runs.push_back(std::move(run));
      records += 2;
      if (b.schedules.size() == 10'000) {
        if (!(*store)->Commit(b).ok()) ::_exit(1);
        b.clear();
      }
    }
    if (!b.empty() && !(*store)->Commit(b).ok()) ::_exit(1);
    if (tail == 0) store->reset();  // a clean close: the journal folded
    ::_exit(0);                     // else as a killed process: the journal stays
  }
  int wstatus = 0;
  if (child < 0 || ::waitpid(child, &wstatus, 0) != child || !WIFEXITED(wstatus) ||
      WEXITSTATUS(wstatus) != 0) {
    state.SkipWithError("building the file failed");
    fs::remove_all(dir);
    return;
  }
  // The journal's bytes: what a fold of it holds in memory, with 24 bytes of index a record
  // (its buffers are reserved from these sizes; JournalTest.AFoldHoldsTheJournalsBytesAndNoMore).
  double journal_bytes = 0;
  {
    sqlite3* db = nullptr;
    sqlite3_stmt* q = nullptr;
    // Read-only and never checkpointing at close: the WAL's pages carry the store's checksums,
    // which SQLite's own file layer would not write.
    if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK &&
        sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT total(length(body)) FROM journal", -1, &q, nullptr) ==
            SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW) {
      journal_bytes = sqlite3_column_double(q, 0);
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
  }
  std::uint64_t journal = 0;
  for (auto _ : state) {
    SqliteStoreOptions o;
    o.path = path;
    auto store = OpenSqliteStore(o);
    auto snap = store.ok() ? (*store)->Load() : Result<Snapshot>(store.status());
    state.PauseTiming();
    if (!snap.ok() || snap->schedules.size() != static_cast<std::size_t>(kRows)) {
      state.SkipWithError("the load failed");
      break;
    }
    journal = internal::JournalRecordsForTest(**store);
    store->reset();  // untimed: a clean close folds the journal
    state.ResumeTiming();
  }
  state.counters["journal_records"] = static_cast<double>(journal);
  state.counters["journal_mb"] = journal_bytes / (1 << 20);
  fs::remove_all(dir);
}
BENCHMARK(BM_SqliteLoadJournalTail)
    ->Arg(0)
    ->Arg(1'000'000)
    ->Arg(4'000'000)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(1);

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

// The process's resident memory now, in bytes (/proc/self/statm's second field, in pages).
std::uint64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

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

// BM_DurableFireSpread/N/F/P/R: the same with N schedules (one sync, N connections) every P ms with
// phase spreading, so they fire in an order unrelated to their rows' order: every run dirties pages
// of its own (its schedule row, its history places) rather than pages its neighbours share. F = 0:
// in memory (the baseline); F = 1: on a file. P is chosen so that the schedules ask for 200k
// runs/s, about twice what the file keeps up with, so the figure is what it sustains. Not far more:
// a schedule whose run still waits for a worker at its next slot has that slot skipped, and each
// skip is work of its own (a decision recorded), so at 10x its capacity (1M schedules every 250 ms)
// the engine spends its time skipping (2-3k runs/s measured). P = 900 and 9000 ask 111k runs/s:
// whether the file sustains 100k runs/s with little overload (a skipped slot records a decision
// and rewrites its row, work that grows with the overload). Timed after the start's immediate
// runs and R rounds of n more runs (see below), for 1M runs at 100k, 5M at 1M. The floor in plain
// SQLite:
// BM_RawSqliteSpreadRuns below.
void BM_DurableFireSpread(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  std::string dir = NewTempDir();
  std::atomic<std::int64_t> ran{0};
  auto engine = OpenDurable(state.range(1) ? dir + "/spread.db" : "", &ran);
  // Up to 100k: one sync on n connections; above, 10 syncs on n / 10 connections (a million
  // AddConnection commands would take most of a minute to set up).
  const int syncs = n > 100'000 ? 10 : 1;
  for (int k = 0; k < syncs; ++k) {
    SyncDefinition def;
    def.name = "sync" + std::to_string(k);
    def.frequency = std::to_string(state.range(2)) + "ms";
    def.auto_start = false;
    def.spread = true;
    (void)engine->DefineSync("bench", def);
  }
  for (std::int64_t c = 0; c < n / syncs; ++c) {
    (void)engine->AddConnection("bench", std::string("c").append(std::to_string(c)));
  }
  auto started = engine->Start(Target{"bench", std::nullopt, {}, /*report_keys=*/false});
  if (!started.ok() || static_cast<std::int64_t>(started->Count(Outcome::kStarted)) != n) {
    state.SkipWithError("start failed");
    return;
  }
  // Timed from the second round on: the start's immediate runs, then about one more run per
  // schedule (n runs), so that work a store defers (the run journal's folds of the start's rows
  // and of the first runs) is in its steady state rather than all ahead or all behind. The timed
  // window is 50 iterations of kBatch: 1M runs at 100k schedules, 5M at 1M, at least three of the
  // journal's folds either way (a fold per 1,048,576 records, ~350k runs, at 100k; per 4,194,304,
  // ~1.4M runs, at 1M), so the figure carries its share of them.
  // R (the fourth argument) rounds before the window instead of one: with R = 20 every
  // schedule's history ring (20 runs) is full, as in a store that has run for a while, so a fold
  // rewrites `history` at its full size (~1.5 GB at 1M schedules) rather than at the few runs a
  // schedule has after one round.
  const std::int64_t rounds = state.range(3);
  while (ran.load() < (1 + rounds) * n) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const std::int64_t kBatch = n >= 1'000'000 ? 100'000 : 20'000;
  double writer_before = ThreadCpuSeconds("syncsched-write");
  double io_before = ThreadCpuSeconds("syncsched-io");
  double run_before = ThreadCpuSeconds("syncsched-run");
  const std::uint64_t rss_before = ResidentBytes();
  std::uint64_t rss_peak = rss_before;
  for (auto _ : state) {
    std::int64_t target = ran.load() + kBatch;
    for (int waits = 0; ran.load(std::memory_order_relaxed) < target; ++waits) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      if (waits % 50 == 0) rss_peak = std::max(rss_peak, ResidentBytes());
    }
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  const auto runs = static_cast<double>(state.iterations() * kBatch);
  if (state.range(1)) {
    state.counters["writer_us/run"] =
        1e6 * (ThreadCpuSeconds("syncsched-write") - writer_before) / runs;
  }
  state.counters["io_us/run"] = 1e6 * (ThreadCpuSeconds("syncsched-io") - io_before) / runs;
  state.counters["workers_us/run"] = 1e6 * (ThreadCpuSeconds("syncsched-run") - run_before) / runs;
  // Resident memory when the window began (the engine's schedules, the store's cache) and the most
  // it held above that during the window (on a file, mostly the largest fold's buffers).
  state.counters["rss_mb"] = static_cast<double>(rss_before) / (1 << 20);
  state.counters["rss_rise_mb"] = static_cast<double>(rss_peak - rss_before) / (1 << 20);
  engine.reset();
  fs::remove_all(dir);
}
BENCHMARK(BM_DurableFireSpread)
    ->Args({100'000, 0, 500, 1})
    ->Args({100'000, 1, 500, 1})
    ->Args({1'000'000, 0, 5000, 1})
    ->Args({1'000'000, 1, 5000, 1})
    ->Args({100'000, 1, 900, 1})
    ->Args({1'000'000, 1, 9000, 1})
    ->Args({100'000, 1, 900, 20})
    ->Args({1'000'000, 1, 9000, 20})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(50);

// A plain SQLite file for the raw baselines, with the store's pragmas (16 KiB pages, WAL,
// synchronous=NORMAL, a 64 MB cache, a checkpoint every 40 MB). Check reports a failed call as the
// benchmark's error. The caller closes `db`.
struct RawDb {
  benchmark::State& state;
  sqlite3* db = nullptr;
  bool Check(int rc) {
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
      state.SkipWithError(sqlite3_errmsg(db));
      return false;
    }
    return true;
  }
  bool Open(const std::string& path) {
    sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
    return Check(sqlite3_exec(db,
                              "PRAGMA page_size=16384; PRAGMA journal_mode=WAL; "
                              "PRAGMA synchronous=NORMAL; PRAGMA cache_size=-65536; "
                              "PRAGMA wal_autocheckpoint=2560;",
                              nullptr, nullptr, nullptr));
  }
};

// BM_RawSqliteFoldHistory/N/L: what a fold of the run journal costs in `history` alone, with
// every schedule's history full (20 runs each, built untimed), for two layouts of the same rows,
// in plain SQLite with the store's pragmas. Each iteration folds 4N/3 runs (a fold at the cap,
// 4,194,304 records, is ~1.4M runs: about 1.33 a schedule at 1M), spread over the schedules, in
// uid order, in transactions of 16,384 runs.
// L = 0: the store's layout, a ring clustered by schedule: INSERT OR REPLACE at
//        uid * 1024 + (n - 1) % 20.
// L = 1: the alternative, runs appended in the order they are folded (a new largest id), with an
//        index on (schedule_uid, id) to find a schedule's runs and its oldest, which each new run
//        deletes (the bound of 20 kept per schedule).
// It tested an estimate that the appended layout would cost less (~0.6 GB of pages a fold at 1M
// against ~1.5 GB): it costs 3.7-4.2x more, in CPU (docs/benchmarks.md, "The fold's cap raised").
void BM_RawSqliteFoldHistory(benchmark::State& state) {
  const auto n = static_cast<std::uint64_t>(state.range(0));
  const bool appended = state.range(1) == 1;
  constexpr std::uint64_t kKept = 20;
  constexpr std::uint64_t kSlice = 16'384;
  std::string dir = NewTempDir();
  std::string path = dir + "/fold-history.db";
  RawDb raw{state};
  bool ok = raw.Open(path);
  sqlite3* db = raw.db;
  auto check = [&](int rc) { return raw.Check(rc); };
  ok = ok &&
       check(sqlite3_exec(db,
                          "CREATE TABLE history(id INTEGER PRIMARY KEY, schedule_uid INTEGER "
                          "NOT NULL, run_id TEXT NOT NULL, slot_ms INTEGER NOT NULL, mode "
                          "INTEGER NOT NULL, attempt INTEGER NOT NULL, started_ms INTEGER NOT "
                          "NULL, finished_ms INTEGER NOT NULL, ok INTEGER NOT NULL, error TEXT "
                          "NOT NULL);",
                          nullptr, nullptr, nullptr));
  sqlite3_stmt* put = nullptr;
  sqlite3_stmt* trim = nullptr;
  ok = ok && check(sqlite3_prepare_v2(db,
                                      "INSERT OR REPLACE INTO history VALUES (?1, ?2, ?3, ?4, 0, "
                                      "1, ?4, ?5, 1, '')",
                                      -1, &put, nullptr));
  if (appended) {
    ok = ok && check(sqlite3_prepare_v2(db,
                                        "DELETE FROM history WHERE id = (SELECT id FROM history "
                                        "WHERE schedule_uid = ?1 ORDER BY id LIMIT 1)",
                                        -1, &trim, nullptr));
  }
  constexpr std::int64_t kAnchor = 1'700'000'000'000;
  std::vector<std::uint64_t> runs(n + 1, 0);
  std::int64_t next_id = 1;
  std::string id;
  auto write = [&](std::uint64_t uid) {
    const std::uint64_t number = ++runs[uid];
    const std::int64_t slot = kAnchor + static_cast<std::int64_t>(number) * 1000;
    id = std::to_string(uid) + "-" + std::to_string(slot);
    const std::int64_t row =
        appended ? next_id++ : static_cast<std::int64_t>(uid * 1024 + (number - 1) % kKept);
    sqlite3_bind_int64(put, 1, row);
    sqlite3_bind_int64(put, 2, static_cast<std::int64_t>(uid));
    sqlite3_bind_text(put, 3, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
    sqlite3_bind_int64(put, 4, slot);
    sqlite3_bind_int64(put, 5, slot + 250);
    bool done = check(sqlite3_step(put));
    sqlite3_reset(put);
    return done;
  };
  // Untimed: 20 runs of every schedule, round after round (the appended layout in that order),
  // then the index, built once by sorting.
  ok = ok && check(sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr));
  // (The ring in key order instead: the same rows, written sequentially.)
  for (std::uint64_t outer = 0; ok && outer < (appended ? kKept : n); ++outer) {
    for (std::uint64_t inner = 0; ok && inner < (appended ? n : kKept); ++inner) {
      ok = write(appended ? inner + 1 : outer + 1);
    }
  }
  ok = ok && check(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr));
  if (appended) {
    ok = ok &&
         check(sqlite3_exec(db, "CREATE INDEX history_by_schedule ON history(schedule_uid, id)",
                            nullptr, nullptr, nullptr));
  }
  ok = ok && check(sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr));
  // Each fold: 4N/3 runs of schedules drawn at random, written in uid order.
  std::mt19937_64 gen(42);
  std::uniform_int_distribution<std::uint64_t> pick(1, n);
  std::vector<std::uint64_t> fold(n * 4 / 3);
  for (auto _ : state) {
    state.PauseTiming();
    for (std::uint64_t& uid : fold) uid = pick(gen);
    std::sort(fold.begin(), fold.end());
    state.ResumeTiming();
    for (std::size_t at = 0; ok && at < fold.size(); at += kSlice) {
      ok = check(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr));
      for (std::size_t k = at; ok && k < std::min(fold.size(), at + kSlice); ++k) {
        ok = write(fold[k]);
        if (ok && appended) {
          sqlite3_bind_int64(trim, 1, static_cast<std::int64_t>(fold[k]));
          ok = check(sqlite3_step(trim));
          sqlite3_reset(trim);
        }
      }
      ok = ok && check(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr));
    }
    if (!ok) break;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * fold.size()));
  std::error_code ec;
  state.counters["file_mb"] = static_cast<double>(fs::file_size(path, ec)) / (1 << 20);
  for (sqlite3_stmt* q : {put, trim}) sqlite3_finalize(q);
  sqlite3_close(db);
  fs::remove_all(dir);
}
BENCHMARK(BM_RawSqliteFoldHistory)
    ->Args({100'000, 0})
    ->Args({100'000, 1})
    ->Args({1'000'000, 0})
    ->Args({1'000'000, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(2);

// BM_RawSqliteSpreadRuns/N/G: the floor of BM_DurableFireSpread/N/1 in plain SQLite: the rows a
// run writes without the store's journal (schema v4's layout), as prepared statements bound by
// index: at dispatch, an UPDATE of its schedule's row (next slot, run in flight); at its end, an
// UPDATE of the row (counters, last run, no run in flight) and an INSERT OR REPLACE of its
// history place (uid * 1024 + (n - 1) % 20). N schedule rows (built untimed, with one run of
// history each), runs in a random order of the uids (spread: unrelated to the rows' order),
// G runs per transaction, same pragmas as the store (16 KiB pages, WAL, synchronous=NORMAL,
// 64 MB cache, checkpoint every 40 MB). 200k runs per iteration.
constexpr const char* kSpreadSchema = R"sql(
CREATE TABLE schedules(
  uid INTEGER PRIMARY KEY, integration TEXT NOT NULL, connection TEXT NOT NULL,
  sync TEXT NOT NULL, variant TEXT NOT NULL, state INTEGER NOT NULL, anchor_ms INTEGER NOT NULL,
  frequency_override_ms INTEGER NOT NULL, next_slot_ms INTEGER NOT NULL, runs INTEGER NOT NULL,
  failures INTEGER NOT NULL, skipped INTEGER NOT NULL, last_start_ms INTEGER NOT NULL,
  last_finish_ms INTEGER NOT NULL, last_ok INTEGER NOT NULL, last_error TEXT NOT NULL,
  run_id TEXT NOT NULL, run_slot_ms INTEGER NOT NULL, run_mode INTEGER NOT NULL,
  run_attempt INTEGER NOT NULL, run_started_ms INTEGER NOT NULL, run_seq INTEGER NOT NULL,
  owed BLOB);
CREATE UNIQUE INDEX schedules_by_key ON schedules(integration, connection, sync, variant);
CREATE TABLE history(
  id INTEGER PRIMARY KEY, schedule_uid INTEGER NOT NULL, run_id TEXT NOT NULL,
  slot_ms INTEGER NOT NULL, mode INTEGER NOT NULL, attempt INTEGER NOT NULL,
  started_ms INTEGER NOT NULL, finished_ms INTEGER NOT NULL, ok INTEGER NOT NULL,
  error TEXT NOT NULL);
)sql";

void BM_RawSqliteSpreadRuns(benchmark::State& state) {
  const auto n = static_cast<std::uint64_t>(state.range(0));
  const auto group = static_cast<std::uint64_t>(state.range(1));
  constexpr std::uint64_t kRuns = 200'000;
  std::string dir = NewTempDir();
  std::string path = dir + "/raw-spread.db";
  RawDb raw{state};
  bool ok = raw.Open(path);
  sqlite3* db = raw.db;
  auto check = [&](int rc) { return raw.Check(rc); };
  ok = ok && check(sqlite3_exec(db, kSpreadSchema, nullptr, nullptr, nullptr));
  sqlite3_stmt* insert = nullptr;
  sqlite3_stmt* dispatch = nullptr;
  sqlite3_stmt* finish = nullptr;
  sqlite3_stmt* history = nullptr;
  ok = ok &&
       check(sqlite3_prepare_v2(
           db,
           "INSERT INTO schedules VALUES (?1, 'bench', ?2, 'sync0', 'base', 1, ?3, 0, ?3, 1, 0, 0, "
           "?3, ?3, 1, '', '', 0, 0, 0, 0, 1, NULL)",
           -1, &insert, nullptr)) &&
       check(sqlite3_prepare_v2(db,
                                "UPDATE schedules SET state = 1, anchor_ms = ?2, "
                                "frequency_override_ms = 0, next_slot_ms = ?3, runs = ?4, "
                                "failures = 0, skipped = 0, last_start_ms = ?5, "
                                "last_finish_ms = ?6, last_ok = 1, last_error = '', run_id = ?7, "
                                "run_slot_ms = ?8, run_mode = 0, run_attempt = 1, "
                                "run_started_ms = ?9, run_seq = 1, owed = NULL WHERE uid = ?1",
                                -1, &dispatch, nullptr)) &&
       check(sqlite3_prepare_v2(db,
                                "UPDATE schedules SET state = 1, anchor_ms = ?2, "
                                "frequency_override_ms = 0, next_slot_ms = ?3, runs = ?4, "
                                "failures = 0, skipped = 0, last_start_ms = ?5, "
                                "last_finish_ms = ?6, last_ok = 1, last_error = '', run_id = '', "
                                "run_slot_ms = 0, run_mode = 0, run_attempt = 0, "
                                "run_started_ms = 0, run_seq = 1, owed = NULL WHERE uid = ?1",
                                -1, &finish, nullptr)) &&
       check(sqlite3_prepare_v2(db,
                                "INSERT OR REPLACE INTO history VALUES (?1, ?2, ?3, ?4, 0, 1, ?5, "
                                "?6, 1, '')",
                                -1, &history, nullptr));
  // N rows, each with one run of history (the start's immediate run), committed untimed.
  constexpr std::int64_t kAnchor = 1'700'000'000'000;
  std::vector<std::uint64_t> runs(n + 1, 1);
  ok = ok && check(sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr));
  for (std::uint64_t uid = 1; ok && uid <= n; ++uid) {
    std::string connection = "c" + std::to_string(uid - 1);
    sqlite3_bind_int64(insert, 1, static_cast<std::int64_t>(uid));
    sqlite3_bind_text(insert, 2, connection.data(), static_cast<int>(connection.size()),
                      SQLITE_TRANSIENT);
    sqlite3_bind_int64(insert, 3, kAnchor);
    ok = check(sqlite3_step(insert));
    sqlite3_reset(insert);
    std::string id = std::to_string(uid) + "-" + std::to_string(kAnchor) + "-1";
    sqlite3_bind_int64(history, 1, static_cast<std::int64_t>(uid * 1024));
    sqlite3_bind_int64(history, 2, static_cast<std::int64_t>(uid));
    sqlite3_bind_text(history, 3, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    sqlite3_bind_int64(history, 4, kAnchor);
    sqlite3_bind_int64(history, 5, kAnchor);
    sqlite3_bind_int64(history, 6, kAnchor + 1);
    ok = ok && check(sqlite3_step(history));
    sqlite3_reset(history);
  }
  ok = ok && check(sqlite3_exec(db, "COMMIT; PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr,
                                nullptr));
  // The spread order: a random permutation of the uids, cycled.
  std::vector<std::uint64_t> order(n);
  for (std::uint64_t i = 0; i < n; ++i) order[i] = i + 1;
  std::mt19937_64 gen(42);
  std::shuffle(order.begin(), order.end(), gen);
  std::uint64_t next = 0;
  std::int64_t now = kAnchor;
  std::string id;
  for (auto _ : state) {
    for (std::uint64_t done = 0; ok && done < kRuns; done += group) {
      ok = check(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr));
      // A group's dispatches, then its outcomes (as a commit of the engine holds the ends of
      // earlier runs and the starts of later ones).
      for (int pass = 0; ok && pass < 2; ++pass) {
        for (std::uint64_t k = 0; ok && k < group; ++k) {
          std::uint64_t uid = order[(next + k) % n];
          std::int64_t slot = now + static_cast<std::int64_t>(k);
          id = std::to_string(uid) + "-" + std::to_string(slot);
          sqlite3_stmt* q = pass == 0 ? dispatch : finish;
          if (pass == 1) ++runs[uid];
          sqlite3_bind_int64(q, 1, static_cast<std::int64_t>(uid));
          sqlite3_bind_int64(q, 2, kAnchor);
          sqlite3_bind_int64(q, 3, slot + 250);
          sqlite3_bind_int64(q, 4, static_cast<std::int64_t>(runs[uid]));
          sqlite3_bind_int64(q, 5, slot);
          sqlite3_bind_int64(q, 6, pass == 0 ? slot - 250 : slot + 1);
          if (pass == 0) {
            sqlite3_bind_text(q, 7, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
            sqlite3_bind_int64(q, 8, slot);
            sqlite3_bind_int64(q, 9, slot);
          }
          ok = check(sqlite3_step(q));
          sqlite3_reset(q);
          if (pass == 0 || !ok) continue;
          sqlite3_bind_int64(history, 1,
                             static_cast<std::int64_t>(uid * 1024 + (runs[uid] - 1) % 20));
          sqlite3_bind_int64(history, 2, static_cast<std::int64_t>(uid));
          sqlite3_bind_text(history, 3, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
          sqlite3_bind_int64(history, 4, slot);
          sqlite3_bind_int64(history, 5, slot);
          sqlite3_bind_int64(history, 6, slot + 1);
          ok = check(sqlite3_step(history));
          sqlite3_reset(history);
        }
      }
      ok = ok && check(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr));
      next += group;
      now += static_cast<std::int64_t>(group);
    }
    if (!ok) break;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kRuns));
  for (sqlite3_stmt* q : {insert, dispatch, finish, history}) sqlite3_finalize(q);
  sqlite3_close(db);
  fs::remove_all(dir);
}
BENCHMARK(BM_RawSqliteSpreadRuns)
    ->Args({100'000, 1000})
    ->Args({100'000, 10'000})
    ->Args({1'000'000, 1000})
    ->Args({1'000'000, 10'000})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(2);

}  // namespace
}  // namespace syncsched::store
