// Tests of the SQLite store on real files, each test in its own temporary directory.
#include "store/sqlite_store.h"
#include "store/cksum_vfs.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "store/store.h"
#include "syncsched/status.h"

namespace syncsched::store {
namespace {

namespace fs = std::filesystem;

SyncRow MakeSync(std::string integration, std::string name, std::int64_t frequency_ms) {
  SyncRow row;
  row.integration = std::move(integration);
  row.name = std::move(name);
  row.frequency_text = "every " + std::to_string(frequency_ms / 1000) + "s";
  row.frequency_ms = frequency_ms;
  row.auto_start = false;
  row.timeout_ms = 3'600'000;
  row.heartbeat_timeout_ms = 60'000;
  return row;
}

ScheduleRow MakeSchedule(std::uint64_t uid, std::string connection, std::string sync = "issues",
                         std::string variant = "base") {
  ScheduleRow row;
  row.uid = uid;
  row.integration = "github";
  row.connection = std::move(connection);
  row.sync = std::move(sync);
  row.variant = std::move(variant);
  row.state = 1;
  row.anchor_ms = 1'700'000'000'000;
  row.frequency_override_ms = 90'000;
  row.next_slot_ms = 1'700'000'090'000;
  row.runs = 12;
  row.failures = 3;
  row.skipped = 4;
  row.last_start_ms = 1'700'000'001'000;
  row.last_finish_ms = 1'700'000'002'000;
  row.last_ok = 0;
  row.last_error = "HTTP 502 from upstream";
  return row;
}

// A finished run, the schedule's run number `number`.
RunRow MakeRun(std::string id, std::uint64_t uid, std::int64_t finished_ms, std::int8_t ok = 1,
               std::uint64_t number = 1) {
  RunRow row;
  row.run_id = std::move(id);
  row.schedule_uid = uid;
  row.number = number;
  row.slot_ms = 1'700'000'000'000 + finished_ms;
  row.mode = 1;
  row.attempt = 2;
  row.started_ms = 1'700'000'000'500;
  row.finished_ms = finished_ms;
  row.ok = ok;
  row.error = ok == 0 ? "boom" : "";
  return row;
}

// Schedule `row` with run `id` in flight.
ScheduleRow WithRunInFlight(ScheduleRow row, std::string id) {
  RunRow& run = row.in_flight;
  run.run_id = std::move(id);
  run.schedule_uid = row.uid;
  run.slot_ms = 1'700'000'000'000;
  run.mode = 1;
  run.attempt = 2;
  run.started_ms = 1'700'000'000'500;
  return row;
}

void ExpectSameSync(const SyncRow& a, const SyncRow& b) {
  EXPECT_EQ(a.integration, b.integration);
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.frequency_text, b.frequency_text);
  EXPECT_EQ(a.frequency_ms, b.frequency_ms);
  EXPECT_EQ(a.auto_start, b.auto_start);
  EXPECT_EQ(a.timeout_ms, b.timeout_ms);
  EXPECT_EQ(a.heartbeat_timeout_ms, b.heartbeat_timeout_ms);
}

void ExpectSameOwedRun(const OwedRun& a, const OwedRun& b, const char* which) {
  SCOPED_TRACE(which);
  EXPECT_EQ(a.run_id, b.run_id);
  EXPECT_EQ(a.slot_ms, b.slot_ms);
  EXPECT_EQ(a.mode, b.mode);
  EXPECT_EQ(a.attempt, b.attempt);
  EXPECT_EQ(a.at_ms, b.at_ms);
  EXPECT_EQ(a.seq, b.seq);
  EXPECT_EQ(a.scheduled, b.scheduled);
}

// Compares every field but update_only (and the key, when `key` is false: update-only rows
// leave it empty).
void ExpectSameSchedule(const ScheduleRow& a, const ScheduleRow& b, bool key = true) {
  SCOPED_TRACE("schedule uid " + std::to_string(b.uid));
  EXPECT_EQ(a.uid, b.uid);
  if (key) {
    EXPECT_EQ(a.integration, b.integration);
    EXPECT_EQ(a.connection, b.connection);
    EXPECT_EQ(a.sync, b.sync);
    EXPECT_EQ(a.variant, b.variant);
  }
  EXPECT_EQ(a.state, b.state);
  EXPECT_EQ(a.anchor_ms, b.anchor_ms);
  EXPECT_EQ(a.frequency_override_ms, b.frequency_override_ms);
  EXPECT_EQ(a.next_slot_ms, b.next_slot_ms);
  EXPECT_EQ(a.runs, b.runs);
  EXPECT_EQ(a.failures, b.failures);
  EXPECT_EQ(a.skipped, b.skipped);
  EXPECT_EQ(a.last_start_ms, b.last_start_ms);
  EXPECT_EQ(a.last_finish_ms, b.last_finish_ms);
  EXPECT_EQ(a.last_ok, b.last_ok);
  EXPECT_EQ(a.last_error, b.last_error);
  EXPECT_EQ(a.in_flight.run_id, b.in_flight.run_id);
  if (!a.in_flight.run_id.empty()) {
    EXPECT_EQ(a.in_flight.schedule_uid, b.in_flight.schedule_uid);
    EXPECT_EQ(a.in_flight.slot_ms, b.in_flight.slot_ms);
    EXPECT_EQ(a.in_flight.mode, b.in_flight.mode);
    EXPECT_EQ(a.in_flight.attempt, b.in_flight.attempt);
    EXPECT_EQ(a.in_flight.started_ms, b.in_flight.started_ms);
  }
  EXPECT_EQ(a.run_seq, b.run_seq);
  EXPECT_EQ(a.pending, b.pending);
  ExpectSameOwedRun(a.waiting, b.waiting, "waiting");
  ExpectSameOwedRun(a.retry, b.retry, "retry");
}

void ExpectSameRun(const RunRow& a, const RunRow& b) {
  EXPECT_EQ(a.run_id, b.run_id);
  EXPECT_EQ(a.schedule_uid, b.schedule_uid);
  EXPECT_EQ(a.slot_ms, b.slot_ms);
  EXPECT_EQ(a.mode, b.mode);
  EXPECT_EQ(a.attempt, b.attempt);
  EXPECT_EQ(a.started_ms, b.started_ms);
  EXPECT_EQ(a.finished_ms, b.finished_ms);
  EXPECT_EQ(a.ok, b.ok);
  EXPECT_EQ(a.error, b.error);
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string RandomBytes(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::string bytes(n, '\0');
  for (char& c : bytes) c = static_cast<char>(gen() & 0xff);
  return bytes;
}

class SqliteStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "syncsched-store-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    path_ = dir_ + "/state.db";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::unique_ptr<Store> OpenOrDie(SqliteStoreOptions options) {
    auto store = OpenSqliteStore(options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(store).value() : nullptr;
  }
  std::unique_ptr<Store> OpenOrDie() { return OpenOrDie(Options()); }
  SqliteStoreOptions Options() const {
    SqliteStoreOptions options;
    options.path = path_;
    // These tests read `schedules` and `history` through a second connection while the store is
    // open: rows written in place (the run journal, on by default, is tested in
    // sqlite_journal_test.cc, and the engine's tests run on it).
    options.journal_from_uid = UINT64_MAX;
    return options;
  }

  Snapshot LoadOrDie(Store& store) {
    auto snap = store.Load();
    EXPECT_TRUE(snap.ok()) << snap.status();
    return snap.ok() ? std::move(snap).value() : Snapshot{};
  }

  // Names of the files in the test directory.
  std::set<std::string> Listing() const {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      names.insert(entry.path().filename().string());
    }
    return names;
  }

