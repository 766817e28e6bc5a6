// Options: how an Engine is built. Every field has a default; one paragraph per field says what it
// means and what it trades.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include <boost/asio/any_io_executor.hpp>

#include "syncsched/clock.h"
#include "syncsched/frequency.h"
#include "syncsched/status.h"

namespace syncsched {

// Cluster mode: this engine is one of several sharing one PostgreSQL database (docs/cluster.md).
struct ClusterOptions {
  // This engine's name, unique among the live engines of the database, 1..255 bytes (the daemon
  // defaults it to host:port). Required.
  std::string node{};
  // A live engine renews its leases; one that stops (killed, frozen, cut off) loses its
  // partitions this long after its last renewal, and the others take them over. At least 300 ms.
  Millis lease = std::chrono::seconds(10);
  // The partition count P when this engine creates the cluster's tables (1..4096); ignored when
  // they exist: the database's P wins.
  int partitions = 64;
};

struct Options {
  // Where the engine reads the time and sets its alarm. Not owned: it must outlive the engine.
  // Default (null): an engine-owned SystemClock. Tests pass a VirtualClock.
  Clock* clock = nullptr;

  // The executor on which the engine's alarm handler runs (the one Asio timer of the whole engine,
  // set to the next deadline). Default (unset): an engine-owned io_context on one engine thread.
  // A host passing its own executor must keep running it while the engine lives.
  std::optional<boost::asio::any_io_executor> executor{};

  // The executor on which sync callbacks run, one handler per run. Default (unset): an
  // engine-owned pool of `worker_threads` threads pulling from one due-ordered queue. A host
  // executor gives the host the threads (and, with a VirtualClock and a single io_context,
  // fully deterministic tests).
  std::optional<boost::asio::any_io_executor> run_executor{};

  // Threads of the engine-owned worker pool, when `run_executor` is unset. A run occupies one
  // thread for as long as its callback runs, so this bounds the runs in flight.
  std::size_t worker_threads = 4;

  // The accepted range of frequencies (SPEC §2). Default 30 s .. 31 d.
  FrequencyBounds frequency_bounds{};

  // The timeout of a run when its sync sets none. Default 24 h (SPEC §5).
  Millis default_run_timeout = std::chrono::hours(24);

  // At most this many due timers are handled per wake-up of the engine's alarm, so that a burst of
  // due schedules cannot hold the engine's lock for long; the rest follow at once in further
  // wake-ups. Default 4096.
  std::size_t max_fires_per_wakeup = 4096;

  // Runs in flight at once across the engine; 0: unlimited (but for the worker pool's size).
  // Due runs beyond it wait in a queue ordered by slot time, fair across integrations; slots that
  // pass while a run waits are skipped, not queued.
  std::size_t max_concurrent_runs = 0;

  // After downtime, catch-up runs are released at no more than this many per second, in due
  // order; 0: unlimited (all at once).
  // Negative, NaN or infinite: Engine::Open answers INVALID_ARGUMENT.
  double catch_up_per_second = 0;

  // Scheduling decisions kept per schedule for status ("why not"). Default 8.
  std::size_t decisions_kept = 8;

  // Seed of the retry jitter; 0: a random seed.
  std::uint64_t random_seed = 0;

  // The database holding the engine's state, or empty for an engine that keeps its state in
  // memory only (lost at exit). Either an SQLite file path (created when absent; ":memory:" is an
  // SQLite in-memory database), or a libpq connection URI starting with "postgresql://" or
  // "postgres://" (e.g. "postgresql://sched@127.0.0.1:5432/syncsched"): the state then lives in
  // the schema `syncsched` of that PostgreSQL database (created when absent), with the same
  // semantics (docs/stores.md). A password in the URI never appears in an error message.
  //
  // With a database, every command's effect is committed before the command returns, and each
  // run's record is committed before its callback is called. Opening restores the catalog,
  // connections and schedules: STARTED schedules continue on their grids, slots missed while the
  // process was down collapse into one run per schedule (dispatched in due order as soon as timers
  // are released), and runs that were in flight are recorded as "interrupted" errors.
  //
  // One engine owns a database at a time (outside cluster mode): an open while another engine
  // owns it fails UNAVAILABLE naming the database ("is in use by another syncsched engine"). On
  // PostgreSQL the open waits up to 1 s for the owner to let go first, because the server releases
  // a closed session's lock shortly after the session ends, not when the client closes (a host
  // restarting its engine would otherwise be refused by its own previous session).
  std::string database_path{};

