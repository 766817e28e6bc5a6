#include "core/commit_queue.h"

#include <pthread.h>

#include <optional>
#include <string>
#include <unordered_map>

#include "cluster/fence.h"
#include "core/grid.h"

namespace syncsched::core {
namespace {

template <typename T>
void Append(std::vector<T>& to, std::vector<T>& from) {
  if (to.empty()) {
    to.swap(from);
    return;
  }
  to.insert(to.end(), std::make_move_iterator(from.begin()), std::make_move_iterator(from.end()));
}

// Keeps the last version of each row, in the order of the last versions.
template <typename Row, typename KeyFn>
void KeepLast(std::vector<Row>& rows, KeyFn key) {
  if (rows.size() < 2) return;
  std::unordered_map<decltype(key(rows[0])), std::size_t> last;
  last.reserve(rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) last[key(rows[i])] = i;
  if (last.size() == rows.size()) return;
  std::vector<bool> keep(rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) keep[i] = last[key(rows[i])] == i;
  std::vector<Row> out;
  out.reserve(last.size());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (keep[i]) out.push_back(std::move(rows[i]));
  }
  rows.swap(out);
}

// Appends `from` to `to`. Finished runs are never deduplicated: each takes its own place in the
// history.
void MergeInto(store::Batch& to, store::Batch& from) {
  Append(to.syncs, from.syncs);
  Append(to.integrations, from.integrations);
  Append(to.connections_added, from.connections_added);
  Append(to.connections_deleted, from.connections_deleted);
  Append(to.schedules_deleted, from.schedules_deleted);
  Append(to.schedules, from.schedules);
  Append(to.runs, from.runs);
  Append(to.fence, from.fence);
  Append(to.commands, from.commands);
}

// Keeps the last version of each schedule row: once per commit, after all merges (once per merge
// made a group of n items cost O(n²)).
void Dedup(store::Batch& b) {
  KeepLast(b.schedules, [](const store::ScheduleRow& r) { return r.uid; });
}

}  // namespace

store::Batch CommitStream::TakeBuffer() {
  MutexLock lock(mu_);
  if (free_.empty()) return store::Batch();
  store::Batch b = std::move(free_.back());
  free_.pop_back();
  return b;
}

bool CommitStream::Put(store::Batch part) {
  MutexLock lock(mu_);
  while (!abandoned_ && queued_.size() >= kMaxQueued) cv_.Wait(mu_);
  if (abandoned_) return false;
  queued_.push_back(std::move(part));
  cv_.NotifyAll();
  return true;
}

void CommitStream::Close() {
  MutexLock lock(mu_);
  closed_ = true;
  cv_.NotifyAll();
}

bool CommitStream::Next(store::Batch& part) {
  part.clear();  // its rows are written; the capacity is worth keeping
  MutexLock lock(mu_);
  if (part.schedules.capacity() != 0 || part.runs.capacity() != 0) {
    free_.push_back(std::move(part));
    part = store::Batch();
  }
  while (queued_.empty() && !closed_) cv_.Wait(mu_);
  if (queued_.empty()) return false;
  part = std::move(queued_.front());
  queued_.erase(queued_.begin());
  cv_.NotifyAll();  // room for the producer
  return true;
}

void CommitStream::Abandon() {
  MutexLock lock(mu_);
  abandoned_ = true;
  queued_.clear();
  free_.clear();
  cv_.NotifyAll();
}

CommitQueue::CommitQueue(store::Store& store, ReleaseFn release, HealthFn on_health,
                         std::size_t max_carried_runs, ClusterHooks cluster)
    : store_(store),
      release_(std::move(release)),
      on_health_(std::move(on_health)),
      cluster_(std::move(cluster)),
      max_carried_runs_(max_carried_runs),
      thread_([this] { Loop(); }) {}

CommitQueue::~CommitQueue() { Stop(); }

void CommitQueue::Enqueue(store::Batch batch, std::vector<RunPtr> runs) {
  if (batch.empty() && runs.empty()) return;
  Push(Item{std::move(batch), std::move(runs), nullptr, false, nullptr});
}

