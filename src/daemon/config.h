// daemon/: syncschedd, the engine over HTTP. This header holds its configuration: the JSON file
// given with --config (SPEC §8), parsed and validated in full before anything starts. Every
// field is described in docs/daemon.md; an error names the field by its path
// (`integrations["github"].syncs["issues"].command`) and the daemon exits with status 2.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "daemon/log.h"
#include "syncsched/engine.h"
#include "syncsched/frequency.h"
#include "syncsched/types.h"

namespace syncsched::daemon {

// The scopes an API key may hold (Nango's names); "*" grants every one.
inline constexpr std::string_view kScopeSyncsExecute = "environment:syncs:execute";
inline constexpr std::string_view kScopeSyncsRead = "environment:syncs:read";
inline constexpr std::string_view kScopeSyncsUpdate = "environment:syncs:update";
inline constexpr std::string_view kScopeConnectionsWrite = "environment:connections:write";
inline constexpr std::string_view kScopeAll = "*";

struct ApiKeyConfig {
  std::string name;  // for logs; default "key<index>"
  std::string key;   // the bearer secret
  std::vector<std::string> scopes;
};

struct SyncConfig {
  std::string name;
  std::string runs;  // the default frequency, as written
  bool auto_start = true;
  std::vector<std::string> command;              // argv, executed without a shell
  std::optional<Millis> timeout;                 // unset: default_run_timeout
  std::optional<Millis> heartbeat_timeout;       // unset: none; output lines count as heartbeats
  OverlapPolicy overlap = OverlapPolicy::kSkip;  // "skip" | "buffer_one"
  RetryPolicy retry;                             // {"max": 0..100, "backoff": duration}
  bool spread = false;                           // phase spreading
};

struct IntegrationConfig {
  std::string key;
  std::vector<SyncConfig> syncs;
  std::vector<std::string> connections;
  std::size_t max_concurrency = 0;  // runs of the integration in flight at once; 0: unlimited
};

struct HttpLimits {
  std::size_t max_body_bytes = 1 << 20;
  std::size_t max_header_bytes = 16 << 10;
  std::size_t max_connections = 1024;
  // Connections open at once from one client (an IPv4 address, an IPv6 /64); 0: no limit.
  std::size_t max_connections_per_client = 256;
  int max_json_depth = 32;
  // To receive one request (header and body) from its first byte (the first request of a
  // connection: from the connection's start); to send a response; a lingering close's bound.
  Millis read_timeout = std::chrono::seconds(30);
  Millis idle_timeout = std::chrono::seconds(60);  // between requests on a kept-alive connection
};

// Cluster mode (docs/cluster.md): several daemons on one PostgreSQL database share its schedules.
struct ClusterConfig {
  // A daemon that stops renewing (killed, frozen, cut off) loses its partitions this long after
  // its last renewal; the others then take them. At least 300 ms.
  Millis lease = std::chrono::seconds(10);
  // P, used only by the daemon that creates the cluster's tables (1..4096); the database's wins.
  int partitions = 64;
};

struct Config {
  std::string listen_host = "127.0.0.1";
  std::uint16_t listen_port = 3003;  // 0: any free port
  std::string
      database;  // required: an SQLite file, ":memory:" (memory only) or a postgresql:// URI
  FrequencyBounds frequency_bounds;
  std::vector<ApiKeyConfig> api_keys;
  std::vector<IntegrationConfig> integrations;
  std::size_t worker_threads = 4;  // engine workers: they start runs (commands run without them)
  // SQLite only: the page cache's bound in MiB (1..1048576), Options::database_cache_bytes.
  std::size_t database_cache_mb = 64;
  // Runs in flight across integrations (each a process and three descriptors); 0: unlimited.
  std::size_t max_concurrent_runs = 1024;
  double catch_up_per_second = 0;  // catch-up runs released per second; 0: unlimited
  // Two by default: commands run on the HTTP threads and wait for their commit, so with one
  // thread a long commit (a start of 100k schedules, a slow disk) would hold every connection,
  // /health included. One thread is faster when requests are small (~100k requests/s on one
  // core, no strand: docs/benchmarks.md).
  std::size_t http_threads = 2;
  Millis default_run_timeout = std::chrono::hours(24);
  Millis shutdown_grace = std::chrono::seconds(30);
  Millis kill_grace = std::chrono::seconds(10);
  HttpLimits limits;
  LogLevel log_level = LogLevel::kInfo;
  // This daemon's name: its engine's node in a cluster, and SYNCSCHED_NODE in its runs'
  // environment. 1..255 bytes, no control character. Default: DefaultNodeName(listen host, port)
  // when the port is known; empty when `listen` takes any free port (port 0) and no node is
  // given: the daemon then names itself after the port it bound (Daemon::Start).
  std::string node;
  std::optional<ClusterConfig> cluster;  // set: cluster mode (needs a postgresql:// database)
};

// The default node name: "<host>:<port>", where <host> is the listen address when it is a
// specific one (`10.0.0.5:3003`, `[fd00::5]:3003`), and this machine's host name when it listens
// on a loopback address or on every interface (`127.0.0.1:3003` or `0.0.0.0:3003` would be the
// same name on every machine).
std::string DefaultNodeName(const std::string& listen_host, std::uint16_t port);

struct ConfigError {
  std::string field;  // path of the offending field; empty for the file as a whole
  std::string message;
};

using ConfigResult = std::variant<Config, ConfigError>;

// Parses and validates a configuration document (JSON; // and /* */ comments allowed).
ConfigResult ParseConfig(std::string_view text);
// Reads `path` and parses it. A file that cannot be read is a ConfigError with an empty field.
ConfigResult LoadConfig(const std::string& path);

}  // namespace syncsched::daemon
