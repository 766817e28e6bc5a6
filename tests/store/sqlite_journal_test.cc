// The SQLite store's run journal (schema v5; sqlite_store.h, SqliteStoreOptions "run journal"):
// a store writing through its journal loads exactly what a store writing in place loads, before
// and after every fold and across reopens; its history after a fold is the one written in place;
// a crash (a killed process) in the middle of a fold or with a journal tail loses nothing; a file
// of schema v4 is migrated; a damaged journal is refused as corruption.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "store/cksum_vfs.h"
#include "store/fault_vfs.h"
#include "store/sqlite_store.h"
#include "store/store.h"
#include "store/store_test_util.h"
#include "syncsched/status.h"

namespace syncsched::store {
namespace {

using testing::Effect;
using testing::Fault;
using testing::FaultVfs;
using testing::FileKind;
using testing::Op;
using testutil::ReadBytes;
using testutil::WriteBytes;

std::string Owed(const OwedRun& r) {
  if (r.empty()) return "-";
  return r.run_id + "/" + std::to_string(r.slot_ms) + "/" + std::to_string(r.mode) + "/" +
         std::to_string(r.attempt) + "/" + std::to_string(r.at_ms) + "/" + std::to_string(r.seq) +
         "/" + std::to_string(r.scheduled);
}

// Every field of a snapshot, as text (the order of rows as Load gives them).
std::string FullDigest(const Snapshot& snap) {
  std::string out = testutil::Digest(snap);
  for (const ScheduleRow& r : snap.schedules) {
    const RunRow& f = r.in_flight;
    out += std::to_string(r.uid) + " " + r.integration + "/" + r.connection + "/" + r.sync + "/" +
           r.variant + " s" + std::to_string(r.state) + " a" + std::to_string(r.anchor_ms) + " o" +
           std::to_string(r.frequency_override_ms) + " n" + std::to_string(r.next_slot_ms) + " r" +
           std::to_string(r.runs) + " f" + std::to_string(r.failures) + " k" +
           std::to_string(r.skipped) + " ls" + std::to_string(r.last_start_ms) + " lf" +
           std::to_string(r.last_finish_ms) + " ok" + std::to_string(r.last_ok) + " e[" +
           r.last_error + "] run[" + f.run_id + " " + std::to_string(f.schedule_uid) + " " +
           std::to_string(f.slot_ms) + " " + std::to_string(f.mode) + " " +
           std::to_string(f.attempt) + " " + std::to_string(f.started_ms) + "] seq" +
           std::to_string(r.run_seq) + " p" + std::to_string(r.pending) + " w" + Owed(r.waiting) +
           " t" + Owed(r.retry) + "\n";
  }
  for (const RunRow& f : snap.unfinished_runs) {
    out += "unfinished " + f.run_id + " " + std::to_string(f.schedule_uid) + "\n";
  }
  return out;
}

// Every row of the history table, by id, through a plain read-only connection.
std::string HistoryDump(const std::string& path) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db,
                               "SELECT id, schedule_uid, run_id, slot_ms, mode, attempt, "
                               "started_ms, finished_ms, ok, error FROM history ORDER BY id",
                               -1, &stmt, nullptr),
            SQLITE_OK);
  std::string out;
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    for (int c = 0; c < 10; ++c) {
      const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, c));
      out += text != nullptr ? text : "<null>";
      out += c == 9 ? "\n" : "|";
    }
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return out;
}

std::int64_t QueryInt(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK)
      << sqlite3_errmsg(db);
  std::int64_t value = -1;
  if (sqlite3_step(stmt) == SQLITE_ROW) value = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return value;
}

// Runs `sql` on the file through the store's page checksum VFS.
void ExecRaw(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  std::string error_text;
  std::string vfs = cksum::ShimOver("", &error_text);
  ASSERT_FALSE(vfs.empty()) << error_text;
  ASSERT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, vfs.c_str()), SQLITE_OK);
  char* error = nullptr;
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error), SQLITE_OK) << error;
  sqlite3_free(error);
  sqlite3_close(db);
}

// A deterministic workload of commits: new schedules (written in place), then rounds of
// dispatches and outcomes of random schedules as update-only rows with finished runs (some
// failed, some owing runs), full rows of stored schedules, deletions, and new schedules later on.
class Workload {
 public:
  explicit Workload(unsigned seed) : gen_(seed) {}