CommitQueue::Ticket CommitQueue::Submit(store::Batch batch, std::vector<RunPtr> runs) {
  auto waiter = std::make_shared<CommitWaiter>();
  Push(Item{std::move(batch), std::move(runs), waiter, false, nullptr});
  return waiter;
}

void CommitQueue::Push(Item item) {
  {
    MutexLock lock(mu_);
    if (!exited_) {  // also while stopping: the writer drains everything queued
      queue_.push_back(std::move(item));
      cv_.NotifyOne();
      return;
    }
  }
  std::vector<Item> one;
  one.push_back(std::move(item));
  MutexLock store_lock(store_mu_);
  CommitItems(one);
}

Status CommitQueue::Wait(const Ticket& ticket) {
  MutexLock lock(mu_);
  while (!ticket->done) done_cv_.Wait(mu_);
  return ticket->result;
}

Status CommitQueue::Commit(store::Batch batch) {
  auto waiter = std::make_shared<CommitWaiter>();
  Push(Item{std::move(batch), {}, waiter, /*command=*/true, nullptr});
  return Wait(waiter);
}

CommitQueue::Ticket CommitQueue::SubmitStream(store::Batch& first,
                                              std::shared_ptr<CommitStream> stream) {
  auto waiter = std::make_shared<CommitWaiter>();
  MutexLock lock(mu_);
  if (exited_) return nullptr;  // nobody would read the stream while its producer builds it
  queue_.push_back(Item{std::move(first), {}, waiter, /*command=*/true, std::move(stream)});
  cv_.NotifyOne();
  return waiter;
}

void CommitQueue::Stop() {
  {
    MutexLock lock(mu_);
    if (stop_) return;
    stop_ = true;
  }
  cv_.NotifyAll();
  if (thread_.joinable()) thread_.join();
}

void CommitQueue::Loop() {
  pthread_setname_np(pthread_self(), "syncsched-write");  // as `top -H` and /proc show it
  std::vector<Item> items;
  // When the store's deferred work is next due (Store::MaintainDue), asked after each call.
  std::optional<std::chrono::steady_clock::time_point> maintain_at;
  {
    MutexLock store_lock(store_mu_);
    maintain_at = store_.MaintainDue();
  }
  for (;;) {
    bool probe = false;
    bool maintain = false;
    {
      MutexLock lock(mu_);
      while (!(stop_ || !queue_.empty())) {
        const auto now = std::chrono::steady_clock::now();
        if (maintain_at && now >= *maintain_at) {
          maintain = true;
          break;
        }
        const bool probing = probe_wanted_.load() && can_probe_.load();
        if (!probing && !maintain_at) {
          cv_.Wait(mu_);
          continue;
        }
        if (probing && (!maintain_at || *maintain_at - now >= kProbeEvery)) {
          cv_.WaitFor(mu_, kProbeEvery);
          probe = !stop_ && queue_.empty();
          if (probe) break;
          continue;
        }
        cv_.WaitFor(mu_, *maintain_at - now);
      }
    }
    if (maintain) {
      MutexLock store_lock(store_mu_);
      store_.Maintain();
      maintain_at = store_.MaintainDue();
      continue;
    }
    if (probe) {
      MutexLock store_lock(store_mu_);
      ProbeStore();
      maintain_at = store_.MaintainDue();
      continue;
    }
    {
      MutexLock lock(mu_);
      if (queue_.empty()) {  // stopping, and everything queued is committed
        exited_ = true;
        lock.Unlock();
        MutexLock store_lock(store_mu_);
        store::Batch none;
        if (!carry_.empty()) (void)CommitWithCarry(none, false);  // a last try
        return;
      }
      items.swap(queue_);
    }
    {
      MutexLock store_lock(store_mu_);
      CommitItems(items);
      maintain_at = store_.MaintainDue();
    }
    items.clear();
  }
}