  // Reads one integer with a separate, plain SQLite connection.
  std::int64_t QueryInt(const std::string& sql) const {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK)
        << sqlite3_errmsg(db);
    std::int64_t value = -1;
    if (sqlite3_step(stmt) == SQLITE_ROW) value = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return value;
  }

  // Reads one text value with a separate, plain SQLite connection ("<none>" without a row).
  std::string QueryText(const std::string& sql) const {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK)
        << sqlite3_errmsg(db);
    std::string value = "<none>";
    if (sqlite3_step(stmt) == SQLITE_ROW) {
      const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
      value = text != nullptr ? text : "<null>";
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return value;
  }

  // Runs `sql` on the file through SQLite directly, with the store's page checksum VFS (a write
  // without it would leave pages the store refuses as damaged).
  void ExecRaw(const std::string& sql) const {
    sqlite3* db = nullptr;
    std::string error_text;
    std::string vfs = cksum::ShimOver("", &error_text);
    ASSERT_FALSE(vfs.empty()) << error_text;
    ASSERT_EQ(sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                              vfs.c_str()),
              SQLITE_OK);
    char* error = nullptr;
    EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error), SQLITE_OK) << error;
    sqlite3_free(error);
    sqlite3_close(db);
  }

  // A closed store file with a few hundred schedules: several pages.
  void MakeDatabase(int schedules = 500) {
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    Batch batch;
    for (int i = 1; i <= schedules; ++i) {
      batch.schedules.push_back(MakeSchedule(i, "conn-" + std::to_string(i)));
    }
    ASSERT_TRUE(store->Commit(batch).ok());
  }

  // Opening `path_` must fail with `code`, naming the file and containing `cause`, and must leave
  // the directory as it was, byte for byte.
  void ExpectRefused(StatusCode code, const std::string& cause, const std::string& named,
                     SqliteStoreOptions options) {
    auto before = Listing();
    std::string bytes = fs::is_regular_file(path_) ? ReadBytes(path_) : "";
    auto store = OpenSqliteStore(options);
    ASSERT_FALSE(store.ok());
    EXPECT_EQ(store.status().code(), code) << store.status();
    EXPECT_NE(store.status().message().find(named), std::string::npos) << store.status();
    EXPECT_NE(store.status().message().find(cause), std::string::npos) << store.status();
    EXPECT_EQ(Listing(), before);
    if (fs::is_regular_file(path_)) {
      EXPECT_TRUE(ReadBytes(path_) == bytes) << "file changed";
    }
  }
  void ExpectRefused(StatusCode code, const std::string& cause) {
    ExpectRefused(code, cause, path_, Options());
  }

  std::string dir_;
  std::string path_;
};

TEST_F(SqliteStoreTest, EmptyPathIsInvalid) {
  auto store = OpenSqliteStore(SqliteStoreOptions{});
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(SqliteStoreTest, NewFileLoadsEmpty) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Snapshot snap = LoadOrDie(*store);
  EXPECT_TRUE(snap.syncs.empty());
  EXPECT_TRUE(snap.connections.empty());
  EXPECT_TRUE(snap.schedules.empty());
  EXPECT_TRUE(snap.unfinished_runs.empty());
  EXPECT_EQ(snap.max_uid, 0u);
  EXPECT_EQ(QueryInt("PRAGMA user_version"), 5);
  EXPECT_EQ(QueryInt("PRAGMA page_size"), 16384);
  EXPECT_TRUE(store->Commit(Batch{}).ok());
  std::string header = ReadBytes(path_).substr(0, 20);
  EXPECT_EQ(header[18], 2) << "WAL mode";
  EXPECT_EQ(header[19], 2) << "WAL mode";
}

TEST_F(SqliteStoreTest, RoundTripOfEveryRowTypeAcrossReopen) {
  Batch batch;
  batch.syncs = {MakeSync("github", "issues", 1'800'000), MakeSync("slack", "messages", 60'000)};
  batch.connections_added = {{"github", "acme"}, {"slack", "acme"}};
  const std::uint64_t big_uid = (std::uint64_t{1} << 63) + 5;  // above INT64_MAX
  batch.schedules = {WithRunInFlight(MakeSchedule(7, "acme"), "run-in-flight"),
                     WithRunInFlight(MakeSchedule(big_uid, "acme", "pulls", "nightly"), "run-big")};
  batch.schedules[1].state = 0;
  batch.schedules[1].last_ok = -1;
  batch.schedules[1].last_error = "";
  batch.runs = {MakeRun("run-done", 7, 5000)};
  {
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Commit(batch).ok());
  }
  EXPECT_FALSE(fs::exists(path_ + ".lock"));
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.syncs.size(), 2u);
  std::sort(snap.syncs.begin(), snap.syncs.end(),
            [](const SyncRow& a, const SyncRow& b) { return a.integration < b.integration; });
  ExpectSameSync(snap.syncs[0], batch.syncs[0]);
  ExpectSameSync(snap.syncs[1], batch.syncs[1]);
  ASSERT_EQ(snap.connections.size(), 2u);
  EXPECT_EQ(snap.connections[0].integration, "github");
  EXPECT_EQ(snap.connections[0].connection, "acme");
  EXPECT_EQ(snap.connections[1].integration, "slack");
  ASSERT_EQ(snap.schedules.size(), 2u);
  std::sort(snap.schedules.begin(), snap.schedules.end(),
            [](const ScheduleRow& a, const ScheduleRow& b) { return a.uid < b.uid; });
  ExpectSameSchedule(snap.schedules[0], batch.schedules[0]);
  ExpectSameSchedule(snap.schedules[1], batch.schedules[1]);
  // The runs in flight are loaded (the history is not).
  ASSERT_EQ(snap.unfinished_runs.size(), 2u);
  std::sort(snap.unfinished_runs.begin(), snap.unfinished_runs.end(),
            [](const RunRow& a, const RunRow& b) { return a.run_id < b.run_id; });
  ExpectSameRun(snap.unfinished_runs[0], batch.schedules[1].in_flight);
  ExpectSameRun(snap.unfinished_runs[1], batch.schedules[0].in_flight);
  EXPECT_EQ(snap.max_uid, big_uid);
  EXPECT_EQ(QueryInt("SELECT finished_ms FROM history WHERE run_id = 'run-done'"), 5000);
}

TEST_F(SqliteStoreTest, InMemoryRoundTrip) {
  SqliteStoreOptions options;
  options.path = ":memory:";
  auto store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  Batch batch;
  batch.schedules = {WithRunInFlight(MakeSchedule(3, "acme"), "r")};
  ASSERT_TRUE(store->Commit(batch).ok());
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.schedules.size(), 1u);
  ExpectSameSchedule(snap.schedules[0], batch.schedules[0]);
  ASSERT_EQ(snap.unfinished_runs.size(), 1u);
  EXPECT_EQ(snap.max_uid, 3u);
  // A second in-memory store is a separate database, not a second owner.
  auto other = OpenOrDie(options);
  ASSERT_NE(other, nullptr);
  EXPECT_TRUE(LoadOrDie(*other).schedules.empty());
}

TEST_F(SqliteStoreTest, UpsertsReplaceRowsByKey) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch batch;
  batch.syncs = {MakeSync("github", "issues", 60'000)};
  batch.connections_added = {{"github", "acme"}};
  batch.schedules = {WithRunInFlight(MakeSchedule(1, "acme"), "r1")};
  ASSERT_TRUE(store->Commit(batch).ok());

  Batch update;
  update.syncs = {MakeSync("github", "issues", 120'000)};
  update.syncs[0].auto_start = true;
  update.connections_added = {{"github", "acme"}};  // already there: left as is
  update.schedules = {MakeSchedule(1, "acme")};     // r1 is no longer in flight
  update.schedules[0].state = 0;
  update.schedules[0].runs = 13;
  update.schedules[0].last_error = "other";
  update.runs = {MakeRun("r1", 1, 9000, 0)};
  ASSERT_TRUE(store->Commit(update).ok());

  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.syncs.size(), 1u);
  ExpectSameSync(snap.syncs[0], update.syncs[0]);
  EXPECT_EQ(snap.connections.size(), 1u);
  ASSERT_EQ(snap.schedules.size(), 1u);
  ExpectSameSchedule(snap.schedules[0], update.schedules[0]);
  EXPECT_TRUE(snap.unfinished_runs.empty());
  // A failed run takes its ring place and the failure place.
  EXPECT_EQ(QueryInt("SELECT count(*) FROM history"), 2);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM history WHERE run_id = 'r1' AND finished_ms = 9000"), 2);

  Batch remove;
  remove.connections_deleted = {{"github", "acme"}};
  ASSERT_TRUE(store->Commit(remove).ok());
  EXPECT_TRUE(LoadOrDie(*store).connections.empty());
}

TEST_F(SqliteStoreTest, SchedulesDeletedRemovesRowsAndTheirRuns) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch batch;
  batch.schedules = {WithRunInFlight(MakeSchedule(1, "acme"), "a2"), MakeSchedule(2, "globex")};
  batch.runs = {MakeRun("a1", 1, 100), MakeRun("b1", 2, 100)};
  ASSERT_TRUE(store->Commit(batch).ok());

  // Delete uid 1 and re-create its key under a new uid in the same batch; also create and delete
  // uid 4 in the same batch (deletion wins: uids are never reused).
  Batch change;
  change.schedules_deleted = {1, 4};
  change.schedules = {WithRunInFlight(MakeSchedule(3, "acme"), "c1"),
                      WithRunInFlight(MakeSchedule(4, "initech"), "d1")};
  change.runs = {MakeRun("d0", 4, 100)};
  ASSERT_TRUE(store->Commit(change).ok()) << store->Commit(change);

  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.schedules.size(), 2u);
  EXPECT_EQ(snap.schedules[0].uid, 2u);
  EXPECT_EQ(snap.schedules[1].uid, 3u);
  ASSERT_EQ(snap.unfinished_runs.size(), 1u);
  EXPECT_EQ(snap.unfinished_runs[0].run_id, "c1");
  EXPECT_EQ(QueryInt("SELECT count(*) FROM history WHERE schedule_uid IN (1, 4)"), 0);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM history"), 1);
  EXPECT_EQ(snap.max_uid, 3u);
}

