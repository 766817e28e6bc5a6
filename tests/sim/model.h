// The simulator's reference model: what SPEC.md, the public headers and docs/design.md say the
// engine must do, written without reading the engine's code. The simulator tells the model every
// command it sends (with the engine's answer), every callback invocation, completion, heartbeat
// and cancellation it sees, and every instant virtual time reaches; the model checks each against
// what it expects and records the first violation.
//
// What the model knows exactly it checks exactly (states, frequencies, next slots on a grid
// anchored at the start, run and failure counts, command outcomes, caps, obligations). What the
// contract leaves open (the phase of a spread schedule, the jitter of a retry, the order of two
// events at the same millisecond) it checks as a range or an invariant, then learns the engine's
// value and goes on exactly from there.
//
// Thread safety: none; one simulator thread calls everything (callbacks run on the simulator's
// io_context, on that thread).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "syncsched/syncsched.h"

namespace syncsched::sim {

using Key = std::tuple<std::string, std::string, std::string, std::string>;
inline Key KeyOf(const ScheduleKey& k) { return {k.integration, k.connection, k.sync, k.variant}; }
inline ScheduleKey ScheduleKeyOf(const Key& k) {
  return ScheduleKey{std::get<0>(k), std::get<1>(k), std::get<2>(k), std::get<3>(k)};
}
std::string KeyString(const Key& k);

// The frequency strings the simulator sends, each with its value per SPEC §2 (nullopt: not a
// frequency at all). Written from the grammar, not from the engine's parser.
struct FrequencyCase {
  const char* text;
  std::optional<Millis> value;
};
const std::vector<FrequencyCase>& FrequencyTable();
std::optional<Millis> ModelFrequency(const std::string& text);
std::string TimeString(TimePoint t);
// Every field of a status on one line (failure messages, snapshot diffs).
std::string StatusLine(const ScheduleStatus& s);

// A sync as the model knows it: the definition in force and its parsed frequency.
struct SyncModel {
  SyncDefinition def;
  Millis freq{0};
};

struct IntegrationModel {
  std::map<std::string, SyncModel> syncs;
  std::set<std::string> connections;
  std::size_t max_concurrency = 0;
};

// A run in flight as the engine sees it: dispatched, not finished, not abandoned.
struct RunModel {
  std::uint64_t serial = 0;  // the simulator's id of the invocation
  std::string run_id;
  TimePoint slot;
  RunMode mode = RunMode::kIncremental;
  int attempt = 1;
  TimePoint invoked;
  TimePoint timeout_at;
  std::optional<Millis> heartbeat;
  TimePoint last_beat;
  bool cancelled = false;          // its token was fired by a pause or a full resync
  bool dispatched_paused = false;  // the schedule was PAUSED when it was dispatched
  TimePoint Deadline() const;
};

// A retry the engine may or must dispatch after a failed attempt.
struct RetryModel {
  std::string run_id;
  TimePoint slot;
  RunMode mode = RunMode::kIncremental;
  int next_attempt = 2;
  TimePoint failed_at;
  Millis base{0};                 // backoff * 2^(k-1) for the k-th retry
  bool must = false;              // due before the next slot: it has to happen
  std::optional<TimePoint> due;   // learned from status.next_retry
  bool paused_origin = false;     // the failed attempt ran while the schedule was paused
  bool mode_may_upgrade = false;  // a full resync trigger met it waiting: it may run as one
  bool loose = false;      // armed for a run ended by a restart: its due time is the engine's
  bool regridded = false;  // the next slot moved after it was armed
  // A run a stop ended while this retry was pending: the engine may retry that one instead.
  struct Alternative {
    std::string run_id;
    TimePoint slot;
    RunMode mode = RunMode::kIncremental;
    int next_attempt = 2;
  };
  std::optional<Alternative> alt;
};

// What the model expects of status.next_run when it cannot predict it to the millisecond.
struct NextExpect {
  enum class Kind : std::uint8_t {
    kKnown,         // value
    kOneOf,         // one of `candidates`
    kSpreadStart,   // [at + f/2, at + f/2 + f), on the key's phase grid for f if known
    kSpreadRegrid,  // [at, value], on the key's phase grid for f if known
    kOnGrid,        // (at, at + f], on the anchor's grid
  };
  Kind kind = Kind::kKnown;
  std::optional<TimePoint> value;
  std::vector<TimePoint> candidates;
  TimePoint at;
};

struct SchedModel {
  Key key;
  std::uint64_t uid = 0;  // 0 until learned from status
  bool started = false;
  std::optional<Millis> override_freq;

