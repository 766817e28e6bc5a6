// cluster/: the LeaseKeeper, one per engine of a cluster: it holds this engine's node row and its
// leases on an even share of the database's partitions (docs/cluster.md), on a PostgreSQL
// connection and a thread of its own.
//
// What it does, every `renew_every` (default lease/3) and at once when another node joins or
// releases partitions (LISTEN/NOTIFY on kClusterChannel) or a foreign lease expires:
// - renews its node row and the leases it holds (one transaction; expiry = the database's now() +
//   lease, never this machine's clock);
// - computes its quota: with N live nodes ranked by node id (oldest first), floor(P/N), plus one
//   for the first P mod N ranks. Quotas sum to P, so at rest every node holds floor or ceil of
//   P/N: within one partition of the mean;
// - claims free or expired partitions up to its quota (each claim a new tenure: epoch + 1), or
//   releases those above it (and notifies, so that the node short of its quota claims them at
//   once).
// When a claim gets fewer expired partitions than it asked for, their rows are locked: by another
// claimer, or by a transaction of their old owner that is still open. The server ends such a
// transaction when its session idles (fence.h, PrepareFencedSession), but not when the owner froze
// in the middle of a pipeline (the server then waits for the client's next message, with no
// timeout). So the keeper then ends the fenced sessions (fence.h, FencedSessionName) of every node
// that is no longer live by the database's clock and whose transaction is older than lease / 2:
// pg_terminate_backend, which needs the engines to share one role (or pg_signal_backend). A node
// that is not live holds no valid lease (its renewal would have kept it live), so nothing it
// could still commit is lost: its commits would be refused by the fence after the takeover.
// Without the privilege the takeover waits for the frozen node to wake, as before.
//
// Stop() (graceful) releases every partition and deletes the node row in one transaction and
// notifies: the others take the partitions within one round trip, not a lease.
//
// Local validity: a lease counts as valid on this engine only until (the steady-clock time at
// which the renewal or claim that set it was SENT) + lease - safety_margin. The database's expiry
// is its now() when it ran that statement (later than the send) + lease, so the local deadline
// passes first (as long as the server's clock runs within safety_margin of this machine's steady
// clock over one lease). An engine frozen (SIGSTOP, a pause, a partition) past that deadline
// finds its leases invalid when it wakes, before it can act on them, and its commits are refused
// by the fence (fence.h) once another node took them.
//
// Thread safety: Start, Stop and the destructor from one owning thread; Snapshot, Owned,
// FenceFor, CheckFence, counters, Health and node_id from any thread at any time (they lock a
// mutex or read atomics). on_change runs on the keeper's thread: it must return quickly and must
// not call Stop or destroy the keeper.
#pragma once

#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "cluster/cluster_schema.h"
#include "cluster/fence.h"
#include "cluster/pg_deadline.h"
#include "cluster/pg_util.h"
#include "syncsched/status.h"

