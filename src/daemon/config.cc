// Configuration parsing and validation. See config.h and docs/daemon.md.
#include "daemon/config.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <set>
#include <sstream>

#include <unistd.h>

#include <boost/asio/ip/address.hpp>

#include "codec/codec.h"
#include "core/names.h"

namespace syncsched::daemon {
namespace {

using codec::Json;

// Deep enough for any configuration (it nests five levels).
constexpr int kMaxConfigDepth = 64;

// Thrown inside the parser and caught at its entry: a configuration error ends the parse.
struct Failure {
  ConfigError error;
};

[[noreturn]] void Fail(std::string field, std::string message) {
  throw Failure{ConfigError{std::move(field), std::move(message)}};
}

using core::Quote;

// A member of an object keyed by a name, in a field path: `integrations["github"]`. The key is
// spelled as a JSON string literal (not core::Quote, which is for messages), so the path reads as
// the file is written and a key with an escape can be searched for in the file as it stands.
std::string JsonString(std::string_view s) { return codec::Dump(Json(std::string(s))); }

std::string Member(std::string_view path, std::string_view key) { return codec::Join(path, key); }
std::string Keyed(std::string_view path, std::string_view key) {
  return std::string(path) + "[" + JsonString(key) + "]";
}
std::string Indexed(std::string_view path, std::size_t i) {
  return std::string(path) + "[" + std::to_string(i) + "]";
}

[[noreturn]] void Fail(const codec::ApiError& e) { Fail(e.field.value_or(""), e.message); }

// The codec's rules for objects (codec::CheckObject), with the configuration's own words for the
// document itself.
void ExpectObject(const Json& j, const std::string& path,
                  std::initializer_list<std::string_view> allowed) {
  if (path.empty() && !j.is_object()) {
    Fail(path, std::string("the configuration must be an object, not ") + j.type_name());
  }
  if (auto e = codec::CheckObject(j, path, allowed)) Fail(*e);
}

// A member given as null is absent, as in a request body.
using codec::Find;

std::string String(const Json& j, const std::string& path) {
  if (!j.is_string()) Fail(codec::WrongType(path, "a string", j));
  return j.get<std::string>();
}

bool Bool(const Json& j, const std::string& path) {
  if (!j.is_boolean()) Fail(codec::WrongType(path, "a boolean", j));
  return j.get<bool>();
}

std::size_t Count(const Json& j, const std::string& path, std::size_t min, std::size_t max) {
  if (!j.is_number_integer() || j.get<std::int64_t>() < static_cast<std::int64_t>(min) ||
      j.get<std::uint64_t>() > max) {
    Fail(path,
         path + " must be an integer from " + std::to_string(min) + " to " + std::to_string(max));
  }
  return j.get<std::size_t>();
}

// Durations use the codec's one duration parser (the frequency grammar: "30s", "1h").
Millis Duration(const Json& j, const std::string& path) {
  Result<Millis> d = codec::ParseDuration(String(j, path));
  if (!d.ok()) Fail(path, path + ": " + d.status().message());
  return d.value();
}

// A number >= 0 (integer or not), finite, at most `max`.
double NonNegative(const Json& j, const std::string& path, double max) {
  if (!j.is_number() || !std::isfinite(j.get<double>()) || j.get<double>() < 0 ||
      j.get<double>() > max) {
    Fail(path, path + " must be a number from 0 to " + std::to_string(static_cast<long long>(max)));
  }
  return j.get<double>();
}

OverlapPolicy Overlap(const Json& j, const std::string& path) {
  std::string text = String(j, path);
  if (text == "skip") return OverlapPolicy::kSkip;
  if (text == "buffer_one") return OverlapPolicy::kBufferOne;
  Fail(path, path + " " + Quote(text) + " is not one of \"skip\", \"buffer_one\"");
}

RetryPolicy Retry(const Json& j, const std::string& path) {
  ExpectObject(j, path, {"max", "backoff"});
  RetryPolicy retry;
  const Json* max = Find(j, "max");
  if (max == nullptr) {
    Fail(Member(path, "max"), Member(path, "max") + " is required: the retries of a failed run");
  }
  retry.max = static_cast<int>(Count(*max, Member(path, "max"), 0, 100));
  if (const Json* v = Find(j, "backoff")) {
    retry.backoff = Duration(*v, Member(path, "backoff"));
    if (retry.backoff < std::chrono::seconds(1)) {
      Fail(Member(path, "backoff"), Member(path, "backoff") + " must be at least 1s");
    }
  }
  return retry;
}

void ParseListen(const Json& j, Config& config) {
  const std::string path = "listen";
  std::string text = String(j, path);
  std::size_t colon = text.rfind(':');
  if (colon == std::string::npos) {
    Fail(path, "listen " + Quote(text) + " must be \"host:port\", e.g. \"127.0.0.1:3003\"");
  }
  std::string host = text.substr(0, colon);
  std::string port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host == "localhost") host = "127.0.0.1";
  if (host.empty()) host = "0.0.0.0";
  boost::system::error_code ec;
  boost::asio::ip::make_address(host, ec);
  if (ec) Fail(path, "listen host " + Quote(host) + " is not an IP address");
  unsigned value = 0;
  auto [end, err] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || err != std::errc() || end != port.data() + port.size() || value > 65535) {
    Fail(path, "listen port " + Quote(port) + " must be an integer from 0 to 65535");
  }
  config.listen_host = host;
  config.listen_port = static_cast<std::uint16_t>(value);
}

