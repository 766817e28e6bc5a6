// EngineCore: the engine's state machine. It owns the catalog, the two timer wheels (schedule
// slots, and run deadlines), the table of runs in flight, the store, and the alarm: the one Asio
// timer of the engine, set to the earliest deadline of both wheels.
//
// Concurrency: one mutex guards everything here. Commands run on their caller's thread under it;
// the alarm handler and run completions take it too. Clang's -Wthread-safety checks it (the
// GUARDED_BY and REQUIRES annotations below, core/thread_annotations.h). Work that calls user code
// (sync callbacks, OnCancel functions) is collected as Effects under the lock and carried out after
// it is released, so user code never runs under the lock and may call back into the engine.
//
// Every command follows the same three steps: validate and plan (nothing changes), persist the
// plan's rows in one store commit (an error here changes nothing), apply it in memory.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "cluster/command_inbox.h"
#include "cluster/lease_keeper.h"
#include "core/catalog.h"
#include "core/thread_annotations.h"
#include "store/store.h"
#include "syncsched/engine.h"
#include "wheel/timer_wheel.h"

namespace syncsched::core {

// One run in flight, shared by the engine and the worker that executes it.
struct RunState {
  std::uint32_t schedule = kNone;
  std::uint32_t table_slot = kNone;
  std::uint64_t uid = 0;
  std::int64_t slot = 0;
  std::int64_t dispatched = 0;
  RunMode mode = RunMode::kIncremental;
  int attempt = 1;
  // Under the engine lock (EngineCore::mu_; not annotated: the analysis cannot name another
  // object's mutex from here).
  bool cancel_requested = false;
  ScheduleKey key;
  std::string run_id;
  // Cluster mode: the tenure (partition, epoch) the run was dispatched under; -1 otherwise.
  std::int32_t partition = -1;
  std::int64_t epoch = 0;
  CancellationToken token;
  std::shared_ptr<const Callback> callback;
  std::atomic<std::int64_t> last_heartbeat{0};
};
using RunPtr = std::shared_ptr<RunState>;

// What a finished run reported, as the engine records it.
struct RunOutcome {
  Status status;
  std::vector<ModelCounts> counts;
  std::optional<Millis> hint;
};

class WorkerPool;
class CommitQueue;
struct CommitWaiter;

// A sync's run policies as the text the store keeps for it, and back (engine_policies.cc).
std::string EncodePolicy(const SyncInfo& sync);
void DecodePolicy(std::string_view text, SyncInfo& sync);
// Whether two definitions of a sync say the same (its callback and integration aside).
bool SameDefinition(const SyncInfo& a, const SyncInfo& b);

class EngineCore : public std::enable_shared_from_this<EngineCore> {
 public:
  // Wraps the engine's store once it is opened (tests: fault injection). Null: none.
  using StoreWrapper = std::function<std::unique_ptr<store::Store>(std::unique_ptr<store::Store>)>;
  static Result<std::shared_ptr<EngineCore>> Create(Options options, StoreWrapper wrap = {});
  ~EngineCore();

