#include "core/engine_core.h"

#include <pthread.h>

#include <algorithm>
#include <exception>
#include <tuple>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include "core/commit_queue.h"
#include "core/grid.h"
#include "core/names.h"
#include "core/worker_pool.h"
#include "store/sqlite_store.h"

namespace syncsched::core {
namespace {

std::string CallbackKey(std::string_view integration, std::string_view sync) {
  std::string k(integration);
  k += '\0';
  k += sync;
  return k;
}

std::string RunId(std::uint64_t uid, std::int64_t slot) {
  return std::to_string(uid) + "-" + std::to_string(slot);
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
    return Status::InvalidArgument(
        "options.frequency_bounds: min must be positive and no greater than max");
  }
  if (options.default_run_timeout.count() <= 0) {
    return Status::InvalidArgument("options.default_run_timeout must be positive");
  }
  if (!options.run_executor && options.worker_threads == 0) {
    return Status::InvalidArgument("options.worker_threads must be at least 1");
  }
  if (options.max_fires_per_wakeup == 0) {
    return Status::InvalidArgument("options.max_fires_per_wakeup must be at least 1");
  }
  if (options.run_history > 1000) {
    return Status::InvalidArgument("options.run_history is " + std::to_string(options.run_history) +
                                   "; at most 1000");
  }
  std::shared_ptr<EngineCore> core(new EngineCore(std::move(options)));
  if (Status s = core->Init(wrap); !s.ok()) {
    core->Shutdown();
    return s;
  }
  return core;
}

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
  timers_held_ = options_.hold_timers;
  if (!options_.database_path.empty()) {
    store::SqliteStoreOptions so;
    so.path = options_.database_path;
    so.synchronous_full = options_.synchronous_full;
    so.history_per_schedule = options_.run_history;
    auto opened = store::OpenSqliteStore(so);
    if (!opened.ok()) return opened.status();
    store_ = std::move(opened).value();
    if (wrap) store_ = wrap(std::move(store_));
    auto snapshot = store_->Load();
    if (!snapshot.ok()) return snapshot.status();
    std::lock_guard lock(mu_);
    if (Status s = Recover(std::move(snapshot).value()); !s.ok()) return s;
    std::weak_ptr<EngineCore> weak = weak_from_this();
    writer_ = std::make_unique<CommitQueue>(
        *store_, [weak](std::vector<RunPtr>&& runs, const Status& committed) {
          if (auto core = weak.lock()) {
            core->Release(std::move(runs), committed);
          } else {
            for (const RunPtr& r : runs) r->token.Cancel(Status::Cancelled("engine shut down"));
          }
        });
    MaybeRearm();
  }
  return Status();
}

