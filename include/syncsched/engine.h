// Engine: schedules of data syncs, keyed by (integration, connection, sync, variant).
//
// A host opens an engine, defines its integrations' syncs, registers the callbacks that perform
// them, adds connections, and drives the schedules with start, pause, trigger, status and
// frequency commands (SPEC §3-§5). Starting a paused schedule runs it at once and then every
// `frequency` on a grid anchored at that moment; starting a started one does nothing.
//
// Every command validates its whole request before it changes anything: an error leaves every
// schedule as it was. Errors name the offending input in their message and say which input it is
// in Status::subject() (see StatusSubject). In every command, a malformed name (integration,
// connection, sync or variant: SPEC §1) is INVALID_ARGUMENT with that name's subject, and
// NOT_FOUND means a well-formed name that does not exist, with the first missing part as subject
// in the order integration, sync, connection, variant.
//
// Threads: every method may be called from any thread, concurrently. Commands run on the calling
// thread under the engine's lock and return when done; they never call user code. Callbacks run
// on the run executor (Options::run_executor or the engine's worker pool), never on a command's
// caller and never under the engine's lock, so a callback may itself call the engine.
//
// Cluster mode (Options::cluster): every engine on the database answers Start, Pause, Trigger,
// UpdateFrequency, GetStatus, CreateVariant and DeleteVariant for every schedule, as one engine
// would; a command whose partitions are held elsewhere is applied by their owners before it
// returns, and may then also fail with UNAVAILABLE when an owner died and nobody took its
// partitions over within lease + 2 s (the message names the schedules left unchanged; see
// options.h). GetStatus reflects every command acknowledged by any engine. The catalog commands
// (DefineSync, SetIntegrationLimits, AddConnection, DeleteConnection) too are served by every
// engine: each creates, regrids or deletes the schedules of the partitions its engine holds, and
// returns once every engine that may act (live, or still owning a partition) has applied the
// change to its own (at most lease + 2 s; past that, every engine still behind loses its
// partitions, so it runs nothing under the old catalog, and the answer is OK all the same: the
// change is committed; docs/cluster.md, "The catalog through any engine"). A redefinition there
// replaces every engine's (last applied wins); an integration's limits bound each engine's runs.
// Two engines adding, or deleting, the same connection at the same moment may both succeed (one
// engine would answer ALREADY_EXISTS or NOT_FOUND).
//
// Ownership: the Engine owns its schedules, its worker pool and its engine thread (when it made
// them). It does not own Options::clock or host executors.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "syncsched/clock.h"
#include "syncsched/export.h"
#include "syncsched/options.h"
#include "syncsched/status.h"
#include "syncsched/types.h"

namespace syncsched {

namespace core {
class EngineCore;
}
namespace internal {
struct EngineAccess;  // tests only: reaches the engine's internals
}

// What a slot that comes due while a run of the schedule is in flight does.
enum class OverlapPolicy : std::uint8_t {
  kSkip,       // it is skipped (counted); the next run is the next future slot (SPEC §5)
  kBufferOne,  // if any slot was skipped during the run, one run follows right after it ends
};

// Retries of a failed run. `max` counts retries (attempts = max + 1). The k-th retry waits
// `backoff * 2^(k-1)` plus up to 20% random jitter. A retry never overlaps or outlives the next
// slot: if it would be due at or after the schedule's next slot, it is dropped (the slot wins).
// A run that starts before a pending retry stands for it and the retry is dropped: a slot, a
// trigger, or the run a start dispatches at once. Cancelled and timed-out runs are not retried.
struct RetryPolicy {
  int max = 0;
  Millis backoff = std::chrono::seconds(30);
};

// Per-integration limits.
struct IntegrationLimits {
  // Runs of the integration in flight at once; 0: unlimited. Due runs beyond it wait in the
  // engine's due-ordered queue.
  std::size_t max_concurrency = 0;
};

// A sync of an integration (SPEC §1).
struct SyncDefinition {
  std::string name{};               // ^[a-zA-Z0-9_-]+$, 1..255 bytes
  std::string frequency{};          // a frequency string (SPEC §2), e.g. "every 30min"
  bool auto_start = true;           // new schedules start (and run at once) when created
  std::optional<Millis> timeout{};  // a run's timeout; default Options::default_run_timeout
  std::optional<Millis> heartbeat_timeout{};  // if set, a run must heartbeat at least this often
  OverlapPolicy overlap = OverlapPolicy::kSkip;
  RetryPolicy retry{};
  // Phase spreading: after its immediate first run, a schedule follows a stable per-key phase (a
  // hash of its key, the same across restarts), so schedules started together spread evenly over
  // their period; the first scheduled run is at least half a period after the immediate one.
  bool spread = false;
};

class SYNCSCHED_EXPORT Engine {
 public:
  // Opens an engine. Errors: INVALID_ARGUMENT for bad options (named); from the database (when
  // Options::database_path is set): UNAVAILABLE when it cannot be opened (for PostgreSQL: the
  // server cannot be reached) or is in use by another engine, FAILED_PRECONDITION for a newer
  // schema, INTERNAL for a corrupt database; nothing is overwritten on error.
  static Result<std::unique_ptr<Engine>> Open(Options options);