void ParseNode(const Json& j, Config& config) {
  const std::string path = "node";
  std::string node = String(j, path);
  if (node.empty() || node.size() > 255) {
    Fail(path, "node must be 1 to 255 bytes, not " + std::to_string(node.size()) +
                   ": this daemon's name among the engines of a cluster");
  }
  for (unsigned char ch : node) {
    if (ch < 0x20 || ch == 0x7f) {
      Fail(path, "node " + Quote(node) + " must not contain a control character");
    }
  }
  config.node = std::move(node);
}

void ParseCluster(const Json& j, Config& config) {
  const std::string path = "cluster";
  ExpectObject(j, path, {"lease", "partitions"});
  ClusterConfig cluster;
  if (const Json* v = Find(j, "lease")) {
    cluster.lease = Duration(*v, Member(path, "lease"));
    if (cluster.lease < std::chrono::milliseconds(300)) {
      Fail(Member(path, "lease"), Member(path, "lease") + " must be at least 300ms");
    }
  }
  if (const Json* v = Find(j, "partitions")) {
    cluster.partitions = static_cast<int>(Count(*v, Member(path, "partitions"), 1, 4096));
  }
  config.cluster = cluster;
}

void ParseBounds(const Json& j, Config& config) {
  const std::string path = "frequency_bounds";
  ExpectObject(j, path, {"min", "max"});
  if (const Json* v = Find(j, "min"))
    config.frequency_bounds.min = Duration(*v, Member(path, "min"));
  if (const Json* v = Find(j, "max"))
    config.frequency_bounds.max = Duration(*v, Member(path, "max"));
  if (config.frequency_bounds.min > config.frequency_bounds.max) {
    Fail(Member(path, "min"), "frequency_bounds.min must not exceed frequency_bounds.max");
  }
}

