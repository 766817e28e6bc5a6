#include "tool/harness.h"

#include <malloc.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <bit>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>

#ifndef SYNCSCHED_BENCH_COMMIT
#define SYNCSCHED_BENCH_COMMIT "unknown"
#endif

namespace syncsched::benchtool {

namespace {

std::atomic<bool> g_stop{false};

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

std::string Human(double v) {
  char buf[32];
  if (v >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
  else if (v >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (v >= 1e4)
    std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

double ThreadCpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

std::string ReadFirstLine(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

}  // namespace

// ---- LatenessHistogram ----

int LatenessHistogram::BucketOf(std::int64_t ms) {
  if (ms < kExact) return static_cast<int>(ms < 0 ? 0 : ms);
  auto v = static_cast<std::uint64_t>(ms);
  int k = std::bit_width(v) - 1;  // 2^k <= v < 2^(k+1), k >= 10
  if (k >= 31) return kBuckets - 1;
  int sub = static_cast<int>((v - (std::uint64_t{1} << k)) >> (k - 6));  // 0..63
  return kExact + (k - 10) * kSub + sub;
}

std::int64_t LatenessHistogram::LowerBound(int bucket) {
  if (bucket < kExact) return bucket;
  int k = 10 + (bucket - kExact) / kSub;
  int sub = (bucket - kExact) % kSub;
  return (std::int64_t{1} << k) + (static_cast<std::int64_t>(sub) << (k - 6));
}

std::vector<std::uint64_t> LatenessHistogram::Snapshot() const {
  std::vector<std::uint64_t> v(kBuckets);
  for (int i = 0; i < kBuckets; ++i) v[i] = counts_[i].load(std::memory_order_relaxed);
  return v;
}

std::int64_t Percentile(const std::vector<std::uint64_t>& counts, double q) {
  std::uint64_t total = 0;
  for (auto c : counts) total += c;
  if (total == 0) return -1;
  // The smallest value with at least ceil(q * total) observations at or below it.
  auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total)));
  if (rank == 0) rank = 1;
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    seen += counts[i];
    if (seen >= rank) return LatenessHistogram::LowerBound(static_cast<int>(i));
  }
  return LatenessHistogram::LowerBound(static_cast<int>(counts.size()) - 1);
}

// ---- ProcStats ----

ProcStats ProcStats::Read() {
  ProcStats p;
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    long long kb = 0;
    if (std::sscanf(line.c_str(), "VmRSS: %lld kB", &kb) == 1) p.rss_bytes = kb * 1024;
    if (std::sscanf(line.c_str(), "VmHWM: %lld kB", &kb) == 1) p.rss_peak_bytes = kb * 1024;
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  p.user_s = static_cast<double>(ru.ru_utime.tv_sec) + ru.ru_utime.tv_usec / 1e6;
  p.system_s = static_cast<double>(ru.ru_stime.tv_sec) + ru.ru_stime.tv_usec / 1e6;
  p.minor_faults = ru.ru_minflt;
  return p;
}

// ---- ThreadDelayer ----

ThreadDelayer::ThreadDelayer() : thread_([this] { Loop(); }) {}

ThreadDelayer::~ThreadDelayer() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void ThreadDelayer::After(std::int64_t us, std::function<void()> fn) {
  auto at = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  bool earliest;
  {
    std::lock_guard lock(mu_);
    earliest = items_.empty() || at < items_.top().at;
    items_.push({at, seq_++, std::move(fn)});
  }
  if (earliest) cv_.notify_one();
}

void ThreadDelayer::Loop() {
  std::unique_lock lock(mu_);
  std::vector<std::function<void()>> due;
  while (!stop_) {
    if (items_.empty()) {
      cv_.wait(lock);
      continue;
    }
    auto now = std::chrono::steady_clock::now();
    if (items_.top().at > now) {
      cv_.wait_until(lock, items_.top().at);
      continue;
    }
    while (!items_.empty() && items_.top().at <= now) {
      due.push_back(std::move(const_cast<Item&>(items_.top()).fn));
      items_.pop();
    }
    lock.unlock();
    for (auto& fn : due) fn();
    due.clear();
    lock.lock();
  }
}

// ---- Harness ----

Harness::Harness(const Workload& w, Recorder& rec) : w_(w), rec_(rec) {
  progress_ = w.progress == Workload::Progress::kAlways ||
              (w.progress == Workload::Progress::kAuto && isatty(STDERR_FILENO));
  g_stop = false;
}

Harness::~Harness() {
  if (sampler_.joinable()) {
    {
      std::lock_guard lock(mu_);
      sampler_stop_ = true;
    }
    cv_.notify_all();
    sampler_.join();
  }
}

void Harness::RequestStop() { g_stop = true; }

void Harness::BeforeSetup() {
  malloc_trim(0);  // as before the settled reading, so that both see a trimmed heap
  before_setup_ = ProcStats::Read();
  setup_t_ = std::chrono::steady_clock::now();
  load_begin_ = LoadAverage1();
}

void Harness::BeginStart() {
  before_start_ = ProcStats::Read();
  start_t_ = std::chrono::steady_clock::now();
}

void Harness::EndStart() {
  ProcStats p = ProcStats::Read();
  stats_.start_ms = Seconds(std::chrono::steady_clock::now() - start_t_) * 1000;
  stats_.start_cpu_ms =
      (p.user_s + p.system_s - before_start_.user_s - before_start_.system_s) * 1000;
  stats_.start_minor_faults = p.minor_faults - before_start_.minor_faults;
}

void Harness::BeginWindow(std::function<std::int64_t()> virtual_now_ms) {
  started_t_ = std::chrono::steady_clock::now();
  rss_after_start_ = ProcStats::Read().rss_bytes;
  virtual_now_ = std::move(virtual_now_ms);
  if (!virtual_now_ && w_.warmup != Workload::Warmup::kNone) WarmUp();
  at_begin_ = ProcStats::Read();
  begin_t_ = std::chrono::steady_clock::now();
  if (virtual_now_) virtual_begin_ = virtual_now_();
  last_t_ = begin_t_;
  last_proc_ = at_begin_;
  last_runs_ = rec_.runs.load();
  runs_at_begin_ = last_runs_;
  last_hist_ = rec_.lateness.Snapshot();
  hist_at_begin_ = last_hist_;
  window_open_ = true;
  MaybeSettle();  // (an engine that ran the start's runs inline in its start)
  sampler_ = std::thread([this] { SamplerLoop(); });
}

void Harness::WarmUp() {
  using namespace std::chrono;
  auto t0 = steady_clock::now();
  auto limit = t0 + milliseconds(w_.warmup_limit_ms);
  std::int64_t longest = 0;
  for (const auto& e : w_.mix) longest = std::max(longest, e.period_ms);
  auto next_line = t0 + seconds(1);
  warmup_end_ = "interrupted";
  while (!g_stop) {
    MaybeSettle();
    auto now = steady_clock::now();
    if (settled_) {
      if (w_.warmup == Workload::Warmup::kStart) {
        warmup_end_ = "start_runs_done";
        break;
      }
      auto round_end = started_t_ +
                       duration_cast<steady_clock::duration>(duration<double>(settled_at_s_)) +
                       milliseconds(longest);
      // After the round, until a run other than the start's has started since (with a store the
      // start leaves its outcomes to be written: the scheduled runs resume only once the writer
      // has caught up, which on a loaded machine may be a minute after the start's callbacks).
      std::uint64_t scheduled = rec_.runs.load() - rec_.initial_runs.load();
      if (now >= round_end && !round_base_) round_base_ = scheduled;
      if (round_base_ && scheduled > *round_base_) {
        warmup_end_ = "start_runs_done_and_round";
        break;
      }
    }
    if (now >= limit) {
      warmup_end_ = "limit";
      break;
    }
    if (progress_ && now >= next_line) {
      char line[160];
      std::snprintf(line, sizeof line,
                    "\r[warm-up %4.0fs] %s runs, the start's runs finished: %s of %s   ",
                    Seconds(now - t0), Human(static_cast<double>(rec_.runs.load())).c_str(),
                    Human(static_cast<double>(rec_.initial_finished.load())).c_str(),
                    Human(static_cast<double>(w_.schedules)).c_str());
      std::fputs(line, stderr);
      std::fflush(stderr);
      next_line += seconds(1);
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  if (progress_) std::fputs("\n", stderr);
  warmup_ms_ = Seconds(steady_clock::now() - t0) * 1000;
}

void Harness::MaybeSettle() {
  if (!settled_ && rec_.initial_finished.load(std::memory_order_relaxed) >=
                       static_cast<std::uint64_t>(w_.schedules)) {
    Settle("start_runs_done");
  }
}

void Harness::Settle(const char* when) {
  auto t = std::chrono::steady_clock::now();
  double cpu0 = ThreadCpuSeconds();
  malloc_trim(0);
  trim_cpu_s_ = ThreadCpuSeconds() - cpu0;
  trim_ms_ = Seconds(std::chrono::steady_clock::now() - t) * 1000;
  rss_settled_ = ProcStats::Read().rss_bytes;
  if (engine_bytes_fn_) engine_bytes_settled_ = engine_bytes_fn_();
  settled_at_s_ = Seconds(t - started_t_);
  trim_in_window_ = window_open_;
  settled_when_ = when;
  settled_ = true;
}

void Harness::SleepWindow() {
  auto end = begin_t_ + std::chrono::milliseconds(w_.duration_ms);
  while (!g_stop && std::chrono::steady_clock::now() < end) {
    MaybeSettle();
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
        std::chrono::milliseconds(50), end - std::chrono::steady_clock::now()));
  }
}

bool Harness::Done() {
  MaybeSettle();
  if (g_stop) return true;
  return virtual_now_() - virtual_begin_ >= w_.duration_ms;
}

void Harness::EndWindow() {
  end_t_ = std::chrono::steady_clock::now();
  at_end_ = ProcStats::Read();
  window_open_ = false;
  if (virtual_now_) virtual_end_ = virtual_now_();
  {
    std::lock_guard lock(mu_);
    sampler_stop_ = true;
  }
  cv_.notify_all();
  if (sampler_.joinable()) sampler_.join();
  Sample(true);
  if (progress_) std::fputs("\n", stderr);
  final_hist_ = rec_.lateness.Snapshot();
  for (std::size_t i = 0; i < final_hist_.size() && i < hist_at_begin_.size(); ++i)
    final_hist_[i] -= hist_at_begin_[i];
  window_runs_ = rec_.runs.load() - runs_at_begin_;
  if (!settled_) Settle("window_end");
  load_end_ = LoadAverage1();
}

void Harness::SamplerLoop() {
  std::unique_lock lock(mu_);
  auto next = begin_t_ + std::chrono::seconds(1);
  while (!sampler_stop_) {
    if (cv_.wait_until(lock, next) == std::cv_status::timeout) {
      lock.unlock();
      Sample(false);
      lock.lock();
      next += std::chrono::seconds(1);
    }
  }
}

void Harness::Sample(bool final) {
  auto now = std::chrono::steady_clock::now();
  double dt = Seconds(now - last_t_);
  if (final && dt < 0.2) return;  // the last whole second was sampled already
  ProcStats p = ProcStats::Read();
  std::uint64_t runs = rec_.runs.load();
  auto hist = rec_.lateness.Snapshot();
  std::vector<std::uint64_t> delta(hist.size());
  for (std::size_t i = 0; i < hist.size(); ++i) delta[i] = hist[i] - last_hist_[i];
  double rate = dt > 0 ? static_cast<double>(runs - last_runs_) / dt : 0;
  double cpu = dt > 0 ? (p.user_s + p.system_s - last_proc_.user_s - last_proc_.system_s) / dt : 0;
  nlohmann::json e = {{"t", Seconds(now - begin_t_)},
                      {"runs", runs},
                      {"runs_per_second", rate},
                      {"lateness_p50_ms", Percentile(delta, 0.5)},
                      {"lateness_p99_ms", Percentile(delta, 0.99)},
                      {"rss_bytes", p.rss_bytes},
                      {"cpu_percent", 100 * cpu}};
  if (virtual_now_) e["virtual_s"] = (virtual_now_() - virtual_begin_) / 1000.0;
  if (series_extra_) e.update(series_extra_());
  series_.push_back(e);
  if (progress_) {
    char line[256];
    std::string v;
    if (virtual_now_) {
      char vb[48];
      std::snprintf(vb, sizeof vb, " virtual %.0fs", (virtual_now_() - virtual_begin_) / 1000.0);
      v = vb;
    }
    std::snprintf(line, sizeof line,
                  "\r[%5.0fs%s] %s runs  %s/s  late p50 %" PRId64 " ms p99 %" PRId64
                  " ms  RSS %.0f MB  CPU %.0f%%   ",
                  Seconds(now - begin_t_), v.c_str(), Human(static_cast<double>(runs)).c_str(),
                  Human(rate).c_str(), Percentile(delta, 0.5), Percentile(delta, 0.99),
                  static_cast<double>(p.rss_bytes) / 1e6, 100 * cpu);
    std::fputs(line, stderr);
    std::fflush(stderr);
  }
  last_t_ = now;
  last_runs_ = runs;
  last_hist_ = std::move(hist);
  last_proc_ = p;
}

double LoadAverage1() {
  double l = -1;
  std::ifstream in("/proc/loadavg");
  in >> l;
  return l;
}

nlohmann::json MachineJson() {
  nlohmann::json m;
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  m["hostname"] = host;
  m["cpus"] = std::thread::hardware_concurrency();
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      m["cpu_model"] = line.substr(line.find(':') + 2);
      break;
    }
  }
  std::ifstream meminfo("/proc/meminfo");
  while (std::getline(meminfo, line)) {
    long long kb = 0;
    if (std::sscanf(line.c_str(), "MemTotal: %lld kB", &kb) == 1) m["memory_bytes"] = kb * 1024;
  }
  utsname u{};
  uname(&u);
  m["kernel"] = std::string(u.sysname) + " " + u.release;
  m["compiler"] = __VERSION__;
