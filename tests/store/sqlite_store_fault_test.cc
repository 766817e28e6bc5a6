// Storage faults below the store (issue 11): the fault VFS (fault_vfs.h) fails, one at a time,
// every read, write, sync, truncate, open and shared-memory call that opening, loading, committing
// and checkpointing make, on each kind of file (main database, WAL, shared memory), with a full
// disk, I/O errors, corruption, short reads and garbage. For each fault point the store must answer
// a clear error that names the file (or succeed), apply nothing of a failed batch (the file is
// reopened and compared), and recover when the fault goes away: at once, or, after corruption
// was reported, once reopened (as documented in sqlite_store.h).
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

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
using testutil::Digest;
using testutil::FinishedRun;
using testutil::ReadBytes;
using testutil::Schedule;
using testutil::WriteBytes;
namespace fs = std::filesystem;

bool Contains(const Status& s, const std::string& part) {
  return s.message().find(part) != std::string::npos;
}

// The first state: a catalog and 40 schedules with history.
Batch BaseBatch() {
  Batch batch;
  batch.syncs.push_back(SyncRow{"github", "issues", "every 30s", 30'000, true, 0, 0, ""});
  batch.integrations.push_back(IntegrationRow{"github", 4});
  batch.connections_added.push_back(ConnectionRow{"github", "acme"});
  for (std::uint64_t i = 1; i <= 40; ++i) {
    batch.schedules.push_back(Schedule(i, "conn-" + std::to_string(i)));
    batch.runs.push_back(FinishedRun(i, 1, 0));
  }
  return batch;
}

// A batch that writes many pages: 400 new schedules with history, updates, a deletion.
Batch NextBatch() {
  Batch batch;
  batch.connections_added.push_back(ConnectionRow{"github", "globex"});
  batch.connections_deleted.push_back(ConnectionRow{"github", "acme"});
  batch.schedules_deleted.push_back(5);
  for (std::uint64_t i = 1; i <= 40; ++i) {
    ScheduleRow row = Schedule(i, "");
    row.update_only = true;
    row.runs = 1000 + i;
    row.last_error = "updated";
    batch.schedules.push_back(row);
  }
  for (std::uint64_t i = 100; i < 500; ++i) {
    batch.schedules.push_back(Schedule(i, "new-" + std::to_string(i), std::string(300, 'x')));
    batch.runs.push_back(FinishedRun(i, 1, 0));
    batch.runs.push_back(FinishedRun(i, 2, 1));
  }
  return batch;
}

// Where two digests first differ (the digests are long): "" when equal.
std::string FirstDifference(const std::string& got, const std::string& want) {
  if (got == want) return "";
  std::size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  std::size_t line = got.rfind('\n', i == 0 ? 0 : i - 1);
  line = line == std::string::npos ? 0 : line + 1;
  return "got: " + got.substr(line, 160) + "\nwant: " + want.substr(line, 160);
}
#define EXPECT_SAME_STATE(got, want) EXPECT_EQ(FirstDifference((got), (want)), "")

class FaultTest : public testutil::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    FaultVfs::Get();  // registered
    // The expected states, from a clean run elsewhere.
    std::string ref = dir_ + "/ref.db";
    {
      auto store = OpenOrDie(Options(ref));
      ASSERT_NE(store, nullptr);
      ASSERT_TRUE(store->Commit(BaseBatch()).ok());
      base_digest_ = Digest(*store->Load());
      ASSERT_TRUE(store->Commit(NextBatch()).ok());
      next_digest_ = Digest(*store->Load());
    }
    ASSERT_NE(base_digest_, next_digest_);
    fs::remove(ref);
    // The base file, closed (everything checkpointed into it).
    {
      auto store = OpenOrDie();
      ASSERT_NE(store, nullptr);
      ASSERT_TRUE(store->Commit(BaseBatch()).ok());
    }
    base_bytes_ = ReadBytes(path_);
    ASSERT_EQ(Listing(), std::set<std::string>{"state.db"});
  }
  void TearDown() override {
    FaultVfs::Get().Disarm();
    TempDirTest::TearDown();
  }

  SqliteStoreOptions FaultOptions() const {
    SqliteStoreOptions options = Options();
    options.vfs = FaultVfs::kName;
    return options;
  }

  // Puts the base file back, alone.
  void ResetFiles() {
    for (const auto& name : Listing()) fs::remove(dir_ + "/" + name);
    WriteBytes(path_, base_bytes_);
  }

  // A failed call's status: a clear error naming the file, of the kind the fault calls for.
  void ExpectClearError(const Status& s, const Fault& fault) {
    EXPECT_TRUE(s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kInternal) << s;
    EXPECT_TRUE(Contains(s, path_)) << s;
    if (fault.effect == Effect::kError && (fault.rc & 0xff) == SQLITE_FULL) {
      EXPECT_TRUE(Contains(s, "database or disk is full")) << s;
    }
    if (fault.effect == Effect::kError && (fault.rc & 0xff) == SQLITE_CORRUPT) {
      EXPECT_EQ(s.code(), StatusCode::kInternal) << s;
      EXPECT_TRUE(Contains(s, "corrupt")) << s;
    }
  }

  // Fails each point of `fault` in turn (after = 0, 1, ...) while `action` runs, until a run
  // where the fault does not fire (every point covered). Returns the points.
  template <typename Action>
  int Sweep(Fault fault, const Action& action, int max_points = 200) {
    int points = 0;
    for (std::uint64_t k = 0; k < static_cast<std::uint64_t>(max_points); ++k) {
      fault.after = k;
      SCOPED_TRACE(fault.Describe());
      ResetFiles();
      bool fired = action(fault);
      FaultVfs::Get().Disarm();
      if (!fired) break;
      ++points;
      if (::testing::Test::HasFatalFailure()) break;
    }
    return points;
  }

  // Commit of NextBatch under `fault`.
  bool CommitUnderFault(const Fault& fault, bool synchronous_full, int autocheckpoint) {
    SqliteStoreOptions options = FaultOptions();
    options.synchronous_full = synchronous_full;
    auto opened = OpenSqliteStore(options);
    EXPECT_TRUE(opened.ok()) << opened.status();
    if (!opened.ok()) return false;
    std::unique_ptr<Store> store = std::move(opened).value();
    if (autocheckpoint > 0) {
      EXPECT_TRUE(internal::SetAutoCheckpointForTest(*store, autocheckpoint).ok());
    }
    FaultVfs::Get().Arm(fault);
    Status s = store->Commit(NextBatch());
    bool fired = FaultVfs::Get().fired() > 0;
    FaultVfs::Get().Disarm();
    if (s.ok()) {
      if (fault.effect == Effect::kGarbage && !store->Health().ok()) {
        // The automatic checkpoint after the commit read a damaged WAL frame (SQLite ignores a
        // failed automatic checkpoint): the commit stands, nothing damaged was copied into the
        // file, and the store is broken from then on.
        EXPECT_EQ(store->Health().code(), StatusCode::kInternal);
        EXPECT_TRUE(Contains(store->Health(), path_ + "-wal")) << store->Health();
        EXPECT_TRUE(Contains(store->Health(), "fails its checksum")) << store->Health();
        EXPECT_EQ(store->Commit(NextBatch()).code(), StatusCode::kInternal);
      } else {
        EXPECT_TRUE(store->Health().ok()) << store->Health();
      }
      store.reset();
      EXPECT_SAME_STATE(Reopened(Options()), next_digest_)
          << "a commit reported done is not all there";
      return fired;
    }
    EXPECT_TRUE(fired) << "failed without a fault: " << s;
    ExpectClearError(s, fault);
    if (!store->Health().ok()) {
      // Broken (corruption was reported): refuses until reopened.
      EXPECT_EQ(store->Health().code(), StatusCode::kInternal);
      EXPECT_EQ(store->Commit(NextBatch()).code(), StatusCode::kInternal);
      store.reset();
      EXPECT_SAME_STATE(Reopened(Options()), base_digest_) << "a failed commit left something";
      store = OpenOrDie(options);
      if (store == nullptr) return fired;
    } else {
      // Nothing of the failed batch is visible, even to this store.
      auto snap = store->Load();
      EXPECT_TRUE(snap.ok()) << snap.status();
      if (snap.ok()) {
        EXPECT_SAME_STATE(Digest(*snap), base_digest_) << "a failed commit left something";
      }
    }
    // The fault is gone: the same batch commits.
    Status again = store->Commit(NextBatch());
    EXPECT_TRUE(again.ok()) << again;
    store.reset();
    EXPECT_SAME_STATE(Reopened(Options()), next_digest_);
    return fired;
  }

  // Load under `fault`, on a store opened without it (its cache cold but for the open's pages).
  bool LoadUnderFault(const Fault& fault) {
    auto opened = OpenSqliteStore(FaultOptions());
    EXPECT_TRUE(opened.ok()) << opened.status();
    if (!opened.ok()) return false;
    std::unique_ptr<Store> store = std::move(opened).value();
    FaultVfs::Get().Arm(fault);
    auto snap = store->Load();
    bool fired = FaultVfs::Get().fired() > 0;
    FaultVfs::Get().Disarm();
    if (snap.ok()) {
      EXPECT_SAME_STATE(Digest(*snap), base_digest_) << "a load reported done read something else";
    } else {
      ExpectClearError(snap.status(), fault);
      if (store->Health().ok()) {
        auto again = store->Load();
        EXPECT_TRUE(again.ok()) << again.status();
        if (again.ok()) {
          EXPECT_SAME_STATE(Digest(*again), base_digest_);
        }
      }
    }
    store.reset();
    EXPECT_TRUE(ReadBytes(path_) == base_bytes_) << "a load changed the file";
    EXPECT_SAME_STATE(Reopened(Options()), base_digest_);
    return fired;
  }

  // Open of the base file (or of a new file, `fresh`) under `fault`.
  bool OpenUnderFault(const Fault& fault, bool fresh) {
    if (fresh) fs::remove(path_);
    auto before = Listing();
    FaultVfs::Get().Arm(fault);
    auto opened = OpenSqliteStore(FaultOptions());
    bool fired = FaultVfs::Get().fired() > 0;
    FaultVfs::Get().Disarm();
    if (!opened.ok()) {
      ExpectClearError(opened.status(), fault);
      EXPECT_EQ(Listing(), before) << opened.status();
      if (!fresh) {
        EXPECT_TRUE(ReadBytes(path_) == base_bytes_) << "a refused open changed the file";
      }
    } else {
      auto snap = (*opened)->Load();
      EXPECT_TRUE(snap.ok()) << snap.status();
      if (fresh && snap.ok()) {
        EXPECT_TRUE(snap->schedules.empty());
      }
      opened->reset();
    }
    if (!fresh) {
      EXPECT_SAME_STATE(Reopened(Options()), base_digest_);
    } else {
      auto store = OpenOrDie();  // the fault is gone: the new file can be made
      EXPECT_NE(store, nullptr);
    }
    return fired;
  }

  // A checkpoint at close under `fault`, after a commit: the commit stays whole.
  bool CloseUnderFault(const Fault& fault) {
    auto store = OpenOrDie(FaultOptions());
    if (store == nullptr) return false;
    EXPECT_TRUE(store->Commit(NextBatch()).ok());
    FaultVfs::Get().Arm(fault);
    store.reset();
    bool fired = FaultVfs::Get().fired() > 0;
    FaultVfs::Get().Disarm();
    EXPECT_SAME_STATE(Reopened(Options()), next_digest_);
    return fired;
  }

  std::string base_digest_, next_digest_, base_bytes_;
};

