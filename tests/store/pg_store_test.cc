// Tests of the PostgreSQL store against a real, throwaway PostgreSQL 15 server
// (support/pg_server.h): each test in a database of its own on the shared server; the tests that
// stop the server start a private one.
#include "store/pg_store.h"

#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "store/store.h"
#include "store/store_rows.h"
#include "support/pg_database_test.h"
#include "support/pg_server.h"
#include "support/stall_proxy.h"
#include "syncsched/status.h"

namespace syncsched::store {
namespace {

using namespace testing;  // NOLINT: the row helpers
using syncsched::testing::PgDatabaseTest;
using syncsched::testing::PgExec;
using syncsched::testing::PgQuery;
using syncsched::testing::PgServer;
using syncsched::testing::StallProxy;

class PgStoreTest : public PgDatabaseTest {
 protected:
  PostgresStoreOptions Options() const {
    PostgresStoreOptions o;
    o.uri = uri_;
    o.reconnect_backoff_min = std::chrono::milliseconds(0);
    o.reconnect_backoff_max = std::chrono::milliseconds(0);
    return o;
  }
  std::unique_ptr<Store> OpenOrDie(PostgresStoreOptions options) {
    auto store = OpenPostgresStore(options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(store).value() : nullptr;
  }
  // Waits for a previous store's lock to go: a closed connection's backend releases it as it
  // exits, a moment after the close (a reopen under load met it still held, once).
  std::unique_ptr<Store> OpenOrDie() {
    PostgresStoreOptions o = Options();
    o.wait_for_owner = std::chrono::seconds(10);
    return OpenOrDie(o);
  }
  Snapshot LoadOrDie(Store& store) {
    auto snap = store.Load();
    EXPECT_TRUE(snap.ok()) << snap.status();
    return snap.ok() ? std::move(snap).value() : Snapshot{};
  }
  std::string Q(const std::string& sql) const {
    auto v = PgQuery(uri_, sql);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : "<error>";
  }
  std::int64_t QInt(const std::string& sql) const { return std::stoll(Q(sql)); }
  void Exec(const std::string& sql) const {
    Status s = PgExec(uri_, sql);
    ASSERT_TRUE(s.ok()) << s;
  }
  // Finished run ids of schedule `uid` in its history, newest first (each id once).
  std::vector<std::string> FinishedRuns(std::uint64_t uid) const {
    PGconn* conn = PQconnectdb(uri_.c_str());
    std::string sql =
        "SELECT convert_from(run_id, 'UTF8') FROM syncsched.history WHERE schedule_uid = " +
        std::to_string(uid) + " GROUP BY run_id ORDER BY max(finished_ms) DESC";
    PGresult* res = PQexec(conn, sql.c_str());
    std::vector<std::string> ids;
    EXPECT_EQ(PQresultStatus(res), PGRES_TUPLES_OK) << PQresultErrorMessage(res);
    for (int i = 0; i < PQntuples(res); ++i) ids.emplace_back(PQgetvalue(res, i, 0));
    PQclear(res);
    PQfinish(conn);
    return ids;
  }
  // Opening must fail with `code`, its message naming the database and containing `cause`, and
  // must leave the database as it was (its tables and every row of syncsched.meta).
  // The tables of the schema syncsched and every row of syncsched.meta.
  std::string Fingerprint() const {
    std::string tables =
        Q("SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_class c JOIN "
          "pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'syncsched'");
    if (Q("SELECT to_regclass('syncsched.meta') IS NULL") == "t") return tables;
    return tables + "|" +
           Q("SELECT string_agg(key || '=' || value, ',' ORDER BY key) FROM syncsched.meta");
  }
  void ExpectRefused(StatusCode code, const std::string& cause) {
    std::string before = Fingerprint();
    auto store = OpenPostgresStore(Options());
    ASSERT_FALSE(store.ok());
    EXPECT_EQ(store.status().code(), code) << store.status();
    EXPECT_NE(store.status().message().find(uri_), std::string::npos) << store.status();
    EXPECT_NE(store.status().message().find(cause), std::string::npos) << store.status();
    EXPECT_EQ(Fingerprint(), before);
  }
};

TEST(PgStoreUri, IsPostgresUriAndRedaction) {
  EXPECT_TRUE(IsPostgresUri("postgresql://h/db"));
  EXPECT_TRUE(IsPostgresUri("postgres://h/db"));
  EXPECT_FALSE(IsPostgresUri("state.db"));
  EXPECT_FALSE(IsPostgresUri(":memory:"));
  EXPECT_FALSE(IsPostgresUri("postgresql:/x"));
  EXPECT_EQ(RedactDatabaseUri("postgresql://sched:s3cr3t@db.example:5432/syncsched"),
            "postgresql://sched:***@db.example:5432/syncsched");
  EXPECT_EQ(RedactDatabaseUri("postgres://u:p%40ss@h/db?sslmode=require&password=x&a=b"),
            "postgres://u:***@h/db?sslmode=require&password=***&a=b");
  EXPECT_EQ(RedactDatabaseUri("postgresql://sched@h/db"), "postgresql://sched@h/db");
  EXPECT_EQ(RedactDatabaseUri("postgresql:///db?password=x"), "postgresql:///db?password=***");
  EXPECT_EQ(RedactDatabaseUri("state.db"), "state.db");
}

TEST_F(PgStoreTest, BadOptionsAreInvalid) {
  PostgresStoreOptions o = Options();
  o.uri = "state.db";
  auto store = OpenPostgresStore(o);
  ASSERT_FALSE(store.ok());
  EXPECT_TRUE(store.status().IsInvalidArgument()) << store.status();
  EXPECT_NE(store.status().message().find("state.db"), std::string::npos);
  o = Options();
  o.history_per_schedule = 1001;
  store = OpenPostgresStore(o);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("history_per_schedule"), std::string::npos);
  o = Options();
  o.reply_timeout = std::chrono::milliseconds(-1);
  store = OpenPostgresStore(o);
  ASSERT_FALSE(store.ok());
  EXPECT_TRUE(store.status().IsInvalidArgument()) << store.status();
  EXPECT_NE(store.status().message().find("reply_timeout"), std::string::npos);
}

TEST_F(PgStoreTest, AnUnreachableServerIsUnavailableAndThePasswordIsNeverShown) {
  PostgresStoreOptions o = Options();
  o.uri = "postgresql://postgres:s3cr3t-pw@/no_such_db?host=" + server_->dir() + "&port=5432";
  auto store = OpenPostgresStore(o);
  ASSERT_FALSE(store.ok());
  EXPECT_TRUE(store.status().IsUnavailable()) << store.status();
  EXPECT_NE(store.status().message().find("no_such_db"), std::string::npos) << store.status();
  EXPECT_EQ(store.status().message().find("s3cr3t-pw"), std::string::npos) << store.status();
  EXPECT_NE(store.status().message().find("postgres:***@"), std::string::npos) << store.status();
}

TEST_F(PgStoreTest, ANewDatabaseGetsTheSchemaAndLoadsEmpty) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Snapshot snap = LoadOrDie(*store);
  EXPECT_TRUE(snap.syncs.empty());
  EXPECT_TRUE(snap.connections.empty());
  EXPECT_TRUE(snap.schedules.empty());
  EXPECT_EQ(snap.max_uid, 0u);
  EXPECT_EQ(Q("SELECT value FROM syncsched.meta WHERE key = 'schema_version'"), "5");
  EXPECT_EQ(Q("SELECT reloptions::text FROM pg_class WHERE oid = 'syncsched.schedules'::regclass"),
            "{fillfactor=45}");
  EXPECT_TRUE(store->Commit(Batch{}).ok());
  // The owner holds the advisory lock on its session.
  EXPECT_EQ(Q("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
              "database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            "1");
}

TEST_F(PgStoreTest, RoundTripOfEveryRowKindAcrossReopen) {
  Batch batch;
  batch.syncs = {MakeSync("github", "issues", 1'800'000), MakeSync("slack", "messages", 60'000)};
  batch.syncs[0].policy = "overlap=1;retry_max=3";
  batch.integrations = {{"github", 7}, {"slack", UINT64_MAX}};
  // Any bytes: not UTF-8, quotes, a NUL.
  const std::string odd("acme\xff\xfe'\"\\\0x", 10);
  batch.connections_added = {{"github", "acme"}, {"slack", "acme"}, {"github", odd}};
  const std::uint64_t big_uid = (std::uint64_t{1} << 63) + 5;  // above INT64_MAX
  std::vector<ScheduleRow> rows;
  rows.push_back(WithRunInFlight(MakeSchedule(7, "acme"), "run-in-flight"));
  rows.push_back(WithRunInFlight(MakeSchedule(big_uid, "acme", "pulls", "nightly"), "run-big"));
  rows[1].state = 0;
  rows[1].last_ok = -1;
  rows[1].last_error = "";
  ScheduleRow& owes = rows.emplace_back(MakeSchedule(8, odd));
  owes.last_error = std::string("bad \xc3\x28 utf8 \0 nul", 18);
  owes.run_seq = UINT64_MAX;
  owes.pending = 255;
  owes.runs = UINT64_MAX;
  owes.waiting = MakeOwed(std::string("w\0\xff\n'", 5), 0);
  owes.waiting.slot_ms = INT64_MIN;
  owes.waiting.mode = 255;
  owes.waiting.attempt = INT32_MIN;
  owes.waiting.at_ms = INT64_MAX;
  owes.waiting.seq = UINT64_MAX;
  owes.retry = MakeOwed(std::string(3000, 'r'), 1);
  owes.retry.scheduled = false;
  ScheduleRow& retry_only = rows.emplace_back(MakeSchedule(9, "globex"));
  retry_only.retry = MakeOwed("9-r", 5);
  batch.schedules = rows;
  batch.runs = {MakeRun("run-done", 7, 5000)};
  batch.runs[0].error = std::string("\xff\0", 2);
  batch.runs[0].ok = 0;
  {
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Commit(batch).ok());
  }
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.syncs.size(), 2u);
  std::sort(snap.syncs.begin(), snap.syncs.end(),
            [](const SyncRow& a, const SyncRow& b) { return a.integration < b.integration; });
  ExpectSameSync(snap.syncs[0], batch.syncs[0]);
  ExpectSameSync(snap.syncs[1], batch.syncs[1]);
  EXPECT_EQ(snap.syncs[0].policy, batch.syncs[0].policy);
  ASSERT_EQ(snap.integrations.size(), 2u);
  std::sort(snap.integrations.begin(), snap.integrations.end(),
            [](const auto& a, const auto& b) { return a.integration < b.integration; });
  EXPECT_EQ(snap.integrations[0].max_concurrency, 7u);
  EXPECT_EQ(snap.integrations[1].max_concurrency, UINT64_MAX);
  ASSERT_EQ(snap.connections.size(), 3u);
  EXPECT_EQ(snap.connections[0].connection, "acme");
  EXPECT_EQ(snap.connections[1].connection, odd);
  EXPECT_EQ(snap.connections[2].integration, "slack");
  ASSERT_EQ(snap.schedules.size(), rows.size());
  std::sort(snap.schedules.begin(), snap.schedules.end(),
            [](const ScheduleRow& a, const ScheduleRow& b) { return a.uid < b.uid; });
  std::sort(rows.begin(), rows.end(),
            [](const ScheduleRow& a, const ScheduleRow& b) { return a.uid < b.uid; });
  for (std::size_t i = 0; i < rows.size(); ++i) ExpectSameSchedule(snap.schedules[i], rows[i]);
  ASSERT_EQ(snap.unfinished_runs.size(), 2u);
  std::sort(snap.unfinished_runs.begin(), snap.unfinished_runs.end(),
            [](const RunRow& a, const RunRow& b) { return a.run_id < b.run_id; });
  ExpectSameRun(snap.unfinished_runs[0], rows[3].in_flight);  // run-big
  ExpectSameRun(snap.unfinished_runs[1], rows[0].in_flight);  // run-in-flight
  EXPECT_EQ(snap.max_uid, big_uid);
  // A failed run takes its ring place and the failure place, its error byte for byte.
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.history WHERE schedule_uid = 7"), "2");
  EXPECT_EQ(Q("SELECT encode(error, 'hex') FROM syncsched.history WHERE place = -1"), "ff00");
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.schedules WHERE w_run_id IS NULL AND r_run_id IS "
              "NULL"),
            "2")
      << "a row that owes nothing stores NULLs";
}

TEST_F(PgStoreTest, UpdateOnlyRowsRewriteEveryFieldAndWriteNothingForAGoneSchedule) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  std::vector<ScheduleRow> rows = {WithRunInFlight(MakeSchedule(1, "acme"), "1-1"),
                                   MakeSchedule(2, "globex"), MakeSchedule(3, "initech")};
  rows[2].waiting = MakeOwed("3-w", 3);
  Batch first;
  first.schedules = rows;
  ASSERT_TRUE(store->Commit(first).ok());