TEST_F(SqliteStoreTest, FailedBatchAppliesNothing) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch first;
  first.syncs = {MakeSync("github", "issues", 60'000)};
  first.schedules = {MakeSchedule(1, "acme")};
  ASSERT_TRUE(store->Commit(first).ok());

  // Everything valid but the last schedule, which takes uid 1's key under another uid.
  Batch bad;
  bad.syncs = {MakeSync("github", "issues", 999'000), MakeSync("github", "pulls", 60'000)};
  bad.connections_added = {{"github", "globex"}};
  bad.connections_deleted = {{"github", "acme"}};
  for (int uid = 10; uid < 110; ++uid) {
    bad.schedules.push_back(MakeSchedule(uid, "globex-" + std::to_string(uid)));
  }
  bad.schedules.push_back(MakeSchedule(2, "acme"));
  bad.runs = {MakeRun("r", 10, 100)};
  Status status = store->Commit(bad);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kInternal) << status;
  EXPECT_NE(status.message().find("UNIQUE"), std::string::npos) << status;
  EXPECT_NE(status.message().find("uid 2"), std::string::npos) << status;
  EXPECT_NE(status.message().find(path_), std::string::npos) << status;
  EXPECT_NE(status.message().find("nothing of it is applied"), std::string::npos) << status;

  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.syncs.size(), 1u);
  EXPECT_EQ(snap.syncs[0].frequency_ms, 60'000);
  EXPECT_TRUE(snap.connections.empty());
  ASSERT_EQ(snap.schedules.size(), 1u);
  EXPECT_TRUE(snap.unfinished_runs.empty());
  EXPECT_EQ(snap.max_uid, 1u);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM history"), 0);

  // The store stays usable, and max_uid was not advanced by the failed batch.
  Batch next;
  next.schedules = {MakeSchedule(5, "initech")};
  ASSERT_TRUE(store->Commit(next).ok());
  EXPECT_EQ(LoadOrDie(*store).max_uid, 5u);
}

TEST_F(SqliteStoreTest, MaxUidSurvivesDeletingEverySchedule) {
  {
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    Batch batch;
    batch.schedules = {MakeSchedule(9, "acme"), MakeSchedule(4, "globex")};
    ASSERT_TRUE(store->Commit(batch).ok());
    Batch remove;
    remove.schedules_deleted = {9, 4};
    ASSERT_TRUE(store->Commit(remove).ok());
    // A lower uid does not lower max_uid.
    Batch lower;
    lower.schedules = {MakeSchedule(2, "initech")};
    ASSERT_TRUE(store->Commit(lower).ok());
  }
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Snapshot snap = LoadOrDie(*store);
  EXPECT_EQ(snap.schedules.size(), 1u);
  EXPECT_EQ(snap.max_uid, 9u);
}

// Finished run ids of schedule `uid` in its history, newest first (the failure place repeats a
// run that may also hold a ring place: each id is listed once).
std::vector<std::string> FinishedRuns(const std::string& path, std::uint64_t uid) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  std::string sql = "SELECT run_id FROM history WHERE schedule_uid = " + std::to_string(uid) +
                    " GROUP BY run_id ORDER BY max(finished_ms) DESC";
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK);
  std::vector<std::string> ids;
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    ids.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)));
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return ids;
}

TEST_F(SqliteStoreTest, HistoryKeepsNewestRunsAndNewestFailure) {
  SqliteStoreOptions options = Options();
  options.history_per_schedule = 3;
  auto store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  Batch setup;
  setup.schedules = {WithRunInFlight(MakeSchedule(1, "acme"), "in-flight"),
                     MakeSchedule(2, "globex")};
  ASSERT_TRUE(store->Commit(setup).ok());

  // Run 2 fails; runs 1..10 finish one per commit; then 11..30 in one batch.
  for (int i = 1; i <= 10; ++i) {
    Batch batch;
    batch.runs = {MakeRun("r" + std::to_string(i), 1, 1000 + i, i == 2 ? 0 : 1, i)};
    ASSERT_TRUE(store->Commit(batch).ok());
    EXPECT_LE(FinishedRuns(path_, 1).size(), 4u) << "after run " << i;
  }
  EXPECT_EQ(FinishedRuns(path_, 1), (std::vector<std::string>{"r10", "r9", "r8", "r2"}));
  Batch many;
  for (int i = 11; i <= 30; ++i) {
    many.runs.push_back(MakeRun("r" + std::to_string(i), 1, 1000 + i, 1, i));
  }
  many.runs.push_back(MakeRun("x1", 2, 50));
  ASSERT_TRUE(store->Commit(many).ok());
  EXPECT_EQ(FinishedRuns(path_, 1), (std::vector<std::string>{"r30", "r29", "r28", "r2"}));
  EXPECT_EQ(FinishedRuns(path_, 2), (std::vector<std::string>{"x1"}));
  // A newer failure replaces the older one.
  Batch failure;
  failure.runs = {MakeRun("r31", 1, 1031, 0, 31)};
  ASSERT_TRUE(store->Commit(failure).ok());
  EXPECT_EQ(FinishedRuns(path_, 1), (std::vector<std::string>{"r31", "r30", "r29"}));
  EXPECT_EQ(QueryInt("SELECT count(*) FROM history WHERE schedule_uid = 1"), 4)
      << "3 places and the failure place";
  // The run in flight is part of the schedule's row, untouched by the history.
  EXPECT_EQ(LoadOrDie(*store).unfinished_runs.size(), 1u);
  store.reset();

  // After a reopen the ring goes on where it was.
  store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  Batch after;
  after.runs = {MakeRun("r32", 1, 1032, 1, 32), MakeRun("r33", 1, 1033, 1, 33)};
  ASSERT_TRUE(store->Commit(after).ok());
  EXPECT_EQ(FinishedRuns(path_, 1), (std::vector<std::string>{"r33", "r32", "r31"}));
  EXPECT_EQ(LoadOrDie(*store).unfinished_runs.size(), 1u);
}

TEST_F(SqliteStoreTest, HistoryWithoutFailuresKeepsExactlyTheBound) {
  SqliteStoreOptions options = Options();
  options.history_per_schedule = 2;
  auto store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  Batch setup;
  setup.schedules = {MakeSchedule(1, "acme")};
  ASSERT_TRUE(store->Commit(setup).ok());
  for (int i = 1; i <= 5; ++i) {
    Batch batch;
    batch.runs = {MakeRun("r" + std::to_string(i), 1, 1000 + i, 1, i)};
    ASSERT_TRUE(store->Commit(batch).ok());
    EXPECT_EQ(FinishedRuns(path_, 1).size(), std::min<std::size_t>(i, 2)) << "after run " << i;
  }
  EXPECT_EQ(FinishedRuns(path_, 1), (std::vector<std::string>{"r5", "r4"}));
}

TEST_F(SqliteStoreTest, HistoryBoundHoldsAfterAFailedCommit) {
  SqliteStoreOptions options = Options();
  options.history_per_schedule = 2;
  auto store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  Batch setup;
  setup.schedules = {MakeSchedule(1, "acme")};
  ASSERT_TRUE(store->Commit(setup).ok());
  for (int i = 1; i <= 3; ++i) {
    Batch batch;
    batch.runs = {MakeRun("r" + std::to_string(i), 1, 1000 + i, 1, i)};
    ASSERT_TRUE(store->Commit(batch).ok());
  }
  Batch bad;
  bad.schedules = {MakeSchedule(2, "acme")};  // key of uid 1
  ASSERT_FALSE(store->Commit(bad).ok());
  for (int i = 4; i <= 6; ++i) {
    Batch batch;
    batch.runs = {MakeRun("r" + std::to_string(i), 1, 1000 + i, 1, i)};
    ASSERT_TRUE(store->Commit(batch).ok());
  }
  EXPECT_EQ(FinishedRuns(path_, 1), (std::vector<std::string>{"r6", "r5"}));
}