Fault MakeFault(FileKind kind, Op op, int rc, Effect effect = Effect::kError,
                std::uint64_t times = 1) {
  Fault f;
  f.kind = kind;
  f.op = op;
  f.rc = rc;
  f.effect = effect;
  f.times = times;
  return f;
}

void Report(const char* what, const Fault& fault, int points) {
  std::printf("  %-34s %-45s %3d points\n", what, fault.Describe().c_str(), points);
}

TEST_F(FaultTest, CommitFaults) {
  struct Case {
    Fault fault;
    bool synchronous_full;
  } cases[] = {
      {MakeFault(FileKind::kWal, Op::kWrite, SQLITE_FULL), false},
      {MakeFault(FileKind::kWal, Op::kWrite, SQLITE_FULL, Effect::kError, Fault::kForever), false},
      {MakeFault(FileKind::kWal, Op::kWrite, SQLITE_IOERR_WRITE), false},
      {MakeFault(FileKind::kWal, Op::kSync, SQLITE_IOERR_FSYNC), true},
      {MakeFault(FileKind::kMainDb, Op::kRead, SQLITE_IOERR_READ), false},
      {MakeFault(FileKind::kMainDb, Op::kRead, SQLITE_CORRUPT), false},
      {MakeFault(FileKind::kMainDb, Op::kRead, 0, Effect::kGarbage), false},
      {MakeFault(FileKind::kAny, Op::kShmLock, SQLITE_IOERR_SHMLOCK), false},
  };
  for (const Case& c : cases) {
    int points =
        Sweep(c.fault, [&](const Fault& f) { return CommitUnderFault(f, c.synchronous_full, 0); });
    Report(c.synchronous_full ? "commit (synchronous_full)" : "commit", c.fault, points);
    EXPECT_GT(points, 0) << c.fault.Describe() << ": never reached";
  }
}