  // Grid (STARTED only).
  std::optional<TimePoint> anchor;        // any slot of the grid
  std::optional<TimePoint> spread_start;  // spread: started then, first scheduled slot not yet

  NextExpect next;      // kKnown with a value: the next slot
  bool hinted = false;  // the next slot comes from a run's next_run_in

  std::optional<RunModel> run;

  // Obligations: runs acknowledged (by a command or by the grid) and not dispatched yet.
  bool must = false;                   // a run is owed
  bool must_resync = false;            // ... and it is a full resync
  bool must_sched = false;             // it stems from the schedule (start, slot, buffer, catch-up)
  bool must_trig = false;              // it stems from a trigger
  std::optional<TimePoint> must_slot;  // the slot the run must carry, when known
  bool must_slot_known = false;
  bool must_or_retry = false;  // a due retry may stand for the owed run (after downtime)
  int may_runs = 0;            // runs the engine may dispatch (ambiguous cases)
  int may_resync = 0;          // full resyncs it may dispatch
  bool buffered = false;       // overlap buffer_one: a slot was skipped during the run
  bool buffered_must = true;   // the buffered run is owed (false: may)
  std::optional<RetryModel> retry;
  bool retry_due = false;  // the retry's due time has come

  // Counters and last result.
  std::uint64_t runs = 0, failures = 0, skipped = 0;
  bool skipped_known = true;
  std::uint64_t skipped_floor = 0;  // the last value confirmed by the engine
  std::optional<bool> last_ok;
  std::string last_error_has;  // a substring the last error must contain ("" = any)
  std::optional<TimePoint> last_finish;
  bool last_finish_known = true;
  // Two events of this schedule fell on one millisecond and the engine may have handled them in
  // either order: until the schedule is idle again, what follows is allowed, not owed.
  bool fuzzy = false;
  // The engine's status said a run of this schedule waits for a cap (as of the last read; reset
  // by a dispatch, a pause or a restart).
  bool engine_waiting = false;
};

class Model {
 public:
  struct Config {
    std::size_t max_concurrent_runs = 0;
    Millis default_run_timeout = std::chrono::hours(24);
    FrequencyBounds bounds;
  };

  explicit Model(Config config) : config_(config) {}

  // ---- failures ----
  bool failed() const { return !failure_.empty(); }
  const std::string& failure() const { return failure_; }
  void Fail(const std::string& what);
  // The store has crashed: nothing the engine does from now on is durable, so completions,
  // heartbeats and time are ignored and the checks wait for the reopen (invocations are still
  // checked: a callback is only called for a committed run).
  void set_crashed(bool crashed) { crashed_ = crashed; }
  // A valid command may fail (the store was made to fail): an error then changes nothing.
  void set_allow_errors(bool allow) { allow_errors_ = allow; }
  bool crashed() const { return crashed_; }
  void set_config(Config c) { config_ = c; }
  const Config& config() const { return config_; }

  // ---- catalog queries for the generator ----
  const std::map<std::string, IntegrationModel>& integrations() const { return integrations_; }
  const std::map<Key, SchedModel>& schedules() const { return schedules_; }
  const SchedModel* Find(const Key& k) const;

  // ---- commands: the engine's answer, checked and applied ----
  void DefineSync(TimePoint now, const std::string& integration, const SyncDefinition& def,
                  const Status& answer);
  void AddConnection(TimePoint now, const std::string& integration, const std::string& connection,
                     const Status& answer);
  void DeleteConnection(TimePoint now, const std::string& integration,
                        const std::string& connection, const Status& answer);
  void CreateVariant(TimePoint now, const ScheduleKey& key, const Status& answer);
  void DeleteVariant(TimePoint now, const ScheduleKey& key, const Status& answer);
  enum class Cmd : std::uint8_t { kStart, kPause, kTrigger, kResync };
  void Command(TimePoint now, Cmd cmd, const Target& target, const Result<CommandResult>& answer);
  void GetStatus(TimePoint now, const Target& target,
                 const Result<std::vector<ScheduleStatus>>& answer);
  void UpdateFrequency(TimePoint now, const ScheduleKey& key,
                       const std::optional<std::string>& frequency, const Result<Millis>& answer);
  void SetLimits(TimePoint now, const std::string& integration, std::size_t max_concurrency,
                 const Status& answer);