TEST_F(SqliteStoreTest, SecondOwnerInTheSameProcessIsRefused) {
  auto first = OpenOrDie();
  ASSERT_NE(first, nullptr);
  auto second = OpenSqliteStore(Options());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find(path_), std::string::npos) << second.status();
  EXPECT_NE(second.status().message().find("is in use by another syncsched engine"),
            std::string::npos)
      << second.status();
  EXPECT_NE(second.status().message().find(std::to_string(::getpid())), std::string::npos)
      << second.status();
  // The refused open did not disturb the owner.
  Batch batch;
  batch.schedules = {MakeSchedule(1, "acme")};
  EXPECT_TRUE(first->Commit(batch).ok());
  first.reset();
  auto third = OpenOrDie();
  ASSERT_NE(third, nullptr);
  EXPECT_EQ(LoadOrDie(*third).schedules.size(), 1u);
}

TEST_F(SqliteStoreTest, WaitForOwnerWaitsThenSucceedsOrGivesUp) {
  auto first = OpenOrDie();
  ASSERT_NE(first, nullptr);
  SqliteStoreOptions options = Options();
  options.wait_for_owner = std::chrono::milliseconds(100);
  auto start = std::chrono::steady_clock::now();
  auto refused = OpenSqliteStore(options);
  EXPECT_FALSE(refused.ok());
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(100));

  options.wait_for_owner = std::chrono::seconds(10);
  std::thread closer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    first.reset();
  });
  auto second = OpenSqliteStore(options);
  closer.join();
  EXPECT_TRUE(second.ok()) << second.status();
}

TEST_F(SqliteStoreTest, SecondOwnerInAnotherProcessIsRefused) {
  auto first = OpenOrDie();
  ASSERT_NE(first, nullptr);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto second = OpenSqliteStore(Options());
    int code = 0;
    if (second.ok()) {
      code = 1;
    } else if (!second.status().IsUnavailable() ||
               second.status().message().find("in use by another syncsched engine") ==
                   std::string::npos) {
      code = 2;
    }
    ::_exit(code);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFEXITED(wstatus));
  EXPECT_EQ(WEXITSTATUS(wstatus), 0) << "1: the child opened the file; 2: wrong error";

  // Once the owner is gone, another process may open it.
  first.reset();
  child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(OpenSqliteStore(Options()).ok() ? 0 : 1);
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  EXPECT_EQ(WEXITSTATUS(wstatus), 0);
}

TEST_F(SqliteStoreTest, DirectoryAtThePathIsRefused) {
  fs::create_directory(path_);
  ExpectRefused(StatusCode::kUnavailable, "is a directory");
}

TEST_F(SqliteStoreTest, PathInsideAFileIsRefused) {
  std::string plain = dir_ + "/plain";
  WriteBytes(plain, "not a directory");
  SqliteStoreOptions options;
  options.path = plain + "/state.db";
  ExpectRefused(StatusCode::kUnavailable, "Not a directory", options.path, options);
  EXPECT_EQ(ReadBytes(plain), "not a directory");
}

TEST_F(SqliteStoreTest, MissingDirectoryIsRefused) {
  SqliteStoreOptions options;
  options.path = dir_ + "/unmounted/state.db";
  ExpectRefused(StatusCode::kUnavailable, "No such file or directory", options.path, options);
  EXPECT_FALSE(fs::exists(dir_ + "/unmounted"));
}

TEST_F(SqliteStoreTest, RandomBytesAreRefused) {
  WriteBytes(path_, RandomBytes(64 * 1024, 1));
  ExpectRefused(StatusCode::kInternal, "not a syncsched database or is corrupt");
}

TEST_F(SqliteStoreTest, RandomBytesAfterAnSqliteHeaderAreRefused) {
  std::string bytes = RandomBytes(64 * 1024, 2);
  std::string magic("SQLite format 3\0", 16);
  bytes.replace(0, magic.size(), magic);
  WriteBytes(path_, bytes);
  ExpectRefused(StatusCode::kInternal, "not a syncsched database or is corrupt");
}

TEST_F(SqliteStoreTest, ShortFileIsRefused) {
  WriteBytes(path_, "SQLite");
  ExpectRefused(StatusCode::kInternal, "not a syncsched database or is corrupt");
}

TEST_F(SqliteStoreTest, TruncatedDatabaseIsRefused) {
  MakeDatabase();
  ASSERT_FALSE(fs::exists(path_ + "-wal"));
  std::string bytes = ReadBytes(path_);
  ASSERT_GT(bytes.size(), 16u * 1024);
  WriteBytes(path_, bytes.substr(0, bytes.size() / 2));
  ExpectRefused(StatusCode::kInternal, "truncated");
}

TEST_F(SqliteStoreTest, CorruptPagesAreFoundByVerifyOrByLoad) {
  MakeDatabase(2000);
  std::string bytes = ReadBytes(path_);
  ASSERT_GT(bytes.size(), 64u * 1024);
  // Overwrite a page of the schedules table (which Load reads; the index on the key it does not)
  // in the middle of the file, keeping the size: the page of a row's last_error, which only
  // table rows hold.
  constexpr std::size_t kPage = 16 * 1024;
  std::size_t row = bytes.find("HTTP 502 from upstream", bytes.size() / 2);
  ASSERT_NE(row, std::string::npos);
  bytes.replace(row / kPage * kPage, kPage, RandomBytes(kPage, 3));
  WriteBytes(path_, bytes);
  SqliteStoreOptions options = Options();
  options.verify_on_open = true;
  ExpectRefused(StatusCode::kInternal, "not a syncsched database or is corrupt", path_, options);
  // Without the check, the open succeeds and Load reports the corruption.
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  auto snap = store->Load();
  ASSERT_FALSE(snap.ok());
  EXPECT_EQ(snap.status().code(), StatusCode::kInternal) << snap.status();
  EXPECT_NE(snap.status().message().find(path_), std::string::npos) << snap.status();
}

TEST_F(SqliteStoreTest, NewerSchemaIsRefused) {
  MakeDatabase(10);
  ExecRaw("PRAGMA user_version = 6");
  ExpectRefused(StatusCode::kFailedPrecondition, "schema version 6, newer than version 5");
  ExecRaw("PRAGMA user_version = 7");
  ExpectRefused(StatusCode::kFailedPrecondition, "schema version 7, newer than version 5");
}

// A newer engine crashed (or closed without a checkpoint): its schema change is only in the WAL.
// The refusal must read it there, and must not checkpoint it into the file.
TEST_F(SqliteStoreTest, NewerSchemaInAnUncheckpointedWalIsRefused) {
  MakeDatabase(10);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version = 8", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  ASSERT_GT(fs::file_size(path_ + "-wal"), 0u);
  std::string wal = ReadBytes(path_ + "-wal");
  ExpectRefused(StatusCode::kFailedPrecondition, "schema version 8, newer than version 5");
  EXPECT_TRUE(ReadBytes(path_ + "-wal") == wal) << "WAL changed";
}

TEST_F(SqliteStoreTest, OtherApplicationsDatabaseIsRefused) {
  ExecRaw("CREATE TABLE invoices(id INTEGER PRIMARY KEY, amount INTEGER)");
  ExpectRefused(StatusCode::kFailedPrecondition, "another application");
}

TEST_F(SqliteStoreTest, MissingTableIsRefused) {
  MakeDatabase(10);
  ExecRaw("DROP TABLE history");
  ExpectRefused(StatusCode::kInternal, "without table 'history'");
}

// syncsched never leaves an empty database file (a new one is linked into place whole), so an empty
// file lost its contents: refused, never taken as a new database.
TEST_F(SqliteStoreTest, EmptyFileIsRefused) {
  WriteBytes(path_, "");
  ExpectRefused(StatusCode::kInternal, "the file is empty (0 bytes)");
  EXPECT_EQ(fs::file_size(path_), 0u);
}

TEST_F(SqliteStoreTest, FullDiskFailsTheCommitAndAppliesNothing) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch first;
  first.schedules = {MakeSchedule(1, "acme")};
  ASSERT_TRUE(store->Commit(first).ok());
  auto pages = internal::PageCountForTest(*store);
  ASSERT_TRUE(pages.ok()) << pages.status();
  ASSERT_TRUE(internal::SetMaxPageCountForTest(*store, *pages + 2).ok());

  Batch big;
  for (int uid = 2; uid < 5000; ++uid) {
    big.schedules.push_back(MakeSchedule(uid, "conn-" + std::to_string(uid)));
    big.runs.push_back(MakeRun("run-" + std::to_string(uid), uid, uid, 0));
  }
  Status status = store->Commit(big);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status;
  EXPECT_NE(status.message().find("database or disk is full"), std::string::npos) << status;
  EXPECT_NE(status.message().find(path_), std::string::npos) << status;

  Snapshot snap = LoadOrDie(*store);
  EXPECT_EQ(snap.schedules.size(), 1u);
  EXPECT_EQ(snap.max_uid, 1u);
  // Space comes back: the same store commits the same batch.
  ASSERT_TRUE(internal::SetMaxPageCountForTest(*store, 1 << 30).ok());
  ASSERT_TRUE(store->Commit(big).ok());
  store.reset();
  store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  snap = LoadOrDie(*store);
  EXPECT_EQ(snap.schedules.size(), 4999u);
  EXPECT_EQ(snap.max_uid, 4999u);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM history"), 2 * 4998) << "ring and failure places";
}