  Batch Next() {
    Batch b;
    ++round_;
    if (round_ == 1) {
      for (std::uint64_t uid = 1; uid <= 300; ++uid) b.schedules.push_back(New(uid));
      return b;
    }
    if (round_ % 7 == 0) {  // a few new schedules, and a deletion
      for (int k = 0; k < 5; ++k) b.schedules.push_back(New(++max_uid_));
      std::uint64_t gone = Pick();
      b.schedules_deleted.push_back(gone);
      rows_.erase(gone);
      return b;
    }
    int n = 1 + static_cast<int>(gen_() % 60);
    for (int k = 0; k < n; ++k) {
      std::uint64_t uid = Pick();
      ScheduleRow& row = rows_[uid];
      switch (gen_() % 3) {
        case 0: {  // a dispatch
          row.in_flight.run_id = std::to_string(uid) + "-" + std::to_string(round_ * 100 + k);
          row.in_flight.schedule_uid = uid;
          row.in_flight.slot_ms = 1000 * round_;
          row.in_flight.mode = static_cast<std::uint8_t>(gen_() % 2);
          row.in_flight.attempt = 1 + static_cast<std::int32_t>(gen_() % 3);
          row.in_flight.started_ms = 1000 * round_ + 3;
          row.next_slot_ms += 60'000;
          break;
        }
        default: {  // an outcome
          RunRow run;
          run.run_id = row.in_flight.run_id.empty()
                           ? std::to_string(uid) + "-x" + std::to_string(round_)
                           : row.in_flight.run_id;
          run.schedule_uid = uid;
          run.number = ++row.runs;
          run.slot_ms = 1000 * round_;
          run.started_ms = run.slot_ms + 1;
          run.finished_ms = run.slot_ms + 2 + k;
          run.ok = static_cast<std::int8_t>(gen_() % 4 == 0 ? 0 : 1);
          run.error = run.ok == 0 ? "failed in round " + std::to_string(round_) : "";
          if (run.ok == 0) ++row.failures;
          row.last_start_ms = run.started_ms;
          row.last_finish_ms = run.finished_ms;
          row.last_ok = run.ok;
          row.last_error = run.error;
          row.in_flight = RunRow{};
          row.pending = static_cast<std::uint8_t>(gen_() % 5 == 0 ? 2 : 0);
          row.waiting = OwedRun{};
          if (gen_() % 6 == 0) {
            row.waiting.run_id = std::to_string(uid) + "-w" + std::to_string(++row.run_seq);
            row.waiting.at_ms = run.finished_ms;
            row.waiting.seq = round_;
          }
          b.runs.push_back(run);
          break;
        }
      }
      ScheduleRow sent = row;
      if (gen_() % 10 != 0) {  // mostly update-only, as the engine sends them
        sent.update_only = true;
        sent.integration.clear();
        sent.connection.clear();
        sent.sync.clear();
        sent.variant.clear();
      }
      b.schedules.push_back(sent);
    }
    return b;
  }

 private:
  ScheduleRow New(std::uint64_t uid) {
    ScheduleRow row;
    row.uid = uid;
    row.integration = "github";
    row.connection = "conn-" + std::to_string(uid);
    row.sync = "issues";
    row.variant = "base";
    row.state = 1;
    row.anchor_ms = 1'700'000'000'000;
    row.next_slot_ms = row.anchor_ms + static_cast<std::int64_t>(uid);
    max_uid_ = std::max(max_uid_, uid);
    rows_[uid] = row;
    return row;
  }
  std::uint64_t Pick() {
    auto it = rows_.begin();
    std::advance(it, static_cast<std::ptrdiff_t>(gen_() % rows_.size()));
    return it->first;
  }

  std::mt19937 gen_;
  std::uint64_t round_ = 0;
  std::uint64_t max_uid_ = 0;
  std::map<std::uint64_t, ScheduleRow> rows_;
};

// New schedules 1..n (written in place).
Batch NewSchedules(std::uint64_t n) {
  Batch b;
  for (std::uint64_t uid = 1; uid <= n; ++uid) {
    b.schedules.push_back(testutil::Schedule(uid, "c" + std::to_string(uid)));
  }
  return b;
}

