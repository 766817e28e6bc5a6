// The vocabulary of the engine's API: keys, targets, outcomes, statuses and runs.
//
// All types here are plain values: copy them freely, use distinct objects from distinct threads.
// The one shared object is CancellationToken, which is thread-safe.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "syncsched/clock.h"
#include "syncsched/export.h"
#include "syncsched/status.h"

namespace syncsched {

// The variant every (connection, sync) has; it cannot be created or deleted.
inline constexpr std::string_view kBaseVariant = "base";

// Identifies one schedule.
struct ScheduleKey {
  std::string integration{};  // provider_config_key
  std::string connection{};   // connection_id
  std::string sync{};         // sync name
  std::string variant = std::string(kBaseVariant);

  friend bool operator==(const ScheduleKey&, const ScheduleKey&) = default;
};

// "integration/connection/sync::variant", for logs and messages.
SYNCSCHED_EXPORT std::string ToString(const ScheduleKey& key);

// Names one sync (and one variant of it) in a command.
struct SYNCSCHED_EXPORT SyncSelector {
  std::string name{};
  std::string variant = std::string(kBaseVariant);

  // Parses "name" (variant base) or "name::variant". Errors: INVALID_ARGUMENT naming `text` when
  // either part is empty or does not match ^[a-zA-Z0-9_-]+$ (1..255 bytes).
  static Result<SyncSelector> Parse(std::string_view text);
  friend bool operator==(const SyncSelector&, const SyncSelector&) = default;
};

// What a command applies to (SPEC §4). With a connection, it must exist and an empty `syncs`
// means every schedule of that connection (every variant). Without one, the command applies to
// every connection of the integration and an empty `syncs` means all syncs. A selector naming a
// sync or variant that exists nowhere in that scope fails the whole command.
struct Target {
  std::string integration{};
  std::optional<std::string> connection{};
  std::vector<SyncSelector> syncs{};
  // Fill CommandResult::outcomes with one entry per key. Bulk callers that only need the counts
  // (a start over a million schedules) set this to false and save the copies of the keys.
  bool report_keys = true;
};

enum class ScheduleState : std::uint8_t { kPaused, kStarted, kDeleted };
SYNCSCHED_EXPORT std::string_view ToString(ScheduleState state);  // "PAUSED", "STARTED", "DELETED"

enum class RunMode : std::uint8_t { kIncremental, kFullResync };
SYNCSCHED_EXPORT std::string_view ToString(RunMode mode);  // "incremental", "full_resync"

// What a command did to one schedule.
enum class Outcome : std::uint8_t {
  kStarted,         // start: PAUSED -> STARTED, a run dispatched now
  kAlreadyStarted,  // start: was STARTED; nothing changed
  kPaused,          // pause: STARTED -> PAUSED
  kAlreadyPaused,   // pause: was PAUSED; nothing changed
  kTriggered,       // trigger: a run dispatched now (or, for a full resync pre-empting a run in
                    // flight, as soon as that run has stopped)
  kAlreadyRunning,  // incremental trigger: a run was in flight; nothing changed
};
inline constexpr std::size_t kOutcomeCount = 6;
SYNCSCHED_EXPORT std::string_view ToString(Outcome outcome);  // "started", "already_started", ...

struct KeyOutcome {
  ScheduleKey key{};
  Outcome outcome = Outcome::kStarted;
};

struct CommandResult {
  std::array<std::size_t, kOutcomeCount> counts{};  // by Outcome
  std::vector<KeyOutcome> outcomes{};  // one per targeted schedule when Target::report_keys
  std::size_t Count(Outcome o) const { return counts[static_cast<std::size_t>(o)]; }
};

// Per-model counts a run may report.
struct ModelCounts {
  std::string model{};
  std::uint64_t added = 0;
  std::uint64_t updated = 0;
  std::uint64_t deleted = 0;
  friend bool operator==(const ModelCounts&, const ModelCounts&) = default;
};

// Nango's status of a schedule: RUNNING when a run is in flight, else PAUSED, STOPPED (deleted),
// or the last run's SUCCESS or ERROR (SUCCESS too for a started schedule that has not run yet).
enum class RunStatus : std::uint8_t { kRunning, kPaused, kStopped, kSuccess, kError };
SYNCSCHED_EXPORT std::string_view ToString(
    RunStatus status);  // "RUNNING", "PAUSED", "STOPPED", ...

// Why a schedule did not run when its grid said it would (SPEC issue 5, "why not").
enum class Reason : std::uint8_t {
  kPaused,           // the schedule was paused
  kSkippedOverlap,   // a slot came due while a run was in flight and was skipped
  kBufferedOverlap,  // a slot came due during a run; one run follows it (overlap buffer_one)
  kWaitingForCap,    // due, but a concurrency cap was reached: waiting in the due-ordered queue
  kRetryBackoff,     // the run failed; a retry waits its backoff
  kRetryDropped,     // the run failed; no retry, since it would reach the next slot
  kHint,             // the last run asked for its next run at another time
  kCatchUpRate,      // after downtime, held back by the catch-up rate
  kMissedWhileDown,  // slots passed while the engine was not running; collapsed into one run
};
SYNCSCHED_EXPORT std::string_view ToString(Reason reason);  // "paused", "skipped_overlap", ...

// One scheduling decision, kept in a small ring per schedule (newest last).
struct Decision {
  TimePoint at{};
  Reason reason = Reason::kPaused;
  std::string detail{};  // human-readable, e.g. "3 slots" or "retry 2 of 3 in 1m"
};

struct ScheduleStatus {
  ScheduleKey key{};
  std::uint64_t id = 0;  // unique per schedule, never reused (a recreated key gets a new id)
  ScheduleState state = ScheduleState::kPaused;
  RunStatus status = RunStatus::kPaused;
  Millis frequency{0};  // the override if any, else the sync's default
  bool frequency_overridden = false;
  std::optional<TimePoint> next_run{};  // set only when STARTED
  std::optional<TimePoint> last_start{};
  std::optional<TimePoint> last_finish{};
  std::optional<bool> last_ok{};             // the last finished run's result
  std::string last_error{};                  // the last finished run's error, empty if none
  std::vector<ModelCounts> last_counts{};    // what the last successful run reported
  std::uint64_t runs = 0;                    // finished runs
  std::uint64_t failures = 0;                // finished runs that failed
  std::uint64_t skipped = 0;                 // slots skipped (run in flight, or missed while down)
  std::optional<TimePoint> waiting_since{};  // due and waiting for a concurrency cap since then
  std::optional<TimePoint> next_retry{};     // a failed run's retry is due then
  std::vector<Decision> decisions{};         // the last scheduling decisions, oldest first
  // True while the schedule's last change (a run's outcome, its counters, its next slot) is in
  // memory only: the database refused the commit that records it (a full disk, an I/O error,
  // corruption). It is written with the next commit that succeeds; if the process ends first, a
  // run whose outcome was not recorded reads "interrupted" after the restart (its outcome is
  // unknown to the database) and the schedule is as last recorded. Always false without a
  // database.
  bool unrecorded = false;
};

// Cancellation of a run, as the callback sees it. Thread-safe; copies share one state.
class SYNCSCHED_EXPORT CancellationToken {
  struct State;

