// syncsched-bench: what every engine runner shares: the run recorder (counters and the lateness
// histogram, written from any thread), process statistics, the once-a-second sampler that builds
// the per-second series and the live progress line, and the JSON result.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <string>
#include <thread>
#include <vector>

#include "tool/workload.h"

namespace syncsched::benchtool {

// Lateness in ms: exact below 1024 ms, then 64 buckets per power of two (under 1.6% wide) up to
// 2^31 ms. Thread-safe (relaxed atomics).
class LatenessHistogram {
 public:
  static constexpr int kExact = 1024;
  static constexpr int kSub = 64;
  static constexpr int kBuckets = kExact + (31 - 10) * kSub;

  static int BucketOf(std::int64_t ms);
  static std::int64_t LowerBound(int bucket);

  void Add(std::int64_t ms) { counts_[BucketOf(ms)].fetch_add(1, std::memory_order_relaxed); }
  std::vector<std::uint64_t> Snapshot() const;

 private:
  std::array<std::atomic<std::uint64_t>, kBuckets> counts_{};
};

// Percentile `q` (0..1) of a histogram snapshot, as the bucket's lower bound; -1 when empty.
std::int64_t Percentile(const std::vector<std::uint64_t>& counts, double q);

// Counters of runs, written by the engines' callbacks from any thread.
struct Recorder {
  std::atomic<std::uint64_t> runs{0};              // callbacks started (attempts included)
  std::atomic<std::uint64_t> initial_runs{0};      // the immediate runs of the start
  std::atomic<std::uint64_t> initial_finished{0};  // ... of which finished
  std::atomic<std::uint64_t> succeeded{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> skipped{0};  // slots skipped (a run of the schedule in flight)
  std::atomic<std::uint64_t> retries{0};  // retry attempts started
  std::atomic<std::int64_t> early{0};     // runs started before their slot (should stay 0)
  LatenessHistogram lateness;             // scheduled first attempts only

  // A callback started: `lateness_ms` after its slot; `scheduled` false for the immediate run of
  // the start and for retries (whose lateness is not the scheduler's).
  void Started(std::int64_t lateness_ms, bool scheduled, bool initial, bool retry) {
    runs.fetch_add(1, std::memory_order_relaxed);
    if (initial) initial_runs.fetch_add(1, std::memory_order_relaxed);
    if (retry) retries.fetch_add(1, std::memory_order_relaxed);
    if (!scheduled) return;
    if (lateness_ms < 0) {
      early.fetch_add(1, std::memory_order_relaxed);
      lateness_ms = 0;
    }
    lateness.Add(lateness_ms);
  }
  // A callback finished; `initial`: it was the start's immediate run of its schedule.
  void Finished(bool ok, bool initial) {
    (ok ? succeeded : failed).fetch_add(1, std::memory_order_relaxed);
    if (initial) initial_finished.fetch_add(1, std::memory_order_relaxed);
  }
};

struct ProcStats {
  std::int64_t rss_bytes = 0;
  std::int64_t rss_peak_bytes = 0;
  std::int64_t minor_faults = 0;
  double user_s = 0;
  double system_s = 0;
  static ProcStats Read();
};

// Runs `fn(delay_due)` after a delay, on its own thread, in real time (microsecond resolution).
// The engines' callbacks with a duration complete through it, so that a run in flight holds no
// thread.
class ThreadDelayer {
 public:
  ThreadDelayer();
  ~ThreadDelayer();  // drops what is still pending
  void After(std::int64_t us, std::function<void()> fn);

 private:
  struct Item {
    std::chrono::steady_clock::time_point at;
    std::uint64_t seq;
    std::function<void()> fn;
    bool operator>(const Item& o) const { return at != o.at ? at > o.at : seq > o.seq; }
  };
  void Loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::priority_queue<Item, std::vector<Item>, std::greater<>> items_;
  std::uint64_t seq_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

// What a runner reports besides the recorder's counters.
struct RunStats {
  double setup_ms = 0;                  // creating the schedules (catalog, connections, rows)
  double start_ms = 0;                  // starting them (committed, for a durable store)
  double start_cpu_ms = 0;              // CPU of the whole process meanwhile (user + system)
  std::int64_t start_minor_faults = 0;  // minor page faults of the process meanwhile
  double recovery_ms = -1;              // reopening the store afterwards (--recovery)
  std::int64_t recovered_schedules = -1;
  std::int64_t engine_bytes = -1;  // the engine's own count of its heap bytes after the start
  nlohmann::json extra = nlohmann::json::object();
};

// The shared run loop: a runner calls BeginWindow() once its schedules are started, then waits
// (real time: SleepWindow(); virtual time: loops while !Done()), then EndWindow().
//
// Memory is read once the start's immediate runs have all finished (Recorder::initial_finished
// reaches the schedule count), after malloc_trim(0), for every engine alike: the schedules'
// steady cost rather than the start's queue. The harness checks at each of its calls (real time:
// every 50 ms of SleepWindow and of the warm-up; virtual time: at each Done()), so a virtual-time
// runner must call Done() between steps of its clock; if the start's runs have not finished by
// EndWindow(), memory is read there (and the JSON says so). In real time, BeginWindow() first
// waits out the workload's warm-up (--warmup), during which the settle usually happens.
class Harness {
 public:
  Harness(const Workload& w, Recorder& rec);
  ~Harness();