Status EngineCore::Recover(store::Snapshot snap) {
  std::int64_t now = NowMs();
  for (store::SyncRow& row : snap.syncs) {
    std::uint32_t integ = cat_.FindIntegration(row.integration);
    if (integ == kNone) integ = cat_.AddIntegration(row.integration);
    SyncInfo info;
    info.name = row.name;
    info.frequency_text = row.frequency_text;
    info.frequency_ms = row.frequency_ms;
    info.auto_start = row.auto_start;
    info.timeout_ms = row.timeout_ms;
    info.heartbeat_timeout_ms = row.heartbeat_timeout_ms;
    DecodePolicy(row.policy, info);
    if (info.frequency_ms <= 0) {
      return Status::Internal(options_.database_path + ": sync " + Quote(row.name) +
                              " has a non-positive frequency; the database is corrupt");
    }
    cat_.AddSync(integ, std::move(info));
  }
  for (const store::IntegrationRow& row : snap.integrations) {
    std::uint32_t integ = cat_.FindIntegration(row.integration);
    if (integ == kNone) integ = cat_.AddIntegration(row.integration);
    cat_.integrations[integ].max_concurrency = static_cast<std::size_t>(row.max_concurrency);
  }
  for (store::ConnectionRow& row : snap.connections) {
    std::uint32_t integ = cat_.FindIntegration(row.integration);
    if (integ == kNone) integ = cat_.AddIntegration(row.integration);
    if (cat_.FindConnection(integ, row.connection) == kNone) {
      cat_.AddConnection(integ, row.connection);
    }
  }
  next_uid_ = snap.max_uid + 1;
  std::unordered_map<std::uint64_t, std::uint32_t> by_uid;
  by_uid.reserve(snap.schedules.size());
  std::vector<std::pair<std::int64_t, std::uint32_t>> missed;  // (due slot, schedule)
  // Schedules armed in due order: the wheel fires due timers in deadline order.
  for (store::ScheduleRow& row : snap.schedules) {
    std::uint32_t integ = cat_.FindIntegration(row.integration);
    std::uint32_t sync = integ == kNone ? kNone : cat_.FindSync(integ, row.sync);
    std::uint32_t conn = integ == kNone ? kNone : cat_.FindConnection(integ, row.connection);
    if (sync == kNone || conn == kNone) {
      return Status::Internal(options_.database_path + ": schedule " + std::to_string(row.uid) +
                              " names a sync or connection that is not stored; the database is "
                              "corrupt");
    }
    std::uint32_t idx = cat_.AddSchedule(conn, sync, cat_.InternVariant(row.variant), row.uid);
    next_uid_ = std::max(next_uid_, row.uid + 1);
    by_uid.emplace(row.uid, idx);
    Schedule& s = cat_.schedules[idx];
    s.anchor = row.anchor_ms;
    s.freq_override = row.frequency_override_ms;
    s.next_slot = row.next_slot_ms;
    s.runs = static_cast<std::uint32_t>(row.runs);
    s.failures = static_cast<std::uint32_t>(row.failures);
    s.skipped = static_cast<std::uint32_t>(row.skipped);
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
  // Runs in flight at the crash: recorded as interrupted errors, each a missed slot.
  store::Batch batch;
  for (store::RunRow& run : snap.unfinished_runs) {
    auto it = by_uid.find(run.schedule_uid);
    run.finished_ms = now;
    run.ok = 0;
    run.error = "interrupted: the engine stopped while the run was in flight";
    if (it != by_uid.end()) {
      Schedule& s = cat_.schedules[it->second];
      run.number = ++s.runs;
      ++s.failures;
      ++s.skipped;
      s.last_start = run.started_ms;
      s.last_finish = now;
      s.last_ok = 0;
      cat_.details[it->second].last_error = run.error;
      batch.schedules.push_back(RowOf(it->second));
      batch.runs.push_back(std::move(run));
    }
  }
  return Persist(batch);
}

EngineCore::~EngineCore() { Shutdown(); }

void EngineCore::Shutdown() {
  std::vector<CancellationToken> tokens;
  {
    std::lock_guard lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    if (alarm_) alarm_->Cancel();
    for (const RunPtr& r : runs_) {
      if (r) tokens.push_back(r->token);
    }
  }
  for (auto& t : tokens) t.Cancel(Status::Cancelled("engine shutting down"));
  if (pool_) pool_->Stop();
  if (writer_) writer_->Stop();  // commits the outcomes queued by the last runs
  if (owned_io_) {
    owned_io_->stop();
    if (io_thread_.joinable()) io_thread_.join();
  }
  std::lock_guard lock(mu_);
  alarm_.reset();
}

// ---------------------------------------------------------------------------------------------
// Helpers under the lock

std::int64_t EngineCore::NowMs() const { return clock_->Now().time_since_epoch().count(); }

Status EngineCore::Persist(store::Batch& batch) {
  if (!store_ || batch.empty()) return Status();
  if (writer_) return writer_->Commit(std::move(batch));
  return store_->Commit(batch);
}

store::ScheduleRow EngineCore::RowOf(std::uint32_t schedule) const {
  const Schedule& s = cat_.schedules[schedule];
  store::ScheduleRow row;
  row.uid = s.uid;
  // The row was committed when the schedule was created, before anything could change it.
  row.update_only = true;
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
  if (auto it = cat_.details.find(schedule); it != cat_.details.end()) {
    row.last_error = it->second.last_error;
  }
  if (s.run != kNone && runs_[s.run]) row.in_flight = InFlightRow(*runs_[s.run]);
  return row;
}

store::ScheduleRow EngineCore::NewScheduleRow(std::uint64_t uid, std::string_view integration,
                                              std::string_view connection, const SyncInfo& sync,
                                              std::string_view variant, std::int64_t now) {
  store::ScheduleRow row;
  row.uid = uid;
  row.integration = std::string(integration);
  row.connection = std::string(connection);
  row.sync = sync.name;
  row.variant = std::string(variant);
  if (sync.auto_start) {  // as CreateSchedule will start it
    row.state = static_cast<std::uint8_t>(ScheduleState::kStarted);
    ScheduleKey key;
    if (sync.spread) key = {row.integration, row.connection, row.sync, row.variant};
    std::tie(row.anchor_ms, row.next_slot_ms) = StartGrid(key, sync.spread, sync.frequency_ms, now);
  }
  return row;
}

std::shared_ptr<const Callback> EngineCore::CallbackFor(std::uint32_t integration,
                                                        std::string_view sync) const {
  auto it = callbacks_.find(CallbackKey(cat_.integrations[integration].key, sync));
  return it == callbacks_.end() ? nullptr : it->second;
}

void EngineCore::StartSchedule(std::uint32_t schedule, std::int64_t now, Effects& fx) {
  Schedule& s = cat_.schedules[schedule];
  s.state = ScheduleState::kStarted;
  bool spread = cat_.syncs[s.sync].spread;
  std::tie(s.anchor, s.next_slot) =
      StartGrid(spread ? cat_.KeyOf(schedule) : ScheduleKey{}, spread, cat_.FrequencyOf(s), now);
  s.flags &= static_cast<std::uint8_t>(~kHinted);
  slots_.Arm(schedule, s.next_slot);
  ++metrics_.schedules_started;
  if (s.flags & kWaiting) {
    // A run already waits for a cap (a trigger of the paused schedule): it stands for this one.
  } else if (s.run == kNone) {
    TryDispatch(schedule, now, now, RunMode::kIncremental, /*scheduled=*/true, fx);
  } else if (runs_[s.run]->cancel_requested && s.pending == 0) {
    // The run in flight is being stopped (a pause just before): run afresh once it has.
    s.pending = 1 + static_cast<std::uint8_t>(RunMode::kIncremental);
  }
  // Otherwise a run in flight (a trigger of the paused schedule) stands for the immediate run.
}

void EngineCore::DispatchRun(std::uint32_t schedule, std::int64_t now, std::int64_t slot,
                             RunMode mode, bool scheduled, Effects& fx, int attempt,
                             std::string run_id) {
  Schedule& s = cat_.schedules[schedule];
  auto run = std::make_shared<RunState>();
  run->schedule = schedule;
  run->uid = s.uid;
  run->slot = slot;
  run->dispatched = now;
  run->mode = mode;
  run->attempt = attempt;
  run->key = cat_.KeyOf(schedule);
  if (!run_id.empty()) {
    run->run_id = std::move(run_id);  // a retry keeps its slot's id
  } else if (scheduled) {
    run->run_id = RunId(s.uid, slot);
  } else {
    run->run_id = RunId(s.uid, slot) + "-t" + std::to_string(++trigger_seq_);
  }
  run->callback = cat_.syncs[s.sync].callback ? cat_.syncs[s.sync].callback : fallback_;
  run->last_heartbeat.store(now, std::memory_order_relaxed);
  if (free_runs_.empty()) {
    run->table_slot = static_cast<std::uint32_t>(runs_.size());
    runs_.push_back(run);
  } else {
    run->table_slot = free_runs_.back();
    free_runs_.pop_back();
    runs_[run->table_slot] = run;
  }
  s.run = run->table_slot;
  ArmRunDeadline(schedule, *run, now);
  ++metrics_.runs_started;
  CountInFlight(schedule, +1);
  if (scheduled) Observe(metrics_.fire_lateness_seconds, static_cast<double>(now - slot) / 1000.0);
  fx.dispatch.push_back(std::move(run));
}

std::int64_t EngineCore::TimeoutOf(const SyncInfo& sync) const {
  return sync.timeout_ms ? sync.timeout_ms
                         : static_cast<std::int64_t>(options_.default_run_timeout.count());
}

void EngineCore::ArmRunDeadline(std::uint32_t schedule, const RunState& run, std::int64_t now) {
  const SyncInfo& sync = cat_.syncs[cat_.schedules[schedule].sync];
  std::int64_t timeout = TimeoutOf(sync);
  std::int64_t deadline = run.dispatched + timeout;
  if (sync.heartbeat_timeout_ms) {
    std::int64_t hb =
        run.last_heartbeat.load(std::memory_order_relaxed) + sync.heartbeat_timeout_ms;
    deadline = std::min(deadline, std::max(hb, now));
  }
  deadlines_.Arm(schedule, deadline);
}

void EngineCore::FinishRun(const RunPtr& run, const Status& status, std::vector<ModelCounts> counts,
                           std::int64_t now, Effects& fx, std::optional<Millis> hint) {
  Schedule& s = cat_.schedules[run->schedule];
  // Late (the schedule is gone, or the run was ended by its timeout and the slot of the run
  // table reused, perhaps by the schedule's next run): ignored.
  if (!s.live || s.uid != run->uid || s.run != run->table_slot || runs_[s.run] != run) return;
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
    d.last_counts.clear();
  }
  if (s.pending && !shut_down_) {
    auto mode = static_cast<RunMode>(s.pending - 1);
    s.pending = 0;
    TryDispatch(run->schedule, now, now, mode, /*scheduled=*/false, fx);
  } else {
    MaybeRetry(*run, status, now);
  }
  if (hint && s.state == ScheduleState::kStarted && !(s.flags & kRetrying)) {
    Millis h = std::clamp(*hint, options_.frequency_bounds.min, options_.frequency_bounds.max);
    s.next_slot = now + h.count();
    s.flags |= kHinted;
    slots_.Arm(run->schedule, s.next_slot);
    Decide(run->schedule, Reason::kHint, now, "next run in " + FormatFrequency(h));
  }
  DrainWaiting(now, fx);
  if (store_) {
    store::RunRow row = InFlightRow(*run);
    row.number = s.runs;
    row.finished_ms = now;
    row.ok = static_cast<std::int8_t>(status.ok());
    if (!status.ok()) row.error = cat_.details[run->schedule].last_error;
    fx.record.runs.push_back(std::move(row));
    // A run dispatched here (a pending resync) carries the row itself (QueueRecords).
    if (s.run == kNone) fx.record.schedules.push_back(RowOf(run->schedule));
  }
}

