// Run policies: concurrency caps with a due-ordered wait queue, retries with backoff, phase
// spreading, the "why not" ring of scheduling decisions, and the forecast. All under the
// engine's lock, called from engine_core.cc's dispatch path.
#include <algorithm>
#include <cmath>

#include "core/engine_core.h"
#include "core/grid.h"
#include "core/names.h"

namespace syncsched::core {
namespace {

// FNV-1a over the key's parts: stable across processes and builds (std::hash is not).
std::uint64_t KeyHash(const ScheduleKey& key) {
  std::uint64_t h = 1469598103934665603ull;
  auto mix = [&](std::string_view s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
    h ^= 0xff;  // separator
    h *= 1099511628211ull;
  };
  mix(key.integration);
  mix(key.connection);
  mix(key.sync);
  mix(key.variant);
  return h;
}

// The first slot at or after `not_before` of the phase grid of the key hashed to `hash`.
std::int64_t PhaseSlot(std::uint64_t hash, std::int64_t freq, std::int64_t not_before) {
  auto phase = static_cast<std::int64_t>(hash % static_cast<std::uint64_t>(freq));
  // The first phase + k * freq >= not_before.
  std::int64_t k = (not_before - phase + freq - 1) / freq;
  if (not_before - phase < 0) k = 0;
  return phase + k * freq;
}

// splitmix64: a small, good, seedable generator for retry jitter.
std::uint64_t NextRandom(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

void EngineCore::Decide(std::uint32_t schedule, Reason reason, std::int64_t now,
                        std::string detail) {
  if (options_.decisions_kept == 0) return;
  DecisionRing& ring = decisions_[schedule];
  Decision d{TimePoint(Millis(now)), reason, std::move(detail)};
  if (ring.items.size() < options_.decisions_kept) {
    ring.items.push_back(std::move(d));
  } else {
    ring.items[ring.head] = std::move(d);
    ring.head = (ring.head + 1) % ring.items.size();
  }
}

void EngineCore::CountInFlight(std::uint32_t schedule, int delta) {
  const Schedule& s = cat_.schedules[schedule];
  IntegrationInfo& integ = cat_.integrations[cat_.connections[s.connection].integration];
  integ.in_flight = static_cast<std::size_t>(static_cast<std::int64_t>(integ.in_flight) + delta);
  metrics_.runs_in_flight =
      static_cast<std::uint64_t>(static_cast<std::int64_t>(metrics_.runs_in_flight) + delta);
}

bool EngineCore::CapsAllow(std::uint32_t integration) const {
  if (options_.max_concurrent_runs && metrics_.runs_in_flight >= options_.max_concurrent_runs) {
    return false;
  }
  const IntegrationInfo& integ = cat_.integrations[integration];
  return integ.max_concurrency == 0 || integ.in_flight < integ.max_concurrency;
}

void EngineCore::TryDispatch(Txn& tx, std::uint32_t schedule, std::int64_t slot, RunMode mode,
                             bool scheduled, int attempt, std::string run_id) {
  Schedule& s = Touch(tx, schedule);
  std::uint32_t integ = cat_.connections[s.connection].integration;
  if (s.flags & kWaiting) {
    // One run waits per schedule: a later slot is skipped; a full resync upgrades it.
    WaitInfo& w = waiting_[schedule];
    if (mode == RunMode::kFullResync) w.mode = mode;
    if (scheduled) {
      ++s.skipped;
      ++metrics_.slots_skipped;
      Decide(schedule, Reason::kWaitingForCap, tx.now, "slot skipped while waiting for a cap");
    }
    return;
  }
  if (run_id.empty()) {
    run_id = scheduled ? GridRunId(s.uid, slot) : NextRunId(tx, schedule, slot);
  }
  const bool lease = LeaseAllows(tx, schedule);
  if (lease && CapsAllow(integ)) {
    DispatchRun(tx, schedule, slot, mode, scheduled, attempt, std::move(run_id));
    return;
  }
  s.flags |= kWaiting;
  WaitInfo& w = waiting_[schedule];
  w = WaitInfo{slot, tx.now, ++wait_seq_, mode, scheduled, attempt, std::move(run_id)};
  Enqueue(schedule, w);
  ++metrics_.runs_waiting;
  // Cluster mode: the partition's lease is not valid at this instant (it ended and the
  // partition is about to be dropped, or it is being renewed late): the run waits, and goes if
  // the lease is valid again (else the partition's next owner finds it owed in its row).
  Decide(schedule, Reason::kWaitingForCap, tx.now,
         !lease ? "cluster: the partition's lease is not valid on this engine"
         : options_.max_concurrent_runs && metrics_.runs_in_flight >= options_.max_concurrent_runs
             ? "max_concurrent_runs reached"
             : "integration max_concurrency reached");
}

void EngineCore::TryDispatchLater(Txn& tx, std::uint32_t schedule, RunMode mode) {
  // A run owed since before a restart goes to the wait queue, drained at the first alarm.
  Schedule& s = Touch(tx, schedule);
  s.pending = 0;
  s.flags |= kWaiting;
  WaitInfo& w = waiting_[schedule];
  w = WaitInfo{tx.now, tx.now, ++wait_seq_, mode, false, 1, NextRunId(tx, schedule, tx.now)};
  Enqueue(schedule, w);
  ++metrics_.runs_waiting;
}

void EngineCore::Enqueue(std::uint32_t schedule, const WaitInfo& w) {
  std::uint32_t integ = cat_.connections[cat_.schedules[schedule].connection].integration;
  if (wait_queues_.size() < cat_.integrations.size()) wait_queues_.resize(cat_.integrations.size());
  wait_queues_[integ].emplace(w.seq, schedule);
}

void EngineCore::DropWaiting(Txn& tx, std::uint32_t schedule) {
  Schedule& s = Touch(tx, schedule);
  if (!(s.flags & kWaiting)) return;
  s.flags &= static_cast<std::uint8_t>(~kWaiting);
  waiting_.erase(schedule);
  --metrics_.runs_waiting;  // its queue entry is skipped lazily
}

void EngineCore::DrainWaiting(Txn& tx) {
  if (metrics_.runs_waiting == 0 || shut_down_) return;
  auto valid = [&](std::uint32_t integ, const WaitEntry& e) REQUIRES(mu_) {
    const Schedule& s = cat_.schedules[e.second];
    if (!s.live || s.state == ScheduleState::kDeleted || !(s.flags & kWaiting)) return false;
    if (cat_.connections[s.connection].integration != integ) return false;  // index reused
    auto it = waiting_.find(e.second);
    return it != waiting_.end() && it->second.seq == e.first;
  };
  // Cluster mode: waits of partitions whose lease is not valid now stay queued (put back below).
  std::vector<std::pair<std::uint32_t, WaitEntry>> held_back;
  struct PutBack {
    EngineCore* core;
    std::vector<std::pair<std::uint32_t, WaitEntry>>& entries;
    ~PutBack() NO_THREAD_SAFETY_ANALYSIS {
      for (auto& [integ, e] : entries) core->wait_queues_[integ].push(e);
    }
  } put_back{this, held_back};
  for (;;) {
    if (options_.max_concurrent_runs && metrics_.runs_in_flight >= options_.max_concurrent_runs) {
      return;
    }
    // Fair across integrations: of those with a waiting run and room under their own cap, the
    // one with the fewest runs in flight goes first; ties go round-robin, starting after the
    // integration served last. Within an integration, runs go in the order they began to wait.
    std::uint32_t best = kNone;
    const auto count = static_cast<std::uint32_t>(wait_queues_.size());
    for (std::uint32_t step = 1; step <= count; ++step) {
      std::uint32_t i = (last_served_ + step) % count;
      auto& q = wait_queues_[i];
      while (!q.empty() && !valid(i, q.top())) q.pop();  // entries of waits that ended
      if (q.empty() || !CapsAllow(i)) continue;
      if (best == kNone || cat_.integrations[i].in_flight < cat_.integrations[best].in_flight) {
        best = i;
      }
    }
    if (best == kNone) return;
    std::uint32_t sched = wait_queues_[best].top().second;
    if (!LeaseAllows(tx, sched)) {
      held_back.emplace_back(best, wait_queues_[best].top());
      wait_queues_[best].pop();
      continue;
    }
    last_served_ = best;
    wait_queues_[best].pop();
    Touch(tx, sched);  // the before-image first: it must see the wait before it is moved from
    WaitInfo w = std::move(waiting_[sched]);
    DropWaiting(tx, sched);
    Observe(metrics_.wait_seconds, static_cast<double>(tx.now - w.since) / 1000.0);
    DispatchRun(tx, sched, w.slot, w.mode, w.scheduled, w.attempt, std::move(w.run_id));
  }
}

void EngineCore::DropRetry(Txn& tx, std::uint32_t schedule) {
  Schedule& s = Touch(tx, schedule);
  if (!(s.flags & kRetrying)) return;
  s.flags &= static_cast<std::uint8_t>(~kRetrying);
  retries_.Cancel(schedule);
  retry_info_.erase(schedule);
}

void EngineCore::MaybeRetry(Txn& tx, const RunState& run, const Status& status) {
  if (status.ok() || status.code() == StatusCode::kCancelled ||
      status.code() == StatusCode::kDeadlineExceeded || shut_down_) {
    return;
  }
  Schedule& s = Touch(tx, run.schedule);
  const SyncInfo& sync = cat_.syncs[s.sync];
  if (run.attempt > sync.retry_max) return;
  int k = run.attempt;  // the k-th retry follows the k-th attempt
  // backoff * 2^(k-1) with up to 20% jitter, computed in double and capped before conversion: k
  // may be 100 and the backoff a year, far beyond any next slot.
  double base = static_cast<double>(sync.retry_backoff_ms) * std::ldexp(1.0, k - 1);
  double jitter = static_cast<double>(NextRandom(rng_state_) >> 11) * 0x1.0p-53 * 0.2;
  double delay_ms = std::min(std::ceil(base * (1.0 + jitter)), static_cast<double>(kFarFutureMs));
  auto delay = static_cast<std::int64_t>(delay_ms);
  std::int64_t due = SatAdd(tx.now, delay);
  if (s.state == ScheduleState::kStarted && due >= s.next_slot) {
    Decide(run.schedule, Reason::kRetryDropped, tx.now,
           "retry " + std::to_string(k) + " would reach the next slot");
    return;
  }
  if (due >= kFarFutureMs) {
    Decide(run.schedule, Reason::kRetryDropped, tx.now,
           "retry " + std::to_string(k) + " would be due beyond the engine's horizon");
    return;
  }
  s.flags |= kRetrying;
  retry_info_[run.schedule] = RetryInfo{run.slot, due, run.mode, run.attempt + 1, run.run_id};
  retries_.Arm(run.schedule, due);
  Decide(run.schedule, Reason::kRetryBackoff, tx.now,
         "retry " + std::to_string(k) + " of " + std::to_string(sync.retry_max) + " in " +
             FormatFrequency(Millis(delay)));
}

void EngineCore::OnRetry(Txn& tx, std::uint32_t schedule) {
  {
    const Schedule& s = cat_.schedules[schedule];
    if (!s.live || !(s.flags & kRetrying)) return;
  }
  Schedule& s = Touch(tx, schedule);
  RetryInfo info = std::move(retry_info_[schedule]);
  retry_info_.erase(schedule);
  s.flags &= static_cast<std::uint8_t>(~kRetrying);
  if (s.run != kNone) return;  // a trigger ran meanwhile: it stands for the retry
  ++metrics_.retries;
  TryDispatch(tx, schedule, info.slot, info.mode, /*scheduled=*/false, info.attempt,
              std::move(info.run_id));
}

std::int64_t EngineCore::SpreadSlot(std::uint32_t schedule, std::int64_t freq,
                                    std::int64_t not_before) const {
  return PhaseSlot(KeyHash(cat_.KeyOf(schedule)), freq, not_before);
}

std::pair<std::int64_t, std::int64_t> EngineCore::StartGrid(const ScheduleKey& key, bool spread,
                                                            std::int64_t freq, std::int64_t now) {
  if (!spread) return {now, now + freq};
  std::int64_t anchor = PhaseSlot(KeyHash(key), freq, now + (freq + 1) / 2);
  return {anchor, anchor};
}

std::string EncodePolicy(const SyncInfo& sync) {
  return "overlap=" + std::to_string(static_cast<int>(sync.overlap)) +
         ";retry_max=" + std::to_string(sync.retry_max) +
         ";retry_backoff_ms=" + std::to_string(sync.retry_backoff_ms) +
         ";spread=" + std::to_string(sync.spread ? 1 : 0);
}

void DecodePolicy(std::string_view text, SyncInfo& sync) {
  // "key=value;..." written by EncodePolicy; unknown keys (from a newer build) are ignored.
  while (!text.empty()) {
    std::size_t end = text.find(';');
    std::string_view item = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    std::size_t eq = item.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view k = item.substr(0, eq);
    std::int64_t v = 0;
    for (char c : item.substr(eq + 1)) {
      if (c < '0' || c > '9') break;
      v = v * 10 + (c - '0');
      if (v > (std::int64_t{1} << 50)) break;
    }
    if (k == "overlap") sync.overlap = v == 1 ? OverlapPolicy::kBufferOne : OverlapPolicy::kSkip;
    if (k == "retry_max") sync.retry_max = static_cast<int>(std::min<std::int64_t>(v, 100));
    if (k == "retry_backoff_ms") sync.retry_backoff_ms = v;
    if (k == "spread") sync.spread = v == 1;
  }
}

Status EngineCore::SetIntegrationLimits(std::string_view integration,
                                        const IntegrationLimits& limits) {
  if (Status s = ValidateIntegration(integration); !s.ok()) return s;
  if (InCluster()) {
    if (Status s = CatalogUpToDate(); !s.ok()) return s;
  }
  Effects fx;
  {
    MutexLock lock(mu_);
    if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
    std::uint32_t integ = cat_.FindIntegration(integration);
    if (integ == kNone) {
      return Status::NotFound("integration " + Quote(integration) + " does not exist",
                              StatusSubject::kIntegration);
    }
    if (cat_.integrations[integ].max_concurrency == limits.max_concurrency) {
      return Status();  // the same limit again: nothing to do
    }
    Txn tx = Begin(/*undoable=*/true);
    if (store_) {
      tx.batch.integrations.push_back(
          store::IntegrationRow{std::string(integration), limits.max_concurrency});
    }
    tx.limit_before.emplace(integ, cat_.integrations[integ].max_concurrency);
    cat_.integrations[integ].max_concurrency = limits.max_concurrency;
    DrainWaiting(tx);  // a raised cap lets waiting runs go, in the same transaction
    if (Status st = Commit(tx); !st.ok()) return st;
    ++catalog_local_;
    fx = std::move(tx.fx);
  }
  Apply(fx);
  if (InCluster()) SpreadCatalog();  // the other engines adopt the limit (last applied wins)
  return Status();
}

Result<std::vector<ForecastMinute>> EngineCore::Forecast(Millis horizon,
                                                         std::optional<std::string> integration) {
  if (horizon.count() <= 0 || horizon > std::chrono::hours(24 * 7)) {
    return Status::InvalidField("horizon", "forecast horizon " + std::to_string(horizon.count()) +
                                               " ms must be positive and at most 7 days");
  }
  // The engine's lock is held only to copy a slice of schedules at a time (kSlice of them, a few
  // hundred microseconds); the slots are counted without it, so a forecast over a million
  // schedules never stalls the alarm or a command for longer than one slice. Schedules that
  // change between slices are counted as they were when their slice was read.
  constexpr std::uint32_t kSlice = 4096;
  struct Item {
    std::int64_t next, freq, anchor;
    std::uint32_t integration;
    bool hinted;
  };
  if (integration) {
    if (Status s = ValidateIntegration(*integration); !s.ok()) return s;
  }
  std::uint32_t only = kNone;
  std::int64_t now = 0;
  {
    MutexLock lock(mu_);
    if (integration) {
      only = cat_.FindIntegration(*integration);
      if (only == kNone) {
        return Status::NotFound("integration " + Quote(*integration) + " does not exist",
                                StatusSubject::kIntegration);
      }
    }
    now = NowMs();
  }
  const std::int64_t start = now - now % 60000;  // the current minute
  const std::int64_t end = now + horizon.count();
  const auto minutes = static_cast<std::size_t>((end - start) / 60000 + 1);
  std::vector<std::vector<std::uint64_t>> per;  // per integration
  std::vector<Item> items;
  items.reserve(kSlice);
  for (std::uint32_t from = 0;; from += kSlice) {
    items.clear();
    {
      MutexLock lock(mu_);
      if (from >= cat_.schedules.size()) break;
      std::uint32_t to =
          static_cast<std::uint32_t>(std::min<std::size_t>(cat_.schedules.size(), from + kSlice));
      for (std::uint32_t idx = from; idx < to; ++idx) {
        const Schedule& s = cat_.schedules[idx];
        if (!s.live || s.state != ScheduleState::kStarted) continue;
        std::uint32_t integ = cat_.connections[s.connection].integration;
        if (only != kNone && integ != only) continue;
        items.push_back(
            Item{s.next_slot, cat_.FrequencyOf(s), s.anchor, integ, (s.flags & kHinted) != 0});
      }
    }
    for (const Item& it : items) {
      if (per.size() <= it.integration) per.resize(it.integration + 1);
      std::vector<std::uint64_t>& counts = per[it.integration];
      if (counts.empty()) counts.assign(minutes, 0);
      std::int64_t t = it.next;
      if (it.hinted) {
        if (t <= end) ++counts[static_cast<std::size_t>((std::max(t, start) - start) / 60000)];
        t = NextSlotAfter(it.anchor, it.freq, t);
      }
      for (; t <= end; t += it.freq) {
        ++counts[static_cast<std::size_t>((std::max(t, start) - start) / 60000)];
      }
    }
  }
  MutexLock lock(mu_);
  // Caps: runs beyond a cap's capacity per minute move to the following minutes.
  double mean_ms = metrics_.run_duration_seconds.count
                       ? 1000.0 * metrics_.run_duration_seconds.sum /
                             static_cast<double>(metrics_.run_duration_seconds.count)
                       : 60000.0;
  mean_ms = std::max(mean_ms, 1.0);
  auto apply_cap = [&](std::vector<std::uint64_t>& counts, std::size_t cap) {
    if (cap == 0) return;
    auto per_minute = static_cast<std::uint64_t>(
        std::max(1.0, std::floor(static_cast<double>(cap) * 60000.0 / mean_ms)));
    std::uint64_t carry = 0;
    for (auto& n : counts) {
      n += carry;
      carry = n > per_minute ? n - per_minute : 0;
      n -= carry;
    }
  };
  std::vector<std::uint64_t> total(minutes, 0);
  for (std::uint32_t i = 0; i < per.size(); ++i) {
    if (per[i].empty()) continue;
    if (i < cat_.integrations.size()) apply_cap(per[i], cat_.integrations[i].max_concurrency);
    for (std::size_t m = 0; m < minutes; ++m) total[m] += per[i][m];
  }
  apply_cap(total, options_.max_concurrent_runs);
  std::vector<ForecastMinute> out;
  out.reserve(minutes);
  for (std::size_t m = 0; m < minutes; ++m) {
    out.push_back(
        ForecastMinute{TimePoint(Millis(start + static_cast<std::int64_t>(m) * 60000)), total[m]});
  }
  return out;
}

}  // namespace syncsched::core
