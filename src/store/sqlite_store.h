// The SQLite store: the embedded default implementation of store::Store (see store.h).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "store/store.h"
#include "syncsched/status.h"

namespace syncsched::store {

struct SqliteStoreOptions {
  // The database file, created when absent, or ":memory:" for a private in-memory database that
  // lives as long as the store (no durability, no lock). Required. A symbolic link is resolved:
  // the store opens, locks and keeps its -wal and -shm files beside the file it points to.
  std::string path;

  // false (default): `PRAGMA synchronous=NORMAL` in WAL mode. A commit is atomic and consistent
  // and survives a crash of the process; a power loss may lose the last commits (never corrupts).
  // true: `synchronous=FULL`: every commit is also fsync'ed, surviving power loss, at the cost of
  // one fsync per Commit (group commit amortizes it over many commands).
  bool synchronous_full = false;

  // Finished runs kept per schedule (at most 1000), beside the most recent failed run (kept even
  // when older). A finished run overwrites the oldest of its schedule's in the same commit; a
  // smaller value than the file was written with deletes the surplus at open.
  std::size_t history_per_schedule = 20;

  // The page cache's bound (`PRAGMA cache_size`, at least 64 KiB). The cache fills as pages are
  // read and written (a growing history fills it over hours) and then stays at this bound; the
  // engine reports its current size (EngineMetrics::store_cache_bytes).
  std::uint64_t cache_bytes = std::uint64_t{64} << 20;

  // The run journal (schema v5). A store that has issued at least `journal_from_uid` schedule
  // uids (SQLite's max_uid) does not write the rows of stored schedules and the finished runs of a
  // commit where they live, one b-tree page per row (a schedule's row and its history places lie
  // on pages of their own, so with many schedules every run dirties pages no other run shares).
  // It appends them, encoded, to the `journal` table, one row per commit: pages written in order.
  // Once the journal holds `journal_fold_records` records, the following commits fold them into
  // the `schedules` and `history` tables, a slice (a sixteenth of a fold, at most 16,384 records,
  // or more while the appends need it: twice the records appended since the fold began, up to an
  // eighth of the fold, or all of that once the journal holds twice the threshold; whole
  // schedules) after each commit, in a transaction of its own (the commit stands whatever the fold
  // does): the last version of each row, in uid order, so that each page is written once per fold
  // however many of its rows changed, and a commit waits behind one slice, not a whole fold. A
  // clean close folds the rest; after a crash the journal stays and Load applies it on top of the
  // rows, so Load returns exactly what it would without the journal, and every commit is as
  // durable. New schedules, deletions and the catalog are always written in place. Readers of the
  // file (the sqlite3 shell) see `schedules` and `history` as of the last fold; the newest runs are
  // in `journal`. journal_from_uid = 0 (the default): always; UINT64_MAX: never (the store then
  // folds a journal it finds at open). The journal is used from the first schedule: at 1k and 10k
  // spread schedules it sustained 173k and 147k durable runs/s where writing in place did 96k and
  // 65k (syncsched-bench, 2026-12-03); it was used only from 16,384 uids before.
  // journal_fold_records = 0 is refused (INVALID_ARGUMENT). For tests and benchmarks, the
  // environment variable SYNCSCHED_SQLITE_JOURNAL="FROM,FOLD" (or "FROM") overrides both for every
  // store opened in the process (so that the engine's whole test suite can run on the journal); a
  // value that does not parse is refused at open, INVALID_ARGUMENT naming it.
  std::uint64_t journal_from_uid = 0;
  std::size_t journal_fold_records = 262144;
  // The fold's threshold grows with the schedules: it is the larger of journal_fold_records and
  // journal_fold_per_uid records per issued uid, up to 4,194,304 records (or journal_fold_records
  // when that is larger). A fold writes each page of `schedules` and `history` that its records
  // touch once, and with many schedules it touches most of them whatever its size, so its cost per
  // run falls as it grows: at 1M spread schedules, with folds of 262,144 records (~87k runs) the
  // writer spent ~19 µs a run, with folds of 1,048,576 ~9 µs, with 4,194,304 (the cap) ~6 µs
  // (12.6 µs once every schedule's history ring is full, against 21 µs with the old cap of
  // 1,048,576; docs/benchmarks.md). Its price: a fold holds its rows' bytes in memory while it
  // runs, reserved once, plus 24 bytes a record and 24 a journal row (one row per commit): ~270 MB
  // at the cap, which a store reaches from 419,431 uids on; a journal of many small commits holds
  // more (helper-46 measured a rise of 381 MB for 3.77M records in 2.1M rows, with a sort buffer
  // of ~12 bytes a record since removed), and a
  // crash leaves the journal for Load to apply: the threshold's records and what came while the
  // fold ran, about 1.5x the threshold, at most about twice it plus a commit (more after failed
  // folds). The threshold follows the uids issued, deleted schedules included. 0: fold at
  // journal_fold_records exactly (the tests; SYNCSCHED_SQLITE_JOURNAL with a FOLD sets it).
  std::size_t journal_fold_per_uid = 10;
  // A journal that has held records this long is folded however few they are: at the next commit,
  // or by Store::Maintain when nothing is committed (the engine's writer calls it once
  // MaintainDue says so), so that readers of the file see `schedules` and `history` at most about
  // this far behind when runs are few. 0: by size only. Default one minute.
  std::uint64_t journal_fold_after_ms = 60'000;