void EngineCore::TrimRunTables(std::int64_t now) {
  // After a burst (a start of a million schedules puts a million runs in flight at once) the run
  // table and the run-deadline wheel keep their peak size; once no run is in flight, give it back.
  if (metrics_.runs_in_flight != 0 || runs_.size() < 4096) return;
  runs_ = {};
  free_runs_ = {};
  deadlines_ = wheel::TimerWheel(now);
}

void EngineCore::AbandonRun(std::uint32_t schedule, Status reason, Effects& fx) {
  Schedule& s = cat_.schedules[schedule];
  if (s.run == kNone) return;
  RunPtr run = runs_[s.run];
  fx.cancel.emplace_back(run->token, std::move(reason));
  runs_[s.run].reset();
  free_runs_.push_back(s.run);
  s.run = kNone;
  s.pending = 0;
  deadlines_.Cancel(schedule);
  CountInFlight(schedule, -1);
  ++metrics_.runs_cancelled;
  ++metrics_.runs_failed;
}

void EngineCore::CreateSchedule(std::uint32_t connection, std::uint32_t sync, std::uint32_t variant,
                                std::int64_t now, Effects& fx) {
  std::uint32_t idx = cat_.AddSchedule(connection, sync, variant, next_uid_++);
  if (cat_.syncs[sync].auto_start) {
    StartSchedule(idx, now, fx);
  } else {
    ++metrics_.schedules_paused;
  }
}