// Run `number` of schedules 1..n finished (`ok`): each schedule's update-only row and its run,
// two journal records a schedule.
Batch RunsOf(std::uint64_t n, std::uint64_t number, std::int8_t ok = 1) {
  Batch b;
  for (std::uint64_t uid = 1; uid <= n; ++uid) {
    ScheduleRow row = testutil::Schedule(uid, "");
    row.update_only = true;
    row.runs = number;
    b.schedules.push_back(row);
    b.runs.push_back(testutil::FinishedRun(uid, number, ok));
  }
  return b;
}

class JournalTest : public testutil::TempDirTest {
 protected:
  SqliteStoreOptions Journaled(const std::string& path, std::size_t fold_records) const {
    SqliteStoreOptions o = Options(path);
    o.journal_from_uid = 0;
    o.journal_fold_records = fold_records;
    o.journal_fold_per_uid = 0;  // exactly fold_records
    return o;
  }
  SqliteStoreOptions InPlace(const std::string& path) const {
    SqliteStoreOptions o = Options(path);
    o.journal_from_uid = UINT64_MAX;
    return o;
  }
  std::string LoadDigest(Store& store) {
    auto snap = store.Load();
    EXPECT_TRUE(snap.ok()) << snap.status();
    return snap.ok() ? FullDigest(*snap) : "<error: " + snap.status().ToString() + ">";
  }
  std::string ReopenedDigest(const SqliteStoreOptions& options) {
    auto store = OpenSqliteStore(options);
    if (!store.ok()) return "<error: " + store.status().ToString() + ">";
    return LoadDigest(**store);
  }
};

// The same commits through the journal (folding every few commits, or only at the end) and in
// place: the same snapshot after every commit, before and after each fold, and across reopens;
// the same history once folded.
TEST_F(JournalTest, FoldEquivalence) {
  for (std::size_t fold : {std::size_t{50}, std::size_t{1} << 30}) {
    SCOPED_TRACE("journal_fold_records " + std::to_string(fold));
    std::string journaled = dir_ + "/journal-" + std::to_string(fold) + ".db";
    std::string in_place = dir_ + "/in-place-" + std::to_string(fold) + ".db";
    auto j = OpenOrDie(Journaled(journaled, fold));
    auto p = OpenOrDie(InPlace(in_place));
    ASSERT_NE(j, nullptr);
    ASSERT_NE(p, nullptr);
    Workload work(7);
    bool saw_journal = false;
    for (int round = 1; round <= 120; ++round) {
      SCOPED_TRACE("round " + std::to_string(round));
      Batch b = work.Next();
      ASSERT_TRUE(j->Commit(b).ok());
      ASSERT_TRUE(p->Commit(b).ok());
      saw_journal = saw_journal || internal::JournalRecordsForTest(*j) > 0;
      std::string want = LoadDigest(*p);
      ASSERT_EQ(LoadDigest(*j), want);
      if (round % 40 == 0) {
        // Fold now: the snapshot does not change, the journal empties, the history matches.
        ASSERT_TRUE(internal::FoldJournalForTest(*j).ok());
        EXPECT_EQ(internal::JournalRecordsForTest(*j), 0u);
        // Its buffers are freed, not kept at their high water until the next fold.
        EXPECT_EQ(internal::FoldBytesForTest(*j), 0u);
        ASSERT_EQ(LoadDigest(*j), want);
        EXPECT_EQ(HistoryDump(journaled), HistoryDump(in_place));
      }
    }
    EXPECT_TRUE(saw_journal);
    // A last tail, then a reopen without a fold first (a crash keeps the journal: see
    // RecoveryReadsTheJournalTail) and one after the fold at close.
    for (int round = 0; round < 5; ++round) {
      Batch b = work.Next();
      ASSERT_TRUE(j->Commit(b).ok());
      ASSERT_TRUE(p->Commit(b).ok());
    }
    std::string want = LoadDigest(*p);
    EXPECT_EQ(LoadDigest(*j), want);
    j.reset();
    p.reset();
    EXPECT_EQ(QueryInt(journaled, "SELECT count(*) FROM journal"), 0) << "folded at close";
    EXPECT_EQ(HistoryDump(journaled), HistoryDump(in_place));
    EXPECT_EQ(ReopenedDigest(Journaled(journaled, fold)), want);
    EXPECT_EQ(ReopenedDigest(InPlace(journaled)), want);
  }
}