  // How long an open waits for another owner of the file to let go before it is refused. 0
  // (default): refuse at once. Useful when a restarting daemon may overlap its predecessor.
  std::chrono::milliseconds wait_for_owner{0};

  // Runs `PRAGMA quick_check` at open, reading the whole file, so that corruption deep inside a
  // table is refused at open rather than reported by a later Load or Commit. Costs about a second
  // per few hundred MB (docs/reliability.md has figures at 1M schedules). Default off: open checks
  // the header, the file size, the schema page and, after a crash, every WAL frame; Load then
  // reads every page of the small tables and of the schedules table.
  bool verify_on_open = false;

  // Page checksums (default on; docs/reliability.md, "Page checksums"): the store reserves 8 bytes
  // at the end of every page of the file for a checksum of the page, written with every page and
  // verified with every page read, and keeps a checksum of every write-ahead log frame it writes,
  // verified when the frame is read back; a mismatch (a damaged byte anywhere in a page, a page
  // read from the wrong place, a read that comes back short) is corruption (INTERNAL naming the
  // file and the page; the store breaks, see below). A new file is created with the reserved
  // bytes; an existing file without them (written by an older syncsched, or with page_checksums
  // off) is rewritten once at open with `VACUUM` to get them (this needs free space for a copy of
  // the file and takes about as long as reading it; if it fails, the open fails, nothing changed).
  // false: no checksums are written or verified, and a file is not migrated (a file that has them
  // keeps its reserved bytes, unchecked). Not used for ":memory:". Any SQLite reader can read a
  // checksummed file; a program that writes to it must go through the same VFS
  // (store::cksum::ShimOver, cksum_vfs.h), else the pages it writes are refused as damaged.
  bool page_checksums = true;