// A checkpoint after every commit: faults in writing and syncing the main file, and in reading
// the WAL, hit the checkpoint. A failed checkpoint is not a failed commit: the commits stay in the
// WAL.
TEST_F(FaultTest, CheckpointFaultsDuringCommits) {
  for (const Fault& fault : {MakeFault(FileKind::kMainDb, Op::kWrite, SQLITE_FULL),
                             MakeFault(FileKind::kMainDb, Op::kWrite, SQLITE_IOERR_WRITE),
                             MakeFault(FileKind::kMainDb, Op::kSync, SQLITE_IOERR_FSYNC),
                             MakeFault(FileKind::kWal, Op::kRead, SQLITE_IOERR_READ)}) {
    int points = Sweep(fault, [&](const Fault& f) { return CommitUnderFault(f, false, 1); });
    Report("commit + checkpoint", fault, points);
    EXPECT_GT(points, 0) << fault.Describe() << ": never reached";
  }
}

TEST_F(FaultTest, CheckpointFaultsAtClose) {
  for (const Fault& fault :
       {MakeFault(FileKind::kMainDb, Op::kWrite, SQLITE_FULL, Effect::kError, Fault::kForever),
        MakeFault(FileKind::kMainDb, Op::kWrite, SQLITE_IOERR_WRITE),
        MakeFault(FileKind::kMainDb, Op::kSync, SQLITE_IOERR_FSYNC),
        MakeFault(FileKind::kWal, Op::kRead, SQLITE_IOERR_READ)}) {
    int points = Sweep(fault, [&](const Fault& f) { return CloseUnderFault(f); });
    Report("close (checkpoint)", fault, points);
    EXPECT_GT(points, 0) << fault.Describe() << ": never reached";
  }
}

