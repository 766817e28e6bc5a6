// CommitQueue: the engine's one writer. Commands, run dispatches and run outcomes are queued here
// in the order the engine produced them (under its lock); a writer thread commits them in groups,
// many items per SQLite transaction, without the engine's lock held. This is the group commit
// that keeps durability cheap:
//
// - a command waits for its own item's commit (Commit), so its effect is durable when it returns;
//   the alarm and the workers queue under the engine's lock (Submit) and wait without it (Wait);
// - runs travel with the item that records them and are released to the workers only once that
//   item is committed, so a run's record is always committed before its callback is called;
// - outcomes are queued without waiting.
//
// Grouping keeps order: items are applied in queue order, rows of one schedule or run within a
// group keep their last version, and an item that deletes anything starts a new group (the store
// applies a batch's deletions before its upserts). If a group's commit fails, every item of the
// group gets the error.
//
// A failed commit of outcomes (not a command's: that one rolls back) leaves its rows applied in
// memory and carried: they go first into every later commit (the next alarm, outcome or command:
// no timer of its own, so that tests in virtual time stay deterministic) until one succeeds, and
// into the last commit at Stop. The queue's health (failed commits, what memory holds that the
// store does not, the last error) is published for metrics and status, and each change between
// healthy and failing is reported.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "core/engine_core.h"
#include "core/thread_annotations.h"
#include "store/store.h"

namespace syncsched::core {

// The commit of one queued item, to wait for (under CommitQueue's lock, CommitQueue::mu_; not
// annotated: the analysis cannot name another object's mutex from here).
struct CommitWaiter {
  Status result;
  bool done = false;
};

// What the store holds against what memory holds (see the file comment).
struct StoreHealth {
  bool healthy = true;                // false from a failed commit until a commit succeeds
  bool broken = false;                // the store refuses every further call (Store::Health)
  std::string error;                  // the last failed commit's error, while not healthy
  std::uint64_t commits_failed = 0;   // every failed commit, a command's included
  std::uint64_t rows_unrecorded = 0;  // schedule rows and finished runs carried, not yet stored
  std::uint64_t history_dropped = 0;  // finished runs dropped from the carry above its bound
  std::uint64_t cache_bytes = 0;      // the store's cache after the last commit (Store::CacheBytes)
  // The schedules whose rows are carried (null when none).
  std::shared_ptr<const std::unordered_set<std::uint64_t>> unrecorded_uids;
};

// The parts of one streamed command commit (CommitQueue::CommitStream): the engine's thread
// builds them, under the engine's lock, while the writer writes the ones before, in the same
// transaction. At most kMaxQueued built parts wait at any time, and the writer hands each written
// part back for reuse, so a command over a million schedules holds a few parts' rows, not a
// million, and the building overlaps the writing. Thread-safe.
class CommitStream final : public store::BatchSource {
 public:
  static constexpr std::size_t kMaxQueued = 2;

  // Producer. A part to fill: one the writer has written (cleared, its capacity kept), or a new
  // one.
  store::Batch TakeBuffer() EXCLUDES(mu_);
  // Queues `part`, waiting while kMaxQueued parts wait. False when the writer has given up (the
  // commit failed or is over): build nothing more.
  bool Put(store::Batch part) EXCLUDES(mu_);
  // No more parts.
  void Close() EXCLUDES(mu_);

  // Writer (store::BatchSource).
  bool Next(store::Batch& part) override EXCLUDES(mu_);
  // The writer is done with the stream (after the store's CommitStream returned): a producer
  // blocked in Put returns false, and every later Put does at once.
  void Abandon() EXCLUDES(mu_);

 private:
  Mutex mu_;
  CondVar cv_;
  std::vector<store::Batch> queued_ GUARDED_BY(mu_);  // built, in order (front first)
  std::vector<store::Batch> free_ GUARDED_BY(mu_);    // written, to reuse
  bool closed_ GUARDED_BY(mu_) = false;
  bool abandoned_ GUARDED_BY(mu_) = false;
};

class CommitQueue {
 public:
  // Finished runs kept in the carry at most, by default (a full disk with a million schedules
  // firing would otherwise grow it without bound); older ones are dropped from the history first.
  // Schedule rows keep one version each, so they are bounded by the schedules.
  static constexpr std::size_t kMaxCarriedRuns = 100'000;
  // How often an idle writer probes the store while its last commit failed (ProbeStore).
  static constexpr std::chrono::milliseconds kProbeEvery{1000};
  // `release(runs, status)` is called on the writer thread after the item carrying `runs` was
  // committed (status OK) or failed to commit; it must not take the engine's lock.
  using ReleaseFn = std::function<void(std::vector<RunPtr>&&, const Status&)>;

  // Called on the writer thread when the store goes from healthy to failing (with the error) and
  // back (with OK); it must not call into the engine (the writer is not under the engine's lock,
  // but a command may be waiting for it).
  using HealthFn = std::function<void(const Status&)>;

  // Cluster mode (docs/cluster.md), both called on the writer thread without the engine's lock
  // (they must not take it):
  // - `screen(batch, runs, command)` before an item is committed, and on the carry before every
  //   commit that includes it. For an item that is not a command's (and for the carry): removes
  //   the rows whose tenure (partition, epoch) the engine no longer holds, cancels those of
  //   `runs` (when not null), and returns OK. For a command's item: removes nothing and returns
  //   the fenced status when any row's tenure is gone (the command then fails, nothing written).
  // - `fenced(status)` after a commit the store refused by its fence (cluster::IsFenced). The
  //   queue then screens the refused group again (rows in the carry, runs of the items) and
  //   retries it once at once, so that a partition lost unannounced does not fail the others'
  //   rows with it.
  struct ClusterHooks {
    std::function<Status(store::Batch&, std::vector<RunPtr>*, bool)> screen;
    std::function<void(const Status&)> fenced;
  };