// A killed process leaves the journal's tail (no fold at close): the next open's Load applies it,
// and its fold gives the history written in place.
TEST_F(JournalTest, RecoveryReadsTheJournalTail) {
  std::string journaled = dir_ + "/journal.db";
  std::string in_place = dir_ + "/in-place.db";
  {
    auto p = OpenOrDie(InPlace(in_place));
    ASSERT_NE(p, nullptr);
    Workload work(11);
    for (int round = 1; round <= 60; ++round) ASSERT_TRUE(p->Commit(work.Next()).ok());
  }
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto j = OpenSqliteStore(Journaled(journaled, 100));
    if (!j.ok()) ::_exit(2);
    Workload work(11);
    for (int round = 1; round <= 60; ++round) {
      if (!(*j)->Commit(work.Next()).ok()) ::_exit(3);
    }
    if (internal::JournalRecordsForTest(**j) == 0) ::_exit(4);
    ::_exit(0);  // killed: no destructor, no fold, no checkpoint
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  EXPECT_GT(QueryInt(journaled, "SELECT count(*) FROM journal"), 0);
  std::string want = ReopenedDigest(InPlace(in_place));
  {
    auto j = OpenOrDie(Journaled(journaled, 1u << 30));
    ASSERT_NE(j, nullptr);
    EXPECT_GT(internal::JournalRecordsForTest(*j), 0u);
    EXPECT_EQ(LoadDigest(*j), want);
    ASSERT_TRUE(internal::FoldJournalForTest(*j).ok());
    EXPECT_EQ(LoadDigest(*j), want);
  }
  EXPECT_EQ(HistoryDump(journaled), HistoryDump(in_place));
}

// A process killed in the middle of a fold, at each of its writes to the WAL in turn (the writes
// from that one on fail, then the process dies): the next open loads the same snapshot, and the
// journal is either whole (the fold did not commit) or empty (it did).
TEST_F(JournalTest, CrashInTheMiddleOfAFold) {
  FaultVfs::Get();  // registered before the fork
  std::string in_place = dir_ + "/in-place.db";
  {
    auto p = OpenOrDie(InPlace(in_place));
    ASSERT_NE(p, nullptr);
    Workload work(5);
    for (int round = 1; round <= 40; ++round) ASSERT_TRUE(p->Commit(work.Next()).ok());
  }
  const std::string want = ReopenedDigest(InPlace(in_place));
  const std::string want_history = HistoryDump(in_place);
  // The journaled file before the fold, closed without folding: made by a killed child.
  std::string base = dir_ + "/base.db";
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto j = OpenSqliteStore(Journaled(base, 1u << 30));
    if (!j.ok()) ::_exit(2);
    Workload work(5);
    for (int round = 1; round <= 40; ++round) {
      if (!(*j)->Commit(work.Next()).ok()) ::_exit(3);
    }
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  // The killed child's files: the database and its WAL (with every commit), copied for each point.
  const std::string base_bytes = ReadBytes(base);
  const std::string base_wal = ReadBytes(base + "-wal");
  ASSERT_FALSE(base_wal.empty());
  {
    std::string probe = dir_ + "/probe.db";
    WriteBytes(probe, base_bytes);
    WriteBytes(probe + "-wal", base_wal);
    auto j = OpenOrDie(Journaled(probe, 1u << 30));
    ASSERT_NE(j, nullptr);
    ASSERT_GT(internal::JournalRecordsForTest(*j), 0u);
    ASSERT_EQ(LoadDigest(*j), want);
  }
  int points = 0, folded = 0;
  for (std::uint64_t k = 0; k < 400; ++k) {
    SCOPED_TRACE("WAL write " + std::to_string(k));
    std::string path = dir_ + "/point.db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::remove((path + suffix).c_str());
    WriteBytes(path, base_bytes);
    WriteBytes(path + "-wal", base_wal);
    child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      SqliteStoreOptions o = Journaled(path, 1u << 30);
      o.vfs = FaultVfs::kName;
      auto j = OpenSqliteStore(o);
      if (!j.ok()) ::_exit(2);
      Fault f;
      f.kind = FileKind::kWal;
      f.op = Op::kWrite;
      f.after = k;
      f.times = Fault::kForever;
      f.rc = SQLITE_IOERR_WRITE;
      FaultVfs::Get().Arm(f);
      Status s = internal::FoldJournalForTest(**j);
      bool fired = FaultVfs::Get().fired() > 0;
      ::_exit(fired ? (s.ok() ? 10 : 11) : (s.ok() ? 0 : 1));  // killed, whatever happened
    }
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    int code = WEXITSTATUS(status);
    ASSERT_TRUE(code == 0 || code == 10 || code == 11) << code;
    auto j = OpenOrDie(InPlace(path));  // a store that writes in place folds what it finds
    ASSERT_NE(j, nullptr);
    EXPECT_EQ(LoadDigest(*j), want);
    j.reset();
    EXPECT_EQ(HistoryDump(path), want_history);
    if (code == 0) break;  // the fold wrote everything without reaching write k
    ++points;
    if (code == 10) ++folded;
  }
  EXPECT_GT(points, 3);
  std::printf("  fold killed at %d WAL writes (%d of them after its commit)\n", points, folded);
}