TEST_F(FaultTest, LoadFaults) {
  for (const Fault& fault : {MakeFault(FileKind::kMainDb, Op::kRead, SQLITE_IOERR_READ),
                             MakeFault(FileKind::kMainDb, Op::kRead, SQLITE_CORRUPT),
                             MakeFault(FileKind::kAny, Op::kShmLock, SQLITE_IOERR_SHMLOCK)}) {
    int points = Sweep(fault, [&](const Fault& f) { return LoadUnderFault(f); });
    Report("load", fault, points);
    EXPECT_GT(points, 0) << fault.Describe() << ": never reached";
  }
}

TEST_F(FaultTest, OpenFaults) {
  for (const Fault& fault : {MakeFault(FileKind::kMainDb, Op::kRead, SQLITE_IOERR_READ),
                             MakeFault(FileKind::kMainDb, Op::kRead, SQLITE_CORRUPT),
                             MakeFault(FileKind::kMainDb, Op::kRead, 0, Effect::kGarbage),
                             MakeFault(FileKind::kMainDb, Op::kOpen, SQLITE_CANTOPEN),
                             MakeFault(FileKind::kWal, Op::kOpen, SQLITE_CANTOPEN),
                             MakeFault(FileKind::kAny, Op::kShmMap, SQLITE_IOERR_SHMMAP),
                             MakeFault(FileKind::kAny, Op::kShmLock, SQLITE_IOERR_SHMLOCK)}) {
    int points = Sweep(fault, [&](const Fault& f) { return OpenUnderFault(f, false); });
    Report("open", fault, points);
    EXPECT_GT(points, 0) << fault.Describe() << ": never reached";
  }
}

