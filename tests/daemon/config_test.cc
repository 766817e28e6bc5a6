// The daemon's configuration: defaults, every field, and errors that name the field.
#include "daemon/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <variant>

namespace syncsched::daemon {
namespace {

const char* kMinimal = R"({"database": "x.db"})";

Config Ok(const std::string& text) {
  ConfigResult r = ParseConfig(text);
  if (auto* e = std::get_if<ConfigError>(&r)) {
    ADD_FAILURE() << e->field << ": " << e->message;
    return Config{};
  }
  return std::get<Config>(r);
}

ConfigError Err(const std::string& text) {
  ConfigResult r = ParseConfig(text);
  if (auto* e = std::get_if<ConfigError>(&r)) return *e;
  ADD_FAILURE() << "expected an error for " << text;
  return {};
}

// A configuration whose integration "github" has one sync with these fields.
std::string WithSync(const std::string& sync_fields) {
  return R"({"database": "x.db", "integrations": {"github": {"syncs": {"issues": {)" + sync_fields +
         "}}}}}";
}

TEST(Config, Defaults) {
  Config c = Ok(kMinimal);
  EXPECT_EQ(c.listen_host, "127.0.0.1");
  EXPECT_EQ(c.listen_port, 3003);
  EXPECT_EQ(c.database, "x.db");
  EXPECT_EQ(c.frequency_bounds.min, std::chrono::seconds(30));
  EXPECT_EQ(c.frequency_bounds.max, std::chrono::hours(24 * 31));
  EXPECT_TRUE(c.api_keys.empty());
  EXPECT_TRUE(c.integrations.empty());
  EXPECT_EQ(c.worker_threads, 4u);
  EXPECT_EQ(c.limits.max_body_bytes, 1u << 20);
  EXPECT_EQ(c.limits.max_connections, 1024u);
  EXPECT_EQ(c.limits.max_connections_per_client, 256u);
  EXPECT_EQ(c.limits.read_timeout, std::chrono::seconds(30));
  EXPECT_EQ(c.limits.idle_timeout, std::chrono::seconds(60));
  EXPECT_EQ(c.shutdown_grace, std::chrono::seconds(30));
  EXPECT_EQ(c.log_level, LogLevel::kInfo);
}

TEST(Config, TheSpecExample) {
  Config c = Ok(R"({
    "listen": "127.0.0.1:3003",
    "database": "syncsched.db",
    "frequency_bounds": {"min": "30s", "max": "31d"},
    "api_keys": [{"key": "change-me", "scopes": ["*"]}],
    "integrations": {
      "github": {
        "syncs": {
          "issues": {"runs": "every 30min", "auto_start": true,
                     "command": ["./examples/sync-issues.sh"], "timeout": "1h"}
        },
        "connections": ["acme"]
      }
    }
  })");
  ASSERT_EQ(c.integrations.size(), 1u);
  const IntegrationConfig& g = c.integrations[0];
  EXPECT_EQ(g.key, "github");
  ASSERT_EQ(g.syncs.size(), 1u);
  EXPECT_EQ(g.syncs[0].name, "issues");
  EXPECT_EQ(g.syncs[0].runs, "every 30min");
  EXPECT_TRUE(g.syncs[0].auto_start);
  EXPECT_EQ(g.syncs[0].command, std::vector<std::string>{"./examples/sync-issues.sh"});
  EXPECT_EQ(g.syncs[0].timeout, std::chrono::hours(1));
  EXPECT_EQ(g.connections, std::vector<std::string>{"acme"});
  ASSERT_EQ(c.api_keys.size(), 1u);
  EXPECT_EQ(c.api_keys[0].key, "change-me");
  EXPECT_EQ(c.api_keys[0].scopes, std::vector<std::string>{"*"});
}

TEST(Config, EveryField) {
  Config c = Ok(R"({
    // comments are allowed
    "listen": "[::1]:0",
    "database": ":memory:",
    "frequency_bounds": {"min": "1s", "max": "1d"},
    "api_keys": [{"name": "ci", "key": "k", "scopes": ["environment:syncs:read"]}],
    "worker_threads": 8, "http_threads": 3,
    "default_run_timeout": "2h", "shutdown_grace": "5s", "kill_grace": "1s",
    "limits": {"max_body_bytes": 4096, "max_header_bytes": 2048, "max_connections": 10,
               "max_connections_per_client": 3, "max_json_depth": 8, "read_timeout": "5s", "idle_timeout": "10s"},
    "log_level": "debug",
    "integrations": {"a b": {"syncs": {"s": {"runs": "5s", "auto_start": false,
        "command": ["/bin/true", "--x"], "heartbeat_timeout": "1m"}}}}
  })");
  EXPECT_EQ(c.listen_host, "::1");
  EXPECT_EQ(c.listen_port, 0);
  EXPECT_EQ(c.frequency_bounds.min, std::chrono::seconds(1));
  EXPECT_EQ(c.api_keys[0].name, "ci");
  EXPECT_EQ(c.worker_threads, 8u);
  EXPECT_EQ(c.http_threads, 3u);
  EXPECT_EQ(c.default_run_timeout, std::chrono::hours(2));
  EXPECT_EQ(c.shutdown_grace, std::chrono::seconds(5));
  EXPECT_EQ(c.kill_grace, std::chrono::seconds(1));
  EXPECT_EQ(c.limits.max_body_bytes, 4096u);
  EXPECT_EQ(c.limits.max_header_bytes, 2048u);
  EXPECT_EQ(c.limits.max_connections, 10u);
  EXPECT_EQ(c.limits.max_connections_per_client, 3u);
  EXPECT_EQ(c.limits.max_json_depth, 8);
  EXPECT_EQ(c.limits.read_timeout, std::chrono::seconds(5));
  EXPECT_EQ(c.limits.idle_timeout, std::chrono::seconds(10));
  EXPECT_EQ(c.log_level, LogLevel::kDebug);
  EXPECT_FALSE(c.integrations[0].syncs[0].auto_start);
  EXPECT_EQ(c.integrations[0].syncs[0].heartbeat_timeout, std::chrono::minutes(1));
  EXPECT_FALSE(c.integrations[0].syncs[0].timeout.has_value());
}