  const Workload& workload() const { return w_; }
  Recorder& recorder() { return rec_; }
  RunStats& stats() { return stats_; }

  // Marks the state before setup (RSS, CPU), for bytes_per_schedule and setup CPU.
  void BeforeSetup();
  // Around the start of the schedules: its wall time, CPU and page faults (timing.start_*).
  void BeginStart();
  void EndStart();
  // Starts the measured window and the sampler. `virtual_now_ms`, in virtual time, reads the
  // virtual clock (for the progress line and the window's end).
  void BeginWindow(std::function<std::int64_t()> virtual_now_ms = {});
  // Real time: sleeps until the window's end (or an interrupt).
  void SleepWindow();
  // Virtual time: whether the window is over (virtual duration reached, or interrupted).
  bool Done();
  // The engine's own count of its heap bytes, read when memory is (syncsched: MemoryBytes).
  void SetEngineBytes(std::function<std::int64_t()> fn) { engine_bytes_fn_ = std::move(fn); }
  // Extra fields for each entry of the per-second series (syncsched: its own counters), called on
  // the sampler thread.
  void SetSeriesExtra(std::function<nlohmann::json()> fn) { series_extra_ = std::move(fn); }
  void EndWindow();

  nlohmann::json ResultJson() const;
  std::string Summary() const;

  static void RequestStop();  // SIGINT

 private:
  void SamplerLoop();
  void Sample(bool final);
  void WarmUp();
  void MaybeSettle();
  void Settle(const char* when);

  const Workload& w_;
  Recorder& rec_;
  RunStats stats_;
  ProcStats before_setup_, at_begin_, at_end_, before_start_;
  std::chrono::steady_clock::time_point start_t_;
  std::chrono::steady_clock::time_point setup_t_, begin_t_, end_t_;
  std::function<std::int64_t()> virtual_now_;
  std::int64_t virtual_begin_ = 0, virtual_end_ = 0;
  std::int64_t rss_after_start_ = 0;
  // The settled memory reading (after the start's runs, malloc_trim(0)).
  bool settled_ = false;
  std::string settled_when_;
  std::int64_t rss_settled_ = 0;
  std::int64_t engine_bytes_settled_ = -1;
  double settled_at_s_ = 0;  // after the start returned
  double trim_ms_ = 0, trim_cpu_s_ = 0;
  bool trim_in_window_ = false;
  std::function<std::int64_t()> engine_bytes_fn_;
  std::function<nlohmann::json()> series_extra_;
  std::chrono::steady_clock::time_point started_t_;  // when the start returned (BeginWindow called)
  // The warm-up (real time) and what the window begins with.
  double warmup_ms_ = 0;
  std::string warmup_end_ = "none";
  std::optional<std::uint64_t> round_base_;  // scheduled runs started when the round ended
  std::uint64_t runs_at_begin_ = 0;
  std::vector<std::uint64_t> hist_at_begin_;
  std::uint64_t window_runs_ = 0;
  bool window_open_ = false;

  std::mutex mu_;
  std::condition_variable cv_;
  bool sampler_stop_ = false;
  std::thread sampler_;
  nlohmann::json series_ = nlohmann::json::array();
  std::vector<std::uint64_t> last_hist_;
  std::uint64_t last_runs_ = 0;
  ProcStats last_proc_;
  std::chrono::steady_clock::time_point last_t_;
  bool progress_ = false;
  std::vector<std::uint64_t> final_hist_;
  double load_begin_ = 0, load_end_ = 0;
};

nlohmann::json MachineJson();
double LoadAverage1();

}  // namespace syncsched::benchtool
