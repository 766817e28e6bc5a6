// FaultVfs: an SQLite VFS for tests that sits on top of the default one ("unix") and makes chosen
// calls fail, the way a full disk, a failing device or a damaged file would, below the store and
// SQLite's pager (SQLite's own test VFSes, test_vfs.c and test_devsym.c, work the same way).
//
// A fault names a kind of file (the main database, its WAL, a rollback journal), an operation
// (open, read, write, sync, truncate, mapping or locking the WAL's shared memory) and a count:
// the first `after` matching calls go through, the next `times` ones fail. A failing call returns
// `rc` (SQLITE_FULL, SQLITE_IOERR_*, SQLITE_CORRUPT, ...) without touching the file, or, for reads,
// succeeds with damaged data: a short read (the second half of the buffer zeroed, as past the end
// of a file, SQLITE_IOERR_SHORT_READ) or garbage (the bytes read are overwritten). Every call is
// counted by kind and operation, so a test can learn how many calls an action makes and then fail
// each of them in turn.
//
// The VFS is registered once per process under kName (not as the default); a store uses it through
// SqliteStoreOptions::vfs. Thread-safe; one fault at a time.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <limits>
#include <string>

namespace syncsched::store::testing {

enum class FileKind { kMainDb, kWal, kJournal, kOther, kAny };
enum class Op { kOpen, kRead, kWrite, kSync, kTruncate, kShmMap, kShmLock, kCount };
enum class Effect {
  kError,      // the call fails with `rc`, doing nothing
  kShortRead,  // a read returns SQLITE_IOERR_SHORT_READ with the second half of the buffer zeroed
  kGarbage,    // a read succeeds but its bytes are overwritten with a pattern
};

const char* KindName(FileKind kind);
const char* OpName(Op op);

struct Fault {
  FileKind kind = FileKind::kAny;
  Op op = Op::kWrite;
  std::uint64_t after = 0;  // matching calls let through before the first failure
  std::uint64_t times = 1;  // failing calls; kForever: every one from then on
  Effect effect = Effect::kError;
  int rc = SQLITE_IOERR;

  static constexpr std::uint64_t kForever = std::numeric_limits<std::uint64_t>::max();
  std::string Describe() const;
};

class FaultVfs {
 public:
  static constexpr const char* kName = "syncsched-fault";

  // The process's instance, registered with SQLite on first use.
  static FaultVfs& Get();

  // Arms `fault` (replacing any other) and starts counting its matching calls from zero.
  void Arm(const Fault& fault);
  // No more faults; what was armed is forgotten (fired() keeps its count until the next Arm).
  void Disarm();
  // Calls the armed fault has failed (since Arm).
  std::uint64_t fired() const;

  // Calls seen of `op` on files of `kind` (kAny: all kinds) since ResetCounts.
  std::uint64_t Count(FileKind kind, Op op) const;
  void ResetCounts();

  // Used by the VFS's functions: whether this call fails, and how. Counts it.
  struct Decision {
    bool fail = false;
    Effect effect = Effect::kError;
    int rc = SQLITE_OK;
  };
  Decision OnCall(FileKind kind, Op op);

 private:
  FaultVfs();
};

}  // namespace syncsched::store::testing
