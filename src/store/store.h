// store/: durable state. The Store interface speaks in records (rows), never in engine objects, so
// that the core can change its in-memory layout freely and a second backend (PostgreSQL, for
// several engines sharing one set of schedules) can implement the same interface. The SQLite
// store (sqlite_store.h) is the embedded default.
//
// Thread safety: a Store is used by one engine; the engine serializes calls to it (under its lock
// or from its writer), so implementations need no locking of their own beyond what SQLite does.
#pragma once

#include <chrono>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "syncsched/status.h"

namespace syncsched::store {

// A sync definition of an integration (the catalog). Keyed by (integration, name).
struct SyncRow {
  std::string integration;
  std::string name;
  std::string frequency_text;  // as the host gave it, e.g. "every 30min"
  std::int64_t frequency_ms = 0;
  bool auto_start = true;
  std::int64_t timeout_ms = 0;            // 0: the engine's default
  std::int64_t heartbeat_timeout_ms = 0;  // 0: none
  std::string policy;  // run policies, encoded by the engine (opaque to the store)
};

// Limits of an integration. Keyed by integration.
struct IntegrationRow {
  std::string integration;
  std::uint64_t max_concurrency = 0;
};

// A connection of an integration. Keyed by (integration, connection).
struct ConnectionRow {
  std::string integration;
  std::string connection;
};

// One run. A run in flight is part of its schedule's row (ScheduleRow::in_flight): committed with
// the dispatch, before the callback is called. A finished run goes to the history (Batch::runs).
struct RunRow {
  std::string run_id;  // empty: no run
  std::uint64_t schedule_uid = 0;
  std::uint64_t number = 0;  // finished runs: the schedule's run counter after this run (1-based)
  std::int64_t slot_ms = 0;
  std::uint8_t mode = 0;  // RunMode
  std::int32_t attempt = 1;
  std::int64_t started_ms = 0;
  std::int64_t finished_ms = 0;  // 0 while in flight
  std::int8_t ok = -1;           // -1 in flight, 0 error, 1 success
  std::string error;
  // Cluster mode only (several engines on one PostgreSQL database, docs/cluster.md): the
  // partition of the run's schedule and the epoch of the lease the engine wrote it under (its
  // tenure); the store fences the commit at it. -1: not in cluster mode (ignored by the stores).
  std::int32_t partition = -1;
  std::int64_t epoch = 0;
};

// A run a schedule owes but has not dispatched (run_id empty: none): a run waiting for a
// concurrency cap, or a failed run's retry that is due later. Part of its schedule's row, so that
// a command that queued it (a start or trigger whose run waits for a cap) is durable with it.
struct OwedRun {
  std::string run_id;  // empty: none; else the id the run will have (never reused)
  std::int64_t slot_ms = 0;
  std::uint8_t mode = 0;  // RunMode
  std::int32_t attempt = 1;
  std::int64_t at_ms = 0;  // waiting: since when; retry: when it is due
  std::uint64_t seq = 0;   // waiting: its place in the wait queue (engine-wide, increasing)
  bool scheduled = false;  // waiting: the run of a grid slot (later slots are skipped meanwhile)

