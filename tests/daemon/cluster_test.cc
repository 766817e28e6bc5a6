// syncschedd in cluster mode (issue 13, the daemon's side): three daemons as processes of their
// own on one PostgreSQL database (a fresh database on the tests' server), observed only through
// their HTTP API and their runs' output: /health shares the partitions evenly and counts the live
// engines; a daemon killed with SIGKILL has its partitions taken over within lease + 1 s, and
// each schedule runs again on a survivor within that bound; a daemon stopped with SIGTERM hands
// its partitions over within 1 s; every run's command sees SYNCSCHED_NODE, the name of the daemon
// that ran it. Plus a single daemon's runs, which see its name too.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "support/pg_server.h"
#include "support/test_database.h"
#include "test_util.h"

namespace syncsched::daemon {
namespace {

using namespace std::chrono_literals;
using syncsched::testing::Client;
using syncsched::testing::Json;
using syncsched::testing::ListeningPort;
using syncsched::testing::Process;
using syncsched::testing::ReadFile;
using syncsched::testing::ReadLines;
using syncsched::testing::Reply;
using syncsched::testing::StoreKind;
using syncsched::testing::TempDir;
using syncsched::testing::TestDatabase;
using syncsched::testing::WaitFor;
using syncsched::testing::WriteFile;

constexpr int kPartitions = 16;
constexpr int kConnections = 48;
constexpr auto kLease = 1500ms;

// GET /health on 127.0.0.1:port over a connection of its own; null when there is no answer.
Json Health(std::uint16_t port) {
  try {
    Client client(port);
    Reply r = client.Get("/health", "");
    if (r.status != 200) return Json();
    return r.json();
  } catch (const std::exception&) {
    return Json();
  }
}

std::int64_t Int(const Json& j, const char* field) {
  return j.is_object() && j.contains(field) && j[field].is_number_integer()
             ? j[field].get<std::int64_t>()
             : -1;
}

std::int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A line of runs.txt: "<SYNCSCHED_NODE> <connection>".
struct RunLine {
  std::string node, connection;
};

// "2026-01-01T00:00:00.123Z" (the log's `ts`) in milliseconds since the epoch; -1 if malformed.
std::int64_t ParseTs(const std::string& ts) {
  std::tm tm{};
  int ms = 0;
  if (std::sscanf(ts.c_str(), "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7) {
    return -1;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<std::int64_t>(timegm(&tm)) * 1000 + ms;
}

class ClusterDaemonTest : public ::testing::Test {
 protected:
  // A daemon named `node` whose sync `issues` runs every second on each of kConnections
  // connections and appends a RunLine to runs.txt; its log says when each run started.
  std::string WriteConfig(const std::string& node) {
    Json connections = Json::array();
    for (int i = 0; i < kConnections; ++i) connections.push_back("c" + std::to_string(i));
    Json config = {{"listen", "127.0.0.1:0"},
                   {"database", db_.path()},
                   {"node", node},
                   {"cluster", {{"lease", "1500ms"}, {"partitions", kPartitions}}},
                   {"frequency_bounds", {{"min", "1s"}}},
                   {"api_keys", {{{"key", "k"}, {"scopes", {"*"}}}}},
                   {"shutdown_grace", "10s"},
                   {"integrations",
                    {{"github",
                      {{"syncs",
                        {{"issues",
                          {{"runs", "1s"},
                           {"command",
                            {"/bin/sh", "-c",
                             "echo \"$SYNCSCHED_NODE $SYNCSCHED_CONNECTION\" >> '" +
                                 (dir_ / "runs.txt") + "'"}}}}}},
                       {"connections", connections}}}}}};
    std::string path = dir_ / (node + ".json");
    WriteFile(path, config.dump(2));
    return path;
  }

  struct Daemon {
    std::string node;
    std::unique_ptr<Process> process;
    std::uint16_t port = 0;
  };

  // Starts a daemon named `node` and waits until it serves.
  Daemon Start(const std::string& node) {
    Daemon d;
    d.node = node;
    std::string log = dir_ / (node + ".log");
    d.process = std::make_unique<Process>(
        std::vector<std::string>{SYNCSCHEDD_PATH, "--config", WriteConfig(node)}, log);
    auto port = ListeningPort(log, 30s);
    EXPECT_TRUE(port.has_value()) << ReadFile(log);
    if (port) d.port = *port;
    return d;
  }

  std::vector<RunLine> Runs() {
    std::vector<RunLine> out;
    for (const std::string& line : ReadLines(dir_ / "runs.txt")) {
      std::size_t a = line.find(' ');
      if (a == std::string::npos) {
        ADD_FAILURE() << "malformed run line: " << line;
        continue;
      }
      out.push_back(RunLine{line.substr(0, a), line.substr(a + 1)});
    }
    return out;
  }

  // connection -> the first time (ms since the epoch) at or after `since_ms` that `node`'s log
  // says a run of it started (its command was executed), merged into `first`.
  void FirstRunsSince(const std::string& node, std::int64_t since_ms,
                      std::map<std::string, std::int64_t>& first) {
    for (const std::string& line : ReadLines(dir_ / (node + ".log"))) {
      Json j = Json::parse(line, nullptr, false);
      if (!j.is_object() || j.value("msg", "") != "run started") continue;
      std::int64_t at = ParseTs(j.value("ts", ""));
      if (at < since_ms) continue;
      // "github/<connection>/issues::base"
      std::string schedule = j.value("schedule", "");
      std::size_t a = schedule.find('/'), b = schedule.rfind('/');
      if (a == std::string::npos || b == a) continue;
      std::string connection = schedule.substr(a + 1, b - a - 1);
      auto [it, fresh] = first.emplace(connection, at);
      if (!fresh) it->second = std::min(it->second, at);
    }
  }

  std::string Logs() {
    std::string out;
    for (const char* node : {"node-a", "node-b", "node-c"}) {
      out += std::string("---- ") + node + "\n" + ReadFile(dir_ / (std::string(node) + ".log"));
    }
    return out;
  }

  TempDir dir_;
  TestDatabase db_{StoreKind::kPostgres};
};

TEST_F(ClusterDaemonTest, ThreeDaemonsShareThePartitionsAndTakeOverOnKillAndStop) {
  // The first daemon alone holds every partition at first; each daemon applies the same
  // configuration at its start (the same definitions and connections: nothing is written again).
  Daemon a = Start("node-a");
  ASSERT_NE(a.port, 0);
  Json ha;
  ASSERT_TRUE(WaitFor(
      [&] {
        ha = Health(a.port);
        return Int(ha, "partitions") == kPartitions && Int(ha, "nodes") == 1;
      },
      10s))
      << ha.dump() << "\n"
      << Logs();
  EXPECT_EQ(ha["node"], "node-a");
  EXPECT_EQ(Int(ha, "partitions_total"), kPartitions);
  EXPECT_EQ(ha["status"], "ok");

  Daemon b = Start("node-b");
  Daemon c = Start("node-c");
  ASSERT_NE(b.port, 0);
  ASSERT_NE(c.port, 0);
  std::vector<Daemon*> all = {&a, &b, &c};

  // Shared evenly: each within one partition of P/3 (16/3: 5 or 6), every partition owned once,
  // three live engines seen by each.
  std::map<std::string, Json> health;
  auto balanced = [&](const std::vector<Daemon*>& live) {
    std::int64_t sum = 0;
    bool ok = true;
    const double mean = static_cast<double>(kPartitions) / static_cast<double>(live.size());
    for (Daemon* d : live) {
      Json h = Health(d->port);
      health[d->node] = h;
      std::int64_t owned = Int(h, "partitions");
      sum += owned;
      ok = ok && Int(h, "nodes") == static_cast<std::int64_t>(live.size()) &&
           Int(h, "partitions_total") == kPartitions && owned >= 0 &&
           std::abs(static_cast<double>(owned) - mean) <= 1.0 && h["node"] == d->node;
    }
    return ok && sum == kPartitions;
  };
  auto dump = [&] {
    std::string out;
    for (const auto& [node, h] : health) out += node + ": " + h.dump() + "\n";
    return out;
  };
  ASSERT_TRUE(WaitFor([&] { return balanced(all); }, 20s)) << dump() << Logs();
  EXPECT_EQ(Logs().find("sync definition replaced"), std::string::npos)
      << "the same configuration replaced nothing";

  // The catalog through any daemon (none holds every partition now): connections added through
  // b are read back through c at once and run on their owners; one deleted through a is gone
  // from b at once.
  {
    Client cb(b.port), cc(c.port), ca(a.port);
    for (int i = 0; i < 6; ++i) {
      Reply added = cb.Post("/connections",
                            R"({"provider_config_key": "github", "connection_id": "new)" +
                                std::to_string(i) + R"("})",
                            "k");
      ASSERT_EQ(added.status, 200u) << added.body;
    }
    Reply st = cc.Get("/sync/status?provider_config_key=github&syncs=issues", "k");
    ASSERT_EQ(st.status, 200u) << st.body;
    std::set<std::string> started;
    const Json items = st.json()["syncs"];  // kept: a range-for over a temporary's member dangles
    for (const Json& item : items) {
      if (item.value("schedule_status", "") == "STARTED") {
        started.insert(item.value("connection_id", ""));
      }
    }
    for (int i = 0; i < 6; ++i) {
      EXPECT_EQ(started.count("new" + std::to_string(i)), 1u) << st.body;
    }
    Reply again = ca.Post("/connections",
                          R"({"provider_config_key": "github", "connection_id": "new0"})", "k");
    EXPECT_EQ(again.status, 409u) << again.body;
    Reply deleted = ca.Delete("/connections/new5?provider_config_key=github", "", "k");
    EXPECT_EQ(deleted.status, 200u) << deleted.body;
    Reply gone =
        cb.Get("/sync/status?provider_config_key=github&connection_id=new5&syncs=issues", "k");
    EXPECT_EQ(gone.status, 404u) << gone.body;
    ASSERT_TRUE(WaitFor(
        [&] {
          std::set<std::string> ran;
          for (const RunLine& r : Runs()) ran.insert(r.connection);
          for (int i = 0; i < 5; ++i) {
            if (ran.count("new" + std::to_string(i)) == 0) return false;
          }
          return true;
        },
        10s))
        << ReadFile(dir_ / "runs.txt");
    // Deleted again through each daemon in turn: the configuration's connections are left.
    for (int i = 0; i < 5; ++i) {
      Client& through = i % 3 == 0 ? ca : i % 3 == 1 ? cb : cc;
      Reply d = through.Delete(
          "/connections/new" + std::to_string(i) + "?provider_config_key=github", "", "k");
      EXPECT_EQ(d.status, 200u) << d.body;
    }
    Reply left = ca.Get("/sync/status?provider_config_key=github&syncs=issues", "k");
    ASSERT_EQ(left.status, 200u) << left.body;
    EXPECT_EQ(left.json()["syncs"].size(), static_cast<std::size_t>(kConnections)) << left.body;
  }