void CommitQueue::CommitItems(std::vector<Item>& items) {
  std::size_t begin = 0;
  while (begin < items.size()) {
    // A group: from `begin` up to (not including) the next item with deletions or a command's;
    // a command's item is a group of its own.
    std::size_t end = begin + 1;
    if (!items[begin].command) {
      while (end < items.size() && !items[end].command && !HasDeletions(items[end].batch)) ++end;
    }
    Status status;
    if (cluster_.screen) {
      // Cluster mode: rows of tenures the engine no longer holds are never sent (their runs are
      // cancelled); a command with such rows fails whole.
      for (std::size_t i = begin; i < end; ++i) {
        Status screened = cluster_.screen(
            items[i].batch, items[i].command ? nullptr : &items[i].runs, items[i].command);
        if (!screened.ok()) status = screened;
      }
    }
    if (!status.ok()) {
      if (items[begin].stream) items[begin].stream->Abandon();  // nothing was sent
    } else if (end - begin == 1) {
      status = CommitWithCarry(items[begin].batch, items[begin].command, items[begin].stream.get());
      if (items[begin].stream) items[begin].stream->Abandon();
    } else {
      store::Batch merged;
      for (std::size_t i = begin; i < end; ++i) MergeInto(merged, items[i].batch);
      Dedup(merged);
      status = CommitWithCarry(merged, /*command=*/false);
    }
    if (!status.ok() && !items[begin].command && cluster_.screen && cluster::IsFenced(status)) {
      // Cluster mode: the database knew of a lost partition before the engine did. The fenced
      // hook has cleared that tenure: screening again drops its rows (now in the carry) and
      // cancels its runs, and the rest of the group is committed at once rather than failed
      // with it (its runs would be recorded as errors, their slots lost). One retry: a second
      // refusal fails the group as any failed commit.
      for (std::size_t i = begin; i < end; ++i) {
        store::Batch none;
        (void)cluster_.screen(none, &items[i].runs, false);
      }
      store::Batch none;
      status = CommitWithCarry(none, /*command=*/false);
    }
    // The backstop of grid slots (store::SlotTaken) refused a dispatch: that slot of that schedule
    // was dispatched before, by this engine before a takeover or by another. Its run is
    // cancelled before its callback and leaves the carried row (the row is otherwise written:
    // its schedule goes on), and the rest of the group is committed rather than failed with it.
    // Each retry takes one refused slot out; a group refused more often fails as any failed
    // commit. A command is not retried (its batch went into the failed commit): it fails, and a
    // refused row it found in the carry is mended for the next commit.
    for (int retry = 0; retry < kMaxSlotRefusals && !status.ok(); ++retry) {
      std::optional<store::TakenSlot> taken = store::SlotTaken(status);
      if (!taken) break;
      std::string run_id = GridRunId(taken->uid, taken->slot);
      for (store::ScheduleRow& row : carry_.schedules) {
        if (row.uid == taken->uid && row.in_flight.run_id == run_id) row.in_flight = {};
      }
      for (std::size_t i = begin; i < end; ++i) {
        for (const RunPtr& r : items[i].runs) {
          if (r->uid == taken->uid && r->run_id == run_id) {
            r->token.Cancel(Status::Cancelled(
                "the database refused the dispatch of slot " + std::to_string(taken->slot) +
                ": that slot of the schedule was dispatched before (the backstop of grid slots, "
                "docs/cluster.md); it is not run again"));
          }
        }
      }
      slots_refused_.fetch_add(1, std::memory_order_relaxed);
      if (items[begin].command) break;
      store::Batch none;
      status = CommitWithCarry(none, /*command=*/false);
    }
    if (store::SlotTaken(status)) Observe(status);  // a group refused too often, or a command
    // A failed group fails each of its items: a command reports the error (and changed nothing);
    // runs are recorded as errors instead of being called; the rows are carried.
    for (std::size_t i = begin; i < end; ++i) {
      if (!items[i].runs.empty()) release_(std::move(items[i].runs), status);
      if (items[i].waiter) {
        MutexLock lock(mu_);
        items[i].waiter->result = status;
        items[i].waiter->done = true;
        done_cv_.NotifyAll();
      }
    }
    begin = end;
  }
}

