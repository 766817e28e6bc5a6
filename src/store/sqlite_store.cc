// The SQLite store.
//
// Schema (version 5; `PRAGMA user_version` holds the version, kMigrations lists the steps):
// - meta(key, value): named integers. `max_uid`, the largest schedule uid ever issued, lives here
//   rather than being derived from max(schedules.uid), because deleting every schedule must not
//   let a uid be issued twice; `history_kept` is the history_per_schedule the history was last
//   written with.
// - syncs(integration, name, ...), connections(integration, connection) and integrations: WITHOUT
//   ROWID tables keyed by their natural keys; small rows, looked up by key only.
// - schedules(uid INTEGER PRIMARY KEY, ...): keyed by the engine's uid (the rowid itself, so an
//   upsert by uid costs one b-tree), with a UNIQUE index on (integration, connection, sync,
//   variant): the one-schedule-per-key rule is enforced by the database too. The row also holds
//   the schedule's run in flight (run_id, run_slot_ms, run_mode, run_attempt, run_started_ms;
//   run_id '' when none): the dispatch of a run rewrites its schedule's row anyway (next slot,
//   counters), so recording the run there costs no extra row, and Load finds the runs in flight at
//   a crash in the rows it reads anyway.
//   Since version 4 the row also holds every other run the schedule owes: `run_seq` (INTEGER, the
//   off-grid run ids issued) and `owed` (BLOB or NULL): the pending mode and the waiting and retry
//   runs (ScheduleRow::pending, waiting, retry) in the compact encoding of EncodeOwed below, NULL
//   when all three are empty. One nullable column rather than fifteen (pending, and seven fields
//   for each of the two runs): the engine rewrites a schedule's row at every dispatch and outcome,
//   and a schedule almost never owes anything, so the common row binds and stores one NULL (one
//   record-header byte, no body) instead of fifteen zeros and empty strings; the rare row that
//   owes a run pays for an encoding of ~40 bytes. Nothing queries inside `owed`, so a column per
//   field would buy nothing. A value Load cannot decode is corruption (INTERNAL, naming the
//   schedule uid).
// - history(id INTEGER PRIMARY KEY, schedule_uid, run_id, ...): the finished runs. A fixed ring of
//   places per schedule: id = uid * 1024 + place, place = (run number - 1) % history_per_schedule
//   for the last runs, and place 1023 for the last failed run. A finished run is one INSERT OR
//   REPLACE on the rowid b-tree, the bound is exact with no pruning query, and a schedule's
//   history is one rowid range (read or deleted by range). A reader orders a schedule's runs by
//   finished_ms; place 1023 repeats the newest failure, which may also hold a ring place.
//
// - journal(seq INTEGER PRIMARY KEY, records, body) (version 5): the run journal. In a store that
//   has issued journal_from_uid schedule uids (SqliteStoreOptions), a commit does not write the
//   rows of stored schedules and its finished runs into `schedules` and `history`: it appends them,
//   encoded (see "The run journal" below), as one journal row, whose pages are written in order.
//   With many schedules, writing them in place costs a b-tree page per row (a schedule's row and
//   its history places share their pages with few of the other rows a commit writes: at 100k
//   spread schedules ~20 µs of writer time per run, BM_DurableFireSpread). Once the journal holds
//   FoldThreshold() records (SqliteStoreOptions::journal_fold_records and journal_fold_per_uid),
//   the commits after which it does fold them (FoldJournal), a slice each, in transactions of
//   their own: each schedule's last record to its row and each run to its place, in
//   key order, so each page is written once per fold. New schedules, deletions and the catalog are
//   written in place as before; so a record of a schedule whose row is gone is ignored (deleted;
//   uids are never reused). A full row of a stored schedule (not update_only) is written in place
//   and to the journal, so the journal's last record of a schedule is always its newest version.
//   Load reads the rows, then applies the journal's schedule records in order: the snapshot is the
//   one in-place writes would give. A clean close folds the journal; a crash leaves it to Load.
//   A store below journal_from_uid folds a journal it finds at open (it writes in place, which
//   older records must not overtake), and a smaller history_per_schedule folds it before trimming.
//
// Why this shape: BM_DurableFire showed a per-run row keyed by text with two secondary indexes,
// written at dispatch and at the end and pruned by query, costing ~40 µs of SQLite time per run;
// rowid writes at the ring place cost a few µs (docs/benchmarks.md).
//
// Durability: WAL with synchronous=NORMAL by default (a commit costs no fsync; a crash of the
// process loses nothing, a power loss may lose the last commits) or FULL. Each Commit is one
// BEGIN IMMEDIATE ... COMMIT over statements prepared once at open and bound by index.
//
// History bound: exactly history_per_schedule finished runs plus the last failed one per
// schedule. When a file is opened with a smaller history_per_schedule than it was written with,
// the surplus places are deleted at open (one scan of the history, only then).
//
// Opening never writes to a file it then refuses: the header and the size are checked with plain
// reads before SQLite opens the file, then the schema version and tables are read in a read
// transaction, and only then is WAL mode set (the first write). A WAL left with frames is not
// checkpointed on a refused open.
//
// Ownership (OwnerLock): an open-file-description lock (F_OFD_SETLK) on one byte of the database
// file itself, far from the bytes SQLite locks, taken before SQLite opens the file and held on a
// descriptor kept open until SQLite has closed it. It follows the file (device and inode), so every
// path that reaches the file, symbolic or hard link, meets it; it belongs to the descriptor, not to
// the process, so SQLite's closes (which drop every POSIX lock of the process on the file) leave
// it, and a second store in the same process conflicts too; the kernel drops it when the process
// dies. A store of this process is refused before a second descriptor is even opened (Owned()):
// closing that descriptor would drop SQLite's POSIX locks of the owner. A file with several hard
// links is refused, because SQLite names the WAL after the path: two names, two WALs. Symbolic
// links are resolved first, and SQLite opens the real path.
//
// Corruption: SQLite's SQLITE_CORRUPT or SQLITE_NOTADB during a Commit or Load breaks the store
// for good (NoteCorruption): nothing more is written, every later call and Health() return
// INTERNAL naming the file. A WAL left by a crash is checked frame by frame at open (CheckWal),
// because SQLite silently stops its replay at the first frame that fails its checksum.
//
// Page checksums (cksum_vfs.h; SqliteStoreOptions::page_checksums, default on): SQLite opens the
// file through the checksum shim, which verifies every page read and WAL frame read back and
// answers SQLITE_IOERR_DATA on a mismatch; IsCorruption counts that code as corruption, so it
// breaks the store like any other. New files reserve the checksum's bytes from their first write
// (CreateDatabase); older ones get them with one VACUUM at open (EnsurePageChecksums). A failure
// found by an automatic checkpoint after a commit (which SQLite ignores) breaks the store after
// that commit (Commit).

#include "store/sqlite_store.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "store/cksum_vfs.h"
#include "store/sqlite.h"
#include "store/store.h"

namespace syncsched::store {

void Batch::clear() {
  syncs.clear();
  integrations.clear();
  connections_added.clear();
  connections_deleted.clear();
  schedules.clear();
  schedules_deleted.clear();
  runs.clear();
  fence.clear();
  commands.clear();
}

namespace {

using sqlite::Db;
using sqlite::ResetGuard;
using sqlite::Stmt;

// Each step moves the schema from version `version - 1` to `version`, in one transaction with
// the new user_version. Steps are never edited once released; a change is a new step.
struct Migration {
  int version;
  const char* sql;
  std::array<const char*, 7> tables;  // tables the schema has from this version on (null-padded)
};

constexpr Migration kMigrations[] = {
    {1,
     R"sql(
CREATE TABLE meta(
  key TEXT PRIMARY KEY NOT NULL,
  value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta(key, value) VALUES ('max_uid', 0);
CREATE TABLE syncs(
  integration TEXT NOT NULL,
  name TEXT NOT NULL,
  frequency_text TEXT NOT NULL,
  frequency_ms INTEGER NOT NULL,
  auto_start INTEGER NOT NULL,
  timeout_ms INTEGER NOT NULL,
  heartbeat_timeout_ms INTEGER NOT NULL,
  PRIMARY KEY (integration, name)
) WITHOUT ROWID;
CREATE TABLE connections(
  integration TEXT NOT NULL,
  connection TEXT NOT NULL,
  PRIMARY KEY (integration, connection)
) WITHOUT ROWID;
CREATE TABLE schedules(
  uid INTEGER PRIMARY KEY,
  integration TEXT NOT NULL,
  connection TEXT NOT NULL,
  sync TEXT NOT NULL,
  variant TEXT NOT NULL,
  state INTEGER NOT NULL,
  anchor_ms INTEGER NOT NULL,
  frequency_override_ms INTEGER NOT NULL,
  next_slot_ms INTEGER NOT NULL,
  runs INTEGER NOT NULL,
  failures INTEGER NOT NULL,
  skipped INTEGER NOT NULL,
  last_start_ms INTEGER NOT NULL,
  last_finish_ms INTEGER NOT NULL,
  last_ok INTEGER NOT NULL,
  last_error TEXT NOT NULL
);
CREATE UNIQUE INDEX schedules_by_key ON schedules(integration, connection, sync, variant);
CREATE TABLE runs(
  run_id TEXT PRIMARY KEY NOT NULL,
  schedule_uid INTEGER NOT NULL,
  slot_ms INTEGER NOT NULL,
  mode INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  started_ms INTEGER NOT NULL,
  finished_ms INTEGER NOT NULL,
  ok INTEGER NOT NULL,
  error TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX runs_by_schedule ON runs(schedule_uid, finished_ms, run_id, ok);
CREATE INDEX runs_in_flight ON runs(schedule_uid) WHERE finished_ms = 0;
)sql",
     {"meta", "syncs", "connections", "schedules", "runs"}},
    // 2: run policies of a sync (engine-encoded text) and per-integration limits.
    {2,
     R"sql(
ALTER TABLE syncs ADD COLUMN policy TEXT NOT NULL DEFAULT '';
CREATE TABLE integrations(
  integration TEXT PRIMARY KEY NOT NULL,
  max_concurrency INTEGER NOT NULL
) WITHOUT ROWID;
)sql",
     {"meta", "syncs", "connections", "schedules", "runs", "integrations"}},
    // 3: the run in flight moves into its schedule's row; finished runs into the history ring (the
    // newest 20 per schedule, each at the place the engine would have given it: run number
    // runs - n + 1 for the n-th newest, at (number - 1) % 20; the last failure at place 1023).
    // The newest unfinished run of a schedule is its run in flight; older unfinished rows (left
    // only by outcomes whose commit failed) are dropped.
    {3,
     R"sql(
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
)sql",
     {"meta", "syncs", "connections", "schedules", "integrations", "history"}},
    // 4: every run a schedule owes is in its row: the off-grid run ids issued (run_seq) and the
    // pending mode, waiting run and retry (owed, NULL: none; see EncodeOwed). Adding columns with
    // constant defaults rewrites no row: existing schedules read 0 and NULL (nothing owed).
    {4,
     R"sql(
ALTER TABLE schedules ADD COLUMN run_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE schedules ADD COLUMN owed BLOB;
)sql",
     {"meta", "syncs", "connections", "schedules", "integrations", "history"}},
    // 5: the run journal (see the top of this file): the per-run writes of a large store, appended
    // in commit order and folded into schedules and history later. Empty at creation.
    {5,
     R"sql(
CREATE TABLE journal(
  seq INTEGER PRIMARY KEY,
  records INTEGER NOT NULL,
  body BLOB NOT NULL
);
)sql",
     {"meta", "syncs", "connections", "schedules", "integrations", "history", "journal"}},
};

// History places per schedule: ids uid * kPlaces + place. The last place holds the last failure.
constexpr std::int64_t kPlaces = 1024;
constexpr std::int64_t kFailurePlace = kPlaces - 1;
constexpr std::uint64_t kMaxUid = static_cast<std::uint64_t>(INT64_MAX / kPlaces) - 1;

constexpr int kSchemaVersion = static_cast<int>(std::size(kMigrations));

constexpr std::string_view kUpsertSync = R"sql(
INSERT INTO syncs(integration, name, frequency_text, frequency_ms, auto_start, timeout_ms,
                  heartbeat_timeout_ms, policy)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
ON CONFLICT (integration, name) DO UPDATE SET
  frequency_text = excluded.frequency_text, frequency_ms = excluded.frequency_ms,
  auto_start = excluded.auto_start, timeout_ms = excluded.timeout_ms,
  heartbeat_timeout_ms = excluded.heartbeat_timeout_ms, policy = excluded.policy)sql";

constexpr std::string_view kUpsertIntegration = R"sql(
INSERT INTO integrations(integration, max_concurrency) VALUES (?1, ?2)
ON CONFLICT (integration) DO UPDATE SET max_concurrency = excluded.max_concurrency)sql";

constexpr std::string_view kInsertConnection = R"sql(
INSERT INTO connections(integration, connection) VALUES (?1, ?2) ON CONFLICT DO NOTHING)sql";

constexpr std::string_view kDeleteConnection = R"sql(
DELETE FROM connections WHERE integration = ?1 AND connection = ?2)sql";

// A uid's key never changes (uids are never reused), so an update leaves the key columns, and
// with them the unique index on the key, untouched.
constexpr std::string_view kUpsertSchedule = R"sql(
INSERT INTO schedules(uid, integration, connection, sync, variant, state, anchor_ms,
                      frequency_override_ms, next_slot_ms, runs, failures, skipped, last_start_ms,
                      last_finish_ms, last_ok, last_error, run_id, run_slot_ms, run_mode,
                      run_attempt, run_started_ms, run_seq, owed)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20,
        ?21, ?22, ?23)
ON CONFLICT (uid) DO UPDATE SET
  state = excluded.state, anchor_ms = excluded.anchor_ms,
  frequency_override_ms = excluded.frequency_override_ms, next_slot_ms = excluded.next_slot_ms,
  runs = excluded.runs, failures = excluded.failures, skipped = excluded.skipped,
  last_start_ms = excluded.last_start_ms, last_finish_ms = excluded.last_finish_ms,
  last_ok = excluded.last_ok, last_error = excluded.last_error, run_id = excluded.run_id,
  run_slot_ms = excluded.run_slot_ms, run_mode = excluded.run_mode,
  run_attempt = excluded.run_attempt, run_started_ms = excluded.run_started_ms,
  run_seq = excluded.run_seq, owed = excluded.owed)sql";

// The same for a row known to exist (its uid is at most the committed max_uid): no key columns to
// bind and no conflict to detect. A row it does not find is written by kUpsertSchedule.
constexpr std::string_view kUpdateSchedule = R"sql(
UPDATE schedules SET
  state = ?6, anchor_ms = ?7, frequency_override_ms = ?8, next_slot_ms = ?9, runs = ?10,
  failures = ?11, skipped = ?12, last_start_ms = ?13, last_finish_ms = ?14, last_ok = ?15,
  last_error = ?16, run_id = ?17, run_slot_ms = ?18, run_mode = ?19, run_attempt = ?20,
  run_started_ms = ?21, run_seq = ?22, owed = ?23
WHERE uid = ?1)sql";

constexpr std::string_view kDeleteSchedule = "DELETE FROM schedules WHERE uid = ?1";
constexpr std::string_view kDeleteHistoryOfSchedule =
    "DELETE FROM history WHERE id BETWEEN ?1 AND ?2";

constexpr std::string_view kPutHistory = R"sql(
INSERT OR REPLACE INTO history(id, schedule_uid, run_id, slot_ms, mode, attempt, started_ms,
                               finished_ms, ok, error)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10))sql";

constexpr std::string_view kAppendJournal =
    "INSERT INTO journal(seq, records, body) VALUES (NULL, ?1, ?2)";
constexpr std::string_view kReadJournal = "SELECT seq, records, body FROM journal ORDER BY seq";
// The rows' sizes (length() of a BLOB reads its header, not its pages), so that a fold reserves
// its buffers exactly once.
constexpr std::string_view kSizeJournal = "SELECT records, length(body) FROM journal ORDER BY seq";
constexpr std::string_view kDeleteJournal = "DELETE FROM journal WHERE seq <= ?1";
constexpr std::string_view kScheduleExists = "SELECT 1 FROM schedules WHERE uid = ?1";

constexpr std::string_view kSetMaxUid = "UPDATE meta SET value = ?1 WHERE key = 'max_uid'";
constexpr std::string_view kGetMaxUid = "SELECT value FROM meta WHERE key = 'max_uid'";