TEST_F(SqliteStoreTest, ABatchWithAnUnfinishedRunIsRefused) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch batch;
  batch.schedules = {MakeSchedule(1, "acme")};
  batch.runs = {MakeRun("r1", 1, 0)};
  Status status = store->Commit(batch);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kInternal) << status;
  EXPECT_NE(status.message().find("run r1 of schedule uid 1"), std::string::npos) << status;
  EXPECT_NE(status.message().find("not a finished run"), std::string::npos) << status;
  EXPECT_TRUE(LoadOrDie(*store).schedules.empty());
}

TEST_F(SqliteStoreTest, TooLongAHistoryIsInvalid) {
  SqliteStoreOptions options = Options();
  options.history_per_schedule = 1001;
  auto store = OpenSqliteStore(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(store.status().message().find("history_per_schedule is 1001"), std::string::npos)
      << store.status();
  EXPECT_FALSE(fs::exists(path_));
}

TEST_F(SqliteStoreTest, AShorterHistoryTrimsTheFileAtOpenAndALongerOneGrows) {
  SqliteStoreOptions options = Options();
  options.history_per_schedule = 5;
  {
    auto store = OpenOrDie(options);
    ASSERT_NE(store, nullptr);
    Batch batch;
    batch.schedules = {MakeSchedule(1, "acme")};
    for (int i = 1; i <= 7; ++i) {
      batch.runs.push_back(MakeRun("r" + std::to_string(i), 1, 1000 + i, i == 1 ? 0 : 1, i));
    }
    ASSERT_TRUE(store->Commit(batch).ok());
  }
  EXPECT_EQ(FinishedRuns(path_, 1), (std::vector<std::string>{"r7", "r6", "r5", "r4", "r3", "r1"}));
  options.history_per_schedule = 2;
  {
    auto store = OpenOrDie(options);
    ASSERT_NE(store, nullptr);
  }
  // Places 0 and 1 (runs 6 and 7) stay, and the failure place.
  EXPECT_EQ(FinishedRuns(path_, 1), (std::vector<std::string>{"r7", "r6", "r1"}));
  options.history_per_schedule = 4;
  auto store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  Batch more;
  for (int i = 8; i <= 12; ++i)
    more.runs.push_back(MakeRun("r" + std::to_string(i), 1, 1000 + i, 1, i));
  ASSERT_TRUE(store->Commit(more).ok());
  EXPECT_EQ(FinishedRuns(path_, 1), (std::vector<std::string>{"r12", "r11", "r10", "r9", "r1"}));
}

TEST_F(SqliteStoreTest, SynchronousFullIsApplied) {
  SqliteStoreOptions options = Options();
  options.synchronous_full = true;
  auto store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  Batch batch;
  batch.schedules = {MakeSchedule(1, "acme")};
  EXPECT_TRUE(store->Commit(batch).ok());
  store.reset();
  EXPECT_EQ(LoadOrDie(*OpenOrDie()).schedules.size(), 1u);
}

}  // namespace
}  // namespace syncsched::store