 public:
  CancellationToken();
  // Whether the run has been asked to stop.
  bool cancelled() const;
  // Why: CANCELLED (paused, deleted, pre-empted by a full resync, engine shutting down) or
  // DEADLINE_EXCEEDED (timeout, missed heartbeat). OK while not cancelled.
  Status reason() const;
  // Calls `fn` once when the run is cancelled, or at once on this thread if it already is.
  // Otherwise it runs on the thread that cancels the run, never under an engine lock: a command's
  // caller (Pause, DeleteConnection, DeleteVariant, a full-resync Trigger), an engine thread or
  // executor (the alarm, for a timeout or a missed heartbeat), or the thread destroying the
  // engine. Keep it short: signal the run's own thread and return. An exception `fn` throws, of
  // any type, is caught and dropped: it reaches neither the cancelling thread nor this one, the
  // other functions still run, and the command that cancelled the run still succeeds. An empty
  // `fn` is ignored.
  void OnCancel(std::function<void()> fn) const;

  // A registration made by OnCancelScoped: like std::stop_callback, destroying it (or calling
  // Reset) deregisters the function. Move-only; a default-constructed one registers nothing.
  // After Reset returns, the function is not running and will never run, with one exception: when
  // Reset is called from inside the function itself (on the cancelling thread), it returns at
  // once. Otherwise, if the function is running on another thread, Reset waits for it to return;
  // so the function must not wait for the thread that destroys its registration. Reset and the
  // destructor may run concurrently with Cancel (not with each other on one object).
  class [[nodiscard]] SYNCSCHED_EXPORT Registration {
   public:
    Registration() = default;
    Registration(Registration&& other) noexcept;
    Registration& operator=(Registration&& other) noexcept;
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;
    ~Registration() { Reset(); }
    // Deregisters now (idempotent).
    void Reset() noexcept;

   private:
    friend class CancellationToken;
    Registration(std::shared_ptr<State> state, std::uint64_t id)
        : state_(std::move(state)), id_(id) {}
    std::shared_ptr<State> state_;
    std::uint64_t id_ = 0;
  };