TEST(Config, RunPolicies) {
  Config defaults = Ok(WithSync(R"("runs": "1h", "command": ["x"])"));
  EXPECT_EQ(defaults.max_concurrent_runs, 1024u);
  EXPECT_EQ(defaults.catch_up_per_second, 0.0);
  EXPECT_EQ(defaults.integrations[0].max_concurrency, 0u);
  const SyncConfig& d = defaults.integrations[0].syncs[0];
  EXPECT_EQ(d.overlap, OverlapPolicy::kSkip);
  EXPECT_EQ(d.retry.max, 0);
  EXPECT_EQ(d.retry.backoff, std::chrono::seconds(30));
  EXPECT_FALSE(d.spread);

  EXPECT_EQ(defaults.database_cache_mb, 64u);
  EXPECT_EQ(Ok(R"({"database": "x.db", "database_cache_mb": 8})").database_cache_mb, 8u);

  Config c = Ok(R"({"database": "x.db", "max_concurrent_runs": 16, "catch_up_per_second": 2.5,
    "integrations": {"github": {"max_concurrency": 4, "syncs": {"issues": {"runs": "1h",
      "command": ["x"], "overlap": "buffer_one", "retry": {"max": 3, "backoff": "1m"},
      "spread": true}}}}})");
  EXPECT_EQ(c.max_concurrent_runs, 16u);
  EXPECT_EQ(c.catch_up_per_second, 2.5);
  EXPECT_EQ(c.integrations[0].max_concurrency, 4u);
  const SyncConfig& s = c.integrations[0].syncs[0];
  EXPECT_EQ(s.overlap, OverlapPolicy::kBufferOne);
  EXPECT_EQ(s.retry.max, 3);
  EXPECT_EQ(s.retry.backoff, std::chrono::minutes(1));
  EXPECT_TRUE(s.spread);

  Config zero = Ok(R"({"database": "x.db", "max_concurrent_runs": 0, "catch_up_per_second": 0,
    "integrations": {"g": {"max_concurrency": 0, "syncs": {"s": {"runs": "1h", "command": ["x"],
      "overlap": "skip", "retry": {"max": 0}, "spread": false}}}}})");
  EXPECT_EQ(zero.integrations[0].syncs[0].overlap, OverlapPolicy::kSkip);
  EXPECT_EQ(zero.integrations[0].syncs[0].retry.max, 0);
  EXPECT_EQ(Ok(R"({"database": "x", "catch_up_per_second": 3})").catch_up_per_second, 3.0);
  EXPECT_EQ(Ok(WithSync(R"("runs": "1h", "command": ["x"], "retry": {"max": 100})"))
                .integrations[0]
                .syncs[0]
                .retry.max,
            100);
}

