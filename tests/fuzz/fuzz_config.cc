// Fuzz target: the daemon's configuration loader (src/daemon/config.h, ParseConfig).
// Invariants: nothing throws or crashes; an error names a message; a configuration that is
// accepted, written back as JSON (every field, durations in canonical form), is accepted again
// and equal; and what it accepts is consistent: every sync's frequency lies within the
// configured bounds, keys and connections are unique.
#include <set>
#include <string>
#include <string_view>
#include <variant>

#include "codec/codec.h"
#include "daemon/config.h"
#include "fuzz.h"
#include "syncsched/frequency.h"

namespace syncsched::fuzz {
namespace {

using codec::Json;
using daemon::Config;
using daemon::ConfigError;

std::string Duration(Millis d) { return FormatFrequency(d); }

Json Encode(const Config& c) {
  Json j = Json::object();
  std::string host = c.listen_host;
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  j["listen"] = host + ":" + std::to_string(c.listen_port);
  j["database"] = c.database;
  j["frequency_bounds"] = {{"min", Duration(c.frequency_bounds.min)},
                           {"max", Duration(c.frequency_bounds.max)}};
  Json keys = Json::array();
  for (const daemon::ApiKeyConfig& k : c.api_keys) {
    keys.push_back({{"name", k.name}, {"key", k.key}, {"scopes", k.scopes}});
  }
  j["api_keys"] = std::move(keys);
  j["worker_threads"] = c.worker_threads;
  j["max_concurrent_runs"] = c.max_concurrent_runs;
  j["catch_up_per_second"] = c.catch_up_per_second;
  j["http_threads"] = c.http_threads;
  j["default_run_timeout"] = Duration(c.default_run_timeout);
  j["shutdown_grace"] = Duration(c.shutdown_grace);
  j["kill_grace"] = Duration(c.kill_grace);
  j["limits"] = {{"max_body_bytes", c.limits.max_body_bytes},
                 {"max_header_bytes", c.limits.max_header_bytes},
                 {"max_connections", c.limits.max_connections},
                 {"max_json_depth", c.limits.max_json_depth},
                 {"read_timeout", Duration(c.limits.read_timeout)},
                 {"idle_timeout", Duration(c.limits.idle_timeout)}};
  j["log_level"] = std::string(daemon::ToString(c.log_level));
  Json integrations = Json::object();
  for (const daemon::IntegrationConfig& i : c.integrations) {
    Json syncs = Json::object();
    for (const daemon::SyncConfig& s : i.syncs) {
      Json sync = {{"runs", s.runs},
                   {"auto_start", s.auto_start},
                   {"command", s.command},
                   {"overlap", s.overlap == OverlapPolicy::kSkip ? "skip" : "buffer_one"},
                   {"retry", {{"max", s.retry.max}, {"backoff", Duration(s.retry.backoff)}}},
                   {"spread", s.spread}};
      if (s.timeout) sync["timeout"] = Duration(*s.timeout);
      if (s.heartbeat_timeout) sync["heartbeat_timeout"] = Duration(*s.heartbeat_timeout);
      syncs[s.name] = std::move(sync);
    }
    integrations[i.key] = {{"syncs", std::move(syncs)},
                           {"connections", i.connections},
                           {"max_concurrency", i.max_concurrency}};
  }
  j["integrations"] = std::move(integrations);
  return j;
}

bool Same(const Config& a, const Config& b) {
  if (a.listen_host != b.listen_host || a.listen_port != b.listen_port ||
      a.database != b.database || a.frequency_bounds.min != b.frequency_bounds.min ||
      a.frequency_bounds.max != b.frequency_bounds.max || a.worker_threads != b.worker_threads ||
      a.max_concurrent_runs != b.max_concurrent_runs ||
      a.catch_up_per_second != b.catch_up_per_second || a.http_threads != b.http_threads ||
      a.default_run_timeout != b.default_run_timeout || a.shutdown_grace != b.shutdown_grace ||
      a.kill_grace != b.kill_grace || a.log_level != b.log_level ||
      a.limits.max_body_bytes != b.limits.max_body_bytes ||
      a.limits.max_header_bytes != b.limits.max_header_bytes ||
      a.limits.max_connections != b.limits.max_connections ||
      a.limits.max_json_depth != b.limits.max_json_depth ||
      a.limits.read_timeout != b.limits.read_timeout ||
      a.limits.idle_timeout != b.limits.idle_timeout || a.api_keys.size() != b.api_keys.size() ||
      a.integrations.size() != b.integrations.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.api_keys.size(); ++i) {
    const auto &x = a.api_keys[i], &y = b.api_keys[i];
    if (x.name != y.name || x.key != y.key || x.scopes != y.scopes) return false;
  }
  for (std::size_t i = 0; i < a.integrations.size(); ++i) {
    const auto &x = a.integrations[i], &y = b.integrations[i];
    if (x.key != y.key || x.connections != y.connections ||
        x.max_concurrency != y.max_concurrency || x.syncs.size() != y.syncs.size()) {
      return false;
    }
    for (std::size_t k = 0; k < x.syncs.size(); ++k) {
      const auto &s = x.syncs[k], &t = y.syncs[k];
      if (s.name != t.name || s.runs != t.runs || s.auto_start != t.auto_start ||
          s.command != t.command || s.timeout != t.timeout ||
          s.heartbeat_timeout != t.heartbeat_timeout || s.overlap != t.overlap ||
          s.retry.max != t.retry.max || s.retry.backoff != t.retry.backoff ||
          s.spread != t.spread) {
        return false;
      }
    }
  }
  return true;
}

void CheckConsistent(const Config& c, const std::string& input) {
  FUZZ_CHECK(!c.database.empty(), input);
  FUZZ_CHECK(c.frequency_bounds.min <= c.frequency_bounds.max, input);
  std::set<std::string> keys;
  for (const daemon::ApiKeyConfig& k : c.api_keys) {
    FUZZ_CHECK(!k.key.empty() && keys.insert(k.key).second, input);
  }
  std::set<std::string> integrations;
  for (const daemon::IntegrationConfig& i : c.integrations) {
    FUZZ_CHECK(integrations.insert(i.key).second, input);
    FUZZ_CHECK(codec::ValidateIntegrationKey(i.key).ok(), input);
    std::set<std::string> syncs;
    for (const daemon::SyncConfig& s : i.syncs) {
      FUZZ_CHECK(syncs.insert(s.name).second, input);
      FUZZ_CHECK(ParseFrequency(s.runs, c.frequency_bounds).ok(), input);
      FUZZ_CHECK(!s.command.empty() && !s.command[0].empty(), input);
    }
    std::set<std::string> connections(i.connections.begin(), i.connections.end());
    FUZZ_CHECK(connections.size() == i.connections.size(), input);
  }
}

}  // namespace

int FuzzConfig(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  daemon::ConfigResult result = daemon::ParseConfig(text);
  std::string input = codec::Dump(Json(std::string(text.substr(0, 2000))));
  if (const auto* error = std::get_if<ConfigError>(&result)) {
    FUZZ_CHECK(!error->message.empty(), input);
    return 0;
  }
  const Config& config = std::get<Config>(result);
  CheckConsistent(config, input);
  std::string encoded = codec::Dump(Encode(config));
  daemon::ConfigResult again = daemon::ParseConfig(encoded);
  if (const auto* error = std::get_if<ConfigError>(&again)) {
    Fail(__FILE__, __LINE__, "the written-back configuration is accepted",
         input + " -> " + encoded + ": " + error->field + ": " + error->message);
  }
  FUZZ_CHECK(Same(std::get<Config>(again), config), input + " -> " + encoded);
  return 0;
}

}  // namespace syncsched::fuzz