  // Every daemon runs schedules, and each run's command is told which daemon runs it.
  ASSERT_TRUE(WaitFor(
      [&] {
        std::set<std::string> nodes;
        for (const RunLine& r : Runs()) nodes.insert(r.node);
        return nodes.count("node-b") == 1 && nodes.count("node-c") == 1;
      },
      10s))
      << ReadFile(dir_ / "runs.txt");
  for (const RunLine& r : Runs()) {
    EXPECT_TRUE(r.node == "node-a" || r.node == "node-b" || r.node == "node-c")
        << "SYNCSCHED_NODE of a run: '" << r.node << "'";
  }

  // SIGKILL: the survivors take node-c's partitions within lease + 1 s, and /health says so.
  const auto killed = std::chrono::steady_clock::now();
  const std::int64_t killed_ms = WallMs();
  c.process->Signal(SIGKILL);
  ASSERT_TRUE(WaitFor([&] { return balanced({&a, &b}); }, 10s)) << dump() << Logs();
  const auto taken = std::chrono::steady_clock::now() - killed;
  EXPECT_LE(taken, kLease + 1s)
      << "taken over after " << std::chrono::duration_cast<std::chrono::milliseconds>(taken).count()
      << " ms\n"
      << dump();
  // Each schedule (node-c's among them) runs on a survivor within lease + 1 s of the kill: its
  // command started then, as the survivor's log says.
  std::map<std::string, std::int64_t> first_after;
  ASSERT_TRUE(WaitFor(
      [&] {
        first_after.clear();
        FirstRunsSince("node-a", killed_ms, first_after);
        FirstRunsSince("node-b", killed_ms, first_after);
        return first_after.size() == kConnections;
      },
      10s))
      << first_after.size() << " of " << kConnections << " connections ran after the kill";
  std::int64_t latest_first = 0;
  for (const auto& [connection, at] : first_after) {
    EXPECT_LE(at - killed_ms, std::chrono::milliseconds(kLease + 1s).count())
        << connection << " first ran " << at - killed_ms << " ms after the kill";
    latest_first = std::max(latest_first, at - killed_ms);
  }