// A file of schema v4 (no journal table) is migrated to v5 keeping its rows.
TEST_F(JournalTest, MigrationFromVersionFour) {
  Workload work(3);
  std::string want;
  {
    auto p = OpenOrDie(InPlace(path_));
    ASSERT_NE(p, nullptr);
    for (int round = 1; round <= 20; ++round) ASSERT_TRUE(p->Commit(work.Next()).ok());
    want = LoadDigest(*p);
  }
  std::string history = HistoryDump(path_);
  ExecRaw(path_, "DROP TABLE journal; PRAGMA user_version = 4");
  ASSERT_EQ(QueryInt(path_, "PRAGMA user_version"), 4);
  {
    auto j = OpenOrDie(Journaled(path_, 1u << 30));
    ASSERT_NE(j, nullptr);
    EXPECT_EQ(QueryInt(path_, "PRAGMA user_version"), 5);
    EXPECT_EQ(LoadDigest(*j), want);
    // And it journals from then on.
    ASSERT_TRUE(j->Commit(work.Next()).ok());
  }
  EXPECT_EQ(QueryInt(path_, "SELECT count(*) FROM journal"), 0);
  EXPECT_EQ(ReopenedDigest(Options()), ReopenedDigest(Journaled(path_, 10)));
}

// Finished runs in the journal of a schedule deleted before the fold are not folded into its
// history; its row is not brought back.
TEST_F(JournalTest, ADeletedScheduleGetsNothingFromTheJournal) {
  auto j = OpenOrDie(Journaled(path_, 1u << 30));
  ASSERT_NE(j, nullptr);
  Batch setup;
  for (std::uint64_t uid = 1; uid <= 3; ++uid) {
    setup.schedules.push_back(testutil::Schedule(uid, "c" + std::to_string(uid)));
  }
  ASSERT_TRUE(j->Commit(setup).ok());
  Batch runs;
  for (std::uint64_t uid = 1; uid <= 3; ++uid) {
    ScheduleRow row = testutil::Schedule(uid, "");
    row.update_only = true;
    row.runs = 99;
    runs.schedules.push_back(row);
    runs.runs.push_back(testutil::FinishedRun(uid, 1, 0));
  }
  ASSERT_TRUE(j->Commit(runs).ok());
  EXPECT_EQ(internal::JournalRecordsForTest(*j), 6u);
  Batch gone;
  gone.schedules_deleted = {2};
  ASSERT_TRUE(j->Commit(gone).ok());
  ASSERT_TRUE(internal::FoldJournalForTest(*j).ok());
  auto snap = j->Load();
  ASSERT_TRUE(snap.ok());
  ASSERT_EQ(snap->schedules.size(), 2u);
  EXPECT_EQ(snap->schedules[0].runs, 99u);
  EXPECT_EQ(snap->schedules[1].uid, 3u);
  EXPECT_EQ(QueryInt(path_, "SELECT count(*) FROM history WHERE schedule_uid = 2"), 0);
  EXPECT_EQ(QueryInt(path_, "SELECT count(*) FROM history"), 4);  // ring and failure places
  EXPECT_EQ(QueryInt(path_, "SELECT count(*) FROM schedules WHERE uid = 2"), 0);
}

