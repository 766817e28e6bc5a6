// The syncsched engine under the workload: one integration per mix entry ("m0", "m1", ...), each
// with up to 100 syncs at the entry's period on as many connections as needed (see Layout), all
// paused, then started with one Start per integration.
#include <boost/asio/io_context.hpp>
#include <charconv>
#include <filesystem>
#include <map>
#include <mutex>
#include <queue>

#include "syncsched/syncsched.h"
#include "tool/runners.h"

namespace syncsched::benchtool {

namespace {

using Clock_ = std::chrono::steady_clock;

double MsSince(Clock_::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock_::now() - t).count();
}

// Completes runs after their duration in the engine's own (virtual) time: one alarm of the clock,
// set at the earliest pending completion. Used in virtual time, where everything runs on one
// io_context; millisecond resolution (the clock's).
class ClockDelayer {
 public:
  ClockDelayer(Clock& clock, boost::asio::any_io_executor ex)
      : clock_(clock), alarm_(clock.MakeAlarm(std::move(ex))) {}

  void After(std::int64_t us, std::function<void()> fn) {
    TimePoint at = clock_.Now() + Millis((us + 999) / 1000);
    std::lock_guard lock(mu_);
    bool earliest = items_.empty() || at < items_.top().at;
    items_.push({at, seq_++, std::move(fn)});
    if (earliest) alarm_->SetAt(at, [this] { Fire(); });
  }

 private:
  struct Item {
    TimePoint at;
    std::uint64_t seq;
    std::function<void()> fn;
    bool operator>(const Item& o) const { return at != o.at ? at > o.at : seq > o.seq; }
  };
  void Fire() {
    std::vector<std::function<void()>> due;
    {
      std::lock_guard lock(mu_);
      TimePoint now = clock_.Now();
      while (!items_.empty() && items_.top().at <= now) {
        due.push_back(std::move(const_cast<Item&>(items_.top()).fn));
        items_.pop();
      }
      if (!items_.empty()) alarm_->SetAt(items_.top().at, [this] { Fire(); });
    }
    for (auto& fn : due) fn();
  }

  Clock& clock_;
  std::unique_ptr<Alarm> alarm_;
  std::mutex mu_;
  std::priority_queue<Item, std::vector<Item>, std::greater<>> items_;
  std::uint64_t seq_ = 0;
};

// How the schedules of one mix entry are laid out: `syncs` syncs ("s0", "s1", ...) of the same
// frequency on each of count / syncs connections ("c0", "c1", ...), so that one AddConnection (one
// commit with a store) creates `syncs` schedules. A schedule's index across the workload is
// offset + connection * syncs + sync.
struct Layout {
  std::int64_t offset = 0;
  std::int64_t syncs = 1;
  std::int64_t connections = 0;
};

std::vector<Layout> LayoutOf(const Workload& w) {
  std::vector<Layout> layout;
  std::int64_t offset = 0;
  for (std::int64_t count : w.Counts()) {
    std::int64_t syncs = 100;  // the largest divisor of count up to 100
    while (syncs > 1 && count % syncs != 0) --syncs;
    layout.push_back({offset, syncs, count / syncs});
    offset += count;
  }
  return layout;
}

// "<prefix><n>" (built by appending: GCC 12 warns falsely on "m" + std::to_string(n) at -O2).
std::string Name(char prefix, std::size_t n) {
  std::string s(1, prefix);
  s += std::to_string(n);
  return s;
}

std::uint64_t Digits(std::string_view s, std::size_t from) {
  std::uint64_t v = 0;
  std::from_chars(s.data() + from, s.data() + s.size(), v);
  return v;
}

std::uint64_t ScheduleIndex(const std::vector<Layout>& layout, const ScheduleKey& key) {
  const Layout& l = layout[Digits(key.integration, 1)];
  return static_cast<std::uint64_t>(l.offset) +
         Digits(key.connection, 1) * static_cast<std::uint64_t>(l.syncs) + Digits(key.sync, 1);
}

}  // namespace

