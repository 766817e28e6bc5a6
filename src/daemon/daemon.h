// The daemon as a whole: a validated Config in; an engine opened on its database, its syncs
// defined with the command runner as their callback, its connections added, and the HTTP API
// serving, out. main.cc adds the process around it (arguments, signals, exit codes); tests run
// it in-process.
//
// Thread safety: Start and Shutdown are called by one owner thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "daemon/api.h"
#include "daemon/command_runner.h"
#include "daemon/config.h"
#include "daemon/http_server.h"
#include "daemon/log.h"
#include "syncsched/engine.h"

namespace syncsched::daemon {

class Daemon {
 public:
  // Opens the engine on config.database with its timers held, binds the listener, registers a
  // command runner for each sync, defines the syncs, adds the listed connections that are absent
  // (ALREADY_EXISTS is fine: existing ones are left as they are), releases the timers (so that
  // runs recovered from the database find their commands), then serves. `log` must outlive the
  // daemon.
  // Errors: from Engine::Open (UNAVAILABLE for a database another engine holds, ...);
  // UNAVAILABLE when the address cannot be bound; INVALID_ARGUMENT when the engine refuses a
  // definition the configuration check let through.
  static Result<std::unique_ptr<Daemon>> Start(const Config& config, Logger& log);

  // Shuts down (as Shutdown) if not done yet.
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // The bound HTTP port.
  std::uint16_t port() const { return server_->port(); }
  // This daemon's name (Config::node, or host:port with the port bound): SYNCSCHED_NODE.
  const std::string& node() const { return node_; }
  Engine& engine() { return *engine_; }

  // Graceful shutdown: stops accepting and answers the requests in progress; starts no new
  // command; lets the commands running finish within config.shutdown_grace; then closes the
  // engine, which cancels what still runs (their process groups get SIGTERM, then SIGKILL after
  // kill_grace). Runs cut short are recorded as interrupted and run again after a restart.
  // Returns OK when the database holds everything the engine did. Otherwise (the database refused
  // the last commits: a full disk, an I/O error, corruption) it logs an error and returns
  // UNAVAILABLE with the database's error (naming the file) and how many records it could not
  // write: finished runs whose outcome is lost read as interrupted at the next start, and run
  // again then. A second call returns the first call's status.
  Status Shutdown();

 private:
  Daemon(const Config& config, Logger& log);
  codec::DaemonMetrics Metrics() const;

  const Config config_;
  std::string node_;  // config_.node, or named after the bound port (listen port 0, no node)
  Logger& log_;
  CommandRunner runner_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Api> api_;
  std::unique_ptr<HttpServer> server_;
  bool serving_ = false;  // Start got as far as serving
  bool shut_down_ = false;
  Status shutdown_status_ = Status::Ok();
};

}  // namespace syncsched::daemon
