#include "core/engine_core.h"

#include <pthread.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_set>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include "cluster/fence.h"
#include "cluster/partition.h"
#include "core/commit_queue.h"
#include "core/grid.h"
#include "core/names.h"
#include "core/worker_pool.h"
#include "store/pg_store.h"
#include "store/sqlite_store.h"

namespace syncsched::core {
namespace {

std::string CallbackKey(std::string_view integration, std::string_view sync) {
  std::string k(integration);
  k += '\0';
  k += sync;
  return k;
}

void Count(CommandResult& r, const Target& t, const Catalog& cat, std::uint32_t s, Outcome o) {
  ++r.counts[static_cast<std::size_t>(o)];
  if (t.report_keys) r.outcomes.push_back(KeyOutcome{cat.KeyOf(s), o});
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Construction and shutdown

EngineCore::EngineCore(Options options) : options_(std::move(options)) {}

Result<std::shared_ptr<EngineCore>> EngineCore::Create(Options options, StoreWrapper wrap) {
  if (options.frequency_bounds.min.count() <= 0 ||
      options.frequency_bounds.max < options.frequency_bounds.min) {
    return Status::InvalidField(
        "options.frequency_bounds",
        "options.frequency_bounds: min must be positive and no greater than max");
  }
  if (options.default_run_timeout.count() <= 0 || options.default_run_timeout > kMaxDuration) {
    return Status::InvalidField(
        "options.default_run_timeout",
        "options.default_run_timeout is " + std::to_string(options.default_run_timeout.count()) +
            " ms; it must be positive and at most " + FormatFrequency(kMaxDuration));
  }
  if (!options.run_executor && options.worker_threads == 0) {
    return Status::InvalidField("options.worker_threads",
                                "options.worker_threads must be at least 1");
  }
  if (!(options.catch_up_per_second >= 0) || std::isinf(options.catch_up_per_second)) {
    return Status::InvalidField("options.catch_up_per_second",
                                "options.catch_up_per_second is " +
                                    std::to_string(options.catch_up_per_second) +
                                    "; it must be 0 (unlimited) or a positive finite rate");
  }
  if (options.max_fires_per_wakeup == 0) {
    return Status::InvalidField("options.max_fires_per_wakeup",
                                "options.max_fires_per_wakeup must be at least 1");
  }
  if (options.database_cache_bytes < (std::uint64_t{64} << 10) ||
      options.database_cache_bytes > (std::uint64_t{1} << 40)) {
    return Status::InvalidField("options.database_cache_bytes",
                                "options.database_cache_bytes is " +
                                    std::to_string(options.database_cache_bytes) +
                                    "; it must be between 64 KiB and 1 TiB");
  }
  if (options.run_history > 1000) {
    return Status::InvalidField(
        "options.run_history",
        "options.run_history is " + std::to_string(options.run_history) + "; at most 1000");
  }
  std::shared_ptr<EngineCore> core(new EngineCore(std::move(options)));
  if (Status s = core->Init(wrap); !s.ok()) {
    core->Shutdown();
    return s;
  }
  return core;
}

// Not analysed (NO_THREAD_SAFETY_ANALYSIS, in the header): Init sets the guarded members' first
// values without mu_, before Create hands the engine to anyone. No other thread can reach them
// meanwhile: the workers and the io thread it starts have nothing to run until the alarm is set
// (by MaybeRearm at the end, under mu_) or a command comes. It takes mu_ for Recover all the same.
Status EngineCore::Init(const StoreWrapper& wrap) {
  if (options_.clock) {
    clock_ = options_.clock;
  } else {
    owned_clock_ = std::make_unique<SystemClock>();
    clock_ = owned_clock_.get();
  }
  boost::asio::any_io_executor ex;
  if (options_.executor) {
    ex = *options_.executor;
  } else {
    owned_io_ = std::make_unique<boost::asio::io_context>(1);
    ex = owned_io_->get_executor();
  }
  std::int64_t now = NowMs();
  slots_ = wheel::TimerWheel(now);
  deadlines_ = wheel::TimerWheel(now);
  retries_ = wheel::TimerWheel(now);
  rng_state_ =
      options_.random_seed
          ? options_.random_seed
          : static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  alarm_ = clock_->MakeAlarm(ex);
  metrics_.run_duration_seconds =
      MakeHistogram({0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 6 * 3600, 24 * 3600});
  metrics_.fire_lateness_seconds =
      MakeHistogram({0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60});
  metrics_.wait_seconds = MakeHistogram({0.01, 0.1, 1, 10, 60, 300, 1800, 3600});
  if (!options_.run_executor) {
    std::weak_ptr<EngineCore> weak = weak_from_this();
    pool_ = std::make_unique<WorkerPool>(options_.worker_threads, [weak](std::vector<RunPtr>& b) {
      if (auto core = weak.lock()) {
        core->ExecuteBatch(b);
      } else {
        for (auto& r : b) r->token.Cancel(Status::Cancelled("engine shut down"));
      }
    });
  }
  if (owned_io_) {
    io_thread_ = std::thread([io = owned_io_.get()] {
      pthread_setname_np(pthread_self(), "syncsched-io");  // as `top -H` and /proc show it
      auto guard = boost::asio::make_work_guard(*io);
      io->run();
    });
  }
  timers_held_ = options_.hold_timers.value_or(!options_.database_path.empty());
  if (options_.cluster) {
    if (!store::IsPostgresUri(options_.database_path)) {
      return Status::InvalidField("options.cluster",
                                  "options.cluster needs a PostgreSQL database_path "
                                  "(postgresql://...); the engines of a cluster share it");
    }
    cluster::LeaseKeeperOptions ko;
    ko.uri = options_.database_path;
    ko.node = options_.cluster->node;
    ko.lease = options_.cluster->lease;
    ko.partitions = options_.cluster->partitions;
    ko.connect_timeout = std::chrono::milliseconds(10'000);
    const auto connect_timeout = ko.connect_timeout;
    ko.on_change = [this](const cluster::LeaseChange& change) { OnLeaseChange(change); };
    {
      std::lock_guard lock(tenures_mu_);
      tenures_.assign(static_cast<std::size_t>(cluster::kMaxPartitions), 0);
    }
    auto keeper = cluster::LeaseKeeper::Start(std::move(ko));
    if (!keeper.ok()) {
      return Status(keeper.status().code(), RedactedDatabasePath(options_.database_path) + ": " +
                                                keeper.status().message());
    }
    keeper_ = std::move(keeper).value();
    partitions_ = keeper_->partitions_total();
    inbox_ = std::make_unique<cluster::CommandInbox>(options_.database_path, keeper_->node_id(),
                                                     connect_timeout);
    store::PostgresStoreOptions po;
    po.uri = options_.database_path;
    po.history_per_schedule = options_.run_history;
    po.cluster =
        store::PostgresClusterMode{keeper_->node_id(), partitions_, options_.cluster->lease};
    auto opened = store::OpenPostgresStore(po);
    if (!opened.ok()) return opened.status();
    store_ = std::move(opened).value();
    if (wrap) store_ = wrap(std::move(store_));
    auto loader = store::OpenPostgresStore(po);
    if (!loader.ok()) return loader.status();
    loader_ = std::move(loader).value();
    Result<store::Snapshot> catalog = [&] {
      MutexLock lock(loader_mu_);
      return loader_->LoadPartitions({});
    }();
    if (!catalog.ok()) return catalog.status();
    MutexLock lock(mu_);
    if (Status s = Recover(std::move(catalog).value()); !s.ok()) return s;
    active_.assign(static_cast<std::size_t>(partitions_), 0);
    quarantine_.assign(static_cast<std::size_t>(partitions_), 0);
    StartWriter();
    cluster_thread_ = std::thread([this] { ClusterLoop(); });
    // The inbox's connections, opened now rather than by the first command through it.
    inbox_->Warm(2);
    inbox_thread_ = std::thread([this] { InboxLoop(); });
    MaybeRearm();
    return Status();
  }
  if (!options_.database_path.empty()) {
    // A libpq URI selects the PostgreSQL store; anything else is an SQLite file (or ":memory:").
    auto opened = [&]() -> Result<std::unique_ptr<store::Store>> {
      if (store::IsPostgresUri(options_.database_path)) {
        store::PostgresStoreOptions po;
        po.uri = options_.database_path;
        po.history_per_schedule = options_.run_history;
        // The server ends a closed session (and frees its owner lock) a moment after the client
        // closes it: a reopen right after a close must not be refused by its own predecessor.
        po.wait_for_owner = std::chrono::seconds(1);
        return store::OpenPostgresStore(po);
      }
      store::SqliteStoreOptions so;
      so.path = options_.database_path;
      so.synchronous_full = options_.synchronous_full;
      so.history_per_schedule = options_.run_history;
      so.cache_bytes = options_.database_cache_bytes;
      return store::OpenSqliteStore(so);
    }();
    if (!opened.ok()) return opened.status();
    store_ = std::move(opened).value();
    if (wrap) store_ = wrap(std::move(store_));
    auto snapshot = store_->Load();
    if (!snapshot.ok()) return snapshot.status();
    MutexLock lock(mu_);
    if (Status s = Recover(std::move(snapshot).value()); !s.ok()) return s;
    StartWriter();
    MaybeRearm();
  }
  return Status();
}

void EngineCore::StartWriter() {
  CommitQueue::ClusterHooks hooks;
  if (InCluster()) {
    hooks.screen = [this](store::Batch& b, std::vector<RunPtr>* runs, bool command) {
      return Screen(b, runs, command);
    };
    hooks.fenced = [this](const Status& s) { OnFenced(s); };
  }
  std::weak_ptr<EngineCore> weak = weak_from_this();
  writer_ = std::make_unique<CommitQueue>(
      *store_,
      [weak](std::vector<RunPtr>&& runs, const Status& committed) {
        if (auto core = weak.lock()) {
          core->Release(std::move(runs), committed);
        } else {
          for (const RunPtr& r : runs) r->token.Cancel(Status::Cancelled("engine shut down"));
        }
      },
      StoreStatusHook(), CommitQueue::kMaxCarriedRuns, std::move(hooks));
}

std::function<void(const Status&)> EngineCore::StoreStatusHook() {
  if (!InCluster()) return options_.on_store_status;
  // Cluster mode: when the store fails (UNAVAILABLE) the time is noted for MaybeWithdraw; when it
  // commits again, a withdrawal ends at once.
  return [this, user = options_.on_store_status](const Status& s) {
    if (s.ok()) {
      store_failing_since_.store(0, std::memory_order_relaxed);
      if (keeper_ != nullptr) keeper_->Rejoin();
    } else if (s.IsUnavailable()) {
      store_failing_since_.store(std::chrono::steady_clock::now().time_since_epoch().count() | 1,
                                 std::memory_order_relaxed);
    }
    if (user) user(s);
  };
}

void EngineCore::MaybeWithdraw() {
  const auto since = store_failing_since_.load(std::memory_order_relaxed);
  const auto lease = options_.cluster->lease;
  if (since == 0) {
    withdraw_for_ = lease;  // the backoff starts again after a commit succeeded
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  const auto failing =
      now - std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(since));
  // A lone engine has nobody to hand its partitions to; a keeper that cannot renew either loses
  // them anyway at the lease's end.
  if (failing < lease / 2 || keeper_->withdrawn() || keeper_->Snapshot().live_nodes < 2 ||
      !keeper_->Snapshot().connected) {
    return;
  }
  // The store has failed every commit for lease/2 while the keeper still renews: the partitions
  // would run nothing here. Let them go for a while (doubling up to 4 leases while the store
  // keeps failing), then join again and give the store another lease/2 to prove itself.
  if (withdraw_for_.count() <= 0) withdraw_for_ = lease;
  keeper_->Withdraw(withdraw_for_);
  store_failing_since_.store((now + withdraw_for_).time_since_epoch().count() | 1,
                             std::memory_order_relaxed);
  withdraw_for_ = std::min(withdraw_for_ * 2, lease * 4);
}

Status EngineCore::Recover(store::Snapshot snap) {
  if (Status s = RecoverCatalog(snap); !s.ok()) return s;
  next_uid_ = snap.max_uid + 1;
  Txn tx = Begin(/*undoable=*/false);
  if (Status s = RecoverSchedules(tx, snap); !s.ok()) return s;
  drain_due_ = metrics_.runs_waiting > 0;
  BuildBatch(tx);
  Status st = store_ && !tx.batch.empty() ? store_->Commit(tx.batch) : Status();
  Finish(tx);
  return st;
}

Result<SyncInfo> EngineCore::SyncInfoOf(const store::SyncRow& row) const {
  SyncInfo info;
  info.name = row.name;
  info.frequency_text = row.frequency_text;
  info.frequency_ms = row.frequency_ms;
  info.auto_start = row.auto_start;
  info.timeout_ms = row.timeout_ms;
  info.heartbeat_timeout_ms = row.heartbeat_timeout_ms;
  DecodePolicy(row.policy, info);
  if (info.frequency_ms <= 0) {
    return Status::Internal(RedactedDatabasePath(options_.database_path) + ": sync " +
                            Quote(row.name) +
                            " has a non-positive frequency; the database is corrupt");
  }
  return info;
}

Status EngineCore::RecoverCatalog(store::Snapshot& snap) {
  ++catalog_local_;  // cluster mode: a SyncCatalog that read before this reads again
  for (store::SyncRow& row : snap.syncs) {
    std::uint32_t integ = cat_.FindIntegration(row.integration);
    if (integ == kNone) integ = cat_.AddIntegration(row.integration);
    if (cat_.FindSync(integ, row.name) != kNone) continue;  // cluster mode: known already
    Result<SyncInfo> stored = SyncInfoOf(row);
    if (!stored.ok()) return stored.status();
    SyncInfo info = std::move(stored).value();
    info.callback = CallbackFor(integ, info.name);
    cat_.AddSync(integ, std::move(info));
  }
  for (const store::IntegrationRow& row : snap.integrations) {
    std::uint32_t integ = cat_.FindIntegration(row.integration);
    if (integ == kNone) {
      integ = cat_.AddIntegration(row.integration);
    } else if (InCluster() && !active_.empty()) {
      continue;  // cluster mode, a later load: this engine's own limits stand
    }
    cat_.integrations[integ].max_concurrency = static_cast<std::size_t>(row.max_concurrency);
  }
  for (store::ConnectionRow& row : snap.connections) {
    std::uint32_t integ = cat_.FindIntegration(row.integration);
    if (integ == kNone) integ = cat_.AddIntegration(row.integration);
    if (cat_.FindConnection(integ, row.connection) == kNone) {
      cat_.AddConnection(integ, row.connection);
    }
  }
  return Status::Ok();
}

Status EngineCore::RecoverSchedules(Txn& tx, store::Snapshot& snap) {
  const std::int64_t now = tx.now;
  std::unordered_map<std::uint64_t, std::uint32_t> by_uid;
  by_uid.reserve(snap.schedules.size());
  std::vector<std::pair<std::int64_t, std::uint32_t>> missed;  // (due slot, schedule)
  std::vector<std::pair<std::uint64_t, std::uint32_t>> waits;  // (seq, schedule)
  std::vector<std::pair<std::uint32_t, RunMode>> pending;      // runs owed after the crashed one
  // Schedules armed in due order: the wheel fires due timers in deadline order.
  for (store::ScheduleRow& row : snap.schedules) {
    std::uint32_t integ = cat_.FindIntegration(row.integration);
    std::uint32_t sync = integ == kNone ? kNone : cat_.FindSync(integ, row.sync);
    std::uint32_t conn = integ == kNone ? kNone : cat_.FindConnection(integ, row.connection);
    if (sync == kNone || conn == kNone) {
      return Status::Internal(RedactedDatabasePath(options_.database_path) + ": schedule " +
                              std::to_string(row.uid) +
                              " names a sync or connection that is not stored; the database is "
                              "corrupt");
    }
    std::uint32_t idx = cat_.AddSchedule(conn, sync, cat_.InternVariant(row.variant), row.uid);
    next_uid_ = std::max(next_uid_, row.uid + 1);
    by_uid.emplace(row.uid, idx);
    if (InCluster()) SetPartition(idx);
    Schedule& s = cat_.schedules[idx];
    s.anchor = row.anchor_ms;
    s.freq_override = row.frequency_override_ms;
    s.next_slot = row.next_slot_ms;
    s.runs = static_cast<std::uint32_t>(row.runs);
    s.failures = static_cast<std::uint32_t>(row.failures);
    s.skipped = static_cast<std::uint32_t>(row.skipped);
    s.run_seq = static_cast<std::uint32_t>(row.run_seq);
    s.last_start = row.last_start_ms;
    s.last_finish = row.last_finish_ms;
    s.last_ok = row.last_ok;
    if (!row.last_error.empty()) cat_.details[idx].last_error = row.last_error;
    if (row.state == static_cast<std::uint8_t>(ScheduleState::kStarted)) {
      s.state = ScheduleState::kStarted;
      ++metrics_.schedules_started;
      std::int64_t freq = cat_.FrequencyOf(s);
      if (s.next_slot == 0) s.next_slot = NextSlotAfter(s.anchor, freq, now);
      if ((s.next_slot - s.anchor) % freq != 0) s.flags |= kHinted;  // a run's hint, off grid
      if (s.next_slot <= now) {
        missed.emplace_back(s.next_slot, idx);
      } else {
        slots_.Arm(idx, s.next_slot);
      }
    } else {
      ++metrics_.schedules_paused;
    }
    // Runs the schedule owes: each happens once after the restart.
    if (!row.waiting.empty()) {
      const store::OwedRun& w = row.waiting;
      s.flags |= kWaiting;
      waiting_[idx] = WaitInfo{w.slot_ms,   w.at_ms,   w.seq,   static_cast<RunMode>(w.mode),
                               w.scheduled, w.attempt, w.run_id};
      wait_seq_ = std::max(wait_seq_, w.seq);
      waits.emplace_back(w.seq, idx);
      ++metrics_.runs_waiting;
    }
    if (!row.retry.empty()) {
      const store::OwedRun& r = row.retry;
      s.flags |= kRetrying;
      retry_info_[idx] =
          RetryInfo{r.slot_ms, r.at_ms, static_cast<RunMode>(r.mode), r.attempt, r.run_id};
      retries_.Arm(idx, r.at_ms);
    }
    if (row.pending) pending.emplace_back(idx, static_cast<RunMode>(row.pending - 1));
  }
  // Slots missed while down fire at once, in due order, each schedule's collapsed into one run;
  // with a catch-up rate, the i-th is held back to i / rate seconds from now.
  std::sort(missed.begin(), missed.end());
  for (std::size_t i = 0; i < missed.size(); ++i) {
    std::int64_t at = missed[i].first;
    if (options_.catch_up_per_second > 0) {
      auto delay =
          static_cast<std::int64_t>(static_cast<double>(i) * 1000.0 / options_.catch_up_per_second);
      if (delay > 0) {
        at = now + delay;
        Decide(missed[i].second, Reason::kCatchUpRate, now,
               "catch-up run held back " + FormatFrequency(Millis(delay)));
      }
    }
    slots_.Arm(missed[i].second, at);
  }
  std::sort(waits.begin(), waits.end());
  for (auto [seq, idx] : waits) Enqueue(idx, waiting_[idx]);
  // Runs in flight at the crash: recorded as interrupted errors, each a missed slot.
  for (store::RunRow& run : snap.unfinished_runs) {
    auto it = by_uid.find(run.schedule_uid);
    if (it == by_uid.end()) continue;
    run.finished_ms = now;
    run.ok = 0;
    run.error =
        InCluster()
            ? "interrupted: the engine that held its partition stopped or lost it while the run "
              "was in flight (dispatched: its callback had been called, or was about to be)"
            : "interrupted: the engine stopped while the run was in flight (dispatched: its "
              "callback had been called, or was about to be)";
    if (InCluster()) {
      run.partition = part_of_[it->second];
      run.epoch = active_[static_cast<std::size_t>(run.partition)];
    }
    Schedule& s = Touch(tx, it->second);
    run.number = ++s.runs;
    ++s.failures;
    ++s.skipped;
    s.last_start = run.started_ms;
    s.last_finish = now;
    s.last_ok = 0;
    cat_.details[it->second].last_error = run.error;
    tx.batch.runs.push_back(std::move(run));
  }
  // A run owed once the crashed one ended (a full resync, a buffered run): it waits to go first.
  for (auto [idx, mode] : pending) {
    Touch(tx, idx);
    if (cat_.schedules[idx].flags & kWaiting) {
      if (mode == RunMode::kFullResync) waiting_[idx].mode = mode;
      continue;
    }
    TryDispatchLater(tx, idx, mode);
  }
  return Status::Ok();
}

EngineCore::~EngineCore() { Shutdown(); }

void EngineCore::Shutdown() {
  std::vector<CancellationToken> tokens;
  {
    MutexLock lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    if (alarm_) alarm_->Cancel();
    for (const RunPtr& r : runs_) {
      if (r) tokens.push_back(r->token);
    }
  }
  StopCluster();  // loads no more partitions
  for (auto& t : tokens) t.Cancel(Status::Cancelled("engine shutting down"));
  if (pool_) pool_->Stop();
  if (writer_) writer_->Stop();  // commits the outcomes queued by the last runs
  // Cluster mode: only now, with every outcome committed under its lease, the leases are
  // released (graceful hand-over: the others take the partitions at once).
  if (keeper_) keeper_->Stop();
  if (owned_io_) {
    owned_io_->stop();
    if (io_thread_.joinable()) io_thread_.join();
  }
  MutexLock lock(mu_);
  alarm_.reset();
}

// ---------------------------------------------------------------------------------------------
// Transactions

EngineCore::Txn EngineCore::Begin(bool undoable) {
  Txn tx;
  tx.undoable = undoable && store_ != nullptr;  // in memory, a commit cannot fail
  tx.now = NowMs();
  if (InCluster() && !active_.empty()) {
    tx.leases.assign(active_.size(), 0);
    for (const auto& [p, epoch] : keeper_->Owned()) {
      if (p >= 0 && static_cast<std::size_t>(p) < tx.leases.size()) {
        tx.leases[static_cast<std::size_t>(p)] = epoch;
      }
    }
  }
  if (tx.undoable) {
    tx.metrics = metrics_;
    tx.in_flight.reserve(cat_.integrations.size());
    for (const IntegrationInfo& i : cat_.integrations) tx.in_flight.push_back(i.in_flight);
    tx.next_uid = next_uid_;
    tx.rng_state = rng_state_;
    tx.last_served = last_served_;
  }
  return tx;
}

Schedule& EngineCore::Touch(Txn& tx, std::uint32_t schedule, bool created) {
  Schedule& s = cat_.schedules[schedule];
  if (s.flags & kTouched) return s;
  tx.touched.push_back(schedule);
  if (tx.undoable) {
    Undo& u = tx.undo.emplace_back();
    u.schedule = schedule;
    u.created = created;
    if (!created) {
      u.before = s;
      if (slots_.IsArmed(schedule)) {
        u.slot_armed = true;
        u.slot_deadline = slots_.DeadlineOf(schedule);
      }
      auto extra = [&]() -> UndoExtra& {
        if (!u.extra) u.extra = std::make_unique<UndoExtra>();
        return *u.extra;
      };
      if (auto it = cat_.details.find(schedule); it != cat_.details.end()) {
        extra().detail = it->second;
      }
      if (s.flags & kWaiting) {
        if (auto it = waiting_.find(schedule); it != waiting_.end()) extra().waiting = it->second;
      }
      if (s.flags & kRetrying) {
        if (auto it = retry_info_.find(schedule); it != retry_info_.end()) {
          extra().retry = it->second;
        }
      }
      if (s.run != kNone) {
        extra().run = runs_[s.run];
        u.extra->run_cancel_requested = u.extra->run->cancel_requested;
      }
      if (!decisions_.empty()) {
        if (auto it = decisions_.find(schedule); it != decisions_.end()) {
          extra().decisions = it->second;
        }
      }
    }
  }
  s.flags |= kTouched;
  if (created) s.flags |= kCreated;
  return s;
}

void EngineCore::BuildBatch(Txn& tx) {
  if (!store_) return;
  BuildRows(tx, 0, tx.touched.size(), tx.batch);
}

void EngineCore::BuildRows(const Txn& tx, std::size_t from, std::size_t to,
                           store::Batch& batch) const {
  batch.schedules.reserve(batch.schedules.size() + (to - from));
  for (std::size_t i = from; i < to; ++i) {
    std::uint32_t idx = tx.touched[i];
    const Schedule& s = cat_.schedules[idx];
    if (s.state == ScheduleState::kDeleted) continue;  // in schedules_deleted
    bool created = (s.flags & kCreated) != 0;
    FillRow(batch.schedules.emplace_back(), idx, created);  // in place
  }
}

Status EngineCore::Commit(Txn& tx) {
  Status st;
  if (store_ && writer_ && tx.touched.size() > stream_rows_) {
    st = CommitStreamed(tx);
  } else {
    BuildBatch(tx);
    if (store_ && !tx.batch.empty()) {
      st = writer_ ? writer_->Commit(std::move(tx.batch)) : store_->Commit(tx.batch);
    }
  }
  if (!st.ok()) {
    Rollback(tx);
    // Cluster mode: a partition the command wrote to changed owner while it ran (refused by the
    // fence, or screened out before). Nothing of it was applied and a retry goes to the new owner:
    // UNAVAILABLE, as for any transient fault, not FAILED_PRECONDITION, which a client takes as
    // final (helper-38 saw HTTP 409 for it).
    if (InCluster() && cluster::IsFenced(st)) {
      return Status::Unavailable(st.message() + "; retry the command");
    }
    return st;
  }
  Finish(tx);
  MaybeRearm();
  return Status();
}

Status EngineCore::CommitStreamed(Txn& tx) {
  // The first part: the catalog rows, deletions and finished runs, and the first rows.
  const std::size_t n = tx.touched.size();
  const std::size_t k = stream_rows_;
  BuildRows(tx, 0, k, tx.batch);
  auto stream = std::make_shared<CommitStream>();
  CommitQueue::Ticket ticket = writer_->SubmitStream(tx.batch, stream);
  if (!ticket) {  // the writer has stopped: the batch whole, committed on this thread
    BuildRows(tx, k, n, tx.batch);
    return writer_->Commit(std::move(tx.batch));
  }
  for (std::size_t i = k; i < n; i += k) {
    store::Batch part = stream->TakeBuffer();  // a part the writer has written: warm memory
    BuildRows(tx, i, std::min(n, i + k), part);
    if (!stream->Put(std::move(part))) break;  // the commit failed: Wait says why
  }
  stream->Close();
  return writer_->Wait(ticket);
}

CommitQueue::Ticket EngineCore::Queue(Txn& tx) {
  BuildBatch(tx);
  Finish(tx);
  if (!store_) return nullptr;
  if (tx.fx.dispatch.empty()) {
    if (!tx.batch.empty()) writer_->Enqueue(std::move(tx.batch));  // outcomes: nobody waits
    return nullptr;
  }
  std::vector<RunPtr> runs = std::move(tx.fx.dispatch);
  tx.fx.dispatch.clear();
  return writer_->Submit(std::move(tx.batch), std::move(runs));
}

void EngineCore::Rollback(Txn& tx) {
  // Runs dispatched by the transaction: never released, so only their table places go back.
  // (touched[i] is undo[i]: Touch appends to both.)
  for (std::size_t i = 0; i < tx.touched.size(); ++i) {
    std::uint32_t idx = tx.touched[i];
    Schedule& s = cat_.schedules[idx];
    if (s.run == kNone) continue;
    const Undo& u = tx.undo[i];
    if (u.extra && u.extra->run && runs_[s.run] == u.extra->run) continue;
    runs_[s.run].reset();
    free_runs_.push_back(s.run);
    deadlines_.Cancel(idx);
    s.run = kNone;
  }
  for (auto it = tx.undo.rbegin(); it != tx.undo.rend(); ++it) {
    Undo& u = *it;
    std::uint32_t idx = u.schedule;
    if (u.created) {
      slots_.Cancel(idx);
      retries_.Cancel(idx);
      waiting_.erase(idx);
      retry_info_.erase(idx);
      decisions_.erase(idx);
      cat_.RemoveSchedule(idx);
      continue;
    }
    Schedule& s = cat_.schedules[idx];
    s = u.before;
    s.flags &= static_cast<std::uint8_t>(~kTouched);
    UndoExtra none;
    UndoExtra& x = u.extra ? *u.extra : none;
    if (x.detail) {
      cat_.details[idx] = std::move(*x.detail);
    } else {
      cat_.details.erase(idx);
    }
    if (x.waiting) {
      waiting_[idx] = *x.waiting;
      Enqueue(idx, *x.waiting);  // its place by seq; a stale duplicate is skipped
    } else {
      waiting_.erase(idx);
    }
    if (x.retry) {
      retries_.Arm(idx, x.retry->due);
      retry_info_[idx] = std::move(*x.retry);
    } else {
      retries_.Cancel(idx);
      retry_info_.erase(idx);
    }
    if (u.slot_armed) {
      slots_.Arm(idx, u.slot_deadline);
    } else {
      slots_.Cancel(idx);
    }
    if (x.run) {
      std::uint32_t place = x.run->table_slot;
      runs_[place] = x.run;
      free_runs_.erase(std::remove(free_runs_.begin(), free_runs_.end(), place), free_runs_.end());
      x.run->cancel_requested = x.run_cancel_requested;
      ArmRunDeadline(idx, *x.run, tx.now);
    }
    if (x.decisions) {
      decisions_[idx] = std::move(*x.decisions);
    } else {
      decisions_.erase(idx);
    }
  }
  // The catalog, newest change first.
  if (tx.connection_created != kNone) cat_.RemoveConnection(tx.connection_created);
  if (tx.sync_created != kNone) cat_.RemoveLastSync(cat_.syncs[tx.sync_created].integration);
  if (tx.integration_created != kNone) cat_.RemoveLastIntegration();
  if (tx.sync_before) cat_.syncs[tx.sync_before->first] = std::move(tx.sync_before->second);
  if (tx.limit_before) {
    cat_.integrations[tx.limit_before->first].max_concurrency = tx.limit_before->second;
  }
  if (tx.metrics) metrics_ = std::move(*tx.metrics);
  for (std::size_t i = 0; i < tx.in_flight.size() && i < cat_.integrations.size(); ++i) {
    cat_.integrations[i].in_flight = tx.in_flight[i];
  }
  next_uid_ = tx.next_uid;
  rng_state_ = tx.rng_state;
  last_served_ = tx.last_served;
  tx.fx = {};
  tx.touched.clear();
  tx.undo.clear();
  MaybeRearm();
}

void EngineCore::Finish(Txn& tx) {
  for (std::uint32_t idx : tx.touched) {
    cat_.schedules[idx].flags &= static_cast<std::uint8_t>(~(kTouched | kCreated));
  }
  for (std::uint32_t idx : tx.deleted) cat_.RemoveSchedule(idx);
  for (std::uint32_t c : tx.connections_deleted) cat_.RemoveConnection(c);
  tx.touched.clear();
  tx.undo.clear();
}

// ---------------------------------------------------------------------------------------------
// Helpers under the lock

std::int64_t EngineCore::NowMs() const {
  // Clamped a century either side of the epoch, so that now + a frequency, a timeout or a backoff
  // (each at most a year) never overflows, whatever a (virtual) clock reads.
  return std::clamp<std::int64_t>(clock_->Now().time_since_epoch().count(), -kFarFutureMs,
                                  kFarFutureMs);
}

void EngineCore::FillRow(store::ScheduleRow& row, std::uint32_t schedule, bool full) const {
  const Schedule& s = cat_.schedules[schedule];
  row.uid = s.uid;
  if (full) {
    ScheduleKey key = cat_.KeyOf(schedule);
    row.integration = std::move(key.integration);
    row.connection = std::move(key.connection);
    row.sync = std::move(key.sync);
    row.variant = std::move(key.variant);
  } else {
    row.update_only = true;  // no key columns built or bound
  }
  row.state = static_cast<std::uint8_t>(s.state);
  row.anchor_ms = s.anchor;
  row.frequency_override_ms = s.freq_override;
  row.next_slot_ms = s.next_slot;
  row.runs = s.runs;
  row.failures = s.failures;
  row.skipped = s.skipped;
  row.last_start_ms = s.last_start;
  row.last_finish_ms = s.last_finish;
  row.last_ok = s.last_ok;
  row.run_seq = s.run_seq;
  row.pending = s.pending;
  if (auto it = cat_.details.find(schedule); it != cat_.details.end()) {
    row.last_error = it->second.last_error;
  }
  if (s.run != kNone && runs_[s.run]) FillInFlight(row.in_flight, *runs_[s.run]);
  if (InCluster()) {
    row.partition = part_of_[schedule];
    row.epoch = active_[static_cast<std::size_t>(row.partition)];
  }
  if (s.flags & kWaiting) {
    if (auto it = waiting_.find(schedule); it != waiting_.end()) {
      const WaitInfo& w = it->second;
      row.waiting = store::OwedRun{w.run_id,   w.slot,  static_cast<std::uint8_t>(w.mode),
                                   w.attempt,  w.since, w.seq,
                                   w.scheduled};
    }
  }
  if (s.flags & kRetrying) {
    if (auto it = retry_info_.find(schedule); it != retry_info_.end()) {
      const RetryInfo& r = it->second;
      row.retry = store::OwedRun{
          r.run_id, r.slot, static_cast<std::uint8_t>(r.mode), r.attempt, r.due, 0, false};
    }
  }
}

std::shared_ptr<const Callback> EngineCore::CallbackFor(std::uint32_t integration,
                                                        std::string_view sync) const {
  auto it = callbacks_.find(CallbackKey(cat_.integrations[integration].key, sync));
  return it == callbacks_.end() ? nullptr : it->second;
}

std::string EngineCore::NextRunId(Txn& tx, std::uint32_t schedule, std::int64_t slot) {
  // Off the grid (an immediate run, a trigger, a resync, a buffered run): the schedule's own
  // counter, persisted with the run, keeps ids unique even when the clock reads an instant again.
  Schedule& s = Touch(tx, schedule);
  return GridRunId(s.uid, slot, ++s.run_seq);
}

void EngineCore::StartSchedule(Txn& tx, std::uint32_t schedule,
                               std::optional<std::int64_t> anchor) {
  Schedule& s = Touch(tx, schedule);
  s.state = ScheduleState::kStarted;
  bool spread = cat_.syncs[s.sync].spread;
  // A clock that reads earlier than the schedule's last run (stepped back across a restart) must
  // not anchor the grid onto slots already run: their run ids would repeat. The grid then starts
  // at the last run's start (every slot run so far is at or before it; the immediate run's id has
  // its own suffix). A clock that reads the same instant again keeps the start's own moment.
  std::int64_t at = anchor.value_or(tx.now);
  std::int64_t floor = s.last_start;
  if (s.run != kNone) floor = std::max(floor, runs_[s.run]->dispatched);
  if (at < floor) at = floor;
  std::tie(s.anchor, s.next_slot) =
      StartGrid(spread ? cat_.KeyOf(schedule) : ScheduleKey{}, spread, cat_.FrequencyOf(s), at);
  // A start received by another engine and applied here later than its first slot (a takeover
  // in between): the slots already past are not run, the grid goes on from the next one.
  if (s.next_slot <= tx.now) s.next_slot = NextSlotAfter(s.anchor, cat_.FrequencyOf(s), tx.now);
  s.flags &= static_cast<std::uint8_t>(~kHinted);
  slots_.Arm(schedule, s.next_slot);
  ++metrics_.schedules_started;
  if (s.flags & kWaiting) {
    // A run already waits for a cap (a trigger of the paused schedule): it stands for this one.
  } else if (s.run == kNone) {
    // The anchor's run; its id is off the grid, so that a start at an instant the clock reads
    // again (a pause and a start in one millisecond) never repeats one. It stands for a retry
    // still pending (of a trigger of the paused schedule that failed), as a triggered run does.
    DropRetry(tx, schedule);
    TryDispatch(tx, schedule, at, RunMode::kIncremental, /*scheduled=*/true, 1,
                NextRunId(tx, schedule, at));
  } else if (runs_[s.run]->cancel_requested && s.pending == 0) {
    // The run in flight is being stopped (a pause just before): run afresh once it has.
    s.pending = 1 + static_cast<std::uint8_t>(RunMode::kIncremental);
  }
  // Otherwise a run in flight (a trigger of the paused schedule) stands for the immediate run.
}

void EngineCore::DispatchRun(Txn& tx, std::uint32_t schedule, std::int64_t slot, RunMode mode,
                             bool scheduled, int attempt, std::string run_id) {
  Schedule& s = Touch(tx, schedule);
  auto run = std::make_shared<RunState>();
  run->schedule = schedule;
  run->uid = s.uid;
  run->slot = slot;
  run->dispatched = tx.now;
  run->mode = mode;
  run->attempt = attempt;
  run->key = cat_.KeyOf(schedule);
  run->run_id = std::move(run_id);
  run->callback = cat_.syncs[s.sync].callback ? cat_.syncs[s.sync].callback : fallback_;
  if (InCluster()) {
    run->partition = part_of_[schedule];
    run->epoch = active_[static_cast<std::size_t>(run->partition)];
  }
  run->last_heartbeat.store(tx.now, std::memory_order_relaxed);
  if (free_runs_.empty()) {
    run->table_slot = static_cast<std::uint32_t>(runs_.size());
    runs_.push_back(run);
  } else {
    run->table_slot = free_runs_.back();
    free_runs_.pop_back();
    runs_[run->table_slot] = run;
  }
  s.run = run->table_slot;
  ArmRunDeadline(schedule, *run, tx.now);
  ++metrics_.runs_started;
  CountInFlight(schedule, +1);
  if (scheduled) {
    Observe(metrics_.fire_lateness_seconds, static_cast<double>(tx.now - slot) / 1000.0);
  }
  tx.fx.dispatch.push_back(std::move(run));
}

std::int64_t EngineCore::TimeoutOf(const SyncInfo& sync) const {
  return sync.timeout_ms ? sync.timeout_ms
                         : static_cast<std::int64_t>(options_.default_run_timeout.count());
}

void EngineCore::ArmRunDeadline(std::uint32_t schedule, const RunState& run, std::int64_t now) {
  const SyncInfo& sync = cat_.syncs[cat_.schedules[schedule].sync];
  std::int64_t deadline = SatAdd(run.dispatched, TimeoutOf(sync));
  if (sync.heartbeat_timeout_ms) {
    std::int64_t hb =
        SatAdd(run.last_heartbeat.load(std::memory_order_relaxed), sync.heartbeat_timeout_ms);
    deadline = std::min(deadline, std::max(hb, now));
  }
  deadlines_.Arm(schedule, deadline);
}

void EngineCore::FinishRun(Txn& tx, const RunPtr& run, const Status& status,
                           std::vector<ModelCounts> counts, std::optional<Millis> hint) {
  const std::int64_t now = tx.now;
  {
    const Schedule& s = cat_.schedules[run->schedule];
    // Late (the schedule is gone, or the run was ended by its timeout and the slot of the run
    // table reused, perhaps by the schedule's next run): ignored.
    if (!s.live || s.state == ScheduleState::kDeleted || s.uid != run->uid ||
        s.run != run->table_slot || runs_[s.run] != run) {
      return;
    }
  }
  Schedule& s = Touch(tx, run->schedule);
  runs_[run->table_slot].reset();
  free_runs_.push_back(run->table_slot);
  s.run = kNone;
  deadlines_.Cancel(run->schedule);
  CountInFlight(run->schedule, -1);

  s.last_start = run->dispatched;
  s.last_finish = now;
  ++s.runs;
  Observe(metrics_.run_duration_seconds, static_cast<double>(now - run->dispatched) / 1000.0);
  if (status.ok()) {
    s.last_ok = 1;
    ++metrics_.runs_succeeded;
    if (counts.empty()) {
      cat_.details.erase(run->schedule);
    } else {
      ScheduleDetail& d = cat_.details[run->schedule];
      d.last_error.clear();
      d.last_counts = std::move(counts);
    }
  } else {
    s.last_ok = 0;
    ++s.failures;
    ++metrics_.runs_failed;
    if (status.code() == StatusCode::kCancelled) ++metrics_.runs_cancelled;
    if (status.code() == StatusCode::kDeadlineExceeded) ++metrics_.runs_timed_out;
    ScheduleDetail& d = cat_.details[run->schedule];
    d.last_error =
        status.message().empty() ? std::string(StatusCodeName(status.code())) : status.message();
    // A run's error is kept in memory, in the row and in the history: bounded, whatever the
    // callback threw.
    if (d.last_error.size() > kMaxErrorBytes) {
      d.last_error.resize(kMaxErrorBytes);
      d.last_error += "... (truncated)";
    }
    d.last_counts.clear();
  }
  if (store_) {
    store::RunRow row;
    FillInFlight(row, *run);
    row.number = s.runs;
    row.finished_ms = now;
    row.ok = static_cast<std::int8_t>(status.ok());
    if (InCluster()) {
      row.partition = part_of_[run->schedule];
      row.epoch = active_[static_cast<std::size_t>(row.partition)];
    }
    if (!status.ok()) row.error = cat_.details[run->schedule].last_error;
    tx.batch.runs.push_back(std::move(row));
  }
  if (s.pending && !shut_down_) {
    auto mode = static_cast<RunMode>(s.pending - 1);
    s.pending = 0;
    TryDispatch(tx, run->schedule, now, mode, /*scheduled=*/false);
  } else {
    MaybeRetry(tx, *run, status);
  }
  if (hint && s.state == ScheduleState::kStarted && !(s.flags & kRetrying)) {
    Millis h = std::clamp(*hint, options_.frequency_bounds.min, options_.frequency_bounds.max);
    s.next_slot = SatAdd(now, h.count());
    s.flags |= kHinted;
    slots_.Arm(run->schedule, s.next_slot);
    Decide(run->schedule, Reason::kHint, now, "next run in " + FormatFrequency(h));
  }
  DrainWaiting(tx);
}

void EngineCore::TrimRunTables(std::int64_t now) {
  // After a burst (a start of a million schedules puts a million runs in flight at once) the run
  // table and the run-deadline wheel keep their peak size; once no run is in flight, give it back.
  if (metrics_.runs_in_flight != 0 || runs_.size() < 4096) return;
  runs_ = {};
  free_runs_ = {};
  deadlines_ = wheel::TimerWheel(now);
}

void EngineCore::AbandonRun(Txn& tx, std::uint32_t schedule, Status reason) {
  Schedule& s = Touch(tx, schedule);
  if (s.run == kNone) return;
  RunPtr run = runs_[s.run];
  tx.fx.cancel.emplace_back(run->token, std::move(reason));
  runs_[s.run].reset();
  free_runs_.push_back(s.run);
  s.run = kNone;
  s.pending = 0;
  deadlines_.Cancel(schedule);
  CountInFlight(schedule, -1);
  ++metrics_.runs_cancelled;
  ++metrics_.runs_failed;
}

void EngineCore::CreateSchedule(Txn& tx, std::uint32_t connection, std::uint32_t sync,
                                std::uint32_t variant) {
  std::uint32_t idx = cat_.AddSchedule(connection, sync, variant, NextUid());
  if (InCluster()) SetPartition(idx);
  Touch(tx, idx, /*created=*/true);
  if (cat_.syncs[sync].auto_start) {
    StartSchedule(tx, idx);
  } else {
    ++metrics_.schedules_paused;
  }
}

void EngineCore::DeleteSchedules(Txn& tx, const std::vector<std::uint32_t>& schedules) {
  for (std::uint32_t idx : schedules) {
    Schedule& s = Touch(tx, idx);
    AbandonRun(tx, idx, Status::Cancelled("schedule deleted"));
    DropWaiting(tx, idx);
    DropRetry(tx, idx);
    decisions_.erase(idx);
    slots_.Cancel(idx);
    if (s.state == ScheduleState::kStarted) --metrics_.schedules_started;
    if (s.state == ScheduleState::kPaused) --metrics_.schedules_paused;
    s.state = ScheduleState::kDeleted;  // removed from the catalog once committed
    tx.deleted.push_back(idx);
    if (store_) tx.batch.schedules_deleted.push_back(s.uid);
    if (InCluster()) {
      auto p = static_cast<std::size_t>(part_of_[idx]);
      store::Tenure t{part_of_[idx], active_[p]};
      if (std::find(tx.batch.fence.begin(), tx.batch.fence.end(), t) == tx.batch.fence.end()) {
        tx.batch.fence.push_back(t);
      }
    }
  }
}

void EngineCore::Regrid(Txn& tx, std::uint32_t schedule) {
  Schedule& s = Touch(tx, schedule);
  if (s.state != ScheduleState::kStarted) return;
  std::int64_t freq = cat_.FrequencyOf(s);
  if (cat_.syncs[s.sync].spread) {
    // The phase of the new period; never closer than half a period to the last run.
    std::int64_t not_before = std::max(tx.now + 1, s.last_start + (freq + 1) / 2);
    s.anchor = SpreadSlot(schedule, freq, not_before);
    s.next_slot = s.anchor;
  } else {
    s.next_slot = NextSlotAfter(s.anchor, freq, tx.now);
  }
  s.flags &= static_cast<std::uint8_t>(~kHinted);
  slots_.Arm(schedule, s.next_slot);
}

void EngineCore::OnSlot(Txn& tx, std::uint32_t schedule, std::int64_t deadline) {
  const std::int64_t now = tx.now;
  {
    const Schedule& s = cat_.schedules[schedule];
    if (!s.live || s.state != ScheduleState::kStarted) return;
  }
  Schedule& s = Touch(tx, schedule);
  std::int64_t freq = cat_.FrequencyOf(s);
  std::int64_t slot = s.next_slot;
  if (s.flags & kHinted) {
    // A run's hint: this once off the grid; the grid resumes after it.
    s.flags &= static_cast<std::uint8_t>(~kHinted);
    slot = deadline;
    s.next_slot = NextSlotAfter(s.anchor, freq, now);
  } else {
    // Slots that passed while the engine could not fire them (down, or held back by the catch-up
    // rate) collapse into the latest one.
    if (now - slot >= freq) {
      std::int64_t missed = (now - slot) / freq;
      slot += missed * freq;
      s.skipped += static_cast<std::uint32_t>(missed);
      metrics_.slots_skipped += static_cast<std::uint64_t>(missed);
      Decide(schedule, Reason::kMissedWhileDown, now,
             std::to_string(missed) + " slot(s) collapsed into one run");
    }
    s.next_slot = slot + freq;
  }
  if (s.flags & kRetrying) DropRetry(tx, schedule);  // the slot wins over a pending retry
  if (s.run != kNone) {
    ++s.skipped;
    ++metrics_.slots_skipped;
    if (cat_.syncs[s.sync].overlap == OverlapPolicy::kBufferOne) {
      if (s.pending == 0) s.pending = 1 + static_cast<std::uint8_t>(RunMode::kIncremental);
      Decide(schedule, Reason::kBufferedOverlap, now, "one run follows the run in flight");
    } else {
      Decide(schedule, Reason::kSkippedOverlap, now, "a run was in flight");
    }
  } else if (!shut_down_) {
    TryDispatch(tx, schedule, slot, RunMode::kIncremental, /*scheduled=*/true);
  }
  slots_.Arm(schedule, s.next_slot);
}

void EngineCore::OnRunDeadline(Txn& tx, std::uint32_t schedule) {
  const Schedule& s = cat_.schedules[schedule];
  if (!s.live || s.run == kNone) return;
  RunPtr run = runs_[s.run];
  const SyncInfo& sync = cat_.syncs[s.sync];
  std::int64_t timeout = TimeoutOf(sync);
  Status reason;
  if (tx.now >= SatAdd(run->dispatched, timeout)) {
    reason = Status::DeadlineExceeded("run timed out after " + FormatFrequency(Millis(timeout)));
  } else if (sync.heartbeat_timeout_ms &&
             tx.now >= SatAdd(run->last_heartbeat.load(std::memory_order_relaxed),
                              sync.heartbeat_timeout_ms)) {
    reason = Status::DeadlineExceeded("no heartbeat for " +
                                      FormatFrequency(Millis(sync.heartbeat_timeout_ms)));
  } else {
    ArmRunDeadline(schedule, *run, tx.now);  // a heartbeat pushed the deadline back
    return;
  }
  tx.fx.cancel.emplace_back(run->token, reason);
  FinishRun(tx, run, reason, {});
}

void EngineCore::HoldTimers() {
  MutexLock lock(mu_);
  timers_held_ = true;
  if (alarm_ && alarm_set_) alarm_->Cancel();
  alarm_set_ = false;
}

void EngineCore::ReleaseTimers() {
  MutexLock lock(mu_);
  timers_held_ = false;
  MaybeRearm();
}

void EngineCore::MaybeRearm() {
  TrimRunTables(NowMs());  // here, never inside a wheel's Advance
  if (shut_down_ || timers_held_ || !alarm_) return;
  std::optional<std::int64_t> a = slots_.NextDeadline();
  std::optional<std::int64_t> b = deadlines_.NextDeadline();
  std::optional<std::int64_t> c = retries_.NextDeadline();
  std::optional<std::int64_t> next = a;
  if (b && (!next || *b < *next)) next = b;
  if (c && (!next || *c < *next)) next = c;
  if (drain_due_) next = next ? std::min(*next, NowMs()) : NowMs();
  if (!next) return;  // an alarm still set fires harmlessly
  if (alarm_set_ && alarm_at_ <= *next) return;
  alarm_set_ = true;
  alarm_at_ = *next;
  std::weak_ptr<EngineCore> weak = weak_from_this();
  alarm_->SetAt(TimePoint(Millis(std::min(*next, kFarFutureMs))), [weak] {
    if (auto core = weak.lock()) core->OnAlarm();
  });
}

ScheduleStatus EngineCore::StatusOf(std::uint32_t schedule) const {
  const Schedule& s = cat_.schedules[schedule];
  ScheduleStatus st;
  st.key = cat_.KeyOf(schedule);
  st.id = s.uid;
  st.state = s.state;
  if (s.run != kNone) {
    st.status = RunStatus::kRunning;
  } else if (s.state == ScheduleState::kPaused) {
    st.status = RunStatus::kPaused;
  } else if (s.state == ScheduleState::kDeleted) {
    st.status = RunStatus::kStopped;
  } else {
    st.status = s.last_ok == 0 ? RunStatus::kError : RunStatus::kSuccess;
  }
  st.frequency = Millis(cat_.FrequencyOf(s));
  st.frequency_overridden = s.freq_override != 0;
  if (s.state == ScheduleState::kStarted) st.next_run = TimePoint(Millis(s.next_slot));
  if (s.last_start) st.last_start = TimePoint(Millis(s.last_start));
  if (s.last_finish) st.last_finish = TimePoint(Millis(s.last_finish));
  if (s.last_ok >= 0) st.last_ok = s.last_ok == 1;
  if (auto it = cat_.details.find(schedule); it != cat_.details.end()) {
    st.last_error = it->second.last_error;
    st.last_counts = it->second.last_counts;
  }
  st.runs = s.runs;
  st.failures = s.failures;
  st.skipped = s.skipped;
  if (s.flags & kWaiting) {
    if (auto it = waiting_.find(schedule); it != waiting_.end()) {
      st.waiting_since = TimePoint(Millis(it->second.since));
    }
  }
  if (s.flags & kRetrying) {
    if (auto it = retry_info_.find(schedule); it != retry_info_.end()) {
      st.next_retry = TimePoint(Millis(it->second.due));
    }
  }
  if (auto it = decisions_.find(schedule); it != decisions_.end()) {
    const DecisionRing& ring = it->second;  // oldest first
    st.decisions.assign(ring.items.begin() + static_cast<std::ptrdiff_t>(ring.head),
                        ring.items.end());
    st.decisions.insert(st.decisions.end(), ring.items.begin(),
                        ring.items.begin() + static_cast<std::ptrdiff_t>(ring.head));
  }
  return st;
}

// ---------------------------------------------------------------------------------------------
// Catalog commands. Each: validate everything (nothing changes on an error), open an undoable
// transaction, change the state, Commit (one store commit; a failure rolls back exactly), then
// carry out the effects without the lock.

bool SameDefinition(const SyncInfo& a, const SyncInfo& b) {
  return a.frequency_ms == b.frequency_ms && a.frequency_text == b.frequency_text &&
         a.auto_start == b.auto_start && a.timeout_ms == b.timeout_ms &&
         a.heartbeat_timeout_ms == b.heartbeat_timeout_ms && a.overlap == b.overlap &&
         a.retry_max == b.retry_max && a.retry_backoff_ms == b.retry_backoff_ms &&
         a.spread == b.spread;
}

Status EngineCore::DefineSync(std::string_view integration, const SyncDefinition& def) {
  if (Status s = ValidateIntegration(integration); !s.ok()) return s;
  if (Status s = ValidateName(def.name, "sync name", StatusSubject::kSync); !s.ok()) return s;
  auto freq = ParseFrequency(def.frequency, options_.frequency_bounds);
  if (!freq.ok()) {
    return Status::InvalidField("frequency",
                                "sync " + Quote(def.name) + ": " + freq.status().message());
  }
  auto bounded = [&](std::optional<Millis> d, const char* field) -> Status {
    if (d && (d->count() <= 0 || *d > kMaxDuration)) {
      return Status::InvalidField(
          field, "sync " + Quote(def.name) + ": " + field + " is " + std::to_string(d->count()) +
                     " ms; it must be positive and " + "at most " + FormatFrequency(kMaxDuration));
    }
    return Status();
  };
  if (Status s = bounded(def.timeout, "timeout"); !s.ok()) return s;
  if (Status s = bounded(def.heartbeat_timeout, "heartbeat_timeout"); !s.ok()) return s;
  if (def.retry.max < 0 || def.retry.max > 100) {
    return Status::InvalidField("retry.max",
                                "sync " + Quote(def.name) + ": retry.max must be 0 to 100");
  }
  if (def.retry.max > 0) {
    if (Status s = bounded(def.retry.backoff, "retry.backoff"); !s.ok()) return s;
  }
  // Cluster mode: a definition or connection made through another engine is known first.
  if (InCluster()) {
    if (Status s = CatalogUpToDate(); !s.ok()) return s;
  }
  Effects fx;
  {
    MutexLock lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    SyncInfo info;
    info.name = def.name;
    info.frequency_text = def.frequency;
    info.frequency_ms = freq->count();
    info.auto_start = def.auto_start;
    info.timeout_ms = def.timeout ? def.timeout->count() : 0;
    info.heartbeat_timeout_ms = def.heartbeat_timeout ? def.heartbeat_timeout->count() : 0;
    info.overlap = def.overlap;
    info.retry_max = def.retry.max;
    info.retry_backoff_ms = def.retry.backoff.count();
    info.spread = def.spread;

    std::uint32_t integ = cat_.FindIntegration(integration);
    std::uint32_t sync = integ == kNone ? kNone : cat_.FindSync(integ, def.name);
    if (sync != kNone) {
      if (SameDefinition(cat_.syncs[sync], info)) {
        return Status();  // the same definition again: nothing to do
      }
    }
    // Cluster mode: the schedules of the partitions this engine holds are created (or regridded)
    // here; every other engine applies the definition to its own (SyncCatalog).
    std::map<int, std::int64_t> owned;
    auto held = [&](std::uint32_t conn) REQUIRES(mu_) {
      return !InCluster() || Holds(cluster::PartitionOf(integration, cat_.connections[conn].id,
                                                        def.name, kBaseVariant, partitions_),
                                   owned);
    };
    if (InCluster()) {
      owned = keeper_->Owned();
      if (sync == kNone && integ != kNone) {
        std::size_t n = 0;
        for (std::uint32_t c : cat_.integrations[integ].connections) n += held(c) ? 1 : 0;
        if (Status st = EnsureUids(n); !st.ok()) return st;
      }
    }
    Txn tx = Begin(/*undoable=*/true);
    if (store_) {
      tx.batch.syncs.push_back(store::SyncRow{
          std::string(integration), info.name, info.frequency_text, info.frequency_ms,
          info.auto_start, info.timeout_ms, info.heartbeat_timeout_ms, EncodePolicy(info)});
    }
    if (sync != kNone) {
      // A changed default frequency regrids the sync's schedules without an override.
      bool regrid = cat_.syncs[sync].frequency_ms != info.frequency_ms;
      tx.sync_before.emplace(sync, cat_.syncs[sync]);
      info.integration = integ;
      info.callback = cat_.syncs[sync].callback;
      cat_.syncs[sync] = std::move(info);
      if (regrid) {
        for (std::uint32_t c : cat_.integrations[integ].connections) {
          for (std::uint32_t s : cat_.connections[c].schedules) {
            if (cat_.schedules[s].sync == sync && cat_.schedules[s].freq_override == 0) {
              Regrid(tx, s);
            }
          }
        }
      }
    } else {
      // A new sync: one base schedule per connection, in the same transaction.
      if (integ == kNone) {
        integ = cat_.AddIntegration(std::string(integration));
        tx.integration_created = integ;
      }
      info.callback = CallbackFor(integ, info.name);
      sync = cat_.AddSync(integ, std::move(info));
      tx.sync_created = sync;
      for (std::uint32_t c : cat_.integrations[integ].connections) {
        if (held(c)) CreateSchedule(tx, c, sync, 0);
      }
    }
    if (Status st = Commit(tx); !st.ok()) return st;
    ++catalog_local_;
    fx = std::move(tx.fx);
  }
  Apply(fx);
  if (InCluster()) SpreadCatalog();
  return Status();
}

Result<SyncDefinition> EngineCore::GetSyncDefinition(std::string_view integration,
                                                     std::string_view sync) {
  if (Status s = ValidateIntegration(integration); !s.ok()) return s;
  if (Status s = ValidateName(sync, "sync name", StatusSubject::kSync); !s.ok()) return s;
  if (InCluster()) {
    if (Status s = CatalogUpToDate(); !s.ok()) return s;
  }
  MutexLock lock(mu_);
  std::uint32_t integ = cat_.FindIntegration(integration);
  if (integ == kNone) {
    return Status::NotFound("integration " + Quote(integration) + " does not exist",
                            StatusSubject::kIntegration);
  }
  std::uint32_t idx = cat_.FindSync(integ, sync);
  if (idx == kNone) {
    return Status::NotFound(
        "sync " + Quote(sync) + " does not exist in integration " + Quote(integration),
        StatusSubject::kSync);
  }
  const SyncInfo& info = cat_.syncs[idx];
  SyncDefinition def;
  def.name = info.name;
  def.frequency = info.frequency_text;
  def.auto_start = info.auto_start;
  if (info.timeout_ms > 0) def.timeout = Millis(info.timeout_ms);
  if (info.heartbeat_timeout_ms > 0) def.heartbeat_timeout = Millis(info.heartbeat_timeout_ms);
  def.overlap = info.overlap;
  def.retry.max = info.retry_max;
  def.retry.backoff = Millis(info.retry_backoff_ms);
  def.spread = info.spread;
  return def;
}

Status EngineCore::RegisterCallback(std::string_view integration, std::string_view sync,
                                    Callback cb) {
  if (Status s = ValidateIntegration(integration); !s.ok()) return s;
  if (Status s = ValidateName(sync, "sync name", StatusSubject::kSync); !s.ok()) return s;
  auto ptr = std::make_shared<const Callback>(std::move(cb));
  MutexLock lock(mu_);
  callbacks_[CallbackKey(integration, sync)] = ptr;
  std::uint32_t integ = cat_.FindIntegration(integration);
  if (integ != kNone) {
    if (std::uint32_t s = cat_.FindSync(integ, sync); s != kNone) cat_.syncs[s].callback = ptr;
  }
  return Status();
}

void EngineCore::SetFallbackCallback(Callback cb) {
  auto ptr = (cb.sync || cb.async) ? std::make_shared<const Callback>(std::move(cb)) : nullptr;
  MutexLock lock(mu_);
  fallback_ = std::move(ptr);
}

Status EngineCore::AddConnection(std::string_view integration, std::string_view connection) {
  if (Status s = ValidateIntegration(integration); !s.ok()) return s;
  if (Status s = ValidateConnection(connection); !s.ok()) return s;
  if (InCluster()) {
    if (Status s = CatalogUpToDate(); !s.ok()) return s;
  }
  Effects fx;
  {
    MutexLock lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    std::uint32_t integ = cat_.FindIntegration(integration);
    if (integ == kNone)
      return Status::NotFound("integration " + Quote(integration) + " does not exist",
                              StatusSubject::kIntegration);
    if (cat_.FindConnection(integ, connection) != kNone) {
      return Status::AlreadyExists("connection " + Quote(connection) +
                                       " already exists in integration " + Quote(integration),
                                   StatusSubject::kConnection);
    }
    // Cluster mode: the schedules of the partitions this engine holds are created here; the
    // engines holding the others create theirs when they apply the catalog (SyncCatalog).
    std::vector<std::uint32_t> syncs = cat_.integrations[integ].syncs;
    if (InCluster()) {
      std::map<int, std::int64_t> owned = keeper_->Owned();
      std::erase_if(syncs, [&](std::uint32_t sync) REQUIRES(mu_) {
        return !Holds(cluster::PartitionOf(integration, connection, cat_.syncs[sync].name,
                                           kBaseVariant, partitions_),
                      owned);
      });
      if (Status st = EnsureUids(syncs.size()); !st.ok()) return st;
    }
    Txn tx = Begin(/*undoable=*/true);
    if (store_)
      tx.batch.connections_added.push_back({std::string(integration), std::string(connection)});
    std::uint32_t conn = cat_.AddConnection(integ, std::string(connection));
    tx.connection_created = conn;
    for (std::uint32_t sync : syncs) CreateSchedule(tx, conn, sync, 0);
    if (Status st = Commit(tx); !st.ok()) return st;
    ++catalog_local_;
    fx = std::move(tx.fx);
  }
  Apply(fx);
  if (InCluster()) SpreadCatalog();
  return Status();
}

Status EngineCore::DeleteConnection(std::string_view integration, std::string_view connection) {
  if (Status s = ValidateIntegration(integration); !s.ok()) return s;
  if (Status s = ValidateConnection(connection); !s.ok()) return s;
  if (InCluster()) {
    if (Status s = CatalogUpToDate(); !s.ok()) return s;
  }
  Effects fx;
  {
    MutexLock lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    std::uint32_t integ = cat_.FindIntegration(integration);
    if (integ == kNone)
      return Status::NotFound("integration " + Quote(integration) + " does not exist",
                              StatusSubject::kIntegration);
    std::uint32_t conn = cat_.FindConnection(integ, connection);
    if (conn == kNone) {
      return Status::NotFound("connection " + Quote(connection) +
                                  " does not exist in integration " + Quote(integration),
                              StatusSubject::kConnection);
    }
    // Cluster mode: the schedules of the partitions this engine holds (the only ones it has in
    // memory) are deleted here; the engines holding the others delete theirs when they apply the
    // catalog (SyncCatalog).
    Txn tx = Begin(/*undoable=*/true);
    if (store_)
      tx.batch.connections_deleted.push_back({std::string(integration), std::string(connection)});
    DeleteSchedules(tx, cat_.connections[conn].schedules);
    tx.connections_deleted.push_back(conn);
    DrainWaiting(tx);  // the cancelled runs freed their places under the caps
    if (Status st = Commit(tx); !st.ok()) return st;
    ++catalog_local_;
    if (InCluster()) {
      // For a partition load that read before this deletion (Reconcile): kept ten minutes.
      const auto now = std::chrono::steady_clock::now();
      while (!local_deleted_.empty() &&
             now - local_deleted_.front().at > std::chrono::minutes(10)) {
        local_deleted_.pop_front();
      }
      local_deleted_.push_back(
          LocalDeletion{catalog_local_, now, std::string(integration), std::string(connection)});
    }
    fx = std::move(tx.fx);
  }
  Apply(fx);
  if (InCluster()) SpreadCatalog();
  return Status();
}

Result<ScheduleStatus> EngineCore::CreateVariant(const ScheduleKey& key) {
  if (Status s = ValidateKey(key); !s.ok()) return s;
  if (key.variant == kBaseVariant) {
    return Status::InvalidArgument("variant \"base\" always exists and cannot be created",
                                   StatusSubject::kVariant);
  }
  if (InCluster())
    RefreshCatalog(Target{key.integration, key.connection, {SyncSelector{key.sync}}});
  ScheduleStatus created;
  Effects fx;
  {
    MutexLock lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    std::uint32_t integ = cat_.FindIntegration(key.integration);
    if (integ == kNone)
      return Status::NotFound("integration " + Quote(key.integration) + " does not exist",
                              StatusSubject::kIntegration);
    std::uint32_t sync = cat_.FindSync(integ, key.sync);
    if (sync == kNone) {
      return Status::NotFound(
          "sync " + Quote(key.sync) + " does not exist in integration " + Quote(key.integration),
          StatusSubject::kSync);
    }
    std::uint32_t conn = cat_.FindConnection(integ, key.connection);
    if (conn == kNone) {
      return Status::NotFound("connection " + Quote(key.connection) +
                                  " does not exist in integration " + Quote(key.integration),
                              StatusSubject::kConnection);
    }
    std::uint32_t variant = cat_.FindVariant(key.variant);
    if (variant != kNone && cat_.FindSchedule(conn, sync, variant) != kNone) {
      return Status::AlreadyExists("variant " + Quote(key.variant) + " of sync " + Quote(key.sync) +
                                       " already exists on connection " + Quote(key.connection),
                                   StatusSubject::kVariant);
    }
    if (InCluster()) {
      if (Status st = RequirePartitions({cluster::PartitionOf(key, partitions_)}, false,
                                        "creating variant " + ToString(key));
          !st.ok()) {
        lock.Unlock();
        return RemoteVariant(key, /*create=*/true);  // through the partition's owner
      }
      if (Status st = EnsureUids(1); !st.ok()) return st;
    }
    Txn tx = Begin(/*undoable=*/true);
    std::uint32_t interned = cat_.InternVariant(key.variant);
    CreateSchedule(tx, conn, sync, interned);
    if (Status st = Commit(tx); !st.ok()) return st;
    fx = std::move(tx.fx);
    created = StatusOf(cat_.FindSchedule(conn, sync, interned));
  }
  Apply(fx);
  return created;
}

Status EngineCore::DeleteVariant(const ScheduleKey& key) {
  if (Status s = ValidateKey(key); !s.ok()) return s;
  if (key.variant == kBaseVariant) {
    return Status::InvalidArgument("variant \"base\" always exists and cannot be deleted",
                                   StatusSubject::kVariant);
  }
  if (InCluster())
    RefreshCatalog(Target{key.integration, key.connection, {SyncSelector{key.sync}}});
  Effects fx;
  {
    MutexLock lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    std::uint32_t integ = cat_.FindIntegration(key.integration);
    if (integ == kNone)
      return Status::NotFound("integration " + Quote(key.integration) + " does not exist",
                              StatusSubject::kIntegration);
    std::uint32_t sync = cat_.FindSync(integ, key.sync);
    if (sync == kNone) {
      return Status::NotFound(
          "sync " + Quote(key.sync) + " does not exist in integration " + Quote(key.integration),
          StatusSubject::kSync);
    }
    std::uint32_t conn = cat_.FindConnection(integ, key.connection);
    if (conn == kNone) {
      return Status::NotFound("connection " + Quote(key.connection) +
                                  " does not exist in integration " + Quote(key.integration),
                              StatusSubject::kConnection);
    }
    if (Status st = RequirePartitions({cluster::PartitionOf(key, partitions_)}, false,
                                      "deleting variant " + ToString(key));
        !st.ok()) {
      lock.Unlock();
      auto deleted = RemoteVariant(key, /*create=*/false);  // through the partition's owner
      return deleted.ok() ? Status() : deleted.status();
    }
    std::uint32_t variant = cat_.FindVariant(key.variant);
    std::uint32_t sched = variant == kNone ? kNone : cat_.FindSchedule(conn, sync, variant);
    if (sched == kNone) {
      return Status::NotFound("variant " + Quote(key.variant) + " of sync " + Quote(key.sync) +
                                  " does not exist on connection " + Quote(key.connection),
                              StatusSubject::kVariant);
    }
    Txn tx = Begin(/*undoable=*/true);
    DeleteSchedules(tx, {sched});
    DrainWaiting(tx);
    if (Status st = Commit(tx); !st.ok()) return st;
    fx = std::move(tx.fx);
  }
  Apply(fx);
  return Status();
}

// ---------------------------------------------------------------------------------------------
// Schedule commands

Outcome EngineCore::StartOne(Txn& tx, std::uint32_t s, std::optional<std::int64_t> anchor) {
  if (cat_.schedules[s].state == ScheduleState::kStarted) return Outcome::kAlreadyStarted;
  --metrics_.schedules_paused;
  StartSchedule(tx, s, anchor);
  return Outcome::kStarted;
}

Outcome EngineCore::PauseOne(Txn& tx, std::uint32_t idx) {
  if (cat_.schedules[idx].state != ScheduleState::kStarted) return Outcome::kAlreadyPaused;
  Schedule& s = Touch(tx, idx);
  s.state = ScheduleState::kPaused;
  s.pending = 0;
  s.flags &= static_cast<std::uint8_t>(~kHinted);
  slots_.Cancel(idx);
  DropWaiting(tx, idx);
  DropRetry(tx, idx);
  Decide(idx, Reason::kPaused, tx.now);
  --metrics_.schedules_started;
  ++metrics_.schedules_paused;
  if (s.run != kNone && !runs_[s.run]->cancel_requested) {
    runs_[s.run]->cancel_requested = true;
    tx.fx.cancel.emplace_back(runs_[s.run]->token, Status::Cancelled("schedule paused"));
  }
  return Outcome::kPaused;
}

Outcome EngineCore::TriggerOne(Txn& tx, std::uint32_t idx, RunMode mode) {
  const Schedule& s = cat_.schedules[idx];  // touched only where it changes
  if (s.flags & kWaiting) {
    // A run is already due and waiting for a cap: a full resync upgrades it.
    if (mode == RunMode::kFullResync) {
      Touch(tx, idx);
      waiting_[idx].mode = mode;
      return Outcome::kTriggered;
    }
    return Outcome::kAlreadyRunning;
  }
  if (s.run == kNone) {
    DropRetry(tx, idx);  // the triggered run stands for a pending retry
    TryDispatch(tx, idx, tx.now, mode, /*scheduled=*/false);
    return Outcome::kTriggered;
  }
  if (mode == RunMode::kIncremental) return Outcome::kAlreadyRunning;
  Touch(tx, idx).pending = 1 + static_cast<std::uint8_t>(RunMode::kFullResync);
  RunState& run = *runs_[s.run];
  if (!run.cancel_requested) {
    run.cancel_requested = true;
    tx.fx.cancel.emplace_back(run.token, Status::Cancelled("pre-empted by a full resync"));
  }
  return Outcome::kTriggered;
}

Result<CommandResult> EngineCore::Start(const Target& target) {
  if (Status s = ValidateTarget(target); !s.ok()) return s;
  if (InCluster()) RefreshCatalog(target);
  CommandResult result;
  Effects fx;
  {
    MutexLock lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    if (Status st = RequireTarget(target); !st.ok()) {
      lock.Unlock();
      return RemoteTarget(RemoteKind::kStart, target, 0);
    }
    auto targets = cat_.Resolve(target);
    if (!targets.ok()) return targets.status();
    Txn tx = Begin(/*undoable=*/true);
    tx.Reserve(targets->size());
    for (std::uint32_t s : *targets) Count(result, target, cat_, s, StartOne(tx, s, std::nullopt));
    if (Status st = Commit(tx); !st.ok()) return st;
    fx = std::move(tx.fx);
  }
  Apply(fx);
  return result;
}

Result<CommandResult> EngineCore::Pause(const Target& target) {
  if (Status s = ValidateTarget(target); !s.ok()) return s;
  if (InCluster()) RefreshCatalog(target);
  CommandResult result;
  Effects fx;
  {
    MutexLock lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    if (Status st = RequireTarget(target); !st.ok()) {
      lock.Unlock();
      return RemoteTarget(RemoteKind::kPause, target, 0);
    }
    auto targets = cat_.Resolve(target);
    if (!targets.ok()) return targets.status();
    Txn tx = Begin(/*undoable=*/true);
    tx.Reserve(targets->size());
    for (std::uint32_t idx : *targets) Count(result, target, cat_, idx, PauseOne(tx, idx));
    if (Status st = Commit(tx); !st.ok()) return st;
    fx = std::move(tx.fx);
  }
  Apply(fx);
  return result;
}

Result<CommandResult> EngineCore::Trigger(const Target& target, RunMode mode) {
  if (Status s = ValidateTarget(target); !s.ok()) return s;
  if (InCluster()) RefreshCatalog(target);
  CommandResult result;
  Effects fx;
  {
    MutexLock lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    if (Status st = RequireTarget(target); !st.ok()) {
      lock.Unlock();
      return RemoteTarget(RemoteKind::kTrigger, target, static_cast<std::int64_t>(mode));
    }
    auto targets = cat_.Resolve(target);
    if (!targets.ok()) return targets.status();
    Txn tx = Begin(/*undoable=*/true);
    tx.Reserve(targets->size());
    for (std::uint32_t idx : *targets) Count(result, target, cat_, idx, TriggerOne(tx, idx, mode));
    if (Status st = Commit(tx); !st.ok()) return st;
    fx = std::move(tx.fx);
  }
  Apply(fx);
  return result;
}

Result<std::vector<ScheduleStatus>> EngineCore::GetStatus(const Target& target) {
  if (Status s = ValidateTarget(target); !s.ok()) return s;
  if (InCluster()) RefreshCatalog(target);
  std::vector<ScheduleStatus> out;
  {
    MutexLock lock(mu_);
    if (Status st = RequireTarget(target); !st.ok()) {
      lock.Unlock();
      return RemoteStatus(target);
    }
    auto targets = cat_.Resolve(target);
    if (!targets.ok()) return targets.status();
    out.reserve(targets->size());
    for (std::uint32_t s : *targets) out.push_back(StatusOf(s));
    if (writer_) {
      if (auto uids = writer_->Health().unrecorded_uids) {
        for (ScheduleStatus& st : out) st.unrecorded = uids->count(st.id) != 0;
      }
    }
  }
  std::sort(out.begin(), out.end(), [](const ScheduleStatus& a, const ScheduleStatus& b) {
    return std::tie(a.key.connection, a.key.sync, a.key.variant) <
           std::tie(b.key.connection, b.key.sync, b.key.variant);
  });
  return out;
}

Result<Millis> EngineCore::UpdateFrequency(const ScheduleKey& key,
                                           std::optional<std::string> frequency) {
  if (Status s = ValidateKey(key); !s.ok()) return s;
  std::int64_t override_ms = 0;
  if (frequency) {
    auto f = ParseFrequency(*frequency, options_.frequency_bounds);
    if (!f.ok()) return f.status().WithSubject(StatusSubject::kField, "frequency");
    override_ms = f->count();
  }
  Target t{key.integration, key.connection, {SyncSelector{key.sync, key.variant}}, false};
  if (InCluster()) RefreshCatalog(t);
  MutexLock lock(mu_);
  if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
  if (Status st = RequireTarget(t); !st.ok()) {
    lock.Unlock();
    return RemoteFrequency(key, override_ms);
  }
  auto targets = cat_.Resolve(t);
  if (!targets.ok()) return targets.status();
  std::uint32_t idx = targets->front();
  Txn tx = Begin(/*undoable=*/true);
  Touch(tx, idx).freq_override = override_ms;
  Regrid(tx, idx);  // keeps the anchor (or the key's phase, when spread)
  if (Status st = Commit(tx); !st.ok()) return st;
  return Millis(cat_.FrequencyOf(cat_.schedules[idx]));
}

EngineMetrics EngineCore::GetMetrics() {
  MutexLock lock(mu_);
  EngineMetrics m = metrics_;
  m.runs_waiting += pool_ ? pool_->Waiting() : 0;  // waiting for a cap, plus for a worker
  if (writer_) {
    StoreHealth h = writer_->Health();
    m.store_healthy = h.healthy;
    m.store_broken = h.broken;
    m.store_error = std::move(h.error);
    m.store_commits_failed = h.commits_failed;
    m.store_rows_unrecorded = h.rows_unrecorded;
    m.store_history_dropped = h.history_dropped;
    m.store_cache_bytes = h.cache_bytes;
    m.slots_refused = writer_->SlotsRefused();
  }
  if (InCluster()) {
    // Read, not kept: the keeper counts its renewals and leases, OnFenced the refused commits.
    cluster::LeaseSnapshot snap = keeper_->Snapshot();
    cluster::LeaseKeeperCounters c = keeper_->counters();
    const auto now = std::chrono::steady_clock::now();
    for (const cluster::Lease& l : snap.leases) {
      auto p = static_cast<std::size_t>(l.partition);
      if (l.ValidAt(now) && p < active_.size() && active_[p] == l.epoch) {
        ++m.cluster_partitions_owned;
      }
    }
    m.cluster_partitions_total = static_cast<std::uint64_t>(partitions_);
    m.cluster_nodes_live = static_cast<std::uint64_t>(snap.live_nodes);
    m.cluster_lease_renewals = c.renewals;
    m.cluster_claims = c.claims;
    m.cluster_takeovers = c.takeovers;
    m.cluster_releases = c.releases;
    m.cluster_leases_lost = c.lost;
    m.cluster_withdrawals = c.withdrawals;
    m.cluster_fenced_refusals =
        c.fenced_refusals + fenced_refusals_.load(std::memory_order_relaxed);
    m.cluster_catalog_version = catalog_applied_;
    m.cluster_catalog_revocations = catalog_revocations_.load(std::memory_order_relaxed);
    // A node whose lease keeper cannot reach the database renews nothing: its leases lapse and
    // it will run nothing. Unhealthy then, even when none of its own commits failed (it may have
    // none to make: a node owning no partition commits nothing). Not after Shutdown, which stops
    // the keeper: the engine's health then says whether its last commits were made.
    if (m.store_healthy && !shut_down_) {
      m.store_error = KeeperTrouble(snap, &m.store_broken);
      m.store_healthy = m.store_error.empty();
    }
  }
  return m;
}

std::string EngineCore::KeeperTrouble(const cluster::LeaseSnapshot& snap, bool* broken) const {
  if (Status kh = keeper_->Health(); !kh.ok()) {
    // The keeper stopped for good (its name was taken over while this engine was away): it will
    // never run anything again; reopening is the way back (helper-41: a daemon lingered so).
    *broken = true;
    return "cluster: " + kh.message();
  }
  if (!snap.connected) {
    return "cluster: the lease keeper has lost its connection to the database; this engine's "
           "leases lapse and it runs nothing until it reconnects";
  }
  return {};
}

EngineHealth EngineCore::GetHealth() {
  EngineHealth h;
  if (writer_) {
    StoreHealth s = writer_->Health();
    h.store_healthy = s.healthy;
    h.store_broken = s.broken;
    h.store_error = std::move(s.error);
  }
  if (InCluster()) {
    cluster::LeaseSnapshot snap = keeper_->Snapshot();
    const auto now = std::chrono::steady_clock::now();
    {
      // As GetMetrics counts them (valid and loaded), from tenures_, which mirrors active_.
      std::lock_guard lock(tenures_mu_);
      for (const cluster::Lease& l : snap.leases) {
        auto p = static_cast<std::size_t>(l.partition);
        h.cluster_partitions_owned +=
            l.ValidAt(now) && p < tenures_.size() && tenures_[p] == l.epoch;
      }
    }
    h.cluster_partitions_total = static_cast<std::uint64_t>(partitions_);
    h.cluster_nodes_live = static_cast<std::uint64_t>(snap.live_nodes);
    h.cluster_withdrawals = keeper_->counters().withdrawals;
    // As GetMetrics, without its exception after Shutdown (shut_down_ needs mu_).
    if (h.store_healthy) {
      h.store_error = KeeperTrouble(snap, &h.store_broken);
      h.store_healthy = h.store_error.empty();
    }
  }
  return h;
}

std::size_t EngineCore::MemoryBytes() {
  MutexLock lock(mu_);
  return cat_.MemoryBytes() + slots_.MemoryBytes() + deadlines_.MemoryBytes() +
         runs_.capacity() * sizeof(RunPtr) + free_runs_.capacity() * sizeof(std::uint32_t);
}

// ---------------------------------------------------------------------------------------------
// Alarm and runs

void EngineCore::FillInFlight(store::RunRow& row, const RunState& r) {
  row.run_id = r.run_id;
  row.schedule_uid = r.uid;
  row.slot_ms = r.slot;
  row.mode = static_cast<std::uint8_t>(r.mode);
  row.attempt = r.attempt;
  row.started_ms = r.dispatched;
}

void EngineCore::Release(std::vector<RunPtr>&& runs, const Status& committed) {
  if (!committed.ok()) {
    // Not recorded, so not run: each is cancelled before its callback and recorded as an error.
    Status reason = Status::Unavailable("the run could not be recorded: " + committed.message());
    for (const RunPtr& r : runs) r->token.Cancel(reason);
  }
  Effects fx;
  fx.dispatch = std::move(runs);
  Apply(fx);
}

void EngineCore::OnAlarm() {
  Effects fx;
  CommitQueue::Ticket ticket;
  {
    MutexLock lock(mu_);
    if (shut_down_) return;
    alarm_set_ = false;
    if (timers_held_) return;  // held since it was set (HoldTimers): ReleaseTimers rearms
    Txn tx = Begin(/*undoable=*/false);
    if (drain_due_) {
      drain_due_ = false;
      DrainWaiting(tx);
    }
    std::size_t budget = options_.max_fires_per_wakeup;
    // The wheels call these back within Advance, under this lock; the analysis cannot follow a
    // lambda through the wheel's template, so each says so (AssertHeld checks nothing).
    budget -= deadlines_.Advance(
        tx.now,
        [&](wheel::TimerId id, std::int64_t) {
          mu_.AssertHeld();
          OnRunDeadline(tx, id);
        },
        budget);
    if (budget > 0) {
      budget -= retries_.Advance(
          tx.now,
          [&](wheel::TimerId id, std::int64_t) {
            mu_.AssertHeld();
            OnRetry(tx, id);
          },
          budget);
    }
    if (budget > 0) {
      slots_.Advance(
          tx.now,
          [&](wheel::TimerId id, std::int64_t deadline) {
            mu_.AssertHeld();
            OnSlot(tx, id, deadline);
          },
          budget);
    }
    // Queued under the lock, so that the rows keep the engine's order with respect to commands
    // (a pause or a delete queued after this alarm must not be overwritten by its older rows).
    ticket = Queue(tx);
    fx = std::move(tx.fx);
    MaybeRearm();
  }
  Apply(fx);
  // The alarm waits for its runs' records without the engine's lock, so commands and outcomes
  // proceed meanwhile and the next wake-up gathers everything that came due during the commit
  // (group commit); the writer releases the runs to the workers once committed. (Waiting only
  // for the item before this one, a two-deep pipeline, was tried: as fast in BM_DurableFire, but
  // the alarm woke for smaller batches and spent 2.3 µs per run instead of 1.)
  if (ticket) (void)writer_->Wait(ticket);
}

void EngineCore::Apply(Effects& fx) {
  for (auto& [token, reason] : fx.cancel) token.Cancel(std::move(reason));
  if (fx.dispatch.empty()) return;
  if (pool_) {
    pool_->Push(std::move(fx.dispatch));
    return;
  }
  std::weak_ptr<EngineCore> weak = weak_from_this();
  for (RunPtr& run : fx.dispatch) {
    boost::asio::post(*options_.run_executor, [weak, run = std::move(run)]() mutable {
      std::vector<RunPtr> one{std::move(run)};
      if (auto core = weak.lock()) core->ExecuteBatch(one);
    });
  }
}

// What every copy of an asynchronous run's RunDone shares. The first call finishes the run; if
// the last copy goes without a call (the host dropped its completion: a lost callback, an
// exception in its own code), the destructor finishes it as CANCELLED at once, rather than
// leaving it RUNNING until its timeout.
struct EngineCore::AsyncCompletion {
  AsyncCompletion(std::weak_ptr<EngineCore> w, RunPtr r) : weak(std::move(w)), run(std::move(r)) {}
  AsyncCompletion(const AsyncCompletion&) = delete;
  AsyncCompletion& operator=(const AsyncCompletion&) = delete;
  ~AsyncCompletion() {
    if (done.load(std::memory_order_acquire)) return;
    RunReport report;
    report.status = Status::Cancelled("the callback dropped its completion");
    Finish(std::move(report));
  }
  void Finish(RunReport report) {
    if (done.exchange(true)) return;
    auto core = weak.lock();
    if (!core) return;
    std::vector<RunPtr> runs{run};
    std::vector<RunOutcome> outcomes(1);
    outcomes[0].status = run->token.cancelled() ? run->token.reason() : std::move(report.status);
    outcomes[0].counts = std::move(report.counts);
    outcomes[0].hint = report.next_run_in;
    core->Complete(runs, outcomes);
  }

  std::weak_ptr<EngineCore> weak;
  RunPtr run;
  std::atomic<bool> done{false};
};

bool EngineCore::Execute(const RunPtr& run, RunOutcome& out) {
  Status& status = out.status;
  std::vector<ModelCounts>& counts = out.counts;
  if (run->token.cancelled()) {
    status = run->token.reason();
    return true;
  }
  // Cluster mode: a callback is called only under the lease its run was dispatched under, still
  // valid on this engine. Between the dispatch's commit and this call the lease may have ended: a
  // shed to a joining engine (the lease is dropped locally before the release, but the run's
  // cancellation follows on the cluster thread) or a freeze past the lease (the process wakes
  // here, before its keeper has noticed). Such a run is not called: the partition's next owner
  // finds it in flight and records it interrupted (the soak saw such calls, 1 or 2 a run).
  if (run->partition >= 0 && keeper_ != nullptr && !keeper_->Holds(run->partition, run->epoch)) {
    status = Status::Cancelled("cluster: the lease on partition " + std::to_string(run->partition) +
                               " ended before the run's callback was called");
    return true;
  }
  if (!run->callback) {
    status = Status::FailedPrecondition("no callback registered for sync " + Quote(run->key.sync) +
                                        " of integration " + Quote(run->key.integration));
    return true;
  }
  RunContext ctx;
  ctx.key = run->key;
  ctx.run_id = run->run_id;
  ctx.slot = TimePoint(Millis(run->slot));
  ctx.mode = run->mode;
  ctx.attempt = run->attempt;
  ctx.cancel = run->token;
  // The closures handed to user code own what they touch: the engine is reached through a weak
  // pointer, so a heartbeat or a completion after the engine is gone does nothing.
  std::weak_ptr<EngineCore> weak = weak_from_this();
  ctx.heartbeat = [run, weak] {
    if (auto core = weak.lock()) {
      run->last_heartbeat.store(core->NowMs(), std::memory_order_relaxed);
    }
  };
  try {
    if (run->callback->async) {
      auto completion = std::make_shared<AsyncCompletion>(weak, run);
      try {
        run->callback->async(
            ctx, [completion](RunReport report) { completion->Finish(std::move(report)); });
      } catch (...) {
        // The run fails at once (below); a `done` called before the throw already finished it,
        // and one called (or dropped) later must not finish it again.
        if (completion->done.exchange(true)) return false;
        throw;
      }
      return false;
    }
    RunReport report = run->callback->sync(ctx);
    status = std::move(report.status);
    counts = std::move(report.counts);
    out.hint = report.next_run_in;
  } catch (const std::exception& e) {
    status = Status::Internal(e.what());
  } catch (...) {
    status = Status::Internal("the sync callback threw a non-standard exception");
  }
  // A run asked to stop is recorded as stopped, whatever it reported.
  if (run->token.cancelled()) status = run->token.reason();
  return true;
}

void EngineCore::ExecuteBatch(std::vector<RunPtr>& runs) {
  std::vector<RunPtr> done;
  std::vector<RunOutcome> outcomes;
  done.reserve(runs.size());
  outcomes.reserve(runs.size());
  for (RunPtr& run : runs) {
    RunOutcome out;
    if (Execute(run, out)) {
      done.push_back(run);
      outcomes.push_back(std::move(out));
    }
  }
  if (!done.empty()) Complete(done, outcomes);
}

void EngineCore::Complete(std::vector<RunPtr>& runs, std::vector<RunOutcome>& outcomes) {
  Effects fx;
  CommitQueue::Ticket ticket;
  {
    MutexLock lock(mu_);
    Txn tx = Begin(/*undoable=*/false);
    for (std::size_t i = 0; i < runs.size(); ++i) {
      FinishRun(tx, runs[i], outcomes[i].status, std::move(outcomes[i].counts), outcomes[i].hint);
    }
    // Outcomes are queued without waiting. Runs dispatched here (a pending full resync, a run
    // that waited for a cap) travel in the same item, are released by the writer once it is
    // committed, and are waited for after the lock is let go, as the alarm does.
    ticket = Queue(tx);
    fx = std::move(tx.fx);
    MaybeRearm();
  }
  Apply(fx);
  if (ticket) (void)writer_->Wait(ticket);
}

}  // namespace syncsched::core

// ---------------------------------------------------------------------------------------------
// Cluster mode (docs/cluster.md; Options::cluster)
//
// Which partitions are in memory (active_) follows the keeper's valid leases, reconciled on the
// cluster thread: a partition whose lease ended (or changed epoch, or was refused by the fence) is
// dropped; one held with a valid lease and not loaded is loaded (on the loader's connection,
// without the engine's lock) and merged as a restart recovers. Dispatches check the lease in the
// transaction (Txn::leases); the writer screens every item against tenures_ (cleared at once when
// a lease ends, on the keeper's thread) and the store fences every commit at the rows' tenures:
// the database is the arbiter, the local checks only keep stale work from being sent.

namespace syncsched::core {

void EngineCore::SetPartition(std::uint32_t idx) {
  if (part_of_.size() < cat_.schedules.size()) part_of_.resize(cat_.schedules.size(), -1);
  ScheduleKey key = cat_.KeyOf(idx);
  part_of_[idx] = cluster::PartitionOf(key, partitions_);
}

Status EngineCore::RequirePartitions(std::vector<int> partitions, bool all,
                                     std::string_view what) const {
  // After Shutdown the leases are gone, but GetStatus still reads what the drain left.
  if (!InCluster() || shut_down_) return Status::Ok();
  if (all) {
    partitions.clear();
    for (int p = 0; p < partitions_; ++p) partitions.push_back(p);
  }
  std::sort(partitions.begin(), partitions.end());
  partitions.erase(std::unique(partitions.begin(), partitions.end()), partitions.end());
  std::map<int, std::int64_t> owned = keeper_->Owned();
  for (int p : partitions) {
    auto it = owned.find(p);
    std::int64_t loaded = active_[static_cast<std::size_t>(p)];
    if (it != owned.end() && loaded > 0 && it->second == loaded) continue;
    std::string why = it == owned.end() ? "is held by another engine (or by none, between owners)"
                                        : "is being loaded by this engine";
    return Status::FailedPrecondition(
        "cluster mode: " + std::string(what) + " needs partition " + std::to_string(p) + " of " +
        std::to_string(partitions_) + ", which " + why + "; engine '" + options_.cluster->node +
        "' holds " + std::to_string(owned.size()) +
        ". A catalog command that creates or deletes schedules is served only by an engine "
        "that holds every partition it may touch (docs/cluster.md); nothing was changed");
  }
  return Status::Ok();
}

Status EngineCore::RequireTarget(const Target& target) const {
  if (!InCluster()) return Status::Ok();
  std::uint32_t integ = cat_.FindIntegration(target.integration);
  if (integ == kNone) return Status::Ok();  // Resolve says NOT_FOUND
  if (target.syncs.empty()) {
    return RequirePartitions({}, true, "a command over every sync and variant of a connection");
  }
  std::vector<std::uint32_t> conns;
  if (target.connection) {
    std::uint32_t c = cat_.FindConnection(integ, *target.connection);
    if (c == kNone) return Status::Ok();  // Resolve says NOT_FOUND
    conns.push_back(c);
  } else {
    conns = cat_.integrations[integ].connections;
  }
  std::vector<int> parts;
  for (std::uint32_t c : conns) {
    for (const SyncSelector& sel : target.syncs) {
      parts.push_back(cluster::PartitionOf(target.integration, cat_.connections[c].id, sel.name,
                                           sel.variant, partitions_));
    }
  }
  return RequirePartitions(std::move(parts), false, "this command");
}

bool EngineCore::LeaseAllows(const Txn& tx, std::uint32_t schedule) const {
  if (!InCluster()) return true;
  auto p = static_cast<std::size_t>(part_of_[schedule]);
  return p < tx.leases.size() && tx.leases[p] > 0 && tx.leases[p] == active_[p];
}

std::uint64_t EngineCore::NextUid() {
  if (!InCluster()) return next_uid_++;
  // EnsureUids reserved enough before the command changed anything.
  auto& [next, end] = uid_blocks_.front();
  std::uint64_t uid = next++;
  if (next == end) uid_blocks_.pop_front();
  return uid;
}

Status EngineCore::EnsureUids(std::size_t n) {
  if (!InCluster()) return Status::Ok();
  std::size_t have = 0;
  for (const auto& [next, end] : uid_blocks_) have += end - next;
  MutexLock lock(loader_mu_);
  while (have < n) {
    std::uint64_t count = 0;
    auto first = loader_->ReserveUids(&count);
    if (!first.ok()) return first.status();
    uid_blocks_.emplace_back(*first, *first + count);
    have += count;
  }
  return Status::Ok();
}

void EngineCore::SetTenure(int partition, std::int64_t epoch) {
  std::lock_guard lock(tenures_mu_);
  if (partition >= 0 && static_cast<std::size_t>(partition) < tenures_.size()) {
    tenures_[static_cast<std::size_t>(partition)] = epoch;
  }
}

void EngineCore::OnLeaseChange(const cluster::LeaseChange& change) {
  // The keeper's thread. A lease that ended is written under no more, from now on (its release
  // follows this call); the cluster thread drops its schedules.
  {
    std::lock_guard lock(tenures_mu_);
    for (const cluster::PartitionEpoch& pe : change.lost) {
      auto p = static_cast<std::size_t>(pe.partition);
      if (p < tenures_.size() && tenures_[p] == pe.epoch) tenures_[p] = 0;
    }
  }
  std::lock_guard lock(cl_mu_);
  cl_poke_ = true;
  cl_cv_.notify_all();
}

void EngineCore::OnFenced(const Status& status) {
  fenced_refusals_.fetch_add(1, std::memory_order_relaxed);
  // "... does not hold partition P at epoch E (owner O, epoch F, lease L)" (the message of
  // syncsched_cluster.fence).
  const std::string& m = status.message();
  static constexpr std::string_view kHold = "does not hold partition ";
  static constexpr std::string_view kAt = " at epoch ";
  static constexpr std::string_view kOwner = "(owner ";
  static constexpr std::string_view kNow = ", epoch ";
  FencedRefusal pe;
  if (auto at = m.find(kHold); at != std::string::npos) {
    pe.partition = std::atoi(m.c_str() + at + kHold.size());
    if (auto e = m.find(kAt, at); e != std::string::npos) {
      pe.epoch = std::atoll(m.c_str() + e + kAt.size());
    }
    if (auto o = m.find(kOwner, at); o != std::string::npos) {
      std::int64_t owner = std::atoll(m.c_str() + o + kOwner.size());
      auto n = m.find(kNow, o);
      std::int64_t now_epoch = n == std::string::npos ? 0 : std::atoll(m.c_str() + n + kNow.size());
      // Still this node's at that epoch, only expired in the database: not taken.
      pe.taken = !(owner == keeper_->node_id() && now_epoch == pe.epoch);
    }
  }
  if (pe.partition >= 0) {
    std::lock_guard lock(tenures_mu_);
    auto p = static_cast<std::size_t>(pe.partition);
    if (p < tenures_.size() && tenures_[p] == pe.epoch) tenures_[p] = 0;
  }
  std::lock_guard lock(cl_mu_);
  if (pe.partition >= 0) cl_fenced_.push_back(pe);
  cl_poke_ = true;
  cl_cv_.notify_all();
}

Status EngineCore::Screen(store::Batch& b, std::vector<RunPtr>* runs, bool command) {
  std::lock_guard lock(tenures_mu_);
  auto stale = [&](std::int32_t p, std::int64_t epoch) {
    return p < 0 || static_cast<std::size_t>(p) >= tenures_.size() ||
           tenures_[static_cast<std::size_t>(p)] != epoch || epoch == 0;
  };
  if (command) {
    auto gone = [&]() -> std::optional<std::pair<std::int32_t, std::int64_t>> {
      for (const auto& r : b.schedules) {
        if (stale(r.partition, r.epoch)) return std::pair{r.partition, r.epoch};
      }
      for (const auto& r : b.runs) {
        if (stale(r.partition, r.epoch)) return std::pair{r.partition, r.epoch};
      }
      for (const auto& t : b.fence) {
        if (stale(t.partition, t.epoch)) return std::pair{t.partition, t.epoch};
      }
      return std::nullopt;
    }();
    if (!gone) return Status::Ok();
    return Status::FailedPrecondition(
        "cluster mode: this engine lost partition " + std::to_string(gone->first) +
        " (its lease at epoch " + std::to_string(gone->second) +
        " ended) while the command ran; nothing of it was applied " + cluster::kFencedMarker);
  }
  std::erase_if(b.schedules,
                [&](const store::ScheduleRow& r) { return stale(r.partition, r.epoch); });
  std::erase_if(b.runs, [&](const store::RunRow& r) { return stale(r.partition, r.epoch); });
  std::erase_if(b.fence, [&](const store::Tenure& t) { return stale(t.partition, t.epoch); });
  if (runs != nullptr) {
    for (const RunPtr& r : *runs) {
      if (stale(r->partition, r->epoch)) {
        r->token.Cancel(Status::Cancelled("cluster mode: partition " +
                                          std::to_string(r->partition) +
                                          " was lost before the run's dispatch was recorded"));
      }
    }
  }
  return Status::Ok();
}

void EngineCore::StopCluster() {
  inbox_stop_ = true;
  if (inbox_thread_.joinable()) inbox_thread_.join();
  {
    std::lock_guard lock(cl_mu_);
    cl_stop_ = true;
    cl_cv_.notify_all();
  }
  if (cluster_thread_.joinable()) cluster_thread_.join();
}

void EngineCore::ClusterLoop() {
  pthread_setname_np(pthread_self(), "syncsched-clust");
  // Besides the keeper's wake-ups, a look every lease/4: a load that failed is retried, and runs
  // that waited for a lease that is valid again are released.
  const auto period = std::max(std::chrono::milliseconds(50), options_.cluster->lease / 4);
  std::unique_lock lock(cl_mu_);
  while (!cl_stop_) {
    cl_cv_.wait_for(lock, period, [&] { return cl_stop_ || cl_poke_; });
    if (cl_stop_) break;
    cl_poke_ = false;
    std::vector<FencedRefusal> fenced = std::move(cl_fenced_);
    cl_fenced_.clear();
    lock.unlock();
    Reconcile(std::move(fenced));
    MaybeWithdraw();
    // Partitions just loaded: the catalog applied to them (a base schedule whose connection or
    // sync was created through an engine that did not hold the partition).
    if (catalog_due_.exchange(false) && !SyncCatalog().ok()) catalog_due_ = true;
    lock.lock();
  }
}

void EngineCore::DropPartitions(const std::vector<int>& partitions, Effects& fx) {
  if (partitions.empty()) return;
  std::vector<bool> drop(static_cast<std::size_t>(partitions_), false);
  for (int p : partitions) drop[static_cast<std::size_t>(p)] = true;
  for (std::uint32_t idx = 0; idx < cat_.schedules.size() && idx < part_of_.size(); ++idx) {
    Schedule& s = cat_.schedules[idx];
    if (!s.live || part_of_[idx] < 0 || !drop[static_cast<std::size_t>(part_of_[idx])]) continue;
    if (s.run != kNone) {
      RunPtr run = runs_[s.run];
      if (run) {
        fx.cancel.emplace_back(
            run->token,
            Status::Cancelled("cluster mode: partition " + std::to_string(part_of_[idx]) +
                              " was lost by this engine; its new owner "
                              "records this run as interrupted"));
      }
      runs_[s.run].reset();
      free_runs_.push_back(s.run);
      deadlines_.Cancel(idx);
      CountInFlight(idx, -1);
      s.run = kNone;
    }
    slots_.Cancel(idx);
    retries_.Cancel(idx);
    if (s.flags & kWaiting) --metrics_.runs_waiting;  // its queue entry is skipped lazily
    waiting_.erase(idx);
    retry_info_.erase(idx);
    decisions_.erase(idx);
    if (s.state == ScheduleState::kStarted) --metrics_.schedules_started;
    if (s.state == ScheduleState::kPaused) --metrics_.schedules_paused;
    part_of_[idx] = -1;
    cat_.RemoveSchedule(idx);
  }
  for (int p : partitions) {
    active_[static_cast<std::size_t>(p)] = 0;
    SetTenure(p, 0);
  }
}

void EngineCore::Reconcile(std::vector<FencedRefusal> fenced) {
  // A block of uids kept in reserve, taken here without the engine's lock, so that a command
  // rarely waits for the loader's connection (busy with a partition load) under it.
  bool low = false;
  {
    MutexLock lock(mu_);
    std::uint64_t have = 0;
    for (const auto& [next, end] : uid_blocks_) have += end - next;
    low = have < store::kPostgresUidBlock / 4;
  }
  if (low) {
    std::uint64_t count = 0;
    Result<std::uint64_t> first = [&] {
      MutexLock lock(loader_mu_);
      return loader_->ReserveUids(&count);
    }();
    if (first.ok()) {
      MutexLock lock(mu_);
      uid_blocks_.emplace_back(*first, *first + count);
    }
  }
  std::map<int, std::int64_t> load;
  std::uint64_t catalog_local = 0;  // the catalog's changes in memory before the load's read
  {
    Effects fx;
    {
      MutexLock lock(mu_);
      if (shut_down_) return;
      catalog_local = catalog_local_;
      std::vector<bool> refused(static_cast<std::size_t>(partitions_), false);
      for (const FencedRefusal& pe : fenced) {
        auto p = static_cast<std::size_t>(pe.partition);
        if (p >= quarantine_.size()) continue;
        // A tenure taken over is never loaded again; one that only expired is dropped (what
        // memory holds may be ahead of the database) and loaded again if the keeper renews it.
        if (pe.taken) quarantine_[p] = std::max(quarantine_[p], pe.epoch);
        if (active_[p] == pe.epoch) refused[p] = true;
      }
      std::map<int, std::int64_t> owned = keeper_->Owned();
      std::vector<int> drop;
      for (int p = 0; p < partitions_; ++p) {
        std::int64_t loaded = active_[static_cast<std::size_t>(p)];
        if (loaded == 0) continue;
        auto it = owned.find(p);
        bool keep = it != owned.end() && it->second == loaded &&
                    quarantine_[static_cast<std::size_t>(p)] < loaded &&
                    !refused[static_cast<std::size_t>(p)];
        if (!keep) drop.push_back(p);
      }
      DropPartitions(drop, fx);
      for (const auto& [p, epoch] : owned) {
        auto i = static_cast<std::size_t>(p);
        if (i < active_.size() && active_[i] == 0 && epoch > quarantine_[i]) load[p] = epoch;
      }
      if (metrics_.runs_waiting > 0) {
        drain_due_ = true;  // runs that waited for a lease
        MaybeRearm();
      }
    }
    Apply(fx);
  }
  if (load.empty()) return;
  std::vector<int> parts;
  for (const auto& [p, e] : load) parts.push_back(p);
  Result<store::Snapshot> snap = [&] {
    MutexLock lock(loader_mu_);
    return loader_->LoadPartitions(parts);
  }();
  if (!snap.ok()) return;  // retried at the next look (ClusterLoop's period)
  std::function<void(const std::vector<int>&, bool)> hook;
  {
    std::lock_guard lock(cl_mu_);
    hook = load_hook_;
  }
  if (hook) hook(parts, /*merged=*/false);
  // Commands received through other engines and pending in these partitions: applied before
  // anything of them is dispatched (below, under the same hold of the lock as the merge). Read
  // after the claim, as the load was: the previous owner can apply nothing more.
  Result<std::vector<cluster::PendingCommand>> pending = inbox_->Pending(parts);
  Effects fx;
  {
    MutexLock lock(mu_);
    if (shut_down_) return;
    // Connections this engine deleted itself while the load read: the load may still hold them
    // (a local addition is harmless: its schedules in these partitions are created after the
    // merge).
    std::set<std::pair<std::string, std::string>> deleted_here;
    for (const LocalDeletion& d : local_deleted_) {
      if (d.stamp > catalog_local) deleted_here.emplace(d.integration, d.connection);
    }
    // Only partitions still held at the epoch they were loaded for (the load committed after
    // the claim, so it saw every commit of the previous owners).
    std::map<int, std::int64_t> owned = keeper_->Owned();
    std::vector<bool> take(static_cast<std::size_t>(partitions_), false);
    for (const auto& [p, epoch] : load) {
      auto it = owned.find(p);
      if (it != owned.end() && it->second == epoch && active_[static_cast<std::size_t>(p)] == 0) {
        take[static_cast<std::size_t>(p)] = true;
        active_[static_cast<std::size_t>(p)] = epoch;
        SetTenure(p, epoch);
      }
    }
    store::Snapshot& s = *snap;
    // The catalog this engine applied may be newer than the load's (read before a change this
    // engine has applied since): then the load's connections are not added back, and its rows
    // of a connection this engine no longer has are a deleted connection's.
    const bool older = s.catalog_version < catalog_applied_;
    if (older) s.connections.clear();
    if (!deleted_here.empty()) {
      std::erase_if(s.connections, [&](const store::ConnectionRow& c) {
        return deleted_here.count({c.integration, c.connection}) != 0;
      });
    }
    std::set<std::pair<std::string_view, std::string_view>> listed;  // by the load, when newer
    for (const store::ConnectionRow& c : s.connections) listed.emplace(c.integration, c.connection);
    auto live = [&](const store::ScheduleRow& r) REQUIRES(mu_) {
      if (!older) return listed.count({r.integration, r.connection}) != 0;
      std::uint32_t integ = cat_.FindIntegration(r.integration);
      return integ != kNone && cat_.FindConnection(integ, r.connection) != kNone;
    };
    if (Status st = RecoverCatalog(s); !st.ok()) return;
    std::erase_if(s.schedules, [&](const store::ScheduleRow& r) {
      return r.partition < 0 || r.partition >= partitions_ ||
             !take[static_cast<std::size_t>(r.partition)];
    });
    // A schedule whose connection is not live was deleted through an engine that did not hold
    // its partition, and not yet by the partition's owner: deleted now, never loaded (the load's
    // snapshot is consistent: a connection's row is written with or before its schedules, and
    // deleted before them; and this engine's catalog, when newer, holds every connection that
    // existed at its version).
    std::vector<store::Tenure> orphans;  // their partitions at the epochs loaded
    std::vector<std::uint64_t> orphan_uids;
    std::erase_if(s.schedules, [&](const store::ScheduleRow& r) REQUIRES(mu_) {
      if (live(r)) return false;
      orphan_uids.push_back(r.uid);
      store::Tenure t{r.partition, load.at(r.partition)};
      if (std::find(orphans.begin(), orphans.end(), t) == orphans.end()) orphans.push_back(t);
      return true;
    });
    std::unordered_set<std::uint64_t> kept;
    for (const store::ScheduleRow& r : s.schedules) kept.insert(r.uid);
    std::erase_if(s.unfinished_runs,
                  [&](const store::RunRow& r) { return kept.count(r.schedule_uid) == 0; });
    Txn tx = Begin(/*undoable=*/false);
    if (Status st = RecoverSchedules(tx, s); !st.ok()) {
      Finish(tx);
      return;
    }
    catalog_due_ = true;
    catalog_whole_due_ = true;
    if (metrics_.runs_waiting > 0) drain_due_ = true;
    (void)Queue(tx);  // the interrupted runs' records; nothing is dispatched here
    if (!orphan_uids.empty()) {
      Txn gone = Begin(/*undoable=*/true);
      gone.batch.schedules_deleted = std::move(orphan_uids);
      gone.batch.fence = std::move(orphans);
      // Refused (the partition lost meanwhile): whoever loads it next deletes them.
      (void)Commit(gone);
    }
    fx = std::move(tx.fx);
    if (pending.ok() && !pending->empty()) ApplyPendingLocked(*pending, fx);
    inbox_poke_ = true;
    MaybeRearm();
  }
  Apply(fx);
  if (hook) hook(parts, /*merged=*/true);
}

}  // namespace syncsched::core
