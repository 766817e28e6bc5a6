// Baseline "heap": the design of most in-process schedulers, a std::priority_queue of (due time,
// schedule) popped by one loop thread that sleeps until the earliest deadline, hands each due run
// to a thread pool and pushes the schedule's next slot. In virtual time the loop runs callbacks
// inline on its one thread (as syncsched's virtual runs do) and jumps the clock to the next entry.
#include <condition_variable>
#include <deque>
#include <queue>
#include <thread>

#include "tool/baseline.h"
#include "tool/runners.h"

namespace syncsched::benchtool {

namespace {

struct Entry {
  std::int64_t due_ms;
  std::int64_t slot_ms;
  std::uint32_t idx;
  std::int32_t attempt;  // 1: a slot; > 1: a retry; <= 0: the completion of a run (virtual time)
  bool operator>(const Entry& o) const { return due_ms > o.due_ms; }
};
using Heap = std::priority_queue<Entry, std::vector<Entry>, std::greater<>>;

double MsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

std::string RunHeapReal(Harness& h) {
  const Workload& w = h.workload();
  h.BeforeSetup();
  auto t0 = std::chrono::steady_clock::now();
  ScheduleTable table(w);
  std::vector<std::int64_t> next(table.n);
  std::mutex mu;
  std::condition_variable cv;
  Heap heap;
  bool stop = false;
  auto push = [&](Entry e) {  // under mu
    bool earliest = heap.empty() || e.due_ms < heap.top().due_ms;
    heap.push(e);
    if (earliest) cv.notify_one();
  };
  RealDispatcher dispatcher(h, table, [&](std::uint32_t idx, std::int64_t slot, int attempt) {
    std::int64_t at = RetryAt(w, SteadyUs() / 1000, attempt);
    std::lock_guard lock(mu);
    if (at < next[idx]) push({at, slot, idx, attempt + 1});
  });
  {
    std::vector<Entry> reserve;
    reserve.reserve(table.n);
    heap = Heap(std::greater<>(), std::move(reserve));
  }
  h.stats().setup_ms = MsSince(t0);

  h.BeginStart();
  std::int64_t start_ms = SteadyUs() / 1000;
  {
    std::lock_guard lock(mu);
    for (std::uint32_t i = 0; i < table.n; ++i) {
      dispatcher.Due(i, start_ms, 1, true);
      next[i] = FirstSlot(i, start_ms, table.Period(i), w.spread);
      heap.push({next[i], next[i], i, 1});
    }
  }
  h.EndStart();

  std::thread loop([&] {
    std::vector<Entry> due;
    std::unique_lock lock(mu);
    while (!stop) {
      if (heap.empty()) {
        cv.wait(lock);
        continue;
      }
      std::int64_t now = SteadyUs() / 1000;
      if (heap.top().due_ms > now) {
        cv.wait_until(lock, std::chrono::steady_clock::time_point(
                                std::chrono::milliseconds(heap.top().due_ms)));
        continue;
      }
      while (!heap.empty() && heap.top().due_ms <= now && due.size() < 4096) {
        due.push_back(heap.top());
        heap.pop();
      }
      lock.unlock();
      std::uint64_t jumped = 0;
      for (Entry& e : due) {
        dispatcher.Due(e.idx, e.slot_ms, e.attempt, false);
        if (e.attempt == 1) {
          e.slot_ms = e.due_ms = NextFutureSlot(e.slot_ms, table.Period(e.idx), now, &jumped);
        }
      }
      if (jumped) h.recorder().skipped.fetch_add(jumped, std::memory_order_relaxed);
      lock.lock();
      for (const Entry& e : due) {
        if (e.attempt != 1) continue;
        next[e.idx] = e.slot_ms;
        heap.push(e);
      }
      due.clear();
    }
  });

  h.BeginWindow();
  h.SleepWindow();
  h.EndWindow();
  {
    std::lock_guard lock(mu);
    stop = true;
  }
  cv.notify_all();
  loop.join();
  dispatcher.Stop();
  return "";
}

std::string RunHeapVirtual(Harness& h) {
  const Workload& w = h.workload();
  Recorder& rec = h.recorder();
  h.BeforeSetup();
  auto t0 = std::chrono::steady_clock::now();
  ScheduleTable table(w);
  std::vector<std::int64_t> next(table.n);
  Heap heap;
  {
    std::vector<Entry> reserve;
    reserve.reserve(table.n);
    heap = Heap(std::greater<>(), std::move(reserve));
  }
  h.stats().setup_ms = MsSince(t0);

  const std::int64_t start_ms = 1'767'225'600'000;  // syncsched's VirtualClock default
  std::atomic<std::int64_t> vnow{start_ms};
  std::int64_t running = 0;
  std::deque<Entry> waiting;
  std::function<void(const Entry&)> execute;
  auto finish = [&](std::uint32_t idx, std::int64_t slot, int attempt, bool fail) {
    rec.Finished(!fail, attempt == 1 && slot == start_ms);
    table.in_flight[idx].store(0, std::memory_order_relaxed);
    if (fail && attempt <= w.retries) {
      std::int64_t at = RetryAt(w, vnow.load(std::memory_order_relaxed), attempt);
      if (at < next[idx]) heap.push({at, slot, idx, attempt + 1});
    }
    if (w.max_concurrency > 0) {
      if (!waiting.empty()) {
        Entry e = waiting.front();
        waiting.pop_front();
        execute(e);
      } else {
        --running;
      }
    }
  };
  execute = [&](const Entry& e) {
    std::int64_t now = vnow.load(std::memory_order_relaxed);
    bool initial = e.attempt == 1 && e.slot_ms == start_ms;
    rec.Started(now - e.slot_ms, !initial && e.attempt == 1, initial, e.attempt > 1);
    RunPlan p = PlanRun(w, e.idx, e.slot_ms, e.attempt);
    if (p.duration_us == 0) {
      finish(e.idx, e.slot_ms, e.attempt, p.fail);
    } else {
      // A completion entry: attempt stored as -attempt, failure as -1000.
      heap.push({now + (p.duration_us + 999) / 1000, e.slot_ms, e.idx,
                 -(e.attempt + (p.fail ? 1000 : 0))});
    }
  };
  auto due = [&](const Entry& e) {
    if (e.attempt == 1 && table.in_flight[e.idx].exchange(1, std::memory_order_relaxed)) {
      rec.skipped.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (w.max_concurrency > 0) {
      if (running >= w.max_concurrency) {
        waiting.push_back(e);
        return;
      }
      ++running;
    }
    execute(e);
  };

  h.BeginStart();
  for (std::uint32_t i = 0; i < table.n; ++i) {
    next[i] = FirstSlot(i, start_ms, table.Period(i), w.spread);
    heap.push({next[i], next[i], i, 1});
  }
  for (std::uint32_t i = 0; i < table.n; ++i) due({start_ms, start_ms, i, 1});
  h.EndStart();

  h.BeginWindow([&vnow] { return vnow.load(std::memory_order_relaxed); });
  const std::int64_t end_ms = start_ms + w.duration_ms;
  std::uint64_t events = 0;
  while (!heap.empty() && heap.top().due_ms <= end_ms) {
    if ((++events & 4095) == 0 && h.Done()) break;
    Entry e = heap.top();
    heap.pop();
    if (e.due_ms > vnow.load(std::memory_order_relaxed)) vnow.store(e.due_ms);
    if (e.attempt <= 0) {
      int a = -e.attempt;
      bool fail = a >= 1000;
      finish(e.idx, e.slot_ms, fail ? a - 1000 : a, fail);
    } else if (e.attempt > 1) {
      due(e);
    } else {
      due(e);
      std::uint64_t jumped = 0;
      e.slot_ms = e.due_ms = NextFutureSlot(e.slot_ms, table.Period(e.idx), e.due_ms, &jumped);
      next[e.idx] = e.slot_ms;
      heap.push(e);
    }
  }
  vnow.store(std::max(vnow.load(), end_ms));
  h.EndWindow();
  return "";
}

}  // namespace

std::string RunHeap(Harness& h) {
  return h.workload().virtual_time ? RunHeapVirtual(h) : RunHeapReal(h);
}

}  // namespace syncsched::benchtool