void ParseApiKeys(const Json& j, Config& config) {
  const std::string path = "api_keys";
  if (!j.is_array()) Fail(path, "api_keys must be an array, not " + std::string(j.type_name()));
  std::set<std::string> seen;
  for (std::size_t i = 0; i < j.size(); ++i) {
    std::string item = Indexed(path, i);
    ExpectObject(j[i], item, {"name", "key", "scopes"});
    ApiKeyConfig key;
    key.name = "key" + std::to_string(i);
    if (const Json* v = Find(j[i], "name")) key.name = String(*v, Member(item, "name"));
    const Json* k = Find(j[i], "key");
    if (k == nullptr) Fail(Member(item, "key"), Member(item, "key") + " is required");
    key.key = String(*k, Member(item, "key"));
    if (key.key.empty()) Fail(Member(item, "key"), Member(item, "key") + " must not be empty");
    if (!seen.insert(key.key).second) {
      Fail(Member(item, "key"), Member(item, "key") + " repeats an earlier key");
    }
    const Json* scopes = Find(j[i], "scopes");
    std::string spath = Member(item, "scopes");
    if (scopes == nullptr) Fail(spath, spath + " is required (e.g. [\"*\"])");
    if (!scopes->is_array()) Fail(spath, spath + " must be an array, not " + scopes->type_name());
    for (std::size_t s = 0; s < scopes->size(); ++s) {
      std::string scope = String((*scopes)[s], Indexed(spath, s));
      if (scope != kScopeAll && scope != kScopeSyncsExecute && scope != kScopeSyncsRead &&
          scope != kScopeSyncsUpdate && scope != kScopeConnectionsWrite) {
        Fail(Indexed(spath, s), "unknown scope " + Quote(scope) + "; accepted: \"*\", \"" +
                                    std::string(kScopeSyncsExecute) + "\", \"" +
                                    std::string(kScopeSyncsRead) + "\", \"" +
                                    std::string(kScopeSyncsUpdate) + "\", \"" +
                                    std::string(kScopeConnectionsWrite) + "\"");
      }
      key.scopes.push_back(std::move(scope));
    }
    config.api_keys.push_back(std::move(key));
  }
}

SyncConfig ParseSync(const std::string& name, const Json& j, const std::string& path,
                     const Config& config) {
  ExpectObject(j, path,
               {"runs", "auto_start", "command", "timeout", "heartbeat_timeout", "overlap", "retry",
                "spread"});
  SyncConfig sync;
  sync.name = name;
  const Json* runs = Find(j, "runs");
  if (runs == nullptr) {
    Fail(Member(path, "runs"), Member(path, "runs") + " is required (e.g. \"every 30min\")");
  }
  sync.runs = String(*runs, Member(path, "runs"));
  if (Result<Millis> f = ParseFrequency(sync.runs, config.frequency_bounds); !f.ok()) {
    Fail(Member(path, "runs"), Member(path, "runs") + ": " + f.status().message());
  }
  if (const Json* v = Find(j, "auto_start")) sync.auto_start = Bool(*v, Member(path, "auto_start"));
  const Json* command = Find(j, "command");
  std::string cpath = Member(path, "command");
  if (command == nullptr) {
    Fail(cpath, cpath +
                    " is required: the argv run for each run of the sync, e.g. "
                    "[\"./sync.sh\", \"--fast\"]");
  }
  if (!command->is_array() || command->empty()) {
    Fail(cpath, cpath + " must be a non-empty array of strings (argv, run without a shell)");
  }
  for (std::size_t i = 0; i < command->size(); ++i) {
    std::string arg = String((*command)[i], Indexed(cpath, i));
    if (arg.find('\0') != std::string::npos || (i == 0 && arg.empty())) {
      Fail(Indexed(cpath, i), Indexed(cpath, i) + " must be a non-empty string without NUL");
    }
    sync.command.push_back(std::move(arg));
  }
  if (const Json* v = Find(j, "timeout")) sync.timeout = Duration(*v, Member(path, "timeout"));
  if (const Json* v = Find(j, "heartbeat_timeout")) {
    sync.heartbeat_timeout = Duration(*v, Member(path, "heartbeat_timeout"));
    // Output is passed on as heartbeats at most once a second; leave room for that.
    if (*sync.heartbeat_timeout < std::chrono::seconds(5)) {
      Fail(Member(path, "heartbeat_timeout"),
           Member(path, "heartbeat_timeout") + " must be at least 5s");
    }
  }
  if (const Json* v = Find(j, "overlap")) sync.overlap = Overlap(*v, Member(path, "overlap"));
  if (const Json* v = Find(j, "retry")) sync.retry = Retry(*v, Member(path, "retry"));
  if (const Json* v = Find(j, "spread")) sync.spread = Bool(*v, Member(path, "spread"));
  return sync;
}