  // Stops the alarm, cancels runs in flight (their tokens fire; their late completions are
  // ignored), and waits for the engine-owned threads. Runs on a host executor that are still
  // going are not waited for; they only touch state they share with their token. Asynchronous
  // commands already called run (and complete their handlers) first. Safe after Shutdown.
  ~Engine();

  // A graceful stop: fires no more timers (scheduled slots, retries, timeouts), lets the runs in
  // flight finish until `deadline` (on std::chrono::steady_clock: real time, whatever the engine's
  // clock), cancels those still going then (as the destructor does: CANCELLED, "engine shutting
  // down"), commits every outcome to the database, stops the engine's threads and returns.
  // Afterwards the commands that change state (DefineSync, AddConnection, DeleteConnection,
  // CreateVariant, DeleteVariant, Start, Pause, Trigger, UpdateFrequency, SetIntegrationLimits)
  // fail with FAILED_PRECONDITION and callbacks are no longer called; GetStatus, Forecast,
  // GetMetrics and MemoryBytes still read the state as the drain left it, and RegisterCallback
  // and SetFallbackCallback are accepted but have no effect. The destructor only frees memory.
  // Idempotent; any thread but one the runs need to finish (with a host run executor, not a thread
  // that alone runs it), and not from a callback.
  void Shutdown(std::chrono::steady_clock::time_point deadline);
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // ---- Catalog ----

  // Defines (or redefines: idempotent upsert, like a deploy) a sync of `integration`, creating
  // the integration if needed. A new sync creates its `base` schedule on every existing connection
  // of the integration (STARTED and run at once when auto_start, else PAUSED). A changed frequency
  // applies to every schedule of the sync without a per-connection override (all variants), each
  // keeping its anchor; a changed auto_start applies to schedules created later.
  // Errors: INVALID_ARGUMENT naming a bad integration key, sync name, frequency or timeout.
  Status DefineSync(std::string_view integration, const SyncDefinition& sync);
  // The definition of (integration, sync) as the engine holds it (in cluster mode, the database's:
  // a change made through another engine is applied here first). `timeout` is unset when the
  // sync uses the engine's default. Errors: INVALID_ARGUMENT (a malformed key or name), NOT_FOUND
  // (integration, or sync).
  Result<SyncDefinition> GetSyncDefinition(std::string_view integration, std::string_view sync);