  rows[0].in_flight = RunRow{};
  rows[0].runs = 13;
  rows[0].retry = MakeOwed("1-r", 9);
  rows[1].state = 0;
  rows[1].last_error = "other";
  rows[2].waiting = OwedRun{};
  rows[2].pending = 2;
  Batch update;
  for (const ScheduleRow& r : rows) update.schedules.push_back(UpdateOnly(r));
  update.schedules.push_back(UpdateOnly(MakeSchedule(99, "never-stored")));
  // Two versions of one row in a batch: the last one wins.
  ScheduleRow older = rows[1];
  older.runs = 1;
  update.schedules.insert(update.schedules.begin(), UpdateOnly(older));
  ASSERT_TRUE(store->Commit(update).ok());
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.schedules.size(), 3u);
  for (std::size_t i = 0; i < rows.size(); ++i) ExpectSameSchedule(snap.schedules[i], rows[i]);
  EXPECT_TRUE(snap.unfinished_runs.empty());
  EXPECT_EQ(snap.max_uid, 99u) << "as the SQLite store: every uid written counts";

  // A full row of a stored schedule is an upsert; a key is never rewritten.
  rows[1].runs = 77;
  Batch full;
  full.schedules = {rows[1]};
  ASSERT_TRUE(store->Commit(full).ok());
  ExpectSameSchedule(LoadOrDie(*store).schedules[1], rows[1]);
}