  CommitQueue(store::Store& store, ReleaseFn release, HealthFn on_health = {},
              std::size_t max_carried_runs = kMaxCarriedRuns, ClusterHooks cluster = {});
  ~CommitQueue();

  using Ticket = std::shared_ptr<CommitWaiter>;

  // Queues `batch` (and the runs it records) and returns at once.
  void Enqueue(store::Batch batch, std::vector<RunPtr> runs = {}) EXCLUDES(mu_, store_mu_);
  // Queues `batch` and returns a ticket that Wait() redeems. Lets a caller queue under the
  // engine's lock, so that items keep the engine's order, and wait for the commit without it.
  Ticket Submit(store::Batch batch, std::vector<RunPtr> runs = {}) EXCLUDES(mu_, store_mu_);
  // Waits until the item of `ticket` is committed; returns the commit's status.
  Status Wait(const Ticket& ticket) EXCLUDES(mu_);
  // A command's batch: queued as a group of its own and waited for. On error nothing of it is
  // written and it is not retried (the command rolls back).
  Status Commit(store::Batch batch) EXCLUDES(mu_, store_mu_);
  // A command's batch too large to build whole: `first` and then the parts `stream` yields, in
  // one transaction (store::Store::CommitStream), as a group of its own, never carried. Takes
  // `first` and returns the ticket to Wait for (after closing the stream); or returns null,
  // leaving `first` alone, when the writer has stopped (nobody would read the stream: the caller
  // commits the batch whole instead).
  Ticket SubmitStream(store::Batch& first, std::shared_ptr<CommitStream> stream)
      EXCLUDES(mu_, store_mu_);
  // Commits what is queued and stops the writer. Later calls commit on the caller's thread.
  void Stop() EXCLUDES(mu_);
  // A copy of the health (any thread; a leaf lock, taken under the engine's).
  StoreHealth Health() const EXCLUDES(health_mu_);
  // Dispatches the store refused by its backstop of grid slots (store::SlotTaken): each such run
  // was cancelled before its callback. Any thread.
  std::uint64_t SlotsRefused() const { return slots_refused_.load(std::memory_order_relaxed); }

  // Refusals by the backstop of grid slots taken out of one group before it fails whole.
  static constexpr int kMaxSlotRefusals = 64;

 private:
  struct Item {
    store::Batch batch;
    std::vector<RunPtr> runs;
    Ticket waiter;         // when someone waits (Submit): the writer sets its result
    bool command = false;  // Commit: a group of its own, never carried
    std::shared_ptr<CommitStream> stream;  // SubmitStream: the parts after `batch`
  };
  // Queues `item` for the writer, or commits it on this thread once the writer has exited.
  void Push(Item item) EXCLUDES(mu_, store_mu_);
  void Loop() EXCLUDES(mu_, store_mu_);
  // Takes mu_ to complete the items' waiters.
  void CommitItems(std::vector<Item>& items) REQUIRES(store_mu_) EXCLUDES(mu_);
  // Commits `batch` after the carried rows; on failure of a group that is not a command's, the
  // whole merged batch becomes the carry.
  Status CommitWithCarry(store::Batch& batch, bool command, CommitStream* stream = nullptr)
      REQUIRES(store_mu_);
  // Records a commit's outcome in the health, and bounds the carry.
  void Observe(const Status& status) REQUIRES(store_mu_) EXCLUDES(health_mu_);
  // While unhealthy and idle (every kProbeEvery): the carried rows committed, or else the store's
  // Probe; a success is observed (healthy again), a failed probe is not (it counts no commit).
  void ProbeStore() REQUIRES(store_mu_);
  static bool HasDeletions(const store::Batch& b) {
    return !b.connections_deleted.empty() || !b.schedules_deleted.empty();
  }

  // Used only with store_mu_ held (CommitWithCarry). Not annotated: a reference member is not
  // checked by the analysis.
  store::Store& store_;
  ReleaseFn release_;  // set once
  Mutex mu_;
  CondVar cv_;       // work for the writer
  CondVar done_cv_;  // a waited-for item is done
  std::vector<Item> queue_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  bool exited_ GUARDED_BY(mu_) = false;  // the writer thread has drained the queue and returned
  Mutex store_mu_;  // serializes the store between the writer and after-stop commits
  store::Batch carry_ GUARDED_BY(store_mu_);  // applied in memory, not yet committed
  HealthFn on_health_;                        // set once
  ClusterHooks cluster_;                      // set once
  const std::size_t max_carried_runs_;
  mutable Mutex health_mu_;  // a leaf: nothing else is taken under it
  StoreHealth health_ GUARDED_BY(health_mu_);
  std::atomic<std::uint64_t> slots_refused_{0};
  // Set by Observe: the last commit failed (the writer then probes while idle). Cleared for good
  // by a store without a Probe.
  std::atomic<bool> probe_wanted_{false};
  std::atomic<bool> can_probe_{true};
  // Started by the constructor, joined by the first Stop (a later one returns before it, by
  // stop_): not guarded. Last: every member the thread reads is constructed before it starts.
  std::thread thread_;
};

}  // namespace syncsched::core