  // Registers the callback for runs of (integration, sync), replacing any earlier one. The sync
  // need not be defined yet; register before DefineSync and AddConnection so that the runs they
  // dispatch at once find it (a run uses the callback registered when it was dispatched). Errors:
  // INVALID_ARGUMENT for an empty callback or bad names.
  Status RegisterCallback(std::string_view integration, std::string_view sync,
                          SyncCallback callback);
  // The same for an asynchronous callback (see AsyncSyncCallback).
  Status RegisterAsyncCallback(std::string_view integration, std::string_view sync,
                               AsyncSyncCallback callback);
  // The callback for syncs that have none of their own. A run with neither fails with an error
  // saying so.
  void SetFallbackCallback(SyncCallback callback);

  // Adds a connection to an integration and creates the `base` schedule of each of its syncs
  // (STARTED and run at once when auto_start, else PAUSED).
  // Errors: INVALID_ARGUMENT (a malformed key or id), NOT_FOUND (unknown integration),
  // ALREADY_EXISTS (subject kConnection).
  Status AddConnection(std::string_view integration, std::string_view connection);

  // Deletes a connection: its schedules become DELETED, runs in flight are cancelled, and the id
  // may be added afresh later (with new schedules). Errors: INVALID_ARGUMENT (a malformed key or
  // id), NOT_FOUND (integration or connection).
  Status DeleteConnection(std::string_view integration, std::string_view connection);

  // Creates variant `key.variant` of `key.sync` on `key.connection`, with a schedule created as a
  // connection's are, and returns that schedule's status as it stands once created (its `id` is
  // the new schedule's; STARTED with a run dispatched when the sync auto-starts, else PAUSED).
  // Errors: INVALID_ARGUMENT (a malformed name, or `base`: subject kVariant), NOT_FOUND
  // (integration, sync or connection), ALREADY_EXISTS (subject kVariant).
  Result<ScheduleStatus> CreateVariant(const ScheduleKey& key);
  // Deletes a variant: its schedule becomes DELETED and its run in flight is cancelled.
  // Errors: INVALID_ARGUMENT (a malformed name, or `base`, which cannot be deleted: subject
  // kVariant), NOT_FOUND (integration, sync, connection or variant).
  Status DeleteVariant(const ScheduleKey& key);

  // ---- Commands (SPEC §4) ----

  // Errors of the four target commands below: INVALID_ARGUMENT for a malformed name in the target,
  // NOT_FOUND for an integration, sync, connection or variant that does not exist (a sync::variant
  // with no schedule in the target's scope: subject kVariant, or kSync for `base`). Cluster mode,
  // for a target whose partitions this engine does not all hold: UNAVAILABLE when the database
  // cannot be reached (nothing changed) or some partition's share was not applied by its
  // deadline (the message names what was and was not changed; Options::cluster).

  // PAUSED -> STARTED with a run dispatched now and the grid anchored now; STARTED: nothing.
  Result<CommandResult> Start(const Target& target);
  // STARTED -> PAUSED: the next slot is dropped and a run in flight is cancelled via its token.
  // A run not yet started because it waits for a concurrency cap (a due slot, a retry, or a
  // trigger's run) is dropped too, without a run record; the status's decisions say `paused`.
  Result<CommandResult> Pause(const Target& target);
  // Runs now whatever the state; a paused schedule stays paused; the grid does not move. With a
  // run in flight: incremental does nothing (kAlreadyRunning); full resync cancels it and runs
  // once it has stopped.
  Result<CommandResult> Trigger(const Target& target, RunMode mode = RunMode::kIncremental);
  // One entry per targeted schedule, ordered by connection then sync then variant.
  Result<std::vector<ScheduleStatus>> GetStatus(const Target& target);

  // Sets (or with nullopt reverts to the sync's default) the frequency of one schedule. The
  // schedule keeps its anchor; its next slot is the first slot of the new grid in the future.
  // Returns the frequency now in force. Errors: INVALID_ARGUMENT for a malformed name in the key
  // or for the frequency (subject kField, field "frequency"), NOT_FOUND for the key's parts.
  Result<Millis> UpdateFrequency(const ScheduleKey& key, std::optional<std::string> frequency);

  // Lets timers fire after Options::hold_timers. Idempotent; any thread.
  void ReleaseTimers();