TEST_F(PgStoreTest, UpsertsOfTheCatalogAndConnectionsByKey) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch batch;
  batch.syncs = {MakeSync("github", "issues", 60'000)};
  batch.connections_added = {{"github", "acme"}, {"github", "acme"}};  // twice in one batch
  ASSERT_TRUE(store->Commit(batch).ok());
  Batch update;
  update.syncs = {MakeSync("github", "issues", 90'000), MakeSync("github", "issues", 120'000)};
  update.syncs[1].auto_start = true;
  update.connections_added = {{"github", "acme"}};  // already there: left as is
  update.integrations = {{"github", 3}, {"github", 4}};
  ASSERT_TRUE(store->Commit(update).ok());
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.syncs.size(), 1u);
  ExpectSameSync(snap.syncs[0], update.syncs[1]);
  EXPECT_EQ(snap.connections.size(), 1u);
  ASSERT_EQ(snap.integrations.size(), 1u);
  EXPECT_EQ(snap.integrations[0].max_concurrency, 4u);
  // Deletion before insertion within a batch.
  Batch both;
  both.connections_deleted = {{"github", "acme"}, {"github", "globex"}};
  both.connections_added = {{"github", "globex"}};
  ASSERT_TRUE(store->Commit(both).ok());
  snap = LoadOrDie(*store);
  ASSERT_EQ(snap.connections.size(), 1u);
  EXPECT_EQ(snap.connections[0].connection, "globex");
}

// Load returns the catalog in key order, whatever the tables' physical order: an update writes a
// row's new version elsewhere in the table (and vacuum, at its own time, frees room that later
// rows reuse), and the engine builds its catalog (and so the order in which it drains the
// integrations' wait queues after a restart) in the order Load returns. Before the fix, the
// simulation on PostgreSQL dispatched waiting runs in another order after a reload than the same
// seed on SQLite, an order that followed the heap.
TEST_F(PgStoreTest, LoadReturnsTheCatalogInKeyOrderWhateverItsPhysicalOrder) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch batch;
  batch.syncs = {MakeSync("alpha", "a", 60'000), MakeSync("alpha", "b", 60'000),
                 MakeSync("beta", "a", 60'000)};
  batch.integrations = {{"alpha", 1}, {"beta", 2}};
  ASSERT_TRUE(store->Commit(batch).ok());
  Batch update;  // the first rows of each table get new versions, after the others
  update.syncs = {MakeSync("alpha", "a", 90'000)};
  update.integrations = {{"alpha", 3}};
  ASSERT_TRUE(store->Commit(update).ok());
  ASSERT_EQ(Q("SELECT string_agg(convert_from(integration, 'UTF8') || '/' || "
              "convert_from(name, 'UTF8'), ',') FROM syncsched.syncs"),
            "alpha/b,beta/a,alpha/a")
      << "the heap is not in the order this test needs";
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.syncs.size(), 3u);
  EXPECT_EQ(snap.syncs[0].integration + "/" + snap.syncs[0].name, "alpha/a");
  EXPECT_EQ(snap.syncs[1].integration + "/" + snap.syncs[1].name, "alpha/b");
  EXPECT_EQ(snap.syncs[2].integration + "/" + snap.syncs[2].name, "beta/a");
  ASSERT_EQ(snap.integrations.size(), 2u);
  EXPECT_EQ(snap.integrations[0].integration, "alpha");
  EXPECT_EQ(snap.integrations[1].integration, "beta");
}

TEST_F(PgStoreTest, SchedulesDeletedRemovesRowsAndTheirHistory) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch batch;
  batch.schedules = {WithRunInFlight(MakeSchedule(1, "acme"), "a2"), MakeSchedule(2, "globex")};
  batch.runs = {MakeRun("a1", 1, 100), MakeRun("b1", 2, 100)};
  ASSERT_TRUE(store->Commit(batch).ok());
  // Delete uid 1 and re-create its key under a new uid in the same batch; create and delete uid 4
  // in the same batch (deletion wins: uids are never reused).
  Batch change;
  change.schedules_deleted = {1, 4};
  change.schedules = {WithRunInFlight(MakeSchedule(3, "acme"), "c1"),
                      WithRunInFlight(MakeSchedule(4, "initech"), "d1")};
  change.runs = {MakeRun("d0", 4, 100)};
  ASSERT_TRUE(store->Commit(change).ok());
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.schedules.size(), 2u);
  EXPECT_EQ(snap.schedules[0].uid, 2u);
  EXPECT_EQ(snap.schedules[1].uid, 3u);
  ASSERT_EQ(snap.unfinished_runs.size(), 1u);
  EXPECT_EQ(snap.unfinished_runs[0].run_id, "c1");
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.history WHERE schedule_uid IN (1, 4)"), "0");
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.history"), "1");
  EXPECT_EQ(snap.max_uid, 3u);
  // max_uid survives deleting every schedule.
  Batch all;
  all.schedules_deleted = {2, 3};
  ASSERT_TRUE(store->Commit(all).ok());
  store.reset();
  store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  snap = LoadOrDie(*store);
  EXPECT_TRUE(snap.schedules.empty());
  EXPECT_EQ(snap.max_uid, 3u);
}

TEST_F(PgStoreTest, AFailedBatchAppliesNothingAndTheStoreStaysUsable) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch first;
  first.syncs = {MakeSync("github", "issues", 60'000)};
  first.schedules = {MakeSchedule(1, "acme")};
  first.connections_added = {{"github", "acme"}};
  ASSERT_TRUE(store->Commit(first).ok());
  // Everything valid but one schedule, which takes uid 1's key under another uid; enough rows
  // that the batch spans several statements.
  Batch bad;
  bad.syncs = {MakeSync("github", "issues", 999'000), MakeSync("github", "pulls", 60'000)};
  bad.connections_added = {{"github", "globex"}};
  bad.connections_deleted = {{"github", "acme"}};
  for (int uid = 10; uid < 20'010; ++uid) {
    std::string connection = "globex-";
    connection +=
        std::to_string(uid);  // not "globex-" + ...: GCC 12's false -Wrestrict (PR 105329)
    bad.schedules.push_back(MakeSchedule(uid, connection));
  }
  bad.schedules.push_back(MakeSchedule(2, "acme"));
  bad.schedules.push_back(UpdateOnly(MakeSchedule(1, "acme")));
  bad.schedules.back().runs = 1000;
  bad.runs = {MakeRun("r", 10, 100)};
  Status status = store->Commit(bad);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kInternal) << status;
  EXPECT_NE(status.message().find("schedules_by_key"), std::string::npos) << status;
  EXPECT_NE(status.message().find(uri_), std::string::npos) << status;
  EXPECT_NE(status.message().find("nothing of the batch is applied"), std::string::npos) << status;
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.syncs.size(), 1u);
  EXPECT_EQ(snap.syncs[0].frequency_ms, 60'000);
  ASSERT_EQ(snap.connections.size(), 1u);
  EXPECT_EQ(snap.connections[0].connection, "acme");
  ASSERT_EQ(snap.schedules.size(), 1u);
  EXPECT_EQ(snap.schedules[0].runs, 12u);
  EXPECT_EQ(snap.max_uid, 1u);
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.history"), "0");
  // Usable, and max_uid was not advanced by the failed batch.
  Batch next;
  next.schedules = {MakeSchedule(5, "initech")};
  ASSERT_TRUE(store->Commit(next).ok());
  EXPECT_EQ(LoadOrDie(*store).max_uid, 5u);
  // An unfinished run in `runs` is refused before anything is sent.
  Batch unfinished;
  unfinished.schedules = {MakeSchedule(6, "hooli")};
  unfinished.runs = {MakeRun("x", 6, 0)};
  status = store->Commit(unfinished);
  EXPECT_EQ(status.code(), StatusCode::kInternal) << status;
  EXPECT_EQ(LoadOrDie(*store).schedules.size(), 2u);
}

