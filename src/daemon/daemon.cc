// Wiring of the daemon. See daemon.h.
#include "daemon/daemon.h"

#include <chrono>
#include <string_view>
#include <utility>

extern char** environ;

namespace syncsched::daemon {

Daemon::Daemon(const Config& config, Logger& log)
    : config_(config), log_(log), runner_(log, config.kill_grace) {}

Daemon::~Daemon() { Shutdown(); }

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
      if (Status s = d->engine_->DefineSync(integration.key, def); !s.ok()) {
        return Status(s.code(), "integrations[\"" + integration.key + "\"].syncs[\"" + sync.name +
                                    "\"]: " + s.message());
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
        return Status(s.code(),
                      "integrations[\"" + integration.key + "\"].connections: " + s.message());
      }
    }
  }
  d->engine_->ReleaseTimers();
  d->server_->Start();
  d->serving_ = true;
  log.Info("listening", {{"address", d->config_.listen_host},
                         {"port", d->server_->port()},
                         {"database", RedactedDatabasePath(d->config_.database)}});
  return d;
}

codec::DaemonMetrics Daemon::Metrics() const {
  codec::DaemonMetrics m;
  if (server_) server_->FillMetrics(m);
  m.commands_spawned = runner_.spawned();
  m.commands_failed_to_spawn = runner_.spawn_failures();
  return m;
}

void Daemon::Shutdown() {
  if (shut_down_) return;
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
    engine_.reset();  // cancels what still runs
    // The cancelled commands get SIGTERM, then SIGKILL after kill_grace: wait for them, so that
    // none is killed without its grace when the runner goes.
    if (!runner_.WaitIdle(std::chrono::steady_clock::now() + config_.kill_grace +
                          std::chrono::seconds(1))) {
      log_.Warn("runs still going after their kill grace", {{"running", runner_.running()}});
    }
  }
  server_.reset();
  api_.reset();
  if (serving_) log_.Info("stopped");
}

}  // namespace syncsched::daemon