namespace syncsched::store {
namespace {

// Schema version 1 as released (migration steps are never edited, so this copy stays valid).
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE meta(key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta(key, value) VALUES ('max_uid', 7);
CREATE TABLE syncs(integration TEXT NOT NULL, name TEXT NOT NULL, frequency_text TEXT NOT NULL,
  frequency_ms INTEGER NOT NULL, auto_start INTEGER NOT NULL, timeout_ms INTEGER NOT NULL,
  heartbeat_timeout_ms INTEGER NOT NULL, PRIMARY KEY (integration, name)) WITHOUT ROWID;
CREATE TABLE connections(integration TEXT NOT NULL, connection TEXT NOT NULL,
  PRIMARY KEY (integration, connection)) WITHOUT ROWID;
CREATE TABLE schedules(uid INTEGER PRIMARY KEY, integration TEXT NOT NULL,
  connection TEXT NOT NULL, sync TEXT NOT NULL, variant TEXT NOT NULL, state INTEGER NOT NULL,
  anchor_ms INTEGER NOT NULL, frequency_override_ms INTEGER NOT NULL,
  next_slot_ms INTEGER NOT NULL, runs INTEGER NOT NULL, failures INTEGER NOT NULL,
  skipped INTEGER NOT NULL, last_start_ms INTEGER NOT NULL, last_finish_ms INTEGER NOT NULL,
  last_ok INTEGER NOT NULL, last_error TEXT NOT NULL);
CREATE UNIQUE INDEX schedules_by_key ON schedules(integration, connection, sync, variant);
CREATE TABLE runs(run_id TEXT PRIMARY KEY NOT NULL, schedule_uid INTEGER NOT NULL,
  slot_ms INTEGER NOT NULL, mode INTEGER NOT NULL, attempt INTEGER NOT NULL,
  started_ms INTEGER NOT NULL, finished_ms INTEGER NOT NULL, ok INTEGER NOT NULL,
  error TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX runs_by_schedule ON runs(schedule_uid, finished_ms, run_id, ok);
CREATE INDEX runs_in_flight ON runs(schedule_uid) WHERE finished_ms = 0;
INSERT INTO syncs VALUES ('github', 'issues', 'every 1h', 3600000, 1, 0, 0);
INSERT INTO connections VALUES ('github', 'acme');
PRAGMA user_version = 1;
)sql";

TEST_F(SqliteStoreTest, AVersionOneDatabaseIsMigratedKeepingItsRows) {
  ExecRaw(kSchemaV1);
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(QueryInt("PRAGMA user_version"), 5);
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.syncs.size(), 1u);
  EXPECT_EQ(snap.syncs[0].name, "issues");
  EXPECT_EQ(snap.syncs[0].frequency_ms, 3600000);
  EXPECT_EQ(snap.syncs[0].policy, "") << "the new column's default";
  ASSERT_EQ(snap.connections.size(), 1u);
  EXPECT_EQ(snap.max_uid, 7u);
  EXPECT_TRUE(snap.integrations.empty());
  // The new parts of the schema work.
  Batch batch;
  batch.integrations.push_back({"github", 3});
  SyncRow sync = snap.syncs[0];
  sync.policy = "retry_max=2";
  batch.syncs.push_back(sync);
  ASSERT_TRUE(store->Commit(batch).ok());
  snap = LoadOrDie(*store);
  ASSERT_EQ(snap.integrations.size(), 1u);
  EXPECT_EQ(snap.integrations[0].max_concurrency, 3u);
  EXPECT_EQ(snap.syncs[0].policy, "retry_max=2");
}

// A version 2 file with run rows: version 1 plus migration 2 (as released).
constexpr const char* kToVersion2 = R"sql(
ALTER TABLE syncs ADD COLUMN policy TEXT NOT NULL DEFAULT '';
CREATE TABLE integrations(integration TEXT PRIMARY KEY NOT NULL,
  max_concurrency INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO schedules VALUES (3, 'github', 'acme', 'issues', '', 1, 1000, 0, 3601000, 25, 2, 0,
  1000, 2000, 1, '');
INSERT INTO schedules VALUES (5, 'github', 'globex', 'issues', '', 1, 1000, 0, 3601000, 0, 0, 0,
  0, 0, -1, '');
PRAGMA user_version = 2;
)sql";

TEST_F(SqliteStoreTest, AVersionTwoDatabaseMovesItsRunsToTheScheduleRowsAndTheHistory) {
  ExecRaw(kSchemaV1);
  ExecRaw(kToVersion2);
  // Schedule 3: 25 finished runs (2 and 3 failed) and one in flight; schedule 5: one in flight.
  std::string runs;
  for (int i = 1; i <= 25; ++i) {
    runs += "INSERT INTO runs VALUES ('3-" + std::to_string(i) + "', 3, " + std::to_string(i) +
            ", 0, 1, " + std::to_string(i) + ", " + std::to_string(1000 + i) + ", " +
            (i == 2 || i == 3 ? "0, 'boom'" : "1, ''") + ");";
  }
  runs += "INSERT INTO runs VALUES ('3-26', 3, 26, 1, 2, 1026, 0, -1, '');";
  runs += "INSERT INTO runs VALUES ('5-1', 5, 1, 0, 1, 1001, 0, -1, '');";
  ExecRaw(runs);

  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(QueryInt("PRAGMA user_version"), 5);
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.unfinished_runs.size(), 2u);
  EXPECT_EQ(snap.unfinished_runs[0].run_id, "3-26");
  EXPECT_EQ(snap.unfinished_runs[0].schedule_uid, 3u);
  EXPECT_EQ(snap.unfinished_runs[0].slot_ms, 26);
  EXPECT_EQ(snap.unfinished_runs[0].mode, 1);
  EXPECT_EQ(snap.unfinished_runs[0].attempt, 2);
  EXPECT_EQ(snap.unfinished_runs[0].started_ms, 1026);
  EXPECT_EQ(snap.unfinished_runs[1].run_id, "5-1");
  ASSERT_EQ(snap.schedules.size(), 2u);
  EXPECT_EQ(snap.schedules[0].in_flight.run_id, "3-26");
  // The newest 20 finished runs and the newest failure.
  std::vector<std::string> expected;
  for (int i = 25; i >= 6; --i) expected.push_back("3-" + std::to_string(i));
  expected.push_back("3-3");
  EXPECT_EQ(FinishedRuns(path_, 3), expected);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM sqlite_schema WHERE name = 'runs'"), 0);
  // The ring goes on from the migrated history: run 26 finishes.
  Batch batch;
  batch.runs = {MakeRun("3-26", 3, 1026, 1, 26)};
  ASSERT_TRUE(store->Commit(batch).ok());
  EXPECT_EQ(QueryInt("SELECT count(*) FROM history WHERE schedule_uid = 3"), 21);
  // Run 26 took the place of run 6, the oldest, as if the history had always been a ring.
  expected.pop_back();  // 3-3, the failure
  expected.pop_back();  // 3-6
  expected.insert(expected.begin(), "3-26");
  expected.push_back("3-3");
  EXPECT_EQ(FinishedRuns(path_, 3), expected);
}

// ---- Schema v4: the runs a schedule owes ----

OwedRun MakeOwed(std::string id, std::int64_t offset) {
  OwedRun run;
  run.run_id = std::move(id);
  run.slot_ms = 1'700'000'000'000 + offset;
  run.mode = 1;
  run.attempt = 3;
  run.at_ms = 1'700'000'000'500 + offset;
  run.seq = 42 + static_cast<std::uint64_t>(offset);
  run.scheduled = true;
  return run;
}

// `row` as the engine sends a new version of a stored row: update_only, without its key.
ScheduleRow UpdateOnly(ScheduleRow row) {
  row.update_only = true;
  row.integration.clear();
  row.connection.clear();
  row.sync.clear();
  row.variant.clear();
  return row;
}

TEST_F(SqliteStoreTest, OwedRunsRoundTripThroughNewAndUpdateOnlyRows) {
  std::vector<ScheduleRow> rows;
  ScheduleRow& nothing = rows.emplace_back(MakeSchedule(1, "acme"));  // the common row
  nothing.run_seq = 5;
  ScheduleRow& pending = rows.emplace_back(WithRunInFlight(MakeSchedule(2, "globex"), "2-7"));
  pending.run_seq = 7;
  pending.pending = 2;  // 1 + kFullResync: a resync to run once 2-7 ends
  ScheduleRow& waiting = rows.emplace_back(MakeSchedule(3, "initech"));
  waiting.waiting = MakeOwed("3-1700000000000", 0);
  ScheduleRow& retry = rows.emplace_back(MakeSchedule(4, "umbrella"));
  retry.retry = MakeOwed("4-x2", 60'000);
  retry.retry.scheduled = false;
  ScheduleRow& extremes = rows.emplace_back(MakeSchedule(5, "hooli"));
  extremes.run_seq = UINT64_MAX;
  extremes.pending = 255;
  extremes.waiting = MakeOwed(std::string("w\0\xff\n'", 5), 0);  // any bytes
  extremes.waiting.slot_ms = INT64_MIN;
  extremes.waiting.mode = 255;
  extremes.waiting.attempt = INT32_MIN;
  extremes.waiting.at_ms = INT64_MAX;
  extremes.waiting.seq = UINT64_MAX;
  extremes.retry = MakeOwed(std::string(3000, 'r'), 1);
  extremes.retry.slot_ms = -1;
  extremes.retry.attempt = INT32_MAX;
  extremes.retry.seq = 0;
  {
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    Batch batch;
    batch.schedules = rows;
    ASSERT_TRUE(store->Commit(batch).ok());
  }
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.schedules.size(), rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) ExpectSameSchedule(snap.schedules[i], rows[i]);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM schedules WHERE owed IS NULL"), 1)
      << "a row that owes nothing stores NULL";
  EXPECT_EQ(QueryText("SELECT typeof(owed) FROM schedules WHERE uid = 2"), "blob");

  // Update-only rows: every field is written again; owed runs come, change and go.
  rows[0].waiting = MakeOwed("1-9", 5);  // starts owing
  rows[0].run_seq = 6;
  rows[1].pending = 0;  // owes nothing any more
  rows[1].in_flight = RunRow{};
  rows[1].run_seq = 8;
  rows[2].waiting = OwedRun{};  // the waiting run went; a retry came
  rows[2].retry = MakeOwed("3-r", 7);
  rows[3].pending = 1;
  rows[3].retry.attempt = 4;
  rows[3].retry.at_ms += 120'000;
  rows[4].run_seq = 0;  // everything back to empty
  rows[4].pending = 0;
  rows[4].waiting = OwedRun{};
  rows[4].retry = OwedRun{};
  Batch update;
  for (const ScheduleRow& row : rows) update.schedules.push_back(UpdateOnly(row));
  ASSERT_TRUE(store->Commit(update).ok());
  snap = LoadOrDie(*store);
  ASSERT_EQ(snap.schedules.size(), rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) ExpectSameSchedule(snap.schedules[i], rows[i]);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM schedules WHERE owed IS NULL"), 2);

  // Full rows of stored schedules (the update without update_only), and a new schedule in the
  // same batch (the upsert).
  rows[1].pending = 1;
  rows[4].retry = MakeOwed("5-3", 9);
  ScheduleRow fresh = MakeSchedule(6, "wayne");
  fresh.run_seq = 1;
  fresh.waiting = MakeOwed("6-1", 11);
  rows.push_back(fresh);
  Batch full;
  full.schedules = {rows[1], rows[4], rows[5]};
  ASSERT_TRUE(store->Commit(full).ok());
  store.reset();
  store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  snap = LoadOrDie(*store);
  ASSERT_EQ(snap.schedules.size(), rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) ExpectSameSchedule(snap.schedules[i], rows[i]);
}

TEST_F(SqliteStoreTest, InMemoryStoreKeepsOwedRuns) {
  SqliteStoreOptions options;
  options.path = ":memory:";
  auto store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  Batch batch;
  batch.schedules = {MakeSchedule(3, "acme")};
  batch.schedules[0].run_seq = 9;
  batch.schedules[0].retry = MakeOwed("3-9", 0);
  ASSERT_TRUE(store->Commit(batch).ok());
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.schedules.size(), 1u);
  ExpectSameSchedule(snap.schedules[0], batch.schedules[0]);
}

std::string LittleEndian(std::uint64_t value, int bytes) {
  std::string out;
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
  return out;
}

std::string Hex(const std::string& bytes) {
  static constexpr char kDigits[] = "0123456789ABCDEF";
  std::string out;
  for (char c : bytes) {
    out.push_back(kDigits[(static_cast<unsigned char>(c) >> 4) & 0xf]);
    out.push_back(kDigits[static_cast<unsigned char>(c) & 0xf]);
  }
  return out;
}

// The waiting run of OwedEncodingIsPinned, encoded by hand.
std::string PinnedWaitingRun(std::uint32_t id_size = 2, std::uint8_t scheduled = 1) {
  return LittleEndian(id_size, 4) + std::string("ab").substr(0, id_size) +
         LittleEndian(0x0102030405060708, 8) + LittleEndian(9, 1) +
         LittleEndian(static_cast<std::uint32_t>(-2), 4) + LittleEndian(1, 8) + LittleEndian(2, 8) +
         LittleEndian(scheduled, 1);
}

