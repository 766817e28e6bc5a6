// cluster/: the command inbox (docs/cluster.md, "Commands through any engine"). An engine that
// receives a command touching partitions it does not hold writes it here, one part per
// partition; the owner of each partition applies its part through its normal command path and
// marks the part applied in the same fenced commit (store::Batch::commands,
// syncsched_cluster.apply_command_part); the receiver gathers the parts' results, or after its
// deadline cancels those still pending (a part is applied or cancelled, never both: both require
// it pending, under its row lock). Tables: cluster_schema.h, version 2.
//
// The inbox also reads schedules by scope for the receiver (their keys, partitions and status
// fields), so that a command or a status read through an engine that does not hold their
// partitions sees what the database holds, without loading whole partitions.
//
// Thread safety: the receiver's calls (Submit, Parts, Cancel, Forget, Schedules, Pending) may be
// made from any thread at once: each takes a connection of a small pool. WaitForNotice uses a
// connection of its own and must be called from one thread at a time.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cluster/pg_deadline.h"
#include "store/store.h"
#include "syncsched/status.h"

namespace syncsched::cluster {

// The channel on which a receiver announces a new command (payload: the command id).
inline constexpr const char* kCommandChannel = "syncsched_commands";

enum class PartState : int { kPending = 0, kApplied = 1, kCancelled = 2 };

struct CommandPart {
  int partition = 0;
  PartState state = PartState::kPending;
  std::string result;  // applied: the owner's encoding of the per-key outcomes
};

struct PendingCommand {
  std::int64_t id = 0;
  int partition = 0;
  std::string body;
};

// A schedule as the database holds it (syncsched.schedules), for status and target resolution.
struct StoredSchedule {
  std::string integration, connection, sync, variant;
  std::uint64_t uid = 0;
  int partition = -1;
  int state = 0;  // ScheduleState
  std::int64_t anchor_ms = 0, frequency_override_ms = 0, next_slot_ms = 0;
  std::uint64_t runs = 0, failures = 0, skipped = 0;
  std::int64_t last_start_ms = 0, last_finish_ms = 0;
  int last_ok = -1;
  std::string last_error;
  bool running = false;         // a run in flight
  std::int64_t waiting_at = 0;  // a run waiting for a cap since (0: none)
  std::int64_t retry_at = 0;    // a retry due at (0: none)
};

// The catalog as it changed after a version (cluster schema v4), read in one snapshot.
struct CatalogChanges {
  std::int64_t version = 0;   // the catalog's version in that snapshot
  std::int64_t log_from = 0;  // the catalog's log is whole from this version on
  // The connections added and deleted in (after, version], each in its last state only.
  std::vector<store::ConnectionRow> added, deleted;
  // Every sync and integration (those tables are small: read whole).
  std::vector<store::SyncRow> syncs;
  std::vector<store::IntegrationRow> integrations;
};

class CommandInbox {
 public:
  // Connects nothing yet (connections are made on first use). `uri`: the database's libpq URI.
  // `reply_timeout`: the longest any call waits for one reply of the database (its statements are
  // cut by the server at statement_timeout = 5 s); past it the connection is shut down and closed
  // as lost (cluster/pg_deadline.h) and the call fails with UNAVAILABLE ("no reply from the
  // database within N ms"), so that a database or a route that stops answering without closing
  // fails a command promptly rather than holding it for the stall. 0: no deadline.
  CommandInbox(std::string uri, std::int64_t node_id, std::chrono::milliseconds connect_timeout,
               std::chrono::milliseconds reply_timeout = std::chrono::seconds(10));
  ~CommandInbox();
  CommandInbox(const CommandInbox&) = delete;
  CommandInbox& operator=(const CommandInbox&) = delete;