// The parameters of the statements above, by number (names[i - 1] is ?i), for bind errors.
constexpr const char* kSyncParameters[] = {"integration",          "name",       "frequency_text",
                                           "frequency_ms",         "auto_start", "timeout_ms",
                                           "heartbeat_timeout_ms", "policy"};
constexpr const char* kIntegrationParameters[] = {"integration", "max_concurrency"};
constexpr const char* kConnectionParameters[] = {"integration", "connection"};
constexpr const char* kScheduleParameters[] = {"uid",
                                               "integration",
                                               "connection",
                                               "sync",
                                               "variant",
                                               "state",
                                               "anchor_ms",
                                               "frequency_override_ms",
                                               "next_slot_ms",
                                               "runs",
                                               "failures",
                                               "skipped",
                                               "last_start_ms",
                                               "last_finish_ms",
                                               "last_ok",
                                               "last_error",
                                               "run_id",
                                               "run_slot_ms",
                                               "run_mode",
                                               "run_attempt",
                                               "run_started_ms",
                                               "run_seq",
                                               "owed"};
constexpr const char* kUidParameters[] = {"uid"};
constexpr const char* kHistoryRangeParameters[] = {"first history id", "last history id"};
constexpr const char* kHistoryParameters[] = {"id",   "schedule_uid", "run_id",     "slot_ms",
                                              "mode", "attempt",      "started_ms", "finished_ms",
                                              "ok",   "error"};
constexpr const char* kMaxUidParameters[] = {"max_uid"};
constexpr const char* kAppendJournalParameters[] = {"records", "body"};
constexpr const char* kDeleteJournalParameters[] = {"last folded seq"};

// ---- The owed column (schema v4) ----
//
// A schedule's pending mode and its waiting and retry runs (store.h), NULL when it owes nothing
// (OwesNothing), else a BLOB, integers little-endian:
//   byte 0       format, 1
//   byte 1       pending
//   byte 2       which runs follow: bit 0 waiting, bit 1 retry (no other bit)
//   then waiting, then retry, each when its bit is set:
//     u32 length of run_id (at least 1), run_id's bytes, i64 slot_ms, u8 mode, i32 attempt,
//     i64 at_ms, u64 seq, u8 scheduled (0 or 1)
//   and nothing after.
// Anything else is malformed, and Load reports it as corruption. A new format gets a new first
// byte; the store keeps reading the old ones.
constexpr std::uint8_t kOwedFormat = 1;
constexpr std::uint8_t kOwedWaiting = 1;
constexpr std::uint8_t kOwedRetry = 2;

bool OwesNothing(const ScheduleRow& r) {
  return r.pending == 0 && r.waiting.empty() && r.retry.empty();
}

template <typename T>
void PutLittleEndian(T value, std::string* out) {
  auto bits = static_cast<std::make_unsigned_t<T>>(value);
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    out->push_back(static_cast<char>(static_cast<unsigned char>(bits >> (8 * i))));
  }
}

// Replaces `*out` with the encoding of `r`'s owed runs. `r` must owe something.
void EncodeOwed(const ScheduleRow& r, std::string* out) {
  out->clear();
  out->push_back(static_cast<char>(kOwedFormat));
  out->push_back(static_cast<char>(r.pending));
  out->push_back(static_cast<char>((r.waiting.empty() ? 0 : kOwedWaiting) |
                                   (r.retry.empty() ? 0 : kOwedRetry)));
  for (const OwedRun* run : {&r.waiting, &r.retry}) {
    if (run->empty()) continue;
    // A run id of 4 GiB or more cannot be written anyway: SQLite refuses to bind a blob above
    // its length limit (at most 2 GiB).
    PutLittleEndian(static_cast<std::uint32_t>(run->run_id.size()), out);
    out->append(run->run_id);
    PutLittleEndian(run->slot_ms, out);
    PutLittleEndian(run->mode, out);
    PutLittleEndian(run->attempt, out);
    PutLittleEndian(run->at_ms, out);
    PutLittleEndian(run->seq, out);
    PutLittleEndian(static_cast<std::uint8_t>(run->scheduled ? 1 : 0), out);
  }
}

// Reads an encoding of EncodeOwed, front to back; a read past the end fails the whole value.
class OwedReader {
 public:
  explicit OwedReader(std::string_view bytes) : bytes_(bytes) {}

  template <typename T>
  bool Get(T* value) {
    if (bytes_.size() < sizeof(T)) return false;
    std::make_unsigned_t<T> bits = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) {
      bits |= static_cast<std::make_unsigned_t<T>>(static_cast<unsigned char>(bytes_[i]))
              << (8 * i);
    }
    bytes_.remove_prefix(sizeof(T));
    *value = static_cast<T>(bits);
    return true;
  }
  bool GetBytes(std::size_t n, std::string* value) {
    if (bytes_.size() < n) return false;
    value->assign(bytes_.substr(0, n));
    bytes_.remove_prefix(n);
    return true;
  }
  std::size_t left() const { return bytes_.size(); }

 private:
  std::string_view bytes_;
};

// Decodes `bytes` (an EncodeOwed value) into `r`'s pending, waiting and retry. On a malformed
// value returns false with `*why` saying what is wrong.
bool DecodeOwed(std::string_view bytes, ScheduleRow* r, std::string* why) {
  OwedReader in(bytes);
  std::uint8_t format = 0, flags = 0;
  if (!in.Get(&format)) {
    *why = "empty";
    return false;
  }
  if (format != kOwedFormat) {
    *why = "unknown format " + std::to_string(format);
    return false;
  }
  if (!in.Get(&r->pending) || !in.Get(&flags)) {
    *why = "truncated";
    return false;
  }
  if ((flags & ~(kOwedWaiting | kOwedRetry)) != 0) {
    *why = "unknown flags " + std::to_string(flags);
    return false;
  }
  for (auto [bit, run] : {std::pair{kOwedWaiting, &r->waiting}, std::pair{kOwedRetry, &r->retry}}) {
    *run = OwedRun{};
    if ((flags & bit) == 0) continue;
    const char* name = bit == kOwedWaiting ? "the waiting run" : "the retry";
    std::uint32_t id_size = 0;
    std::uint8_t scheduled = 0;
    if (!in.Get(&id_size) || !in.GetBytes(id_size, &run->run_id) || !in.Get(&run->slot_ms) ||
        !in.Get(&run->mode) || !in.Get(&run->attempt) || !in.Get(&run->at_ms) ||
        !in.Get(&run->seq) || !in.Get(&scheduled)) {
      *why = std::string(name) + " is truncated";
      return false;
    }
    if (id_size == 0) {
      *why = std::string(name) + " has an empty run id";
      return false;
    }
    if (scheduled > 1) {
      *why = std::string(name) + " has scheduled = " + std::to_string(scheduled);
      return false;
    }
    run->scheduled = scheduled == 1;
  }
  if (in.left() != 0) {
    *why = std::to_string(in.left()) + " bytes after its end";
    return false;
  }
  return true;
}

// ---- The run journal (schema v5) ----
//
// A journal row holds, in `body`, the records of one commit (or part of one) in the order they
// were written, and in `records` their number. The body: byte 0 the format, 1; then records back
// to back up to its end, each a type byte and its fields:
//   1, a schedule row: uid, state, anchor_ms, frequency_override_ms, next_slot_ms, runs,
//      failures, skipped, last_start_ms, last_finish_ms, last_ok, last_error, run_id, and when
//      run_id is not empty run_slot_ms, run_mode, run_attempt, run_started_ms; then run_seq and
//      owed (0 for NULL, else 1 + its length, then its EncodeOwed bytes)
//   2, a finished run: uid, ring place + 1 (0: none), failure place (0 or 1), run_id, slot_ms,
//      mode, attempt, started_ms, finished_ms, ok, error
// Unsigned integers are LEB128 varints, signed ones zigzag varints, strings a varint length and
// their bytes. The places of a run are computed when it is appended (with the
// history_per_schedule of that commit), exactly where a direct write would have put it.
constexpr std::uint8_t kJournalFormat = 1;
constexpr std::uint8_t kJournalSchedule = 1;
constexpr std::uint8_t kJournalRun = 2;
// A journal row is appended once its records reach this size (and at the end of each batch).
constexpr std::size_t kJournalRowBytes = std::size_t{1} << 20;
// Records a fold writes per transaction (whole schedules; a sixteenth of the fold when that is
// smaller), unless the appends need more (fold_debt_, at most kFoldSliceShare of the fold): a
// commit waits behind one slice of a fold, tens of milliseconds, not the whole fold (0.6-1.6 s
// for 262,144 records on the test machine).
constexpr std::size_t kFoldSliceRecords = 16384;
constexpr std::uint64_t kFoldSliceShare = 8;
// The largest fold threshold journal_fold_per_uid leads to (SqliteStoreOptions): a fold's
// buffers hold its rows' bytes, 24 bytes a record and 24 a row (one row per commit) while it
// runs (~270 MB at this cap in BM_SqliteLoadJournalTail's journal).
// 4,194,304 records: at 1M spread schedules a fold of 1,048,576 records (~350k runs) still cost
// the writer ~8 µs a run, rewriting most pages of `schedules` and `history` for one run in three
// schedules; four times as many runs share the same page writes (docs/benchmarks.md, "The fold's
// cap raised to 4,194,304 records").
constexpr std::uint64_t kFoldRecordsCap = std::uint64_t{1} << 22;

void PutVarint(std::uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}
void PutSigned(std::int64_t v, std::string* out) {
  PutVarint((static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63), out);
}
void PutString(std::string_view v, std::string* out) {
  PutVarint(v.size(), out);
  out->append(v);
}

// Appends the record of schedule row `r` (its key left out: a uid's key never changes).
// `owed` is scratch space.
void EncodeScheduleRecord(const ScheduleRow& r, std::string* owed, std::string* out) {
  out->push_back(static_cast<char>(kJournalSchedule));
  PutVarint(r.uid, out);
  PutVarint(r.state, out);
  PutSigned(r.anchor_ms, out);
  PutSigned(r.frequency_override_ms, out);
  PutSigned(r.next_slot_ms, out);
  PutVarint(r.runs, out);
  PutVarint(r.failures, out);
  PutVarint(r.skipped, out);
  PutSigned(r.last_start_ms, out);
  PutSigned(r.last_finish_ms, out);
  PutSigned(r.last_ok, out);
  PutString(r.last_error, out);
  const RunRow& run = r.in_flight;
  PutString(run.run_id, out);
  if (!run.run_id.empty()) {
    PutSigned(run.slot_ms, out);
    PutVarint(run.mode, out);
    PutSigned(run.attempt, out);
    PutSigned(run.started_ms, out);
  }
  PutVarint(r.run_seq, out);
  if (OwesNothing(r)) {
    PutVarint(0, out);
  } else {
    EncodeOwed(r, owed);
    PutVarint(owed->size() + 1, out);
    out->append(*owed);
  }
}

// Appends the record of finished run `r` at ring place `ring` (-1: none) and, when
// `failure_place`, at the failure place.
void EncodeRunRecord(const RunRow& r, std::int64_t ring, bool failure_place, std::string* out) {
  out->push_back(static_cast<char>(kJournalRun));
  PutVarint(r.schedule_uid, out);
  PutVarint(static_cast<std::uint64_t>(ring + 1), out);
  PutVarint(failure_place ? 1 : 0, out);
  PutString(r.run_id, out);
  PutSigned(r.slot_ms, out);
  PutVarint(r.mode, out);
  PutSigned(r.attempt, out);
  PutSigned(r.started_ms, out);
  PutSigned(r.finished_ms, out);
  PutSigned(r.ok, out);
  PutString(r.error, out);
}

// Reads a journal body front to back; any read past its end, or a value out of its field's
// range, fails.
class JournalReader {
 public:
  explicit JournalReader(std::string_view bytes) : bytes_(bytes) {}

  bool Varint(std::uint64_t* v) {
    std::uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (at_ >= bytes_.size()) return false;
      auto byte = static_cast<unsigned char>(bytes_[at_++]);
      value |= static_cast<std::uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) {
        *v = value;
        return true;
      }
    }
    return false;
  }
  bool Signed(std::int64_t* v) {
    std::uint64_t u = 0;
    if (!Varint(&u)) return false;
    *v = static_cast<std::int64_t>((u >> 1) ^ (~(u & 1) + 1));
    return true;
  }
  template <typename T>
  bool Small(T* v) {  // an integer field narrower than 64 bits
    std::int64_t wide = 0;
    if constexpr (std::is_signed_v<T>) {
      if (!Signed(&wide)) return false;
    } else {
      std::uint64_t u = 0;
      if (!Varint(&u) || u > std::numeric_limits<T>::max()) return false;
      wide = static_cast<std::int64_t>(u);
    }
    if (wide < std::numeric_limits<T>::min() || wide > std::numeric_limits<T>::max()) return false;
    *v = static_cast<T>(wide);
    return true;
  }
  bool String(std::string_view* v) {
    std::uint64_t n = 0;
    return Varint(&n) && Raw(n, v);
  }
  bool Raw(std::uint64_t n, std::string_view* v) {
    if (n > bytes_.size() - at_) return false;
    *v = bytes_.substr(at_, n);
    at_ += n;
    return true;
  }
  bool Byte(std::uint8_t* v) {
    if (at_ >= bytes_.size()) return false;
    *v = static_cast<std::uint8_t>(bytes_[at_++]);
    return true;
  }
  bool done() const { return at_ == bytes_.size(); }
  std::size_t at() const { return at_; }
  void Seek(std::size_t at) { at_ = at; }

 private:
  std::string_view bytes_;
  std::size_t at_ = 0;
};

// A finished run read from the journal, with its places.
struct JournalRun {
  RunRow run;
  std::int64_t ring = -1;  // its ring place, -1: none
  bool failure_place = false;
};

// Decodes the fields of a run record after its type byte into `r`. False with `*why` on a
// malformed record.
bool DecodeRunRecord(JournalReader& in, JournalRun* r, std::string* why) {
  RunRow& run = r->run;
  std::uint64_t ring = 0;
  std::uint8_t failure = 0;
  std::string_view id, error;
  if (!in.Varint(&run.schedule_uid) || !in.Varint(&ring) || !in.Small(&failure) ||
      !in.String(&id) || !in.Signed(&run.slot_ms) || !in.Small(&run.mode) ||
      !in.Small(&run.attempt) || !in.Signed(&run.started_ms) || !in.Signed(&run.finished_ms) ||
      !in.Small(&run.ok) || !in.String(&error) || ring > static_cast<std::uint64_t>(kPlaces) ||
      failure > 1) {
    *why = "a run record is truncated or out of range";
    return false;
  }
  run.run_id.assign(id);
  run.error.assign(error);
  r->ring = static_cast<std::int64_t>(ring) - 1;
  r->failure_place = failure == 1;
  return true;
}

// Decodes the fields of a schedule record after its type byte into `r` (every field but the key
// and update_only). False with `*why` on a malformed record.
bool DecodeScheduleRecord(JournalReader& in, ScheduleRow* r, std::string* why) {
  std::string_view text;
  RunRow& run = r->in_flight;
  bool ok = in.Varint(&r->uid) && in.Small(&r->state) && in.Signed(&r->anchor_ms) &&
            in.Signed(&r->frequency_override_ms) && in.Signed(&r->next_slot_ms) &&
            in.Varint(&r->runs) && in.Varint(&r->failures) && in.Varint(&r->skipped) &&
            in.Signed(&r->last_start_ms) && in.Signed(&r->last_finish_ms) &&
            in.Small(&r->last_ok) && in.String(&text);
  if (!ok) {
    *why = "a schedule record is truncated or out of range";
    return false;
  }
  r->last_error.assign(text);
  if (!in.String(&text)) {
    *why = "a schedule record is truncated";
    return false;
  }
  run = RunRow{};
  run.run_id.assign(text);
  if (!run.run_id.empty()) {
    run.schedule_uid = r->uid;
    if (!in.Signed(&run.slot_ms) || !in.Small(&run.mode) || !in.Small(&run.attempt) ||
        !in.Signed(&run.started_ms)) {
      *why = "the run in flight of schedule uid " + std::to_string(r->uid) +
             " is truncated or out of range";
      return false;
    }
  }
  std::uint64_t owed_size = 0;
  if (!in.Varint(&r->run_seq) || !in.Varint(&owed_size)) {
    *why = "schedule uid " + std::to_string(r->uid) + "'s record is truncated";
    return false;
  }
  r->pending = 0;
  r->waiting = OwedRun{};
  r->retry = OwedRun{};
  if (owed_size == 0) return true;
  std::uint64_t n = owed_size - 1;
  std::string_view owed;
  if (n == 0) {
    *why = "schedule uid " + std::to_string(r->uid) + "'s owed value is empty";
    return false;
  }
  std::string reason;
  if (!in.Raw(n, &owed) || !DecodeOwed(owed, r, &reason)) {
    *why = "schedule uid " + std::to_string(r->uid) +
           "'s owed value is malformed: " + (reason.empty() ? std::string("truncated") : reason);
    return false;
  }
  return true;
}