  // Sets the limits of an integration (caps apply to runs dispatched from now on; in cluster
  // mode every engine adopts them, and each bounds its own runs).
  // Errors: INVALID_ARGUMENT (malformed key), NOT_FOUND (integration not defined).
  Status SetIntegrationLimits(std::string_view integration, const IntegrationLimits& limits);

  // The runs due per minute over the next `horizon` (at most 7 days), for all integrations or
  // one, with phase spreading and the global and per-integration caps applied (runs beyond a cap
  // move to the following minutes, assuming each run takes the mean run duration so far, or one
  // minute before any run finished). Errors: INVALID_ARGUMENT (horizon: subject kField, field
  // "horizon"; or a malformed integration key), NOT_FOUND (integration). Cost: one step per slot in
  // the horizon. In cluster mode it covers the schedules of the partitions this engine owns when
  // it is called, under this engine's caps (GetMetrics says how many partitions that is); the
  // cluster's forecast is the sum of every engine's.
  Result<std::vector<ForecastMinute>> Forecast(Millis horizon,
                                               std::optional<std::string> integration = {});

  // ---- Asynchronous forms (Asio completion tokens) ----
  //
  // Each command above also has an Async form taking its arguments (by value: they are copied
  // before it returns) and a completion token: a callback, boost::asio::use_future,
  // boost::asio::use_awaitable, or any other token. The command runs on an engine-owned thread
  // (never on the caller's executor, which is not blocked), with the same contract and errors as
  // its blocking form; the handler then runs on its associated executor (for use_awaitable, the
  // coroutine's; for a plain callback, the engine's command thread, so keep it short). The
  // completion signature is void(Status) for commands returning Status and void(Result<T>) for
  // those returning Result<T> (AsyncCreateVariant: void(Result<ScheduleStatus>)). Asynchronous
  // commands run one at a time, in the order they were called; a handler runs exactly once and
  // never inside the call that started it; it must not throw (as in Asio: an exception escaping a
  // plain callback ends the process). Calls made during or after Shutdown complete as the
  // blocking forms would then (FAILED_PRECONDITION for the commands that change state); every
  // handler runs, whenever its command was called. Shutdown and the destructor wait for the
  // commands already called; so neither may be called from a handler running on the command thread
  // (a plain callback's).
  template <typename Token>
  auto AsyncDefineSync(std::string integration, SyncDefinition sync, Token&& token) {
    return AsyncRun<Status>(
        [i = std::move(integration), d = std::move(sync)](Engine& e) { return e.DefineSync(i, d); },
        std::forward<Token>(token));
  }
  template <typename Token>
  auto AsyncAddConnection(std::string integration, std::string connection, Token&& token) {
    return AsyncRun<Status>([i = std::move(integration), c = std::move(connection)](
                                Engine& e) { return e.AddConnection(i, c); },
                            std::forward<Token>(token));
  }
  template <typename Token>
  auto AsyncDeleteConnection(std::string integration, std::string connection, Token&& token) {
    return AsyncRun<Status>([i = std::move(integration), c = std::move(connection)](
                                Engine& e) { return e.DeleteConnection(i, c); },
                            std::forward<Token>(token));
  }
  template <typename Token>
  auto AsyncCreateVariant(ScheduleKey key, Token&& token) {
    return AsyncRun<Result<ScheduleStatus>>(
        [k = std::move(key)](Engine& e) { return e.CreateVariant(k); }, std::forward<Token>(token));
  }
  template <typename Token>
  auto AsyncDeleteVariant(ScheduleKey key, Token&& token) {
    return AsyncRun<Status>([k = std::move(key)](Engine& e) { return e.DeleteVariant(k); },
                            std::forward<Token>(token));
  }
  template <typename Token>
  auto AsyncStart(Target target, Token&& token) {
    return AsyncRun<Result<CommandResult>>(
        [t = std::move(target)](Engine& e) { return e.Start(t); }, std::forward<Token>(token));
  }
  template <typename Token>
  auto AsyncPause(Target target, Token&& token) {
    return AsyncRun<Result<CommandResult>>(
        [t = std::move(target)](Engine& e) { return e.Pause(t); }, std::forward<Token>(token));
  }
  template <typename Token>
  auto AsyncTrigger(Target target, RunMode mode, Token&& token) {
    return AsyncRun<Result<CommandResult>>(
        [t = std::move(target), mode](Engine& e) { return e.Trigger(t, mode); },
        std::forward<Token>(token));
  }
  template <typename Token>
  auto AsyncGetStatus(Target target, Token&& token) {
    return AsyncRun<Result<std::vector<ScheduleStatus>>>(
        [t = std::move(target)](Engine& e) { return e.GetStatus(t); }, std::forward<Token>(token));
  }
  template <typename Token>
  auto AsyncUpdateFrequency(ScheduleKey key, std::optional<std::string> frequency, Token&& token) {
    return AsyncRun<Result<Millis>>([k = std::move(key), f = std::move(frequency)](
                                        Engine& e) { return e.UpdateFrequency(k, f); },
                                    std::forward<Token>(token));
  }
  template <typename Token>
  auto AsyncSetIntegrationLimits(std::string integration, IntegrationLimits limits, Token&& token) {
    return AsyncRun<Status>([i = std::move(integration),
                             limits](Engine& e) { return e.SetIntegrationLimits(i, limits); },
                            std::forward<Token>(token));
  }

