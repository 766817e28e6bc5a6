// syncsched-bench: what the baselines share, so that they follow the workload as syncsched does:
// an immediate run at the start, then the schedule's grid (phase-spread or not); at most one run
// of a schedule in flight (a slot due meanwhile is skipped and counted; several missed slots give
// one run, at the next future slot); a global cap with a FIFO of waiting runs; retries with
// doubling backoff that are dropped when they would reach the next slot.
#pragma once

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "tool/harness.h"

namespace syncsched::benchtool {

// Milliseconds and microseconds of the steady clock (the baselines' time base in real time).
inline std::int64_t SteadyUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The first scheduled slot after the start's immediate run at `start_ms`: one period later, or
// with spreading the first slot of the schedule's own phase at least half a period later (as
// syncsched spreads: a stable per-schedule phase).
inline std::int64_t FirstSlot(std::uint64_t idx, std::int64_t start_ms, std::int64_t period_ms,
                              bool spread) {
  if (!spread) return start_ms + period_ms;
  std::uint64_t x = (idx + 1) * 0x9E3779B97F4A7C15ULL;
  x ^= x >> 31;
  std::int64_t phase = static_cast<std::int64_t>(x % static_cast<std::uint64_t>(period_ms));
  std::int64_t slot = start_ms - (start_ms % period_ms) + phase;
  while (slot < start_ms + period_ms / 2) slot += period_ms;
  return slot;
}

// The first slot of the grid through `slot` that is after `now`; adds the slots jumped over.
inline std::int64_t NextFutureSlot(std::int64_t slot, std::int64_t period, std::int64_t now,
                                   std::uint64_t* jumped) {
  std::int64_t next = slot + period;
  if (next <= now) {
    std::int64_t k = (now - next) / period + 1;
    *jumped += static_cast<std::uint64_t>(k);
    next += k * period;
  }
  return next;
}

// Period and in-flight flag of each schedule, and the mix laid out over schedule indexes.
struct ScheduleTable {
  std::vector<std::int64_t> period_ms;  // per mix entry
  std::vector<std::uint8_t> entry_of;   // schedule -> mix entry
  std::unique_ptr<std::atomic<std::uint8_t>[]> in_flight;
  std::size_t n = 0;

  explicit ScheduleTable(const Workload& w) {
    n = static_cast<std::size_t>(w.schedules);
    auto counts = w.Counts();
    for (const auto& e : w.mix) period_ms.push_back(e.period_ms);
    entry_of.reserve(n);
    for (std::size_t i = 0; i < counts.size(); ++i)
      entry_of.insert(entry_of.end(), static_cast<std::size_t>(counts[i]),
                      static_cast<std::uint8_t>(i));
    in_flight = std::make_unique<std::atomic<std::uint8_t>[]>(n);
  }
  std::int64_t Period(std::size_t idx) const { return period_ms[entry_of[idx]]; }
};

// Real-time dispatch for the in-process baselines (asio, heap): runs go to a thread pool of
// `workers` threads, at most `max_concurrency` at once (the rest wait in FIFO order); a run with a
// duration completes through a ThreadDelayer. `on_failed(idx, slot, attempt)` is called from the
// run's thread when a run fails and may be retried (attempt <= retries): the scheduler decides.
class RealDispatcher {
 public:
  RealDispatcher(Harness& h, ScheduleTable& table,
                 std::function<void(std::uint32_t, std::int64_t, int)> on_failed)
      : h_(h),
        w_(h.workload()),
        table_(table),
        on_failed_(std::move(on_failed)),
        pool_(static_cast<std::size_t>(h.workload().workers)) {
    if (w_.callback.kind != DurationDist::Kind::kZero) delayer_ = std::make_unique<ThreadDelayer>();
  }
  ~RealDispatcher() { Stop(); }

  // Stops the pool (runs queued and not started are dropped) and the delayer.
  void Stop() {
    pool_.stop();
    pool_.join();
    delayer_.reset();
  }

  // A slot of schedule `idx` is due (attempt 1), or a retry. Returns false when skipped because a
  // run of the schedule is in flight.
  bool Due(std::uint32_t idx, std::int64_t slot_ms, int attempt, bool initial) {
    if (attempt == 1 && table_.in_flight[idx].exchange(1, std::memory_order_acq_rel)) {
      h_.recorder().skipped.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    if (w_.max_concurrency > 0) {
      std::lock_guard lock(mu_);
      if (running_ >= w_.max_concurrency) {
        waiting_.push_back({idx, slot_ms, attempt, initial});
        return true;
      }
      ++running_;
    }
    Post({idx, slot_ms, attempt, initial});
    return true;
  }

 private:
  struct Item {
    std::uint32_t idx;
    std::int64_t slot_ms;
    int attempt;
    bool initial;
  };

  void Post(Item it) {
    boost::asio::post(pool_, [this, it] { Execute(it); });
  }

  void Execute(Item it) {
    std::int64_t late_us = SteadyUs() - it.slot_ms * 1000;
    h_.recorder().Started(late_us >= 0 ? late_us / 1000 : -1, !it.initial && it.attempt == 1,
                          it.initial, it.attempt > 1);
    RunPlan p = PlanRun(w_, it.idx, it.slot_ms, it.attempt);
    if (p.duration_us == 0) {
      Finish(it, p.fail);
    } else {
      delayer_->After(p.duration_us, [this, it, fail = p.fail] { Finish(it, fail); });
    }
  }

  void Finish(Item it, bool fail) {
    h_.recorder().Finished(!fail, it.initial);
    table_.in_flight[it.idx].store(0, std::memory_order_release);
    if (fail && it.attempt <= w_.retries) on_failed_(it.idx, it.slot_ms, it.attempt);
    if (w_.max_concurrency > 0) {
      std::unique_lock lock(mu_);
      if (!waiting_.empty()) {
        Item next = waiting_.front();
        waiting_.pop_front();
        lock.unlock();
        Post(next);
      } else {
        --running_;
      }
    }
  }

  Harness& h_;
  const Workload& w_;
  ScheduleTable& table_;
  std::function<void(std::uint32_t, std::int64_t, int)> on_failed_;
  boost::asio::thread_pool pool_;
  std::unique_ptr<ThreadDelayer> delayer_;
  std::mutex mu_;
  std::int64_t running_ = 0;
  std::deque<Item> waiting_;
};

// The retry of attempt `attempt` (1-based) that failed at `now_ms`: due after backoff * 2^(a-1).
inline std::int64_t RetryAt(const Workload& w, std::int64_t now_ms, int attempt) {
  return now_ms + w.retry_backoff_ms * (std::int64_t{1} << (attempt - 1));
}

}  // namespace syncsched::benchtool