// The backstop of grid slots (schema v4, docs/cluster.md "Each slot once"): a row whose new run
// in flight is a grid slot ("<uid>-<slot>") at or before the latest grid slot the schedule ever
// dispatched is refused with SYD01, naming the schedule and the slot, and nothing of the commit is
// applied; runs off the grid (with a suffix), retries (attempt > 1) and rewrites of the same run
// pass; later slots pass.
TEST_F(PgStoreTest, AGridSlotDispatchedTwiceIsRefusedWholeNamingTheSlot) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  auto grid = [](std::uint64_t uid, std::int64_t slot, bool update_only = true) {
    ScheduleRow row = MakeSchedule(uid, "c" + std::to_string(uid));
    row = WithRunInFlight(row, std::to_string(uid) + "-" + std::to_string(slot));
    row.in_flight.slot_ms = slot;
    row.in_flight.attempt = 1;
    return update_only ? UpdateOnly(row) : row;
  };
  auto idle = [](std::uint64_t uid) { return UpdateOnly(MakeSchedule(uid, "c")); };
  auto rows = [](std::vector<ScheduleRow> schedules) {
    Batch b;
    b.schedules = std::move(schedules);
    return b;
  };
  auto grid_slot = [&](std::uint64_t uid) {
    return Q("SELECT coalesce(grid_slot_ms::text, 'null') FROM syncsched.schedules WHERE uid = " +
             std::to_string(uid));
  };
  Batch first;
  first.syncs = {MakeSync("github", "issues", 60'000)};
  first.schedules = {grid(1, 1000, false), MakeSchedule(2, "c2")};
  ASSERT_TRUE(store->Commit(first).ok());
  EXPECT_EQ(grid_slot(1), "1000") << "a new row's grid run";
  EXPECT_EQ(grid_slot(2), "null");
  // The same run written again (a carried row), its end, and a later slot: all pass.
  for (Batch b : {rows({grid(1, 1000)}), rows({idle(1)}), rows({grid(1, 2000)}), rows({idle(1)})}) {
    Status s = store->Commit(b);
    ASSERT_TRUE(s.ok()) << s;
  }
  EXPECT_EQ(grid_slot(1), "2000");
  // Off the grid (a trigger's id has a suffix) at an earlier slot: passes, the mark stays.
  ScheduleRow trigger = grid(1, 1500);
  trigger.in_flight.run_id = "1-1500-7";
  ASSERT_TRUE(store->Commit(rows({trigger})).ok());
  ASSERT_TRUE(store->Commit(rows({idle(1)})).ok());
  EXPECT_EQ(grid_slot(1), "2000");
  // A retry keeps its slot's run id with a higher attempt: passes.
  ScheduleRow retry = grid(1, 2000);
  retry.in_flight.attempt = 2;
  ASSERT_TRUE(store->Commit(rows({retry})).ok());
  ASSERT_TRUE(store->Commit(rows({idle(1)})).ok());
  // Slot 2000 again, and an earlier one, through an update and through an upsert, beside
  // other rows: refused, nothing applied, the slot named.
  for (ScheduleRow again : {grid(1, 2000), grid(1, 1000), grid(1, 2000, false)}) {
    Batch b;
    b.schedules = {grid(2, 5000), again};
    b.runs = {MakeRun("2-4000", 2, 4500)};
    Status s = store->Commit(b);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s;
    std::optional<TakenSlot> taken = SlotTaken(s);
    ASSERT_TRUE(taken.has_value()) << s;
    EXPECT_EQ(taken->uid, 1u);
    EXPECT_EQ(taken->slot, again.in_flight.slot_ms);
    EXPECT_NE(s.message().find("dispatched again"), std::string::npos) << s;
    EXPECT_EQ(grid_slot(2), "null") << "nothing of the commit applied";
    EXPECT_EQ(Q("SELECT count(*) FROM syncsched.history"), "0");
    EXPECT_EQ(Q("SELECT convert_from(run_id, 'UTF8') FROM syncsched.schedules WHERE uid = 1"), "");
  }
  // Usable afterwards; the next slot passes; the mark survives a reopen.
  ASSERT_TRUE(store->Commit(rows({grid(1, 3000)})).ok());
  store.reset();
  store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(LoadOrDie(*store).schedules.size(), 2u);
  EXPECT_EQ(grid_slot(1), "3000");
  ASSERT_TRUE(store->Commit(rows({idle(1)})).ok());
  Status s = store->Commit(rows({grid(1, 3000)}));
  EXPECT_TRUE(SlotTaken(s).has_value()) << s;
}

TEST(SlotTakenTest, ReadsOnlyTheBackstopsRefusal) {
  EXPECT_FALSE(SlotTaken(Status::Ok()).has_value());
  EXPECT_FALSE(SlotTaken(Status::FailedPrecondition("x (schedule uid 1 slot 2)")).has_value());
  EXPECT_FALSE(SlotTaken(Status::Internal("x (schedule uid 1 slot 2) [SQLSTATE SYD01]")));
  EXPECT_FALSE(SlotTaken(Status::FailedPrecondition("x (schedule uid 1 slot ) [SQLSTATE SYD01]")));
  auto t = SlotTaken(Status::FailedPrecondition(
      "db: committing: schedule uid 9: grid slot 5 dispatched again (schedule uid 9 slot "
      "-5) [SQLSTATE SYD01]"));
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->uid, 9u);
  EXPECT_EQ(t->slot, -5);
}