  // SIGTERM: node-b hands its partitions over within 1 s and stops counting as live.
  const auto stopped = std::chrono::steady_clock::now();
  b.process->Signal(SIGTERM);
  Json last;
  ASSERT_TRUE(WaitFor(
      [&] {
        last = Health(a.port);
        return Int(last, "partitions") == kPartitions && Int(last, "nodes") == 1;
      },
      10s))
      << last.dump() << "\n"
      << Logs();
  const auto handed = std::chrono::steady_clock::now() - stopped;
  EXPECT_LE(handed, 1s) << "handed over after "
                        << std::chrono::duration_cast<std::chrono::milliseconds>(handed).count()
                        << " ms";
  EXPECT_EQ(b.process->Wait(), 0) << ReadFile(dir_ / "node-b.log");
  // The figures, for docs/cluster.md.
  std::printf(
      "[ figures  ] SIGKILL: taken over (health) after %lld ms, every schedule ran again "
      "within %lld ms; SIGTERM: handed over after %lld ms\n",
      static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(taken).count()),
      static_cast<long long>(latest_first),
      static_cast<long long>(
          std::chrono::duration_cast<std::chrono::milliseconds>(handed).count()));

  // /metrics of the survivor: it owns everything, took node-c's leases over, claimed node-b's.
  {
    Client client(a.port);
    Reply m = client.Get("/metrics", "k");
    ASSERT_EQ(m.status, 200u) << m.body;
    auto value = [&](const std::string& name) -> std::int64_t {
      std::size_t at = m.body.find("\n" + name + " ");
      if (at == std::string::npos) return -1;
      return std::atoll(m.body.c_str() + at + name.size() + 2);
    };
    EXPECT_EQ(value("syncsched_cluster_partitions_owned"), kPartitions) << m.body;
    EXPECT_EQ(value("syncsched_cluster_partitions"), kPartitions);
    EXPECT_EQ(value("syncsched_cluster_nodes_live"), 1);
    EXPECT_GT(value("syncsched_cluster_lease_renewals_total"), 0);
    EXPECT_GT(value("syncsched_cluster_takeovers_total"), 0) << "node-c's partitions";
    EXPECT_GT(value("syncsched_cluster_claims_total"), 0) << "node-b's, and the first ones";
    EXPECT_GE(value("syncsched_cluster_fenced_writes_refused_total"), 0);
    // Twelve catalog changes at least (six connections added, six deleted) were applied here.
    EXPECT_GE(value("syncsched_cluster_catalog_version"), 12) << m.body;
    EXPECT_NE(m.body.find("# TYPE syncsched_cluster_takeovers_total counter\n"), std::string::npos);
    // The forecast says whose it is: the survivor's, over every partition now.
    Reply f = client.Get("/schedules/forecast?hours=1", "k");
    ASSERT_EQ(f.status, 200u) << f.body;
    Json forecast = f.json();
    EXPECT_EQ(forecast["scope"]["node"], "node-a") << f.body;
    EXPECT_EQ(Int(forecast["scope"], "partitions"), kPartitions) << f.body;
    EXPECT_EQ(Int(forecast["scope"], "partitions_total"), kPartitions) << f.body;
    EXPECT_FALSE(forecast["minutes"].empty()) << f.body;
  }
  a.process->Signal(SIGTERM);
  EXPECT_EQ(a.process->Wait(), 0) << ReadFile(dir_ / "node-a.log");
  for (const RunLine& r : Runs()) {
    EXPECT_TRUE(r.node == "node-a" || r.node == "node-b" || r.node == "node-c") << r.node;
  }
}

