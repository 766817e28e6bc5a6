// A deterministic simulation of one engine (FoundationDB's simulation, TigerBeetle's VOPR): from a
// seed, random commands of several simulated clients (valid and invalid), random callbacks
// (durations, outcomes, exceptions, hints, heartbeats, cancellations observed or not), virtual
// time moving by small and large jumps, crashes (a FaultStore drops every commit from a chosen
// one on; the engine is destroyed and the SQLite file reopened), transient commit failures and
// clean restarts. Everything runs on one thread: the engine's alarm and every callback run on
// one io_context that the simulator polls, in virtual time. The reference model (model.h) checks
// every step.
#pragma once

#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/fault_store.h"
#include "sim/model.h"
#include "support/test_database.h"
#include "syncsched/syncsched.h"

namespace syncsched::sim {

struct SimOptions {
  std::uint64_t seed = 1;
  std::uint64_t steps = 1000;
  bool trace = false;  // print every step and every run to stdout
  // The store: an SQLite file (default) or a fresh database on the PostgreSQL test server
  // (support/test_database.h; `--store pg`).
  bool postgres = false;
};

struct SimResult {
  bool ok = true;
  std::uint64_t steps = 0;        // steps completed (the failing one included)
  std::uint64_t failed_step = 0;  // 1-based; 0 when ok
  std::string action;             // the failing step's action
  std::string failure;            // the violated check
  std::uint64_t hash = 0;         // a digest of everything observed (determinism check)
  std::uint64_t instants = 0;     // virtual instants visited
  std::uint64_t crashes = 0, restarts = 0, fails = 0, commands = 0, invalid = 0;
  Millis virtual_time{0};
  Model::Stats model;
};

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : s_(seed) {}
  std::uint64_t Next() {  // splitmix64: the same sequence on every platform
    std::uint64_t z = (s_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  std::uint64_t Below(std::uint64_t n) { return n == 0 ? 0 : Next() % n; }
  std::int64_t Range(std::int64_t lo, std::int64_t hi) {  // inclusive
    return lo + static_cast<std::int64_t>(Below(static_cast<std::uint64_t>(hi - lo + 1)));
  }
  bool Chance(double p) { return static_cast<double>(Next() >> 11) * 0x1.0p-53 < p; }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[Below(v.size())];
  }

 private:
  std::uint64_t s_;
};

class Simulator {
 public:
  explicit Simulator(SimOptions options);
  ~Simulator();
  Simulator(const Simulator&) = delete;
  Simulator& operator=(const Simulator&) = delete;

  SimResult Run();

 private:
  // The fixed shape of the world of one seed.
  struct SyncSpec {
    std::string integration, name;
    bool async = true;
    bool spread = false;
    std::optional<Millis> timeout, heartbeat;
  };
  // A callback invocation the simulator is playing.
  struct SimRun {
    int life = 0;
    std::uint64_t serial = 0;
    RunContext ctx;
    RunDone done;
    std::unique_ptr<Alarm> alarm;
    std::optional<TimePoint> complete_at;  // nullopt: hangs until cancelled
    std::vector<TimePoint> beats;          // heartbeats still to send, ascending
    RunReport report;
    bool double_done = false;
    bool finished = false;
    TimePoint timeout_at;
    std::optional<Millis> heartbeat;
    TimePoint last_beat;
  };
  // One command: the engine call (which stores its answer) and the model's check of it.
  struct Cmd {
    std::string desc;
    std::function<Status()> engine;
    std::function<void()> model;
    bool invalid = false;
  };
  enum class Mode : std::uint8_t { kNormal, kCrash, kFail };

  // ---- world and engine ----
  void MakeWorld();
  Options EngineOptions();
  Model::Config ModelConfig() const;
  bool OpenEngine();
  void RegisterCallbacks();
  void Shutdown(bool crash);
  void Reopen(bool crash);
  void Barrier();
  // Arms the fault plan: `mode` at the (k+1)-th commit from now (kNone: disarms).
  void ArmFault(testing::FaultPlan::Mode mode, std::uint64_t k);

  // ---- steps ----
  void Step();
  void AdvanceStep();
  void CommandStep();
  void CrashStep();
  void FailStep();
  void RestartStep();
  Cmd MakeCommand(bool allow_invalid, bool mutating_only);
  void Execute(Cmd& cmd, Mode mode);

  // ---- time ----
  void PollAll();
  void CloseInstant();
  void Settle();
  void Drive(TimePoint end);
  TimePoint Now() const { return clock_.Now(); }

  // ---- status ----
  using Snapshot = std::map<std::string, std::vector<ScheduleStatus>>;
  Snapshot TakeSnapshot();
  void CheckAll(bool after_command);
  std::optional<ScheduleStatus> StatusOne(const Key& key);
  static std::string Diff(const Snapshot& a, const Snapshot& b);

  // ---- callbacks ----
  void OnAsync(const RunContext& ctx, RunDone done);
  RunReport OnSync(const RunContext& ctx);
  void PlanRun(SimRun& r);
  void Arm(SimRun& r);
  void Act(std::uint64_t serial);
  void Finish(SimRun& r);
  void OnCancelled(std::uint64_t serial);
  RunReport RandomOutcome(bool allow_hint, std::string& error, bool& ok,
                          std::optional<Millis>& hint);
  void Observe(const std::string& line);
  void Trace(const std::string& line);

  // ---- random inputs ----
  std::string PickIntegration(bool invalid);
  std::string PickConnection(bool invalid);
  const SyncSpec* PickSync(const std::string& integration);
  std::string PickSyncName(const std::string& integration, bool invalid);
  std::string PickVariant(bool invalid, bool base_ok);
  std::string PickFrequency(bool invalid);
  Target PickTarget(bool invalid);
  Millis PickDuration();

  SimOptions opts_;
  Rng rng_;
  VirtualClock clock_;
  boost::asio::io_context io_;
  std::string dir_, path_;
  std::unique_ptr<testing::TestDatabase> database_;  // PostgreSQL: the seed's database
  std::unique_ptr<Engine> engine_;
  std::shared_ptr<testing::FaultPlan> plan_;
  int life_ = 0;
  Model model_;

  std::vector<std::string> integrations_;
  std::vector<SyncSpec> syncs_;
  std::vector<std::string> connections_ = {"acme", "beta", "gamma"};
  std::vector<std::string> variants_ = {"v1", "v2"};

  // Engine options of this seed (re-drawn at some restarts).
  std::size_t max_concurrent_runs_ = 0;
  Millis default_timeout_{std::chrono::hours(24)};
  std::size_t run_history_ = 20;
  std::size_t max_fires_ = 4096;

  std::map<std::uint64_t, std::unique_ptr<SimRun>> runs_;
  std::vector<std::uint64_t> to_erase_;
  std::uint64_t next_serial_ = 0;
  bool in_command_ = false;
  bool shutting_down_ = false;
  bool no_invocations_ = false;  // the store has crashed and nothing is committed any more
  bool barrier_toggle_ = false;
  std::vector<std::pair<std::uint64_t, StatusCode>> cancels_in_command_;

  std::map<std::string, std::string> traced_;  // --trace: the last status line printed per key
  std::uint64_t step_ = 0;
  std::string action_;
  SimResult result_;
  TimePoint start_;
};

}  // namespace syncsched::sim