  // ---- runs ----
  void OnInvoke(TimePoint now, std::uint64_t serial, const RunContext& ctx);
  // A completion the engine records (not abandoned, not from an older engine).
  void OnComplete(TimePoint now, std::uint64_t serial, bool ok, const std::string& error,
                  std::optional<Millis> hint);
  void OnHeartbeat(TimePoint now, std::uint64_t serial);
  void OnCancel(TimePoint now, std::uint64_t serial, StatusCode reason);
  // Whether `serial` is a run the engine still has in flight.
  bool InFlight(std::uint64_t serial) const;
  // The cancellations the model expects now, by serial; checked at the close of each instant.
  void ExpectCancel(std::uint64_t serial, StatusCode code);

  // ---- time ----
  // The earliest instant after `now` at which the model expects the engine to act.
  std::optional<TimePoint> NextEvent(TimePoint now) const;
  // Processes the model's own events due at `t` (slots, deadlines, retries), before the engine's
  // handlers of that instant are observed.
  void BeginInstant(TimePoint t);
  // After every handler of instant `t` ran: obligations dispatched unless a cap is full.
  // `status_of` reads one schedule's status from the engine.
  using StatusFn = std::function<std::optional<ScheduleStatus>(const Key&)>;
  void CloseInstant(TimePoint t, const StatusFn& status_of);
  // Compares every schedule with the engine's status (all of them, sorted as GetStatus sorts).
  // `after_command`: right after a command, before its runs reached their callbacks.
  void CheckAll(TimePoint now, const std::map<std::string, std::vector<ScheduleStatus>>& all,
                bool after_command);

  // ---- restarts ----
  // The engine is gone: runs in flight end (interrupted, or cancelled by a clean stop).
  void OnShutdown(bool crash);
  // The engine reopened at `now` with `config` (timers released): missed slots collapse.
  void OnReopen(TimePoint now, bool crash, Config config);

  // Statistics for the report.
  struct Stats {
    std::uint64_t invocations = 0, completions = 0, abandons = 0, slots = 0, ties = 0, retries = 0,
                  learned = 0, recorded_at_reopen = 0;
  };
  const Stats& stats() const { return stats_; }

 private:
  SchedModel* FindMut(const Key& k);
  Millis FreqOf(const SchedModel& s) const;
  const SyncModel* SyncOf(const SchedModel& s) const;
  void Create(TimePoint now, const Key& key);
  void Remove(const Key& key);
  void StartOne(TimePoint now, SchedModel& s);
  void PauseOne(TimePoint now, SchedModel& s);
  void Regrid(TimePoint now, SchedModel& s, Millis old_f);
  void FireSlot(TimePoint t, SchedModel& s);
  void Abandon(TimePoint t, SchedModel& s);
  void EndRun(SchedModel& s);
  void Owe(SchedModel& s, bool sched, bool trig, bool resync, std::optional<TimePoint> slot);
  bool Saturated(const std::string& integration) const;
  std::size_t InFlightCount(const std::string* integration) const;
  // Resolves a target as SPEC §4 says; returns the error codes it may give (empty: resolves).
  std::vector<StatusCode> Resolve(const Target& target, std::vector<Key>& out) const;
  bool CheckError(const std::string& what, const Status& answer,
                  const std::vector<StatusCode>& allowed);
  void CheckOne(TimePoint now, SchedModel& s, const ScheduleStatus& st, bool after_command);
  void CheckOneImpl(TimePoint now, SchedModel& s, const ScheduleStatus& st, bool after_command);
  void LearnNext(TimePoint now, SchedModel& s, const ScheduleStatus& st);

  Config config_;
  std::string failure_;
  bool crashed_ = false;
  bool allow_errors_ = false;
  bool reopen_check_ = false;  // the first full check after a restart
  std::map<std::string, IntegrationModel> integrations_;
  std::map<Key, SchedModel> schedules_;
  std::set<std::string> run_ids_;  // every run id a callback was given (attempt 1)
  std::set<std::uint64_t> uids_;   // every schedule id seen
  std::map<std::pair<Key, std::int64_t>, std::int64_t> phases_;  // spread: (key, f) -> phase
  std::map<std::uint64_t, StatusCode> expected_cancels_;
  std::set<Key> touched_;  // schedules to read at the close of the instant
  std::set<Key> tie_;      // schedules with two events at this millisecond
  TimePoint instant_{};
  Stats stats_;
};

}  // namespace syncsched::sim