  bool empty() const { return run_id.empty(); }
  friend bool operator==(const OwedRun&, const OwedRun&) = default;
};

// One schedule. Keyed by `uid` (unique, never reused); (integration, connection, sync, variant)
// is unique among rows.
struct ScheduleRow {
  std::uint64_t uid = 0;
  // True: a new version of a row the store already holds. The key columns are left empty and
  // are not written; when the row is gone (its schedule was deleted) nothing is written. The
  // engine sends every row but a new schedule's this way: it saves building and binding the key.
  bool update_only = false;
  std::string integration;
  std::string connection;
  std::string sync;
  std::string variant;
  std::uint8_t state = 0;                  // ScheduleState: 0 paused, 1 started (deleted rows go)
  std::int64_t anchor_ms = 0;              // grid anchor, ms since the Unix epoch
  std::int64_t frequency_override_ms = 0;  // 0: none
  std::int64_t next_slot_ms = 0;           // the next slot the engine will fire, when started
  std::uint64_t runs = 0;
  std::uint64_t failures = 0;
  std::uint64_t skipped = 0;
  std::int64_t last_start_ms = 0;   // 0: none
  std::int64_t last_finish_ms = 0;  // 0: none
  std::int8_t last_ok = -1;         // -1 none, 0 error, 1 success
  std::string last_error;
  RunRow in_flight;  // the run dispatched and not finished (run_id empty: none)
  // Schema v4: every run the schedule owes, so that a restart loses none of them. Written for new
  // and update_only rows alike, and read back exactly.
  std::uint64_t run_seq = 0;  // runs given an id so far (suffix of off-grid run ids; never reused)
  std::uint8_t pending = 0;   // 0 none; 1 + RunMode: a run to dispatch once `in_flight` ends
  OwedRun waiting;            // a run due now that waits for a concurrency cap
  OwedRun retry;              // a failed run's retry, due at retry.at_ms
  // Cluster mode only: the schedule's partition (cluster::PartitionOf of its key) and the epoch
  // of the lease the engine wrote this version under; the store fences the commit at it. -1: not
  // in cluster mode (ignored by the stores).
  std::int32_t partition = -1;
  std::int64_t epoch = 0;
};

// Cluster mode: one tenure of a partition (the lease on `partition` at `epoch`).
struct Tenure {
  std::int32_t partition = 0;
  std::int64_t epoch = 0;
  friend bool operator==(const Tenure&, const Tenure&) = default;
};

// Cluster mode: one part of a command received by another engine (cluster/command_inbox.h),
// applied by this commit: the store marks it applied with `result` in the same transaction, and
// fails the whole commit when the part is no longer pending (cancelled by its receiver, or
// applied already). The commit is fenced at (partition, epoch).
struct CommandApplied {
  std::int64_t command = 0;
  std::int32_t partition = 0;
  std::int64_t epoch = 0;
  std::string result;
};

// Everything one commit writes. Applied atomically: all of it or none.
struct Batch {
  std::vector<SyncRow> syncs;                    // upserts
  std::vector<IntegrationRow> integrations;      // upserts
  std::vector<ConnectionRow> connections_added;  // inserts
  std::vector<ConnectionRow> connections_deleted;
  std::vector<ScheduleRow> schedules;            // upserts by uid
  std::vector<std::uint64_t> schedules_deleted;  // by uid, with their runs
  std::vector<RunRow> runs;                      // finished runs, to the history
  // Cluster mode only: tenures the batch writes under beside its rows' own tags (those of
  // schedules_deleted, whose uids carry none). The store's fence is the union of these and of
  // the tags of `schedules` and `runs`.
  std::vector<Tenure> fence;
  // Cluster mode only (the PostgreSQL store): command parts this commit applies.
  std::vector<CommandApplied> commands;

  bool empty() const {
    return syncs.empty() && integrations.empty() && connections_added.empty() &&
           connections_deleted.empty() && schedules.empty() && schedules_deleted.empty() &&
           runs.empty() && commands.empty();
  }
  void clear();
};

// The state a store holds, as read at open.
struct Snapshot {
  std::vector<SyncRow> syncs;
  std::vector<IntegrationRow> integrations;
  std::vector<ConnectionRow> connections;
  std::vector<ScheduleRow> schedules;   // in uid order
  std::vector<RunRow> unfinished_runs;  // the schedules' runs in flight (at a crash), in uid order
  std::uint64_t max_uid = 0;            // the largest schedule uid ever issued
  // PostgreSQL in cluster mode: the catalog's version (cluster schema v4) in the snapshot the
  // rows were read in; -1 elsewhere.
  std::int64_t catalog_version = -1;
};

// The rest of a streamed commit (Store::CommitStream): the parts a producer builds while the
// store writes the ones before.
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // Replaces `part` (the part the store has written, or empty) with the next part and returns
  // true; returns false, leaving `part` empty, when there is none left. May block until the
  // producer has built it. Called on the thread that commits.
  virtual bool Next(Batch& part) = 0;
};

