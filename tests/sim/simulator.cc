#include "sim/simulator.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <stdexcept>

#include "core/engine_access.h"

namespace syncsched::sim {
namespace {

using namespace std::chrono_literals;

std::string Dur(Millis d) {
  std::int64_t ms = d.count();
  if (ms % 86400000 == 0 && ms != 0) return std::to_string(ms / 86400000) + "d";
  if (ms % 3600000 == 0 && ms != 0) return std::to_string(ms / 3600000) + "h";
  if (ms % 60000 == 0 && ms != 0) return std::to_string(ms / 60000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

std::uint64_t Fnv(std::uint64_t h, const std::string& s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

// With --trace: prints every commit that reaches the store (from the writer thread, so the line
// may interleave with the simulator's; not part of the determinism digest).
class TraceStore : public store::Store {
 public:
  explicit TraceStore(std::unique_ptr<store::Store> inner) : inner_(std::move(inner)) {}
  Result<store::Snapshot> Load() override { return inner_->Load(); }
  Status Health() const override { return inner_->Health(); }
  std::uint64_t CacheBytes() const override { return inner_->CacheBytes(); }
  Status Commit(const store::Batch& b) override {
    Status st = inner_->Commit(b);
    std::printf(
        "      commit: %zu syncs, %zu integrations, +%zu -%zu connections, %zu -%zu "
        "schedules, %zu runs -> %s\n",
        b.syncs.size(), b.integrations.size(), b.connections_added.size(),
        b.connections_deleted.size(), b.schedules.size(), b.schedules_deleted.size(), b.runs.size(),
        st.ToString().c_str());
    std::fflush(stdout);
    return st;
  }

 private:
  std::unique_ptr<store::Store> inner_;
};

}  // namespace

Simulator::Simulator(SimOptions options)
    : opts_(options), rng_(options.seed * 0x9e3779b97f4a7c15ULL + 1), model_(Model::Config{}) {
  std::string base = std::filesystem::temp_directory_path().string() + "/syncsched-sim-XXXXXX";
  std::vector<char> tmpl(base.begin(), base.end());
  tmpl.push_back('\0');
  if (char* d = mkdtemp(tmpl.data())) {
    dir_ = d;
  } else {
    throw std::runtime_error("mkdtemp failed for " + base);
  }
  if (opts_.postgres) {
    database_ = std::make_unique<testing::TestDatabase>(testing::StoreKind::kPostgres);
    path_ = database_->path();
  } else {
    path_ = dir_ + "/state.db";
  }
  start_ = clock_.Now();
  result_.hash = 0xcbf29ce484222325ULL;
}

Simulator::~Simulator() {
  shutting_down_ = true;
  engine_.reset();
  runs_.clear();
  database_.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

// ---------------------------------------------------------------------------------------------
// World and engine

void Simulator::MakeWorld() {
  const std::vector<std::string> integ_pool = {"github", "hubspot", "slack"};
  const std::vector<std::string> sync_pool = {"issues", "prs", "users", "deals"};
  std::size_t n = static_cast<std::size_t>(rng_.Range(2, 3));
  for (std::size_t i = 0; i < n; ++i) {
    integrations_.push_back(integ_pool[i]);
    std::size_t m = static_cast<std::size_t>(rng_.Range(2, 3));
    std::size_t rot = rng_.Below(sync_pool.size());
    for (std::size_t j = 0; j < m; ++j) {
      SyncSpec s;
      s.integration = integ_pool[i];
      s.name = sync_pool[(rot + j) % sync_pool.size()];
      s.async = rng_.Chance(0.8);
      s.spread = rng_.Chance(0.25);
      if (rng_.Chance(0.4)) s.timeout = Millis(rng_.Range(20, 180) * 60000 + rng_.Range(1, 999));
      if (s.async && rng_.Chance(0.25)) s.heartbeat = Millis(rng_.Range(2, 10) * 60000 + 3);
      syncs_.push_back(s);
    }
  }
  const std::vector<std::size_t> caps = {0, 0, 1, 2, 3};
  max_concurrent_runs_ = rng_.Pick(caps);
  default_timeout_ = (rng_.Chance(0.5) ? Millis(24h) : Millis(4h)) + Millis(17);  // odd: rare ties
  const std::vector<std::size_t> hist = {20, 3, 0};
  run_history_ = rng_.Pick(hist);
  max_fires_ = rng_.Chance(0.8) ? 4096 : static_cast<std::size_t>(rng_.Range(1, 2));
}

Options Simulator::EngineOptions() {
  Options o;
  o.clock = &clock_;
  o.executor = io_.get_executor();
  o.run_executor = io_.get_executor();
  o.database_path = path_;
  o.hold_timers = true;
  o.max_concurrent_runs = max_concurrent_runs_;
  o.default_run_timeout = default_timeout_;
  o.run_history = run_history_;
  o.max_fires_per_wakeup = max_fires_;
  o.random_seed = opts_.seed * 1000003 + static_cast<std::uint64_t>(life_) + 1;
  return o;
}

Model::Config Simulator::ModelConfig() const {
  Model::Config c;
  c.max_concurrent_runs = max_concurrent_runs_;
  c.default_run_timeout = default_timeout_;
  return c;
}

bool Simulator::OpenEngine() {
  ++life_;
  plan_ = std::make_shared<testing::FaultPlan>();
  core::EngineCore::StoreWrapper wrap = testing::WrapWith(plan_);
  if (opts_.trace) {
    wrap = [plan = plan_](std::unique_ptr<store::Store> inner) -> std::unique_ptr<store::Store> {
      return std::make_unique<testing::FaultStore>(std::make_unique<TraceStore>(std::move(inner)),
                                                   plan);
    };
  }
  auto e = internal::EngineAccess::OpenWrapped(EngineOptions(), std::move(wrap));
  if (!e.ok()) {
    model_.Fail("Engine::Open of " + path_ + " failed: " + e.status().ToString());
    return false;
  }
  engine_ = std::move(e).value();
  RegisterCallbacks();
  return true;
}

void Simulator::RegisterCallbacks() {
  for (const SyncSpec& s : syncs_) {
    Status st;
    if (s.async) {
      st = engine_->RegisterAsyncCallback(
          s.integration, s.name,
          [this](const RunContext& ctx, RunDone done) { OnAsync(ctx, std::move(done)); });
    } else {
      st = engine_->RegisterCallback(s.integration, s.name,
                                     [this](const RunContext& ctx) { return OnSync(ctx); });
    }
    if (!st.ok()) model_.Fail("RegisterCallback: " + st.ToString());
  }
}

void Simulator::Shutdown(bool crash) {
  model_.OnShutdown(crash);
  shutting_down_ = true;
  engine_.reset();
  shutting_down_ = false;
  PollAll();  // the late answers of the gone engine's runs
}

void Simulator::Reopen(bool crash) {
  // Time passes while the process is down: nothing, minutes, hours or days.
  std::uint64_t c = rng_.Below(100);
  Millis down = c < 35   ? Millis(0)
                : c < 65 ? Millis(rng_.Range(1, 1800) * 1000)
                : c < 90 ? Millis(rng_.Range(1, 12) * 3600000)
                         : Millis(rng_.Range(1, 5) * 86400000);
  if (down.count() > 0) {
    clock_.AdvanceTo(Now() + down);
    PollAll();
  }
  Trace("  down for " + Dur(down) + (crash ? " after a crash" : " after a clean stop"));
  if (rng_.Chance(0.3)) {
    const std::vector<std::size_t> caps = {0, 0, 1, 2, 3};
    max_concurrent_runs_ = rng_.Pick(caps);
  }
  if (!OpenEngine()) return;
  if (rng_.Chance(0.5)) {  // a host that defines its catalog at every start, unchanged
    for (const auto& [iname, integ] : model_.integrations()) {
      for (const auto& [sname, sync] : integ.syncs) {
        Status st = engine_->DefineSync(iname, sync.def);
        if (!st.ok())
          model_.Fail("re-defining " + iname + "/" + sname + " after a restart: " + st.ToString());
      }
    }
  }
  engine_->ReleaseTimers();
  model_.OnReopen(Now(), crash, ModelConfig());
  PollAll();
  CheckAll(/*after_command=*/false);
  CloseInstant();
}

void Simulator::ArmFault(testing::FaultPlan::Mode mode, std::uint64_t k) {
  // Called after a barrier or a command, when the writer has nothing queued: the commit the fault
  // lands on is then the (k+1)-th from now, whatever the writer's timing.
  std::lock_guard lock(plan_->mu);
  plan_->fired.store(false);
  plan_->mode = mode;
  plan_->at = mode == testing::FaultPlan::Mode::kNone ? 0 : plan_->commits.load() + 1 + k;
}

void Simulator::Barrier() {
  // A real change, so that every engine commits it, through the same queue as everything else:
  // once it is acknowledged, everything queued before it is committed.
  barrier_toggle_ = !barrier_toggle_;
  SyncDefinition d;
  d.name = "barrier";
  d.frequency = barrier_toggle_ ? "1h" : "2h";
  d.auto_start = false;
  Status st = engine_->DefineSync("sim-barrier", d);
  if (!st.ok()) model_.Fail("the barrier command failed: " + st.ToString());
}

// ---------------------------------------------------------------------------------------------
// Steps

SimResult Simulator::Run() {
  MakeWorld();
  if (OpenEngine()) {
    engine_->ReleaseTimers();
    model_.set_config(ModelConfig());
  }
  for (step_ = 1; step_ <= opts_.steps && !model_.failed(); ++step_) {
    Step();
    result_.steps = step_;
    if (model_.failed()) {
      result_.ok = false;
      result_.failed_step = step_;
      result_.action = action_;
      result_.failure = model_.failure();
      if (engine_) {  // the engine's own gauges, beside the model's view
        EngineMetrics m = engine_->GetMetrics();
        std::size_t model_in_flight = 0;
        for (const auto& [k, sm] : model_.schedules()) model_in_flight += sm.run.has_value();
        result_.failure +=
            "\n    engine metrics: runs_in_flight=" + std::to_string(m.runs_in_flight) +
            " runs_waiting=" + std::to_string(m.runs_waiting) +
            " (model: " + std::to_string(model_in_flight) + " in flight)";
      }
    }
  }
  if (model_.failed() && result_.ok) {  // failed while opening
    result_.ok = false;
    result_.failure = model_.failure();
  }
  result_.virtual_time = clock_.Now() - start_;
  result_.model = model_.stats();
  return result_;
}

void Simulator::Step() {
  std::uint64_t c = rng_.Below(1000);
  if (c < 330) {
    AdvanceStep();
  } else if (c < 890) {
    CommandStep();
  } else if (c < 930) {
    CrashStep();
  } else if (c < 965) {
    FailStep();
  } else {
    RestartStep();
  }
}

Millis Simulator::PickDuration() {
  std::uint64_t c = rng_.Below(100);
  if (c < 45) return Millis(rng_.Range(1, 600) * 1000);                     // up to 10 min
  if (c < 85) return Millis(rng_.Range(10, 360) * 60000);                   // up to 6 h
  return Millis(rng_.Range(6, 72) * 3600000 + rng_.Range(0, 3599) * 1000);  // up to 3 days
}

void Simulator::AdvanceStep() {
  Millis d = PickDuration();
  action_ = "advance " + Dur(d);
  Trace("step " + std::to_string(step_) + ": " + action_);
  Drive(Now() + d);
  CheckAll(false);
}

void Simulator::CommandStep() {
  ++result_.commands;
  Cmd c = MakeCommand(/*allow_invalid=*/true, /*mutating_only=*/false);
  if (c.invalid) ++result_.invalid;
  action_ = c.desc;
  Execute(c, Mode::kNormal);
}

void Simulator::Execute(Cmd& cmd, Mode mode) {
  Trace("step " + std::to_string(step_) + ": " + cmd.desc);
  Snapshot before;
  if (mode != Mode::kCrash) before = TakeSnapshot();
  cancels_in_command_.clear();
  in_command_ = true;
  Status st = cmd.engine();
  in_command_ = false;
  const bool fired = plan_ && plan_->fired.load();
  if (mode == Mode::kFail) {  // the writer is idle: no commit is in progress
    ArmFault(testing::FaultPlan::Mode::kNone, 0);
  }
  // The digest takes the code only: a fault's message counts commits, and group commit makes
  // that count depend on thread timing (what the commit does does not).
  result_.hash = Fnv(result_.hash, std::string(StatusCodeName(st.code())));
  if (opts_.trace) std::printf("  -> %s\n", st.ToString().c_str());
  if (mode == Mode::kFail && fired && st.ok()) {
    model_.Fail(cmd.desc + ": its commit failed and it answered OK (a failed commit is never " +
                "reported as success)");
    return;
  }
  model_.set_allow_errors(mode != Mode::kNormal);
  cmd.model();
  model_.set_allow_errors(false);
  for (const auto& [serial, code] : cancels_in_command_) {
    if (!st.ok()) {
      model_.Fail(cmd.desc + " failed (" + st.ToString() + ") yet cancelled run #" +
                  std::to_string(serial));
      return;
    }
    model_.OnCancel(Now(), serial, code);
  }
  cancels_in_command_.clear();
  if (mode == Mode::kCrash) {
    if (st.ok()) CheckAll(/*after_command=*/true);  // learns what the command set
    return;
  }
  if (!st.ok()) {
    std::string d = Diff(before, TakeSnapshot());
    if (!d.empty()) {
      model_.Fail(cmd.desc + " failed (" + st.ToString() + ") but changed the state: " + d);
      return;
    }
  } else {
    CheckAll(/*after_command=*/true);
    model_.BeginInstant(Now());  // a regrid may have made a slot due at once
  }
  Settle();
  CheckAll(false);
}

void Simulator::CrashStep() {
  ++result_.crashes;
  Barrier();
  if (model_.failed()) return;
  const bool command_victim = rng_.Chance(0.65);
  const std::vector<std::uint64_t> ks = {0, 0, 1, 1, 2};
  const std::uint64_t k = command_victim ? rng_.Pick(ks) : 0;
  ArmFault(testing::FaultPlan::Mode::kCrash, k);
  if (command_victim) {
    Cmd c = MakeCommand(/*allow_invalid=*/false, /*mutating_only=*/true);
    action_ = "crash at commit +" + std::to_string(k + 1) + " of " + c.desc;
    Execute(c, Mode::kCrash);
    if (!plan_->fired.load()) ArmFault(testing::FaultPlan::Mode::kCrash, 0);  // the writer is idle
    model_.set_crashed(true);
    PollAll();  // runs whose dispatch was committed reach their callbacks
  } else {
    Millis d = Millis(rng_.Range(1, 240) * 60000);
    action_ = "crash, the store dead for " + Dur(d) + " of running";
    Trace("step " + std::to_string(step_) + ": " + action_);
    model_.set_crashed(true);
    no_invocations_ = true;
    Drive(Now() + d);
    no_invocations_ = false;
  }
  if (model_.failed()) return;
  Shutdown(/*crash=*/true);
  Reopen(/*crash=*/true);
}

void Simulator::FailStep() {
  ++result_.fails;
  Barrier();
  if (model_.failed()) return;
  const std::uint64_t k = rng_.Chance(0.6) ? 0 : 1;
  ArmFault(testing::FaultPlan::Mode::kFail, k);
  Cmd c = MakeCommand(/*allow_invalid=*/false, /*mutating_only=*/true);
  action_ = "commit +" + std::to_string(k + 1) + " fails in " + c.desc;
  Execute(c, Mode::kFail);
}

void Simulator::RestartStep() {
  ++result_.restarts;
  action_ = "clean restart";
  Trace("step " + std::to_string(step_) + ": " + action_);
  Shutdown(/*crash=*/false);
  Reopen(/*crash=*/false);
}

// ---------------------------------------------------------------------------------------------
// Commands

std::string Simulator::PickIntegration(bool invalid) {
  if (invalid) {
    const std::vector<std::string> bad = {"no-such", "bad/key", ""};
    return rng_.Pick(bad);
  }
  return rng_.Pick(integrations_);
}

std::string Simulator::PickConnection(bool invalid) {
  if (invalid) {
    const std::vector<std::string> bad = {"", std::string("ctl\x01x"), std::string(256, 'c')};
    return rng_.Pick(bad);
  }
  return rng_.Pick(connections_);
}

const Simulator::SyncSpec* Simulator::PickSync(const std::string& integration) {
  std::vector<const SyncSpec*> v;
  for (const SyncSpec& s : syncs_) {
    if (s.integration == integration) v.push_back(&s);
  }
  if (v.empty()) return &syncs_[rng_.Below(syncs_.size())];
  return v[rng_.Below(v.size())];
}

std::string Simulator::PickSyncName(const std::string& integration, bool invalid) {
  if (invalid) {
    const std::vector<std::string> bad = {"nosuch", "bad name"};
    return rng_.Pick(bad);
  }
  return PickSync(integration)->name;
}

std::string Simulator::PickVariant(bool invalid, bool base_ok) {
  if (invalid) {
    const std::vector<std::string> bad = {"base", "bad variant", "", "v9"};
    return rng_.Pick(bad);
  }
  if (base_ok && rng_.Chance(0.6)) return std::string(kBaseVariant);
  return rng_.Pick(variants_);
}

std::string Simulator::PickFrequency(bool invalid) {
  std::vector<std::string> good, bad;
  for (const FrequencyCase& c : FrequencyTable()) {
    bool ok = c.value && *c.value >= FrequencyBounds{}.min && *c.value <= FrequencyBounds{}.max;
    (ok ? good : bad).push_back(c.text);
  }
  return invalid ? rng_.Pick(bad) : rng_.Pick(good);
}

Target Simulator::PickTarget(bool invalid) {
  const std::uint64_t w = invalid ? rng_.Below(4) : 99;
  Target t;
  t.integration = PickIntegration(w == 0);
  if (rng_.Chance(0.7) || w == 1) t.connection = PickConnection(w == 1);
  if (rng_.Chance(0.5) && w != 2 && w != 3) return t;
  std::size_t n = static_cast<std::size_t>(rng_.Range(1, 2));
  for (std::size_t i = 0; i < n; ++i) {
    SyncSelector sel;
    sel.name = PickSyncName(t.integration, w == 2 && i == 0);
    sel.variant = (w == 3 && i == 0) ? std::string("v9") : PickVariant(false, true);
    if (std::find(t.syncs.begin(), t.syncs.end(), sel) == t.syncs.end()) t.syncs.push_back(sel);
  }
  return t;
}

static std::string TargetString(const Target& t) {
  std::string s = t.integration + (t.connection ? "/" + *t.connection : std::string("/*"));
  for (const SyncSelector& sel : t.syncs) s += " " + sel.name + "::" + sel.variant;
  return s;
}

Simulator::Cmd Simulator::MakeCommand(bool allow_invalid, bool mutating_only) {
  enum Kind {
    kDefine,
    kAdd,
    kDelConn,
    kCreateVar,
    kDelVar,
    kLimits,
    kStart,
    kPause,
    kUpdateFreq,
    kStatus,
    kTrigger,
    kResync
  };
  Cmd c;
  const bool invalid = allow_invalid && rng_.Chance(0.12);
  c.invalid = invalid;
  Kind kind;
  const std::uint64_t client = rng_.Below(3);
  const std::uint64_t r = rng_.Below(100);
  if (client == 0) {
    kind = r < 30   ? kDefine
           : r < 55 ? kAdd
           : r < 63 ? kDelConn
           : r < 83 ? kCreateVar
           : r < 93 ? kDelVar
                    : kLimits;
  } else if (client == 1) {
    kind = r < 35 ? kStart : r < 65 ? kPause : r < 85 ? kUpdateFreq : kStatus;
  } else {
    kind = r < 45 ? kTrigger : r < 70 ? kResync : kStatus;
  }
  bool any_connection = false;
  for (const auto& [n, i] : model_.integrations()) any_connection |= !i.connections.empty();
  if (model_.integrations().empty() || (rng_.Chance(0.1) && model_.integrations().size() < 2)) {
    kind = kDefine;
  } else if (!any_connection && rng_.Chance(0.5)) {
    kind = kAdd;
  }
  if (mutating_only && kind == kStatus) kind = kStart;
  const std::string cl = "client " + std::to_string(client) + ": ";
  const std::uint64_t w = invalid ? rng_.Below(4) : 99;

  switch (kind) {
    case kDefine: {
      std::string integ =
          w == 0 ? std::string(rng_.Chance(0.5) ? "bad/key" : "") : PickIntegration(false);
      const SyncSpec* spec = PickSync(integ);
      SyncDefinition d;
      d.name = w == 1 ? std::string(rng_.Chance(0.5) ? "bad name" : "") : spec->name;
      d.frequency = PickFrequency(w == 2);
      d.auto_start = rng_.Chance(0.7);
      d.overlap = rng_.Chance(0.3) ? OverlapPolicy::kBufferOne : OverlapPolicy::kSkip;
      d.retry.max = rng_.Chance(0.5) ? 0 : static_cast<int>(rng_.Range(1, 3));
      const std::vector<std::int64_t> backoffs = {30, 60, 120, 300, 600};
      d.retry.backoff = Millis(rng_.Pick(backoffs) * 1000 + rng_.Range(0, 999));
      d.spread = spec->spread;
      d.timeout = spec->timeout;
      d.heartbeat_timeout = spec->heartbeat;
      if (w == 3) d.timeout = Millis(rng_.Chance(0.5) ? 0 : -5000);
      std::ostringstream o;
      o << cl << "DefineSync(" << integ << ", " << d.name << ", \"" << d.frequency << "\""
        << (d.auto_start ? ", auto" : ", manual")
        << (d.overlap == OverlapPolicy::kBufferOne ? ", buffer_one" : "") << ", retry "
        << d.retry.max << "x" << Dur(d.retry.backoff) << (d.spread ? ", spread" : "")
        << (d.timeout ? ", timeout " + Dur(*d.timeout) : std::string())
        << (d.heartbeat_timeout ? ", heartbeat " + Dur(*d.heartbeat_timeout) : std::string())
        << ")";
      c.desc = o.str();
      auto st = std::make_shared<Status>();
      c.engine = [this, integ, d, st] { return *st = engine_->DefineSync(integ, d); };
      c.model = [this, integ, d, st] { model_.DefineSync(Now(), integ, d, *st); };
      break;
    }
    case kAdd:
    case kDelConn: {
      std::string integ = PickIntegration(w == 0);
      std::string conn = PickConnection(w == 1 || (kind == kAdd && w == 2));
      auto st = std::make_shared<Status>();
      if (kind == kAdd) {
        c.desc = cl + "AddConnection(" + integ + ", " + conn + ")";
        c.engine = [this, integ, conn, st] { return *st = engine_->AddConnection(integ, conn); };
        c.model = [this, integ, conn, st] { model_.AddConnection(Now(), integ, conn, *st); };
      } else {
        c.desc = cl + "DeleteConnection(" + integ + ", " + conn + ")";
        c.engine = [this, integ, conn, st] { return *st = engine_->DeleteConnection(integ, conn); };
        c.model = [this, integ, conn, st] { model_.DeleteConnection(Now(), integ, conn, *st); };
      }
      break;
    }
    case kCreateVar:
    case kDelVar:
    case kUpdateFreq: {
      ScheduleKey key;
      key.integration = PickIntegration(w == 0);
      key.connection = PickConnection(w == 1);
      key.sync = PickSyncName(key.integration, w == 2);
      key.variant = PickVariant(w == 3, kind == kUpdateFreq);
      auto st = std::make_shared<Status>();
      if (kind == kCreateVar) {
        c.desc = cl + "CreateVariant(" + ToString(key) + ")";
        c.engine = [this, key, st] { return *st = engine_->CreateVariant(key).status(); };
        c.model = [this, key, st] { model_.CreateVariant(Now(), key, *st); };
      } else if (kind == kDelVar) {
        c.desc = cl + "DeleteVariant(" + ToString(key) + ")";
        c.engine = [this, key, st] { return *st = engine_->DeleteVariant(key); };
        c.model = [this, key, st] { model_.DeleteVariant(Now(), key, *st); };
      } else {
        if (w == 3) key.variant = std::string(kBaseVariant);
        std::optional<std::string> f;
        if (w == 3 || rng_.Chance(0.75)) f = PickFrequency(w == 3);
        c.desc =
            cl + "UpdateFrequency(" + ToString(key) + ", " + (f ? "\"" + *f + "\"" : "null") + ")";
        auto res = std::make_shared<std::optional<Result<Millis>>>();
        c.engine = [this, key, f, res] {
          res->emplace(engine_->UpdateFrequency(key, f));
          return (*res)->status();
        };
        c.model = [this, key, f, res] { model_.UpdateFrequency(Now(), key, f, **res); };
      }
      break;
    }
    case kLimits: {
      std::string integ = PickIntegration(w == 0);
      std::size_t cap = static_cast<std::size_t>(rng_.Range(0, 3));
      c.desc = cl + "SetIntegrationLimits(" + integ + ", " + std::to_string(cap) + ")";
      auto st = std::make_shared<Status>();
      c.engine = [this, integ, cap, st] {
        return *st = engine_->SetIntegrationLimits(integ, IntegrationLimits{cap});
      };
      c.model = [this, integ, cap, st] { model_.SetLimits(Now(), integ, cap, *st); };
      break;
    }
    case kStatus: {
      Target t = PickTarget(invalid);
      c.desc = cl + "GetStatus(" + TargetString(t) + ")";
      auto res = std::make_shared<std::optional<Result<std::vector<ScheduleStatus>>>>();
      c.engine = [this, t, res] {
        res->emplace(engine_->GetStatus(t));
        return (*res)->status();
      };
      c.model = [this, t, res] { model_.GetStatus(Now(), t, **res); };
      break;
    }
    case kStart:
    case kPause:
    case kTrigger:
    case kResync: {
      Target t = PickTarget(invalid);
      Model::Cmd mc = kind == kStart     ? Model::Cmd::kStart
                      : kind == kPause   ? Model::Cmd::kPause
                      : kind == kTrigger ? Model::Cmd::kTrigger
                                         : Model::Cmd::kResync;
      static const char* kNames[] = {"Start", "Pause", "Trigger", "Trigger(full_resync)"};
      c.desc = cl + kNames[static_cast<int>(mc)] + "(" + TargetString(t) + ")";
      auto res = std::make_shared<std::optional<Result<CommandResult>>>();
      c.engine = [this, t, mc, res] {
        switch (mc) {
          case Model::Cmd::kStart:
            res->emplace(engine_->Start(t));
            break;
          case Model::Cmd::kPause:
            res->emplace(engine_->Pause(t));
            break;
          case Model::Cmd::kTrigger:
            res->emplace(engine_->Trigger(t, RunMode::kIncremental));
            break;
          case Model::Cmd::kResync:
            res->emplace(engine_->Trigger(t, RunMode::kFullResync));
            break;
        }
        return (*res)->status();
      };
      c.model = [this, t, mc, res] { model_.Command(Now(), mc, t, **res); };
      break;
    }
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Time

void Simulator::PollAll() {
  for (;;) {
    io_.restart();
    std::size_t n = io_.poll();
    std::optional<TimePoint> next = clock_.NextAlarm();
    if (next && *next <= Now()) {
      clock_.AdvanceTo(Now());  // posts the alarms due now
      continue;
    }
    if (n == 0) break;
  }
  for (std::uint64_t serial : to_erase_) runs_.erase(serial);
  to_erase_.clear();
}

void Simulator::CloseInstant() {
  ++result_.instants;
  model_.CloseInstant(Now(), [this](const Key& k) { return StatusOne(k); });
}

void Simulator::Settle() {
  PollAll();
  CloseInstant();
}

void Simulator::Drive(TimePoint end) {
  for (;;) {
    Settle();
    if (model_.failed()) return;
    const TimePoint now = Now();
    std::optional<TimePoint> next = clock_.NextAlarm();
    std::optional<TimePoint> mine = model_.NextEvent(now);
    if (mine && (!next || *mine < *next)) next = mine;
    if (!next || *next > end) {
      if (end > now) {
        model_.BeginInstant(end);
        clock_.AdvanceTo(end);
        Settle();
      }
      return;
    }
    model_.BeginInstant(*next);
    clock_.AdvanceTo(*next);
  }
}

// ---------------------------------------------------------------------------------------------
// Status

Simulator::Snapshot Simulator::TakeSnapshot() {
  Snapshot snap;
  for (const auto& [name, integ] : model_.integrations()) {
    auto r = engine_->GetStatus(Target{name, std::nullopt, {}});
    if (r.ok()) snap[name] = std::move(r).value();
  }
  return snap;
}

void Simulator::CheckAll(bool after_command) {
  if (model_.failed() || model_.crashed()) return;
  Snapshot snap = TakeSnapshot();
  if (opts_.trace) {  // every status that changed since the last full check
    for (const auto& [name, list] : snap) {
      for (const ScheduleStatus& st : list) {
        std::string line = StatusLine(st);
        std::string& last = traced_[ToString(st.key)];
        if (line != last) std::printf("      status %s\n", line.c_str());
        last = line;
      }
    }
  }
  model_.CheckAll(Now(), snap, after_command);
}

std::optional<ScheduleStatus> Simulator::StatusOne(const Key& key) {
  Target t{std::get<0>(key), std::get<1>(key), {SyncSelector{std::get<2>(key), std::get<3>(key)}}};
  auto r = engine_->GetStatus(t);
  if (!r.ok() || r->size() != 1) return std::nullopt;
  return r->front();
}

std::string Simulator::Diff(const Snapshot& a, const Snapshot& b) {
  for (const auto& [name, list] : a) {
    auto it = b.find(name);
    if (it == b.end()) return "integration " + name + " is gone";
    for (std::size_t i = 0; i < std::max(list.size(), it->second.size()); ++i) {
      if (i >= list.size()) return "new schedule " + StatusLine(it->second[i]);
      if (i >= it->second.size()) return "schedule gone: " + StatusLine(list[i]);
      std::string x = StatusLine(list[i]), y = StatusLine(it->second[i]);
      if (x != y) return "before: " + x + "\n    after:  " + y;
    }
  }
  for (const auto& [name, list] : b) {
    if (!a.count(name)) return "new integration " + name;
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Callbacks

void Simulator::Observe(const std::string& line) {
  result_.hash = Fnv(result_.hash, line);
  result_.hash = Fnv(result_.hash, "\n");
  if (opts_.trace) std::printf("%s\n", line.c_str());
}

void Simulator::Trace(const std::string& line) { Observe("[" + FormatTime(Now()) + "] " + line); }

RunReport Simulator::RandomOutcome(bool allow_hint, std::string& error, bool& ok,
                                   std::optional<Millis>& hint) {
  hint.reset();
  error.clear();
  if (rng_.Chance(0.3)) {
    ok = false;
    error = "sim: failure " + std::to_string(rng_.Below(100000));
    return RunReport::Failure(error);
  }
  ok = true;
  std::vector<ModelCounts> counts;
  if (rng_.Chance(0.3)) counts.push_back(ModelCounts{"Issue", rng_.Below(10), rng_.Below(5), 0});
  RunReport rep = RunReport::Success(std::move(counts));
  if (allow_hint && rng_.Chance(0.15)) {
    std::uint64_t c = rng_.Below(10);
    hint = c == 0   ? Millis(10s)                          // clamped up to 30 s
           : c == 1 ? Millis(std::chrono::hours(24 * 40))  // clamped down to 31 d
                    : Millis(rng_.Range(1, 360) * 60000 + rng_.Range(0, 999));
    rep.next_run_in = hint;
  }
  return rep;
}

void Simulator::OnAsync(const RunContext& ctx, RunDone done) {
  const TimePoint now = Now();
  if (in_command_) model_.Fail("callback of " + ctx.run_id + " ran inside a command's call");
  if (no_invocations_) {
    model_.Fail("the callback of run " + ctx.run_id + " was called though the store had " +
                "crashed before its record could be committed");
  }
  const std::uint64_t serial = ++next_serial_;
  Observe("    invoke #" + std::to_string(serial) + " " + ToString(ctx.key) + " " + ctx.run_id +
          " slot " + FormatTime(ctx.slot) + " " + std::string(ToString(ctx.mode)) + " attempt " +
          std::to_string(ctx.attempt) + " at " + FormatTime(now));
  const bool current = life_ > 0 && !shutting_down_;
  if (current) model_.OnInvoke(now, serial, ctx);
  if (rng_.Chance(0.04)) {
    std::string msg = "sim: thrown at once by #" + std::to_string(serial);
    if (current && model_.InFlight(serial)) {
      model_.OnComplete(now, serial, false, msg, std::nullopt);
    }
    Observe("    throw #" + std::to_string(serial));
    throw std::runtime_error(msg);
  }
  auto r = std::make_unique<SimRun>();
  r->life = life_;
  r->serial = serial;
  r->ctx = ctx;
  r->done = std::move(done);
  const SyncSpec* spec = nullptr;
  for (const SyncSpec& s : syncs_) {
    if (s.integration == ctx.key.integration && s.name == ctx.key.sync) spec = &s;
  }
  r->timeout_at = now + (spec && spec->timeout ? *spec->timeout : default_timeout_);
  if (spec) r->heartbeat = spec->heartbeat;
  r->last_beat = now;
  if (rng_.Chance(0.08)) {  // answers before returning
    bool ok = false;
    std::string err;
    std::optional<Millis> hint;
    RunReport rep = RandomOutcome(true, err, ok, hint);
    if (current && model_.InFlight(serial)) model_.OnComplete(now, serial, ok, err, hint);
    Observe("    done at once #" + std::to_string(serial) + (ok ? " ok" : " error"));
    r->done(std::move(rep));
    return;
  }
  PlanRun(*r);
  SimRun& ref = *r;
  runs_[serial] = std::move(r);
  ref.alarm = clock_.MakeAlarm(io_.get_executor());
  ref.ctx.cancel.OnCancel([this, serial] { OnCancelled(serial); });
  auto it = runs_.find(serial);
  if (it != runs_.end() && !it->second->finished) Arm(*it->second);
}

void Simulator::PlanRun(SimRun& r) {
  const TimePoint now = Now();
  const Millis dur = rng_.Chance(0.1)
                         ? Millis(0)
                         : PickDuration() / (rng_.Chance(0.5) ? 4 : 1) + Millis(rng_.Range(1, 999));
  const bool hang = rng_.Chance(0.04);
  const TimePoint end = hang ? now + std::chrono::hours(48) : now + dur;
  TimePoint deadline = r.timeout_at;
  if (r.heartbeat) {
    const Millis h = *r.heartbeat;
    const Millis iv = h / 3 + Millis(7);
    const int stall = rng_.Chance(0.2) ? static_cast<int>(rng_.Range(0, 4)) : INT_MAX;
    TimePoint last = now;
    for (int k = 1; k <= stall && r.beats.size() < 200; ++k) {
      const TimePoint b = now + k * iv;
      const TimePoint d = std::min(r.timeout_at, last + h);
      if (b >= d || b > end || b == r.timeout_at) break;
      r.beats.push_back(b);
      last = b;
    }
    deadline = std::min(r.timeout_at, last + h);
  }
  if (!hang) {
    TimePoint tc = now + dur;
    if (tc == deadline) tc += Millis(1);  // never at the deadline's millisecond: order unknown
    r.complete_at = tc;
  }
  r.double_done = rng_.Chance(0.05);
}

void Simulator::Arm(SimRun& r) {
  std::optional<TimePoint> t;
  if (!r.beats.empty()) t = r.beats.front();
  if (r.complete_at && (!t || *r.complete_at < *t)) t = r.complete_at;
  if (!t) {
    r.alarm->Cancel();
    return;
  }
  const std::uint64_t serial = r.serial;
  r.alarm->SetAt(*t, [this, serial] { Act(serial); });
}

void Simulator::Act(std::uint64_t serial) {
  auto it = runs_.find(serial);
  if (it == runs_.end()) return;
  SimRun& r = *it->second;
  const TimePoint now = Now();
  const bool current = r.life == life_ && !shutting_down_;
  while (!r.beats.empty() && r.beats.front() <= now) {
    r.beats.erase(r.beats.begin());
    if (r.finished) continue;
    if (current && model_.InFlight(serial)) model_.OnHeartbeat(now, serial);
    r.last_beat = now;
    r.ctx.heartbeat();  // also after the engine is gone: engine.h allows it
  }
  if (!r.finished && r.complete_at && *r.complete_at <= now) Finish(r);
  if (!r.finished) {
    Arm(r);
  } else {
    to_erase_.push_back(serial);
  }
}

void Simulator::Finish(SimRun& r) {
  r.finished = true;
  const TimePoint now = Now();
  bool ok = r.report.status.ok();
  std::string err = r.report.status.ok() ? std::string() : r.report.status.message();
  std::optional<Millis> hint = r.report.next_run_in;
  RunReport rep = r.report;
  if (!r.ctx.cancel.cancelled()) rep = RandomOutcome(true, err, ok, hint);
  const bool current = r.life == life_ && !shutting_down_;
  if (current && model_.InFlight(r.serial)) model_.OnComplete(now, r.serial, ok, err, hint);
  Observe("    done #" + std::to_string(r.serial) + (ok ? " ok" : " error") +
          (hint ? " hint " + Dur(*hint) : std::string()) + (current ? "" : " (old engine)") +
          " at " + FormatTime(now));
  r.done(std::move(rep));
  if (r.double_done) r.done(RunReport::Failure("sim: a second answer, to be ignored"));
}

void Simulator::OnCancelled(std::uint64_t serial) {
  auto it = runs_.find(serial);
  if (it == runs_.end()) return;
  SimRun& r = *it->second;
  const TimePoint now = Now();
  const StatusCode code = r.ctx.cancel.reason().code();
  const bool current = r.life == life_ && !shutting_down_;
  Observe("    cancel #" + std::to_string(serial) + " " + std::string(StatusCodeName(code)) +
          (current ? "" : " (engine going away)") + " at " + FormatTime(now));
  if (current) {
    if (in_command_) {
      cancels_in_command_.emplace_back(serial, code);
    } else {
      model_.OnCancel(now, serial, code);
    }
  }
  if (r.finished) return;
  r.beats.clear();
  if (!current || code == StatusCode::kDeadlineExceeded) {
    // Abandoned by the engine: answer late (ignored), or never.
    if (rng_.Chance(0.5)) {
      r.complete_at = now + Millis(rng_.Range(0, 600000));
    } else {
      r.complete_at.reset();
    }
  } else {
    // Observed: stop soon, before any deadline of the run (the run stays in flight until then).
    TimePoint d = r.timeout_at;
    if (r.heartbeat) d = std::min(d, r.last_beat + *r.heartbeat);
    const std::int64_t bound = (d - now).count() - 1;
    const std::int64_t delay =
        (bound <= 0 || rng_.Chance(0.3)) ? 0 : rng_.Range(0, std::min<std::int64_t>(bound, 120000));
    r.complete_at = now + Millis(delay);
    std::uint64_t c = rng_.Below(10);
    r.report = c < 5   ? RunReport{Status::Cancelled("sim: observed the cancellation"), {}, {}}
               : c < 8 ? RunReport::Success()
                       : RunReport::Failure("sim: failed while cancelled");
  }
  if (r.alarm) Arm(r);
}

RunReport Simulator::OnSync(const RunContext& ctx) {
  const TimePoint now = Now();
  if (in_command_) model_.Fail("callback of " + ctx.run_id + " ran inside a command's call");
  if (no_invocations_) {
    model_.Fail("the callback of run " + ctx.run_id + " was called though the store had " +
                "crashed before its record could be committed");
  }
  const std::uint64_t serial = ++next_serial_;
  Observe("    invoke (sync) #" + std::to_string(serial) + " " + ToString(ctx.key) + " " +
          ctx.run_id + " slot " + FormatTime(ctx.slot) + " " + std::string(ToString(ctx.mode)) +
          " attempt " + std::to_string(ctx.attempt) + " at " + FormatTime(now));
  const bool current = life_ > 0 && !shutting_down_;
  if (current) model_.OnInvoke(now, serial, ctx);
  const std::uint64_t c = rng_.Below(20);
  auto complete = [&](bool ok, const std::string& err, std::optional<Millis> hint) {
    if (current && model_.InFlight(serial)) model_.OnComplete(now, serial, ok, err, hint);
    Observe("    done (sync) #" + std::to_string(serial) + (ok ? " ok" : " error"));
  };
  if (c < 3) {
    std::string msg = "sim: std exception from #" + std::to_string(serial);
    complete(false, msg, std::nullopt);
    throw std::runtime_error(msg);
  }
  if (c == 3) {
    complete(false, "", std::nullopt);
    throw 42;  // not a std::exception: still an error, never a crash
  }
  bool ok = false;
  std::string err;
  std::optional<Millis> hint;
  RunReport rep = RandomOutcome(true, err, ok, hint);
  complete(ok, err, hint);
  return rep;
}

}  // namespace syncsched::sim