TEST_F(PgStoreTest, ABigBatchSpansStatementsAndRoundTrips) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch batch;
  for (std::uint64_t uid = 1; uid <= 20'000; ++uid) {
    batch.schedules.push_back(MakeSchedule(uid, "c" + std::to_string(uid)));
    batch.schedules.back().next_slot_ms = static_cast<std::int64_t>(uid);
  }
  ASSERT_TRUE(store->Commit(batch).ok());
  Batch runs;
  for (std::uint64_t uid = 1; uid <= 20'000; ++uid) {
    ScheduleRow r = UpdateOnly(batch.schedules[uid - 1]);
    r.runs = uid;
    runs.schedules.push_back(r);
    runs.runs.push_back(MakeRun("r" + std::to_string(uid), uid, 1000, uid % 2 == 0 ? 1 : 0));
  }
  ASSERT_TRUE(store->Commit(runs).ok());
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.schedules.size(), 20'000u);
  for (std::uint64_t uid = 1; uid <= 20'000; ++uid) {
    ASSERT_EQ(snap.schedules[uid - 1].uid, uid);
    ASSERT_EQ(snap.schedules[uid - 1].runs, uid);
    ASSERT_EQ(snap.schedules[uid - 1].next_slot_ms, static_cast<std::int64_t>(uid));
  }
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.history"), "30000");
}

// Load reads the schedules in the table's order and returns them in uid order whatever that order
// is (here the rows are inserted in descending uid order), with the runs in flight; again with a
// uid above INT64_MAX (stored as a negative bigint), which comes last.
TEST_F(PgStoreTest, LoadReturnsSchedulesInUidOrderWhateverTheirPhysicalOrder) {
  std::vector<ScheduleRow> rows;
  for (std::uint64_t uid = 3'000; uid >= 1; --uid) {
    rows.push_back(MakeSchedule(uid, "c" + std::to_string(uid)));
    rows.back().runs = uid;
    if (uid % 7 == 0) rows.back() = WithRunInFlight(rows.back(), "run-" + std::to_string(uid));
  }
  auto commit = [&](std::vector<ScheduleRow> batch_rows) {
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    Batch batch;
    batch.schedules = std::move(batch_rows);
    ASSERT_TRUE(store->Commit(batch).ok());
  };
  auto expect_load = [&] {
    std::vector<ScheduleRow> sorted = rows;
    std::sort(sorted.begin(), sorted.end(),
              [](const ScheduleRow& a, const ScheduleRow& b) { return a.uid < b.uid; });
    std::vector<std::uint64_t> expected_in_flight;
    for (const ScheduleRow& row : sorted) {
      if (!row.in_flight.run_id.empty()) expected_in_flight.push_back(row.uid);
    }
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    Snapshot snap = LoadOrDie(*store);
    ASSERT_EQ(snap.schedules.size(), sorted.size());
    for (std::size_t i = 0; i < sorted.size(); ++i) {
      ExpectSameSchedule(snap.schedules[i], sorted[i]);
    }
    std::vector<std::uint64_t> in_flight;
    for (const RunRow& run : snap.unfinished_runs) in_flight.push_back(run.schedule_uid);
    EXPECT_EQ(in_flight, expected_in_flight);
    EXPECT_EQ(snap.max_uid, sorted.back().uid);
  };
  commit(rows);
  ASSERT_EQ(Q("SELECT uid FROM syncsched.schedules LIMIT 1"), "3000") << "not in descending order";
  expect_load();
  const std::uint64_t big_uid = (std::uint64_t{1} << 63) + 7;
  rows.push_back(WithRunInFlight(MakeSchedule(big_uid, "big"), "run-big"));
  commit({rows.back()});
  expect_load();
}

// The parts of a streamed commit, each built when asked for; `before(n)` runs before part n
// (from 0) is handed over.
class PartSource : public BatchSource {
 public:
  explicit PartSource(std::vector<Batch> parts, std::function<void(std::size_t)> before = {})
      : parts_(std::move(parts)), before_(std::move(before)) {}
  bool Next(Batch& part) override {
    part = Batch();
    if (next_ == parts_.size()) return false;
    if (before_) before_(next_);
    part = std::move(parts_[next_++]);
    return true;
  }
  std::size_t taken() const { return next_; }

 private:
  std::vector<Batch> parts_;
  std::function<void(std::size_t)> before_;
  std::size_t next_ = 0;
};

// A batch of one new schedule.
Batch OneSchedule(std::uint64_t uid) {
  Batch b;
  b.schedules.push_back(MakeSchedule(uid, "b" + std::to_string(uid)));
  return b;
}

// `n` parts of `rows` new schedules each, uids from `first_uid`.
std::vector<Batch> ScheduleParts(std::size_t n, std::uint64_t rows, std::uint64_t first_uid) {
  std::vector<Batch> parts(n);
  std::uint64_t uid = first_uid;
  for (Batch& part : parts) {
    for (std::uint64_t i = 0; i < rows; ++i, ++uid) {
      part.schedules.push_back(MakeSchedule(uid, "c" + std::to_string(uid)));
    }
  }
  return parts;
}