// The fold's threshold grows with the uids issued (journal_fold_per_uid records each, at least
// journal_fold_records, overflow capped), and is exactly journal_fold_records with 0.
TEST_F(JournalTest, TheFoldThresholdGrowsWithTheSchedules) {
  struct Case {
    std::size_t floor;  // journal_fold_records
    std::size_t per_uid;
    int commits_before_fold;  // each appends 10 records (5 schedules, a row and a run each)
  };
  // 5 uids: 5 x per_uid records, at least the floor; 5 x 3689348814741910324 wraps to 4 in 64
  // bits, and must be taken as the cap (1,048,576) rather than as 4.
  for (Case c : {Case{10, 0, 1}, Case{10, 4, 2}, Case{10, 6, 3}, Case{30, 4, 3},
                 Case{10, SIZE_MAX, -1}, Case{10, 3689348814741910324u, -1}}) {
    SCOPED_TRACE("journal_fold_records " + std::to_string(c.floor) + ", journal_fold_per_uid " +
                 std::to_string(c.per_uid));
    std::string path =
        dir_ + "/threshold-" + std::to_string(c.floor) + "-" + std::to_string(c.per_uid) + ".db";
    SqliteStoreOptions o = Journaled(path, c.floor);
    o.journal_fold_per_uid = c.per_uid;
    auto j = OpenOrDie(o);
    ASSERT_NE(j, nullptr);
    ASSERT_TRUE(j->Commit(NewSchedules(5)).ok());
    for (int commit = 1; commit <= 4; ++commit) {
      SCOPED_TRACE("commit " + std::to_string(commit));
      ASSERT_TRUE(j->Commit(RunsOf(5, static_cast<std::uint64_t>(commit), 0)).ok());
      // A fold under way holds its records in its buffers.
      const bool folding =
          internal::FoldBytesForTest(*j) > 0 ||
          internal::JournalRecordsForTest(*j) < 10u * static_cast<unsigned>(commit);
      EXPECT_EQ(folding, c.commits_before_fold > 0 && commit >= c.commits_before_fold);
      if (folding) break;
    }
  }
}

// Commits that append more records than a fold's slice (a sixteenth of the fold) do not outgrow
// the fold: each slice folds at least twice what its commit appended, so the journal stays within
// a few folds' worth (with slices of a fixed size it grew by 36 records a commit here, without
// bound).
TEST_F(JournalTest, AFoldKeepsUpWithCommitsLargerThanItsSlices) {
  constexpr std::size_t kFold = 64;
  auto j = OpenOrDie(Journaled(path_, kFold));
  ASSERT_NE(j, nullptr);
  ASSERT_TRUE(j->Commit(NewSchedules(20)).ok());
  std::uint64_t most = 0;
  for (std::uint64_t commit = 1; commit <= 60; ++commit) {
    ASSERT_TRUE(j->Commit(RunsOf(20, commit, 0)).ok());  // 40 records
    most = std::max(most, internal::JournalRecordsForTest(*j));
  }
  EXPECT_LE(most, 3 * kFold);
  auto snap = j->Load();
  ASSERT_TRUE(snap.ok());
  ASSERT_EQ(snap->schedules.size(), 20u);
  EXPECT_EQ(snap->schedules[0].runs, 60u);
}

// One commit much larger than a slice, while a fold is under way, does not make that commit wait
// behind the rest of the fold: its share is spread over the next commits (at most an eighth of the
// fold per slice), and the fold still ends and the journal stays bounded.
TEST_F(JournalTest, OneLargeCommitDoesNotWaitBehindAWholeFold) {
  constexpr std::size_t kFold = 1024;
  auto j = OpenOrDie(Journaled(path_, kFold));
  ASSERT_NE(j, nullptr);
  ASSERT_TRUE(j->Commit(NewSchedules(500)).ok());
  std::uint64_t number = 0;
  auto runs_of = [&](std::uint64_t uids) { return RunsOf(uids, ++number); };
  // Small commits until a fold is under way (1,024 records: the 26th commit of 40).
  int small = 0;
  while (internal::FoldBytesForTest(*j) == 0) {
    ASSERT_LT(++small, 40);
    ASSERT_TRUE(j->Commit(runs_of(20)).ok());
  }
  // 1,000 records at once: twice that would be the whole rest of the fold.
  ASSERT_TRUE(j->Commit(runs_of(500)).ok());
  EXPECT_GT(internal::FoldBytesForTest(*j), 0u) << "the commit waited behind the whole fold";
  std::uint64_t most = 0;
  for (int k = 0; k < 60; ++k) {
    ASSERT_TRUE(j->Commit(runs_of(20)).ok());
    most = std::max(most, internal::JournalRecordsForTest(*j));
  }
  EXPECT_LE(most, 3 * kFold);
  EXPECT_LT(internal::JournalRecordsForTest(*j), 2 * kFold);
  auto snap = j->Load();
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->schedules[0].runs, number);
  EXPECT_EQ(snap->schedules[499].runs, small + 1u);
}