TEST(Config, ErrorsNameTheField) {
  struct Case {
    std::string text;
    std::string field;
  };
  const std::string sync = R"(integrations["github"].syncs["issues"])";
  std::vector<Case> cases = {
      {"not json", ""},
      {"[]", ""},
      {"{}", "database"},
      {R"({"database": 1})", "database"},
      {R"({"database": ""})", "database"},
      {R"({"database": "x", "port": 1})", "port"},
      {R"({"database": "x", "listen": "3003"})", "listen"},
      {R"({"database": "x", "listen": "example.com:3003"})", "listen"},
      {R"({"database": "x", "listen": "127.0.0.1:70000"})", "listen"},
      {R"({"database": "x", "frequency_bounds": {"min": "soon"}})", "frequency_bounds.min"},
      {R"({"database": "x", "frequency_bounds": {"min": "2h", "max": "1h"}})",
       "frequency_bounds.min"},
      {R"({"database": "x", "frequency_bounds": {"avg": "1h"}})", "frequency_bounds.avg"},
      {R"({"database": "x", "api_keys": {}})", "api_keys"},
      {R"({"database": "x", "api_keys": [{"scopes": ["*"]}]})", "api_keys[0].key"},
      {R"({"database": "x", "api_keys": [{"key": "", "scopes": ["*"]}]})", "api_keys[0].key"},
      {R"({"database": "x", "api_keys": [{"key": "k"}]})", "api_keys[0].scopes"},
      {R"({"database": "x", "api_keys": [{"key": "k", "scopes": ["admin"]}]})",
       "api_keys[0].scopes[0]"},
      {R"({"database": "x", "api_keys": [{"key": "k", "scopes": ["*"]}, {"key": "k", "scopes": ["*"]}]})",
       "api_keys[1].key"},
      {R"({"database": "x", "worker_threads": 0})", "worker_threads"},
      {R"({"database": "x", "worker_threads": "4"})", "worker_threads"},
      {R"({"database": "x", "database_cache_mb": 0})", "database_cache_mb"},
      {R"({"database": "x", "database_cache_mb": 2097152})", "database_cache_mb"},
      {R"({"database": "x", "database_cache_mb": "64MiB"})", "database_cache_mb"},
      {R"({"database": "x", "shutdown_grace": "later"})", "shutdown_grace"},
      {R"({"database": "x", "limits": {"max_body_bytes": 10}})", "limits.max_body_bytes"},
      {R"({"database": "x", "limits": {"max_bodies": 10}})", "limits.max_bodies"},
      {R"({"database": "x", "limits": {"max_connections_per_client": -1}})",
       "limits.max_connections_per_client"},
      {R"({"database": "x", "integrations": {"g": {"connections": ["a\u0085"]}}})",
       R"(integrations["g"].connections[0])"},
      {R"({"database": "x", "log_level": "loud"})", "log_level"},
      {R"({"database": "x", "integrations": []})", "integrations"},
      {R"({"database": "x", "integrations": {"a/b": {}}})", R"(integrations["a/b"])"},
      {R"({"database": "x", "integrations": {"g": {"sync": {}}}})", R"(integrations["g"].sync)"},
      {R"({"database": "x", "integrations": {"g": {"connections": "acme"}}})",
       R"(integrations["g"].connections)"},
      {R"({"database": "x", "integrations": {"g": {"connections": ["a", "a"]}}})",
       R"(integrations["g"].connections[1])"},
      {R"({"database": "x", "integrations": {"g": {"connections": [""]}}})",
       R"(integrations["g"].connections[0])"},
      {R"({"database": "x", "integrations": {"g": {"syncs": {"a.b": {}}}}})",
       R"(integrations["g"].syncs["a.b"])"},
      {WithSync(R"("command": ["x"])"), sync + ".runs"},
      {WithSync(R"("runs": "every fortnight", "command": ["x"])"), sync + ".runs"},
      {WithSync(R"("runs": "1s", "command": ["x"])"), sync + ".runs"},
      {WithSync(R"("runs": "1h")"), sync + ".command"},
      {WithSync(R"("runs": "1h", "command": [])"), sync + ".command"},
      {WithSync(R"("runs": "1h", "command": "./x.sh")"), sync + ".command"},
      {WithSync(R"("runs": "1h", "command": [1])"), sync + ".command[0]"},
      {WithSync(R"("runs": "1h", "command": [""])"), sync + ".command[0]"},
      {WithSync(R"("runs": "1h", "command": ["x"], "auto_start": "yes")"), sync + ".auto_start"},
      {WithSync(R"("runs": "1h", "command": ["x"], "timeout": 60)"), sync + ".timeout"},
      {WithSync(R"("runs": "1h", "command": ["x"], "retries": 3)"), sync + ".retries"},
      {WithSync(R"("runs": "1h", "command": ["x"], "heartbeat_timeout": "1s")"),
       sync + ".heartbeat_timeout"},
      // Run policies.
      {R"({"database": "x", "max_concurrent_runs": -1})", "max_concurrent_runs"},
      {R"({"database": "x", "max_concurrent_runs": 1.5})", "max_concurrent_runs"},
      {R"({"database": "x", "max_concurrent_runs": "4"})", "max_concurrent_runs"},
      {R"({"database": "x", "catch_up_per_second": -0.5})", "catch_up_per_second"},
      {R"({"database": "x", "catch_up_per_second": "fast"})", "catch_up_per_second"},
      {R"({"database": "x", "integrations": {"g": {"max_concurrency": -1}}})",
       R"(integrations["g"].max_concurrency)"},
      {R"({"database": "x", "integrations": {"g": {"max_concurrency": "2"}}})",
       R"(integrations["g"].max_concurrency)"},
      {WithSync(R"("runs": "1h", "command": ["x"], "overlap": "queue")"), sync + ".overlap"},
      {WithSync(R"("runs": "1h", "command": ["x"], "overlap": true)"), sync + ".overlap"},
      {WithSync(R"("runs": "1h", "command": ["x"], "retry": 3)"), sync + ".retry"},
      {WithSync(R"("runs": "1h", "command": ["x"], "retry": {"backoff": "1m"})"),
       sync + ".retry.max"},
      {WithSync(R"("runs": "1h", "command": ["x"], "retry": {"max": 101})"), sync + ".retry.max"},
      {WithSync(R"("runs": "1h", "command": ["x"], "retry": {"max": -1})"), sync + ".retry.max"},
      {WithSync(R"("runs": "1h", "command": ["x"], "retry": {"max": 2, "backoff": "later"})"),
       sync + ".retry.backoff"},
      {WithSync(R"("runs": "1h", "command": ["x"], "retry": {"max": 2, "backoff": 30})"),
       sync + ".retry.backoff"},
      {WithSync(R"("runs": "1h", "command": ["x"], "retry": {"max": 2, "backoff": "10ms"})"),
       sync + ".retry.backoff"},
      {WithSync(R"("runs": "1h", "command": ["x"], "retry": {"max": 2, "jitter": 0})"),
       sync + ".retry.jitter"},
      {WithSync(R"("runs": "1h", "command": ["x"], "spread": "yes")"), sync + ".spread"},
      // The node and cluster mode (issue 13).
      {R"({"database": "x", "node": ""})", "node"},
      {R"({"database": "x", "node": 7})", "node"},
      {R"({"database": "x", "node": ")" + std::string(256, 'n') + "\"}", "node"},
      {R"({"database": "x", "node": "a\nb"})", "node"},
      {R"({"database": "x", "node": "a\u0000b"})", "node"},
      {R"({"database": "x.db", "cluster": {}})", "cluster"},
      {R"({"database": ":memory:", "cluster": {"lease": "10s"}})", "cluster"},
      {R"({"database": "postgresql://h/db", "cluster": true})", "cluster"},
      {R"({"database": "postgresql://h/db", "cluster": {"leases": "10s"}})", "cluster.leases"},
      {R"({"database": "postgresql://h/db", "cluster": {"lease": "299ms"}})", "cluster.lease"},
      {R"({"database": "postgresql://h/db", "cluster": {"lease": "soon"}})", "cluster.lease"},
      {R"({"database": "postgresql://h/db", "cluster": {"lease": 10}})", "cluster.lease"},
      {R"({"database": "postgresql://h/db", "cluster": {"partitions": 0}})", "cluster.partitions"},
      {R"({"database": "postgresql://h/db", "cluster": {"partitions": 4097}})",
       "cluster.partitions"},
      {R"({"database": "postgresql://h/db", "cluster": {"partitions": 1.5}})",
       "cluster.partitions"},
      {R"({"database": "postgresql://h/db", "cluster": {"partitions": "64"}})",
       "cluster.partitions"},
      {R"({"database": "postgresql://h/db", "listen": "127.0.0.1:0", "cluster": {}})", "node"},
  };
  for (const Case& c : cases) {
    ConfigError e = Err(c.text);
    EXPECT_EQ(e.field, c.field) << c.text << "\n" << e.message;
    EXPECT_FALSE(e.message.empty());
    if (!c.field.empty() && c.field.find('[') == std::string::npos) {
      EXPECT_NE(e.message.find(c.field.substr(c.field.rfind('.') + 1)), std::string::npos)
          << "the message names the field: " << e.message;
    }
  }
}

// Issue 13: the daemon's name and cluster mode.
TEST(Config, NodeAndCluster) {
  char host[256] = {0};
  ASSERT_EQ(gethostname(host, sizeof host - 1), 0);
  // Not in cluster mode, the node still names the daemon (SYNCSCHED_NODE): host:port, with this
  // machine's name for a loopback or wildcard listener and the address for a specific one.
  Config single = Ok(kMinimal);
  EXPECT_FALSE(single.cluster.has_value());
  EXPECT_EQ(single.node, std::string(host) + ":3003");
  EXPECT_EQ(Ok(R"({"database": "x", "listen": ":4000"})").node, std::string(host) + ":4000");
  EXPECT_EQ(Ok(R"({"database": "x", "listen": "[::1]:4000"})").node, std::string(host) + ":4000");
  EXPECT_EQ(Ok(R"({"database": "x", "listen": "10.1.2.3:4000"})").node, "10.1.2.3:4000");
  EXPECT_EQ(Ok(R"({"database": "x", "listen": "[fd00::5]:4000"})").node, "[fd00::5]:4000");
  // Port 0 outside cluster mode: named after the bound port by the daemon.
  EXPECT_EQ(Ok(R"({"database": "x", "listen": "127.0.0.1:0"})").node, "");

  Config c = Ok(R"({"database": "postgresql://sched@db:5432/syncsched", "cluster": {}})");
  ASSERT_TRUE(c.cluster.has_value());
  EXPECT_EQ(c.cluster->lease, std::chrono::seconds(10));
  EXPECT_EQ(c.cluster->partitions, 64);
  EXPECT_EQ(c.node, std::string(host) + ":3003");

  c = Ok(R"({"database": "postgres://db/s", "node": "sched-a", "listen": "127.0.0.1:0",
             "cluster": {"lease": "300ms", "partitions": 4096}})");
  EXPECT_EQ(c.node, "sched-a");
  EXPECT_EQ(c.cluster->lease, std::chrono::milliseconds(300));
  EXPECT_EQ(c.cluster->partitions, 4096);
  c = Ok(R"({"database": "postgresql://db/s", "node": ")" + std::string(255, 'n') +
         R"(", "cluster": {"lease": "1.5s", "partitions": 1}})");
  EXPECT_EQ(c.node.size(), 255u);
  EXPECT_EQ(c.cluster->lease, std::chrono::milliseconds(1500));
  EXPECT_EQ(c.cluster->partitions, 1);
  // null is absent, as everywhere.
  EXPECT_FALSE(Ok(R"({"database": "postgresql://db/s", "cluster": null})").cluster.has_value());

  // The SQLite case says what is needed.
  ConfigError e = Err(R"({"database": "state.db", "cluster": {"lease": "10s"}})");
  EXPECT_EQ(e.field, "cluster");
  EXPECT_NE(e.message.find("postgresql://"), std::string::npos) << e.message;
  e = Err(R"({"database": "postgresql://db/s", "listen": "127.0.0.1:0", "cluster": {}})");
  EXPECT_NE(e.message.find("port 0"), std::string::npos) << e.message;
}

// The configuration is parsed by the HTTP codec's JSON parser: a key given twice is an error (not
// a silent override by the last one), and a member given as null is absent.
TEST(Config, AKeyGivenTwiceIsAnErrorAndNullIsAbsent) {
  ConfigError twice = Err(R"({"database": "a.db", "database": "b.db"})");
  EXPECT_NE(twice.message.find("database"), std::string::npos) << twice.message;
  ConfigError nested = Err(R"({"database": "x.db", "limits": {"read_timeout": "1s",
                               "read_timeout": "2s"}})");
  EXPECT_NE(nested.message.find("read_timeout"), std::string::npos) << nested.message;
  Config c = Ok(R"({"database": "x.db", "worker_threads": null, "limits": null})");
  EXPECT_EQ(c.worker_threads, 4u);
  EXPECT_EQ(c.limits.read_timeout, std::chrono::seconds(30));
  // Required stays required: null is not a value.
  EXPECT_EQ(Err(R"({"database": null})").field, "database");
}

TEST(Config, ASyncWithoutACommandSaysWhatIsExpected) {
  ConfigError e = Err(WithSync(R"("runs": "1h")"));
  EXPECT_NE(e.message.find("required"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("argv"), std::string::npos) << e.message;
}

TEST(Config, TheExampleFileIsValid) {
  ConfigResult r =
      LoadConfig(std::string(SYNCSCHED_SOURCE_DIR) + "/examples/daemon/syncschedd.json");
  ASSERT_TRUE(std::holds_alternative<Config>(r)) << std::get<ConfigError>(r).message;
  const Config& c = std::get<Config>(r);
  EXPECT_EQ(c.listen_port, 3003);
  EXPECT_EQ(c.database, "syncsched.db");
  EXPECT_EQ(c.api_keys.at(0).key, "change-me");
}

TEST(Config, UnreadableFile) {
  ConfigResult r = LoadConfig("/nonexistent/syncschedd.json");
  ASSERT_TRUE(std::holds_alternative<ConfigError>(r));
  EXPECT_NE(std::get<ConfigError>(r).message.find("/nonexistent/syncschedd.json"),
            std::string::npos);
}

}  // namespace
}  // namespace syncsched::daemon