#ifdef NDEBUG
  m["build"] = "release (NDEBUG)";
#else
  m["build"] = "debug (assertions on)";
#endif
  m["commit"] = SYNCSCHED_BENCH_COMMIT;
  m["loadavg"] = ReadFirstLine("/proc/loadavg");
  char date[64];
  std::time_t t = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  m["date"] = date;
  return m;
}

nlohmann::json Harness::ResultJson() const {
  const Workload& w = w_;
  nlohmann::json config = {
      {"engine", ToString(w.engine)},
      {"schedules", w.schedules},
      {"duration_ms", w.duration_ms},
      {"virtual", w.virtual_time},
      {"store", w.store},
      {"callback", w.callback.text},
      {"failure_rate", w.failure_rate},
      {"max_concurrency", w.max_concurrency},
      {"spread", w.spread},
      {"retries", w.retries},
      {"retry_backoff_ms", w.retry_backoff_ms},
      {"workers", w.workers},
      {"seed", w.seed},
      {"warmup", ToString(w.warmup)},
  };
  nlohmann::json mix = nlohmann::json::array();
  auto counts = w.Counts();
  for (std::size_t i = 0; i < w.mix.size(); ++i) {
    mix.push_back(
        {{"period_ms", w.mix[i].period_ms}, {"share", w.mix[i].share}, {"schedules", counts[i]}});
  }
  config["mix"] = mix;
  double expected = 0;  // slots due per second on average
  for (std::size_t i = 0; i < w.mix.size(); ++i)
    expected += static_cast<double>(counts[i]) * 1000.0 / static_cast<double>(w.mix[i].period_ms);
  config["slots_per_second"] = expected;

  double wall = Seconds(end_t_ - begin_t_);
  double window = virtual_now_ ? (virtual_end_ - virtual_begin_) / 1000.0 : wall;
  std::uint64_t runs = rec_.runs.load();
  std::uint64_t window_runs = window_runs_;
  // The window's CPU, less the settle's malloc_trim when it fell inside the window.
  double cpu_s = at_end_.user_s + at_end_.system_s - at_begin_.user_s - at_begin_.system_s -
                 (trim_in_window_ ? trim_cpu_s_ : 0);
  const auto& hist = final_hist_;
  std::uint64_t measured = 0;
  double sum = 0;
  nlohmann::json hist_json = nlohmann::json::array();
  for (std::size_t i = 0; i < hist.size(); ++i) {
    if (hist[i] == 0) continue;
    measured += hist[i];
    sum += static_cast<double>(hist[i]) *
           static_cast<double>(LatenessHistogram::LowerBound(static_cast<int>(i)));
    hist_json.push_back({LatenessHistogram::LowerBound(static_cast<int>(i)), hist[i]});
  }
  std::int64_t max = -1;
  for (std::size_t i = hist.size(); i-- > 0;) {
    if (hist[i]) {
      max = LatenessHistogram::LowerBound(static_cast<int>(i));
      break;
    }
  }
  const auto n = static_cast<double>(w.schedules);
  double bytes = static_cast<double>(rss_settled_ - before_setup_.rss_bytes) / n;
  nlohmann::json j;
  j["tool"] = "syncsched-bench";
  j["engine"] = ToString(w.engine);
  j["config"] = config;
  j["machine"] = MachineJson();
  j["machine"]["loadavg1_begin"] = load_begin_;
  j["machine"]["loadavg1_end"] = load_end_;
  j["interrupted"] = g_stop.load();
  j["runs"] = runs;
  j["window_runs"] = window_runs;
  j["initial_runs"] = rec_.initial_runs.load();
  j["succeeded"] = rec_.succeeded.load();
  j["failed"] = rec_.failed.load();
  j["skipped"] = rec_.skipped.load();
  j["retries"] = rec_.retries.load();
  j["early"] = rec_.early.load();
  j["wall_seconds"] = wall;
  j["window_seconds"] = window;
  // Runs of the window per second of wall time: in virtual time, how fast the engine gets through
  // the workload.
  j["runs_per_second"] = wall > 0 ? static_cast<double>(window_runs) / wall : 0;
  if (virtual_now_) j["virtual_speedup"] = wall > 0 ? window / wall : 0;
  j["lateness_ms"] = {{"count", measured},
                      {"mean", measured ? sum / static_cast<double>(measured) : -1},
                      {"p50", Percentile(hist, 0.5)},
                      {"p90", Percentile(hist, 0.9)},
                      {"p99", Percentile(hist, 0.99)},
                      {"p999", Percentile(hist, 0.999)},
                      {"max", max}};
  j["lateness_histogram_ms"] = hist_json;  // [lower bound in ms, count]
  j["bytes_per_schedule"] = bytes;
  j["memory"] = {
      {"rss_before_setup", before_setup_.rss_bytes},
      {"rss_after_start", rss_after_start_},
      {"rss_settled", rss_settled_},
      {"rss_end", at_end_.rss_bytes},
      {"rss_peak", at_end_.rss_peak_bytes},
      {"bytes_per_schedule", bytes},
      {"bytes_per_schedule_after_start",
       static_cast<double>(rss_after_start_ - before_setup_.rss_bytes) / n},
      // When rss_settled was read: "start_runs_done" (every immediate run of the start had
      // finished) or "window_end" (they had not by then); seconds after the start returned.
      {"measured", settled_when_},
      {"measured_after_start_s", settled_at_s_},
      {"malloc_trim", true},  // malloc_trim(0) before each reading, every engine alike
      {"trim_ms", trim_ms_},
  };
  if (engine_bytes_settled_ >= 0) {
    j["memory"]["engine_bytes_per_schedule"] = static_cast<double>(engine_bytes_settled_) / n;
  } else if (stats_.engine_bytes >= 0) {
    j["memory"]["engine_bytes_per_schedule"] = static_cast<double>(stats_.engine_bytes) / n;
  }
  if (stats_.engine_bytes >= 0) {
    j["memory"]["engine_bytes_per_schedule_after_start"] =
        static_cast<double>(stats_.engine_bytes) / n;
  }
  double setup_cpu =
      at_begin_.user_s + at_begin_.system_s - before_setup_.user_s - before_setup_.system_s;
  j["cpu"] = {{"user_seconds", at_end_.user_s - at_begin_.user_s},
              {"system_seconds", at_end_.system_s - at_begin_.system_s},
              {"cpu_seconds", cpu_s},
              {"cpu_us_per_run", window_runs ? 1e6 * cpu_s / static_cast<double>(window_runs) : -1},
              {"trim_cpu_seconds_excluded", trim_in_window_ ? trim_cpu_s_ : 0.0},
              {"cpu_percent", wall > 0 ? 100 * cpu_s / wall : 0},
              {"setup_cpu_seconds", setup_cpu}};
  j["timing"] = {{"setup_ms", stats_.setup_ms},
                 {"start_ms", stats_.start_ms},
                 {"start_cpu_ms", stats_.start_cpu_ms},
                 {"start_minor_faults", stats_.start_minor_faults},
                 {"warmup_ms", warmup_ms_},
                 {"recovery_ms", stats_.recovery_ms},
                 {"recovered_schedules", stats_.recovered_schedules}};
  j["warmup"] = {{"mode", ToString(w.warmup)},
                 {"ended", warmup_end_},
                 {"limit_ms", w.warmup_limit_ms},
                 {"runs", runs_at_begin_}};
  j["series"] = series_;
  j["engine_details"] = stats_.extra;
  return j;
}