// A fold reserves its buffers once, for the rows it reads: its memory is the journal's bytes plus
// a few words a record, not the up to twice as much (three times while it moves) that a buffer
// grown by doubling would hold. 17 rows of ~110 KB: doubling would end at 32 rows' worth.
TEST_F(JournalTest, AFoldHoldsTheJournalsBytesAndNoMore) {
  constexpr std::uint64_t kSchedules = 100;
  constexpr std::size_t kRows = 17;
  auto j = OpenOrDie(Journaled(path_, kRows * 2 * kSchedules));
  ASSERT_NE(j, nullptr);
  ASSERT_TRUE(j->Commit(NewSchedules(kSchedules)).ok());
  for (std::uint64_t number = 1; internal::FoldBytesForTest(*j) == 0; ++number) {
    ASSERT_LE(number, kRows);
    Batch b = RunsOf(kSchedules, number, 0);
    for (RunRow& run : b.runs) run.error = std::string(1000, 'e');
    ASSERT_TRUE(j->Commit(b).ok());
  }
  // The fold read every row (its threshold is theirs); nothing folded is deleted yet.
  const std::int64_t bytes = QueryInt(path_, "SELECT sum(length(body)) FROM journal");
  const std::int64_t rows = QueryInt(path_, "SELECT count(*) FROM journal");
  ASSERT_EQ(rows, static_cast<std::int64_t>(kRows));
  ASSERT_GT(bytes, static_cast<std::int64_t>(kRows * kSchedules * 1000));
  // The records' index (FoldEntry, 24 bytes) and the rows' (two words each) beside the bytes.
  const std::size_t most = static_cast<std::size_t>(bytes) + (kRows * 2 * kSchedules + 64) * 24 +
                           static_cast<std::size_t>(rows) * 32;
  EXPECT_LE(internal::FoldBytesForTest(*j), most);
  EXPECT_GE(internal::FoldBytesForTest(*j), static_cast<std::size_t>(bytes));
}