std::string Quoted(const std::string& path) { return "database file '" + path + "'"; }

// How messages name a database: the path the caller gave, and the file it resolves to when that
// differs (a symbolic link, a relative path).
std::string Described(const std::string& path, const std::string& real) {
  if (real.empty() || real == path) return Quoted(path);
  return Quoted(path) + " (resolved to '" + real + "')";
}

// SQLITE_IOERR_DATA: a page or WAL frame failed its checksum (cksum_vfs.h): damage, not an
// I/O error that may go away.
bool IsCorruption(int rc) {
  int primary = rc & 0xff;
  return primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB || rc == SQLITE_IOERR_DATA;
}

// Maps an SQLite result code to our vocabulary: what the environment may fix (space, I/O,
// permissions, locks) is UNAVAILABLE; a broken file or a broken invariant is INTERNAL.
// `what` names the file (Described).
Status SqliteStatus(int rc, const std::string& what, std::string_view context,
                    std::string_view detail) {
  if (IsCorruption(rc)) {
    return Status::Internal(what + " is not a syncsched database or is corrupt (" +
                            std::string(context) + ": " + std::string(detail) + ")");
  }
  std::string message = what + ": " + std::string(context) + ": " + std::string(detail);
  switch (rc & 0xff) {
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_PERM:
    case SQLITE_NOLFS:
    case SQLITE_NOMEM:
    case SQLITE_PROTOCOL:
      return Status::Unavailable(std::move(message));
    default:
      return Status::Internal(std::move(message));
  }
}

std::string Errno(int err) { return std::strerror(err); }

std::uint32_t BigEndian32(const unsigned char* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

std::string Corrupt(const std::string& what, const std::string& why) {
  return what + " is not a syncsched database or is corrupt (" + why + ")";
}

// Reads exactly `n` bytes at `offset` (fewer only at the end of the file); -1 with errno set.
ssize_t ReadAt(int fd, void* buffer, std::size_t n, off_t offset) {
  std::size_t done = 0;
  while (done < n) {
    ssize_t got =
        ::pread(fd, static_cast<char*>(buffer) + done, n - done, offset + static_cast<off_t>(done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return -1;
    if (got == 0) break;
    done += static_cast<std::size_t>(got);
  }
  return static_cast<ssize_t>(done);
}

// Checks, with plain reads on `fd` (the owner's descriptor of the file), that the file is a whole
// SQLite database, before SQLite is let near it. SQLite itself would report a truncated file only
// when a missing page is read, perhaps long after the open, and takes an empty file as a new
// database.
Status CheckFileHeader(int fd, const std::string& what, off_t size, bool wal_has_frames) {
  if (size == 0) {
    return Status::Internal(
        Corrupt(what,
                "the file is empty (0 bytes): syncsched never leaves an empty database file, so "
                "this one lost its contents or was made by something else; refusing to take it as "
                "a new database; remove it to start an empty one"));
  }
  unsigned char header[100];
  ssize_t n = ReadAt(fd, header, sizeof header, 0);
  if (n < 0) return Status::Unavailable(what + " cannot be read: " + Errno(errno));
  static constexpr char kMagic[] = "SQLite format 3";  // with its NUL: 16 bytes
  if (n < static_cast<ssize_t>(sizeof header) || std::memcmp(header, kMagic, sizeof kMagic) != 0) {
    return Status::Internal(Corrupt(what, "not an SQLite file"));
  }
  std::uint32_t page_size = (std::uint32_t{header[16]} << 8) | header[17];
  if (page_size == 1) page_size = 65536;
  if (page_size < 512 || (page_size & (page_size - 1)) != 0) {
    return Status::Internal(
        Corrupt(what, "page size " + std::to_string(page_size) + " in its header"));
  }
  std::uint32_t change_counter = BigEndian32(header + 24);
  std::uint32_t page_count = BigEndian32(header + 28);
  std::uint32_t valid_for = BigEndian32(header + 92);
  // The header's page count is only meaningful when valid_for matches; and with a non-empty WAL
  // the file may legitimately lag behind (pages not yet checkpointed, or a checkpoint cut short by
  // a crash that the WAL repairs).
  if (page_count != 0 && change_counter == valid_for && !wal_has_frames) {
    auto expected = static_cast<std::uint64_t>(page_count) * page_size;
    if (static_cast<std::uint64_t>(size) < expected) {
      return Status::Internal(Corrupt(what, "truncated: " + std::to_string(size) +
                                                " bytes, its header says " +
                                                std::to_string(page_count) + " pages of " +
                                                std::to_string(page_size) + " bytes"));
    }
  }
  return Status::Ok();
}

// The WAL's checksum (SQLite's walChecksumBytes): over 32-bit words, big-endian when the WAL's
// magic number says so, else little-endian, continuing from `s`.
void WalChecksum(bool big_endian, const unsigned char* p, std::size_t n, std::uint32_t s[2]) {
  for (std::size_t i = 0; i + 8 <= n; i += 8) {
    std::uint32_t x0, x1;
    if (big_endian) {
      x0 = BigEndian32(p + i);
      x1 = BigEndian32(p + i + 4);
    } else {
      x0 = std::uint32_t{p[i]} | std::uint32_t{p[i + 1]} << 8 | std::uint32_t{p[i + 2]} << 16 |
           std::uint32_t{p[i + 3]} << 24;
      x1 = std::uint32_t{p[i + 4]} | std::uint32_t{p[i + 5]} << 8 | std::uint32_t{p[i + 6]} << 16 |
           std::uint32_t{p[i + 7]} << 24;
    }
    s[0] += x0 + s[1];
    s[1] += x1 + s[0];
  }
}

// A WAL left by a crash is replayed by SQLite up to its first frame that fails its checksum, and
// what follows is ignored without a word: right for a write torn by a crash (the tail of the
// log), but damage in the middle of the log would silently drop every later commit. This scan
// tells the two apart: a damaged frame (or header) followed by a frame of the same log that is
// intact (its checksum verifies from its predecessor's stored checksum) is corruption, refused.
// A log whose header is damaged but that has frames is refused too (SQLite would ignore all of
// them). Reads the whole WAL once (at most some tens of MB: it is checkpointed every 40 MB).
Status CheckWal(const std::string& wal_path, const std::string& what) {
  int fd = ::open(wal_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::Unavailable(what + ": its write-ahead log '" + wal_path +
                               "' cannot be read: " + Errno(errno));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return Status::Unavailable(what + ": its write-ahead log '" + wal_path +
                               "' cannot be read: " + Errno(errno));
  }
  constexpr std::size_t kHeader = 32, kFrameHeader = 24;
  auto size = static_cast<std::uint64_t>(st.st_size);
  if (size < kHeader) return Status::Ok();  // no frame can follow
  unsigned char header[kHeader];
  if (ReadAt(fd, header, kHeader, 0) != static_cast<ssize_t>(kHeader)) {
    return Status::Unavailable(what + ": its write-ahead log '" + wal_path +
                               "' cannot be read: " + Errno(errno));
  }
  std::uint32_t magic = BigEndian32(header);
  std::uint32_t page_size = BigEndian32(header + 8);
  bool big_endian = (magic & 1) != 0;
  std::uint32_t sum[2] = {0, 0};
  WalChecksum(big_endian, header, 24, sum);
  bool header_ok = (magic & ~1u) == 0x377f0682 && BigEndian32(header + 4) == 3007000 &&
                   page_size >= 512 && page_size <= 65536 && (page_size & (page_size - 1)) == 0 &&
                   sum[0] == BigEndian32(header + 24) && sum[1] == BigEndian32(header + 28);
  auto wal_error = [&](const std::string& why) {
    return Status::Internal(Corrupt(
        what, "its write-ahead log '" + wal_path + "' is damaged: " + why +
                  "; SQLite would silently drop the commits it holds. If the machine lost power "
                  "(synchronous_full off), moving the log aside accepts losing them"));
  };
  if (!header_ok) {
    // Without a valid header the frame size is unknown: any byte beyond the header may be a frame.
    if (size > kHeader + kFrameHeader + 512) {
      return wal_error("its header is invalid and " + std::to_string(size - kHeader) +
                       " bytes of frames follow");
    }
    return Status::Ok();
  }
  const std::size_t frame_size = kFrameHeader + page_size;
  const std::uint64_t frames = (size - kHeader) / frame_size;
  std::vector<unsigned char> frame(frame_size);
  std::uint32_t prev_stored[2] = {sum[0], sum[1]};  // the checksum stored by the previous frame
  std::uint64_t first_bad = 0;                      // 1-based; 0: none yet
  for (std::uint64_t i = 1; i <= frames; ++i) {
    auto offset = static_cast<off_t>(kHeader + (i - 1) * frame_size);
    if (ReadAt(fd, frame.data(), frame_size, offset) != static_cast<ssize_t>(frame_size)) {
      return Status::Unavailable(what + ": its write-ahead log '" + wal_path +
                                 "' cannot be read: " + Errno(errno));
    }
    const unsigned char* f = frame.data();
    bool salts = std::memcmp(f + 8, header + 16, 8) == 0;
    std::uint32_t stored[2] = {BigEndian32(f + 16), BigEndian32(f + 20)};
    // Verified from the previous frame's stored checksum: intact in itself, whatever came before.
    std::uint32_t local[2] = {prev_stored[0], prev_stored[1]};
    WalChecksum(big_endian, f, 8, local);
    WalChecksum(big_endian, f + kFrameHeader, page_size, local);
    bool intact = salts && BigEndian32(f) != 0 && local[0] == stored[0] && local[1] == stored[1];
    if (first_bad == 0) {
      // SQLite's own rule: the chain verifies from the header on.
      bool chained = intact && prev_stored[0] == sum[0] && prev_stored[1] == sum[1];
      if (chained) {
        sum[0] = local[0];
        sum[1] = local[1];
      } else {
        first_bad = i;
      }
    } else if (intact) {
      return wal_error("frame " + std::to_string(first_bad) + " of " + std::to_string(frames) +
                       " fails its checksum but frame " + std::to_string(i) +
                       " after it is intact");
    }
    prev_stored[0] = stored[0];
    prev_stored[1] = stored[1];
  }
  return Status::Ok();
}

// With page checksums: a file whose header reserves no bytes per page is taken for an older file
// and rewritten with them (EnsurePageChecksums). But if page 1 carries the checksum it would have
// with 8 reserved bytes, the file had page checksums and its header byte 20 was damaged: refused,
// before anything is written. Plain reads on `fd`, as CheckFileHeader.
Status CheckReservedBytes(int fd, const std::string& what) {
  unsigned char head[21];
  if (ReadAt(fd, head, sizeof head, 0) != static_cast<ssize_t>(sizeof head) || head[20] != 0) {
    return Status::Ok();  // a short file is CheckFileHeader's business
  }
  std::size_t size = (std::size_t{head[16]} << 8) | head[17];
  if (size == 1) size = 65536;
  std::vector<unsigned char> page(size);
  if (ReadAt(fd, page.data(), size, 0) != static_cast<ssize_t>(size)) return Status::Ok();
  page[20] = cksum::kReserveBytes;
  std::uint64_t stored = 0;
  for (std::size_t i = 0; i < 8; ++i) {
    stored |= std::uint64_t{page[size - cksum::kReserveBytes + i]} << (8 * i);
  }
  if (stored != cksum::PageChecksum(page.data(), size, 1)) return Status::Ok();
  return Status::Internal(
      Corrupt(what,
              "its header reserves no bytes per page for checksums, but page 1 carries its "
              "checksum as if it did: the header is damaged"));
}

// Where the files of a database are: the real path of the database (symbolic links resolved),
// and whether it exists.
struct Location {
  std::string real;  // absolute, no symbolic link
  std::string dir;   // its directory
  bool exists = false;
};

Status Locate(const std::string& path, Location* out) {
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    char* real = ::realpath(path.c_str(), nullptr);
    if (real == nullptr) {
      int err = errno;
      if (S_ISLNK(st.st_mode) && err == ENOENT) {
        return Status::Unavailable(Quoted(path) +
                                   " cannot be opened: it is a symbolic link to a file that does "
                                   "not exist (a dangling link)");
      }
      return Status::Unavailable(Quoted(path) + " cannot be opened: " + Errno(err));
    }
    out->real = real;
    std::free(real);
    out->exists = true;
  } else if (errno == ENOENT) {
    // Absent: resolve its directory, which must exist.
    std::string::size_type slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    if (base.empty() || base == "." || base == "..") {
      return Status::Unavailable(Quoted(path) + " cannot be opened: not a file name");
    }
    char* real_dir = ::realpath(dir.c_str(), nullptr);
    if (real_dir == nullptr) {
      int err = errno;
      return Status::Unavailable(Quoted(path) + " cannot be created: its directory '" + dir + "' " +
                                 (err == ENOENT    ? std::string("does not exist")
                                  : err == ENOTDIR ? "is not a directory"
                                                   : "cannot be reached") +
                                 " (" + Errno(err) + ")");
    }
    std::string d = real_dir;
    std::free(real_dir);
    out->real = (d == "/" ? "" : d) + "/" + base;
  } else {
    int err = errno;
    return Status::Unavailable(Quoted(path) + " cannot be opened: " + Errno(err));
  }
  std::string::size_type slash = out->real.rfind('/');
  out->dir = slash == 0 ? "/" : out->real.substr(0, slash);
  return Status::Ok();
}

// Makes a new, empty SQLite database at `real` (absent) atomically: SQLite writes it under a
// temporary name in the same directory, it is synced, and link() gives it its name only when it is
// whole; so a crash never leaves an empty or half-written file at the path (an empty file is
// refused). `*created` is false when another process created the file meanwhile (then it is used
// as it is). Every error names the file and its cause, and leaves nothing behind.
Status CreateDatabase(const Location& at, const std::string& what, const std::string& vfs,
                      bool page_checksums, bool* created) {
  *created = false;
  std::string base = at.real.substr(at.real.rfind('/') + 1);
  std::string temp = at.dir + "/." + base + ".new-XXXXXX";
  int fd = ::mkstemp(temp.data());
  if (fd < 0) {
    int err = errno;
    std::string why = err == EACCES || err == EPERM
                          ? "its directory '" + at.dir + "' is not writable (" + Errno(err) + ")"
                      : err == EROFS
                          ? "its directory '" + at.dir + "' is on a read-only file system"
                      : err == ENOSPC || err == EDQUOT
                          ? "the file system of '" + at.dir + "' is full (" + Errno(err) + ")"
                          : Errno(err);
    return Status::Unavailable(what + " cannot be created: " + why);
  }
  ::fchmod(fd, 0644);  // mkstemp gives 0600; a new database gets the usual mode (umask applies)
  auto remove_temp = [&] {
    for (const char* suffix : {"", "-journal", "-wal", "-shm"}) {
      ::unlink((temp + suffix).c_str());
    }
  };
  // A one-page database with syncsched's page size and no table: the open that follows sees
  // version 0 without tables (new) and creates the schema.
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(temp.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_EXRESCODE,
                           vfs.empty() ? nullptr : vfs.c_str());
  if (rc == SQLITE_OK && page_checksums) {
    // Before the first write: every page of the file reserves its checksum's bytes.
    int reserve = cksum::kReserveBytes;
    rc = sqlite3_file_control(db, "main", SQLITE_FCNTL_RESERVE_BYTES, &reserve);
  }
  if (rc == SQLITE_OK) {
    rc = sqlite3_exec(db, "PRAGMA page_size=16384; PRAGMA user_version=0", nullptr, nullptr,
                      nullptr);
  }
  std::string detail;
  if (rc != SQLITE_OK) {
    int os = db != nullptr ? sqlite3_system_errno(db) : 0;
    detail = std::string(db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc)) +
             (os != 0 ? " (" + Errno(os) + ")" : "");
  }
  sqlite3_close_v2(db);
  if (rc != SQLITE_OK) {
    ::close(fd);
    remove_temp();
    if ((rc & 0xff) == SQLITE_FULL) detail += " (the file system of '" + at.dir + "' is full)";
    return SqliteStatus(rc, what, "cannot be created", detail);
  }
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    remove_temp();
    return Status::Unavailable(what + " cannot be created: syncing it failed: " + Errno(err));
  }
  ::close(fd);
  if (::link(temp.c_str(), at.real.c_str()) != 0) {
    int err = errno;
    remove_temp();
    if (err == EEXIST) return Status::Ok();  // created meanwhile by another: open that one
    return Status::Unavailable(what + " cannot be created: " + Errno(err));
  }
  remove_temp();
  *created = true;
  int dir_fd = ::open(at.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);  // the new name survives a power loss (best effort: the file is whole anyway)
    ::close(dir_fd);
  }
  return Status::Ok();
}

