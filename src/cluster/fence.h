// cluster/: fencing. Every commit an engine makes for a partition checks, inside the same
// transaction, that it still holds the partition at the epoch it believes (docs/cluster.md,
// "Fencing"). This is what makes a stale owner (frozen past its lease, cut off by the network)
// harmless: whatever it believes, the database refuses its writes once another node took over.
//
// How: the check is the SQL function syncsched_cluster.fence (cluster_schema.h). It locks the rows
// of the partitions FOR KEY SHARE and requires owner = node, epoch = the given epoch and an
// unexpired lease. A takeover or a release locks the row FOR UPDATE first, which conflicts with
// FOR KEY SHARE: so once the check passed, no other node can take the partition until this
// transaction ends (the takeover waits, then sees the committed state), and a takeover that
// committed first makes the check fail. A lease renewal (a plain UPDATE of expires_at, FOR NO KEY
// UPDATE) does not conflict with FOR KEY SHARE: commits never delay renewals. (A plain UPDATE as
// takeover would NOT be safe with FOR KEY SHARE: it takes FOR NO KEY UPDATE, which does not
// conflict, and could commit between the check and the commit. The takeover's explicit
// FOR UPDATE is what the fence relies on; see lease_keeper.cc.)
//
// Thread safety: the functions use the connection they are given, from the calling thread only.
#pragma once

#include <libpq-fe.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "syncsched/status.h"

namespace syncsched::cluster {

struct PartitionEpoch {
  int partition = 0;
  std::int64_t epoch = 0;
  friend bool operator==(const PartitionEpoch&, const PartitionEpoch&) = default;
};

// What a commit claims to hold: the node (LeaseKeeper::node_id()) and the partitions it writes,
// each at the epoch of the lease the engine acted under (LeaseKeeper::FenceFor builds it).
struct Fence {
  std::int64_t node_id = 0;
  std::vector<PartitionEpoch> partitions;  // no partition twice
};

// The SQLSTATE the fence raises, and the text every fenced Status carries in its message.
inline constexpr const char* kFencedSqlState = "SYF01";
inline constexpr const char* kFencedMarker = "[SQLSTATE SYF01]";

// Checks `fence` inside the transaction open on `txn`, and keeps the partitions' rows locked
// (FOR KEY SHARE) until that transaction ends, so that what was checked still holds at its
// COMMIT. Call it before COMMIT, in the transaction whose writes it guards (before or after the
// writes: the lock holds until the end either way).
//
// Success: OK; the transaction stays open, and no other node can take these partitions before
// it ends. An empty fence is OK without a round trip (a commit that touches no partition).
// Errors (the transaction is then aborted by the server, or was not open; the caller must
// ROLLBACK, and COMMIT would roll back anyway: nothing of the transaction is applied):
// - FAILED_PRECONDITION, and only then, when fenced: some partition is not held by the node at
//   that epoch with an unexpired lease (taken over, released, expired). The message names the
//   first such partition, its current owner and epoch, and contains kFencedMarker (IsFenced).
// - INVALID_ARGUMENT: `txn` is not inside an open transaction (the lock would not outlive the
//   call), or a partition appears twice. Nothing is sent.
// - UNAVAILABLE: the connection was lost, the server is restarting, a lock or statement timeout.
// - INTERNAL: the cluster schema is missing (EnsureClusterSchema was never run) or another error.
// Does not count refusals: LeaseKeeper::CheckFence does.
Status CheckFence(PGconn* txn, const Fence& fence);

// The application_name of every session that runs fenced commits for node `node_id`
// (kFencedSessionPrefix + the id). Survivors end the sessions so named of a node that is no
// longer live (LeaseKeeper: "sessions of a lost node"); nothing else reads it.
inline constexpr const char* kFencedSessionPrefix = "syncsched-fenced/";
std::string FencedSessionName(std::int64_t node_id);

// Prepares a connection that will run fenced commits for node `node_id`, once per session (again
// after a reconnection):
// - sets idle_in_transaction_session_timeout to lease / 2, so that an engine frozen (SIGSTOP, a
//   pause, a lost machine) while its fenced transaction is open and idle does not keep the
//   partitions' rows locked: the server ends that session, rolling the transaction back, before
//   the lease ends, and the takeover is not delayed. Without it a takeover waits for the frozen
//   transaction for as long as the freeze lasts (seen in the tests: a node stopped between BEGIN
//   and COMMIT kept its partitions until SIGCONT). A commit must therefore never stay idle inside
//   its transaction for lease / 2 (a streamed commit whose producer pauses that long fails, and
//   is rolled back).
// - sets application_name to FencedSessionName(node_id) (overriding the URI's). The timeout above
//   does not cover a session frozen in the middle of a pipeline (BEGIN and the fence sent, the
//   Sync not yet): the server then waits for the client's next message, neither idle in a
//   transaction nor running a statement, and no server timeout ends it. A surviving node that
//   finds partitions it cannot claim ends such sessions of nodes no longer live
//   (LeaseKeeper), and needs this name to find them.
// Success: OK. Errors: INVALID_ARGUMENT for a lease under 2 ms, a node id under 1 or a connection
// inside a transaction (nothing sent); UNAVAILABLE for a lost connection; INTERNAL otherwise.
Status PrepareFencedSession(PGconn* conn, std::chrono::milliseconds lease, std::int64_t node_id);

// True for the status of a refused fence (FAILED_PRECONDITION with kFencedMarker), also after a
// store has wrapped its message.
bool IsFenced(const Status& status);

// For a commit sent as one pipeline (the PostgreSQL store): the statement to send right after
// BEGIN, and its three text parameters (node, int4[] of partitions, int8[] of epochs). Its error
// (SQLSTATE kFencedSqlState) aborts the transaction, so that the pipeline's COMMIT rolls back.
inline constexpr const char* kFenceSql =
    "SELECT syncsched_cluster.fence($1::int8, $2::int4[], $3::int8[])";
std::array<std::string, 3> FenceParams(const Fence& fence);

}  // namespace syncsched::cluster