  // SQLite only. false (default): `synchronous=NORMAL` in WAL mode: commits survive a crash of
  // the process; a power loss may lose the last few. true: `synchronous=FULL`, surviving power
  // loss at the cost of an fsync per commit. On PostgreSQL the server's `synchronous_commit`
  // decides (its default, on, survives power loss).
  bool synchronous_full = false;

  // SQLite only: the bound of the database's page cache, 64 KiB to 1 TiB (Engine::Open fails with
  // INVALID_ARGUMENT outside). Default 64 MiB. The cache fills as pages are read and written (at
  // open, the schedules' pages; then every history page a finished run writes) and then stays at
  // this bound, so an engine's memory grows by up to this much over its first hours and no more
  // (EngineMetrics::store_cache_bytes shows it). Smaller saves memory; larger keeps more of a big
  // database's pages cached (commits of runs spread over many schedules read fewer pages).
  std::uint64_t database_cache_bytes = std::uint64_t{64} << 20;

  // Finished runs kept in the database per schedule, at most 1000 (Engine::Open fails with
  // INVALID_ARGUMENT above), beside the last failed run. Each finished run overwrites the oldest
  // of its schedule's; opening a file with a smaller value than it was written with deletes the
  // surplus. 0 keeps only the last failed run.
  std::size_t run_history = 20;

  // When true, the engine fires no timer (scheduled slots, catch-up runs after a restart) until
  // Engine::ReleaseTimers() is called; commands work and dispatch their runs meanwhile. This lets
  // the runs recovered from a database find their callbacks: open, register the callbacks and
  // define the catalog, then release. Without a hold, a slot that comes due before its callback is
  // registered fails its run with "no callback registered".
  //
  // Default (unset): true when `database_path` is set (a host must then call ReleaseTimers once
  // its callbacks are registered, or no timer ever fires), false for an in-memory engine (nothing
  // is recovered, so timers fire from the start, as before). Set it explicitly to choose either
  // way.
  std::optional<bool> hold_timers{};

  // Called when the database starts refusing commits (with the error, which names the file) and
  // when a commit succeeds again (with OK): once per change, not per commit. Runs on the engine's
  // writer thread; it must return quickly and must not call the engine (a command may be waiting
  // for that thread). Empty (default): nothing is called; EngineMetrics shows the same.
  std::function<void(const Status&)> on_store_status{};