  // OnCancel with a registration: calls `fn` as OnCancel does (at once on this thread if already
  // cancelled, then the registration is empty), until the returned Registration is destroyed. Use
  // it when `fn` refers to something that may end before the run does. An empty `fn` is ignored.
  Registration OnCancelScoped(std::function<void()> fn) const;

  // Engine side: requests cancellation; returns false if already cancelled. Runs the OnCancel
  // functions on this thread, in the order they were registered, each exactly once (but for those
  // deregistered first); never throws (their exceptions are contained as above).
  bool Cancel(Status reason) const;

 private:
  std::shared_ptr<State> state_;
};

// What a sync callback is given. Valid for the duration of the callback; copy what must outlive it.
struct RunContext {
  ScheduleKey key{};
  std::string run_id{};  // unique per slot: an idempotency key; the same for retries of that slot
  TimePoint slot{};      // the slot's due time (the trigger time for a triggered run)
  RunMode mode = RunMode::kIncremental;
  int attempt = 1;  // 1 for the first attempt of a slot
  CancellationToken cancel{};
  // Tells the engine the run is alive; pushes back its heartbeat deadline. Any thread.
  std::function<void()> heartbeat{};
};

// What a run reports.
struct RunReport {
  Status status{};                    // OK for success; otherwise the error (its message is kept)
  std::vector<ModelCounts> counts{};  // optional per-model counts on success
  // Asks for the next run this long after this one finishes (later, to back off after a rate
  // limit, or sooner), clamped to the frequency bounds; the grid resumes after that run. A paused
  // schedule ignores it.
  std::optional<Millis> next_run_in{};

  static RunReport Success(std::vector<ModelCounts> counts = {}) {
    RunReport r;
    r.counts = std::move(counts);
    return r;
  }
  static RunReport Failure(std::string message) {
    RunReport r;
    r.status = Status::Internal(std::move(message));
    return r;
  }
};

// A histogram for metrics: counts[i] is the number of observations <= bounds[i] and greater than
// the bound before it; counts.back() (one more than bounds) counts the rest.
struct Histogram {
  std::vector<double> bounds{};
  std::vector<std::uint64_t> counts{};
  double sum = 0;
  std::uint64_t count = 0;
};

// Counters of the whole engine since it was opened (schedule gauges are current values).
// What a health check needs, read without waiting for the engine (Engine::GetHealth): the fields
// mean what EngineMetrics' fields of the same names mean.
struct EngineHealth {
  bool store_healthy = true;
  bool store_broken = false;
  std::string store_error{};
  std::uint64_t cluster_partitions_owned = 0;
  std::uint64_t cluster_partitions_total = 0;  // 0 outside cluster mode
  std::uint64_t cluster_nodes_live = 0;
  std::uint64_t cluster_withdrawals = 0;
};

struct EngineMetrics {
  std::uint64_t schedules_started = 0;  // gauge
  std::uint64_t schedules_paused = 0;   // gauge
  std::uint64_t runs_in_flight = 0;     // gauge: dispatched and not finished
  std::uint64_t runs_waiting = 0;       // gauge: due, waiting for a worker or a cap
  std::uint64_t runs_started = 0;
  std::uint64_t runs_succeeded = 0;
  std::uint64_t runs_failed = 0;     // errors, timeouts and cancellations included
  std::uint64_t runs_cancelled = 0;  // cancelled through their token (pause, delete, resync)
  std::uint64_t runs_timed_out = 0;
  std::uint64_t slots_skipped = 0;
  std::uint64_t retries = 0;  // retry attempts dispatched
  Histogram run_duration_seconds{};
  Histogram fire_lateness_seconds{};  // dispatch time minus slot time, scheduled runs only
  Histogram wait_seconds{};           // time due runs waited for a concurrency cap