  // Inserts a command (`body`) with one pending part per partition of `partitions` (distinct),
  // and notifies kCommandChannel, in one transaction. Returns the command id.
  // Errors: UNAVAILABLE (the database cannot be reached, or gave no reply within reply_timeout),
  // INTERNAL. A command is recorded only if its statement reached the database before this call
  // gives up on it (an expiry in the server's clock, calibrated at each new connection): one that
  // a stalled route carries later records nothing. The statement is one simple-protocol message,
  // executed and committed as soon as it has arrived whole. `*in_doubt` (when given) is set when
  // the call gave up waiting for the reply: the command was recorded if its statement reached the
  // database in time, and not otherwise, and nothing changes that later; false on every other
  // error, which recorded nothing.
  Result<std::int64_t> Submit(const std::string& body, const std::vector<int>& partitions,
                              bool* in_doubt = nullptr);
  // The parts of command `id` as they stand.
  Result<std::vector<CommandPart>> Parts(std::int64_t id);
  // Cancels every part of `id` still pending (one statement: a part being applied by its owner
  // is either applied first, and stays so, or finds itself cancelled and its commit rolls back),
  // then returns every part as it stands.
  Result<std::vector<CommandPart>> Cancel(std::int64_t id);
  // Deletes command `id` and its parts (after the receiver answered); errors are ignored (the
  // rows are deleted later by Cleanup).
  void Forget(std::int64_t id);
  // The catalog (cluster schema v3): the count of commits that changed syncs, integrations or
  // connections (syncsched_cluster.meta 'catalog_version'). Errors: UNAVAILABLE, INTERNAL.
  Result<std::int64_t> CatalogVersion();
  // Records in this node's row that it has applied the catalog as of `version` to the
  // partitions it holds (never lowers it). Errors: UNAVAILABLE.
  Status AckCatalog(std::int64_t version);
  // What changed in the catalog after version `after`. When log_from > after + 1 the log no
  // longer holds all of it (its rows older than an hour are deleted): read the whole catalog.
  // Errors: UNAVAILABLE, INTERNAL.
  Result<CatalogChanges> CatalogSince(std::int64_t after);
  // The names of the nodes that have not applied `version` yet and are live (lease not expired)
  // or still hold a partition (their lease lapsed and nobody took it yet: they may renew it).
  Result<std::vector<std::string>> NodesBehind(std::int64_t version);
  // Takes every partition away from the nodes that have not applied `version` yet, whatever
  // their lease (owner and lease cleared, as a release; the next claim raises the epoch): from
  // its commit on, no fenced commit of such a node succeeds for them, so a node that could not
  // apply a catalog change (frozen, cut off from the database) runs nothing under the old
  // catalog when it comes back; whoever claims them loads them under the new one. Waits for the
  // fenced commits in flight on them (their rows' locks). Returns the partitions taken away, in
  // order; announces them on kClusterChannel. Errors: UNAVAILABLE, INTERNAL.
  Result<std::vector<int>> RevokeBehind(std::int64_t version);
  // Pending parts in `partitions`, oldest command first.
  Result<std::vector<PendingCommand>> Pending(const std::vector<int>& partitions);
  // The schedules of `integration` (of `connection` only, when set), by key.
  Result<std::vector<StoredSchedule>> Schedules(const std::string& integration,
                                                const std::optional<std::string>& connection);
  // Opens connections until `n` are pooled (a new connection costs a server process and its
  // start, tens of ms on a loaded machine: paid ahead rather than by a command). Best effort.
  void Warm(std::size_t n);
  // Deletes commands older than ten minutes with no part pending (their receivers died).
  void Cleanup();

  // Waits up to `timeout` for a notice on kCommandChannel (LISTENed on a connection of its own).
  // True when one came, or when the connection was (re)made (notices may have been missed: the
  // caller reads the pending parts). False on timeout or when the database cannot be reached.
  bool WaitForNotice(std::chrono::milliseconds timeout);

 private:
  PGconn* Acquire(Status* error);  // an idle pooled connection, or a new one
  PGconn* Connect(Status* error);  // a new connection
  void Release(PGconn* conn);

  const std::string uri_;
  const std::int64_t node_id_;
  const std::chrono::milliseconds connect_timeout_;
  const std::chrono::milliseconds reply_timeout_;
  std::mutex mu_;  // a leaf: guards idle_ and server_clock_
  // The database's clock as read by the last new connection (Submit's expiry).
  internal::ServerClock server_clock_;
  std::vector<PGconn*> idle_;  // pooled connections
  PGconn* listen_ = nullptr;   // WaitForNotice's
};

}  // namespace syncsched::cluster