  // Set: cluster mode. `database_path` must then be a PostgreSQL URI (else Engine::Open answers
  // INVALID_ARGUMENT), and every engine opened on that database with `cluster` set shares its
  // schedules: each slot runs once cluster-wide. Unset (default): the engine owns its database
  // alone.
  //
  // What it does. The engine joins the cluster (a LeaseKeeper: a connection and a thread of its
  // own) and holds leases on an even share of the database's P partitions; a schedule belongs to
  // the partition of its key's hash. It keeps in memory, arms and dispatches only the schedules of
  // partitions whose lease is valid on this engine: on gaining a partition it loads its schedules
  // (on a second connection and a thread of its own, "syncsched-cluster") and merges them as a
  // restart recovers (missed slots collapse into one run each, at the latest missed slot; a run
  // found in flight is recorded as an "interrupted" error); on losing one (taken over, released
  // to a joining engine, its lease expired locally, or a commit refused by the fence) it drops
  // its schedules from memory and cancels their runs in flight (CANCELLED, "partition ... lost"),
  // whose outcomes it no longer records: the new owner records them as interrupted. Every commit
  // that writes schedules is fenced in its transaction at the epochs of the leases it was built
  // under, and a run's callback is called only after its dispatch committed so: an engine that
  // lost a partition (frozen past its lease, cut off) writes nothing to it and runs nothing of it.
  // Engine::Shutdown and the destructor release the leases once the last outcomes are committed,
  // so the other engines take the partitions over at once (a killed engine's are taken over when
  // its lease ends). Timers are held as without cluster mode (`hold_timers`): partitions gained
  // before ReleaseTimers are loaded but fire nothing until then.
  //
  // Commands through any engine (docs/cluster.md, "Commands through any engine"). Start, Pause,
  // Trigger, UpdateFrequency, GetStatus, CreateVariant and DeleteVariant are served by every engine
  // for every schedule, with the answers and errors of a single engine. When this engine holds
  // (loaded, under a valid lease) every partition the command may touch, it serves it as a single
  // engine does. Otherwise it validates the command whole against the catalog and the schedules in
  // the database (nothing is written for an invalid command), then hands it to the owners of the
  // keys' partitions through the database (a row per command and per partition in the schema
  // syncsched_cluster, and a NOTIFY; each engine also polls every 500 ms for what a lost notice
  // left), and waits: each owner applies its share through the same steps as a local command, in
  // one fenced transaction that records the per-key outcomes, so the answer (CommandResult, per
  // key) is sent once every share is committed. A start's anchor (and its immediate run's slot)
  // is the moment this engine received it. The owners act at once (typically a few ms; the
  // issue's bound is 200 ms): a slot that came due at the owner between the command's receipt
  // and its application may still run once. GetStatus reads the schedules of the partitions
  // this engine does not hold from the database (a query by scope, not a partition load): it
  // reflects every acknowledged command, whichever engine acknowledged it.
  // Failures: a partition with no live owner is applied by its next owner as soon as it loads it,
  // before it dispatches anything there; if nobody has applied a share within lease + 2 s (an
  // owner dead and not yet replaced), the share is cancelled, atomically with respect to its
  // application (never both), and the command fails with UNAVAILABLE naming the partitions and
  // keys left unchanged and saying how many other keys were changed. An engine that dies while
  // it waits leaves its command to be applied by the owners (as a command whose answer was
  // lost). The catalog: an integration, sync or connection named by a command and unknown here
  // (created through another engine) is read from the database first.
  // Catalog commands that create or delete schedules (DefineSync with a new sync or a changed
  // frequency, AddConnection, DeleteConnection) are still served
  // only when this engine holds every partition they may touch, else FAILED_PRECONDITION naming
  // one it does not hold, changing nothing. A schedule created by a command takes its uid from
  // the database (unique cluster-wide). A changed sync definition or integration limit is not
  // propagated to engines that already know the sync until they restart.
  //
  // Errors of Engine::Open: INVALID_ARGUMENT for bad options (names the field); ALREADY_EXISTS
  // when a live engine has this node name; UNAVAILABLE when the database cannot be reached or is
  // owned by an engine not in cluster mode; the store's errors otherwise. Threads: the keeper's
  // and the loader's, beside the engine's own. GetMetrics, Forecast and MemoryBytes cover the
  // schedules of this engine's partitions; GetMetrics' store fields cover the engine's writer (a
  // commit refused by the fence shows there as a failed commit).
  std::optional<ClusterOptions> cluster{};
};

// `database_path` (Options::database_path) as it may be shown in logs and messages: the password
// of a PostgreSQL URI (in its user-info part or a `password=` parameter) replaced by "***";
// anything else returned unchanged.
std::string RedactedDatabasePath(std::string_view database_path);

}  // namespace syncsched