  // The database (Options::database_path); all zero and healthy without one.
  // False from a commit the database refused (full disk, I/O error, corruption) until a commit
  // succeeds again; runs are not called meanwhile (their records cannot be written: each is
  // recorded as an error instead), and commands fail with the database's error. In cluster mode
  // also false while the engine's lease keeper has lost its connection to the database (its
  // leases lapse and it runs nothing) or has stopped for good, with store_error saying which.
  bool store_healthy = true;
  std::string store_error{};  // the refused commit's error, naming the file, while not healthy
  // True (for good) once the store refuses every further call, store_error saying why: the
  // SQLite store found corruption or could not roll back; the PostgreSQL store learned that a
  // commit it had reported as failed was applied after all (its answer was lost on the way, e.g.
  // a one-way network stall), or that another engine took its database over while its connection
  // was lost; in cluster mode, also when the engine's lease keeper stopped for good (its node name
  // was taken by another engine while this one was frozen or cut off). The engine's state then no
  // longer matches the database's (or it can run nothing again): close the engine and open
  // it again (Engine::Open recovers exactly what the database holds). The daemon does so by
  // exiting (docs/daemon.md), so that its supervisor restarts it.
  bool store_broken = false;
  std::uint64_t store_commits_failed = 0;  // commits refused, commands' included
  // Gauge: schedule rows and finished runs applied in memory that the database does not hold
  // yet (see ScheduleStatus::unrecorded). Retried with every later commit.
  std::uint64_t store_rows_unrecorded = 0;
  // Finished runs dropped from that backlog above its bound (100,000 runs): history entries
  // only; the schedules' own rows (counters, last outcome) are kept.
  std::uint64_t store_history_dropped = 0;
  // Gauge: bytes the database's page cache holds (SQLite; 0 on PostgreSQL and in memory), as of
  // the last commit. It grows to Options::database_cache_bytes and stays there.
  std::uint64_t store_cache_bytes = 0;
  // Dispatches the database refused because it had seen that grid slot of the schedule dispatched
  // before (PostgreSQL, the backstop under the cluster's fence: docs/cluster.md, "Each slot
  // once"). Each such run was cancelled before its callback and recorded as cancelled; the other
  // rows of its commit were written. Nonzero only when something else failed first (two engines
  // believing they owned one schedule, a database restored from an older backup under a running
  // cluster): worth an alert.
  std::uint64_t slots_refused = 0;

  // Cluster mode (Options::cluster; docs/cluster.md). Outside it every field is zero, and
  // cluster_partitions_total == 0 says so.
  // Gauges, as of this call:
  // - partitions whose schedules this engine runs: held under a lease valid on this engine and
  //   loaded at that lease's epoch (a partition just claimed counts once its schedules are
  //   loaded; one whose lease ended, locally or in the database, no longer counts);
  std::uint64_t cluster_partitions_owned = 0;
  // - P, the database's partition count (fixed when the cluster's tables were created);
  std::uint64_t cluster_partitions_total = 0;
  // - live engines (this one included) as of this engine's last successful renewal (0 before
  //   it); an engine that stopped gracefully leaves at once, a killed one when its lease ends.
  std::uint64_t cluster_nodes_live = 0;
  // Counters since the engine opened (its LeaseKeeper's):
  std::uint64_t cluster_lease_renewals = 0;  // renewals of this engine's node row and leases
  std::uint64_t cluster_claims = 0;          // free partitions taken (after a release, at start)
  std::uint64_t cluster_takeovers = 0;       // partitions taken from an engine whose lease ended
  std::uint64_t cluster_releases = 0;        // partitions handed back (rebalance, shutdown)
  std::uint64_t cluster_leases_lost = 0;     // tenures that ended without a release (taken over)
  // Times this engine left the cluster for a while because its store could not commit for lease/2
  // while its keeper could still renew (its partitions then run on the others; docs/cluster.md).
  std::uint64_t cluster_withdrawals = 0;
  // Commits refused by the fence (a partition's lease had ended, in the database, before the
  // engine knew): nothing of such a commit is applied; its rows of other partitions are retried.
  std::uint64_t cluster_fenced_refusals = 0;
  // The catalog's version this engine has applied to the partitions it holds (docs/cluster.md,
  // "The catalog through any engine"); -1 before its first application. Every engine's should
  // reach the database's soon after each catalog command: one that stays behind makes each
  // catalog command wait for it (at most lease + 2 s).
  std::int64_t cluster_catalog_version = -1;
  // Partitions this engine took away from engines that had not applied its catalog command
  // within lease + 2 s (docs/cluster.md, "The catalog through any engine"): they run nothing
  // more under the old catalog; whoever claims them next loads them under the new one.
  std::uint64_t cluster_catalog_revocations = 0;
};

// Runs due in one minute of a forecast.
struct ForecastMinute {
  TimePoint at{};  // the minute's start
  std::uint64_t runs = 0;
};

// A sync callback. Runs on a worker thread (never on a command's caller, never under an engine
// lock). An exception it throws is recorded as the run's error, with its what() as the message.
using SyncCallback = std::function<RunReport(const RunContext&)>;

// Completes an asynchronous run. Call it exactly once, from any thread (later calls are ignored).
using RunDone = std::function<void(RunReport)>;

// An asynchronous sync callback: it starts the work and returns at once; the run is in flight
// until `done` is called. It is invoked like a SyncCallback (on the run executor, never under an
// engine lock); an exception it throws fails the run at once. This is how a host runs thousands
// of syncs in flight without a thread each (the daemon's command runner is one).
using AsyncSyncCallback = std::function<void(const RunContext&, RunDone done)>;

}  // namespace syncsched