// CommitStream plans and sends each part as it comes (the server executes the parts before
// meanwhile) and is still one transaction: every part or none, whatever fails and wherever.
TEST_F(PgStoreTest, AStreamedCommitIsOneTransactionWhereverItFails) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch first;
  first.syncs = {MakeSync("github", "issues", 60'000)};
  first.schedules = {MakeSchedule(1, "acme")};
  // Applied whole: 4 parts of 10,000 rows after the first.
  PartSource all(ScheduleParts(4, 10'000, 2));
  ASSERT_TRUE(store->CommitStream(first, all).ok());
  EXPECT_EQ(all.taken(), 4u);
  EXPECT_EQ(QInt("SELECT count(*) FROM syncsched.schedules"), 40'001);
  EXPECT_EQ(LoadOrDie(*store).max_uid, 40'001u);

  // A part the store refuses before sending it (an unfinished run), after two parts were sent.
  auto bad_parts = ScheduleParts(3, 10'000, 50'000);
  bad_parts[2].runs = {MakeRun("x", 50'000, 0)};
  PartSource refused(std::move(bad_parts));
  Status status = store->CommitStream(OneSchedule(49'999), refused);
  EXPECT_EQ(status.code(), StatusCode::kInternal) << status;
  EXPECT_NE(status.message().find("not a finished run"), std::string::npos) << status;
  EXPECT_NE(status.message().find("nothing of the batch is applied"), std::string::npos) << status;
  EXPECT_EQ(QInt("SELECT count(*) FROM syncsched.schedules"), 40'001);

  // A part the server refuses (a key taken under another uid), with parts sent after it.
  auto conflicting = ScheduleParts(3, 10'000, 60'000);
  conflicting[1].schedules.push_back(MakeSchedule(69'999'999, "acme"));
  PartSource conflict(std::move(conflicting));
  status = store->CommitStream(OneSchedule(59'999), conflict);
  EXPECT_EQ(status.code(), StatusCode::kInternal) << status;
  EXPECT_NE(status.message().find("schedules_by_key"), std::string::npos) << status;
  EXPECT_EQ(QInt("SELECT count(*) FROM syncsched.schedules"), 40'001);

  // The session killed by the server while the third part is being built.
  int pid = internal::BackendPidForTest(*store);
  PartSource killed(ScheduleParts(4, 10'000, 70'000), [&](std::size_t n) {
    if (n == 2) Exec("SELECT pg_terminate_backend(" + std::to_string(pid) + ")");
  });
  status = store->CommitStream(OneSchedule(69'999), killed);
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status;
  EXPECT_EQ(QInt("SELECT count(*) FROM syncsched.schedules"), 40'001);

  // Usable after each: the next commit reconnects, and max_uid moved only with the first.
  Batch next;
  next.schedules = {MakeSchedule(40'002, "initech")};
  ASSERT_TRUE(store->Commit(next).ok());
  Snapshot snap = LoadOrDie(*store);
  EXPECT_EQ(snap.schedules.size(), 40'002u);
  EXPECT_EQ(snap.max_uid, 40'002u);
}

TEST_F(PgStoreTest, HistoryKeepsNewestRunsAndNewestFailure) {
  PostgresStoreOptions options = Options();
  options.history_per_schedule = 3;
  auto store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  Batch setup;
  setup.schedules = {WithRunInFlight(MakeSchedule(1, "acme"), "in-flight"),
                     MakeSchedule(2, "globex")};
  ASSERT_TRUE(store->Commit(setup).ok());
  for (int i = 1; i <= 10; ++i) {
    Batch batch;
    batch.runs = {MakeRun("r" + std::to_string(i), 1, 1000 + i, i == 2 ? 0 : 1, i)};
    ASSERT_TRUE(store->Commit(batch).ok());
    EXPECT_LE(FinishedRuns(1).size(), 4u) << "after run " << i;
  }
  EXPECT_EQ(FinishedRuns(1), (std::vector<std::string>{"r10", "r9", "r8", "r2"}));
  Batch many;  // several runs of one place in one batch: the last one wins
  for (int i = 11; i <= 30; ++i) {
    many.runs.push_back(MakeRun("r" + std::to_string(i), 1, 1000 + i, 1, i));
  }
  many.runs.push_back(MakeRun("x1", 2, 50));
  ASSERT_TRUE(store->Commit(many).ok());
  EXPECT_EQ(FinishedRuns(1), (std::vector<std::string>{"r30", "r29", "r28", "r2"}));
  EXPECT_EQ(FinishedRuns(2), (std::vector<std::string>{"x1"}));
  Batch failure;
  failure.runs = {MakeRun("r31", 1, 1031, 0, 31)};
  ASSERT_TRUE(store->Commit(failure).ok());
  EXPECT_EQ(FinishedRuns(1), (std::vector<std::string>{"r31", "r30", "r29"}));
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.history WHERE schedule_uid = 1"), "4");
  EXPECT_EQ(LoadOrDie(*store).unfinished_runs.size(), 1u);
  store.reset();

  // A smaller bound trims at open; the ring goes on where it was.
  options.history_per_schedule = 2;
  store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.history WHERE schedule_uid = 1"), "3");
  Batch after;
  after.runs = {MakeRun("r32", 1, 1032, 1, 32), MakeRun("r33", 1, 1033, 1, 33)};
  ASSERT_TRUE(store->Commit(after).ok());
  EXPECT_EQ(FinishedRuns(1), (std::vector<std::string>{"r33", "r32", "r31"}));
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.history WHERE schedule_uid = 1"), "3");
}

TEST_F(PgStoreTest, ANewerSchemaIsRefusedAndNotWritten) {
  { ASSERT_NE(OpenOrDie(), nullptr); }
  Exec("UPDATE syncsched.meta SET value = 99 WHERE key = 'schema_version'");
  ExpectRefused(StatusCode::kFailedPrecondition, "schema version 99, newer than version 5");
}

TEST_F(PgStoreTest, ForeignOrBrokenSchemasAreRefusedAndNotWritten) {
  Exec("CREATE SCHEMA syncsched; CREATE TABLE syncsched.things(id int)");
  ExpectRefused(StatusCode::kFailedPrecondition, "another application");
  Exec("DROP SCHEMA syncsched CASCADE");
  { ASSERT_NE(OpenOrDie(), nullptr); }
  Exec("DROP TABLE syncsched.history");
  ExpectRefused(StatusCode::kInternal, "without table 'syncsched.history'");
}

TEST_F(PgStoreTest, AnEmptySchemaIsMigratedAndAReopenMigratesNothing) {
  Exec("CREATE SCHEMA syncsched");  // e.g. created by a DBA who granted it to the engine
  { ASSERT_NE(OpenOrDie(), nullptr); }
  EXPECT_EQ(Q("SELECT value FROM syncsched.meta WHERE key = 'schema_version'"), "5");
  std::string oid = Q("SELECT 'syncsched.schedules'::regclass::oid");
  { ASSERT_NE(OpenOrDie(), nullptr); }
  EXPECT_EQ(Q("SELECT 'syncsched.schedules'::regclass::oid"), oid) << "not recreated";
}

TEST_F(PgStoreTest, AVersion1DatabaseIsMigratedToFillfactor45KeepingItsRows) {
  {
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    Batch b;
    b.schedules = {MakeSchedule(1, "c1", "s1")};
    ASSERT_TRUE(store->Commit(b).ok());
  }
  // As version 1 left it.
  Exec(
      "ALTER TABLE syncsched.schedules SET (fillfactor = 70); "
      "UPDATE syncsched.meta SET value = 1 WHERE key = 'schema_version'");
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Q("SELECT value FROM syncsched.meta WHERE key = 'schema_version'"), "5");
  EXPECT_EQ(Q("SELECT reloptions::text FROM pg_class WHERE oid = 'syncsched.schedules'::regclass"),
            "{fillfactor=45}");
  Snapshot snap = LoadOrDie(*store);
  ASSERT_EQ(snap.schedules.size(), 1u);
  EXPECT_EQ(snap.schedules[0].connection, "c1");
}

TEST_F(PgStoreTest, ASecondOwnerIsRefusedUntilTheFirstLetsGo) {
  auto first = OpenOrDie();
  ASSERT_NE(first, nullptr);
  auto second = OpenPostgresStore(Options());
  ASSERT_FALSE(second.ok());
  EXPECT_TRUE(second.status().IsUnavailable()) << second.status();
  EXPECT_NE(second.status().message().find("is in use by another syncsched engine"),
            std::string::npos)
      << second.status();
  EXPECT_NE(second.status().message().find(uri_), std::string::npos);
  EXPECT_NE(second.status().message().find("backend pid " +
                                           std::to_string(internal::BackendPidForTest(*first))),
            std::string::npos)
      << second.status();
  first.reset();
  EXPECT_NE(OpenOrDie(), nullptr);
}

TEST_F(PgStoreTest, AStatementTimeoutIsUnavailableAndAppliesNothing) {
  PostgresStoreOptions o = Options();
  o.statement_timeout = std::chrono::milliseconds(300);
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  Batch first;
  first.schedules = {MakeSchedule(1, "acme")};
  ASSERT_TRUE(store->Commit(first).ok());
  // Another session holds a lock the commit needs: the commit waits and is cancelled.
  PGconn* blocker = PQconnectdb(uri_.c_str());
  ASSERT_EQ(PQstatus(blocker), CONNECTION_OK);
  PQclear(PQexec(blocker, "BEGIN; LOCK TABLE syncsched.meta IN ACCESS EXCLUSIVE MODE"));
  Batch batch;
  batch.schedules = {MakeSchedule(2, "globex")};
  Status s = store->Commit(batch);
  EXPECT_TRUE(s.IsUnavailable()) << s;
  EXPECT_NE(s.message().find("statement timeout"), std::string::npos) << s;
  EXPECT_NE(s.message().find("nothing of the batch is applied"), std::string::npos) << s;
  PQclear(PQexec(blocker, "ROLLBACK"));
  PQfinish(blocker);
  EXPECT_EQ(LoadOrDie(*store).schedules.size(), 1u);
  ASSERT_TRUE(store->Commit(batch).ok());
  EXPECT_EQ(LoadOrDie(*store).schedules.size(), 2u);
}

// A route that stops carrying bytes without closing (a stalled proxy; support/stall_proxy.h):
// with the store's options through it.
class PgStoreStallTest : public PgStoreTest {
 protected:
  void SetUp() override {
    PgStoreTest::SetUp();
    auto proxy = StallProxy::Start(server_->dir());
    ASSERT_TRUE(proxy.ok()) << proxy.status();
    proxy_ = std::move(proxy).value();
  }
  void TearDown() override {
    proxy_.reset();
    PgStoreTest::TearDown();
  }
  PostgresStoreOptions StalledOptions() const {
    PostgresStoreOptions o = Options();
    o.uri = proxy_->Uri(db_);
    o.reply_timeout = std::chrono::milliseconds(300);
    o.connect_timeout = std::chrono::seconds(2);  // libpq's least
    return o;
  }
  // Waits (up to a minute) until the server no longer runs the session of `pid`.
  bool SessionEnded(int pid) const {
    for (int i = 0; i < 6000; ++i) {
      if (Q("SELECT count(*) FROM pg_stat_activity WHERE pid = " + std::to_string(pid)) == "0") {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  // Opens a store through the proxy and commits schedules 1..n; `*pid`: its server process.
  std::unique_ptr<Store> OpenThroughProxy(int n, int* pid) {
    auto store = OpenOrDie(StalledOptions());
    if (store == nullptr) return nullptr;
    Batch first;
    const char* names[] = {"acme", "globex"};
    for (int i = 0; i < n; ++i) first.schedules.push_back(MakeSchedule(i + 1, names[i % 2]));
    EXPECT_TRUE(store->Commit(first).ok());
    *pid = internal::BackendPidForTest(*store);
    return store;
  }
  std::unique_ptr<StallProxy> proxy_;
};

// The commit gives up at reply_timeout (it would otherwise wait for the whole stall), and when the
// route delivers the commit after all, the server applies nothing of it: the transaction checks
// that it runs before the store's deadline (schema v5: at COMMIT). Without that check the late
// COMMIT would apply a batch reported as failed (and the store would then refuse for good).
TEST_F(PgStoreStallTest, ACommitGivesUpAtTheReplyDeadlineAndItsLateArrivalAppliesNothing) {
  int pid = 0;
  auto store = OpenThroughProxy(1, &pid);
  ASSERT_NE(store, nullptr);
  proxy_->Stall(true);
  Batch second;
  second.schedules = {MakeSchedule(2, "globex")};
  Status s = store->Commit(second);
  EXPECT_TRUE(s.IsUnavailable()) << s;
  EXPECT_NE(s.message().find("no reply from the server within 300 ms"), std::string::npos) << s;
  EXPECT_NE(s.message().find("outcome is unknown"), std::string::npos) << s;
  // The route resumes: it delivers the whole pipeline, BEGIN to COMMIT, then the close.
  proxy_->Stall(false);
  ASSERT_TRUE(SessionEnded(pid));
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.schedules"), "1");
  // The store learns the outcome (not applied) at its next call, and carries on.
  Batch third;
  third.schedules = {MakeSchedule(3, "initech")};
  ASSERT_TRUE(store->Commit(third).ok());
  EXPECT_TRUE(store->Health().ok()) << store->Health();
  EXPECT_EQ(Q("SELECT string_agg(uid::text, ',' ORDER BY uid) FROM syncsched.schedules"), "1,3");
}

// A route that delivers a commit's pipeline but its final COMMIT (and Sync) late, while new
// connections are refused, so that the store cannot end its previous session: the commit is
// reported as failed with its outcome unknown, and when the COMMIT arrives after all, the schema's
// check at commit (v5: the deferred trigger on the commit mark) refuses it. Without it, the late
// COMMIT applies a batch reported as failed, and the store refuses for good once it learns so.
TEST_F(PgStoreStallTest, ACommitWhoseCommitAloneArrivesLateAppliesNothing) {
  int pid = 0;
  auto store = OpenThroughProxy(1, &pid);
  ASSERT_NE(store, nullptr);
  proxy_->HoldFrom('P', "COMMIT");
  proxy_->RefuseNew(true);
  Batch second;
  second.schedules = {MakeSchedule(2, "globex")};
  Status s = store->Commit(second);
  EXPECT_TRUE(s.IsUnavailable()) << s;
  EXPECT_NE(s.message().find("outcome is unknown"), std::string::npos) << s;
  // The server ran the pipeline up to COMMIT: its session still holds the transaction open.
  EXPECT_EQ(Q("SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid = " +
              std::to_string(pid)),
            "1");
  proxy_->Stall(false);  // the COMMIT, then the close, reach the server
  ASSERT_TRUE(SessionEnded(pid));
  EXPECT_EQ(Q("SELECT string_agg(uid::text, ',' ORDER BY uid) FROM syncsched.schedules"), "1");
  proxy_->RefuseNew(false);
  Batch third;
  third.schedules = {MakeSchedule(3, "initech")};
  Status ok;
  for (int i = 0; i < 100; ++i) {  // past the reconnect backoff
    ok = store->Commit(third);
    if (ok.ok() || ok.message().find("next reconnect attempt") == std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(ok.ok()) << ok;
  EXPECT_TRUE(store->Health().ok()) << store->Health();
  EXPECT_EQ(Q("SELECT string_agg(uid::text, ',' ORDER BY uid) FROM syncsched.schedules"), "1,3");
}

// The check at commit, by hand: a transaction whose expiry has passed when COMMIT runs is refused
// (SYE01), on a single engine's mark and on a cluster node's; without the setting it commits.
TEST_F(PgStoreTest, ACommitMarkWrittenPastTheTransactionsExpiryIsRefusedAtCommit) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::string late = "SELECT set_config('syncsched.expiry_us', '1000000', true); ";
  Status s = PgExec(uri_, "BEGIN; " + late +
                              "UPDATE syncsched.meta SET value = value WHERE key = 'commit_seq'; "
                              "COMMIT");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("after its store gave up on it"), std::string::npos) << s;
  s = PgExec(uri_, "BEGIN; " + late +
                       "INSERT INTO syncsched.commit_marks(node, seq) VALUES (7, 1); COMMIT");
  EXPECT_NE(s.message().find("after its store gave up on it"), std::string::npos) << s;
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.commit_marks"), "0");
  Exec("INSERT INTO syncsched.commit_marks(node, seq) VALUES (7, 1)");
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.commit_marks"), "1");
}

// A Load on a stalled route gives up at reply_timeout too, and the next one reads normally.
TEST_F(PgStoreStallTest, ALoadGivesUpAtTheReplyDeadline) {
  int pid = 0;
  auto store = OpenThroughProxy(2, &pid);
  ASSERT_NE(store, nullptr);
  proxy_->Stall(true);
  auto snap = store->Load();
  ASSERT_FALSE(snap.ok());
  EXPECT_TRUE(snap.status().IsUnavailable()) << snap.status();
  EXPECT_NE(snap.status().message().find("no reply from the server within 300 ms"),
            std::string::npos)
      << snap.status();
  proxy_->Stall(false);
  EXPECT_EQ(LoadOrDie(*store).schedules.size(), 2u);
}

// The store's previous session may outlive its connection on the server (the route stalled: the
// server never saw the close). It still holds the owner lock; the store ends it when it
// reconnects (matched by pid and start time), so that it is not refused by its own ghost, and a
// commit in doubt is resolved against a session that can no longer commit.
TEST_F(PgStoreStallTest, AReconnectEndsThePreviousSessionThatTheServerStillRuns) {
  int pid = 0;
  auto store = OpenThroughProxy(1, &pid);
  ASSERT_NE(store, nullptr);
  proxy_->StallOpen();  // the store's connection stalls; new ones are carried
  Batch second;
  second.schedules = {MakeSchedule(2, "globex")};
  Status s = store->Commit(second);
  // The store reconnected at once (a new route), ended the old session (holding the lock) and
  // read that the commit was not applied.
  EXPECT_TRUE(s.IsUnavailable()) << s;
  EXPECT_NE(s.message().find("nothing of the batch is applied"), std::string::npos) << s;
  EXPECT_EQ(Q("SELECT count(*) FROM pg_stat_activity WHERE pid = " + std::to_string(pid)), "0");
  EXPECT_NE(internal::BackendPidForTest(*store), pid);
  ASSERT_TRUE(store->Commit(second).ok());
  proxy_->Stall(false);
  EXPECT_EQ(Q("SELECT string_agg(uid::text, ',' ORDER BY uid) FROM syncsched.schedules"), "1,2");
  EXPECT_TRUE(store->Health().ok()) << store->Health();
}

TEST_F(PgStoreTest, ADroppedConnectionIsReconnectedByTheNextCall) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch first;
  first.schedules = {MakeSchedule(1, "acme")};
  ASSERT_TRUE(store->Commit(first).ok());
  int pid = internal::BackendPidForTest(*store);
  internal::DropConnectionForTest(*store);
  Batch second;
  second.schedules = {MakeSchedule(2, "globex")};
  ASSERT_TRUE(store->Commit(second).ok());
  EXPECT_NE(internal::BackendPidForTest(*store), pid) << "a new session";
  EXPECT_EQ(LoadOrDie(*store).schedules.size(), 2u);
  // And it owns the database again.
  EXPECT_FALSE(OpenPostgresStore(Options()).ok());
}

TEST_F(PgStoreTest, AnEngineThatTookTheDatabaseOverMeanwhileMakesTheStoreRefuseForGood) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  internal::DropConnectionForTest(*store);
  auto other = OpenOrDie();  // the lock was free: another engine takes the database
  ASSERT_NE(other, nullptr);
  Batch batch;
  batch.schedules = {MakeSchedule(1, "acme")};
  Status s = store->Commit(batch);
  EXPECT_TRUE(s.IsUnavailable()) << s;
  EXPECT_NE(s.message().find("is in use by another syncsched engine"), std::string::npos) << s;
  other.reset();  // even once it let go, the first store never writes again
  s = store->Commit(batch);
  EXPECT_TRUE(s.IsUnavailable()) << s;
  EXPECT_NE(s.message().find("opened by another engine while"), std::string::npos) << s;
  EXPECT_FALSE(store->Load().ok());
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.schedules"), "0");
}

// The server restarts under a store in use: calls fail with UNAVAILABLE naming the cause while it
// is down, nothing half-applied, and the store carries on once it is back.
TEST_F(PgStoreTest, TheServerStoppedAndRestartedMidUse) {
  PgServer& server = UsePrivateServer();
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch first;
  first.schedules = {WithRunInFlight(MakeSchedule(1, "acme"), "1-1")};
  ASSERT_TRUE(store->Commit(first).ok());

  ASSERT_TRUE(server.Stop().ok());
  Batch second;
  second.schedules = {MakeSchedule(2, "globex")};
  second.runs = {MakeRun("1-1", 1, 5000)};
  Status s = store->Commit(second);
  EXPECT_TRUE(s.IsUnavailable()) << s;
  EXPECT_NE(s.message().find(uri_), std::string::npos) << s;
  s = store->Commit(second);  // still down: the reconnect fails
  EXPECT_TRUE(s.IsUnavailable()) << s;
  EXPECT_NE(s.message().find("cannot be reached"), std::string::npos) << s;
  EXPECT_TRUE(store->Load().status().IsUnavailable());

  ASSERT_TRUE(server.StartAgain().ok());
  ASSERT_TRUE(store->Commit(second).ok());
  Snapshot snap = LoadOrDie(*store);
  EXPECT_EQ(snap.schedules.size(), 2u);
  EXPECT_EQ(Q("SELECT count(*) FROM syncsched.history"), "1");
  EXPECT_FALSE(OpenPostgresStore(Options()).ok()) << "the lock was taken again";
}

TEST_F(PgStoreTest, ReconnectsBackOffAfterAFailedAttempt) {
  PgServer& server = UsePrivateServer();
  PostgresStoreOptions o = Options();
  o.reconnect_backoff_min = std::chrono::hours(1);
  o.reconnect_backoff_max = std::chrono::hours(1);
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(server.Stop().ok());
  internal::DropConnectionForTest(*store);
  Batch batch;
  batch.schedules = {MakeSchedule(1, "acme")};
  Status s = store->Commit(batch);  // the first attempt is at once, and fails
  EXPECT_NE(s.message().find("cannot be reached"), std::string::npos) << s;
  ASSERT_TRUE(server.StartAgain().ok());
  s = store->Commit(batch);  // within the backoff: no attempt
  EXPECT_TRUE(s.IsUnavailable()) << s;
  EXPECT_NE(s.message().find("next reconnect attempt is in"), std::string::npos) << s;
}

}  // namespace
}  // namespace syncsched::store