// The files this process's stores own, by (device, inode): a second store of the same file in
// this process is refused without opening a descriptor of it, because closing any descriptor of a
// file drops every POSIX lock the process holds on it, SQLite's included.
std::mutex owned_mu;
// The value is the owning process: a child made by fork() inherits a copy of the set, whose entries
// are its parent's, not its own.
std::map<std::pair<dev_t, ino_t>, pid_t>& Owned() {
  static auto* owned = new std::map<std::pair<dev_t, ino_t>, pid_t>;  // never destroyed
  return *owned;
}

// The byte the owner lock covers: far beyond anything SQLite locks (its locks are on the page at
// 1 GiB, and in the -shm file), so the two kinds never meet.
constexpr off_t kOwnerLockByte = off_t{1} << 62;

// The byte beside it carries, for messages only, a classic POSIX lock of the owner process:
// F_GETLK tells its process id, which the kernel does not keep for OFD locks. Best effort: it is
// dropped when the owner's process closes any descriptor of the file (another SQLite connection
// to it, say), and then a refusal names no process.
constexpr off_t kOwnerPidByte = kOwnerLockByte + 1;

// The process whose POSIX lock is on the owner-pid byte of `fd`'s file; 0 when unknown.
long OwnerPid(int fd) {
  struct flock lk = {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  lk.l_start = kOwnerPidByte;
  lk.l_len = 1;
  if (::fcntl(fd, F_GETLK, &lk) != 0 || lk.l_type == F_UNLCK) return 0;
  return lk.l_pid;
}

// The exclusive ownership of a database file: an open file description lock (F_OFD_SETLK) on one
// byte of the database file itself, so that it follows the file (its device and inode) whatever
// path, symbolic link or hard link reached it. The descriptor stays open as long as the store:
// the lock belongs to it (not to the process, unlike SQLite's own POSIX locks), so SQLite closing
// its descriptors never drops it, and it does not conflict with SQLite's locks (other bytes).
// The kernel releases it when the process dies; it is not inherited across exec (O_CLOEXEC).
class OwnerLock {
 public:
  OwnerLock() = default;
  OwnerLock(const OwnerLock&) = delete;
  OwnerLock& operator=(const OwnerLock&) = delete;
  ~OwnerLock() { Release(); }

  int fd() const { return fd_; }
  const struct stat& stat() const { return st_; }

  Status Acquire(const std::string& real, const std::string& what, std::chrono::milliseconds wait) {
    auto deadline = std::chrono::steady_clock::now() + wait;
    for (;;) {
      bool busy = false;
      long owner = 0;
      Status s = TryAcquire(real, what, &busy, &owner);
      if (!busy) return s;
      if (std::chrono::steady_clock::now() >= deadline) {
        return Status::Unavailable(what + " is in use by another syncsched engine" +
                                   (owner > 0 ? " (process " + std::to_string(owner) +
                                                    (owner == ::getpid() ? ", this one)" : ")")
                                              : std::string()) +
                                   "; one engine owns a database file, whatever path reaches it");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  // Marks the owner-pid byte (OwnerPid), for messages only: failure does not matter. Called at
  // the end of the open, once SQLite is in WAL mode and holds its shared lock for good (before,
  // SQLite unlocks the whole file at the end of each transaction, which drops this lock).
  void MarkPid() {
    struct flock lk = {};
    lk.l_type = F_WRLCK;
    lk.l_whence = SEEK_SET;
    lk.l_start = kOwnerPidByte;
    lk.l_len = 1;
    [[maybe_unused]] int ignored = ::fcntl(fd_, F_SETLK, &lk);
  }

  // Lets go (after SQLite has closed the file: closing this descriptor earlier would drop the
  // process's POSIX locks on the file, SQLite's included).
  void Release() {
    if (fd_ < 0) return;
    {
      std::lock_guard lock(owned_mu);
      Owned().erase({st_.st_dev, st_.st_ino});
    }
    ::close(fd_);
    fd_ = -1;
  }

 private:
  Status TryAcquire(const std::string& real, const std::string& what, bool* busy, long* owner) {
    std::lock_guard lock(owned_mu);
    struct stat named;
    if (::stat(real.c_str(), &named) != 0) {
      return Status::Unavailable(what + " cannot be opened: " + Errno(errno));
    }
    if (S_ISDIR(named.st_mode)) {
      return Status::Unavailable(what + " cannot be opened: it is a directory");
    }
    if (!S_ISREG(named.st_mode)) {
      return Status::Unavailable(what + " cannot be opened: it is not a regular file");
    }
    if (auto it = Owned().find({named.st_dev, named.st_ino}); it != Owned().end()) {
      if (it->second == ::getpid()) {
        *busy = true;
        *owner = ::getpid();
        return Status::Ok();
      }
      Owned().erase(it);  // the parent's, before a fork: the kernel's lock decides
    }
    int fd = ::open(real.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
      int err = errno;
      std::string why =
          err == EACCES || err == EPERM
              ? "it is not writable (" + Errno(err) + "); syncsched needs to write to its database"
          : err == EROFS ? "it is on a read-only file system"
                         : Errno(err);
      return Status::Unavailable(what + " cannot be opened for writing: " + why);
    }
    struct flock lk = {};
    lk.l_type = F_WRLCK;
    lk.l_whence = SEEK_SET;
    lk.l_start = kOwnerLockByte;
    lk.l_len = 1;
    if (::fcntl(fd, F_OFD_SETLK, &lk) != 0) {
      int err = errno;
      if (err == EAGAIN || err == EACCES) {
        *busy = true;
        *owner = OwnerPid(fd);
      }
      // The descriptor is ours alone and no store of this process owns the file: closing it
      // drops no lock of anyone's.
      ::close(fd);
      if (*busy) return Status::Ok();
      return Status::Unavailable(what + " cannot be opened: cannot lock it: " + Errno(err));
    }
    struct stat held;
    if (::fstat(fd, &held) != 0 || held.st_dev != named.st_dev || held.st_ino != named.st_ino) {
      // The path was given another file between stat and open: the lock is on a file nobody
      // will find there; look again.
      ::close(fd);
      return Status::Unavailable(what + " cannot be opened: it was replaced while being opened");
    }
    fd_ = fd;
    st_ = held;
    Owned()[{held.st_dev, held.st_ino}] = ::getpid();
    return Status::Ok();
  }

  int fd_ = -1;
  struct stat st_ = {};
};

class SqliteStore final : public Store {
 public:
  explicit SqliteStore(const SqliteStoreOptions& options)
      : options_(options), what_(Quoted(options.path)) {}
  ~SqliteStore() override {
    // A clean close leaves the journal folded, so that the file's tables hold everything (for
    // readers of the file; a crash leaves the journal to the next open). Best effort: what is
    // not folded stays in the journal, which Load reads.
    if (prepared_ && broken_.empty() && !in_memory_ && journal_records_ > 0) {
      (void)FoldJournal(/*all=*/true);
    }
    FinalizeStatements();
    db_.Close();  // checkpoints the WAL into the file and removes it, unless Abandon() said not
    lock_.Release();
  }

  Status Open();
  // After a failed Open: closes without touching the file, removes what Open created.
  void Abandon();

  Result<Snapshot> Load() override;
  Status Commit(const Batch& batch) override;
  Status CommitStream(const Batch& first, BatchSource& more) override;
  // Commit and CommitStream: `first` and every part of `more` (if any) in one transaction, each
  // part applied as it comes.
  Status CommitParts(const Batch& first, BatchSource* more);
  Status Health() const override { return broken_.empty() ? Status::Ok() : Broken(); }
  std::optional<std::chrono::steady_clock::time_point> MaintainDue() const override {
    if (!broken_.empty() || journal_records_ == 0 || options_.journal_fold_after_ms == 0) {
      return std::nullopt;
    }
    return journal_since_ + std::chrono::milliseconds(options_.journal_fold_after_ms);
  }
  // Folds an aged journal while the engine commits nothing (MaintainDue): the whole fold, a slice
  // at a time, as the commits would.
  void Maintain() override;
  std::uint64_t CacheBytes() const override {
    int used = 0;
    int highest = 0;
    if (!db_.get() ||
        sqlite3_db_status(db_.get(), SQLITE_DBSTATUS_CACHE_USED, &used, &highest, 0) != SQLITE_OK) {
      return 0;
    }
    return static_cast<std::uint64_t>(used);
  }

  Status SetMaxPageCount(std::int64_t pages);
  Result<std::int64_t> PageCount();
  void FailNextRollback() { fail_next_rollback_ = true; }
  void SetLengthLimit(int bytes) {
    sqlite3_limit(db_.get(), SQLITE_LIMIT_LENGTH, bytes);
    length_limit_ = static_cast<std::size_t>(sqlite3_limit(db_.get(), SQLITE_LIMIT_LENGTH, -1));
  }
  Status FoldAll() { return FoldJournal(/*all=*/true); }
  std::uint64_t JournalRecords() const { return journal_records_; }
  void AgeJournal(std::chrono::milliseconds by) { journal_since_ -= by; }
  std::size_t FoldBytes() const {
    // An empty string's own inline buffer is not a heap buffer.
    const std::size_t blob =
        fold_.blob.capacity() > std::string().capacity() ? fold_.blob.capacity() : 0;
    return blob + fold_.spans.capacity() * sizeof(FoldSpan) +
           fold_.seqs.capacity() * sizeof(std::int64_t) +
           fold_.entries.capacity() * sizeof(FoldEntry);
  }
  Status SetAutoCheckpoint(int pages) {
    int rc = sqlite3_wal_autocheckpoint(db_.get(), pages);
    return rc == SQLITE_OK ? Status::Ok() : Error(rc, "setting wal_autocheckpoint");
  }

 private:
  // The status of SQLite error `rc`: names the file, the context, SQLite's message and, for an
  // I/O error, the operating system's cause (sqlite3_system_errno: "No space left on device"
  // rather than SQLite's "disk I/O error" alone). Notes corruption (see Commit and Load).
  Status Error(int rc, std::string_view context) {
    std::string detail = db_.ErrorMessage();
    switch (rc & 0xff) {
      case SQLITE_IOERR:
      case SQLITE_CANTOPEN:
      case SQLITE_FULL:
      case SQLITE_READONLY:
      case SQLITE_PERM:
        if (rc == SQLITE_IOERR_DATA) break;  // a checksum, not the system: its errno is stale
        if (int os = db_.get() != nullptr ? sqlite3_system_errno(db_.get()) : 0; os != 0) {
          detail += " (" + Errno(os) + ")";
        }
        break;
      default:
        break;
    }
    if (rc == SQLITE_IOERR_DATA) {
      std::string found = cksum::TakeLastFailure();
      if (!found.empty()) detail += " (" + found + ")";
    }
    if (IsCorruption(rc)) corruption_seen_ = true;
    return SqliteStatus(rc, what_, context, detail);
  }
  Status Exec(const char* sql, std::string_view context) {
    int rc = db_.Exec(sql);
    return rc == SQLITE_OK ? Status::Ok() : Error(rc, context);
  }
  // Steps a write statement once, after its binds (refused, naming the row and the parameter,
  // when one failed), and resets it. `describe` names the row, for errors only.
  template <typename Describe>
  Status Write(Stmt& stmt, const Describe& describe) {
    ResetGuard guard(stmt);
    if (Stmt::BindFailure failed = stmt.TakeBindFailure(); failed.code != SQLITE_OK) {
      return SqliteStatus(failed.code, what_, describe(),
                          "cannot bind " + stmt.ParameterName(failed.index) + " (parameter " +
                              std::to_string(failed.index) + "): " + sqlite3_errstr(failed.code));
    }
    int rc = stmt.Step();
    if (rc == SQLITE_DONE || rc == SQLITE_ROW) return Status::Ok();
    return Error(rc, describe());
  }
  // After a failed Commit (`committing`), Load or fold: ends the transaction, unless SQLite has
  // ended it already, and returns `cause` saying so. When ROLLBACK fails, the connection may still
  // be inside the transaction: the store is broken from then on (Broken()), and the result says
  // so. `action` names what failed ("commit", "load", "fold").
  Status RollBack(Status cause, std::string_view action);
  // A transaction of Open (which fails, closing the connection, on any error): ends it and
  // returns `result`, or the failure of ROLLBACK added to it.
  Status EndOpenTransaction(Status result);
  // What Commit and Load return once the store is broken (broken_ not empty).
  Status Broken() const;
  // After a failed Commit or Load: when the failure was corruption, the store is broken for good.
  Status NoteCorruption(Status cause);
  // Before each commit: the file (and its WAL, once seen) must still be the one opened. A file
  // deleted, renamed or replaced under the open store would take every later commit with it (the
  // store would write to an unlinked inode, lost at close): the store is broken instead, so that
  // nothing more is acknowledged. Three stat calls (a few microseconds).
  Status CheckFileIdentity();

  Status Inspect(int* version);
  Status Configure();
  Status EnsurePageChecksums();
  Status Migrate(int from_version);
  Status PrepareStatements();
  Status Apply(const Batch& batch, std::uint64_t* max_uid);
  // Binds every column of schedule row `r` but the key's text (?1 and ?6..?23 of
  // kUpsertSchedule and kUpdateSchedule).
  void BindSchedule(Stmt& q, const ScheduleRow& r);
  // Writes finished run `r` at history id `id`.
  Status PutHistory(std::int64_t id, const RunRow& r);
  // The run journal (see the top of this file). Appends the records gathered in journal_buf_ as
  // one journal row, inside the open transaction.
  Status FlushJournal();
  // Folds the journal's oldest rows (`all`: every row) into schedules and history, in
  // transactions of their own (one per slice).
  // Outside any transaction. On error the chunk's transaction is rolled back: nothing of it is
  // applied and the journal keeps it. all = false: one step (reads and sorts the oldest rows, up
  // to FoldThreshold() records, when no fold is under way; then writes the next slice, of at
  // least `min_slice` records); all = true, every step until the journal is empty.
  Status FoldJournal(bool all, std::uint64_t min_slice = 0);
  // After a step of a fold (Commit, Maintain): a failed one is tried again once another half of
  // the threshold has come, or by age after another journal_fold_after_ms.
  void NoteFoldStep(const Status& folded);
  // The records a fold takes (SqliteStoreOptions::journal_fold_records and journal_fold_per_uid):
  // at least 1.
  std::uint64_t FoldThreshold() const {
    const std::uint64_t floor = std::max<std::uint64_t>(options_.journal_fold_records, 1);
    if (options_.journal_fold_per_uid == 0) return floor;
    const std::uint64_t cap = std::max(floor, kFoldRecordsCap);
    const std::uint64_t per = options_.journal_fold_per_uid;
    const std::uint64_t scaled = max_uid_ > cap / per ? cap : max_uid_ * per;
    return std::clamp(scaled, floor, cap);
  }
  // Reads the oldest journal rows, up to `limit` records, into fold_ (sorted by uid).
  Status FoldRead(std::uint64_t limit);
  // Writes the next slice of fold_ (at least `slice` records, whole schedules) in a transaction
  // of its own; the last slice also deletes the folded rows from the journal.
  Status FoldSlice(std::size_t slice);
  // The records the journal holds (at open).
  Result<std::uint64_t> CountJournal();
  Status TrimHistory();
  Result<std::uint64_t> ReadMaxUid();
  void FinalizeStatements();

  SqliteStoreOptions options_;
  std::string real_;  // the database file, symbolic links resolved (as SQLite opens it)
  std::string vfs_;   // the VFS SQLite opens it with: the page checksum shim over options_.vfs
  std::string what_;  // how messages name it (Described)
  bool in_memory_ = false;
  bool created_file_ = false;
  bool wal_existed_ = false, shm_existed_ = false, journal_existed_ = false;  // before Open
  bool corruption_seen_ = false;  // an SQLite call reported corruption (see NoteCorruption)
  OwnerLock lock_;
  Db db_;

  Stmt begin_, commit_, rollback_;
  Stmt upsert_sync_, upsert_integration_, insert_connection_, delete_connection_;
  Stmt upsert_schedule_, update_schedule_, delete_schedule_, delete_history_of_schedule_;
  Stmt put_history_, set_max_uid_;
  Stmt append_journal_, read_journal_, size_journal_, delete_journal_, schedule_exists_;
  bool prepared_ = false;  // the statements above are prepared (Open got that far)

  std::uint64_t max_uid_ = 0;  // as committed
  // The run journal. `journal_now_`: the commit under way appends existing schedules' rows and
  // finished runs to the journal (from journal_from_uid issued uids on, or while the journal holds
  // records) rather than writing them into their tables.
  bool journal_now_ = false;
  std::string journal_buf_;                // records not yet appended (reused)
  std::uint64_t journal_buf_records_ = 0;  // records in journal_buf_
  std::uint64_t journal_records_ = 0;      // records in the journal, committed
  std::uint64_t journal_appended_ = 0;     // records appended by the commit under way
  std::uint64_t fold_retry_at_ = 0;        // after a failed fold: fold again from this many
  // While a fold is under way: twice the records appended since it began, less what its slices
  // have written since (see Commit).
  std::uint64_t fold_debt_ = 0;
  // Since when the journal has held records (while journal_records_ > 0): a fold also starts once
  // it is SqliteStoreOptions::journal_fold_after_ms old.
  std::chrono::steady_clock::time_point journal_since_{};
  // A fold under way: the rows read (each body in `blob`), their records sorted by uid (in
  // journal order within a uid), and the next record to write. Written a slice per commit, so
  // that a fold delays a commit by a slice's writes, not by the whole fold's; the tables between
  // slices hold some schedules folded and some not, which Load reads the same (it applies the
  // whole journal on top, and applying a record twice gives what applying it once does).
  struct FoldEntry {
    std::uint64_t uid;
    std::uint32_t body;    // index in `spans`
    std::uint32_t offset;  // of the record's type byte, in the row's body
    std::uint8_t type;
  };
  struct FoldSpan {
    std::size_t at;
    std::size_t size;
  };
  struct Fold {
    bool active = false;
    std::string blob;                // every row's body, one after the other
    std::vector<FoldSpan> spans;     // each row's body in `blob`
    std::vector<std::int64_t> seqs;  // each row's seq
    std::vector<FoldEntry> entries;
    std::size_t next = 0;       // the first record not yet written
    std::int64_t last_seq = 0;  // the last row read
    std::uint64_t records = 0;
  };
  Fold fold_;
  // Ends the fold and frees its buffers. Not `fold_ = Fold()`: libstdc++'s string move assignment
  // from a short string keeps the target's heap buffer, so a fold's blob (~17 MB for 262,144
  // records) stayed allocated between folds (found by the hour soak: +17 MB in use after the
  // first fold, for good).
  void ClearFold() {
    Fold gone = std::move(fold_);  // a move construction takes the buffers; they die with it
    fold_ = Fold();
  }
  std::size_t length_limit_ = 0;  // SQLite's length limit, for the journal's values
  std::string owed_;              // the owed value of the schedule row being written (reused)
  // Empty while the store is usable; else why it is not (a ROLLBACK that failed, corruption
  // found), and broken_advice_ what to do.
  std::string broken_;
  std::string broken_advice_;
  bool fail_next_rollback_ = false;  // FailNextRollbackForTest
  // The WAL file's identity once a commit has seen it (it lives while the store is open).
  dev_t wal_dev_ = 0;
  ino_t wal_ino_ = 0;
};

Status SqliteStore::Open() {
  const std::string& path = options_.path;
  what_ = Quoted(path);
  in_memory_ = path == ":memory:";
  vfs_ = options_.vfs;
  if (!in_memory_ && options_.page_checksums) {
    std::string error;
    vfs_ = cksum::ShimOver(options_.vfs, &error);
    if (vfs_.empty()) return Status::Internal(what_ + " cannot be opened: " + error);
  }
  bool wal_has_frames = false;
  if (!in_memory_) {
    Location at;
    Status s = Locate(path, &at);
    if (!s.ok()) return s;
    real_ = at.real;
    what_ = Described(path, real_);
    if (!at.exists) {
      s = CreateDatabase(at, what_, vfs_, options_.page_checksums, &created_file_);
      if (!s.ok()) return s;
    }
    s = lock_.Acquire(real_, what_, options_.wait_for_owner);
    if (!s.ok()) return s;
    // Another path of the same file (a hard link) has WAL and shared-memory files of its own
    // name: a second path would miss the first's WAL after a crash, and both could be written.
    // A database with several names is refused (symbolic links are fine: they resolve to one).
    if (lock_.stat().st_nlink > 1) {
      return Status::Unavailable(
          what_ + " cannot be opened: it has " + std::to_string(lock_.stat().st_nlink) +
          " hard links; SQLite keeps a database's write-ahead log beside the name it was opened "
          "by, so a database reached by several names could lose commits; keep one name (use a "
          "symbolic link for others)");
    }
    struct stat st;
    wal_existed_ = ::stat((real_ + "-wal").c_str(), &st) == 0;
    wal_has_frames = wal_existed_ && st.st_size > 0;
    shm_existed_ = ::stat((real_ + "-shm").c_str(), &st) == 0;
    journal_existed_ = ::stat((real_ + "-journal").c_str(), &st) == 0;
    s = CheckFileHeader(lock_.fd(), what_, lock_.stat().st_size, wal_has_frames);
    if (!s.ok()) return s;
    if (options_.page_checksums) {
      s = CheckReservedBytes(lock_.fd(), what_);
      if (!s.ok()) return s;
    }
    if (wal_has_frames) {
      s = CheckWal(real_ + "-wal", what_);
      if (!s.ok()) return s;
    }
    // SQLite creates the -wal and -shm files beside the database: say so now rather than let it
    // fail with "unable to open database file" after it has begun.
    if ((!wal_existed_ || !shm_existed_) &&
        ::faccessat(AT_FDCWD, at.dir.c_str(), W_OK | X_OK, AT_EACCESS) != 0) {
      int err = errno;
      return Status::Unavailable(what_ + " cannot be opened: its directory '" + at.dir +
                                 "' is not writable (" + Errno(err) +
                                 "), and SQLite must create '" + real_ + "-wal' and '" + real_ +
                                 "-shm' there");
    }
  }

  std::string error;
  const std::string& open_path = in_memory_ ? path : real_;
  sqlite3* handle = nullptr;
  int rc = sqlite3_open_v2(open_path.c_str(), &handle,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE |
                               (in_memory_ ? SQLITE_OPEN_CREATE : 0),
                           vfs_.empty() ? nullptr : vfs_.c_str());
  db_.Adopt(handle);
  if (rc != SQLITE_OK) return Error(rc, "cannot be opened");
  // A read-only file opens read-only without an error: refuse it (the owner lock's descriptor,
  // opened for writing, rules this out for files; a VFS may still do it).
  if (sqlite3_db_readonly(db_.get(), "main") == 1) {
    return Status::Unavailable(what_ + " cannot be opened for writing: SQLite opened it read-only");
  }
  rc = sqlite3_extended_result_codes(db_.get(), 1);
  if (rc != SQLITE_OK) return Error(rc, "cannot enable extended result codes");
  // A WAL with frames that another engine (a newer one, say) left behind must not be
  // checkpointed into the file by our close before the file is known to be ours. A WAL we
  // create by reading is empty, and closing normally removes it again without writing the file.
  if (wal_has_frames) {
    rc = sqlite3_db_config(db_.get(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
    if (rc != SQLITE_OK) return Error(rc, "cannot keep its write-ahead log from a checkpoint");
  }
  // We own the file; only a tool reading it at the same moment could make us wait.
  rc = sqlite3_busy_timeout(db_.get(), 2000);
  if (rc != SQLITE_OK) return Error(rc, "cannot set the busy timeout");

  int version = 0;
  Status s = Inspect(&version);
  if (!s.ok()) return s;
  s = Configure();
  if (!s.ok()) return s;
  s = Migrate(version);
  if (!s.ok()) return s;
  s = EnsurePageChecksums();
  if (!s.ok()) return s;
  s = PrepareStatements();
  if (!s.ok()) return s;
  auto max_uid = ReadMaxUid();
  if (!max_uid.ok()) return max_uid.status();
  max_uid_ = *max_uid;
  auto journal = CountJournal();
  if (!journal.ok()) return journal.status();
  journal_records_ = *journal;
  journal_since_ = std::chrono::steady_clock::now();
  length_limit_ = static_cast<std::size_t>(sqlite3_limit(db_.get(), SQLITE_LIMIT_LENGTH, -1));
  // A journal left by a crash stays until its fold, and Load reads it. But a store below
  // journal_from_uid writes rows in place, which must not be overtaken by older records: such a
  // store folds the journal now (a file left by a store with other settings).
  if (journal_records_ > 0 && max_uid_ < options_.journal_from_uid) {
    s = FoldJournal(/*all=*/true);
    if (!s.ok()) return s;
  }
  s = TrimHistory();
  if (!s.ok()) return s;
  rc = sqlite3_db_config(db_.get(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, nullptr);
  if (rc != SQLITE_OK) return Error(rc, "cannot re-enable the checkpoint on close");
  if (!in_memory_) lock_.MarkPid();
  return Status::Ok();
}

void SqliteStore::Abandon() {
  FinalizeStatements();
  db_.Close();
  if (!in_memory_ && !real_.empty() && lock_.fd() >= 0) {
    // Only while we still own the file: nobody else can be using what we remove.
    if (created_file_) {
      for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
        ::unlink((real_ + suffix).c_str());
      }
    } else {
      // Remove the side files this open made, when they hold nothing: an empty WAL, a rollback
      // journal of no transaction, and the shared-memory index of a WAL that is gone. (A WAL
      // with frames holds commits, a migration step's say: it stays.)
      struct stat st;
      bool wal_now = ::stat((real_ + "-wal").c_str(), &st) == 0;
      if (wal_now && !wal_existed_ && st.st_size == 0) {
        ::unlink((real_ + "-wal").c_str());
        wal_now = false;
      }
      if (!shm_existed_ && !wal_now) ::unlink((real_ + "-shm").c_str());
      if (!journal_existed_ && ::stat((real_ + "-journal").c_str(), &st) == 0 && st.st_size == 0) {
        ::unlink((real_ + "-journal").c_str());
      }
    }
  }
  lock_.Release();
}

// Reads the schema version and checks that the file is a syncsched database this build can use,
// without writing anything.
Status SqliteStore::Inspect(int* version) {
  Status s = Exec("BEGIN", "cannot begin reading");
  if (!s.ok()) return s;
  auto finish = [&](Status result) { return EndOpenTransaction(std::move(result)); };
  Stmt stmt;
  int rc = db_.Prepare("PRAGMA user_version", &stmt);
  if (rc != SQLITE_OK) return finish(Error(rc, "reading the schema version"));
  rc = stmt.Step();
  if (rc != SQLITE_ROW) return finish(Error(rc, "reading the schema version"));
  *version = static_cast<int>(stmt.Int(0));
  stmt = Stmt();

  std::unordered_set<std::string> tables;
  std::size_t objects = 0;
  rc = db_.Prepare("SELECT type, name FROM sqlite_schema", &stmt);
  if (rc != SQLITE_OK) return finish(Error(rc, "reading the schema"));
  while ((rc = stmt.Step()) == SQLITE_ROW) {
    ++objects;
    if (stmt.Text(0) == "table") tables.insert(stmt.Text(1));
  }
  if (rc == SQLITE_DONE && stmt.ColumnFailed()) rc = SQLITE_NOMEM;
  if (rc != SQLITE_DONE) return finish(Error(rc, "reading the schema"));
  stmt = Stmt();

  if (*version > kSchemaVersion) {
    return finish(
        Status::FailedPrecondition(what_ + " has schema version " + std::to_string(*version) +
                                   ", newer than version " + std::to_string(kSchemaVersion) +
                                   " that this syncsched knows; open it with a newer syncsched"));
  }
  if (*version < 0) {
    return finish(Status::Internal(what_ +
                                   " is not a syncsched database or is corrupt (schema version " +
                                   std::to_string(*version) + ")"));
  }
  if (*version == 0 && objects != 0) {
    return finish(Status::FailedPrecondition(
        what_ +
        " is an SQLite database of another application (it has tables but no syncsched schema "
        "version); refusing to change it"));
  }
  if (*version > 0) {
    for (const char* table : kMigrations[*version - 1].tables) {
      if (table == nullptr) break;  // the list is shorter than the array
      if (tables.count(table) == 0) {
        return finish(
            Status::Internal(what_ + " is not a syncsched database or is corrupt (schema version " +
                             std::to_string(*version) + " without table '" + table + "')"));
      }
    }
  }
  if (options_.verify_on_open && *version > 0) {
    rc = db_.Prepare("PRAGMA quick_check", &stmt);
    if (rc != SQLITE_OK) return finish(Error(rc, "checking integrity"));
    rc = stmt.Step();
    if (rc != SQLITE_ROW) return finish(Error(rc, "checking integrity"));
    std::string verdict = stmt.Text(0);
    if (stmt.ColumnFailed()) return finish(Error(SQLITE_NOMEM, "checking integrity"));
    if (verdict != "ok") {
      return finish(Status::Internal(
          what_ + " is not a syncsched database or is corrupt (quick_check: " + verdict + ")"));
    }
  }
  return finish(Status::Ok());
}

Status SqliteStore::Configure() {
  // 16 KiB pages for a new file (an existing file keeps its own): a commit costs mostly per page
  // it dirties, and 16 KiB pages made BM_DurableFire ~1.4x faster than 4 KiB ones, with no loss
  // for random writes at 200k schedules (docs/benchmarks.md). Only effective before the first
  // table is created.
  Status s = Exec("PRAGMA page_size=16384", "cannot set the page size");
  if (!s.ok()) return s;
  if (!in_memory_) {
    Stmt stmt;
    int rc = db_.Prepare("PRAGMA journal_mode=WAL", &stmt);
    if (rc != SQLITE_OK) return Error(rc, "cannot switch to WAL mode");
    rc = stmt.Step();
    if (rc != SQLITE_ROW) return Error(rc, "cannot switch to WAL mode");
    std::string mode = stmt.Text(0);
    if (stmt.ColumnFailed()) return Error(SQLITE_NOMEM, "cannot switch to WAL mode");
    if (mode != "wal") {
      return Status::Unavailable(
          what_ + ": cannot switch to WAL mode (the file system gave journal mode '" + mode + "')");
    }
  }
  s = Exec(options_.synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
           "cannot set the synchronous mode");
  if (!s.ok()) return s;
  // A larger page cache than the 2 MB default keeps index pages of big batches in memory. It
  // fills as pages are read and written and then stays at its bound (CacheBytes).
  const std::string cache_size = "PRAGMA cache_size=-" + std::to_string(std::max<std::uint64_t>(
                                                             options_.cache_bytes / 1024, 64));
  s = Exec(cache_size.c_str(), "cannot set the cache size");
  if (!s.ok()) return s;
  // Checkpoint the WAL every 40 MB rather than every 1000 pages: pages written again and again
  // (schedule rows, history places) are copied into the file once per checkpoint, so fewer
  // checkpoints write less. The WAL is truncated to 64 MB after a checkpoint. (A checkpointer on
  // a thread and connection of its own was tried: on two cores it competed with the writer and
  // BM_DurableFire fell from ~155k to ~140k runs/s.)
  Stmt page_size;
  int rc = db_.Prepare("PRAGMA page_size", &page_size);
  if (rc != SQLITE_OK || (rc = page_size.Step()) != SQLITE_ROW) {
    return Error(rc, "cannot read the page size");
  }
  std::string checkpoint =
      "PRAGMA wal_autocheckpoint=" +
      std::to_string((40 << 20) / std::max<std::int64_t>(512, page_size.Int(0)));
  s = Exec(checkpoint.c_str(), "cannot set the checkpoint interval");
  if (!s.ok()) return s;
  return Exec("PRAGMA journal_size_limit=67108864", "cannot set the journal size limit");
}

// With page_checksums, a file must reserve cksum::kReserveBytes per page. A new file does (made so
// by CreateDatabase); an older one is rewritten once with VACUUM, which writes every page again
// with the reserved bytes (through the shim, so with their checksums), and the WAL is checkpointed
// into the file at once so that the file holds only checked pages. VACUUM is one transaction: if it
// fails (a full disk: it needs room for a copy), nothing changed, and the open fails.
Status SqliteStore::EnsurePageChecksums() {
  if (in_memory_ || !options_.page_checksums) return Status::Ok();
  int reserve = -1;  // negative: only query
  int rc = sqlite3_file_control(db_.get(), "main", SQLITE_FCNTL_RESERVE_BYTES, &reserve);
  if (rc != SQLITE_OK) return Error(rc, "cannot read the bytes reserved per page");
  if (reserve == cksum::kReserveBytes) return Status::Ok();
  if (reserve != 0) {
    return Status::FailedPrecondition(
        what_ + " reserves " + std::to_string(reserve) +
        " bytes per page for something else; page checksums need " +
        std::to_string(cksum::kReserveBytes) +
        " (SqliteStoreOptions::page_checksums = false opens it without them)");
  }
  reserve = cksum::kReserveBytes;
  rc = sqlite3_file_control(db_.get(), "main", SQLITE_FCNTL_RESERVE_BYTES, &reserve);
  if (rc != SQLITE_OK) return Error(rc, "cannot reserve bytes per page for page checksums");
  Status s = Exec("VACUUM", "adding page checksums to the file (VACUUM)");
  if (!s.ok()) return s;
  s = Exec("PRAGMA wal_checkpoint(TRUNCATE)", "adding page checksums to the file (checkpoint)");
  if (!s.ok()) return s;
  reserve = -1;
  rc = sqlite3_file_control(db_.get(), "main", SQLITE_FCNTL_RESERVE_BYTES, &reserve);
  if (rc != SQLITE_OK) return Error(rc, "cannot read the bytes reserved per page");
  if (reserve != cksum::kReserveBytes) {
    return Status::Internal(what_ + ": adding page checksums failed: VACUUM left " +
                            std::to_string(reserve) + " bytes reserved per page");
  }
  return Status::Ok();
}

Status SqliteStore::Migrate(int from_version) {
  for (const Migration& step : kMigrations) {
    if (step.version <= from_version) continue;
    std::string context = "migrating the schema to version " + std::to_string(step.version);
    Status s = Exec("BEGIN IMMEDIATE", context);
    if (!s.ok()) return s;
    s = Exec(step.sql, context);
    if (s.ok()) {
      std::string set_version = "PRAGMA user_version=" + std::to_string(step.version);
      s = Exec(set_version.c_str(), context);
    }
    if (s.ok()) s = Exec("COMMIT", context);
    if (!s.ok()) return EndOpenTransaction(std::move(s));
  }
  return Status::Ok();
}

Status SqliteStore::PrepareStatements() {
  struct Statement {
    Stmt* stmt;
    std::string_view sql;
    std::span<const char* const> parameters;
  };
  const Statement statements[] = {
      {&begin_, "BEGIN IMMEDIATE", {}},
      {&commit_, "COMMIT", {}},
      {&rollback_, "ROLLBACK", {}},
      {&upsert_sync_, kUpsertSync, kSyncParameters},
      {&upsert_integration_, kUpsertIntegration, kIntegrationParameters},
      {&insert_connection_, kInsertConnection, kConnectionParameters},
      {&delete_connection_, kDeleteConnection, kConnectionParameters},
      {&upsert_schedule_, kUpsertSchedule, kScheduleParameters},
      {&update_schedule_, kUpdateSchedule, kScheduleParameters},
      {&delete_schedule_, kDeleteSchedule, kUidParameters},
      {&delete_history_of_schedule_, kDeleteHistoryOfSchedule, kHistoryRangeParameters},
      {&put_history_, kPutHistory, kHistoryParameters},
      {&set_max_uid_, kSetMaxUid, kMaxUidParameters},
      {&append_journal_, kAppendJournal, kAppendJournalParameters},
      {&read_journal_, kReadJournal, {}},
      {&size_journal_, kSizeJournal, {}},
      {&delete_journal_, kDeleteJournal, kDeleteJournalParameters},
      {&schedule_exists_, kScheduleExists, kUidParameters},
  };
  for (const auto& [stmt, sql, parameters] : statements) {
    int rc = db_.Prepare(sql, stmt);
    stmt->SetParameterNames(parameters);
    // A statement that does not compile against the file's tables means the schema is not ours.
    if (rc != SQLITE_OK) {
      int primary = rc & 0xff;
      return primary == SQLITE_ERROR
                 ? SqliteStatus(SQLITE_CORRUPT, what_, "its tables do not match the schema",
                                db_.ErrorMessage())
                 : Error(rc, "preparing statements");
    }
  }
  prepared_ = true;
  return Status::Ok();
}

void SqliteStore::FinalizeStatements() {
  for (Stmt* stmt :
       {&begin_, &commit_, &rollback_, &upsert_sync_, &upsert_integration_, &insert_connection_,
        &delete_connection_, &upsert_schedule_, &update_schedule_, &delete_schedule_,
        &delete_history_of_schedule_, &put_history_, &set_max_uid_, &append_journal_,
        &read_journal_, &size_journal_, &delete_journal_, &schedule_exists_}) {
    *stmt = Stmt();
  }
  prepared_ = false;
}

Result<std::uint64_t> SqliteStore::ReadMaxUid() {
  Stmt stmt;
  int rc = db_.Prepare(kGetMaxUid, &stmt);
  if (rc != SQLITE_OK) return Error(rc, "reading max_uid");
  rc = stmt.Step();
  if (rc == SQLITE_DONE) {
    return Status::Internal(what_ +
                            " is not a syncsched database or is corrupt (no max_uid in meta)");
  }
  if (rc != SQLITE_ROW) return Error(rc, "reading max_uid");
  return stmt.U64(0);
}

Result<Snapshot> SqliteStore::Load() {
  if (!broken_.empty()) return Broken();
  Status s = Exec("BEGIN", "cannot begin reading");
  if (!s.ok()) return NoteCorruption(std::move(s));
  auto fail = [&](Status status) -> Result<Snapshot> {
    return NoteCorruption(RollBack(std::move(status), "load"));
  };
  // Runs `sql`, calling `row` for each row; `row` returns a Status (not OK: stop, and fail).
  auto read = [&](std::string_view sql, std::string_view what, const auto& row) -> Status {
    Stmt stmt;
    int rc = db_.Prepare(sql, &stmt);
    if (rc != SQLITE_OK) return Error(rc, what);
    while ((rc = stmt.Step()) == SQLITE_ROW) {
      Status row_status = row(stmt);
      if (!row_status.ok()) return row_status;
      if (stmt.ColumnFailed()) return Error(SQLITE_NOMEM, what);
    }
    return rc == SQLITE_DONE ? Status::Ok() : Error(rc, what);
  };

  Snapshot snap;
  s = read(
      "SELECT integration, name, frequency_text, frequency_ms, auto_start, timeout_ms, "
      "heartbeat_timeout_ms, policy FROM syncs",
      "reading syncs", [&](Stmt& r) {
        SyncRow& row = snap.syncs.emplace_back();
        row.integration = r.Text(0);
        row.name = r.Text(1);
        row.frequency_text = r.Text(2);
        row.frequency_ms = r.Int(3);
        row.auto_start = r.Int(4) != 0;
        row.timeout_ms = r.Int(5);
        row.heartbeat_timeout_ms = r.Int(6);
        row.policy = r.Text(7);
        return Status::Ok();
      });
  if (!s.ok()) return fail(s);
  s = read("SELECT integration, max_concurrency FROM integrations", "reading integrations",
           [&](Stmt& r) {
             std::string integration = r.Text(0);
             snap.integrations.push_back(
                 IntegrationRow{std::move(integration), static_cast<std::uint64_t>(r.Int(1))});
             return Status::Ok();
           });
  if (!s.ok()) return fail(s);
  s = read("SELECT integration, connection FROM connections", "reading connections", [&](Stmt& r) {
    std::string integration = r.Text(0);
    snap.connections.push_back(ConnectionRow{std::move(integration), r.Text(1)});
    return Status::Ok();
  });
  if (!s.ok()) return fail(s);
  std::string why;
  // A row whose owed value cannot be decoded is refused, unless the journal has a newer version
  // of it (which a commit would have written over it): the first such uid, after the journal.
  std::map<std::uint64_t, Status> malformed;
  s = read(
      "SELECT uid, integration, connection, sync, variant, state, anchor_ms, "
      "frequency_override_ms, next_slot_ms, runs, failures, skipped, last_start_ms, "
      "last_finish_ms, last_ok, last_error, run_id, run_slot_ms, run_mode, run_attempt, "
      "run_started_ms, run_seq, owed FROM schedules ORDER BY uid",
      "reading schedules", [&](Stmt& r) {
        ScheduleRow& row = snap.schedules.emplace_back();
        row.uid = r.U64(0);
        row.integration = r.Text(1);
        row.connection = r.Text(2);
        row.sync = r.Text(3);
        row.variant = r.Text(4);
        row.state = static_cast<std::uint8_t>(r.Int(5));
        row.anchor_ms = r.Int(6);
        row.frequency_override_ms = r.Int(7);
        row.next_slot_ms = r.Int(8);
        row.runs = r.U64(9);
        row.failures = r.U64(10);
        row.skipped = r.U64(11);
        row.last_start_ms = r.Int(12);
        row.last_finish_ms = r.Int(13);
        row.last_ok = static_cast<std::int8_t>(r.Int(14));
        row.last_error = r.Text(15);
        row.run_seq = r.U64(21);
        if (int type = r.Type(22); type == SQLITE_BLOB) {
          std::string_view owed = r.Blob(22);
          if (!r.ColumnFailed() && !DecodeOwed(owed, &row, &why)) {
            malformed.emplace(
                row.uid,
                Status::Internal(
                    what_ + " is not a syncsched database or is corrupt (schedule uid " +
                    std::to_string(row.uid) + ": its owed value is malformed: " + why + ")"));
          }
        } else if (type != SQLITE_NULL) {
          malformed.emplace(
              row.uid,
              Status::Internal(what_ + " is not a syncsched database or is corrupt (schedule uid " +
                               std::to_string(row.uid) +
                               ": its owed value is not a BLOB but of SQLite type " +
                               std::to_string(type) + ")"));
        }
        RunRow& run = row.in_flight;
        run.run_id = r.Text(16);
        if (run.run_id.empty()) return Status::Ok();
        run.schedule_uid = row.uid;
        run.slot_ms = r.Int(17);
        run.mode = static_cast<std::uint8_t>(r.Int(18));
        run.attempt = static_cast<std::int32_t>(r.Int(19));
        run.started_ms = r.Int(20);
        return Status::Ok();
      });
  if (!s.ok()) return fail(s);
  // The journal's tail: each schedule record, in order, replaces its row's fields (a record of a
  // schedule whose row is gone is ignored, as its fold would ignore it). Finished runs are not
  // part of a snapshot, but each record is checked.
  {
    ScheduleRow image;
    JournalRun run;
    auto by_uid = [](const ScheduleRow& row, std::uint64_t uid) { return row.uid < uid; };
    s = read(kReadJournal, "reading the run journal", [&](Stmt& r) {
      std::int64_t seq = r.Int(0);
      std::uint64_t declared = r.U64(1);
      std::string_view body = r.Blob(2);
      if (r.ColumnFailed()) return Status::Ok();  // read() reports it
      auto corrupt = [&](const std::string& reason) {
        corruption_seen_ = true;
        return Status::Internal(
            Corrupt(what_, "run journal row " + std::to_string(seq) + ": " + reason));
      };
      JournalReader in(body);
      std::uint8_t format = 0;
      if (!in.Byte(&format) || format != kJournalFormat) return corrupt("unknown format");
      std::uint64_t found = 0;
      while (!in.done()) {
        std::uint8_t type = 0;
        (void)in.Byte(&type);
        if (type == kJournalSchedule) {
          if (!DecodeScheduleRecord(in, &image, &why)) return corrupt(why);
          auto it =
              std::lower_bound(snap.schedules.begin(), snap.schedules.end(), image.uid, by_uid);
          if (it != snap.schedules.end() && it->uid == image.uid) {
            it->state = image.state;
            it->anchor_ms = image.anchor_ms;
            it->frequency_override_ms = image.frequency_override_ms;
            it->next_slot_ms = image.next_slot_ms;
            it->runs = image.runs;
            it->failures = image.failures;
            it->skipped = image.skipped;
            it->last_start_ms = image.last_start_ms;
            it->last_finish_ms = image.last_finish_ms;
            it->last_ok = image.last_ok;
            it->last_error = image.last_error;
            it->in_flight = image.in_flight;
            it->run_seq = image.run_seq;
            it->pending = image.pending;
            it->waiting = image.waiting;
            it->retry = image.retry;
            malformed.erase(image.uid);
          }
        } else if (type == kJournalRun) {
          if (!DecodeRunRecord(in, &run, &why)) return corrupt(why);
        } else {
          return corrupt("unknown record type " + std::to_string(type));
        }
        ++found;
      }
      if (found != declared) {
        return corrupt("it holds " + std::to_string(found) + " records, not " +
                       std::to_string(declared));
      }
      return Status::Ok();
    });
    if (!s.ok()) return fail(s);
  }
  if (!malformed.empty()) return fail(malformed.begin()->second);
  for (const ScheduleRow& row : snap.schedules) {
    if (!row.in_flight.run_id.empty()) snap.unfinished_runs.push_back(row.in_flight);
  }
  auto max_uid = ReadMaxUid();
  if (!max_uid.ok()) return fail(max_uid.status());
  snap.max_uid = *max_uid;
  s = Exec("COMMIT", "finishing reading");
  if (!s.ok()) return fail(s);
  return snap;
}

Status SqliteStore::CheckFileIdentity() {
  if (in_memory_ || lock_.fd() < 0) return Status::Ok();
  auto broken = [&](std::string why) {
    broken_ = std::move(why);
    broken_advice_ =
        "so every commit since would be lost when the store closes; nothing more is written. "
        "Restore the file (or its WAL) from a backup, or let the engine start a new one";
    return Status::Internal(what_ + ": this store refuses every further Commit and Load: " +
                            broken_ + ", " + broken_advice_);
  };
  struct stat held {};
  struct stat named {};
  if (::fstat(lock_.fd(), &held) == 0 && held.st_nlink == 0) {
    return broken("its file was deleted or replaced while open (no name links to it any more)");
  }
  if (::stat(real_.c_str(), &named) != 0 || named.st_dev != lock_.stat().st_dev ||
      named.st_ino != lock_.stat().st_ino) {
    return broken("its file was moved, deleted or replaced while open (" + real_ +
                  " is no longer the file opened)");
  }
  struct stat wal {};
  bool have_wal = ::stat((real_ + "-wal").c_str(), &wal) == 0;
  if (wal_ino_ != 0 && (!have_wal || wal.st_dev != wal_dev_ || wal.st_ino != wal_ino_)) {
    return broken("its write-ahead log (" + real_ + "-wal) was deleted or replaced while open");
  }
  if (wal_ino_ == 0 && have_wal) {
    wal_dev_ = wal.st_dev;
    wal_ino_ = wal.st_ino;
  }
  return Status::Ok();
}

Status SqliteStore::Commit(const Batch& batch) {
  if (batch.empty()) return broken_.empty() ? Status::Ok() : Broken();
  return CommitParts(batch, nullptr);
}

Status SqliteStore::CommitStream(const Batch& first, BatchSource& more) {
  return CommitParts(first, &more);
}

Status SqliteStore::CommitParts(const Batch& first, BatchSource* more) {
  if (!broken_.empty()) return Broken();
  if (Status s = CheckFileIdentity(); !s.ok()) return s;
  cksum::TakeLastFailure();  // what an earlier call left (reported then)
  int rc = begin_.Step();
  begin_.Reset();
  if (rc != SQLITE_DONE) {
    return NoteCorruption(Error(rc, "commit failed, nothing applied: cannot begin"));
  }
  std::uint64_t max_uid = max_uid_;
  journal_now_ = max_uid_ >= options_.journal_from_uid || journal_records_ > 0;
  journal_buf_.assign(1, static_cast<char>(kJournalFormat));
  journal_buf_records_ = 0;
  journal_appended_ = 0;
  Status s = Apply(first, &max_uid);
  Batch part;
  while (s.ok() && more != nullptr && more->Next(part)) s = Apply(part, &max_uid);
  if (s.ok()) {
    rc = commit_.Step();
    if (rc != SQLITE_DONE) s = Error(rc, "commit failed");
    commit_.Reset();
  }
  if (!s.ok()) return NoteCorruption(RollBack(std::move(s), "commit"));
  max_uid_ = max_uid;
  if (journal_records_ == 0 && journal_appended_ > 0) {
    journal_since_ = std::chrono::steady_clock::now();
  }
  journal_records_ += journal_appended_;
  // The commit stands. SQLite ignores a failed automatic checkpoint after it; when a WAL frame or
  // page failed its checksum there (nothing damaged was copied into the file), the store breaks.
  if (std::string found = cksum::TakeLastFailure(); !found.empty()) {
    corruption_seen_ = true;
    // The status is what Health() reports from now on; this commit itself stands.
    (void)NoteCorruption(Status::Internal(what_ +
                                          " is not a syncsched database or is corrupt (a "
                                          "checkpoint after a commit: " +
                                          found + ")"));
    return Status::Ok();
  }
  // Fold the journal once it holds FoldThreshold() records. The commit stands whatever the fold
  // does: a fold that fails changed nothing (the journal keeps its records; after a failure it is
  // tried again once another half of the threshold has come), and corruption found by it breaks
  // the store from then on (Health), as any. A fold under way goes on by one slice per commit.
  // Pacing: while a fold is under way, each record appended adds two to its debt, and a slice
  // writes at least the debt, up to an eighth of the fold: the fold outpaces the appends (with
  // slices of a fixed size, commits of more than ~5k runs outgrew it and the journal grew without
  // bound), and one large commit (a command rewriting many rows) spreads its share over the next
  // commits rather than making one wait behind a whole fold. Once the journal holds more than
  // twice the threshold, a slice writes the whole debt: the bound comes first.
  if (fold_.active) fold_debt_ += 2 * journal_appended_;
  // A journal that has held records for journal_fold_after_ms is folded too, however few: so that
  // readers of the file see the tables at most about that far behind when runs are few.
  const auto due = MaintainDue();
  const bool aged = due && std::chrono::steady_clock::now() >= *due;
  if (fold_.active || aged ||
      (journal_records_ >= FoldThreshold() && journal_records_ >= fold_retry_at_)) {
    const std::uint64_t threshold = FoldThreshold();
    const std::uint64_t most = journal_records_ / 2 > threshold
                                   ? std::numeric_limits<std::uint64_t>::max()
                                   : std::max<std::uint64_t>(threshold / kFoldSliceShare, 1);
    const std::size_t before = fold_.active ? fold_.next : 0;
    Status folded = FoldJournal(/*all=*/false, std::min(fold_debt_, most));
    if (!fold_.active) {
      fold_debt_ = 0;
    } else {
      fold_debt_ -= std::min<std::uint64_t>(fold_debt_, fold_.next - before);
    }
    NoteFoldStep(folded);
  }
  return Status::Ok();
}

void SqliteStore::NoteFoldStep(const Status& folded) {
  if (!folded.ok()) {
    fold_retry_at_ = journal_records_ + std::max<std::uint64_t>(FoldThreshold() / 2, 1);
    journal_since_ = std::chrono::steady_clock::now();  // and by age, not before another period
  } else if (!fold_.active) {
    fold_retry_at_ = 0;
  }
}

void SqliteStore::Maintain() {
  const auto due = MaintainDue();
  if (!due || std::chrono::steady_clock::now() < *due) return;
  NoteFoldStep(FoldJournal(/*all=*/false));
  // A fold under way goes on at once (a slice per call); journal_since_ stays in the past.
}

Status SqliteStore::RollBack(Status cause, std::string_view action) {
  const bool committing = action == "commit";
  auto rolled_back = [&] {
    return committing ? Status(cause.code(), cause.message() +
                                                 " (the batch was rolled back; nothing of it is "
                                                 "applied)")
                      : std::move(cause);
  };
  // SQLite ends the transaction itself after some errors (a full disk, an I/O error).
  if (sqlite3_get_autocommit(db_.get()) != 0) return rolled_back();
  int rc = SQLITE_DONE;
  std::string detail;
  if (fail_next_rollback_) {
    fail_next_rollback_ = false;
    rc = SQLITE_IOERR;
    detail = std::string(sqlite3_errstr(rc)) + " (injected by FailNextRollbackForTest)";
  } else {
    rc = rollback_.Step();
    if (rc != SQLITE_DONE) detail = db_.ErrorMessage();
    rollback_.Reset();
  }
  if (rc == SQLITE_DONE) return rolled_back();
  broken_ = "after a failed " + std::string(action) + ", ROLLBACK failed too (" + detail + ")";
  broken_advice_ =
      "so its connection may still be inside that transaction; destroy the store and open the "
      "file again (closing the connection discards the transaction)";
  return Status::Internal(
      cause.message() + "; then ROLLBACK failed too (" + detail +
      "), so the connection may still be inside that transaction: this store refuses every "
      "further Commit and Load; destroy it and open the file again (closing the connection "
      "discards the transaction" +
      (committing ? ", so nothing of the batch is applied)" : ")"));
}

Status SqliteStore::EndOpenTransaction(Status result) {
  if (sqlite3_get_autocommit(db_.get()) != 0) return result;
  int rc = db_.Exec("ROLLBACK");
  if (rc == SQLITE_OK) return result;
  if (result.ok()) return Error(rc, "cannot end a transaction of the open (ROLLBACK failed)");
  return Status(result.code(),
                result.message() + "; then ROLLBACK failed too: " + db_.ErrorMessage());
}

Status SqliteStore::Broken() const {
  return Status::Internal(what_ + ": this store refuses to commit or load: " + broken_ + ", " +
                          broken_advice_);
}

Status SqliteStore::NoteCorruption(Status cause) {
  if (!corruption_seen_ || !broken_.empty()) return cause;
  broken_ = "SQLite found the file corrupt (" + cause.message() + ")";
  broken_advice_ =
      "and nothing more is written to it; destroy the store and open the file again (the open "
      "refuses the file if the damage is where it looks; with verify_on_open, wherever it is), or "
      "restore the file from a backup";
  return Status::Internal(cause.message() +
                          "; this store now refuses every further Commit and Load until the file "
                          "is opened again");
}

Status SqliteStore::Apply(const Batch& batch, std::uint64_t* max_uid) {
  Status s;
  for (const SyncRow& r : batch.syncs) {
    Stmt& q = upsert_sync_;
    q.BindText(1, r.integration);
    q.BindText(2, r.name);
    q.BindText(3, r.frequency_text);
    q.Bind(4, r.frequency_ms);
    q.Bind(5, r.auto_start ? 1 : 0);
    q.Bind(6, r.timeout_ms);
    q.Bind(7, r.heartbeat_timeout_ms);
    q.BindText(8, r.policy);
    s = Write(q, [&] { return "writing sync " + r.integration + "/" + r.name; });
    if (!s.ok()) return s;
  }
  for (const IntegrationRow& r : batch.integrations) {
    Stmt& q = upsert_integration_;
    q.BindText(1, r.integration);
    q.BindU64(2, r.max_concurrency);
    s = Write(q, [&] { return "writing integration " + r.integration; });
    if (!s.ok()) return s;
  }
  for (const ConnectionRow& r : batch.connections_deleted) {
    Stmt& q = delete_connection_;
    q.BindText(1, r.integration);
    q.BindText(2, r.connection);
    s = Write(q, [&] { return "deleting connection " + r.integration + "/" + r.connection; });
    if (!s.ok()) return s;
  }
  for (const ConnectionRow& r : batch.connections_added) {
    Stmt& q = insert_connection_;
    q.BindText(1, r.integration);
    q.BindText(2, r.connection);
    s = Write(q, [&] { return "adding connection " + r.integration + "/" + r.connection; });
    if (!s.ok()) return s;
  }

  std::unordered_set<std::uint64_t> deleted;
  for (std::uint64_t uid : batch.schedules_deleted) {
    deleted.insert(uid);
    auto describe = [&] { return "deleting schedule uid " + std::to_string(uid); };
    if (uid <= kMaxUid) {  // a larger uid can have no history (see below)
      Stmt& h = delete_history_of_schedule_;
      auto first = static_cast<std::int64_t>(uid) * kPlaces;
      h.Bind(1, first);
      h.Bind(2, first + kPlaces - 1);
      s = Write(h, describe);
      if (!s.ok()) return s;
    }
    delete_schedule_.BindU64(1, uid);
    s = Write(delete_schedule_, describe);
    if (!s.ok()) return s;
  }
  const bool any_deleted = !deleted.empty();

  for (const ScheduleRow& r : batch.schedules) {
    if (any_deleted && deleted.count(r.uid) != 0) continue;
    *max_uid = std::max(*max_uid, r.uid);
    const RunRow& run = r.in_flight;
    auto describe = [&] {
      std::string what = "writing schedule uid " + std::to_string(r.uid);
      if (r.update_only) return what;
      return what + " (" + r.integration + "/" + r.connection + "/" + r.sync + "/" + r.variant +
             ")";
    };
    const bool stored = r.update_only || r.uid <= max_uid_;  // before this batch, unless deleted
    if (journal_now_ && stored) {
      // To the journal; Load and the fold apply it to the row if the row exists (an update-only
      // row of a deleted schedule writes nothing: deletion wins). A full row is also written
      // in place below (the rare case: the engine sends stored rows as update-only), so that a
      // row missing from the table is inserted as it would be without the journal.
      // A value SQLite would refuse to bind in place is refused here too, naming its column.
      std::size_t owed_size = 0;
      if (!OwesNothing(r)) {
        EncodeOwed(r, &owed_);
        owed_size = owed_.size();
      }
      const char* too_big = r.last_error.size() > length_limit_ ? "last_error (parameter 16)"
                            : run.run_id.size() > length_limit_ ? "run_id (parameter 17)"
                            : owed_size > length_limit_         ? "owed (parameter 23)"
                                                                : nullptr;
      if (too_big != nullptr) {
        return SqliteStatus(
            SQLITE_TOOBIG, what_, describe(),
            std::string("cannot bind ") + too_big + ": " + sqlite3_errstr(SQLITE_TOOBIG));
      }
      EncodeScheduleRecord(r, &owed_, &journal_buf_);
      ++journal_buf_records_;
      if (journal_buf_.size() >= kJournalRowBytes) {
        s = FlushJournal();
        if (!s.ok()) return s;
      }
      if (r.update_only) continue;
    }
    if (stored) {
      BindSchedule(update_schedule_, r);
      s = Write(update_schedule_, describe);
      if (!s.ok()) return s;
      // An update-only row of a deleted schedule writes nothing: deletion wins.
      if (r.update_only || sqlite3_changes64(db_.get()) != 0) continue;
    }
    Stmt& q = upsert_schedule_;
    BindSchedule(q, r);
    q.BindText(2, r.integration);
    q.BindText(3, r.connection);
    q.BindText(4, r.sync);
    q.BindText(5, r.variant);
    s = Write(q, describe);
    if (!s.ok()) return s;
  }

  // Each finished run takes its ring place, and a failed one also the failure place.
  const auto keep = static_cast<std::int64_t>(options_.history_per_schedule);
  for (const RunRow& r : batch.runs) {
    if (any_deleted && deleted.count(r.schedule_uid) != 0) continue;
    auto describe = [&] {
      return "writing run " + r.run_id + " of schedule uid " + std::to_string(r.schedule_uid);
    };
    if (r.finished_ms == 0 || r.number == 0 || r.schedule_uid > kMaxUid) {
      return Status::Internal(describe() +
                              ": not a finished run (finished_ms and number must be set) or a "
                              "schedule uid above 2^53 (history ids are uid * 1024 + place)");
    }
    const std::int64_t ring =
        keep > 0 ? static_cast<std::int64_t>((r.number - 1) % static_cast<std::uint64_t>(keep))
                 : -1;
    if (journal_now_) {
      if (r.run_id.size() > length_limit_ || r.error.size() > length_limit_) {
        return SqliteStatus(SQLITE_TOOBIG, what_, describe(),
                            std::string("cannot bind ") +
                                (r.run_id.size() > length_limit_ ? "run_id (parameter 3)"
                                                                 : "error (parameter 10)") +
                                ": " + sqlite3_errstr(SQLITE_TOOBIG));
      }
      EncodeRunRecord(r, ring, r.ok == 0, &journal_buf_);
      ++journal_buf_records_;
      if (journal_buf_.size() >= kJournalRowBytes) {
        s = FlushJournal();
        if (!s.ok()) return s;
      }
      continue;
    }
    auto first = static_cast<std::int64_t>(r.schedule_uid) * kPlaces;
    if (ring >= 0) {
      s = PutHistory(first + ring, r);
      if (!s.ok()) return s;
    }
    if (r.ok == 0) {
      s = PutHistory(first + kFailurePlace, r);
      if (!s.ok()) return s;
    }
  }
  s = FlushJournal();
  if (!s.ok()) return s;

  if (*max_uid > max_uid_) {
    set_max_uid_.BindU64(1, *max_uid);
    s = Write(set_max_uid_, [] { return "writing max_uid"; });
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

void SqliteStore::BindSchedule(Stmt& q, const ScheduleRow& r) {
  const RunRow& run = r.in_flight;
  q.BindU64(1, r.uid);
  q.Bind(6, r.state);
  q.Bind(7, r.anchor_ms);
  q.Bind(8, r.frequency_override_ms);
  q.Bind(9, r.next_slot_ms);
  q.BindU64(10, r.runs);
  q.BindU64(11, r.failures);
  q.BindU64(12, r.skipped);
  q.Bind(13, r.last_start_ms);
  q.Bind(14, r.last_finish_ms);
  q.Bind(15, r.last_ok);
  q.BindText(16, r.last_error);
  q.BindText(17, run.run_id);
  q.Bind(18, run.slot_ms);
  q.Bind(19, run.mode);
  q.Bind(20, run.attempt);
  q.Bind(21, run.started_ms);
  q.BindU64(22, r.run_seq);
  // The common row owes nothing: one NULL, nothing encoded.
  if (OwesNothing(r)) {
    q.BindNull(23);
  } else {
    EncodeOwed(r, &owed_);
    q.BindBlob(23, owed_);
  }
}

Status SqliteStore::PutHistory(std::int64_t id, const RunRow& r) {
  Stmt& q = put_history_;
  q.Bind(1, id);
  q.BindU64(2, r.schedule_uid);
  q.BindText(3, r.run_id);
  q.Bind(4, r.slot_ms);
  q.Bind(5, r.mode);
  q.Bind(6, r.attempt);
  q.Bind(7, r.started_ms);
  q.Bind(8, r.finished_ms);
  q.Bind(9, r.ok);
  q.BindText(10, r.error);
  return Write(q, [&] {
    return "writing run " + r.run_id + " of schedule uid " + std::to_string(r.schedule_uid);
  });
}

Status SqliteStore::FlushJournal() {
  if (journal_buf_records_ == 0) return Status::Ok();
  Stmt& q = append_journal_;
  q.BindU64(1, journal_buf_records_);
  q.BindBlob(2, journal_buf_);
  Status s = Write(q, [] { return std::string("appending to the run journal"); });
  if (!s.ok()) return s;
  journal_appended_ += journal_buf_records_;
  journal_buf_records_ = 0;
  journal_buf_.assign(1, static_cast<char>(kJournalFormat));
  return Status::Ok();
}

Result<std::uint64_t> SqliteStore::CountJournal() {
  // A row's count is at least one and at most half its bytes (a record takes two or more): any
  // other is corruption, named by its row, before the counts are summed (a damaged count could
  // overflow the sum: an "integer overflow" naming no row, found by helper-46).
  {
    Stmt bad;
    int rc = db_.Prepare(
        "SELECT seq, records FROM journal WHERE records < 1 OR records > length(body) / 2 LIMIT 1",
        &bad);
    if (rc != SQLITE_OK) return Error(rc, "reading the run journal");
    rc = bad.Step();
    if (rc == SQLITE_ROW) {
      corruption_seen_ = true;
      return Status::Internal(Corrupt(what_, "run journal row " + std::to_string(bad.Int(0)) +
                                                 ": it declares " + std::to_string(bad.Int(1)) +
                                                 " records, more than its bytes can hold or none"));
    }
    if (rc != SQLITE_DONE) return Error(rc, "reading the run journal");
  }
  Stmt stmt;
  int rc = db_.Prepare("SELECT coalesce(sum(records), 0) FROM journal", &stmt);
  if (rc != SQLITE_OK) return Error(rc, "reading the run journal");
  rc = stmt.Step();
  if (rc != SQLITE_ROW) return Error(rc, "reading the run journal");
  return stmt.U64(0);
}

Status SqliteStore::FoldJournal(bool all, std::uint64_t min_slice) {
  const std::uint64_t limit = FoldThreshold();
  do {
    if (!fold_.active) {
      if (Status s = FoldRead(limit); !s.ok()) return s;
      if (!fold_.active) return Status::Ok();  // nothing to fold
    }
    // A sixteenth of a fold per slice, at most kFoldSliceRecords (a smaller journal_fold_records,
    // as the tests set, still folds in several slices).
    const auto slice = static_cast<std::size_t>(std::max(
        std::clamp<std::uint64_t>(limit / 16, 1, std::uint64_t{kFoldSliceRecords}), min_slice));
    if (Status s = FoldSlice(all ? std::numeric_limits<std::size_t>::max() : slice); !s.ok()) {
      return s;
    }
  } while (all && (fold_.active || journal_records_ > 0));
  return Status::Ok();
}

// The oldest journal rows up to `limit` records (at least one row), read in a transaction of
// their own, their records sorted by uid. Each schedule's last record in the chunk is then
// written to its row, in uid order, and its finished runs to their places (the last run at each
// place), in id order (FoldSlice): sequential writes to both b-trees, each page written once per
// fold however many of its rows changed. A schedule whose row is gone (deleted after its records
// were appended) gets nothing. The rows' bytes are kept in one buffer and the records in one
// array reserved for the whole chunk: a few large allocations, which a process can hand back to
// the kernel whole (syncschedd maps every allocation of 1 MiB or more on its own), rather than
// tens of thousands of small ones that would leave the heap fragmented after every fold.
Status SqliteStore::FoldRead(std::uint64_t limit) {
  ClearFold();
  if (!broken_.empty()) return Broken();
  if (Status s = CheckFileIdentity(); !s.ok()) return s;
  cksum::TakeLastFailure();
  int rc = begin_.Step();
  begin_.Reset();
  if (rc != SQLITE_DONE) return NoteCorruption(Error(rc, "folding the run journal: cannot begin"));
  auto fail = [&](Status status) {
    ClearFold();
    return NoteCorruption(RollBack(std::move(status), "fold"));
  };
  auto corrupt = [&](std::int64_t seq, const std::string& why) {
    corruption_seen_ = true;
    return Status::Internal(Corrupt(what_, "run journal row " + std::to_string(seq) + ": " + why));
  };
  std::string& blob = fold_.blob;
  std::vector<FoldSpan>& spans = fold_.spans;
  std::vector<std::int64_t>& seqs = fold_.seqs;
  std::vector<FoldEntry>& entries = fold_.entries;
  auto body_of = [&](std::uint32_t row) {
    return std::string_view(blob).substr(spans[row].at, spans[row].size);
  };
  using Entry = FoldEntry;
  // The buffers, reserved once for the rows the fold will read (a blob grown by doubling would
  // hold up to twice its bytes, and three times while it moves: ~0.8 GB for a fold at the cap).
  {
    Stmt& q = size_journal_;
    ResetGuard guard(q);
    std::uint64_t rows = 0, declared = 0, bytes = 0;
    while (declared < limit && (rc = q.Step()) == SQLITE_ROW) {
      ++rows;
      declared += q.U64(0);
      bytes += q.U64(1);
    }
    if (declared < limit && rc != SQLITE_DONE) {
      return fail(Error(rc, "reading the run journal's sizes"));
    }
    if (rows == 0) {  // nothing to fold
      journal_records_ = 0;
      return fail(Status::Ok());
    }
    blob.reserve(static_cast<std::size_t>(bytes));
    spans.reserve(static_cast<std::size_t>(rows));
    seqs.reserve(static_cast<std::size_t>(rows));
    // Declared counts are checked as the rows are read (a false one is corruption); a record takes
    // at least two bytes, so a damaged count reserves no more than the bytes allow.
    entries.reserve(static_cast<std::size_t>(std::min(declared, bytes / 2)) + 64);
  }
  std::uint64_t records = 0;
  std::int64_t last_seq = 0;
  Status read_status;
  {
    Stmt& q = read_journal_;
    ResetGuard guard(q);
    while (read_status.ok() && records < limit && (rc = q.Step()) == SQLITE_ROW) {
      last_seq = q.Int(0);
      std::uint64_t declared = q.U64(1);
      std::string_view body = q.Blob(2);
      if (q.ColumnFailed()) {
        read_status = Error(SQLITE_NOMEM, "folding the run journal");
        break;
      }
      auto index = static_cast<std::uint32_t>(spans.size());
      spans.push_back({blob.size(), body.size()});
      blob.append(body);
      seqs.push_back(last_seq);
      JournalReader in(body_of(index));
      std::uint8_t format = 0;
      if (!in.Byte(&format) || format != kJournalFormat) {
        read_status = corrupt(last_seq, "unknown format");
        break;
      }
      std::uint64_t found = 0;
      ScheduleRow row;
      JournalRun run;
      std::string why;
      while (!in.done()) {
        Entry e{0, index, static_cast<std::uint32_t>(in.at()), 0};
        (void)in.Byte(&e.type);
        bool ok = false;
        if (e.type == kJournalSchedule) {
          ok = DecodeScheduleRecord(in, &row, &why);
          e.uid = row.uid;
        } else if (e.type == kJournalRun) {
          ok = DecodeRunRecord(in, &run, &why);
          e.uid = run.run.schedule_uid;
        } else {
          why = "unknown record type " + std::to_string(e.type);
        }
        if (!ok) {
          read_status = corrupt(last_seq, why);
          break;
        }
        entries.push_back(e);
        ++found;
      }
      if (read_status.ok() && found != declared) {
        read_status = corrupt(last_seq, "it holds " + std::to_string(found) + " records, not " +
                                            std::to_string(declared));
      }
      records += found;
    }
    if (read_status.ok() && records < limit && rc != SQLITE_DONE) {
      read_status = Error(rc, "reading the run journal");
    }
  }
  if (!read_status.ok()) return fail(std::move(read_status));
  if (spans.empty()) {  // nothing to fold
    journal_records_ = 0;
    return fail(Status::Ok());
  }
  // By uid, and in journal order within a uid: (row, offset) is an entry's place in the journal,
  // so the sort needs no stability, and no buffer (std::stable_sort allocates one of half the
  // entries, ~12 bytes a record on top of the fold's memory: helper-46).
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.uid != b.uid     ? a.uid < b.uid
           : a.body != b.body ? a.body < b.body
                              : a.offset < b.offset;
  });
  rc = commit_.Step();  // ends the read; nothing was written
  commit_.Reset();
  if (rc != SQLITE_DONE) return fail(Error(rc, "folding the run journal: ending the read"));
  fold_.last_seq = last_seq;
  fold_.records = records;
  fold_.active = true;
  return Status::Ok();
}

Status SqliteStore::FoldSlice(std::size_t slice) {
  if (!broken_.empty()) {
    ClearFold();
    return Broken();
  }
  if (Status s = CheckFileIdentity(); !s.ok()) {
    ClearFold();
    return s;
  }
  cksum::TakeLastFailure();
  int rc = begin_.Step();
  begin_.Reset();
  if (rc != SQLITE_DONE) {
    ClearFold();
    return NoteCorruption(Error(rc, "folding the run journal: cannot begin"));
  }
  // A failed slice drops the fold under way: the journal still holds every record, and the next
  // fold starts again from its oldest row (writing a record twice is harmless).
  auto fail = [&](Status status) {
    ClearFold();
    return NoteCorruption(RollBack(std::move(status), "fold"));
  };
  auto corrupt = [&](std::int64_t seq, const std::string& why) {
    corruption_seen_ = true;
    return Status::Internal(Corrupt(what_, "run journal row " + std::to_string(seq) + ": " + why));
  };
  const std::vector<FoldEntry>& entries = fold_.entries;
  const std::vector<std::int64_t>& seqs = fold_.seqs;
  auto body_of = [&](std::uint32_t row) {
    return std::string_view(fold_.blob).substr(fold_.spans[row].at, fold_.spans[row].size);
  };
  const std::size_t stop =
      entries.size() - fold_.next <= slice ? entries.size() : fold_.next + slice;
  ScheduleRow row;
  JournalRun run;
  std::string why;
  std::vector<std::pair<std::int64_t, JournalRun>> places;  // a schedule's writes to its history
  Status s;
  std::size_t i = fold_.next;
  while (i < stop) {  // whole schedules: a slice may end past `stop`
    std::size_t end = i;
    const FoldEntry* image = nullptr;
    bool runs = false;
    while (end < entries.size() && entries[end].uid == entries[i].uid) {
      if (entries[end].type == kJournalSchedule) image = &entries[end];
      if (entries[end].type == kJournalRun) runs = true;
      ++end;
    }
    const std::uint64_t uid = entries[i].uid;
    auto decode_at = [&](const FoldEntry& e) {
      JournalReader in(body_of(e.body));
      in.Seek(e.offset + 1);
      return e.type == kJournalSchedule ? DecodeScheduleRecord(in, &row, &why)
                                        : DecodeRunRecord(in, &run, &why);
    };
    bool exists = false;
    if (image != nullptr) {
      if (!decode_at(*image)) return fail(corrupt(seqs[image->body], why));
      BindSchedule(update_schedule_, row);
      s = Write(update_schedule_, [&] {
        return "folding the run journal: writing schedule uid " + std::to_string(uid);
      });
      if (!s.ok()) return fail(s);
      exists = sqlite3_changes64(db_.get()) != 0;
    } else {
      Stmt& q = schedule_exists_;
      ResetGuard guard(q);
      q.BindU64(1, uid);
      rc = q.Step();
      if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        return fail(
            Error(rc, "folding the run journal: looking up schedule uid " + std::to_string(uid)));
      }
      exists = rc == SQLITE_ROW;
    }
    if (exists && runs) {
      places.clear();
      for (std::size_t k = i; k < end; ++k) {
        if (entries[k].type != kJournalRun) continue;
        if (!decode_at(entries[k])) return fail(corrupt(seqs[entries[k].body], why));
        if (run.ring >= 0) places.emplace_back(run.ring, run);
        if (run.failure_place) places.emplace_back(kFailurePlace, run);
      }
      // The last run written at each place wins, as if each had been written in turn.
      std::stable_sort(places.begin(), places.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
      for (std::size_t k = 0; k < places.size(); ++k) {
        if (k + 1 < places.size() && places[k + 1].first == places[k].first) continue;
        if (uid > kMaxUid) break;  // refused when appended; never here
        s = PutHistory(static_cast<std::int64_t>(uid) * kPlaces + places[k].first,
                       places[k].second.run);
        if (!s.ok()) return fail(s);
      }
    }
    i = end;
  }
  const bool last = i >= entries.size();
  if (last) {
    delete_journal_.Bind(1, fold_.last_seq);
    s = Write(delete_journal_, [] { return std::string("folding the run journal: deleting it"); });
    if (!s.ok()) return fail(s);
  }
  rc = commit_.Step();
  commit_.Reset();
  if (rc != SQLITE_DONE) return fail(Error(rc, "folding the run journal: commit failed"));
  if (last) {
    journal_records_ = fold_.records >= journal_records_ ? 0 : journal_records_ - fold_.records;
    journal_since_ = std::chrono::steady_clock::now();  // the rest came during the fold
    ClearFold();
  } else {
    fold_.next = i;
  }
  if (std::string found = cksum::TakeLastFailure(); !found.empty()) {
    corruption_seen_ = true;
    return NoteCorruption(Status::Internal(
        what_ +
        " is not a syncsched database or is corrupt (a checkpoint after folding the run "
        "journal: " +
        found + ")"));
  }
  return Status::Ok();
}

// Deletes the places a smaller history_per_schedule no longer uses, once, when it changed.
Status SqliteStore::TrimHistory() {
  auto keep = static_cast<std::int64_t>(options_.history_per_schedule);
  Stmt stmt;
  int rc = db_.Prepare("SELECT value FROM meta WHERE key = 'history_kept'", &stmt);
  if (rc != SQLITE_OK) return Error(rc, "reading history_kept");
  rc = stmt.Step();
  if (rc != SQLITE_ROW)
    return Error(rc == SQLITE_DONE ? SQLITE_CORRUPT : rc, "reading history_kept");
  std::int64_t kept = stmt.Int(0);
  stmt = Stmt();
  if (kept == keep) return Status::Ok();
  // The journal's runs hold places of the old bound: folded first, then trimmed with the rest.
  if (journal_records_ > 0) {
    Status folded = FoldJournal(/*all=*/true);
    if (!folded.ok()) return folded;
  }
  std::string sql = "BEGIN IMMEDIATE;";
  if (keep < kept) {
    sql += "DELETE FROM history WHERE id % " + std::to_string(kPlaces) +
           " >= " + std::to_string(keep) + " AND id % " + std::to_string(kPlaces) + " <> " +
           std::to_string(kFailurePlace) + ";";
  }
  sql += "UPDATE meta SET value = " + std::to_string(keep) + " WHERE key = 'history_kept';COMMIT";
  Status s = Exec(sql.c_str(), "trimming the run history to history_per_schedule");
  return s.ok() ? s : EndOpenTransaction(std::move(s));
}

Status SqliteStore::SetMaxPageCount(std::int64_t pages) {
  std::string sql = "PRAGMA max_page_count=" + std::to_string(pages);
  return Exec(sql.c_str(), "setting max_page_count");
}

Result<std::int64_t> SqliteStore::PageCount() {
  Stmt stmt;
  int rc = db_.Prepare("PRAGMA page_count", &stmt);
  if (rc != SQLITE_OK) return Error(rc, "reading page_count");
  rc = stmt.Step();
  if (rc != SQLITE_ROW) return Error(rc, "reading page_count");
  return stmt.Int(0);
}

}  // namespace

namespace {
std::atomic<bool> page_checksums_allowed{true};  // SetPageChecksumsForTest
}  // namespace

Result<std::unique_ptr<Store>> OpenSqliteStore(const SqliteStoreOptions& given) {
  SqliteStoreOptions options = given;
  options.page_checksums = options.page_checksums && page_checksums_allowed.load();
  if (options.path.empty()) {
    return Status::InvalidArgument(
        "SqliteStoreOptions.path is empty; give a database file path or \":memory:\"");
  }
  if (options.history_per_schedule > 1000) {
    return Status::InvalidArgument("SqliteStoreOptions.history_per_schedule is " +
                                   std::to_string(options.history_per_schedule) +
                                   "; at most 1000 runs per schedule are kept");
  }
  if (const char* journal = std::getenv("SYNCSCHED_SQLITE_JOURNAL")) {
    // For tests and benchmarks (sqlite_store.h): "FROM" or "FROM,FOLD", decimal; a value that
    // does not parse whole (or a FOLD of 0) is refused, naming the variable.
    const char* p = journal;
    char* end = nullptr;
    errno = 0;
    unsigned long long from = std::strtoull(p, &end, 10);
    unsigned long long fold = options.journal_fold_records;
    bool ok = end != p && errno == 0 && *p != '-';
    if (ok && *end == ',') {
      p = end + 1;
      fold = std::strtoull(p, &end, 10);
      ok = end != p && errno == 0 && *p != '-' && fold > 0;
    }
    if (!ok || *end != '\0') {
      return Status::InvalidArgument(
          std::string("the environment variable SYNCSCHED_SQLITE_JOURNAL is \"") + journal +
          "\"; expected FROM or FROM,FOLD (decimal uid count, then records per fold, at least 1)");
    }
    options.journal_from_uid = from;
    options.journal_fold_records = static_cast<std::size_t>(fold);
    if (std::strchr(journal, ',') != nullptr) options.journal_fold_per_uid = 0;  // FOLD exactly
  }
  if (options.journal_fold_records == 0) {
    return Status::InvalidArgument(
        "SqliteStoreOptions.journal_fold_records is 0; give at least 1 record per fold");
  }
  auto store = std::make_unique<SqliteStore>(options);
  Status s = store->Open();
  if (!s.ok()) {
    store->Abandon();
    return s;
  }
  return std::unique_ptr<Store>(std::move(store));
}

namespace internal {

void SetPageChecksumsForTest(bool enabled) { page_checksums_allowed.store(enabled); }

Status SetMaxPageCountForTest(Store& store, std::int64_t pages) {
  return static_cast<SqliteStore&>(store).SetMaxPageCount(pages);
}

Result<std::int64_t> PageCountForTest(Store& store) {
  return static_cast<SqliteStore&>(store).PageCount();
}

void FailNextRollbackForTest(Store& store) { static_cast<SqliteStore&>(store).FailNextRollback(); }

void SetLengthLimitForTest(Store& store, int bytes) {
  static_cast<SqliteStore&>(store).SetLengthLimit(bytes);
}

Status SetAutoCheckpointForTest(Store& store, int pages) {
  return static_cast<SqliteStore&>(store).SetAutoCheckpoint(pages);
}

Status FoldJournalForTest(Store& store) { return static_cast<SqliteStore&>(store).FoldAll(); }

std::uint64_t JournalRecordsForTest(Store& store) {
  return static_cast<SqliteStore&>(store).JournalRecords();
}

std::size_t FoldBytesForTest(Store& store) { return static_cast<SqliteStore&>(store).FoldBytes(); }

void AgeJournalForTest(Store& store, std::chrono::milliseconds by) {
  static_cast<SqliteStore&>(store).AgeJournal(by);
}

}  // namespace internal

}  // namespace syncsched::store