// B3 at the daemon's level: the database refuses node-a's commits (a trigger on its commit mark
// raises the error a full disk raises) while its lease keeper still renews: node-a leaves the
// cluster for a while and logs so, node-b runs every partition meanwhile, and once the database
// takes node-a's commits again it comes back and shares them.
TEST_F(ClusterDaemonTest, ADaemonWhoseCommitsAreRefusedLeavesForAWhileAndComesBack) {
  Daemon a = Start("node-a");
  Daemon b = Start("node-b");
  ASSERT_TRUE(a.port != 0 && b.port != 0);
  auto halves = [&] {
    return Int(Health(a.port), "partitions") == kPartitions / 2 &&
           Int(Health(b.port), "partitions") == kPartitions / 2;
  };
  ASSERT_TRUE(WaitFor(halves, 20s)) << Logs();
  auto id = syncsched::testing::PgQuery(
      db_.path(), "SELECT id FROM syncsched_cluster.nodes WHERE name = 'node-a'");
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(syncsched::testing::PgExec(
                  db_.path(),
                  "CREATE FUNCTION refuse_a() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RAISE "
                  "EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = "
                  "'disk_full'; END$$; CREATE TRIGGER refuse_a BEFORE INSERT OR UPDATE ON "
                  "syncsched.commit_marks FOR EACH ROW WHEN (NEW.node = " +
                      *id + ") EXECUTE FUNCTION refuse_a()")
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return Int(Health(b.port), "partitions") == kPartitions; }, 20s))
      << Logs();
  EXPECT_TRUE(WaitFor(
      [&] {
        return ReadFile(dir_ / "node-a.log").find("left the cluster for a while") !=
               std::string::npos;
      },
      5s))
      << Logs();
  ASSERT_TRUE(syncsched::testing::PgExec(db_.path(), "DROP FUNCTION refuse_a() CASCADE").ok());
  EXPECT_TRUE(WaitFor(halves, 30s)) << Logs();
  for (Daemon* d : {&a, &b}) {
    d->process->Signal(SIGTERM);
    EXPECT_EQ(d->process->Wait(), 0) << Logs();
  }
}