  // The SQLite VFS to use, by its registered name; empty: SQLite's default. For tests
  // (tests/store/fault_vfs.h injects faults below the store).
  std::string vfs;
};

// Opens the SQLite store at `options.path`, creating the file and its schema when absent and
// migrating an older schema (migrations are versioned by `PRAGMA user_version`).
//
// A new file is created whole: SQLite writes an empty database under a temporary name beside it
// (`.<name>.new-XXXXXX`), which is synced and then linked to the path, so that a crash never
// leaves an empty or half-written file at the path (a crash may leave the temporary file).
//
// Success: a store that owns the file until it is destroyed. Ownership is exclusive and follows
// the file, not its name: the store holds an open-file-description lock (F_OFD_SETLK, Linux) on
// one byte of the database file itself, far from the bytes SQLite locks, on a descriptor kept open
// until SQLite has closed the file. So a second store is refused whether it names the file by the
// same path, another path, or a symbolic link, in this process or another; the kernel releases
// the lock when the process dies, and it is not inherited across exec. No lock file is made.
// A file with several hard links is refused: SQLite keeps a WAL beside the name it opens, so two
// names of one file would have two WALs and could lose commits (one name per database; a symbolic
// link resolves to it). A hard link made while the store is open is not noticed.
//
// Errors (every message names the file (the path given, and the file it resolves to when that
// differs) and the cause; a refused file is never written to, and no file is left behind that was
// not there: a file this call created is removed again, and so are the -wal, -shm and -journal
// files it made when they hold nothing):
// - INVALID_ARGUMENT: an empty path; history_per_schedule above 1000.
// - UNAVAILABLE: another store, in this process or another, owns the file ("... is in use by
//   another syncsched engine", with the owner's process id when it
//   can be told), after
//   waiting `wait_for_owner`; the file has several hard links; the file cannot be opened for
//   writing (read-only, a read-only file system: said so); its directory does not exist, is not a
//   directory or is not writable (SQLite must create the -wal and -shm files there); a directory
//   or a dangling symbolic link at the path; the file system is full ("No space left on device");
//   any other I/O error, with the operating system's cause.
// - INTERNAL: the file is empty (0 bytes: never taken as a new database, since syncsched never
//   leaves one, so its contents were lost), not an SQLite database, truncated or corrupt ("not a
//   syncsched database or corrupt"), misses tables of its declared schema, or its WAL is damaged
//   in a way SQLite would silently skip: a frame that fails its checksum followed by an intact
//   frame of the same log, or a damaged log header followed by frames (a log torn at its end by a
//   crash is accepted, as SQLite does).
// - FAILED_PRECONDITION: the file has a newer schema than this build knows (both versions are
//   named), or is an SQLite database of another application.
//
// The returned store:
// - Load() reads the whole state in one read transaction. INTERNAL if the file proves corrupt,
//   among others when a schedule row's owed runs (ScheduleRow::pending, waiting, retry; schema
//   v4) cannot be decoded: the message names the file and the schedule uid (that row only: a
//   commit that rewrites the row repairs it, and the store stays usable).
// - Commit() applies a batch in one `BEGIN IMMEDIATE` transaction with cached prepared statements.
//   Within a batch, deletions are applied before insertions and upserts: connections_deleted,
//   then connections_added (an existing connection is left as is); schedules_deleted (with their
//   history), then schedule upserts (each with its run in flight) and finished runs into the
//   history, except that rows of a uid listed in schedules_deleted are not written (uids are never
//   reused, so deletion wins). Every field of a ScheduleRow is written, for new and update_only
//   rows alike, and Load reads each back as written. A run in `runs` must be finished
//   (finished_ms and number set), else INTERNAL. A value SQLite refuses to bind (a text above its
//   length limit, 1 GB by default) is INTERNAL, naming the row and the column. On any error the
//   transaction is rolled back, nothing of the batch is applied, and the store stays usable:
//   UNAVAILABLE for a full disk ("database or disk is full") or an I/O error, INTERNAL for
//   corruption or a violated constraint (two uids with one key, an engine bug).
// - Corruption that SQLite reports during a Commit or Load (SQLITE_CORRUPT, SQLITE_NOTADB: a
//   damaged page, index or freelist, garbage read back) breaks the store for good: that call
//   returns INTERNAL naming the file, nothing of a batch is applied, and every later Commit and
//   Load returns INTERNAL ("this store refuses to commit or load: SQLite found the file corrupt
//   ...") without touching the file; Health() returns the same. With page_checksums (default),
//   a page that fails its checksum is corruption too (SQLite's SQLITE_IOERR_DATA), whatever the
//   damage, so a changed byte inside a value is found at the first read of its page; a WAL frame
//   that fails its checksum while a checkpoint copies it into the file (SQLite ignores a failed
//   automatic checkpoint: the commit before it stands, and the frame is not copied) breaks the
//   store after that commit, which is reported committed. Without page checksums, damage SQLite
//   cannot see (a changed byte inside a value) is not detected.
// - With the run journal (SqliteStoreOptions::journal_from_uid), a commit's rows of stored
//   schedules and its finished runs are appended to the journal in the same transaction, with the
//   same errors; the slice of a fold that may follow a commit is a transaction of its own and does
//   not change the commit's result: a slice that fails is rolled back and the fold under way is
//   dropped (the journal keeps its records, and Load applies them) and tried again later;
//   corruption found by a fold, or in the journal by Load, breaks the store as any (INTERNAL naming
//   the file and the journal row).
// - A failed checkpoint (SQLite copies the WAL into the file every 40 MB of WAL and at close) is
//   not a failed commit: the commits stay in the WAL, which the next checkpoint or open replays.
// - When the ROLLBACK after a failed Commit or Load itself fails, the connection may still be
//   inside the failed transaction, where a later commit would commit the remains of the failed
//   batch and a later load would read them. That call returns INTERNAL, saying so, and the store
//   is broken for good: every later Commit and Load returns INTERNAL ("this store refuses to
//   commit or load") without touching the file. Destroy it and open the file again: closing the
//   connection discards the transaction, so nothing of the failed batch is ever applied.
// - Health(): OK, or the INTERNAL status of a broken store (see store.h).
//
// Thread safety: a store may be used from any thread but by one thread at a time (the engine
// serializes its calls). Distinct stores on distinct files are independent.
Result<std::unique_ptr<Store>> OpenSqliteStore(const SqliteStoreOptions& options);

namespace internal {
// Test hook: caps the database at `pages` pages (`PRAGMA max_page_count`), so that a commit that
// needs more fails as on a full disk. `store` must come from OpenSqliteStore.
Status SetMaxPageCountForTest(Store& store, std::int64_t pages);
// Test hook: the current size of the database in pages.
Result<std::int64_t> PageCountForTest(Store& store);
// Test hook: the next ROLLBACK the store runs after a failed Commit or Load is not run but
// reported as failed (an I/O error), leaving the connection inside the failed transaction, as a
// ROLLBACK that really fails may.
void FailNextRollbackForTest(Store& store);
// Test hook: caps the length of a string or blob (`sqlite3_limit(SQLITE_LIMIT_LENGTH)`, also the
// size of a row), so that binding a longer value fails as binding one above 1 GB would.
void SetLengthLimitForTest(Store& store, int bytes);
// Test and benchmark hook, process-wide: while false, stores opened from then on write and verify
// no page checksums (as with SqliteStoreOptions::page_checksums = false), so that an engine's
// store can be measured without them. Default true.
void SetPageChecksumsForTest(bool enabled);
// Test hook: checkpoints the WAL after every commit that leaves at least `pages` pages in it
// (`PRAGMA wal_autocheckpoint`; the store's own setting is 40 MB of pages).
Status SetAutoCheckpointForTest(Store& store, int pages);
// Test hook: folds the whole run journal into the tables now (SqliteStoreOptions, "run journal").
Status FoldJournalForTest(Store& store);
// Test hook: the records the run journal holds (committed, not yet folded).
std::uint64_t JournalRecordsForTest(Store& store);
// Test hook: the bytes the fold under way holds in its buffers (0 between folds).
std::size_t FoldBytesForTest(Store& store);
// Test hook: makes the run journal's records `by` older
// (SqliteStoreOptions::journal_fold_after_ms).
void AgeJournalForTest(Store& store, std::chrono::milliseconds by);
}  // namespace internal

}  // namespace syncsched::store