// A journal that has held records for journal_fold_after_ms is folded at the next commit however
// few they are, so that readers of the file see the tables at most about that far behind.
TEST_F(JournalTest, AnAgedJournalIsFoldedHoweverSmall) {
  SqliteStoreOptions o = Journaled(path_, 1u << 30);
  o.journal_fold_after_ms = 60'000;
  auto j = OpenOrDie(o);
  ASSERT_NE(j, nullptr);
  ASSERT_TRUE(j->Commit(NewSchedules(1)).ok());
  auto run = [](std::uint64_t number) { return RunsOf(1, number); };
  ASSERT_TRUE(j->Commit(run(1)).ok());
  EXPECT_EQ(internal::JournalRecordsForTest(*j), 2u);
  internal::AgeJournalForTest(*j, std::chrono::milliseconds(59'000));
  ASSERT_TRUE(j->Commit(run(2)).ok());
  EXPECT_EQ(internal::JournalRecordsForTest(*j), 4u) << "folded before it was a minute old";
  EXPECT_EQ(QueryInt(path_, "SELECT count(*) FROM history"), 0);
  internal::AgeJournalForTest(*j, std::chrono::milliseconds(1'000));
  ASSERT_TRUE(j->Commit(run(3)).ok());
  EXPECT_EQ(internal::JournalRecordsForTest(*j), 0u);
  EXPECT_EQ(QueryInt(path_, "SELECT runs FROM schedules WHERE uid = 1"), 3);
  EXPECT_EQ(QueryInt(path_, "SELECT count(*) FROM history"), 3);
  // The next records start a new minute.
  ASSERT_TRUE(j->Commit(run(4)).ok());
  EXPECT_EQ(internal::JournalRecordsForTest(*j), 2u);
  // With no commit after them (an idle engine): the store says when its fold is due, and
  // Maintain (the engine's writer calls it once due) folds without a commit.
  auto due = j->MaintainDue();
  ASSERT_TRUE(due.has_value());
  EXPECT_GT(*due, std::chrono::steady_clock::now() + std::chrono::seconds(50));
  j->Maintain();  // not yet due: nothing
  EXPECT_EQ(internal::JournalRecordsForTest(*j), 2u);
  internal::AgeJournalForTest(*j, std::chrono::milliseconds(60'000));
  j->Maintain();
  EXPECT_EQ(internal::JournalRecordsForTest(*j), 0u);
  EXPECT_EQ(QueryInt(path_, "SELECT runs FROM schedules WHERE uid = 1"), 4);
  EXPECT_FALSE(j->MaintainDue().has_value()) << "nothing left to fold";
}

// A smaller history_per_schedule at open: the journal's runs (placed with the old bound) are
// folded first, then trimmed with the rest, as if they had been written in place.
TEST_F(JournalTest, AShorterHistoryFoldsTheJournalBeforeTrimming) {
  std::string journaled = dir_ + "/journal.db";
  std::string in_place = dir_ + "/in-place.db";
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto j = OpenSqliteStore(Journaled(journaled, 1u << 30));
    if (!j.ok()) ::_exit(2);
    Workload work(13);
    for (int round = 1; round <= 80; ++round) {
      if (!(*j)->Commit(work.Next()).ok()) ::_exit(3);
    }
    ::_exit(0);  // the journal stays
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  {
    auto p = OpenOrDie(InPlace(in_place));
    ASSERT_NE(p, nullptr);
    Workload work(13);
    for (int round = 1; round <= 80; ++round) ASSERT_TRUE(p->Commit(work.Next()).ok());
  }
  for (const std::string& path : {journaled, in_place}) {
    SqliteStoreOptions o = Journaled(path, 1u << 30);
    o.history_per_schedule = 2;
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    EXPECT_EQ(internal::JournalRecordsForTest(*store), 0u);
  }
  EXPECT_EQ(HistoryDump(journaled), HistoryDump(in_place));
  EXPECT_EQ(ReopenedDigest(InPlace(journaled)), ReopenedDigest(InPlace(in_place)));
}

// A damaged journal row is corruption: Load refuses it naming the file and the row, and the
// store is broken until reopened.
TEST_F(JournalTest, ADamagedJournalIsRefusedAsCorruption) {
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto j = OpenSqliteStore(Journaled(path_, 1u << 30));
    if (!j.ok()) ::_exit(2);
    Workload work(17);
    for (int round = 1; round <= 10; ++round) {
      if (!(*j)->Commit(work.Next()).ok()) ::_exit(3);
    }
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ExecRaw(path_, "PRAGMA wal_checkpoint(TRUNCATE)");  // everything in the file itself
  std::int64_t seq = QueryInt(path_, "SELECT max(seq) FROM journal");
  ASSERT_GT(seq, 0);
  const std::string saved = ReadBytes(path_);
  // Damaged bodies, then damaged counts (none, negative, more than the bytes hold, one that would
  // overflow their sum): refused at open or by Load, as corruption naming the row.
  std::vector<std::string> damage;
  for (const char* body : {"x'01'", "x'0101'", "x'09'", "x'0102'", "x'01010203'"}) {
    damage.push_back(std::string("body = ") + body);
  }
  for (const char* records : {"0", "-1", "1000000000", "9223372036854775807"}) {
    damage.push_back(std::string("records = ") + records);
  }
  for (const std::string& edit : damage) {
    SCOPED_TRACE(edit);
    ExecRaw(path_, "UPDATE journal SET " + edit + " WHERE seq = " + std::to_string(seq));
    {
      auto j = OpenSqliteStore(Journaled(path_, 1u << 30));
      Status refused = j.ok() ? (*j)->Load().status() : j.status();
      ASSERT_FALSE(refused.ok());
      EXPECT_EQ(refused.code(), StatusCode::kInternal) << refused;
      EXPECT_NE(refused.message().find(path_), std::string::npos) << refused;
      EXPECT_NE(refused.message().find("run journal row " + std::to_string(seq)), std::string::npos)
          << refused;
      if (j.ok()) EXPECT_FALSE((*j)->Health().ok());
    }
    WriteBytes(path_, saved);
    std::remove((path_ + "-wal").c_str());
    std::remove((path_ + "-shm").c_str());
  }
}

}  // namespace
}  // namespace syncsched::store