// Outside cluster mode a daemon has a name too: host:port, with the port it bound when `listen`
// takes any free port. Its runs see it as SYNCSCHED_NODE.
TEST(SingleDaemonNode, RunsSeeTheDefaultName) {
  TempDir dir;
  Json config = {
      {"listen", "127.0.0.1:0"},
      {"database", dir / "state.db"},
      {"integrations",
       {{"github",
         {{"syncs",
           {{"issues",
             {{"runs", "1h"},
              {"command",
               {"/bin/sh", "-c", "echo \"$SYNCSCHED_NODE\" >> '" + (dir / "runs.txt") + "'"}}}}}},
          {"connections", {"acme"}}}}}}};
  WriteFile(dir / "config.json", config.dump());
  Process p({SYNCSCHEDD_PATH, "--config", dir / "config.json"}, dir / "daemon.log");
  auto port = ListeningPort(dir / "daemon.log");
  ASSERT_TRUE(port) << ReadFile(dir / "daemon.log");
  ASSERT_TRUE(WaitFor([&] { return !ReadLines(dir / "runs.txt").empty(); }))
      << ReadFile(dir / "daemon.log");
  char host[256] = {0};
  ASSERT_EQ(gethostname(host, sizeof host - 1), 0);
  EXPECT_EQ(ReadLines(dir / "runs.txt").front(), std::string(host) + ":" + std::to_string(*port));
  // /health says nothing of a cluster outside one.
  Json h = Health(*port);
  EXPECT_EQ(h, (Json{{"status", "ok"}})) << h.dump();
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(), 0);
}