std::string Harness::Summary() const {
  nlohmann::json j = ResultJson();
  std::ostringstream o;
  char buf[512];
  std::snprintf(buf, sizeof buf, "engine %s, %s schedules, store %s: %.1f s",
                std::string(ToString(w_.engine)).c_str(),
                Human(static_cast<double>(w_.schedules)).c_str(), w_.store.c_str(),
                j["wall_seconds"].get<double>());
  o << buf;
  if (w_.virtual_time) {
    std::snprintf(buf, sizeof buf, " for %.0f s of virtual time (%.0fx)",
                  j["window_seconds"].get<double>(), j["virtual_speedup"].get<double>());
    o << buf;
  }
  o << "\n";
  std::snprintf(buf, sizeof buf,
                "  runs        %" PRIu64 " (%" PRIu64 " initial, %" PRIu64 " failed, %" PRIu64
                " retries), %" PRIu64 " slots skipped, %" PRIu64 " in the window\n",
                j["runs"].get<std::uint64_t>(), j["initial_runs"].get<std::uint64_t>(),
                j["failed"].get<std::uint64_t>(), j["retries"].get<std::uint64_t>(),
                j["skipped"].get<std::uint64_t>(), j["window_runs"].get<std::uint64_t>());
  o << buf;
  std::snprintf(buf, sizeof buf, "  throughput  %s runs/s (wall)\n",
                Human(j["runs_per_second"].get<double>()).c_str());
  o << buf;
  const auto& l = j["lateness_ms"];
  std::snprintf(buf, sizeof buf,
                "  lateness    p50 %" PRId64 " ms, p90 %" PRId64 " ms, p99 %" PRId64
                " ms, p99.9 %" PRId64 " ms, max %" PRId64 " ms (%" PRIu64 " scheduled runs)\n",
                l["p50"].get<std::int64_t>(), l["p90"].get<std::int64_t>(),
                l["p99"].get<std::int64_t>(), l["p999"].get<std::int64_t>(),
                l["max"].get<std::int64_t>(), l["count"].get<std::uint64_t>());
  o << buf;
  std::snprintf(buf, sizeof buf,
                "  memory      %.0f bytes/schedule (RSS %s, malloc_trim), peak RSS %.0f MB\n",
                j["bytes_per_schedule"].get<double>(),
                settled_when_ == "start_runs_done" ? "once the start's runs were done"
                                                   : "at the window's end",
                static_cast<double>(j["memory"]["rss_peak"].get<std::int64_t>()) / 1e6);
  o << buf;
  std::snprintf(buf, sizeof buf, "  cpu         %.2f us/run, %.0f%% of a core\n",
                j["cpu"]["cpu_us_per_run"].get<double>(), j["cpu"]["cpu_percent"].get<double>());
  o << buf;
  std::snprintf(buf, sizeof buf,
                "  timing      setup %.0f ms, start %.0f ms (CPU %.0f ms, %.0fk page faults)",
                stats_.setup_ms, stats_.start_ms, stats_.start_cpu_ms,
                static_cast<double>(stats_.start_minor_faults) / 1e3);
  o << buf;
  if (w_.warmup != Workload::Warmup::kNone) {
    std::snprintf(buf, sizeof buf, ", warm-up %.0f ms (%s)", warmup_ms_, warmup_end_.c_str());
    o << buf;
  }
  if (stats_.recovery_ms >= 0) {
    std::snprintf(buf, sizeof buf, ", recovery %.0f ms (%" PRId64 " schedules)", stats_.recovery_ms,
                  stats_.recovered_schedules);
    o << buf;
  }
  std::snprintf(buf, sizeof buf, "\n  load avg    %.2f -> %.2f (1 min)\n", load_begin_, load_end_);
  o << buf;
  return o.str();
}

}  // namespace syncsched::benchtool