namespace syncsched::cluster {

using SteadyTime = std::chrono::steady_clock::time_point;

// One lease this engine holds: a tenure of `partition` at `epoch`.
struct Lease {
  int partition = 0;
  std::int64_t epoch = 0;
  SteadyTime acquired{};     // when this engine learned it holds it (after the claim's answer)
  SteadyTime valid_until{};  // local validity (see above): act on it only before this instant
  bool ValidAt(SteadyTime t) const { return acquired <= t && t < valid_until; }
};

// What changed, as reported to on_change.
struct LeaseChange {
  std::vector<Lease> gained;         // new tenures (claimed, or found held at renewal)
  std::vector<PartitionEpoch> lost;  // tenures that ended: released, taken, locally expired
};

struct LeaseKeeperCounters {
  std::uint64_t renewals = 0;         // successful renewals of the node row and its leases
  std::uint64_t claims = 0;           // free partitions taken
  std::uint64_t takeovers = 0;        // partitions taken from a node whose lease had expired
  std::uint64_t releases = 0;         // partitions released (shedding and Stop)
  std::uint64_t lost = 0;             // tenures lost without release (taken over, expired)
  std::uint64_t fenced_refusals = 0;  // FenceFor / CheckFence refusals
  std::uint64_t sessions_ended = 0;   // fenced sessions of lost nodes ended (see Claim)
  std::uint64_t withdrawals = 0;      // times the node left the cluster for a while (Withdraw)
};

struct LeaseSnapshot {
  std::int64_t node_id = 0;
  int partitions_total = 0;  // P
  int live_nodes = 0;        // at the last successful renewal (0 before it)
  bool connected = false;
  std::vector<Lease> leases;  // held, by partition; some may be past valid_until (check ValidAt)
};

struct LeaseKeeperOptions {
  // A libpq URI ("postgresql://..."); the database must exist. Required.
  std::string uri;
  // This engine's name, unique among live engines (default in the daemon: host:port). 1..255
  // bytes. Required.
  std::string node;
  // The lease: a node that stops renewing loses its partitions this long after its last
  // successful renewal (database time). At least 300 ms.
  std::chrono::milliseconds lease{10'000};
  // 0: lease / 3. Must be below lease - safety_margin.
  std::chrono::milliseconds renew_every{0};
  // 0: lease / 10. Covers the rate difference between this machine's steady clock and the
  // server's clock over one lease, and the time between checking validity and acting.
  std::chrono::milliseconds safety_margin{0};
  // How long one connection attempt (at Start, and each reconnection) may take. While the keeper
  // waits for a connection, leases that expire locally are still reported at their time.
  std::chrono::milliseconds connect_timeout{10'000};
  // The partition count P when this keeper creates the cluster schema; ignored when it exists
  // (the database's P wins: LeaseSnapshot::partitions_total).
  int partitions = kDefaultPartitions;
  // Called on the keeper's thread after each change (see the thread-safety note). May be empty.
  std::function<void(const LeaseChange&)> on_change;
};

class LeaseKeeper {
 public:
  // Connects to options.uri, creates the cluster schema when absent (EnsureClusterSchema), joins
  // the cluster as a new node (a fresh node id; its row with expiry now() + lease), notifies the
  // others, and starts the keeper's thread, whose first renewal and claims follow at once.
  // Success: a running keeper (it may hold no partition yet: see Snapshot / on_change).
  // Errors (nothing is left behind: no node row, no thread):
  // - INVALID_ARGUMENT: a URI not starting with postgresql:// or postgres://, an empty or too
  //   long node name, a lease under 300 ms, renew_every not below lease - safety_margin, a
  //   connect_timeout under 100 ms, a partition count out of range.
  // - ALREADY_EXISTS: a live node (another engine) has this name and kept renewing it for one
  //   lease after Start began to wait (a dead predecessor's lease is waited out, not refused).
  // - UNAVAILABLE: the server cannot be reached within connect_timeout, or failed meanwhile.
  // - FAILED_PRECONDITION, INTERNAL: from EnsureClusterSchema (a newer or corrupt schema).
  static Result<std::unique_ptr<LeaseKeeper>> Start(LeaseKeeperOptions options);

  // Stops the thread, then (if connected) releases every partition, deletes the node row and
  // notifies the others, in one transaction (it waits, up to the lock timeout lease / 4, for
  // commits of this engine still holding a fence). Each lease is reported lost (on_change, on
  // the keeper's thread) before it is released. Idempotent. After Stop the keeper holds nothing,
  // and a failed release only means the others wait for the leases to expire.
  void Stop();
  ~LeaseKeeper();
  LeaseKeeper(const LeaseKeeper&) = delete;
  LeaseKeeper& operator=(const LeaseKeeper&) = delete;

  std::int64_t node_id() const { return node_id_; }
  int partitions_total() const { return partitions_; }
  const std::string& node() const { return options_.node; }

  LeaseSnapshot Snapshot() const;
  // {partition -> epoch} of the leases valid at `now`.
  std::map<int, std::int64_t> Owned(SteadyTime now = std::chrono::steady_clock::now()) const;
  // Whether this engine holds `partition` at `epoch` under a lease valid at `now` (Owned, for one
  // partition, without building the map).
  bool Holds(int partition, std::int64_t epoch,
             SteadyTime now = std::chrono::steady_clock::now()) const;
  // The fence for a commit that writes `partitions` (duplicates allowed, folded): OK when each is
  // held and valid at `now`; else FAILED_PRECONDITION, fenced (IsFenced), counted as a refusal.
  Result<Fence> FenceFor(std::span<const int> partitions,
                         SteadyTime now = std::chrono::steady_clock::now());
  // cluster::CheckFence(txn, fence), counting a refusal when fenced. Same contract.
  Status CheckFence(PGconn* txn, const Fence& fence);

  // Leaves the cluster for `duration` while the keeper stays up: releases every partition and
  // deletes the node row (as Stop does, in one transaction, notifying the others, who take the
  // partitions at once), then renews and claims nothing until the time is up or Rejoin is called;
  // then it joins again under the same id and claims its share, at new epochs. For an engine that
  // can renew its leases but not commit its work (its other connections to the database stalled):
  // its partitions then run elsewhere. Calling it while withdrawn extends nothing (the first
  // duration holds). Any thread; returns at once (the keeper's thread does the work).
  void Withdraw(std::chrono::milliseconds duration);
  // Ends a withdrawal now (nothing when not withdrawn). Any thread.
  void Rejoin();
  // True from Withdraw until the keeper's thread began to join again.
  bool withdrawn() const;

  LeaseKeeperCounters counters() const;
  // OK, or the error that stopped the keeper for good: its name was taken over by another live
  // node while this one was away (it then holds nothing and renews nothing).
  Status Health() const;

  struct Tenure {
    int partition = 0;
    std::int64_t epoch = 0;
    SteadyTime acquired{};
    SteadyTime valid_until{};  // final for ended tenures
  };

 private:
  explicit LeaseKeeper(LeaseKeeperOptions options);
  friend void PauseForTest(LeaseKeeper&, bool);
  friend std::vector<Tenure> TenuresForTest(const LeaseKeeper&);

  using ResultList = std::vector<internal::ResultPtr>;

  Status Connect(std::chrono::milliseconds timeout);
  void Disconnect();
  // Sends `sql` (one or more statements, one implicit transaction), waits up to the query
  // timeout, and returns every result; on any failure, the first error (and on a timeout or a
  // lost connection, the connection is closed).
  // `timeout`: 0 for query_timeout_.
  Result<ResultList> Query(const std::string& sql, std::string_view context,
                           std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  void ConsumeInput();
  void Wake();
  void WaitUntil(SteadyTime deadline);

  Status Join(std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  Status Tick();
  Status Claim(int count);
  void EndLostNodesSessions();
  Status Release(std::vector<int> partitions);
  void Leave();
  void ExpireLocal(SteadyTime now);
  void EndTenure(int partition, SteadyTime end, LeaseChange* change);  // mu_ held
  bool Ended(int partition, std::int64_t epoch) const;                 // mu_ held: in ended_
  void Publish(const LeaseChange& change);
  void Run();

  const LeaseKeeperOptions options_;
  const std::chrono::milliseconds lease_, renew_every_, margin_, query_timeout_;
  std::int64_t node_id_ = 0;
  int partitions_ = 0;

  // The keeper's thread only (and Start before the thread exists).
  PGconn* conn_ = nullptr;
  int own_pid_ = 0;
  // The server's clock, read at Connect: the expiry of each query (Query). Unknown until then.
  internal::ServerClock server_clock_;
  bool poke_ = false;
  SteadyTime next_tick_{};
  SteadyTime next_connect_{};
  SteadyTime foreign_wake_ = SteadyTime::max();
  std::chrono::milliseconds backoff_{100};
  int wake_[2] = {-1, -1};  // self-pipe: Stop and PauseForTest wake the thread
  std::thread thread_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool paused_ = false;
  bool paused_ack_ = false;
  bool connected_ = false;
  int live_nodes_ = 0;
  SteadyTime withdrawn_until_{};  // Withdraw: not renewing until then
  bool withdrawn_ = false;        // set by Withdraw; the thread left (or leaves) the cluster
  bool left_ = false;             // the thread released everything for the withdrawal
  Status health_;
  std::map<int, Lease> held_;
  std::deque<Tenure> ended_;  // the last kTenureLog ended tenures

  std::atomic<std::uint64_t> renewals_{0}, claims_{0}, takeovers_{0}, releases_{0}, lost_{0},
      fenced_{0}, sessions_ended_{0}, withdrawals_{0};
};

// Test hooks.
// Freezes the keeper's thread (true: returns once it is blocked; it renews nothing, claims
// nothing, reads nothing, as under SIGSTOP) or lets it go on (false).
void PauseForTest(LeaseKeeper& keeper, bool paused);
// Every tenure this keeper had (the last 4096 ended ones, then the current ones), for checking
// that no two keepers of one process ever held one partition at the same instant.
std::vector<LeaseKeeper::Tenure> TenuresForTest(const LeaseKeeper& keeper);

}  // namespace syncsched::cluster