std::string RunSyncsched(Harness& h) {
  const Workload& w = h.workload();
  Recorder& rec = h.recorder();
  RunStats& stats = h.stats();
  if (w.durable() && w.store.find("://") == std::string::npos && std::filesystem::exists(w.store)) {
    return "--store: " + w.store + " exists; give a path to a new file (the tool creates its " +
           "schedules afresh)";
  }

  boost::asio::io_context io;
  VirtualClock vclock;
  Options o;
  o.worker_threads = static_cast<std::size_t>(w.workers);
  o.max_concurrent_runs = static_cast<std::size_t>(w.max_concurrency);
  o.frequency_bounds.min = Millis(1);
  o.frequency_bounds.max = std::chrono::hours(24 * 366);
  o.database_path = w.durable() ? w.store : "";
  o.hold_timers = true;
  o.random_seed = w.seed;
  if (w.virtual_time) {
    o.clock = &vclock;
    o.executor = io.get_executor();
    o.run_executor = io.get_executor();
  }

  std::unique_ptr<ThreadDelayer> thread_delayer;
  std::unique_ptr<ClockDelayer> clock_delayer;
  if (w.callback.kind != DurationDist::Kind::kZero) {
    if (w.virtual_time)
      clock_delayer = std::make_unique<ClockDelayer>(vclock, io.get_executor());
    else
      thread_delayer = std::make_unique<ThreadDelayer>();
  }
  const std::vector<Layout> layout = LayoutOf(w);
  // One bit per schedule: its first run (the start's immediate one) has been seen.
  std::vector<std::atomic<std::uint64_t>> seen((static_cast<std::size_t>(w.schedules) + 63) / 64);

  // Declared after what its callbacks use, so that it is destroyed first on every path.
  std::unique_ptr<Engine> engine;
  Clock* clock = nullptr;
  auto begin_run = [&](const RunContext& ctx) {
    std::uint64_t k = ScheduleIndex(layout, ctx.key);
    std::int64_t slot_ms = ctx.slot.time_since_epoch().count();
    bool initial = false;
    if (ctx.attempt == 1 && k / 64 < seen.size()) {
      std::uint64_t bit = std::uint64_t{1} << (k % 64);
      initial = !(seen[k / 64].fetch_or(bit, std::memory_order_relaxed) & bit);
    }
    rec.Started((clock->Now() - ctx.slot).count(), !initial && ctx.attempt == 1, initial,
                ctx.attempt > 1);
    return std::pair{PlanRun(w, k, slot_ms, ctx.attempt), initial};
  };
  h.BeforeSetup();
  auto t0 = Clock_::now();
  auto opened = Engine::Open(o);
  if (!opened.ok()) return "opening the engine on '" + w.store + "': " + opened.status().message();
  engine = std::move(opened).value();
  clock = &engine->clock();

  std::string error;
  SyncCallback sync_callback = [&](const RunContext& ctx) {
    auto [p, initial] = begin_run(ctx);
    rec.Finished(!p.fail, initial);
    return p.fail ? RunReport::Failure("injected failure") : RunReport::Success();
  };
  AsyncSyncCallback async_callback = [&](const RunContext& ctx, RunDone done) {
    // Not a structured binding: clang 14 cannot capture one in a lambda.
    const auto begun = begin_run(ctx);
    const auto& p = begun.first;
    auto finish = [&rec, fail = p.fail, initial = begun.second, done = std::move(done)] {
      rec.Finished(!fail, initial);
      done(fail ? RunReport::Failure("injected failure") : RunReport::Success());
    };
    if (clock_delayer)
      clock_delayer->After(p.duration_us, std::move(finish));
    else
      thread_delayer->After(p.duration_us, std::move(finish));
  };
  for (std::size_t i = 0; i < w.mix.size() && error.empty(); ++i) {
    std::string integration = Name('m', static_cast<std::size_t>(i));
    for (std::int64_t j = 0; j < layout[i].syncs && error.empty(); ++j) {
      std::string name = Name('s', static_cast<std::size_t>(j));
      Status s = w.callback.kind == DurationDist::Kind::kZero
                     ? engine->RegisterCallback(integration, name, sync_callback)
                     : engine->RegisterAsyncCallback(integration, name, async_callback);
      SyncDefinition def;
      def.name = name;
      def.frequency = FormatFrequency(Millis(w.mix[i].period_ms));
      def.auto_start = false;
      def.spread = w.spread;
      def.retry.max = w.retries;
      def.retry.backoff = Millis(w.retry_backoff_ms);
      if (s.ok()) s = engine->DefineSync(integration, def);
      if (!s.ok()) error = "defining the workload's syncs: " + s.message();
    }
  }
  // Connections: with a store every command is a commit, so a few threads add them and the
  // engine's group commit batches their commits.
  for (std::size_t i = 0; i < w.mix.size() && error.empty(); ++i) {
    std::string integration = Name('m', static_cast<std::size_t>(i));
    int threads = w.durable() ? 4 : 1;
    std::vector<std::thread> adders;
    std::mutex err_mu;
    for (int t = 0; t < threads; ++t) {
      adders.emplace_back([&, t, end = layout[i].connections] {
        std::string id;
        for (std::int64_t c = t; c < end; c += threads) {
          id = Name('c', static_cast<std::size_t>(c));
          Status s = engine->AddConnection(integration, id);
          if (!s.ok()) {
            std::lock_guard lock(err_mu);
            if (error.empty()) error = "adding connection " + id + ": " + s.message();
            return;
          }
        }
      });
    }
    for (auto& a : adders) a.join();
  }
  stats.setup_ms = MsSince(t0);
  if (!error.empty()) return error;

  h.BeginStart();
  for (std::size_t i = 0; i < w.mix.size(); ++i) {
    auto r = engine->Start(Target{Name('m', static_cast<std::size_t>(i)), std::nullopt, {}, false});
    if (!r.ok()) return "starting the schedules: " + r.status().message();
  }
  h.EndStart();
  engine->ReleaseTimers();
  stats.engine_bytes = static_cast<std::int64_t>(engine->MemoryBytes());
  h.SetEngineBytes([&engine] { return static_cast<std::int64_t>(engine->MemoryBytes()); });
  // The engine's own dispatch lateness (slot to dispatch, before the dispatch's commit and the
  // hand-off to a worker), cumulative per bucket: beside the tool's lateness (slot to callback),
  // it tells the alarm's delay from what follows it.
  h.SetSeriesExtra([&engine] {
    Histogram f = engine->GetMetrics().fire_lateness_seconds;
    return nlohmann::json{{"dispatch_lateness_counts", f.counts}};
  });

  if (w.virtual_time) {
    h.BeginWindow([&vclock] { return vclock.Now().time_since_epoch().count(); });
    while (!h.Done()) vclock.RunFor(io, Millis(1000));
  } else {
    h.BeginWindow();
    h.SleepWindow();
  }
  h.EndWindow();

  EngineMetrics m = engine->GetMetrics();
  rec.skipped = m.slots_skipped;
  nlohmann::json dispatch = nlohmann::json::array();  // [upper bound in s (-1: above all), count]
  for (std::size_t b = 0; b < m.fire_lateness_seconds.counts.size(); ++b) {
    dispatch.push_back(
        {b < m.fire_lateness_seconds.bounds.size() ? m.fire_lateness_seconds.bounds[b] : -1.0,
         m.fire_lateness_seconds.counts[b]});
  }
  stats.extra = {{"runs_started", m.runs_started},
                 {"runs_succeeded", m.runs_succeeded},
                 {"runs_failed", m.runs_failed},
                 {"runs_in_flight", m.runs_in_flight},
                 {"runs_waiting", m.runs_waiting},
                 {"slots_skipped", m.slots_skipped},
                 {"retries", m.retries},
                 {"engine_memory_bytes", engine->MemoryBytes()},
                 {"dispatch_lateness_seconds", dispatch}};

  auto t2 = Clock_::now();
  engine.reset();
  stats.extra["close_ms"] = MsSince(t2);
  if (w.recovery) {
    Options ro = o;
    ro.hold_timers = true;
    auto t3 = Clock_::now();
    auto reopened = Engine::Open(ro);
    if (!reopened.ok()) return "reopening the store: " + reopened.status().message();
    stats.recovery_ms = MsSince(t3);
    stats.recovered_schedules =
        static_cast<std::int64_t>((*reopened)->GetMetrics().schedules_started);
  }
  return "";
}

}  // namespace syncsched::benchtool