// A single daemon on PostgreSQL whose store breaks for good: its session is ended and, before it
// reconnects, another engine takes the database over (here: writes the owner mark by hand, as an
// engine opening the database does). Its next commit (a POST) learns so; from then on its state
// no longer matches the database's, and no call of the store succeeds again. It must not linger
// unhealthy with nothing in the log (helper-39): it logs why, shuts down and exits 1, for its
// supervisor to restart it, and a restart serves from what the database holds.
TEST(SingleDaemonOnPostgres, ExitsWhenItsStoreIsBrokenForGoodAndARestartServes) {
  TempDir dir;
  TestDatabase db(StoreKind::kPostgres);
  Json config = {{"listen", "127.0.0.1:0"},
                 {"database", db.path()},
                 {"api_keys", {{{"key", "k"}, {"scopes", {"*"}}}}},
                 {"integrations",
                  {{"github",
                    {{"syncs", {{"issues", {{"runs", "1h"}, {"command", {"/bin/true"}}}}}},
                     {"connections", {"acme"}}}}}}};
  WriteFile(dir / "config.json", config.dump());
  auto p = std::make_unique<Process>(
      std::vector<std::string>{SYNCSCHEDD_PATH, "--config", dir / "config.json"},
      dir / "daemon.log");
  auto port = ListeningPort(dir / "daemon.log");
  ASSERT_TRUE(port) << ReadFile(dir / "daemon.log");
  ASSERT_TRUE(syncsched::testing::PgExec(
                  db.path(),
                  "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE "
                  "application_name = 'syncsched' AND datname = current_database(); "
                  "UPDATE syncsched.meta SET value = value + 1 WHERE key = 'owner'")
                  .ok());
  // The first commit finds its session ended; the second reconnects and learns of the takeover.
  for (const char* id : {"globex", "initech"}) {
    Client client(*port);
    Reply refused = client.Post(
        "/connections",
        std::string(R"({"provider_config_key": "github", "connection_id": ")") + id + "\"}", "k");
    EXPECT_EQ(refused.status, 503u) << refused.body;
  }
  EXPECT_EQ(p->Wait(std::chrono::seconds(20)), 1) << ReadFile(dir / "daemon.log");
  std::string log = ReadFile(dir / "daemon.log");
  EXPECT_NE(log.find("the database store is broken for good"), std::string::npos) << log;
  EXPECT_NE(log.find("opened by another engine"), std::string::npos) << log;
  // The restart recovers what the database holds, and serves.
  p = std::make_unique<Process>(
      std::vector<std::string>{SYNCSCHEDD_PATH, "--config", dir / "config.json"},
      dir / "again.log");
  port = ListeningPort(dir / "again.log");
  ASSERT_TRUE(port) << ReadFile(dir / "again.log");
  EXPECT_EQ(Health(*port), (Json{{"status", "ok"}}));
  p->Signal(SIGTERM);
  EXPECT_EQ(p->Wait(), 0) << ReadFile(dir / "again.log");
}

}  // namespace
}  // namespace syncsched::daemon