void EngineCore::DeleteSchedules(const std::vector<std::uint32_t>& schedules, Effects& fx) {
  for (std::uint32_t idx : schedules) {
    Schedule& s = cat_.schedules[idx];
    AbandonRun(idx, Status::Cancelled("schedule deleted"), fx);
    DropWaiting(idx);
    DropRetry(idx);
    decisions_.erase(idx);
    slots_.Cancel(idx);
    if (s.state == ScheduleState::kStarted) --metrics_.schedules_started;
    if (s.state == ScheduleState::kPaused) --metrics_.schedules_paused;
    cat_.RemoveSchedule(idx);
  }
}

void EngineCore::Regrid(std::uint32_t schedule, std::int64_t now) {
  Schedule& s = cat_.schedules[schedule];
  if (s.state != ScheduleState::kStarted) return;
  std::int64_t freq = cat_.FrequencyOf(s);
  if (cat_.syncs[s.sync].spread) {
    // The phase of the new period; never closer than half a period to the last run.
    std::int64_t not_before = std::max(now + 1, s.last_start + (freq + 1) / 2);
    s.anchor = SpreadSlot(schedule, freq, not_before);
    s.next_slot = s.anchor;
  } else {
    s.next_slot = NextSlotAfter(s.anchor, freq, now);
  }
  s.flags &= static_cast<std::uint8_t>(~kHinted);
  slots_.Arm(schedule, s.next_slot);
}

void EngineCore::OnSlot(std::uint32_t schedule, std::int64_t deadline, std::int64_t now,
                        Effects& fx) {
  Schedule& s = cat_.schedules[schedule];
  if (!s.live || s.state != ScheduleState::kStarted) return;
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
  if (s.flags & kRetrying) DropRetry(schedule);  // the slot wins over a pending retry
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
    TryDispatch(schedule, now, slot, RunMode::kIncremental, /*scheduled=*/true, fx);
  }
  slots_.Arm(schedule, s.next_slot);
}

void EngineCore::OnRunDeadline(std::uint32_t schedule, std::int64_t now, Effects& fx) {
  Schedule& s = cat_.schedules[schedule];
  if (!s.live || s.run == kNone) return;
  RunPtr run = runs_[s.run];
  const SyncInfo& sync = cat_.syncs[s.sync];
  std::int64_t timeout = TimeoutOf(sync);
  Status reason;
  if (now >= run->dispatched + timeout) {
    reason = Status::DeadlineExceeded("run timed out after " + FormatFrequency(Millis(timeout)));
  } else if (sync.heartbeat_timeout_ms &&
             now >=
                 run->last_heartbeat.load(std::memory_order_relaxed) + sync.heartbeat_timeout_ms) {
    reason = Status::DeadlineExceeded("no heartbeat for " +
                                      FormatFrequency(Millis(sync.heartbeat_timeout_ms)));
  } else {
    ArmRunDeadline(schedule, *run, now);  // a heartbeat pushed the deadline back
    return;
  }
  fx.cancel.emplace_back(run->token, reason);
  FinishRun(run, reason, {}, now, fx);
}