class Store {
 public:
  virtual ~Store() = default;
  // Reads the whole state. Called once, at open.
  virtual Result<Snapshot> Load() = 0;
  // Cluster mode (the PostgreSQL store with PostgresStoreOptions::cluster): reads the catalog
  // (syncs, integrations, connections) and the schedules of `partitions` only, with their runs
  // in flight; max_uid is 0. An empty list reads the catalog alone. Same errors as Load. Other
  // stores: FAILED_PRECONDITION (not a cluster store).
  virtual Result<Snapshot> LoadPartitions(const std::vector<int>& partitions) {
    (void)partitions;
    return Status::FailedPrecondition("this store has no partitions (not in cluster mode)");
  }
  // Cluster mode: reserves a block of schedule uids that no other engine of the database is
  // given (from a database sequence): returns the first; the block is [first, first + *count),
  // with *count set to the block's size. Other stores: FAILED_PRECONDITION.
  virtual Result<std::uint64_t> ReserveUids(std::uint64_t* count) {
    *count = 0;
    return Status::FailedPrecondition("this store issues no uids (not in cluster mode)");
  }
  // Commits `batch` atomically and durably (per the store's synchronous setting) before
  // returning. On error nothing of the batch is applied, and the message names the file and the
  // cause (UNAVAILABLE for a full disk or I/O error, INTERNAL for corruption, or for a store that
  // can no longer be used and refuses every later call until it is opened again: see the
  // implementation's header).
  //
  // A store that keeps the backstop of grid slots (the PostgreSQL store, schema v4) refuses a
  // commit in which a schedule's new run in flight is the first attempt of a grid slot at or
  // before the latest one ever dispatched for it: FAILED_PRECONDITION, nothing applied, the message
  // holding kSlotTakenMarker and "schedule uid <uid> slot <slot>" (SlotTaken reads them back).
  virtual Status Commit(const Batch& batch) = 0;
  // Commits `first` and every part `more` yields as one transaction, exactly as Commit would
  // commit them gathered into one batch (all or nothing, the same errors). The parts after the
  // first hold only `schedules` and `runs`; no schedule comes twice, none deleted by `first`. On
  // error it may return before `more` is exhausted. This default gathers the parts and calls Commit
  // once; a store overrides it to write each part as it comes, so that a caller builds the next
  // part meanwhile and no batch of a million rows is ever held whole.
  virtual Status CommitStream(const Batch& first, BatchSource& more) {
    Batch all = first;
    Batch part;
    while (more.Next(part)) {
      all.schedules.insert(all.schedules.end(), std::make_move_iterator(part.schedules.begin()),
                           std::make_move_iterator(part.schedules.end()));
      all.runs.insert(all.runs.end(), std::make_move_iterator(part.runs.begin()),
                      std::make_move_iterator(part.runs.end()));
    }
    return Commit(all);
  }
  // OK while the store can be used. Otherwise the store is broken for good (the SQLite store:
  // corruption was found, or a ROLLBACK failed) and this is the INTERNAL status that every later
  // Commit and Load returns, naming the file and the cause: the engine reports itself unhealthy
  // and stops claiming success; only destroying the store and opening the file again can help.
  // Cheap, and callable at any time from the thread that uses the store. A failed Commit or Load
  // that leaves the store usable (a full disk, an I/O error) does not change it.
  virtual Status Health() const { return Status::Ok(); }
  // After a failed commit, while nothing else is committed: whether a commit would succeed now,
  // learned by a commit that writes nothing of the engine's (the PostgreSQL store: its commit mark
  // alone, through the same pipeline, reconnecting first if need be), so that the engine's health
  // recovers without waiting for work. nullopt (the default): this store has no such probe, and
  // health follows the engine's own commits only. Called from the thread that commits.
  virtual std::optional<Status> Probe() { return std::nullopt; }
  // Work a store defers until it is due even when nothing is committed (the SQLite store: folding a
  // run journal whose records have waited SqliteStoreOptions::journal_fold_after_ms, so that
  // readers of the file do not wait for the next commit). MaintainDue: when Maintain should next
  // be called, or nullopt for never (the default); the engine's writer calls Maintain once that
  // time has come while nothing is queued, then asks again. Maintain never changes what Load
  // returns; a failure of its own breaks the store (Health) or is retried later. Both are called
  // from the thread that commits, between commits.
  virtual std::optional<std::chrono::steady_clock::time_point> MaintainDue() const {
    return std::nullopt;
  }
  virtual void Maintain() {}
  // Bytes of memory the store's own cache holds now (the SQLite store: its page cache, bounded by
  // SqliteStoreOptions::cache_bytes); 0 for a store without one. Called from the thread that
  // commits, between commits.
  virtual std::uint64_t CacheBytes() const { return 0; }
};

// The mark in the message of a commit refused by the backstop of grid slots (Store::Commit).
inline constexpr const char* kSlotTakenSqlState = "SYD01";
inline constexpr const char* kSlotTakenMarker = "[SQLSTATE SYD01]";

// The schedule uid and grid slot a commit was refused for (Store::Commit), or nullopt when
// `status` is not such a refusal.
struct TakenSlot {
  std::uint64_t uid = 0;
  std::int64_t slot = 0;
};
std::optional<TakenSlot> SlotTaken(const Status& status);

}  // namespace syncsched::store
