// Wiring of the daemon. See daemon.h.
#include "daemon/daemon.h"

#include <malloc.h>

#include <chrono>
#include <string_view>
#include <thread>
#include <utility>

extern char** environ;

namespace syncsched::daemon {

namespace {

// Cluster mode: waits until this engine runs its share of the partitions (floor(P / live
// engines), loaded), at most `bound`, so that the configuration's new schedules in those
// partitions are created by this engine at once rather than after a hand-over.
void WaitForShare(Engine& engine, std::chrono::steady_clock::duration bound) {
  auto deadline = std::chrono::steady_clock::now() + bound;
  while (std::chrono::steady_clock::now() < deadline) {
    EngineMetrics m = engine.GetMetrics();
    if (m.cluster_nodes_live > 0 &&
        m.cluster_partitions_owned >= m.cluster_partitions_total / m.cluster_nodes_live) {
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

// A command refused because this engine lost a partition while it ran (cluster mode: the
// fence refused its commit; the engine that took the partition applies the catalog itself).
bool HeldElsewhere(const Status& s) {
  return s.code() == StatusCode::kFailedPrecondition && s.message().starts_with("cluster mode: ");
}

// A sync's definition, for the log.
std::string Describe(const SyncDefinition& d) {
  std::string out = "runs=\"" + d.frequency + "\" auto_start=" + (d.auto_start ? "true" : "false");
  if (d.timeout) out += " timeout_ms=" + std::to_string(d.timeout->count());
  if (d.heartbeat_timeout) {
    out += " heartbeat_timeout_ms=" + std::to_string(d.heartbeat_timeout->count());
  }
  out +=
      std::string(" overlap=") + (d.overlap == OverlapPolicy::kBufferOne ? "buffer_one" : "skip");
  out += " retry.max=" + std::to_string(d.retry.max);
  if (d.retry.max > 0) out += " retry.backoff_ms=" + std::to_string(d.retry.backoff.count());
  out += std::string(" spread=") + (d.spread ? "true" : "false");
  return out;
}

}  // namespace

Daemon::Daemon(const Config& config, Logger& log)
    : config_(config), log_(log), runner_(log, config.kill_grace) {}

Daemon::~Daemon() { (void)Shutdown(); }

Result<std::unique_ptr<Daemon>> Daemon::Start(const Config& config, Logger& log) {
  std::unique_ptr<Daemon> d(new Daemon(config, log));
  // The SYNCSCHED_ prefix is reserved for the run's variables: the daemon's own are not passed
  // to commands. Say so rather than drop them silently.
  codec::Json reserved = codec::Json::array();
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view var(*e);
    if (var.starts_with("SYNCSCHED_"))
      reserved.push_back(std::string(var.substr(0, var.find('='))));
  }
  if (!reserved.empty()) {
    log.Warn(
        "environment variables not passed to commands: the SYNCSCHED_ prefix is reserved "
        "for the run's variables",
        {{"names", std::move(reserved)}});
  }

  Options options;
  options.database_path = config.database;
  options.frequency_bounds = config.frequency_bounds;
  options.worker_threads = config.worker_threads;
  options.default_run_timeout = config.default_run_timeout;
  options.max_concurrent_runs = config.max_concurrent_runs;
  options.database_cache_bytes = std::uint64_t{config.database_cache_mb} << 20;
  options.catch_up_per_second = config.catch_up_per_second;
  if (config.cluster) {
    ClusterOptions cluster;
    cluster.node = config.node;  // never empty in cluster mode (ParseConfig)
    cluster.lease = config.cluster->lease;
    cluster.partitions = config.cluster->partitions;
    options.cluster = cluster;
  }
  // Runs recovered from the database (slots missed while down) wait until every command is
  // registered; see ReleaseTimers below.
  options.hold_timers = true;
  // A refused commit (full disk, I/O error, corruption) and the recovery from it, once each; the
  // counts are in /metrics and /health answers 503 meanwhile.
  options.on_store_status = [&log, path = config.database](const Status& s) {
    if (s.ok()) {
      log.Info("database writable again", {{"database", path}});
    } else {
      log.Error("database refused a commit: runs are not started and outcomes are held in memory",
                {{"database", path}, {"error", s.ToString()}});
    }
  };
  Result<std::unique_ptr<Engine>> engine = Engine::Open(std::move(options));
  if (!engine.ok()) return engine.status();
  d->engine_ = std::move(engine.value());

  d->api_ = std::make_unique<Api>(*d->engine_, d->config_, log,
                                  [raw = d.get()] { return raw->Metrics(); });
  d->server_ = std::make_unique<HttpServer>(*d->api_, d->config_, log);
  if (Status s = d->server_->Bind(); !s.ok()) return s;
  // The runs' SYNCSCHED_NODE: with `listen` on port 0 and no node given, the port just bound.
  d->node_ =
      config.node.empty() ? DefaultNodeName(config.listen_host, d->server_->port()) : config.node;
  d->runner_.SetNode(d->node_);
  if (config.cluster) WaitForShare(*d->engine_, config.cluster->lease + std::chrono::seconds(1));
  // In cluster mode every daemon applies its configuration (the catalog through any engine,
  // docs/cluster.md); a commit the fence refused because a partition changed hands meanwhile is
  // left to the engine that took it (it applies the catalog after loading the partition).
  auto held_elsewhere = [&](const Status& s, const std::string& field) {
    if (!config.cluster || !HeldElsewhere(s)) return false;
    log.Warn("cluster: not applied by this daemon (a partition changed hands meanwhile)",
             {{"field", field}, {"error", s.message()}});
    return true;
  };

  // Callbacks before definitions, so that no run of a sync can find itself without one. A sync
  // the database knows but the configuration no longer lists has no command: its runs fail
  // saying so.
  d->engine_->SetFallbackCallback([](const RunContext& ctx) {
    return RunReport::Failure("sync \"" + ctx.key.sync + "\" of integration \"" +
                              ctx.key.integration +
                              "\" has no command: it is not in syncschedd's configuration");
  });
  for (const IntegrationConfig& integration : d->config_.integrations) {
    for (const SyncConfig& sync : integration.syncs) {
      CommandRunner* runner = &d->runner_;
      const std::vector<std::string>* argv = &sync.command;  // lives in d->config_
      // Asynchronous: a run holds no worker thread while its command runs.
      Status s = d->engine_->RegisterAsyncCallback(
          integration.key, sync.name, [runner, argv](const RunContext& ctx, RunDone done) {
            runner->RunAsync(*argv, ctx, std::move(done));
          });
      if (!s.ok()) return s;
    }
  }
  for (const IntegrationConfig& integration : d->config_.integrations) {
    for (const SyncConfig& sync : integration.syncs) {
      SyncDefinition def;
      def.name = sync.name;
      def.frequency = sync.runs;
      def.auto_start = sync.auto_start;
      def.timeout = sync.timeout;
      def.heartbeat_timeout = sync.heartbeat_timeout;
      def.overlap = sync.overlap;
      def.retry = sync.retry;
      def.spread = sync.spread;
      // A definition that differs from the database's (an earlier configuration, or another
      // daemon of the cluster with another): this one replaces it, for every engine.
      if (auto stored = d->engine_->GetSyncDefinition(integration.key, sync.name); stored.ok()) {
        if (std::string was = Describe(*stored), now = Describe(def); was != now) {
          log.Warn(
              "sync definition replaced",
              {{"integration", integration.key}, {"sync", sync.name}, {"was", was}, {"now", now}});
        }
      }
      if (Status s = d->engine_->DefineSync(integration.key, def); !s.ok()) {
        std::string field =
            "integrations[\"" + integration.key + "\"].syncs[\"" + sync.name + "\"]";
        if (held_elsewhere(s, field)) continue;
        return Status(s.code(), field + ": " + s.message());
      }
    }
    // The configuration is declarative: an integration without `max_concurrency` is unlimited,
    // whatever an earlier configuration set (the engine keeps limits in its database).
    IntegrationLimits limits;
    limits.max_concurrency = integration.max_concurrency;
    Status s = d->engine_->SetIntegrationLimits(integration.key, limits);
    if (!s.ok() && !(s.IsNotFound() && integration.max_concurrency == 0)) {
      return Status(s.code(), "integrations[\"" + integration.key +
                                  "\"].max_concurrency: " + s.message() +
                                  (s.IsNotFound() ? " (an integration needs a sync)" : ""));
    }
  }
  for (const IntegrationConfig& integration : d->config_.integrations) {
    for (const std::string& connection : integration.connections) {
      Status s = d->engine_->AddConnection(integration.key, connection);
      if (s.ok()) {
        log.Info("connection added",
                 {{"integration", integration.key}, {"connection", connection}});
      } else if (!s.IsAlreadyExists()) {
        std::string field = "integrations[\"" + integration.key + "\"].connections";
        if (held_elsewhere(s, field)) continue;
        return Status(s.code(), field + ": " + s.message());
      }
    }
  }
  d->engine_->ReleaseTimers();
  d->server_->Start();
  d->serving_ = true;
  log.Info("listening", {{"address", d->config_.listen_host},
                         {"port", d->server_->port()},
                         {"database", RedactedDatabasePath(d->config_.database)},
                         {"node", d->node_}});
  return d;
}

codec::DaemonMetrics Daemon::Metrics() const {
  codec::DaemonMetrics m;
  if (server_) server_->FillMetrics(m);
  m.commands_spawned = runner_.spawned();
  m.commands_failed_to_spawn = runner_.spawn_failures();
  // Walks every arena under its lock: microseconds, once per scrape.
  struct mallinfo2 heap = mallinfo2();
  m.heap_in_use_bytes = heap.uordblks + heap.hblkhd;
  m.heap_held_bytes = heap.arena + heap.hblkhd;
  return m;
}

Status Daemon::Shutdown() {
  if (shut_down_) return shutdown_status_;
  shut_down_ = true;
  auto deadline = std::chrono::steady_clock::now() + config_.shutdown_grace;
  if (server_) {
    // Requests are short; they get a part of the grace period, runs the rest. Then every socket
    // still open closes (destroying the server closes them), so that no client waits for the
    // runs.
    server_->Stop(std::min<Millis>(config_.shutdown_grace, std::chrono::seconds(5)));
    server_.reset();
  }
  runner_.BeginShutdown();
  if (engine_) {
    if (std::size_t n = runner_.running(); n > 0) {
      log_.Info("waiting for runs to finish",
                {{"running", n},
                 {"grace_ms",
                  std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now())
                      .count()}});
    }
    if (!runner_.WaitIdle(deadline)) {
      log_.Warn("grace period over; stopping the runs still going",
                {{"running", runner_.running()}});
    }
    // Cancels what still runs and commits every outcome.
    engine_->Shutdown(std::chrono::steady_clock::now());
    // The cancelled commands get SIGTERM, then SIGKILL after kill_grace: wait for them, so that
    // none is killed without its grace when the runner goes.
    if (!runner_.WaitIdle(std::chrono::steady_clock::now() + config_.kill_grace +
                          std::chrono::seconds(1))) {
      log_.Warn("runs still going after their kill grace", {{"running", runner_.running()}});
    }
    // What the last commits could not write is lost with the process: say so, and fail the exit.
    const EngineMetrics m = engine_->GetMetrics();
    if (!m.store_healthy || m.store_rows_unrecorded > 0) {
      std::string what = m.store_rows_unrecorded > 0
                             ? std::to_string(m.store_rows_unrecorded) +
                                   " records (schedule rows and finished runs) were not written; "
                                   "runs whose outcome is lost read as interrupted at the next "
                                   "start and run again then"
                             : "the database refused the last commit";
      log_.Error("stopped with the database refusing commits",
                 {{"error", m.store_error}, {"unrecorded", m.store_rows_unrecorded}});
      shutdown_status_ = Status::Unavailable("stopped with the database refusing commits (" +
                                             m.store_error + "): " + what);
    }
    engine_.reset();
  }
  server_.reset();
  api_.reset();
  if (serving_ && shutdown_status_.ok()) log_.Info("stopped");
  return shutdown_status_;
}

}  // namespace syncsched::daemon