Status CommitQueue::CommitWithCarry(store::Batch& batch, bool command, CommitStream* stream) {
  Status status;
  if (!carry_.empty() && cluster_.screen) (void)cluster_.screen(carry_, nullptr, false);
  // Nothing to write (the carry screened out whole, cluster mode): no commit, and nothing learned
  // of the store's health (helper-41: an empty commit, answered without the database, logged
  // "database writable again" while every commit failed).
  if (carry_.empty() && batch.empty() && stream == nullptr) return Status::Ok();
  if (carry_.empty()) {
    status = stream ? store_.CommitStream(batch, *stream) : store_.Commit(batch);
    if (!status.ok() && !command) carry_ = std::move(batch);
  } else if (command) {
    store::Batch merged = carry_;  // a copy: a failed command must not take the carry with it
    MergeInto(merged, batch);
    // A streamed command's parts may hold newer versions of carried rows: gathered here (a rare
    // case: a commit failed before), so that each row is written once, its last version.
    store::Batch part;
    while (stream && stream->Next(part)) MergeInto(merged, part);
    Dedup(merged);
    status = store_.Commit(merged);
    if (status.ok()) carry_.clear();
  } else {
    MergeInto(carry_, batch);  // the carried rows first: newer versions of a row win
    Dedup(carry_);
    status = store_.Commit(carry_);
    if (status.ok()) carry_.clear();
  }
  // A refusal by the backstop of grid slots is not the database failing: CommitItems takes the
  // refused slot out and commits again, and that commit's outcome is the one observed.
  if (!store::SlotTaken(status)) Observe(status);
  if (!status.ok() && cluster_.fenced && cluster::IsFenced(status)) cluster_.fenced(status);
  return status;
}

void CommitQueue::ProbeStore() {
  if (!carry_.empty()) {
    store::Batch none;
    (void)CommitWithCarry(none, /*command=*/false);  // observed there, unless nothing was left
    if (!carry_.empty() || !probe_wanted_.load()) return;
  }
  std::optional<Status> probed = store_.Probe();
  if (!probed) {
    can_probe_ = false;
    return;
  }
  if (probed->ok()) Observe(*probed);
}

void CommitQueue::Observe(const Status& status) {
  std::uint64_t dropped = 0;
  if (carry_.runs.size() > max_carried_runs_) {
    dropped = carry_.runs.size() - max_carried_runs_;
    carry_.runs.erase(carry_.runs.begin(),
                      carry_.runs.begin() + static_cast<std::ptrdiff_t>(dropped));
  }
  std::shared_ptr<std::unordered_set<std::uint64_t>> uids;
  if (!carry_.empty()) {
    uids = std::make_shared<std::unordered_set<std::uint64_t>>();
    for (const store::ScheduleRow& row : carry_.schedules) uids->insert(row.uid);
    for (const store::RunRow& run : carry_.runs) uids->insert(run.schedule_uid);
  }
  std::uint64_t cache_bytes = store_.CacheBytes();
  // A store broken for good says so only through its Health (its later calls all fail alike).
  Status broken = status.ok() ? Status::Ok() : store_.Health();
  bool changed;
  {
    MutexLock lock(health_mu_);
    health_.cache_bytes = cache_bytes;
    changed = health_.healthy != status.ok();
    health_.healthy = status.ok();
    probe_wanted_ = !status.ok() && broken.ok();
    health_.broken = health_.broken || !broken.ok();
    health_.error = status.ok()   ? std::string()
                    : broken.ok() ? status.ToString()
                                  : broken.ToString();
    if (!status.ok()) ++health_.commits_failed;
    health_.rows_unrecorded = carry_.schedules.size() + carry_.runs.size();
    health_.history_dropped += dropped;
    health_.unrecorded_uids = std::move(uids);
  }
  if (changed && on_health_) on_health_(status);
}

StoreHealth CommitQueue::Health() const {
  MutexLock lock(health_mu_);
  return health_;
}

}  // namespace syncsched::core
