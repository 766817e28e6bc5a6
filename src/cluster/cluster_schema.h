// cluster/: the tables through which engines sharing one PostgreSQL database lease its partitions
// (docs/cluster.md). They live in a schema of their own, `syncsched_cluster`, beside the store's
// `syncsched` (store/pg_store.h), versioned on their own (the row `schema_version` of
// syncsched_cluster.meta): creating them never touches the store's schema or its version, and
// either may be created first.
//
// Schema version 1:
// - meta(key text, value bigint): `schema_version`; `partitions`, the partition count P, fixed
//   when the schema is created and never changed (a schedule's partition is its key's hash modulo
//   P: partition.h).
// - nodes(id, name, started_at, heartbeat_at, expires_at): one row per live engine. `id` comes
//   from the sequence node_ids, new at every start (so an engine restarted under the same name
//   never mistakes its previous life's leases for its own); `name` is unique. An engine is live
//   while expires_at > now(): every time is the database server's clock, never an engine's.
// - partitions(partition, owner, epoch, expires_at, acquired_at): exactly P rows, 0..P-1. owner:
//   a nodes.id, NULL when free; epoch: grows by one each time a node takes the partition (a new
//   tenure), never decreases; expires_at: the owner's lease, renewed with its node row (NULL when
//   free).
// - fence(node, partitions[], epochs[]): the fencing check (fence.h).
//
// Schema version 2 (a version 1 schema is migrated at the next EnsureClusterSchema, in its
// transaction): the command inbox (command_inbox.h):
// - commands(id, receiver, body, created_at): a command received by an engine that does not hold
//   every partition it touches; `id` from the sequence command_ids; `body` its encoding.
// - command_parts(command, partition, state, result, applied_by, applied_epoch, done_at): one row
//   per partition the command touches; state 0 pending, 1 applied (result: its per-key outcomes),
//   2 cancelled (by the receiver, after its deadline).
// - apply_command_part(command, partition, node, epoch, result): marks a pending part applied, in
//   the owner's fenced commit; raises SQLSTATE SYF02 when it is not pending.
//
// Thread safety: the functions use the connection they are given, from the calling thread only.
#pragma once

#include <libpq-fe.h>

#include <cstdint>

#include "syncsched/status.h"

namespace syncsched::cluster {

// The schema version this build creates and knows.
inline constexpr int kClusterSchemaVersion = 4;
// The partition count of a new database when none is asked for (docs/cluster.md says why).
inline constexpr int kDefaultPartitions = 64;
inline constexpr int kMaxPartitions = 4096;
// The transaction-level advisory lock that serializes schema creation across engines (the bytes
// "syncclst"); distinct from the store's owner lock (kPostgresOwnerLockKey).
inline constexpr std::int64_t kClusterSchemaLockKey = 0x7379'6e63'636c'7374;
// The channel on which engines announce joins and releases (LISTEN/NOTIFY).
inline constexpr const char* kClusterChannel = "syncsched_cluster";

// Creates the cluster's schema in the database of `conn` when absent, with `partitions`
// partitions, in one transaction serialized by an advisory lock (so engines starting at once
// create it once). Idempotent: when the schema exists, nothing is written and `partitions` is
// ignored.
//
// `conn` must be connected and idle (no transaction open); it is left idle.
// Success: the database's partition count P (the one it was created with).
// Errors:
// - INVALID_ARGUMENT: `partitions` outside [1, kMaxPartitions] (checked even when the schema
//   exists).
// - FAILED_PRECONDITION: the database's cluster schema is newer than kClusterSchemaVersion (both
//   versions named), or a schema `syncsched_cluster` without its meta table (another
//   application's): nothing is changed.
// - INTERNAL: a cluster schema whose meta rows or partition rows are missing or inconsistent.
// - UNAVAILABLE: the connection was lost or the server refused (restart, full disk, timeout).
Result<int> EnsureClusterSchema(PGconn* conn, int partitions);

}  // namespace syncsched::cluster