void ParseIntegrations(const Json& j, Config& config) {
  const std::string path = "integrations";
  if (!j.is_object())
    Fail(path, "integrations must be an object, not " + std::string(j.type_name()));
  for (const auto& [key, value] : j.items()) {
    std::string ipath = Keyed(path, key);
    if (Status s = core::ValidateIntegration(key, "integration key"); !s.ok())
      Fail(ipath, s.message());
    ExpectObject(value, ipath, {"syncs", "connections", "max_concurrency"});
    IntegrationConfig integration;
    integration.key = key;
    if (const Json* v = Find(value, "max_concurrency")) {
      integration.max_concurrency = Count(*v, Member(ipath, "max_concurrency"), 0, 1 << 20);
    }
    if (const Json* syncs = Find(value, "syncs")) {
      std::string spath = Member(ipath, "syncs");
      if (!syncs->is_object()) Fail(spath, spath + " must be an object, not " + syncs->type_name());
      for (const auto& [name, sync] : syncs->items()) {
        std::string path_of_sync = Keyed(spath, name);
        if (Status s = core::ValidateName(name, "sync name"); !s.ok())
          Fail(path_of_sync, s.message());
        integration.syncs.push_back(ParseSync(name, sync, path_of_sync, config));
      }
    }
    if (const Json* connections = Find(value, "connections")) {
      std::string cpath = Member(ipath, "connections");
      if (!connections->is_array()) {
        Fail(cpath, cpath + " must be an array, not " + connections->type_name());
      }
      std::set<std::string> seen;
      for (std::size_t i = 0; i < connections->size(); ++i) {
        std::string id = String((*connections)[i], Indexed(cpath, i));
        if (Status s = core::ValidateConnection(id, "connection"); !s.ok())
          Fail(Indexed(cpath, i), s.message());
        if (!seen.insert(id).second)
          Fail(Indexed(cpath, i), "connection " + Quote(id) + " is listed twice");
        integration.connections.push_back(std::move(id));
      }
    }
    config.integrations.push_back(std::move(integration));
  }
}

void ParseLimits(const Json& j, Config& config) {
  const std::string path = "limits";
  ExpectObject(j, path,
               {"max_body_bytes", "max_header_bytes", "max_connections",
                "max_connections_per_client", "max_json_depth", "read_timeout", "idle_timeout"});
  HttpLimits& l = config.limits;
  if (const Json* v = Find(j, "max_body_bytes")) {
    l.max_body_bytes = Count(*v, Member(path, "max_body_bytes"), 1024, std::size_t{1} << 30);
  }
  if (const Json* v = Find(j, "max_header_bytes")) {
    l.max_header_bytes = Count(*v, Member(path, "max_header_bytes"), 1024, 1 << 20);
  }
  if (const Json* v = Find(j, "max_connections")) {
    l.max_connections = Count(*v, Member(path, "max_connections"), 1, 1 << 20);
  }
  if (const Json* v = Find(j, "max_connections_per_client")) {
    l.max_connections_per_client =
        Count(*v, Member(path, "max_connections_per_client"), 0, 1 << 20);
  }
  if (const Json* v = Find(j, "max_json_depth")) {
    l.max_json_depth = static_cast<int>(Count(*v, Member(path, "max_json_depth"), 2, 1000));
  }
  if (const Json* v = Find(j, "read_timeout"))
    l.read_timeout = Duration(*v, Member(path, "read_timeout"));
  if (const Json* v = Find(j, "idle_timeout"))
    l.idle_timeout = Duration(*v, Member(path, "idle_timeout"));
}

