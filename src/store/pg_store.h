// The PostgreSQL store: a second implementation of store::Store (see store.h), on libpq, for a
// host that already runs PostgreSQL or wants its schedules on a server that outlives the machine.
// Same contract as the SQLite store (sqlite_store.h): same rows in, same rows out.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "store/store.h"
#include "syncsched/status.h"

namespace syncsched::store {

// Cluster mode of the PostgreSQL store: one of several engines sharing the database, each owning
// the partitions it holds leases on (cluster/lease_keeper.h, docs/cluster.md).
struct PostgresClusterMode {
  // The engine's node id in the cluster (LeaseKeeper::node_id()): every commit is fenced as this
  // node. Required (positive).
  std::int64_t node_id = 0;
  // The database's partition count P (LeaseKeeper::partitions_total()), 1..4096: a schedule's
  // partition is cluster::PartitionOf(key, P).
  int partitions = 0;
  // The lease (LeaseKeeperOptions::lease): the session's idle_in_transaction_session_timeout is
  // lease / 2 (cluster::PrepareFencedSession). At least 2 ms.
  std::chrono::milliseconds lease{0};
};

struct PostgresStoreOptions {
  // A libpq connection URI starting with "postgresql://" or "postgres://", e.g.
  // "postgresql://sched@127.0.0.1:5432/syncsched" or, over a unix socket,
  // "postgresql://postgres@/syncsched?host=/run/postgresql". Required. The database must exist;
  // the store creates its tables in the schema `syncsched` inside it. The password, if the URI
  // holds one, never appears in a message (see RedactDatabaseUri).
  std::string uri;

  // Finished runs kept per schedule (at most 1000), beside the most recent failed run, exactly as
  // SqliteStoreOptions::history_per_schedule. A smaller value than the database was written with
  // deletes the surplus at open.
  std::size_t history_per_schedule = 20;

  // How long an open waits for another owner of the database to let go before it is refused.
  // 0 (default): refuse at once.
  std::chrono::milliseconds wait_for_owner{0};