// Making a new database: every write, sync and open fails in turn; nothing is left behind (not
// even the temporary file).
TEST_F(FaultTest, CreateFaults) {
  for (const Fault& fault : {MakeFault(FileKind::kAny, Op::kWrite, SQLITE_FULL),
                             MakeFault(FileKind::kAny, Op::kWrite, SQLITE_IOERR_WRITE),
                             MakeFault(FileKind::kAny, Op::kSync, SQLITE_IOERR_FSYNC),
                             MakeFault(FileKind::kAny, Op::kOpen, SQLITE_CANTOPEN)}) {
    int points = Sweep(fault, [&](const Fault& f) { return OpenUnderFault(f, true); });
    Report("create", fault, points);
    EXPECT_GT(points, 0) << fault.Describe() << ": never reached";
  }
}

// Reads that return wrong data without an error: a short read inside the file (as if it had been
// truncated under the store) and garbage (a device returning damaged data). SQLite pages carry no
// checksum, so SQLite notices such damage only where it breaks a b-tree's structure; elsewhere it
// reads wrong values (Load), writes rows rebuilt from a zeroed page back (a commit), or copies a
// damaged WAL page into the file (a checkpoint). These fail today (docs/reliability.md, "Storage
// faults": the points where the damage goes unnoticed); page checksums (SQLite's cksumvfs, with
// 8 reserved bytes per page) would make every one of them an error. Run them with
// --gtest_also_run_disabled_tests.
TEST_F(FaultTest, SilentlyDamagedReadsAreFound) {
  int points = Sweep(MakeFault(FileKind::kMainDb, Op::kRead, 0, Effect::kShortRead),
                     [&](const Fault& f) { return CommitUnderFault(f, false, 0); });
  Report("commit", MakeFault(FileKind::kMainDb, Op::kRead, 0, Effect::kShortRead), points);
  for (Effect effect : {Effect::kShortRead, Effect::kGarbage}) {
    Fault fault = MakeFault(FileKind::kMainDb, Op::kRead, 0, effect);
    points = Sweep(fault, [&](const Fault& f) { return LoadUnderFault(f); });
    Report("load", fault, points);
  }
  Fault fault = MakeFault(FileKind::kWal, Op::kRead, 0, Effect::kGarbage);
  points = Sweep(fault, [&](const Fault& f) { return CommitUnderFault(f, false, 1); });
  Report("commit + checkpoint", fault, points);
}

}  // namespace
}  // namespace syncsched::store
