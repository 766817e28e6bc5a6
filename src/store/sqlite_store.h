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
  // lives as long as the store (no durability, no lock). Required.
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

  // How long an open waits for another owner of the file to let go before it is refused. 0
  // (default): refuse at once. Useful when a restarting daemon may overlap its predecessor.
  std::chrono::milliseconds wait_for_owner{0};

  // Runs `PRAGMA quick_check` at open, reading the whole file, so that corruption deep inside a
  // table is refused at open rather than reported by a later Load or Commit. Costs about a second
  // per few hundred MB. Default off: open checks the header, the file size and the schema.
  bool verify_on_open = false;
};

// Opens the SQLite store at `options.path`, creating the file and its schema when absent and
// migrating an older schema (migrations are versioned by `PRAGMA user_version`).
//
// Success: a store that owns the file until it is destroyed. Ownership is exclusive: the store
// holds an OS lock (flock) on the sidecar file `<path>.lock`, which it removes when destroyed; the
// lock is never inherited by child processes.
//
// Errors (every message names the file and the cause; a refused file is never written to, and a
// file this call created is removed again):
// - INVALID_ARGUMENT: an empty path; history_per_schedule above 1000.
// - UNAVAILABLE: another store, in this process or another, owns the file ("... is in use by
//   another syncsched engine"), after waiting `wait_for_owner`; the path or its lock file cannot be
//   created or opened (a missing or read-only directory, a directory at the path, permissions);
//   an I/O error.
// - INTERNAL: the file is not an SQLite database, is truncated or corrupt ("not a syncsched
//   database or corrupt"), or misses tables of its declared schema.
// - FAILED_PRECONDITION: the file has a newer schema than this build knows (both versions are
//   named), or is an SQLite database of another application.
//
// The returned store:
// - Load() reads the whole state in one read transaction. INTERNAL if the file proves corrupt,
//   among others when a schedule row's owed runs (ScheduleRow::pending, waiting, retry; schema
//   v4) cannot be decoded: the message names the file and the schedule uid.
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
// - When the ROLLBACK after a failed Commit or Load itself fails, the connection may still be
//   inside the failed transaction, where a later commit would commit the remains of the failed
//   batch and a later load would read them. That call returns INTERNAL, saying so, and the store
//   is broken for good: every later Commit and Load returns INTERNAL ("this store refuses to
//   commit or load") without touching the file. Destroy it and open the file again: closing the
//   connection discards the transaction, so nothing of the failed batch is ever applied.
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
}  // namespace internal

}  // namespace syncsched::store