  // The engine's store (null without a database), for tests' fault hooks.
  store::Store* StoreForTest() { return store_.get(); }
  // Cluster mode: the engine's LeaseKeeper (null otherwise), for tests.
  cluster::LeaseKeeper* KeeperForTest() { return keeper_.get(); }
  // Cluster mode: the partitions loaded under a valid lease, for tests (empty otherwise).
  std::vector<int> LoadedPartitionsForTest() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return InCluster() ? LoadedPartitions() : std::vector<int>{};
  }
  // A command touching more schedules than this streams its rows to the store in parts of this
  // many (CommitStreamed); tests lower it to cover that path with a few schedules.
  static constexpr std::size_t kStreamRows = 16384;
  void SetStreamRowsForTest(std::size_t rows) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    stream_rows_ = std::max<std::size_t>(rows, 1);
  }
  // Cluster mode: called on the cluster thread with the partitions of each load, after the
  // load has read them (`merged` false) and after it merged them, before the catalog's sync that
  // follows (`merged` true), no lock held, so that a test can hold a load or look at the engine
  // there.
  void SetLoadHookForTest(std::function<void(const std::vector<int>&, bool merged)> hook) {
    std::lock_guard lock(cl_mu_);
    load_hook_ = std::move(hook);
  }

  // The commands take the lock (and let go of it before they call user code).
  void Shutdown() EXCLUDES(mu_);

  Status DefineSync(std::string_view integration, const SyncDefinition& sync) EXCLUDES(mu_);
  Status RegisterCallback(std::string_view integration, std::string_view sync, Callback cb)
      EXCLUDES(mu_);
  void SetFallbackCallback(Callback cb) EXCLUDES(mu_);
  Status AddConnection(std::string_view integration, std::string_view connection) EXCLUDES(mu_);
  Status DeleteConnection(std::string_view integration, std::string_view connection) EXCLUDES(mu_);
  Result<ScheduleStatus> CreateVariant(const ScheduleKey& key) EXCLUDES(mu_);
  Status DeleteVariant(const ScheduleKey& key) EXCLUDES(mu_);
  Result<CommandResult> Start(const Target& target) EXCLUDES(mu_);
  Result<CommandResult> Pause(const Target& target) EXCLUDES(mu_);
  Result<CommandResult> Trigger(const Target& target, RunMode mode) EXCLUDES(mu_);
  Result<std::vector<ScheduleStatus>> GetStatus(const Target& target) EXCLUDES(mu_);
  Result<Millis> UpdateFrequency(const ScheduleKey& key, std::optional<std::string> frequency)
      EXCLUDES(mu_);
  EngineMetrics GetMetrics() EXCLUDES(mu_);
  // Without mu_: the writer and the keeper (set at open, never replaced) have locks of their own.
  EngineHealth GetHealth();
  // Cluster mode: why the lease keeper keeps this engine from running ("": it does not).
  // Sets `*broken` when the keeper stopped for good.
  std::string KeeperTrouble(const cluster::LeaseSnapshot& snap, bool* broken) const;
  Result<SyncDefinition> GetSyncDefinition(std::string_view integration, std::string_view sync)
      EXCLUDES(mu_);
  void ReleaseTimers() EXCLUDES(mu_);
  // Stops firing timers until ReleaseTimers (Engine::Shutdown's drain).
  void HoldTimers() EXCLUDES(mu_);
  Status SetIntegrationLimits(std::string_view integration, const IntegrationLimits& limits)
      EXCLUDES(mu_);
  Result<std::vector<ForecastMinute>> Forecast(Millis horizon,
                                               std::optional<std::string> integration)
      EXCLUDES(mu_);
  Clock& clock() { return *clock_; }
  std::size_t MemoryBytes() EXCLUDES(mu_);

  // Runs `runs` (on a worker) and records their outcomes under one lock.
  void ExecuteBatch(std::vector<RunPtr>& runs) EXCLUDES(mu_);

 private:
  // What a committed transaction carries out after the lock is let go: runs to hand to the
  // workers, tokens to cancel.
  struct Effects {
    std::vector<RunPtr> dispatch;
    std::vector<std::pair<CancellationToken, Status>> cancel;
  };
  struct WaitInfo {
    std::int64_t slot = 0;
    std::int64_t since = 0;
    std::uint64_t seq = 0;  // place in the wait queue: a wait queued again goes to the back
    RunMode mode = RunMode::kIncremental;
    bool scheduled = false;
    int attempt = 1;
    std::string run_id;
  };
  struct RetryInfo {
    std::int64_t slot = 0;
    std::int64_t due = 0;
    RunMode mode = RunMode::kIncremental;
    int attempt = 2;
    std::string run_id;
  };
  // The last decisions of a schedule, oldest first from `head` once full. A vector rather than a
  // deque: a deque allocates ~0.5 KB at its first push, and a bulk pause decides for every
  // schedule (1M schedules: ~0.5 GB); this grows with what it holds.
  struct DecisionRing {
    std::vector<Decision> items;
    std::size_t head = 0;
  };
  // The before-image of one schedule touched by an undoable transaction: everything a command can
  // change about it, in memory and in its row. Compact (~110 bytes) for the common schedule with
  // no side state: a start of a million schedules keeps a million of these until it commits.
  struct UndoExtra {
    std::optional<ScheduleDetail> detail;
    std::optional<WaitInfo> waiting;
    std::optional<RetryInfo> retry;
    RunPtr run;  // in flight
    bool run_cancel_requested = false;
    std::optional<DecisionRing> decisions;
  };
  struct Undo {
    std::uint32_t schedule = kNone;
    bool created = false;  // created by the transaction: rollback removes it
    bool slot_armed = false;
    std::int64_t slot_deadline = 0;  // in slots_, when armed
    Schedule before;
    std::unique_ptr<UndoExtra> extra;  // null: none of it
  };
  // One engine transaction (see docs/design.md, "One command, one transaction"). Every change to
  // a schedule goes through Touch(), which lists the schedule and, when the transaction is
  // undoable (a command), saves its before-image. The batch is derived at commit from the touched
  // schedules' whole state (FillRow), never planned by hand: whatever the command changed is in it.
  // A failed commit rolls the transaction back from the before-images, exactly.
  struct Txn {
    bool undoable = false;
    std::int64_t now = 0;
    std::vector<std::uint32_t> touched;              // in first-touch order
    std::vector<Undo> undo;                          // undoable: before-images, in touch order
    std::vector<std::uint32_t> deleted;              // schedules deleted: removed once committed
    std::vector<std::uint32_t> connections_deleted;  // removed once committed
    std::uint32_t connection_created = kNone;
    std::uint32_t sync_created = kNone;
    std::uint32_t integration_created = kNone;
    std::optional<std::pair<std::uint32_t, SyncInfo>> sync_before;  // a redefined sync
    std::optional<std::pair<std::uint32_t, std::size_t>> limit_before;
    store::Batch batch;  // catalog rows and finished runs; schedule rows are added at commit
    Effects fx;
    // Cluster mode: per partition, the epoch of its lease if valid on this engine when the
    // transaction began (0: not valid). Runs dispatch only where it equals the loaded epoch.
    std::vector<std::int64_t> leases;
    // Scalars restored by a rollback.
    std::optional<EngineMetrics> metrics;
    std::vector<std::size_t> in_flight;  // per integration
    std::uint64_t next_uid = 0, rng_state = 0;
    // wait_seq_ is not restored: a rolled-back wait leaves its (seq, schedule) entry in a queue,
    // and a later wait of a schedule reusing the index must never match it.
    std::uint32_t last_served = 0;

    // A bulk command over n schedules: no reallocation of the lists as it touches them.
    void Reserve(std::size_t n) {
      touched.reserve(n);
      if (undoable) undo.reserve(n);
    }
  };

  explicit EngineCore(Options options);
  Status Init(const StoreWrapper& wrap) NO_THREAD_SAFETY_ANALYSIS;  // see engine_core.cc
  // Rebuilds the state from the store's snapshot (under mu_, during Init).
  Status Recover(store::Snapshot snapshot) REQUIRES(mu_);
  // Creates the one writer on store_: its committed runs go to Release (cancelled once the
  // engine is gone); in cluster mode it screens by tenure (Screen, OnFenced).
  void StartWriter() REQUIRES(mu_);
  // Recover's parts: adds the snapshot's syncs, integrations and connections that the catalog
  // lacks; restores its schedules into `tx` (armed, missed slots to fire at once, runs found in
  // flight recorded as interrupted, owed runs queued).
  Status RecoverCatalog(store::Snapshot& snap) REQUIRES(mu_);
  // A stored sync's definition (its callback unset); INTERNAL for a non-positive frequency.
  Result<SyncInfo> SyncInfoOf(const store::SyncRow& row) const;
  Status RecoverSchedules(Txn& tx, store::Snapshot& snap) REQUIRES(mu_);

  // ---- cluster mode (docs/cluster.md) ----
  bool InCluster() const { return keeper_ != nullptr; }
  // The partition of schedule `idx` (cluster mode).
  int PartitionOfSchedule(std::uint32_t idx) const REQUIRES(mu_) { return part_of_[idx]; }
  void SetPartition(std::uint32_t idx) REQUIRES(mu_);
  // OK when this engine holds, loaded and with a valid lease, every partition of `partitions`
  // (all of them when `all`); else FAILED_PRECONDITION naming one it does not hold.
  Status RequirePartitions(std::vector<int> partitions, bool all, std::string_view what) const
      REQUIRES(mu_);
  // RequirePartitions for a command's target.
  Status RequireTarget(const Target& target) const REQUIRES(mu_);
  // Whether a run of `schedule` may be dispatched in `tx` (always outside cluster mode).
  bool LeaseAllows(const Txn& tx, std::uint32_t schedule) const REQUIRES(mu_);
  // The next schedule uid: from the engine's counter, or in cluster mode from the blocks
  // reserved by EnsureUids.
  std::uint64_t NextUid() REQUIRES(mu_);
  Status EnsureUids(std::size_t n) REQUIRES(mu_);
  // The cluster thread: reconciles the partitions loaded with the keeper's valid leases.
  void ClusterLoop() EXCLUDES(mu_);
  // The writer's health hook: options_.on_store_status, and in cluster mode the bookkeeping of
  // MaybeWithdraw around it.
  std::function<void(const Status&)> StoreStatusHook();
  // Cluster thread: when the store has failed every commit for lease/2 while the keeper renews
  // and other engines are live, the keeper withdraws (LeaseKeeper::Withdraw) for a lease, doubling
  // up to four while the store keeps failing; a commit that succeeds ends the withdrawal.
  void MaybeWithdraw() EXCLUDES(mu_);
  // A commit refused by the fence: the tenure it named, and whether another node holds the
  // partition now (or a later epoch: the tenure is over for good) rather than this one with an
  // expired lease.
  struct FencedRefusal {
    int partition = -1;
    std::int64_t epoch = 0;
    bool taken = true;
  };
  void Reconcile(std::vector<FencedRefusal> fenced) EXCLUDES(mu_);
  // Removes the schedules of `partitions` from memory, cancelling their runs (into `fx`).
  void DropPartitions(const std::vector<int>& partitions, Effects& fx) REQUIRES(mu_);
  // The writer's hooks (CommitQueue::ClusterHooks).
  Status Screen(store::Batch& batch, std::vector<RunPtr>* runs, bool command);
  void OnFenced(const Status& status);
  void OnLeaseChange(const cluster::LeaseChange& change);
  void SetTenure(int partition, std::int64_t epoch);
  void StopCluster();

  // ---- cluster mode: commands through any engine (docs/cluster.md) ----
  // What a command sent through the inbox asks (its body, cluster/command_inbox.h).
  enum class RemoteKind : std::uint8_t {
    kStart,
    kPause,
    kTrigger,
    kFrequency,
    kCreateVariant,
    kDeleteVariant
  };
  struct RemoteKey {
    int partition = 0;
    ScheduleKey key;
  };
  struct RemoteCommand {
    RemoteKind kind = RemoteKind::kStart;
    std::int64_t arg = 0;     // trigger: the RunMode; frequency: the override (0: the default)
    std::int64_t anchor = 0;  // start: the grid's anchor and the immediate run's slot
    std::vector<RemoteKey> keys;
  };
  static std::string EncodeRemote(const RemoteCommand& c);
  static bool DecodeRemote(std::string_view body, RemoteCommand& c);
  // Applies the catalog's changes (SyncCatalogIfBehind) when `target` names an integration, sync
  // or connection this engine does not know (created through another engine).
  void RefreshCatalog(const Target& target) EXCLUDES(mu_);
  // Resolves `target` against the database (the schedules of its scope, read by the inbox) with
  // the errors Catalog::Resolve gives; `rows` in the database's key order.
  Result<std::vector<cluster::StoredSchedule>> ResolveStored(const Target& target) EXCLUDES(mu_);
  // Sends a command through the inbox to the owners of its keys' partitions, waits for their
  // results (or cancels what is not applied by the deadline) and gathers them: per key, as one
  // engine answers.
  Result<CommandResult> RemoteTarget(RemoteKind kind, const Target& target, std::int64_t arg)
      EXCLUDES(mu_);
  // Submits `cmd` and waits: the results of every part, or UNAVAILABLE naming the keys whose
  // parts were cancelled (nothing of those applied).
  Result<std::vector<cluster::CommandPart>> SubmitAndWait(const RemoteCommand& cmd) EXCLUDES(mu_);
  Result<std::vector<ScheduleStatus>> RemoteStatus(const Target& target) EXCLUDES(mu_);
  Result<Millis> RemoteFrequency(const ScheduleKey& key, std::int64_t override_ms) EXCLUDES(mu_);
  // CreateVariant (create) or DeleteVariant through the owner of the key's partition: OK (with
  // the created schedule's status), or the error one engine gives (ALREADY_EXISTS, NOT_FOUND).
  Result<ScheduleStatus> RemoteVariant(const ScheduleKey& key, bool create) EXCLUDES(mu_);
  // Owner side: applies the pending parts `pending` of partitions this engine holds and has
  // loaded, each command in one fenced transaction that marks its parts applied.
  void ApplyPending(const std::vector<cluster::PendingCommand>& pending) EXCLUDES(mu_);
  void ApplyPendingLocked(const std::vector<cluster::PendingCommand>& pending, Effects& fx)
      REQUIRES(mu_);
  // ---- cluster mode: the catalog through any engine (engine_cluster_catalog.cc) ----
  // Whether this engine holds `partition` loaded at the epoch of its valid lease (`owned`: the
  // keeper's Owned()).
  bool Holds(int partition, const std::map<int, std::int64_t>& owned) const REQUIRES(mu_);
  // The partition of the base schedule of (connection, sync).
  int BasePartition(std::uint32_t connection, std::uint32_t sync) const REQUIRES(mu_);
  // What SyncCatalog applies: every sync and integration; the connections added (with `whole`:
  // every connection, any other being deleted) and deleted since the version applied.
  struct CatalogDelta {
    bool whole = false;
    const std::vector<store::SyncRow>* syncs = nullptr;
    const std::vector<store::IntegrationRow>* integrations = nullptr;
    const std::vector<store::ConnectionRow>* added = nullptr;
    const std::vector<store::ConnectionRow>* deleted = nullptr;
  };
  // Applies `d` to memory and to the schedules of the partitions this engine holds, committing
  // those in one transaction: what is new is added, a changed definition or limit adopted (a
  // changed frequency regrids), a connection deleted has its schedules deleted, a base schedule
  // of an added connection or a new sync (with `whole`: of any connection) that is missing from
  // a held partition is created. Errors: the commit's (the schedules are then as before).
  Status ApplyCatalogLocked(const CatalogDelta& d, Effects& fx) REQUIRES(mu_);
  // Reads what changed in the catalog since the version applied here (the whole catalog when
  // due), applies it (ApplyCatalogLocked) and records the version in this node's row. Any
  // thread; one at a time (catalog_sync_mu_).
  Status SyncCatalog() EXCLUDES(mu_);
  // SyncCatalog when the database's catalog version is ahead of the one applied here.
  Status SyncCatalogIfBehind() EXCLUDES(mu_);
  // Before a catalog command: SyncCatalogIfBehind, or UNAVAILABLE when the catalog's version
  // could not be read or applied (answering from a catalog that may be behind could say
  // NOT_FOUND of a connection another engine added: helper-37 saw that during a database restart).
  Status CatalogUpToDate() EXCLUDES(mu_);
  // After a catalog command committed: syncs, then waits (lease + 2 s at most) until every engine
  // that is live or still owns a partition has applied the catalog's version (read-your-writes
  // through any engine; CommandInbox::NodesBehind).
  void SpreadCatalog() EXCLUDES(mu_);
  // The partitions loaded at the epoch of a valid lease.
  std::vector<int> LoadedPartitions() const REQUIRES(mu_);
  // The inbox thread: listens for commands and polls for pending parts.
  void InboxLoop() EXCLUDES(mu_);
  // One schedule's share of the target commands (the per-key step of Start, Pause, Trigger).
  Outcome StartOne(Txn& tx, std::uint32_t schedule, std::optional<std::int64_t> anchor)
      REQUIRES(mu_);
  Outcome PauseOne(Txn& tx, std::uint32_t schedule) REQUIRES(mu_);
  Outcome TriggerOne(Txn& tx, std::uint32_t schedule, RunMode mode) REQUIRES(mu_);
  ScheduleStatus StatusOfStored(const cluster::StoredSchedule& row) const REQUIRES(mu_);

  // ---- transactions, under mu_ ----
  Txn Begin(bool undoable) REQUIRES(mu_);
  // Lists `schedule` in the transaction (saving its before-image when undoable) and returns it
  // for change. Every mutation of a schedule's state goes through here.
  Schedule& Touch(Txn& tx, std::uint32_t schedule, bool created = false) REQUIRES(mu_);
  // Adds the touched schedules' rows to tx.batch.
  void BuildBatch(Txn& tx) REQUIRES(mu_);
  // Adds the rows of the schedules touched[from, to) to `batch` (deleted ones have none).
  void BuildRows(const Txn& tx, std::size_t from, std::size_t to, store::Batch& batch) const
      REQUIRES(mu_);
  // Commands: commits the transaction and waits for it; on error rolls it back and returns it.
  // On success the caller applies tx.fx after letting go of the lock.
  Status Commit(Txn& tx) REQUIRES(mu_);
  // Commit's write for a transaction that touched more than stream_rows_ schedules: the rows
  // are built stream_rows_ at a time while the writer writes the ones before, in one store
  // transaction (store::Store::CommitStream); all or nothing, as a whole batch.
  Status CommitStreamed(Txn& tx) REQUIRES(mu_);
  // Alarm and completions: queues the transaction (its runs are released to the workers by the
  // writer once committed); returns the ticket to wait on without the lock, or null.
  std::shared_ptr<CommitWaiter> Queue(Txn& tx) REQUIRES(mu_);
  void Rollback(Txn& tx) REQUIRES(mu_);
  // After a commit: removes deleted schedules and connections, clears the touched marks.
  void Finish(Txn& tx) REQUIRES(mu_);

  // ---- under mu_ ----
  // The clock's time. Reads only clock_, set once in Init, so it needs no lock: the heartbeat
  // closure calls it without one.
  std::int64_t NowMs() const;
  // The schedule's row: the whole state a restart needs (full: with its key, for a new row).
  // Writes the schedule's whole row into `row` (default-constructed).
  void FillRow(store::ScheduleRow& row, std::uint32_t schedule, bool full) const REQUIRES(mu_);
  std::string NextRunId(Txn& tx, std::uint32_t schedule, std::int64_t slot) REQUIRES(mu_);
  // `anchor`: a command received by another engine fixed the start's moment (cluster mode).
  void StartSchedule(Txn& tx, std::uint32_t schedule,
                     std::optional<std::int64_t> anchor = std::nullopt) REQUIRES(mu_);
  void DispatchRun(Txn& tx, std::uint32_t schedule, std::int64_t slot, RunMode mode, bool scheduled,
                   int attempt, std::string run_id) REQUIRES(mu_);
  void FinishRun(Txn& tx, const RunPtr& run, const Status& status, std::vector<ModelCounts> counts,
                 std::optional<Millis> hint = std::nullopt) REQUIRES(mu_);

  // ---- run policies (engine_policies.cc), under mu_ ----
  // Dispatches now, or queues the run when a concurrency cap is reached. An empty `run_id` gives
  // the run the slot's id (scheduled) or a new off-grid id.
  void TryDispatch(Txn& tx, std::uint32_t schedule, std::int64_t slot, RunMode mode, bool scheduled,
                   int attempt = 1, std::string run_id = {}) REQUIRES(mu_);
  bool CapsAllow(std::uint32_t integration) const REQUIRES(mu_);
  // Recovery: queues a run owed since before the restart (a full resync or buffered run that was
  // to follow the crashed run), to go at the first alarm.
  void TryDispatchLater(Txn& tx, std::uint32_t schedule, RunMode mode) REQUIRES(mu_);
  // Dispatches waiting runs while the caps allow, fairly across integrations.
  void DrainWaiting(Txn& tx) REQUIRES(mu_);
  void Enqueue(std::uint32_t schedule, const WaitInfo& w) REQUIRES(mu_);
  void DropWaiting(Txn& tx, std::uint32_t schedule) REQUIRES(mu_);
  void DropRetry(Txn& tx, std::uint32_t schedule) REQUIRES(mu_);
  // After a failed run: arms its retry, unless the policy or the next slot says no.
  void MaybeRetry(Txn& tx, const RunState& run, const Status& status) REQUIRES(mu_);
  void OnRetry(Txn& tx, std::uint32_t schedule) REQUIRES(mu_);
  void Decide(std::uint32_t schedule, Reason reason, std::int64_t now, std::string detail = {})
      REQUIRES(mu_);
  // The first slot of a spread schedule's phase grid at or after `not_before`.
  std::int64_t SpreadSlot(std::uint32_t schedule, std::int64_t freq, std::int64_t not_before) const
      REQUIRES(mu_);
  // The grid of a schedule started at `now`: {anchor, first slot}. With phase spreading it follows
  // the key's phase, its first slot at least half a period after the immediate run; otherwise it
  // is anchored now.
  static std::pair<std::int64_t, std::int64_t> StartGrid(const ScheduleKey& key, bool spread,
                                                         std::int64_t freq, std::int64_t now);
  void CountInFlight(std::uint32_t schedule, int delta) REQUIRES(mu_);
  void AbandonRun(Txn& tx, std::uint32_t schedule, Status reason) REQUIRES(mu_);
  void TrimRunTables(std::int64_t now) REQUIRES(mu_);
  void CreateSchedule(Txn& tx, std::uint32_t connection, std::uint32_t sync, std::uint32_t variant)
      REQUIRES(mu_);
  void DeleteSchedules(Txn& tx, const std::vector<std::uint32_t>& schedules) REQUIRES(mu_);
  void Regrid(Txn& tx, std::uint32_t schedule) REQUIRES(mu_);
  void OnSlot(Txn& tx, std::uint32_t schedule, std::int64_t deadline) REQUIRES(mu_);
  void OnRunDeadline(Txn& tx, std::uint32_t schedule) REQUIRES(mu_);
  void ArmRunDeadline(std::uint32_t schedule, const RunState& run, std::int64_t now) REQUIRES(mu_);
  // A run's timeout: the sync's own, else Options::default_run_timeout.
  std::int64_t TimeoutOf(const SyncInfo& sync) const REQUIRES(mu_);
  void MaybeRearm() REQUIRES(mu_);
  // A run in flight, as its schedule's row records it.
  static void FillInFlight(store::RunRow& row, const RunState& run);
  ScheduleStatus StatusOf(std::uint32_t schedule) const REQUIRES(mu_);
  std::shared_ptr<const Callback> CallbackFor(std::uint32_t integration,
                                              std::string_view sync) const REQUIRES(mu_);

  // ---- without mu_ ----
  void OnAlarm() EXCLUDES(mu_);
  // Hands runs to the workers (with no pool, to the run executor) and cancels tokens: either
  // may run user code, or (a pool after Stop) record runs under the lock.
  void Apply(Effects& fx) EXCLUDES(mu_);
  // Called by the writer once the rows of `runs` are committed (or failed to be).
  void Release(std::vector<RunPtr>&& runs, const Status& committed) EXCLUDES(mu_);
  // Runs a synchronous callback, or starts an asynchronous one (returning false: its `done`
  // completes it later).
  bool Execute(const RunPtr& run, RunOutcome& out) EXCLUDES(mu_);
  struct AsyncCompletion;
  void Complete(std::vector<RunPtr>& runs, std::vector<RunOutcome>& outcomes) EXCLUDES(mu_);

  // Not guarded: set by the constructor and Init, before Create returns the engine to anyone,
  // and only read afterwards (with or without mu_), except that Shutdown joins io_thread_ and
  // stops pool_ and writer_ (each idempotent and called without mu_). store_'s object is used
  // under mu_ by the engine (Recover; Commit when there is no writer) and under the writer's own
  // lock by the writer, never both: not PT_GUARDED_BY(mu_) either.
  Options options_;
  std::unique_ptr<Clock> owned_clock_;
  Clock* clock_ = nullptr;
  std::unique_ptr<boost::asio::io_context> owned_io_;
  std::thread io_thread_;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<CommitQueue> writer_;  // with a store: the one writer (group commit)
  // Cluster mode (set by Init, stopped by Shutdown): the keeper of the leases, and a second
  // store on its own connection for partition loads and uid reservations (loader_mu_ serializes
  // its users: the cluster thread, and commands under mu_).
  std::unique_ptr<cluster::LeaseKeeper> keeper_;
  std::unique_ptr<store::Store> loader_;
  Mutex loader_mu_;
  int partitions_ = 0;  // P
  std::thread cluster_thread_;
  std::mutex cl_mu_;  // a leaf: the cluster thread's wake-ups
  std::condition_variable cl_cv_;
  bool cl_stop_ = false;                  // under cl_mu_
  bool cl_poke_ = false;                  // under cl_mu_
  std::vector<FencedRefusal> cl_fenced_;  // under cl_mu_: refused by the fence
  std::function<void(const std::vector<int>&, bool)> load_hook_;  // under cl_mu_ (tests)
  std::atomic<std::uint64_t> fenced_refusals_{0};  // commits refused by the fence (metrics)
  // Cluster mode: since when (steady clock ticks, odd; 0: not failing) every commit of the store
  // failed with UNAVAILABLE (set by the writer's health hook, StoreStatusHook), and how long the
  // next withdrawal lasts (cluster thread only). See MaybeWithdraw.
  std::atomic<std::int64_t> store_failing_since_{0};
  std::chrono::milliseconds withdraw_for_{0};
  // Partitions taken from engines behind a catalog command (SpreadCatalog; metrics).
  std::atomic<std::uint64_t> catalog_revocations_{0};
  // Cluster mode: the command inbox and its thread (stopped by StopCluster).
  std::unique_ptr<cluster::CommandInbox> inbox_;
  std::thread inbox_thread_;
  std::atomic<bool> inbox_stop_{false};
  std::atomic<bool> inbox_poke_{false};  // a partition was loaded: read its pending parts now
  // The catalog in cluster mode: SyncCatalog's serialization, a sync due after a load, and a
  // sync of the whole catalog due (after a load or a failed application).
  std::mutex catalog_sync_mu_;
  std::atomic<bool> catalog_due_{false};
  std::atomic<bool> catalog_whole_due_{false};
  // Per partition, the epoch the writer may write under (0: none): set when a partition is loaded,
  // cleared at once when its lease ends (on the keeper's thread) or a commit is fenced. A leaf.
  std::mutex tenures_mu_;
  std::vector<std::int64_t> tenures_;  // under tenures_mu_
  std::size_t stream_rows_ GUARDED_BY(mu_) = kStreamRows;

  Mutex mu_;
  bool shut_down_ GUARDED_BY(mu_) = false;
  bool timers_held_ GUARDED_BY(mu_) = false;
  Catalog cat_ GUARDED_BY(mu_);
  // The wheels' ids are schedule indexes; deadlines: a schedule's next slot (slots_), its run's
  // timeout or heartbeat (deadlines_), its failed run's retry (retries_).
  wheel::TimerWheel slots_ GUARDED_BY(mu_);
  wheel::TimerWheel deadlines_ GUARDED_BY(mu_);
  wheel::TimerWheel retries_ GUARDED_BY(mu_);
  std::vector<RunPtr> runs_ GUARDED_BY(mu_);  // in flight, by table slot
  std::vector<std::uint32_t> free_runs_ GUARDED_BY(mu_);
  std::unique_ptr<Alarm> alarm_ GUARDED_BY(mu_);
  bool alarm_set_ GUARDED_BY(mu_) = false;
  std::int64_t alarm_at_ GUARDED_BY(mu_) = 0;
  std::uint64_t next_uid_ GUARDED_BY(mu_) = 1;
  std::uint64_t wait_seq_ GUARDED_BY(mu_) = 0;  // the last WaitInfo::seq given
  bool drain_due_ GUARDED_BY(mu_) = false;      // recovered runs wait: drain at the next alarm
  std::unordered_map<std::string, std::shared_ptr<const Callback>> callbacks_ GUARDED_BY(mu_);
  std::shared_ptr<const Callback> fallback_ GUARDED_BY(mu_);
  EngineMetrics metrics_ GUARDED_BY(mu_);
  // By schedule (flag kWaiting).
  std::unordered_map<std::uint32_t, WaitInfo> waiting_ GUARDED_BY(mu_);
  // Per integration, the waiting schedules as (seq, schedule), smallest seq on top; an entry
  // whose seq is no longer its schedule's wait is skipped lazily.
  using WaitEntry = std::pair<std::uint64_t, std::uint32_t>;
  std::vector<std::priority_queue<WaitEntry, std::vector<WaitEntry>, std::greater<>>> wait_queues_
      GUARDED_BY(mu_);
  // By schedule (flag kRetrying).
  std::unordered_map<std::uint32_t, RetryInfo> retry_info_ GUARDED_BY(mu_);
  std::unordered_map<std::uint32_t, DecisionRing> decisions_ GUARDED_BY(mu_);
  std::uint64_t rng_state_ GUARDED_BY(mu_) = 0;
  std::uint32_t last_served_ GUARDED_BY(mu_) = 0;  // the integration DrainWaiting served last
  // Cluster mode: per partition, the epoch at which its schedules are loaded (0: not loaded),
  // and the highest epoch a fence refused (never loaded at or below it); per schedule index, its
  // partition; the uid blocks reserved and not used yet.
  std::vector<std::int64_t> active_ GUARDED_BY(mu_);
  std::vector<std::int64_t> quarantine_ GUARDED_BY(mu_);
  std::vector<std::int32_t> part_of_ GUARDED_BY(mu_);
  std::deque<std::pair<std::uint64_t, std::uint64_t>> uid_blocks_ GUARDED_BY(mu_);
  // The catalog version applied here (-1: none yet), and a count of the catalog's changes made in
  // memory by this engine's commands and loads (SyncCatalog reads again when it moved).
  std::int64_t catalog_applied_ GUARDED_BY(mu_) = -1;
  std::uint64_t catalog_local_ GUARDED_BY(mu_) = 0;
  // Connections this engine deleted, stamped with catalog_local_ after the deletion: a partition
  // load that read before one must not load it back (kept ten minutes).
  struct LocalDeletion {
    std::uint64_t stamp = 0;
    std::chrono::steady_clock::time_point at;
    std::string integration, connection;
  };
  std::deque<LocalDeletion> local_deleted_ GUARDED_BY(mu_);
  // Command parts (command, partition) this engine applied, with when: a read of pending parts
  // that began before such a commit may still list it (kept a minute).
  std::map<std::pair<std::int64_t, int>, std::chrono::steady_clock::time_point> applied_parts_
      GUARDED_BY(mu_);
};

}  // namespace syncsched::core