// The encoding is on disk: a change to it must be a new format (a new first byte), which the
// store reads beside the old one.
TEST_F(SqliteStoreTest, OwedEncodingIsPinned) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch batch;
  ScheduleRow row = MakeSchedule(7, "acme");
  row.pending = 3;
  row.waiting.run_id = "ab";
  row.waiting.slot_ms = 0x0102030405060708;
  row.waiting.mode = 9;
  row.waiting.attempt = -2;
  row.waiting.at_ms = 1;
  row.waiting.seq = 2;
  row.waiting.scheduled = true;
  batch.schedules = {row};
  ASSERT_TRUE(store->Commit(batch).ok());
  EXPECT_EQ(QueryText("SELECT hex(owed) FROM schedules WHERE uid = 7"),
            "010301" + Hex(PinnedWaitingRun()));
  // A retry alone, and both.
  row.pending = 0;
  row.retry = row.waiting;
  row.waiting = OwedRun{};
  batch.schedules = {UpdateOnly(row)};
  ASSERT_TRUE(store->Commit(batch).ok());
  EXPECT_EQ(QueryText("SELECT hex(owed) FROM schedules WHERE uid = 7"),
            "010002" + Hex(PinnedWaitingRun()));
  row.waiting = row.retry;
  batch.schedules = {UpdateOnly(row)};
  ASSERT_TRUE(store->Commit(batch).ok());
  EXPECT_EQ(QueryText("SELECT hex(owed) FROM schedules WHERE uid = 7"),
            "010003" + Hex(PinnedWaitingRun()) + Hex(PinnedWaitingRun()));
}

TEST_F(SqliteStoreTest, AMalformedOwedValueIsRefusedAtLoad) {
  MakeDatabase(10);
  const std::string valid = "010301" + Hex(PinnedWaitingRun());
  struct Case {
    std::string value;  // an SQL literal
    std::string why;    // in the message
  };
  const Case cases[] = {
      {"X''", "malformed: empty"},
      {"X'02'", "unknown format 2"},
      {"X'0103'", "malformed: truncated"},
      {"X'010304'", "unknown flags 4"},
      {"X'010301'", "the waiting run is truncated"},
      {"X'010302'", "the retry is truncated"},
      {"X'010303" + Hex(PinnedWaitingRun()) + "'", "the retry is truncated"},
      {"X'" + valid.substr(0, valid.size() - 2) + "'", "the waiting run is truncated"},
      {"X'010301FFFFFFFF00'", "the waiting run is truncated"},
      {"X'" + valid + "00'", "1 bytes after its end"},
      {"X'010301" + Hex(PinnedWaitingRun(0)) + "'", "the waiting run has an empty run id"},
      {"X'010301" + Hex(PinnedWaitingRun(2, 2)) + "'", "the waiting run has scheduled = 2"},
      {"'" + valid + "'", "not a BLOB"},
      {"5", "not a BLOB"},
  };
  // The valid value loads.
  ExecRaw("UPDATE schedules SET owed = X'" + valid + "' WHERE uid = 7");
  {
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    Snapshot snap = LoadOrDie(*store);
    ASSERT_EQ(snap.schedules.size(), 10u);
    EXPECT_EQ(snap.schedules[6].pending, 3);
    EXPECT_EQ(snap.schedules[6].waiting.run_id, "ab");
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.value);
    ExecRaw("UPDATE schedules SET owed = " + c.value + " WHERE uid = 7");
    auto store = OpenOrDie();  // the open reads no schedule row: Load finds it
    ASSERT_NE(store, nullptr);
    auto snap = store->Load();
    ASSERT_FALSE(snap.ok());
    EXPECT_EQ(snap.status().code(), StatusCode::kInternal) << snap.status();
    EXPECT_NE(snap.status().message().find(path_), std::string::npos) << snap.status();
    EXPECT_NE(snap.status().message().find("is corrupt (schedule uid 7: its owed value"),
              std::string::npos)
        << snap.status();
    EXPECT_NE(snap.status().message().find(c.why), std::string::npos) << snap.status();
    // The store stays usable: a commit that rewrites the row repairs it.
    Batch batch;
    batch.schedules = {UpdateOnly(MakeSchedule(7, ""))};
    ASSERT_TRUE(store->Commit(batch).ok());
    EXPECT_TRUE(store->Load().ok());
  }
}

// Migration 3 as released, onto a version 2 file (steps are never edited, so this copy stays
// valid).
constexpr const char* kToVersion3 = R"sql(
ALTER TABLE schedules ADD COLUMN run_id TEXT NOT NULL DEFAULT '';
ALTER TABLE schedules ADD COLUMN run_slot_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE schedules ADD COLUMN run_mode INTEGER NOT NULL DEFAULT 0;
ALTER TABLE schedules ADD COLUMN run_attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE schedules ADD COLUMN run_started_ms INTEGER NOT NULL DEFAULT 0;
CREATE TABLE history(
  id INTEGER PRIMARY KEY,
  schedule_uid INTEGER NOT NULL,
  run_id TEXT NOT NULL,
  slot_ms INTEGER NOT NULL,
  mode INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  started_ms INTEGER NOT NULL,
  finished_ms INTEGER NOT NULL,
  ok INTEGER NOT NULL,
  error TEXT NOT NULL
);
UPDATE schedules SET run_id = r.run_id, run_slot_ms = r.slot_ms, run_mode = r.mode,
  run_attempt = r.attempt, run_started_ms = r.started_ms
FROM (SELECT run_id, schedule_uid, slot_ms, mode, attempt, started_ms,
        row_number() OVER (PARTITION BY schedule_uid ORDER BY started_ms DESC, run_id DESC) AS n
      FROM runs WHERE finished_ms = 0) AS r
WHERE r.n = 1 AND schedules.uid = r.schedule_uid;
INSERT INTO history
SELECT r.schedule_uid * 1024 + (((s.runs - r.n) % 20) + 20) % 20, r.schedule_uid, r.run_id,
       r.slot_ms, r.mode, r.attempt, r.started_ms, r.finished_ms, r.ok, r.error
FROM (SELECT *, row_number() OVER (PARTITION BY schedule_uid
                                   ORDER BY finished_ms DESC, run_id DESC) AS n
      FROM runs WHERE finished_ms <> 0) AS r
JOIN schedules AS s ON s.uid = r.schedule_uid
WHERE r.n <= 20;
INSERT INTO history
SELECT schedule_uid * 1024 + 1023, schedule_uid, run_id, slot_ms, mode, attempt, started_ms,
       finished_ms, ok, error
FROM (SELECT *, row_number() OVER (PARTITION BY schedule_uid
                                   ORDER BY finished_ms DESC, run_id DESC) AS n
      FROM runs WHERE finished_ms <> 0 AND ok = 0)
WHERE n = 1;
DROP TABLE runs;
INSERT INTO meta(key, value) VALUES ('history_kept', 20);
PRAGMA user_version = 3;
)sql";

TEST_F(SqliteStoreTest, AVersionThreeDatabaseGainsEmptyOwedRunsKeepingItsRows) {
  ExecRaw(kSchemaV1);
  ExecRaw(kToVersion2);
  // Schedule 3 (25 runs): two finished runs, the second failed, and one in flight.
  ExecRaw(
      "INSERT INTO runs VALUES ('3-24', 3, 24, 0, 1, 1024, 1124, 1, '');"
      "INSERT INTO runs VALUES ('3-25', 3, 25, 0, 1, 1025, 1125, 0, 'boom');"
      "INSERT INTO runs VALUES ('3-26', 3, 26, 1, 2, 1026, 0, -1, '');");
  ExecRaw(kToVersion3);
  // A row as version 3 wrote it: paused, with counters and a run in flight.
  ExecRaw(
      "INSERT INTO schedules VALUES (6, 'github', 'initech', 'issues', 'nightly', 0, 5000, "
      "90000, 95000, 7, 2, 1, 4000, 4500, 0, 'HTTP 502', '6-8', 8000, 1, 3, 8100);");
  ASSERT_EQ(QueryInt("PRAGMA user_version"), 3);
  const std::string before = QueryText(
      "SELECT group_concat(uid || ':' || state || ':' || anchor_ms || ':' || runs || ':' || "
      "failures || ':' || run_id || ':' || last_error, '|') FROM schedules");

  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(QueryInt("PRAGMA user_version"), 5);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM pragma_table_info('schedules') "
                     "WHERE name IN ('run_seq', 'owed')"),
            2);
  EXPECT_EQ(
      QueryText("SELECT group_concat(uid || ':' || state || ':' || anchor_ms || ':' || runs || "
                "':' || failures || ':' || run_id || ':' || last_error, '|') FROM schedules"),
      before);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM schedules WHERE run_seq = 0 AND owed IS NULL"), 3);
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.schedules.size(), 3u);
  for (const ScheduleRow& row : snap.schedules) {
    SCOPED_TRACE(row.uid);
    EXPECT_EQ(row.run_seq, 0u);
    EXPECT_EQ(row.pending, 0);
    EXPECT_TRUE(row.waiting.empty());
    EXPECT_TRUE(row.retry.empty());
  }
  EXPECT_EQ(snap.max_uid, 7u);
  ASSERT_EQ(snap.unfinished_runs.size(), 2u);
  EXPECT_EQ(snap.schedules[0].in_flight.run_id, "3-26");
  EXPECT_EQ(snap.schedules[0].runs, 25u);
  const ScheduleRow& six = snap.schedules[2];
  EXPECT_EQ(six.uid, 6u);
  EXPECT_EQ(six.variant, "nightly");
  EXPECT_EQ(six.state, 0);
  EXPECT_EQ(six.frequency_override_ms, 90000);
  EXPECT_EQ(six.next_slot_ms, 95000);
  EXPECT_EQ(six.skipped, 1u);
  EXPECT_EQ(six.last_ok, 0);
  EXPECT_EQ(six.last_error, "HTTP 502");
  EXPECT_EQ(six.in_flight.run_id, "6-8");
  EXPECT_EQ(six.in_flight.attempt, 3);
  EXPECT_EQ(six.in_flight.started_ms, 8100);
  EXPECT_EQ(FinishedRuns(path_, 3), (std::vector<std::string>{"3-25", "3-24"}));
  EXPECT_EQ(QueryInt("SELECT count(*) FROM history WHERE schedule_uid = 3"), 3)
      << "two ring places and the failure place";

  // The new columns take owed runs.
  ScheduleRow row = six;
  row.run_seq = 4;
  row.pending = 1;
  row.retry = MakeOwed("6-x4", 0);
  Batch batch;
  batch.schedules = {UpdateOnly(row)};
  ASSERT_TRUE(store->Commit(batch).ok());
  store.reset();
  store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  snap = LoadOrDie(*store);
  ASSERT_EQ(snap.schedules.size(), 3u);
  ExpectSameSchedule(snap.schedules[2], row);
}