  // libpq's connect_timeout for every connection attempt (open and reconnects), unless the URI
  // sets its own. Rounded up to whole seconds (libpq's unit); at least 2 s.
  std::chrono::milliseconds connect_timeout{10'000};

  // The session's statement_timeout: a statement of Load or Commit that runs longer is cancelled
  // by the server and the call fails with UNAVAILABLE (nothing applied). 0 (default): the
  // server's setting.
  std::chrono::milliseconds statement_timeout{0};

  // The longest the store waits for the server's reply to one message: a statement's result, the
  // next result of a commit's pipeline, the next rows of a Load, room in the socket to send. When
  // it passes, the store closes the connection as lost (UNAVAILABLE "no reply from the server
  // within N ms"; a commit whose COMMIT was sent is then in doubt, see OpenPostgresStore), so that
  // a server or a route that stops answering without closing (a stalled proxy) never holds a
  // call longer. Keep it above statement_timeout, which ends a slow statement more gently. 0: no
  // deadline. Migrations at open (which rewrite whole tables) run without it.
  std::chrono::milliseconds reply_timeout{10'000};

  // After a lost connection, the next call reconnects at once; when that fails, calls within the
  // following `reconnect_backoff_min` fail at once without trying, and the wait doubles after each
  // failed attempt up to `reconnect_backoff_max`. A successful reconnect resets it.
  std::chrono::milliseconds reconnect_backoff_min{100};
  std::chrono::milliseconds reconnect_backoff_max{5'000};

  // Set: cluster mode (see OpenPostgresStore). Unset (default): the store owns the database alone.
  std::optional<PostgresClusterMode> cluster{};
};

// True when `database` names a PostgreSQL database (starts with "postgresql://" or
// "postgres://"), false for anything else (an SQLite file path, ":memory:").
bool IsPostgresUri(std::string_view database);

// `uri` with its password (in the user-info part or a `password=` parameter) replaced by "***",
// for messages and logs. Anything else is returned unchanged.
std::string RedactDatabaseUri(std::string_view uri);

// Opens the PostgreSQL store at `options.uri`, creating its schema (`syncsched`) and tables when
// absent and migrating an older schema (versioned by the row `schema_version` of the table
// `syncsched.meta`; each migration is one transaction with its new version).
//
// Success: a store that owns the database until it is destroyed. Ownership is exclusive: the store
// holds a session-level advisory lock (pg_try_advisory_lock, key kPostgresOwnerLockKey) on its
// connection, released when the store is destroyed or its session ends (the server releases it
// when the connection is lost or the server restarts).
//
// Errors (every message names the database by its URI, without password, and the cause; a
// refused database is never written to):
// - INVALID_ARGUMENT: a URI not starting with "postgresql://" or "postgres://";
//   history_per_schedule above 1000; a reconnect backoff of zero maximum below its minimum; a
//   negative reply_timeout.
// - UNAVAILABLE: the server cannot be reached or refuses the connection (down, wrong host or port,
//   authentication, a database that does not exist); another store, in this process or another,
//   owns the database ("... is in use by another syncsched engine (backend pid N)"), after waiting
//   `wait_for_owner`; a statement timeout or full disk while creating or migrating the schema.
// - INTERNAL: the schema `syncsched` exists but misses tables of its declared version, or its
//   meta rows ("not a syncsched database or corrupt"); data corruption reported by the server.
// - FAILED_PRECONDITION: the database has a newer schema than this build knows (both versions are
//   named), or holds a schema `syncsched` of another application (tables but no version).
//
// The returned store:
// - Load() reads the whole state in one REPEATABLE READ, READ ONLY transaction (binary COPY of
//   each table). INTERNAL if a row cannot be decoded (naming the table and the row).
// - Commit() applies a batch in one transaction, sent as one pipeline (one round trip): prepared
//   statements whose parameters are binary arrays expanded by UNNEST (one array per column; for
//   update_only schedule rows, one array of the schedules table's row type), at most 8192 rows
//   per statement. Within a batch, deletions are applied before insertions and upserts, exactly as
//   the SQLite store does: connections_deleted, then connections_added (an existing connection is
//   left as is); schedules_deleted (with their history), then schedule upserts and finished runs
//   into the history, except that rows of a uid listed in schedules_deleted are not written. Rows
//   with the same key within one batch: the last one wins. Every field of a ScheduleRow is written,
//   for new and update_only rows alike, and Load reads each back as written (an update_only row of
//   a schedule the database no longer holds writes nothing). A run in `runs` must be finished
//   (finished_ms and number set), else INTERNAL. On any error the transaction is rolled back and
//   nothing of the batch is applied: UNAVAILABLE for a lost connection, a server shutting down or
//   restarting, a full disk, a statement timeout, a lock or serialization failure; INTERNAL for a
//   violated constraint (two uids with one key, an engine bug) or corruption; FAILED_PRECONDITION
//   (store::SlotTaken names the schedule uid and slot) when a schedule's new run in flight is the
//   first attempt of a grid slot (run id "<uid>-<slot>") at or before the latest grid slot the
//   database saw it dispatch (schema v4, `grid_slot_ms`: the backstop under the cluster's fence;
//   runs off the grid, retries and rewrites of the same run pass). An empty batch commits nothing
//   and needs no connection.
// - After a lost connection, the next Load or Commit reconnects (with backoff, see
//   PostgresStoreOptions) and takes the advisory lock again before anything else. When the lock is
//   held by another engine, or another engine opened the database while this store was
//   disconnected (its owner mark in `syncsched.meta` changed), the call fails with UNAVAILABLE
//   ("... is in use by another syncsched engine") and so does every later call: the store never
//   writes again over a database another engine took over. Destroy it and open the database again.
// - Every blocking call waits at most reply_timeout for each reply, then closes the connection
//   as lost (UNAVAILABLE naming the deadline). Each commit's pipeline checks, right before COMMIT,
//   that the server runs it before the moment the store gives up (an expiry in the server's
//   clock, read at connect): a commit that a stalled route delivers later is aborted there.
// - Every reconnect first ends the store's previous session if the server still runs it
//   (pg_terminate_backend, matched by pid and backend_start; best effort without the right to
//   signal it), so that its owner lock is free and nothing it holds can commit any more.
// - A commit whose connection is lost after it was sent may have been applied by the server. The
//   store then reconnects at once and reads the database's commit mark to learn the outcome: OK
//   when it was applied, UNAVAILABLE when it was not. When it cannot reconnect, it returns
//   UNAVAILABLE saying the outcome is unknown, and resolves it at the next reconnect: if the commit
//   had been applied, that call and every later one fail with INTERNAL ("a commit reported as
//   failed was applied"), since the engine rolled back what it believed failed; destroy the store
//   and open the database again to read the truth.
// - Health() is OK while the store can be used, and otherwise the status every later call returns
//   (the two cases above). A lost connection, a failed commit or a server restart do not change it:
//   the store reconnects.
//
// Cluster mode (options.cluster set; docs/cluster.md). Several stores, in this process or others,
// use the database at once, each for the partitions its engine holds. Differences from the above:
// - Ownership: the store takes the owner lock in SHARED mode (pg_try_advisory_lock_shared), so
//   any number of cluster stores coexist, while a store not in cluster mode (exclusive) is refused
//   as long as one of them is open, and the other way round (UNAVAILABLE: "... is in use by a
//   syncsched engine that is not in cluster mode" / "... by syncsched engines in cluster mode").
//   It writes its owner mark at open (so that a single engine that lost its connection meanwhile
//   refuses to write again) but no commit_seq and no max_uid: uids come from ReserveUids (the
//   sequence syncsched.schedule_uids, blocks of 4096, moved past meta's max_uid at open when a
//   single engine issued more), and the commit mark that resolves a commit in doubt is a row of
//   its own node in syncsched.commit_marks, so that no row is written by every engine's commits.
//   History is never trimmed at open (another engine may keep more).
// - The session is prepared with cluster::PrepareFencedSession (idle_in_transaction_session_timeout
//   = lease / 2; application_name = cluster::FencedSessionName(node id), which overrides the
//   URI's, so that survivors can end the sessions of a node that is no longer live) at every
//   connection.
// - Every Commit that writes schedule rows, deletes schedules or records finished runs sends
//   cluster::kFenceSql right after BEGIN (in a streamed commit, before each part's rows), in the
//   same pipeline, for the tenures of its rows (their `partition` and `epoch` tags, plus
//   Batch::fence); two epochs of one partition are fenced at the older. The store checks the
//   tags (INTERNAL, nothing sent: a row without a tag, a keyed row whose tag is not its key's
//   partition, deleted schedules without Batch::fence). A refused fence
//   (SQLSTATE SYF01: another node holds the partition, or the lease expired) is
//   FAILED_PRECONDITION, cluster::IsFenced, and nothing of the batch is applied. Catalog rows are
//   not partitioned and not fenced.
// - New schedule rows get their `partition` column (schema v3) from their key; at open, the store
//   fills the column of rows written without it (by a store not in cluster mode).
// - LoadPartitions(partitions) reads the catalog and the schedules WHERE partition = ANY(...), in
//   one REPEATABLE READ transaction; Load() reads every partition.
// Extra errors of the open: INVALID_ARGUMENT for a node id not positive, a partition count
// outside 1..4096 or a lease under 2 ms; INTERNAL when the cluster schema (syncsched_cluster) is
// missing (start the engine's LeaseKeeper first: it creates it).
//
// Thread safety: a store may be used from any thread but by one thread at a time (the engine
// serializes its calls). Distinct stores are independent (on one database, one is refused unless
// all are in cluster mode).
Result<std::unique_ptr<Store>> OpenPostgresStore(const PostgresStoreOptions& options);

// The advisory lock key of a syncsched database's owner (the bytes "syncschd"): exclusive for a
// single engine, shared by the engines of a cluster.
inline constexpr std::int64_t kPostgresOwnerLockKey = 0x7379'6e63'7363'6864;
// Schedule uids a cluster store reserves at a time (the sequence's increment).
inline constexpr std::uint64_t kPostgresUidBlock = 4096;

namespace internal {
// Test hook: closes the store's connection as a network failure would (the server ends the
// session, releasing the advisory lock); the next call reconnects. `store` must come from
// OpenPostgresStore.
void DropConnectionForTest(Store& store);
// Test hook: the server's process id of the store's session, or 0 without a connection.
int BackendPidForTest(Store& store);
}  // namespace internal

}  // namespace syncsched::store