Config Parse(const Json& root) {
  ExpectObject(
      root, "",
      {"listen", "database", "frequency_bounds", "api_keys", "integrations", "worker_threads",
       "http_threads", "default_run_timeout", "shutdown_grace", "kill_grace", "limits", "log_level",
       "max_concurrent_runs", "catch_up_per_second", "database_cache_mb", "node", "cluster"});
  Config config;
  if (const Json* v = Find(root, "listen")) ParseListen(*v, config);
  const Json* db = Find(root, "database");
  if (db == nullptr) {
    Fail("database",
         "database is required: the SQLite file holding the schedules (or "
         "\":memory:\" for state that dies with the process), or a PostgreSQL URI "
         "(\"postgresql://user@host:5432/dbname\")");
  }
  config.database = String(*db, "database");
  if (config.database.empty()) Fail("database", "database must not be empty");
  // Bounds first: the syncs' frequencies are checked against them.
  if (const Json* v = Find(root, "frequency_bounds")) ParseBounds(*v, config);
  if (const Json* v = Find(root, "api_keys")) ParseApiKeys(*v, config);
  if (const Json* v = Find(root, "worker_threads")) {
    config.worker_threads = Count(*v, "worker_threads", 1, 1024);
  }
  if (const Json* v = Find(root, "database_cache_mb")) {
    config.database_cache_mb = Count(*v, "database_cache_mb", 1, 1 << 20);
  }
  if (const Json* v = Find(root, "max_concurrent_runs")) {
    config.max_concurrent_runs = Count(*v, "max_concurrent_runs", 0, 1 << 20);
  }
  if (const Json* v = Find(root, "catch_up_per_second")) {
    config.catch_up_per_second = NonNegative(*v, "catch_up_per_second", 1e6);
  }
  if (const Json* v = Find(root, "http_threads")) {
    config.http_threads = Count(*v, "http_threads", 1, 64);
  }
  if (const Json* v = Find(root, "default_run_timeout")) {
    config.default_run_timeout = Duration(*v, "default_run_timeout");
  }
  if (const Json* v = Find(root, "shutdown_grace"))
    config.shutdown_grace = Duration(*v, "shutdown_grace");
  if (const Json* v = Find(root, "kill_grace")) config.kill_grace = Duration(*v, "kill_grace");
  if (const Json* v = Find(root, "limits")) ParseLimits(*v, config);
  if (const Json* v = Find(root, "log_level")) {
    std::string text = String(*v, "log_level");
    auto level = ParseLogLevel(text);
    if (!level) {
      Fail("log_level", "log_level " + Quote(text) + " is not one of debug, info, warn, error");
    }
    config.log_level = *level;
  }
  if (const Json* v = Find(root, "integrations")) ParseIntegrations(*v, config);
  if (const Json* v = Find(root, "node")) ParseNode(*v, config);
  if (const Json* v = Find(root, "cluster")) {
    ParseCluster(*v, config);
    if (!config.database.starts_with("postgresql://") &&
        !config.database.starts_with("postgres://")) {
      Fail("cluster",
           "cluster needs a PostgreSQL database, which the daemons of a cluster share "
           "(\"database\": \"postgresql://user@host/db\"); database " +
               Quote(config.database) + " is not one");
    }
  }
  if (config.node.empty() && config.listen_port != 0) {
    config.node = DefaultNodeName(config.listen_host, config.listen_port);
  }
  if (config.node.empty() && config.cluster) {
    Fail("node",
         "node is required in cluster mode when listen takes any free port (port 0): the default "
         "name, host:port, is not known before the engine joins the cluster");
  }
  return config;
}

}  // namespace

std::string DefaultNodeName(const std::string& listen_host, std::uint16_t port) {
  boost::system::error_code ec;
  boost::asio::ip::address address = boost::asio::ip::make_address(listen_host, ec);
  std::string host;
  if (!ec && !address.is_loopback() && !address.is_unspecified()) {
    host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  } else {
    char name[256] = {0};
    if (gethostname(name, sizeof name - 1) == 0 && name[0] != '\0') {
      host = name;
    } else {
      host = listen_host;
    }
  }
  std::string node = host + ":" + std::to_string(port);
  if (node.size() > 255) node = node.substr(node.size() - 255);  // a host name is at most 253
  return node;
}

ConfigResult ParseConfig(std::string_view text) {
  // The codec's parser, with comments: a key given twice is an error, not a silent override.
  codec::Decoded<Json> root = codec::ParseJson(text, kMaxConfigDepth, /*allow_comments=*/true);
  if (!root.ok()) return ConfigError{"", "not valid JSON: " + root.error().message};
  try {
    return Parse(root.value());
  } catch (const Failure& f) {
    return f.error;
  }
}

ConfigResult LoadConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ConfigError{"", "cannot read " + path + ": " + std::strerror(errno)};
  std::stringstream text;
  text << in.rdbuf();
  return ParseConfig(text.str());
}

}  // namespace syncsched::daemon