void EngineCore::ReleaseTimers() {
  std::lock_guard lock(mu_);
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
  if (!next) return;  // an alarm still set fires harmlessly
  if (alarm_set_ && alarm_at_ <= *next) return;
  alarm_set_ = true;
  alarm_at_ = *next;
  std::weak_ptr<EngineCore> weak = weak_from_this();
  alarm_->SetAt(TimePoint(Millis(*next)), [weak] {
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
  if (s.flags & kRetrying) st.next_retry = TimePoint(Millis(retries_.DeadlineOf(schedule)));
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
// Catalog commands

Status EngineCore::DefineSync(std::string_view integration, const SyncDefinition& def) {
  if (Status s = ValidateIntegration(integration); !s.ok()) return s;
  if (Status s = ValidateName(def.name, "sync name"); !s.ok()) return s;
  auto freq = ParseFrequency(def.frequency, options_.frequency_bounds);
  if (!freq.ok()) {
    return Status::InvalidArgument("sync " + Quote(def.name) + ": " + freq.status().message());
  }
  if (def.timeout && def.timeout->count() <= 0) {
    return Status::InvalidArgument("sync " + Quote(def.name) + ": timeout must be positive");
  }
  if (def.heartbeat_timeout && def.heartbeat_timeout->count() <= 0) {
    return Status::InvalidArgument("sync " + Quote(def.name) +
                                   ": heartbeat_timeout must be positive");
  }
  if (def.retry.max < 0 || def.retry.max > 100) {
    return Status::InvalidArgument("sync " + Quote(def.name) + ": retry.max must be 0 to 100");
  }
  if (def.retry.max > 0 && def.retry.backoff.count() <= 0) {
    return Status::InvalidArgument("sync " + Quote(def.name) + ": retry.backoff must be positive");
  }
  Effects fx;
  {
    std::lock_guard lock(mu_);
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
      const SyncInfo& old = cat_.syncs[sync];
      if (old.frequency_ms == info.frequency_ms && old.frequency_text == info.frequency_text &&
          old.auto_start == info.auto_start && old.timeout_ms == info.timeout_ms &&
          old.heartbeat_timeout_ms == info.heartbeat_timeout_ms && old.overlap == info.overlap &&
          old.retry_max == info.retry_max && old.retry_backoff_ms == info.retry_backoff_ms &&
          old.spread == info.spread) {
        return Status();  // the same definition again: nothing to do
      }
    }
    store::Batch batch;
    if (store_) {
      batch.syncs.push_back(store::SyncRow{std::string(integration), info.name, info.frequency_text,
                                           info.frequency_ms, info.auto_start, info.timeout_ms,
                                           info.heartbeat_timeout_ms, EncodePolicy(info)});
    }
    // Schedules affected: with a new sync, one base schedule per connection; with a changed
    // frequency, the sync's schedules without an override.
    std::int64_t now = NowMs();
    if (sync != kNone) {
      bool regrid = cat_.syncs[sync].frequency_ms != info.frequency_ms;
      std::vector<std::uint32_t> affected;
      if (regrid) {
        for (std::uint32_t c : cat_.integrations[integ].connections) {
          for (std::uint32_t s : cat_.connections[c].schedules) {
            if (cat_.schedules[s].sync == sync && cat_.schedules[s].freq_override == 0) {
              affected.push_back(s);
            }
          }
        }
      }
      std::int64_t old_freq = cat_.syncs[sync].frequency_ms;
      cat_.syncs[sync].frequency_ms = info.frequency_ms;  // tentatively, to compute the rows
      for (std::uint32_t s : affected) {
        Regrid(s, now);
        if (store_) batch.schedules.push_back(RowOf(s));
      }
      if (Status st = Persist(batch); !st.ok()) {
        cat_.syncs[sync].frequency_ms = old_freq;
        for (std::uint32_t s : affected) Regrid(s, now);
        return st;
      }
      info.integration = integ;
      info.callback = cat_.syncs[sync].callback;
      cat_.syncs[sync] = std::move(info);
    } else {
      if (store_ && integ != kNone) {
        std::uint64_t uid = next_uid_;
        for (std::uint32_t c : cat_.integrations[integ].connections) {
          batch.schedules.push_back(
              NewScheduleRow(uid++, integration, cat_.connections[c].id, info, kBaseVariant, now));
        }
      }
      if (Status st = Persist(batch); !st.ok()) return st;
      if (integ == kNone) integ = cat_.AddIntegration(std::string(integration));
      info.callback = CallbackFor(integ, info.name);
      sync = cat_.AddSync(integ, std::move(info));
      for (std::uint32_t c : cat_.integrations[integ].connections) {
        CreateSchedule(c, sync, 0, now, fx);
      }
    }
    RecordDispatch(fx);
    MaybeRearm();
  }
  Apply(fx);
  return Status();
}

Status EngineCore::RegisterCallback(std::string_view integration, std::string_view sync,
                                    Callback cb) {
  if (Status s = ValidateIntegration(integration); !s.ok()) return s;
  if (Status s = ValidateName(sync, "sync name"); !s.ok()) return s;
  auto ptr = std::make_shared<const Callback>(std::move(cb));
  std::lock_guard lock(mu_);
  callbacks_[CallbackKey(integration, sync)] = ptr;
  std::uint32_t integ = cat_.FindIntegration(integration);
  if (integ != kNone) {
    if (std::uint32_t s = cat_.FindSync(integ, sync); s != kNone) cat_.syncs[s].callback = ptr;
  }
  return Status();
}

void EngineCore::SetFallbackCallback(Callback cb) {
  auto ptr = (cb.sync || cb.async) ? std::make_shared<const Callback>(std::move(cb)) : nullptr;
  std::lock_guard lock(mu_);
  fallback_ = std::move(ptr);
}

Status EngineCore::AddConnection(std::string_view integration, std::string_view connection) {
  if (Status s = ValidateIntegration(integration); !s.ok()) return s;
  if (Status s = ValidateConnection(connection); !s.ok()) return s;
  Effects fx;
  {
    std::lock_guard lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    std::uint32_t integ = cat_.FindIntegration(integration);
    if (integ == kNone)
      return Status::NotFound("integration " + Quote(integration) + " does not exist");
    if (cat_.FindConnection(integ, connection) != kNone) {
      return Status::AlreadyExists("connection " + Quote(connection) +
                                   " already exists in integration " + Quote(integration));
    }
    std::int64_t now = NowMs();
    // Plan the rows first: uids are taken in the same order CreateSchedule will take them.
    store::Batch batch;
    if (store_) {
      batch.connections_added.push_back({std::string(integration), std::string(connection)});
      std::uint64_t uid = next_uid_;
      for (std::uint32_t sync : cat_.integrations[integ].syncs) {
        batch.schedules.push_back(
            NewScheduleRow(uid++, integration, connection, cat_.syncs[sync], kBaseVariant, now));
      }
      if (Status st = Persist(batch); !st.ok()) return st;
    }
    std::uint32_t conn = cat_.AddConnection(integ, std::string(connection));
    for (std::uint32_t sync : cat_.integrations[integ].syncs)
      CreateSchedule(conn, sync, 0, now, fx);
    RecordDispatch(fx);
    MaybeRearm();
  }
  Apply(fx);
  return Status();
}

Status EngineCore::DeleteConnection(std::string_view integration, std::string_view connection) {
  Effects fx;
  {
    std::lock_guard lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    std::uint32_t integ = cat_.FindIntegration(integration);
    if (integ == kNone)
      return Status::NotFound("integration " + Quote(integration) + " does not exist");
    std::uint32_t conn = cat_.FindConnection(integ, connection);
    if (conn == kNone) {
      return Status::NotFound("connection " + Quote(connection) +
                              " does not exist in integration " + Quote(integration));
    }
    std::vector<std::uint32_t> scheds = cat_.connections[conn].schedules;
    store::Batch batch;
    if (store_) {
      batch.connections_deleted.push_back({std::string(integration), std::string(connection)});
      for (std::uint32_t s : scheds) batch.schedules_deleted.push_back(cat_.schedules[s].uid);
      if (Status st = Persist(batch); !st.ok()) return st;
    }
    DeleteSchedules(scheds, fx);
    cat_.RemoveConnection(conn);
    DrainWaiting(NowMs(), fx);  // the cancelled runs freed their places under the caps
    RecordDispatch(fx);
    MaybeRearm();
  }
  Apply(fx);
  return Status();
}

Status EngineCore::CreateVariant(const ScheduleKey& key) {
  if (Status s = ValidateName(key.variant, "variant"); !s.ok()) return s;
  if (key.variant == kBaseVariant) {
    return Status::InvalidArgument("variant \"base\" always exists and cannot be created");
  }
  Effects fx;
  {
    std::lock_guard lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    std::uint32_t integ = cat_.FindIntegration(key.integration);
    if (integ == kNone)
      return Status::NotFound("integration " + Quote(key.integration) + " does not exist");
    std::uint32_t sync = cat_.FindSync(integ, key.sync);
    if (sync == kNone) {
      return Status::NotFound("sync " + Quote(key.sync) + " does not exist in integration " +
                              Quote(key.integration));
    }
    std::uint32_t conn = cat_.FindConnection(integ, key.connection);
    if (conn == kNone) {
      return Status::NotFound("connection " + Quote(key.connection) +
                              " does not exist in integration " + Quote(key.integration));
    }
    std::uint32_t variant = cat_.FindVariant(key.variant);
    if (variant != kNone && cat_.FindSchedule(conn, sync, variant) != kNone) {
      return Status::AlreadyExists("variant " + Quote(key.variant) + " of sync " + Quote(key.sync) +
                                   " already exists on connection " + Quote(key.connection));
    }
    std::int64_t now = NowMs();
    if (store_) {
      store::Batch batch;
      batch.schedules.push_back(NewScheduleRow(next_uid_, key.integration, key.connection,
                                               cat_.syncs[sync], key.variant, now));
      if (Status st = Persist(batch); !st.ok()) return st;
    }
    CreateSchedule(conn, sync, cat_.InternVariant(key.variant), now, fx);
    RecordDispatch(fx);
    MaybeRearm();
  }
  Apply(fx);
  return Status();
}

Status EngineCore::DeleteVariant(const ScheduleKey& key) {
  if (key.variant == kBaseVariant) {
    return Status::InvalidArgument("variant \"base\" always exists and cannot be deleted");
  }
  Effects fx;
  {
    std::lock_guard lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    std::uint32_t integ = cat_.FindIntegration(key.integration);
    if (integ == kNone)
      return Status::NotFound("integration " + Quote(key.integration) + " does not exist");
    std::uint32_t sync = cat_.FindSync(integ, key.sync);
    if (sync == kNone) {
      return Status::NotFound("sync " + Quote(key.sync) + " does not exist in integration " +
                              Quote(key.integration));
    }
    std::uint32_t conn = cat_.FindConnection(integ, key.connection);
    if (conn == kNone) {
      return Status::NotFound("connection " + Quote(key.connection) +
                              " does not exist in integration " + Quote(key.integration));
    }
    std::uint32_t variant = cat_.FindVariant(key.variant);
    std::uint32_t sched = variant == kNone ? kNone : cat_.FindSchedule(conn, sync, variant);
    if (sched == kNone) {
      return Status::NotFound("variant " + Quote(key.variant) + " of sync " + Quote(key.sync) +
                              " does not exist on connection " + Quote(key.connection));
    }
    if (store_) {
      store::Batch batch;
      batch.schedules_deleted.push_back(cat_.schedules[sched].uid);
      if (Status st = Persist(batch); !st.ok()) return st;
    }
    DeleteSchedules({sched}, fx);
    DrainWaiting(NowMs(), fx);
    RecordDispatch(fx);
    MaybeRearm();
  }
  Apply(fx);
  return Status();
}

// ---------------------------------------------------------------------------------------------
// Schedule commands

Result<CommandResult> EngineCore::Start(const Target& target) {
  CommandResult result;
  Effects fx;
  {
    std::lock_guard lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    auto targets = cat_.Resolve(target);
    if (!targets.ok()) return targets.status();
    std::int64_t now = NowMs();
    std::vector<std::uint32_t> to_start;
    for (std::uint32_t s : *targets) {
      if (cat_.schedules[s].state == ScheduleState::kStarted) {
        Count(result, target, cat_, s, Outcome::kAlreadyStarted);
      } else {
        to_start.push_back(s);
      }
    }
    if (store_ && !to_start.empty()) {
      store::Batch batch;
      batch.schedules.reserve(to_start.size());
      for (std::uint32_t s : to_start) {
        store::ScheduleRow row = RowOf(s);
        row.state = static_cast<std::uint8_t>(ScheduleState::kStarted);
        const Schedule& sc = cat_.schedules[s];
        bool spread = cat_.syncs[sc.sync].spread;  // the grid StartSchedule will give it
        std::tie(row.anchor_ms, row.next_slot_ms) =
            StartGrid(spread ? cat_.KeyOf(s) : ScheduleKey{}, spread, cat_.FrequencyOf(sc), now);
        if (sc.run == kNone && !(sc.flags & kWaiting)) {
          // The immediate run is recorded in the same transaction (its id is the slot's).
          store::RunRow& run = row.in_flight;
          run.run_id = RunId(sc.uid, now);
          run.schedule_uid = sc.uid;
          run.slot_ms = run.started_ms = now;
          run.mode = static_cast<std::uint8_t>(RunMode::kIncremental);
        }
        batch.schedules.push_back(std::move(row));
      }
      if (Status st = Persist(batch); !st.ok()) return st;
    }
    fx.dispatch.reserve(to_start.size());
    for (std::uint32_t s : to_start) {
      --metrics_.schedules_paused;
      StartSchedule(s, now, fx);
      Count(result, target, cat_, s, Outcome::kStarted);
    }
    MaybeRearm();
  }
  Apply(fx);
  return result;
}

Result<CommandResult> EngineCore::Pause(const Target& target) {
  CommandResult result;
  Effects fx;
  {
    std::lock_guard lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    auto targets = cat_.Resolve(target);
    if (!targets.ok()) return targets.status();
    std::vector<std::uint32_t> to_pause;
    for (std::uint32_t s : *targets) {
      if (cat_.schedules[s].state == ScheduleState::kStarted) {
        to_pause.push_back(s);
      } else {
        Count(result, target, cat_, s, Outcome::kAlreadyPaused);
      }
    }
    if (store_ && !to_pause.empty()) {
      store::Batch batch;
      for (std::uint32_t s : to_pause) {
        store::ScheduleRow row = RowOf(s);
        row.state = static_cast<std::uint8_t>(ScheduleState::kPaused);
        batch.schedules.push_back(std::move(row));
      }
      if (Status st = Persist(batch); !st.ok()) return st;
    }
    for (std::uint32_t idx : to_pause) {
      Schedule& s = cat_.schedules[idx];
      s.state = ScheduleState::kPaused;
      s.pending = 0;
      s.flags &= static_cast<std::uint8_t>(~kHinted);
      slots_.Cancel(idx);
      DropWaiting(idx);
      DropRetry(idx);
      Decide(idx, Reason::kPaused, NowMs());
      --metrics_.schedules_started;
      ++metrics_.schedules_paused;
      if (s.run != kNone && !runs_[s.run]->cancel_requested) {
        runs_[s.run]->cancel_requested = true;
        fx.cancel.emplace_back(runs_[s.run]->token, Status::Cancelled("schedule paused"));
      }
      Count(result, target, cat_, idx, Outcome::kPaused);
    }
  }
  Apply(fx);
  return result;
}

Result<CommandResult> EngineCore::Trigger(const Target& target, RunMode mode) {
  CommandResult result;
  Effects fx;
  {
    std::lock_guard lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    auto targets = cat_.Resolve(target);
    if (!targets.ok()) return targets.status();
    std::int64_t now = NowMs();
    for (std::uint32_t idx : *targets) {
      Schedule& s = cat_.schedules[idx];
      if (s.flags & kWaiting) {
        // A run is already due and waiting for a cap: a full resync upgrades it.
        if (mode == RunMode::kFullResync) {
          waiting_[idx].mode = mode;
          Count(result, target, cat_, idx, Outcome::kTriggered);
        } else {
          Count(result, target, cat_, idx, Outcome::kAlreadyRunning);
        }
      } else if (s.run == kNone) {
        DropRetry(idx);  // the triggered run stands for a pending retry
        TryDispatch(idx, now, now, mode, /*scheduled=*/false, fx);
        Count(result, target, cat_, idx, Outcome::kTriggered);
      } else if (mode == RunMode::kIncremental) {
        Count(result, target, cat_, idx, Outcome::kAlreadyRunning);
      } else {
        RunState& run = *runs_[s.run];
        if (!run.cancel_requested) {
          run.cancel_requested = true;
          fx.cancel.emplace_back(run.token, Status::Cancelled("pre-empted by a full resync"));
        }
        s.pending = 1 + static_cast<std::uint8_t>(RunMode::kFullResync);
        Count(result, target, cat_, idx, Outcome::kTriggered);
      }
    }
    RecordDispatch(fx);
    MaybeRearm();
  }
  Apply(fx);
  return result;
}

Result<std::vector<ScheduleStatus>> EngineCore::GetStatus(const Target& target) {
  std::vector<ScheduleStatus> out;
  {
    std::lock_guard lock(mu_);
    auto targets = cat_.Resolve(target);
    if (!targets.ok()) return targets.status();
    out.reserve(targets->size());
    for (std::uint32_t s : *targets) out.push_back(StatusOf(s));
  }
  std::sort(out.begin(), out.end(), [](const ScheduleStatus& a, const ScheduleStatus& b) {
    return std::tie(a.key.connection, a.key.sync, a.key.variant) <
           std::tie(b.key.connection, b.key.sync, b.key.variant);
  });
  return out;
}

Result<Millis> EngineCore::UpdateFrequency(const ScheduleKey& key,
                                           std::optional<std::string> frequency) {
  std::int64_t override_ms = 0;
  if (frequency) {
    auto f = ParseFrequency(*frequency, options_.frequency_bounds);
    if (!f.ok()) return f.status();
    override_ms = f->count();
  }
  std::lock_guard lock(mu_);
  if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
  Target t{key.integration, key.connection, {SyncSelector{key.sync, key.variant}}, false};
  auto targets = cat_.Resolve(t);
  if (!targets.ok()) return targets.status();
  std::uint32_t idx = targets->front();
  Schedule& s = cat_.schedules[idx];
  const Schedule before = s;
  s.freq_override = override_ms;
  Regrid(idx, NowMs());  // keeps the anchor (or the key's phase, when spread)
  if (store_) {
    store::Batch batch;
    batch.schedules.push_back(RowOf(idx));
    if (Status st = Persist(batch); !st.ok()) {
      s = before;
      if (s.state == ScheduleState::kStarted) slots_.Arm(idx, s.next_slot);
      return st;
    }
  }
  MaybeRearm();
  return Millis(cat_.FrequencyOf(s));
}

EngineMetrics EngineCore::GetMetrics() {
  std::lock_guard lock(mu_);
  EngineMetrics m = metrics_;
  m.runs_waiting += pool_ ? pool_->Waiting() : 0;  // waiting for a cap, plus for a worker
  return m;
}

std::size_t EngineCore::MemoryBytes() {
  std::lock_guard lock(mu_);
  return cat_.MemoryBytes() + slots_.MemoryBytes() + deadlines_.MemoryBytes() +
         runs_.capacity() * sizeof(RunPtr) + free_runs_.capacity() * sizeof(std::uint32_t);
}

// ---------------------------------------------------------------------------------------------
// Alarm and runs

store::RunRow EngineCore::InFlightRow(const RunState& r) {
  store::RunRow row;
  row.run_id = r.run_id;
  row.schedule_uid = r.uid;
  row.slot_ms = r.slot;
  row.mode = static_cast<std::uint8_t>(r.mode);
  row.attempt = r.attempt;
  row.started_ms = r.dispatched;
  return row;
}

CommitQueue::Ticket EngineCore::QueueRecords(Effects& fx) {
  if (!store_) return nullptr;
  store::Batch batch = std::move(fx.record);
  fx.record.clear();
  batch.schedules.reserve(batch.schedules.size() + fx.dispatch.size());
  for (const RunPtr& r : fx.dispatch) batch.schedules.push_back(RowOf(r->schedule));
  if (fx.dispatch.empty()) {
    writer_->Enqueue(std::move(batch));  // outcomes only: nobody waits
    return nullptr;
  }
  std::vector<RunPtr> runs = std::move(fx.dispatch);
  fx.dispatch.clear();
  return writer_->Submit(std::move(batch), std::move(runs));
}

void EngineCore::RecordDispatch(Effects& fx) {
  // Run records are committed before any callback is called: the runs travel with their rows
  // and the writer releases them to the workers once committed, before this returns.
  if (auto ticket = QueueRecords(fx)) (void)writer_->Wait(ticket);
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
    std::lock_guard lock(mu_);
    if (shut_down_) return;
    alarm_set_ = false;
    std::int64_t now = NowMs();
    std::size_t budget = options_.max_fires_per_wakeup;
    budget -= deadlines_.Advance(
        now, [&](wheel::TimerId id, std::int64_t) { OnRunDeadline(id, now, fx); }, budget);
    if (budget > 0) {
      budget -= retries_.Advance(
          now, [&](wheel::TimerId id, std::int64_t) { OnRetry(id, now, fx); }, budget);
    }
    if (budget > 0) {
      slots_.Advance(
          now, [&](wheel::TimerId id, std::int64_t deadline) { OnSlot(id, deadline, now, fx); },
          budget);
    }
    // Queued under the lock, so that the rows keep the engine's order with respect to commands
    // (a pause or a delete queued after this alarm must not be overwritten by its older rows).
    ticket = QueueRecords(fx);
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

bool EngineCore::Execute(const RunPtr& run, RunOutcome& out) {
  Status& status = out.status;
  std::vector<ModelCounts>& counts = out.counts;
  if (run->token.cancelled()) {
    status = run->token.reason();
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
  Clock* clock = clock_;
  ctx.heartbeat = [run, clock] {
    run->last_heartbeat.store(clock->Now().time_since_epoch().count(), std::memory_order_relaxed);
  };
  try {
    if (run->callback->async) {
      auto once = std::make_shared<std::atomic<bool>>(false);
      std::weak_ptr<EngineCore> weak = weak_from_this();
      run->callback->async(ctx, [weak, run, once](RunReport report) {
        if (once->exchange(true)) return;
        auto core = weak.lock();
        if (!core) return;
        std::vector<RunPtr> runs{run};
        std::vector<RunOutcome> outcomes(1);
        outcomes[0].status =
            run->token.cancelled() ? run->token.reason() : std::move(report.status);
        outcomes[0].counts = std::move(report.counts);
        outcomes[0].hint = report.next_run_in;
        core->Complete(runs, outcomes);
      });
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
    std::lock_guard lock(mu_);
    std::int64_t now = NowMs();
    for (std::size_t i = 0; i < runs.size(); ++i) {
      FinishRun(runs[i], outcomes[i].status, std::move(outcomes[i].counts), now, fx,
                outcomes[i].hint);
    }
    // Outcomes are queued without waiting. An outcome that fails to commit stays in memory: the
    // next commit of the schedule's row carries its counters, and the run reads as interrupted
    // after a crash, which is the honest record. Runs dispatched here (a pending full resync, a
    // run that waited for a cap) travel in the same item, are released by the writer once it is
    // committed, and are waited for after the lock is let go, as the alarm does.
    ticket = QueueRecords(fx);
    MaybeRearm();
  }
  Apply(fx);
  if (ticket) (void)writer_->Wait(ticket);
}

}  // namespace syncsched::core