// ---- SQLite return codes ----

TEST_F(SqliteStoreTest, AValueThatCannotBeBoundFailsTheCommitNamingItsColumn) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch first;
  first.schedules = {MakeSchedule(1, "acme")};
  ASSERT_TRUE(store->Commit(first).ok());
  internal::SetLengthLimitForTest(*store, 4096);

  struct Case {
    Batch batch;
    std::string names;  // the row and the parameter
  };
  std::vector<Case> cases;
  {
    Case& c = cases.emplace_back();
    c.batch.syncs = {MakeSync("github", "issues", 60'000)};
    c.batch.syncs[0].policy = std::string(5000, 'p');
    c.names = "writing sync github/issues: cannot bind policy (parameter 8): ";
  }
  {
    Case& c = cases.emplace_back();
    c.batch.schedules = {MakeSchedule(2, "globex")};
    c.batch.schedules[0].last_error = std::string(5000, 'e');
    c.names =
        "writing schedule uid 2 (github/globex/issues/base): cannot bind last_error "
        "(parameter 16): ";
  }
  {
    Case& c = cases.emplace_back();
    ScheduleRow row = MakeSchedule(1, "acme");
    row.waiting = MakeOwed(std::string(5000, 'w'), 0);
    c.batch.schedules = {UpdateOnly(row)};
    c.names = "writing schedule uid 1: cannot bind owed (parameter 23): ";
  }
  {
    Case& c = cases.emplace_back();
    c.batch.schedules = {MakeSchedule(3, "initech")};
    c.batch.runs = {MakeRun(std::string(5000, 'r'), 1, 100)};
    c.names = "cannot bind run_id (parameter 3): ";
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.names);
    Status status = store->Commit(c.batch);
    ASSERT_FALSE(status.ok());
    EXPECT_EQ(status.code(), StatusCode::kInternal) << status;
    EXPECT_NE(status.message().find(path_), std::string::npos) << status;
    EXPECT_NE(status.message().find(c.names + "string or blob too big"), std::string::npos)
        << status;
    EXPECT_NE(status.message().find("nothing of it is applied"), std::string::npos) << status;
  }
  Snapshot snap = LoadOrDie(*store);
  EXPECT_TRUE(snap.syncs.empty());
  ASSERT_EQ(snap.schedules.size(), 1u);
  ExpectSameSchedule(snap.schedules[0], first.schedules[0]);
  EXPECT_EQ(snap.max_uid, 1u);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM history"), 0);

  // With the limit back, the same batches commit: no failure lingers on a statement.
  internal::SetLengthLimitForTest(*store, 1'000'000'000);
  for (const Case& c : cases) ASSERT_TRUE(store->Commit(c.batch).ok()) << c.names;
  snap = LoadOrDie(*store);
  ASSERT_EQ(snap.schedules.size(), 3u);
  EXPECT_EQ(snap.schedules[0].waiting.run_id, std::string(5000, 'w'));
  EXPECT_EQ(snap.schedules[1].last_error, std::string(5000, 'e'));
}

TEST_F(SqliteStoreTest, AFailedRollbackBreaksTheStoreUntilItIsOpenedAgain) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch first;
  first.schedules = {MakeSchedule(1, "acme")};
  ASSERT_TRUE(store->Commit(first).ok());

  // A batch that fails inside its transaction (uid 3 takes uid 1's key, after uid 2 is written),
  // and a ROLLBACK that fails, leaving the connection inside the transaction.
  Batch bad;
  bad.syncs = {MakeSync("github", "issues", 60'000)};
  bad.schedules = {MakeSchedule(2, "globex"), MakeSchedule(3, "acme")};
  internal::FailNextRollbackForTest(*store);
  Status status = store->Commit(bad);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kInternal) << status;
  EXPECT_NE(status.message().find(path_), std::string::npos) << status;
  EXPECT_NE(status.message().find("UNIQUE"), std::string::npos) << status;
  EXPECT_NE(status.message().find("then ROLLBACK failed too (disk I/O error"), std::string::npos)
      << status;
  EXPECT_NE(status.message().find("refuses every further Commit and Load"), std::string::npos)
      << status;

  // Every later call is refused, empty batches too, and nothing reaches the file.
  Batch good;
  good.schedules = {MakeSchedule(4, "initech")};
  for (const Batch* batch : {&good, &first}) {
    Status again = store->Commit(*batch);
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.code(), StatusCode::kInternal) << again;
    EXPECT_NE(again.message().find(path_), std::string::npos) << again;
    EXPECT_NE(again.message().find("this store refuses to commit or load: after a failed commit, "
                                   "ROLLBACK failed too"),
              std::string::npos)
        << again;
  }
  EXPECT_EQ(store->Commit(Batch{}).code(), StatusCode::kInternal);
  auto snap = store->Load();
  ASSERT_FALSE(snap.ok());
  EXPECT_EQ(snap.status().code(), StatusCode::kInternal) << snap.status();
  EXPECT_NE(snap.status().message().find("refuses to commit or load"), std::string::npos)
      << snap.status();
  EXPECT_EQ(QueryInt("SELECT count(*) FROM schedules"), 1) << "another reader sees no change";

  // Opened again, the file holds the first batch only: closing discarded the transaction.
  store.reset();
  store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Snapshot loaded = LoadOrDie(*store);
  EXPECT_TRUE(loaded.syncs.empty());
  ASSERT_EQ(loaded.schedules.size(), 1u);
  EXPECT_EQ(loaded.schedules[0].uid, 1u);
  EXPECT_EQ(loaded.max_uid, 1u);
  ASSERT_TRUE(store->Commit(good).ok());
  EXPECT_EQ(LoadOrDie(*store).schedules.size(), 2u);
}

TEST_F(SqliteStoreTest, AFailedRollbackAfterAFailedLoadBreaksTheStoreToo) {
  MakeDatabase(10);
  ExecRaw("UPDATE schedules SET owed = X'02' WHERE uid = 7");  // Load fails inside its read
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  internal::FailNextRollbackForTest(*store);
  auto snap = store->Load();
  ASSERT_FALSE(snap.ok());
  EXPECT_EQ(snap.status().code(), StatusCode::kInternal) << snap.status();
  EXPECT_NE(snap.status().message().find("schedule uid 7"), std::string::npos) << snap.status();
  EXPECT_NE(snap.status().message().find("then ROLLBACK failed too"), std::string::npos)
      << snap.status();
  Batch batch;
  batch.schedules = {UpdateOnly(MakeSchedule(7, ""))};
  Status status = store->Commit(batch);
  EXPECT_EQ(status.code(), StatusCode::kInternal) << status;
  EXPECT_NE(status.message().find("refuses to commit or load: after a failed load, ROLLBACK"),
            std::string::npos)
      << status;
  store.reset();
  store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Commit(batch).ok());  // repairs the row
  EXPECT_EQ(LoadOrDie(*store).schedules.size(), 10u);
}

}  // namespace
}  // namespace syncsched::store