  // Counters and gauges for monitoring. Any thread; cheap (no per-schedule walk). It waits for the
  // engine's lock, which a command holds while its commit is written: on a database that stalls,
  // as long as that commit (at most the store's reply deadline; PostgresStoreOptions).
  EngineMetrics GetMetrics();
  // The store's and the cluster's health, as GetMetrics reports them, without waiting for the
  // engine's lock (for a health check that must answer while a command waits on a stalled
  // database). Any thread; cheap. After Shutdown, in cluster mode, unhealthy (the lease keeper
  // has stopped).
  EngineHealth GetHealth();

  // The engine's clock (the one in Options, or its own).
  Clock& clock();
  // Heap bytes held by the schedules, their keys, indexes and timers (for the benchmarks).
  std::size_t MemoryBytes();

 private:
  friend struct internal::EngineAccess;
  explicit Engine(std::shared_ptr<core::EngineCore> core);

  // The engine-owned executor the asynchronous forms run their commands on (one thread, made at
  // the first call; joined by Shutdown and the destructor), and a lock that keeps it from being
  // joined until released: a command is posted under it, so that it lands on a pool that will
  // still run it (a pool being joined takes no more work, and a joined one is destroyed).
  std::unique_lock<std::mutex> LockCommandExecutor(boost::asio::any_io_executor& executor);

  // Runs `fn(*this)` on the command executor, then the handler with its result on the handler's
  // associated executor (kept busy meanwhile by a work guard).
  template <typename R, typename Fn, typename Token>
  auto AsyncRun(Fn fn, Token&& token) {
    return boost::asio::async_initiate<Token, void(R)>(
        [this](auto handler, Fn fn) {
          boost::asio::any_io_executor commands;
          std::unique_lock<std::mutex> lock = LockCommandExecutor(commands);
          auto work =
              boost::asio::make_work_guard(boost::asio::get_associated_executor(handler, commands));
          boost::asio::post(commands, [this, fn = std::move(fn), handler = std::move(handler),
                                       work = std::move(work)]() mutable {
            R result = fn(*this);
            auto ex = work.get_executor();
            boost::asio::dispatch(
                ex, [handler = std::move(handler), result = std::move(result)]() mutable {
                  std::move(handler)(std::move(result));
                });
            work.reset();
          });
        },
        token, std::move(fn));
  }

  struct AsyncState;
  std::shared_ptr<core::EngineCore> core_;
  std::unique_ptr<AsyncState> async_;
};

}  // namespace syncsched
