// Engines in cluster mode (Options::cluster, docs/cluster.md) sharing one database on the real
// PostgreSQL test server, with many schedules firing every second: each slot runs once
// cluster-wide, a graceful Shutdown hands the partitions over within 1 s, and a SIGKILLed engine
// (a child process) has its schedules run elsewhere within lease + 1 s, with one catch-up run each.
// The checks read the run history in the database and the callbacks' own records; the only
// timing bounds asserted are the issue's.
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster/cluster_test_util.h"
#include "cluster/lease_keeper.h"
#include "cluster/partition.h"
#include "core/engine_access.h"
#include "core/fault_store.h"
#include "store/pg_store.h"
#include "support/pg_database_test.h"
#include "support/stall_proxy.h"
#include "syncsched/engine.h"
#include "syncsched/options.h"

namespace syncsched {
namespace {

using namespace std::chrono_literals;
using syncsched::testing::PgDatabaseTest;
using namespace syncsched::cluster_testing;  // Db, Call, CallLog, Child, WaitFor, the checks
using Clock = std::chrono::steady_clock;     // not syncsched::Clock

constexpr int kPartitions = 16;
constexpr auto kLease = 1500ms;
constexpr const char* kIntegration = "it";
constexpr const char* kSync = "s";

// ---- Fixture ----

class EngineClusterTest : public PgDatabaseTest {
 protected:
  void TearDown() override {
    for (auto& [name, e] : engines_) e->Shutdown(Clock::now() + 2s);
    engines_.clear();
    PgDatabaseTest::TearDown();
  }

  Options ClusterEngineOptions(const std::string& node) const {
    Options o;
    o.database_path = uri_;
    o.frequency_bounds.min = 1s;
    o.run_history = 1000;
    o.cluster = ClusterOptions{node, kLease, kPartitions};
    return o;
  }

  // `wrap` (when set) wraps the engine's store (core/fault_store.h); `uri` (when set) replaces
  // the database's.
  Engine* Open(const std::string& node, core::EngineCore::StoreWrapper wrap = {},
               const std::string& uri = "") {
    Options options = ClusterEngineOptions(node);
    if (!uri.empty()) options.database_path = uri;
    auto e = wrap ? internal::EngineAccess::OpenWrapped(std::move(options), std::move(wrap))
                  : Engine::Open(std::move(options));
    EXPECT_TRUE(e.ok()) << e.status();
    if (!e.ok()) return nullptr;
    Engine* engine = e->get();
    engine->SetFallbackCallback([this, node](const RunContext& ctx) {
      log_.Add(Call{node, ctx.run_id, ctx.key.connection, ctx.slot.time_since_epoch().count(),
                    Clock::now(), WallMs()});
      return RunReport{};
    });
    engine->ReleaseTimers();
    engines_[node] = std::move(e).value();
    return engine;
  }

  // The engine holds and has loaded every partition (every schedule is in its memory).
  static bool HoldsAll(Engine& e) {
    return internal::EngineAccess::LoadedPartitions(e).size() ==
           static_cast<std::size_t>(kPartitions);
  }

  // On `engine`, alone in the cluster: the sync (every 1 s) and `n` connections, each with its
  // base schedule started (run at once, then every second).
  void Populate(Engine& engine, int n) {
    SyncDefinition def;
    def.name = kSync;
    def.frequency = "1s";
    ASSERT_TRUE(engine.DefineSync(kIntegration, def).ok());
    ASSERT_TRUE(WaitFor([&] { return HoldsAll(engine); }, 15s)) << "never held every partition";
    for (int i = 0; i < n; ++i) {
      Status s = engine.AddConnection(kIntegration, Connection(i));
      ASSERT_TRUE(s.ok()) << s;
    }
  }
  static std::string Connection(int i) { return "c" + std::to_string(i); }
  // The connections whose runs `node` called after `since`.
  std::set<std::string> RanOn(const std::string& node, Clock::time_point since) {
    std::set<std::string> ran;
    for (const Call& c : log_.All()) {
      if (c.node == node && c.at > since) ran.insert(c.connection);
    }
    return ran;
  }
  static int PartitionOfConnection(const std::string& connection) {
    return cluster::PartitionOf(kIntegration, connection, kSync, kBaseVariant, kPartitions);
  }

  // Partition `p` held by a node that does not exist, with a lease that does not end (no engine
  // can take it); GiveBack frees it (at a new epoch when `new_epoch`: its holder's lease ends).
  static void TakeAway(Db& db, int p) {
    ASSERT_EQ(db.Rows("UPDATE syncsched_cluster.partitions SET owner = 999999, epoch = epoch + "
                      "1, expires_at = now() + interval '1 hour' WHERE partition = " +
                      std::to_string(p) + " RETURNING partition")
                  .size(),
              1u);
  }
  static void GiveBack(Db& db, int p, bool new_epoch = false) {
    ASSERT_EQ(db.Rows(std::string("UPDATE syncsched_cluster.partitions SET owner = NULL, "
                                  "expires_at = NULL") +
                      (new_epoch ? ", epoch = epoch + 1" : "") +
                      " WHERE partition = " + std::to_string(p) + " RETURNING partition")
                  .size(),
              1u);
  }

  void Stop(const std::string& node) {
    auto it = engines_.find(node);
    if (it == engines_.end()) return;
    it->second->Shutdown(Clock::now() + 2s);
    engines_.erase(it);
  }

  CallLog log_;
  std::map<std::string, std::unique_ptr<Engine>> engines_;
};

// ---- Tests ----

TEST_F(EngineClusterTest, OpenRefusesClusterModeWithoutPostgreSQL) {
  Options o = ClusterEngineOptions("n1");
  o.database_path = "/tmp/not-postgres.db";
  auto e = Engine::Open(o);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument) << e.status();
  EXPECT_NE(e.status().message().find("options.cluster"), std::string::npos) << e.status();
}

TEST_F(EngineClusterTest, ASingleEngineAndAClusterNeverShareTheDatabase) {
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  Options single;
  single.database_path = uri_;
  auto s = Engine::Open(single);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable) << s.status();
  EXPECT_NE(s.status().message().find("in use"), std::string::npos) << s.status();
}

TEST_F(EngineClusterTest, ThreeEnginesRunEachSlotOnceAndAGracefulStopHandsOverWithinOneSecond) {
  constexpr int kSchedules = 120;
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, kSchedules));
  ASSERT_NE(Open("b"), nullptr);
  ASSERT_NE(Open("c"), nullptr);
  Db db(uri_);
  std::int64_t a_id = db.NodeId("a"), b_id = db.NodeId("b"), c_id = db.NodeId("c");
  auto shares = [&](std::set<std::int64_t> nodes) {
    std::map<std::int64_t, int> count;
    for (const auto& [p, o] : db.Owners()) {
      if (nodes.count(o) == 0) return false;
      ++count[o];
    }
    if (count.size() != nodes.size()) return false;
    for (const auto& [o, n] : count) {
      if (n < kPartitions / static_cast<int>(nodes.size())) return false;
    }
    return true;
  };
  ASSERT_TRUE(WaitFor([&] { return shares({a_id, b_id, c_id}); }, 10s)) << "not balanced";
  // Every engine runs schedules.
  ASSERT_TRUE(WaitFor(
      [&] {
        std::set<std::string> nodes;
        for (const Call& c : log_.All()) nodes.insert(c.node);
        return nodes.size() == 3;
      },
      10s));
  std::this_thread::sleep_for(3s);  // slots fire on the three engines meanwhile

  // A graceful stop of b: its partitions go to a and c at once.
  std::set<int> b_partitions;
  for (const auto& [p, o] : db.Owners()) {
    if (o == b_id) b_partitions.insert(p);
  }
  ASSERT_FALSE(b_partitions.empty());
  auto stop = Clock::now();
  Stop("b");
  ASSERT_TRUE(WaitFor([&] { return shares({a_id, c_id}); }, 5s));
  auto handed_over = Clock::now() - stop;
  std::printf("graceful hand-over: %lld ms\n",
              static_cast<long long>(
                  std::chrono::duration_cast<std::chrono::milliseconds>(handed_over).count()));
  EXPECT_LT(handed_over, 1s)
      << std::chrono::duration_cast<std::chrono::milliseconds>(handed_over).count() << " ms";
  // Each of b's schedules runs again, on a or c.
  std::set<std::string> of_b;
  for (int i = 0; i < kSchedules; ++i) {
    if (b_partitions.count(PartitionOfConnection(Connection(i))) != 0) of_b.insert(Connection(i));
  }
  ASSERT_TRUE(WaitFor(
      [&] {
        std::set<std::string> ran;
        for (const Call& c : log_.All()) {
          if (c.at > stop && c.node != "b" && of_b.count(c.connection) != 0) {
            ran.insert(c.connection);
          }
        }
        return ran.size() == of_b.size();
      },
      10s));
  std::this_thread::sleep_for(2s);
  Stop("a");
  Stop("c");

  std::vector<Call> calls = log_.All();
  std::printf("%zu calls on 3 engines\n", calls.size());
  ExpectEachSlotCalledOnce(calls);
  ExpectHistoryConsistent(db, calls);
  // Every schedule ran, over the test's ~8 s at 1 s, several times.
  std::map<std::string, int> per_schedule;
  for (const Call& c : calls) ++per_schedule[c.connection];
  EXPECT_EQ(per_schedule.size(), static_cast<std::size_t>(kSchedules));
  for (const auto& [conn, n] : per_schedule) EXPECT_GE(n, 4) << conn;
}

TEST_F(EngineClusterTest, AKilledEnginesSchedulesRunElsewhereWithinLeasePlusOneSecondOnceEach) {
  constexpr int kSchedules = 64;
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, kSchedules));
  // The child's runs take 100 ms, so that some are in flight when it is killed.
  Child child(SYNCSCHED_CLUSTER_ENGINE_BIN,
              {uri_, "child", std::to_string(kLease.count()), std::to_string(kPartitions), "100"},
              &log_);
  ASSERT_TRUE(child.WaitForLine("ready", 20s));
  Db db(uri_);
  std::int64_t child_id = db.NodeId("child");
  ASSERT_TRUE(WaitFor(
      [&] {
        int on_child = 0;
        for (const auto& [p, o] : db.Owners()) on_child += o == child_id;
        return on_child == kPartitions / 2;
      },
      10s));
  ASSERT_TRUE(WaitFor([&] { return child.runs() > 0; }, 10s));
  std::this_thread::sleep_for(2500ms);  // the child runs its schedules meanwhile

  std::set<int> child_partitions;
  for (const auto& [p, o] : db.Owners()) {
    if (o == child_id) child_partitions.insert(p);
  }
  ASSERT_EQ(child_partitions.size(), static_cast<std::size_t>(kPartitions / 2));
  std::set<std::string> of_child;
  for (int i = 0; i < kSchedules; ++i) {
    if (child_partitions.count(PartitionOfConnection(Connection(i))) != 0) {
      of_child.insert(Connection(i));
    }
  }
  ASSERT_FALSE(of_child.empty());
  // Killed just after one of its runs started (a run lasts 100 ms): at least one is in flight.
  // (Killed at an arbitrary moment, it may fall between the second's burst of runs: the
  // schedules were created together, so their slots come due together.)
  const std::size_t seen = child.runs();
  ASSERT_TRUE(WaitFor([&] { return child.runs() > seen; }, 5s));
  child.Signal(SIGKILL);
  auto killed = Clock::now();
  std::int64_t killed_wall = WallMs();
  child.Wait();

  // Each of the child's schedules runs on a: the first within lease + 1 s of the kill.
  std::map<std::string, Call> first;  // connection -> a's first run after the kill
  ASSERT_TRUE(WaitFor(
      [&] {
        for (const Call& c : log_.All()) {
          if (c.node == "a" && c.at > killed && of_child.count(c.connection) != 0 &&
              first.count(c.connection) == 0) {
            first[c.connection] = c;
          }
        }
        return first.size() == of_child.size();
      },
      15s))
      << first.size() << " of " << of_child.size() << " schedules ran after the kill";
  Clock::time_point last_first{};
  for (const auto& [conn, c] : first) last_first = std::max(last_first, c.at);
  auto took = last_first - killed;
  std::printf(
      "all %zu schedules of the killed engine ran again within %lld ms of the kill\n",
      of_child.size(),
      static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
  EXPECT_LE(took, kLease + 1s)
      << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  std::this_thread::sleep_for(2500ms);  // a runs them on their grid meanwhile
  Stop("a");

  std::vector<Call> calls = log_.All();
  ExpectEachSlotCalledOnce(calls);
  ExpectHistoryConsistent(db, calls);
  // One catch-up run each: of a's runs after the kill, only the first has a slot that was due
  // well before a took the schedule over (the latest missed one); the next are on the grid, at
  // most a period before their call. (Several missed slots run at once would all be due at least a
  // period before the first call.)
  for (const auto& [conn, f] : first) {
    int catch_up = 0;
    for (const Call& c : calls) {
      if (c.node == "a" && c.connection == conn && c.at > killed &&
          (c.run_id == f.run_id || c.slot < f.wall_ms - 200)) {
        ++catch_up;
      }
    }
    EXPECT_EQ(catch_up, 1) << conn;
    // It is a slot the child missed: after the kill, or the child's last one in flight (not
    // re-run: recorded as interrupted instead).
    EXPECT_GT(f.slot, killed_wall - 1000) << conn;
  }
  // Runs the child had in flight are recorded as interrupted by their new owner.
  auto interrupted = db.Rows(
      "SELECT count(*) FROM syncsched.history WHERE place >= 0 AND ok = 0 AND "
      "convert_from(error, 'UTF8') LIKE 'interrupted:%'");
  ASSERT_FALSE(interrupted.empty());
  std::printf("%zu calls (the child's and a's), %s runs recorded interrupted\n", calls.size(),
              interrupted[0][0].c_str());
  EXPECT_GE(std::stoll(interrupted[0][0]), 1) << "with 100 ms runs, some were in flight";
}

// An engine frozen (SIGSTOP) past its lease: its schedules run elsewhere meanwhile, and once it
// wakes (SIGCONT) it runs nothing it no longer owns: no slot runs twice, and whatever it had
// queued is dropped or refused by the fence. Then it takes a share again and hands it back at its
// graceful stop.
TEST_F(EngineClusterTest, AFrozenEngineWakesAndRunsNothingItNoLongerOwns) {
  constexpr int kSchedules = 64;
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, kSchedules));
  Child child(SYNCSCHED_CLUSTER_ENGINE_BIN,
              {uri_, "frozen", std::to_string(kLease.count()), std::to_string(kPartitions), "50"},
              &log_);
  ASSERT_TRUE(child.WaitForLine("ready", 20s));
  Db db(uri_);
  std::int64_t a_id = db.NodeId("a"), child_id = db.NodeId("frozen");
  auto count_of = [&](std::int64_t node) {
    int n = 0;
    for (const auto& [p, o] : db.Owners()) n += o == node;
    return n;
  };
  ASSERT_TRUE(WaitFor([&] { return count_of(child_id) == kPartitions / 2; }, 10s));
  ASSERT_TRUE(WaitFor([&] { return child.runs() > 0; }, 10s));
  std::this_thread::sleep_for(1500ms);
  child.Signal(SIGSTOP);
  auto stopped = Clock::now();
  // a takes every partition once the frozen engine's lease has ended.
  ASSERT_TRUE(WaitFor([&] { return count_of(a_id) == kPartitions; }, 10s));
  std::printf(
      "a took the frozen engine's partitions %lld ms after SIGSTOP\n",
      static_cast<long long>(
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - stopped).count()));
  std::this_thread::sleep_for(1500ms);  // a runs them meanwhile
  child.Signal(SIGCONT);
  // It rejoins and takes a share again.
  ASSERT_TRUE(WaitFor([&] { return count_of(child_id) == kPartitions / 2; }, 10s));
  std::size_t before = child.runs();
  ASSERT_TRUE(WaitFor([&] { return child.runs() > before + 10; }, 10s));
  child.Signal(SIGTERM);
  ASSERT_TRUE(child.WaitForLine("stopped", 10s));
  EXPECT_EQ(child.Wait(), 0);
  ASSERT_TRUE(WaitFor([&] { return count_of(a_id) == kPartitions; }, 5s));
  std::this_thread::sleep_for(1s);
  Stop("a");

  std::vector<Call> calls = log_.All();
  std::printf("%zu calls on the frozen engine and a\n", calls.size());
  ExpectEachSlotCalledOnce(calls);
  ExpectHistoryConsistent(db, calls);
}

// Another node takes a partition behind the engine's back (as a takeover the engine has not
// heard of yet would): the engine's next commit for it is refused by the fence, or its keeper's
// renewal finds it gone, whichever comes first; either way the engine drops the partition and
// runs nothing of it, while every other partition runs on (no commit stays stuck behind the
// refused rows).
TEST_F(EngineClusterTest, APartitionTakenBehindTheEnginesBackIsDroppedAndTheOthersRunOn) {
  constexpr int kSchedules = 64;
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, kSchedules));
  ASSERT_TRUE(WaitFor([&] { return log_.All().size() >= 2 * kSchedules; }, 10s));
  const int p = PartitionOfConnection(Connection(0));
  std::set<std::string> of_p;
  for (int i = 0; i < kSchedules; ++i) {
    if (PartitionOfConnection(Connection(i)) == p) of_p.insert(Connection(i));
  }
  Db db(uri_);
  ASSERT_NO_FATAL_FAILURE(TakeAway(db, p));
  // A command for a schedule of p, at once: refused by the fence (the engine still believes it
  // holds p) or handed to the new owner, who never answers; either way UNAVAILABLE (retry), not
  // FAILED_PRECONDITION (helper-38 saw HTTP 409 for the first).
  auto paused = a->Pause(Target{kIntegration, Connection(0), {SyncSelector{kSync}}});
  ASSERT_FALSE(paused.ok());
  EXPECT_EQ(paused.status().code(), StatusCode::kUnavailable) << paused.status();
  std::printf("a command for the taken partition: %s\n", paused.status().ToString().c_str());
  std::this_thread::sleep_for(2s);  // the engine learns of it meanwhile (one way or the other)
  auto quiet_from = Clock::now();
  std::this_thread::sleep_for(2500ms);
  std::set<std::string> ran;
  std::size_t of_p_calls = 0;
  for (const Call& c : log_.All()) {
    if (c.at <= quiet_from) continue;
    if (of_p.count(c.connection) != 0) {
      ++of_p_calls;
    } else {
      ran.insert(c.connection);
    }
  }
  EXPECT_EQ(of_p_calls, 0u) << "schedules of the lost partition still run";
  EXPECT_EQ(ran.size(), static_cast<std::size_t>(kSchedules) - of_p.size())
      << "every other schedule runs on";
  // Its status is read from the database (the partition is not this engine's any more).
  auto status = a->GetStatus(Target{kIntegration, Connection(0), {SyncSelector{kSync}}});
  EXPECT_TRUE(status.ok()) << status.status();
  cluster::LeaseKeeper* keeper = internal::EngineAccess::KeeperOf(*a);
  ASSERT_NE(keeper, nullptr);
  EXPECT_EQ(keeper->Owned().count(p), 0u);
  auto metrics = a->GetMetrics();
  std::printf("store healthy after: %d, commits failed: %llu, keeper lost: %llu\n",
              metrics.store_healthy ? 1 : 0,
              static_cast<unsigned long long>(metrics.store_commits_failed),
              static_cast<unsigned long long>(keeper->counters().lost));
  EXPECT_TRUE(metrics.store_healthy) << metrics.store_error;
  Stop("a");
  ExpectEachSlotCalledOnce(log_.All());
}

// A database written by a single engine (schema v3, partitions unset) is taken over by a cluster:
// its schedules get their partitions and run.
TEST_F(EngineClusterTest, ASingleEnginesDatabaseIsTakenOverByAClusterEngine) {
  {
    Options single;
    single.database_path = uri_;
    single.frequency_bounds.min = 1s;
    single.hold_timers = false;
    auto e = Engine::Open(single);
    ASSERT_TRUE(e.ok()) << e.status();
    (*e)->SetFallbackCallback([](const RunContext&) { return RunReport{}; });
    SyncDefinition def;
    def.name = kSync;
    def.frequency = "1s";
    ASSERT_TRUE((*e)->DefineSync(kIntegration, def).ok());
    for (int i = 0; i < 10; ++i) ASSERT_TRUE((*e)->AddConnection(kIntegration, Connection(i)).ok());
    (*e)->Shutdown(Clock::now() + 2s);
  }
  Db db(uri_);
  EXPECT_EQ(db.Rows("SELECT count(*) FROM syncsched.schedules WHERE partition IS NULL")[0][0],
            "10");
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(db.Rows("SELECT count(*) FROM syncsched.schedules WHERE partition IS NULL")[0][0], "0");
  ASSERT_TRUE(WaitFor([&] { return HoldsAll(*a); }, 15s));
  ASSERT_TRUE(WaitFor(
      [&] {
        std::set<std::string> ran;
        for (const Call& c : log_.All()) ran.insert(c.connection);
        return ran.size() == 10;
      },
      10s));
  // New schedules get uids past the single engine's.
  ASSERT_TRUE(a->AddConnection(kIntegration, "new").ok());
  auto st = a->GetStatus(Target{kIntegration, "new", {SyncSelector{kSync}}});
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_GT((*st)[0].id, 10u);
  Stop("a");
  ExpectHistoryConsistent(db, log_.All());
}

// ---- Commands through any engine (issue 13) ----

// Every partition is loaded by one of `engines`, each holding at least its share.
bool Balanced(const std::vector<Engine*>& engines) {
  std::size_t total = 0;
  for (Engine* e : engines) {
    std::size_t n = internal::EngineAccess::LoadedPartitions(*e).size();
    if (n < static_cast<std::size_t>(kPartitions) / engines.size()) return false;
    total += n;
  }
  return total == static_cast<std::size_t>(kPartitions);
}

bool Loads(Engine& e, int partition) {
  auto parts = internal::EngineAccess::LoadedPartitions(e);
  return std::find(parts.begin(), parts.end(), partition) != parts.end();
}

std::chrono::milliseconds Ms(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d);
}

// An engine that cannot reach the database is unhealthy, even when no commit of its own failed
// (an attack on the cluster daemons saw /health answer ok for 4 s while the database was away),
// and healthy again once its lease keeper has reconnected.
TEST_F(EngineClusterTest, AnEngineThatCannotReachTheDatabaseIsUnhealthyUntilItReconnects) {
  testing::PgServer& server = UsePrivateServer();
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  EngineMetrics m = a->GetMetrics();
  EXPECT_TRUE(m.store_healthy) << m.store_error;
  ASSERT_TRUE(server.Stop().ok());
  EXPECT_TRUE(WaitFor(
      [&] {
        m = a->GetMetrics();
        return !m.store_healthy;
      },
      5s))
      << "still healthy with the database stopped";
  EXPECT_NE(m.store_error.find("cluster: the lease keeper has lost its connection"),
            std::string::npos)
      << m.store_error;
  // A catalog command cannot know whether another engine changed the catalog meanwhile: it
  // answers UNAVAILABLE, not NOT_FOUND from a catalog that may be behind (helper-37 saw a delete
  // answered 404 for a connection another engine had just added, during a database restart).
  Status deleted = a->DeleteConnection(kIntegration, "added-elsewhere");
  EXPECT_EQ(deleted.code(), StatusCode::kUnavailable) << deleted;
  EXPECT_NE(deleted.message().find("the catalog could not be brought up to date"),
            std::string::npos)
      << deleted;
  ASSERT_TRUE(server.StartAgain().ok());
  EXPECT_TRUE(WaitFor(
      [&] {
        m = a->GetMetrics();
        return m.store_healthy;
      },
      15s))
      << m.store_error;
}

// B3 (docs/cluster.md): an engine whose store cannot commit (here: every commit fails, as when
// its store's connection stalls) while its lease keeper still renews would hold partitions whose
// schedules run nowhere: a run's callback is called only after its dispatch committed. After
// lease/2 of failed commits, with another engine live, it withdraws: it leaves the cluster, its
// partitions are taken by the other engine and its schedules run there, once per slot. Once its
// store commits again it comes back and takes its share.
TEST_F(EngineClusterTest, AnEngineWhoseStoreFailsWhileItsKeeperRenewsHandsItsPartitionsOver) {
  constexpr int kSchedules = 32;
  auto plan = std::make_shared<testing::FaultPlan>();
  Engine* a = Open("a", testing::WrapWith(plan));
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, kSchedules));
  Engine* b = Open("b");
  ASSERT_NE(b, nullptr);
  auto shared = [&] { return Balanced({a, b}); };
  ASSERT_TRUE(WaitFor(shared, 10s)) << "never balanced";
  {
    std::lock_guard lock(plan->mu);
    plan->mode = testing::FaultPlan::Mode::kCrash;  // from the next commit on, every one fails
    plan->match = [](const store::Batch&) { return true; };
  }
  ASSERT_TRUE(WaitFor([&] { return plan->crashed.load(); }, 5s));
  const auto failing = Clock::now();
  ASSERT_TRUE(WaitFor([&] { return HoldsAll(*b); }, 4 * kLease + 5s))
      << "the engine that cannot commit kept its partitions";
  std::printf(
      "b held every partition %lld ms after a's commits began to fail\n",
      static_cast<long long>(
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - failing).count()));
  EXPECT_TRUE(a->GetMetrics().store_healthy == false);
  EXPECT_GE(a->GetMetrics().cluster_withdrawals, 1u);
  // Every schedule runs on b.
  const auto moved = Clock::now();
  ASSERT_TRUE(WaitFor(
      [&] { return RanOn("b", moved).size() == static_cast<std::size_t>(kSchedules); }, 10s))
      << "not every schedule ran on b";
  // a's store commits again: it comes back and takes its share.
  plan->crashed.store(false);
  ASSERT_TRUE(WaitFor(shared, 8 * kLease + 5s)) << "a never came back";
  EXPECT_TRUE(WaitFor([&] { return a->GetMetrics().store_healthy; }, 5s))
      << a->GetMetrics().store_error;   // its first commit since
  std::this_thread::sleep_for(1500ms);  // both run their schedules meanwhile
  Stop("a");
  Stop("b");
  Db db(uri_);
  std::vector<Call> calls = log_.All();
  ExpectEachSlotCalledOnce(calls);
  ExpectHistoryConsistent(db, calls);
}

// B3 as helper-41 made it: only the engine's store commits stall (a route that holds each of its
// commits from the statement that sets the commit's expiry; the keeper's and the inbox's
// queries pass). Each commit then fails at the store's reply deadline (10 s) while its stalled
// transaction holds the fence's row locks, so that the withdrawal's release may fail on them:
// the keeper must still stop renewing, and the partitions move once the node's row has expired
// and the survivor has ended its sessions. When the route recovers, the engine takes its share
// back and runs it (helper-41: its partitions were renewed at an epoch it refused, and ran
// nowhere until SIGTERM).
TEST_F(EngineClusterTest, AnEngineWhoseStoreCommitsStallHandsItsPartitionsOverAndComesBack) {
  constexpr int kSchedules = 32;
  auto proxy = syncsched::testing::StallProxy::Start(server_->dir());
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  Engine* a = Open("a", {}, (*proxy)->Uri(db_));
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, kSchedules));
  Engine* b = Open("b");
  ASSERT_NE(b, nullptr);
  auto shared = [&] { return Balanced({a, b}); };
  ASSERT_TRUE(WaitFor(shared, 10s)) << "never balanced";
  (*proxy)->HoldFrom('P', "syncsched.expiry_us");
  ASSERT_TRUE(WaitFor([&] { return HoldsAll(*b); }, 40s))
      << "the engine whose commits stall kept its partitions";
  EXPECT_GE(a->GetMetrics().cluster_withdrawals, 1u);
  const auto moved = Clock::now();
  ASSERT_TRUE(WaitFor(
      [&] { return RanOn("b", moved).size() == static_cast<std::size_t>(kSchedules); }, 10s))
      << "not every schedule ran on b";
  (*proxy)->Stall(false);  // the route recovers
  ASSERT_TRUE(WaitFor(shared, 40s)) << "a never came back";
  const auto back = Clock::now();
  ASSERT_TRUE(WaitFor([&] { return !RanOn("a", back).empty(); }, 10s))
      << "a holds partitions again but runs nothing";
  Stop("a");
  Stop("b");
  Db db(uri_);
  std::vector<Call> calls = log_.All();
  ExpectEachSlotCalledOnce(calls);
  ExpectHistoryConsistent(db, calls);
}

// Commands through an engine that holds a third of the partitions their keys are in: answered per
// key as one engine answers, applied by the owners before the answer (the time is printed, not
// asserted: speed is measured in bench/, and CI's sanitizer builds on two cores missed 200 ms by
// 1 ms), read back through every engine at once; a pause stops the runs, a start gives one
// immediate run at its anchor and a grid from there; bad input gets one engine's errors and
// changes nothing.
TEST_F(EngineClusterTest, CommandsThroughANonOwnerAreAppliedByTheOwnersAndReadBackEverywhere) {
  constexpr int kSchedules = 60;
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, kSchedules));
  Engine* b = Open("b");
  Engine* c = Open("c");
  ASSERT_NE(b, nullptr);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(WaitFor([&] { return Balanced({a, b, c}); }, 15s)) << "not balanced";
  const Target all{kIntegration, std::nullopt, {SyncSelector{kSync}}};
  std::set<int> partitions;
  for (int i = 0; i < kSchedules; ++i) partitions.insert(PartitionOfConnection(Connection(i)));
  std::printf("%d schedules in %zu partitions\n", kSchedules, partitions.size());
  ASSERT_GT(partitions.size(), 8u);

  // Pause through c.
  auto t0 = Clock::now();
  auto paused = c->Pause(all);
  auto took = Clock::now() - t0;
  const std::int64_t paused_wall = WallMs();
  ASSERT_TRUE(paused.ok()) << paused.status();
  std::printf("pause of %d schedules through a non-owner: %lld ms\n", kSchedules,
              static_cast<long long>(Ms(took).count()));
  EXPECT_EQ(paused->Count(Outcome::kPaused), static_cast<std::size_t>(kSchedules));
  ASSERT_EQ(paused->outcomes.size(), static_cast<std::size_t>(kSchedules));
  std::set<std::string> keys;
  for (const KeyOutcome& o : paused->outcomes) {
    EXPECT_EQ(o.outcome, Outcome::kPaused) << ToString(o.key);
    keys.insert(o.key.connection);
  }
  EXPECT_EQ(keys.size(), static_cast<std::size_t>(kSchedules));
  // Read-your-writes, through every engine.
  for (Engine* e : {a, b, c}) {
    auto st = e->GetStatus(all);
    ASSERT_TRUE(st.ok()) << st.status();
    ASSERT_EQ(st->size(), static_cast<std::size_t>(kSchedules));
    for (const ScheduleStatus& s : *st) {
      EXPECT_EQ(s.state, ScheduleState::kPaused) << ToString(s.key);
      EXPECT_FALSE(s.next_run.has_value()) << ToString(s.key);
    }
  }
  t0 = Clock::now();
  auto again = a->Pause(all);
  std::printf("pause again through a: %lld ms\n",
              static_cast<long long>(Ms(Clock::now() - t0).count()));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->Count(Outcome::kAlreadyPaused), static_cast<std::size_t>(kSchedules));
  std::this_thread::sleep_for(2500ms);  // slots every second would have come due meanwhile
  {
    std::map<std::string, int> after;
    for (const Call& call : log_.All()) {
      EXPECT_LE(call.slot, paused_wall + 200)
          << call.connection << " ran slot " << call.slot << " after the pause";
      if (call.slot > paused_wall - 200) ++after[call.connection];
    }
    for (const auto& [conn, n] : after) EXPECT_LE(n, 1) << conn;
  }

  // Start through b: one immediate run per schedule, at its anchor, once cluster-wide.
  const std::int64_t before_start = WallMs();
  t0 = Clock::now();
  auto started = b->Start(all);
  took = Clock::now() - t0;
  const std::int64_t after_start = WallMs();
  ASSERT_TRUE(started.ok()) << started.status();
  std::printf("start through a non-owner: %lld ms\n", static_cast<long long>(Ms(took).count()));
  EXPECT_EQ(started->Count(Outcome::kStarted), static_cast<std::size_t>(kSchedules));
  for (Engine* e : {a, c}) {
    auto st = e->GetStatus(all);
    ASSERT_TRUE(st.ok()) << st.status();
    for (const ScheduleStatus& s : *st) {
      EXPECT_EQ(s.state, ScheduleState::kStarted) << ToString(s.key);
      ASSERT_TRUE(s.next_run.has_value()) << ToString(s.key);
    }
  }
  auto in_start = [&](const Call& call) {
    return call.slot >= before_start && call.slot <= after_start;
  };
  ASSERT_TRUE(WaitFor(
      [&] {
        std::set<std::string> ran;
        for (const Call& call : log_.All()) {
          if (in_start(call)) ran.insert(call.connection);
        }
        return ran.size() == static_cast<std::size_t>(kSchedules);
      },
      5s))
      << "not every schedule ran at once";
  std::this_thread::sleep_for(2500ms);  // the grid's runs meanwhile
  {
    std::map<std::string, std::vector<std::int64_t>> anchors, later;
    for (const Call& call : log_.All()) {
      if (in_start(call)) {
        anchors[call.connection].push_back(call.slot);
      } else if (call.slot > after_start) {
        later[call.connection].push_back(call.slot);
      }
    }
    auto st = a->GetStatus(all);
    ASSERT_TRUE(st.ok()) << st.status();
    for (const ScheduleStatus& s : *st) {
      const auto& mine = anchors[s.key.connection];
      ASSERT_EQ(mine.size(), 1u) << s.key.connection << ": the immediate run, once";
      for (std::int64_t slot : later[s.key.connection]) {
        EXPECT_EQ((slot - mine[0]) % 1000, 0) << s.key.connection << ": off the start's grid";
      }
      EXPECT_GE(later[s.key.connection].size(), 1u) << s.key.connection << " ran on its grid";
    }
  }

  // Trigger through a: each key triggered (or already running), per key.
  auto triggered = a->Trigger(all, RunMode::kIncremental);
  ASSERT_TRUE(triggered.ok()) << triggered.status();
  EXPECT_EQ(triggered->Count(Outcome::kTriggered) + triggered->Count(Outcome::kAlreadyRunning),
            static_cast<std::size_t>(kSchedules));
  EXPECT_EQ(triggered->outcomes.size(), static_cast<std::size_t>(kSchedules));

  // A frequency, through an engine that does not hold the key's partition.
  std::string elsewhere;
  for (int i = 0; i < kSchedules && elsewhere.empty(); ++i) {
    if (!Loads(*a, PartitionOfConnection(Connection(i)))) elsewhere = Connection(i);
  }
  ASSERT_FALSE(elsewhere.empty());
  auto freq = a->UpdateFrequency(ScheduleKey{kIntegration, elsewhere, kSync, "base"}, "2s");
  ASSERT_TRUE(freq.ok()) << freq.status();
  EXPECT_EQ(*freq, 2000ms);
  for (Engine* e : {a, b, c}) {
    auto st = e->GetStatus(Target{kIntegration, elsewhere, {SyncSelector{kSync}}});
    ASSERT_TRUE(st.ok()) << st.status();
    ASSERT_EQ(st->size(), 1u);
    EXPECT_EQ((*st)[0].frequency, 2000ms);
    EXPECT_TRUE((*st)[0].frequency_overridden);
  }

  // A variant created and deleted through an engine that does not hold its partition.
  ScheduleKey variant;
  for (int i = 0; i < kSchedules && variant.integration.empty(); ++i) {
    ScheduleKey k{kIntegration, Connection(i), kSync, "v1"};
    if (!Loads(*a, cluster::PartitionOf(k, kPartitions))) variant = k;
  }
  ASSERT_FALSE(variant.integration.empty());
  auto created = a->CreateVariant(variant);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->key.variant, "v1");
  EXPECT_EQ(created->state, ScheduleState::kStarted);  // the sync auto-starts
  EXPECT_GT(created->id, 0u);
  auto twice = b->CreateVariant(variant);
  EXPECT_EQ(twice.status().code(), StatusCode::kAlreadyExists) << twice.status();
  const Target just_variant{kIntegration, variant.connection, {SyncSelector{kSync, "v1"}}};
  for (Engine* e : {a, b, c}) {
    auto st = e->GetStatus(just_variant);
    ASSERT_TRUE(st.ok()) << st.status();
    ASSERT_EQ(st->size(), 1u);
    EXPECT_EQ((*st)[0].id, created->id);
  }
  Status deleted = a->DeleteVariant(variant);
  ASSERT_TRUE(deleted.ok()) << deleted;
  Status deleted_again = a->DeleteVariant(variant);
  EXPECT_EQ(deleted_again.code(), StatusCode::kNotFound) << deleted_again;
  EXPECT_EQ(deleted_again.subject(), StatusSubject::kVariant) << deleted_again;
  for (Engine* e : {a, b, c}) {
    auto st = e->GetStatus(just_variant);
    EXPECT_EQ(st.status().code(), StatusCode::kNotFound) << st.status();
  }

  // Bad input through a non-owner: one engine's errors, nothing changed, nothing handed over.
  auto no_variant = a->Pause(Target{kIntegration, std::nullopt, {SyncSelector{kSync, "nope"}}});
  EXPECT_EQ(no_variant.status().code(), StatusCode::kNotFound) << no_variant.status();
  EXPECT_EQ(no_variant.status().subject(), StatusSubject::kVariant) << no_variant.status();
  EXPECT_NE(no_variant.status().message().find("\"nope\""), std::string::npos)
      << no_variant.status();
  auto no_conn = c->Start(Target{kIntegration, "no-such-connection", {}});
  EXPECT_EQ(no_conn.status().code(), StatusCode::kNotFound) << no_conn.status();
  EXPECT_EQ(no_conn.status().subject(), StatusSubject::kConnection) << no_conn.status();
  auto no_sync = b->Trigger(Target{kIntegration, std::nullopt, {SyncSelector{"other"}}});
  EXPECT_EQ(no_sync.status().code(), StatusCode::kNotFound) << no_sync.status();
  EXPECT_EQ(no_sync.status().subject(), StatusSubject::kSync) << no_sync.status();
  auto malformed = b->Pause(Target{kIntegration, std::nullopt, {SyncSelector{"bad name!"}}});
  EXPECT_EQ(malformed.status().code(), StatusCode::kInvalidArgument) << malformed.status();
  auto bad_freq =
      c->UpdateFrequency(ScheduleKey{kIntegration, elsewhere, kSync, "base"}, "every 1ms");
  EXPECT_EQ(bad_freq.status().code(), StatusCode::kInvalidArgument) << bad_freq.status();
  for (Engine* e : {a, b, c}) {
    auto st = e->GetStatus(all);
    ASSERT_TRUE(st.ok()) << st.status();
    for (const ScheduleStatus& s : *st) {
      EXPECT_EQ(s.state, ScheduleState::kStarted) << ToString(s.key);
    }
  }
  Db db(uri_);
  EXPECT_EQ(db.Rows("SELECT count(*) FROM syncsched_cluster.commands")[0][0], "0")
      << "answered commands are deleted; refused ones never written";
  Stop("a");
  Stop("b");
  Stop("c");
  std::vector<Call> calls = log_.All();
  ExpectEachSlotCalledOnce(calls);
  // The deleted variant's runs left the history with it.
  std::erase_if(
      calls, [&](const Call& call) { return UidOf(call.run_id) == std::to_string(created->id); });
  ExpectHistoryConsistent(db, calls);
}

// A partition whose owner is gone and that nobody can take (held by a node that does not exist,
// with a lease that does not end): the command waits for its deadline (lease + 2 s), cancels that
// part, and answers UNAVAILABLE naming it; nothing of that part is applied, then or later, while
// the other partitions' keys are (and the message says so).
TEST_F(EngineClusterTest, ACommandNobodyAppliesIsCancelledAtItsDeadlineAndAnsweredUnavailable) {
  constexpr int kSchedules = 32;
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, kSchedules));
  const int p = PartitionOfConnection(Connection(0));
  std::set<std::string> of_p;
  for (int i = 0; i < kSchedules; ++i) {
    if (PartitionOfConnection(Connection(i)) == p) of_p.insert(Connection(i));
  }
  Db db(uri_);
  ASSERT_NO_FATAL_FAILURE(TakeAway(db, p));
  ASSERT_TRUE(WaitFor([&] { return !Loads(*a, p); }, 10s));
  const Target all{kIntegration, std::nullopt, {SyncSelector{kSync}}};
  auto t0 = Clock::now();
  auto paused = a->Pause(all);
  auto took = Clock::now() - t0;
  std::printf("answered after %lld ms: %s\n", static_cast<long long>(Ms(took).count()),
              paused.status().ToString().c_str());
  ASSERT_FALSE(paused.ok());
  EXPECT_EQ(paused.status().code(), StatusCode::kUnavailable) << paused.status();
  EXPECT_NE(paused.status().message().find("partition(s) " + std::to_string(p)), std::string::npos)
      << paused.status();
  EXPECT_NE(paused.status().message().find("nothing was applied to their " +
                                           std::to_string(of_p.size()) + " schedule(s)"),
            std::string::npos)
      << paused.status();
  auto check = [&] {
    auto st = a->GetStatus(all);
    ASSERT_TRUE(st.ok()) << st.status();
    ASSERT_EQ(st->size(), static_cast<std::size_t>(kSchedules));
    for (const ScheduleStatus& s : *st) {
      EXPECT_EQ(s.state,
                of_p.count(s.key.connection) ? ScheduleState::kStarted : ScheduleState::kPaused)
          << ToString(s.key);
    }
  };
  check();
  EXPECT_EQ(db.Rows("SELECT count(*) FROM syncsched_cluster.command_parts WHERE state = 0")[0][0],
            "0");
  // Given back: a takes the partition, loads it, finds nothing pending; its schedules run on.
  ASSERT_NO_FATAL_FAILURE(GiveBack(db, p));
  ASSERT_TRUE(WaitFor([&] { return Loads(*a, p); }, 10s));
  auto back = Clock::now();
  check();
  ASSERT_TRUE(WaitFor(
      [&] {
        for (const Call& call : log_.All()) {
          if (call.at > back && of_p.count(call.connection) != 0) return true;
        }
        return false;
      },
      5s));
  Stop("a");
  ExpectEachSlotCalledOnce(log_.All());
}

// A command sent while the owner of some of its partitions is being killed (a child process,
// SIGKILL): the survivor takes them over and applies the pending part before it dispatches
// anything there, so the command is answered as one engine would (or UNAVAILABLE with nothing
// applied to those keys, had the takeover been late): never lost after an acknowledgement, and no
// slot runs twice.
TEST_F(EngineClusterTest, ACommandWhileItsOwnerIsKilledIsAppliedByTheTakerOrAnsweredUnavailable) {
  constexpr int kSchedules = 64;
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, kSchedules));
  Child child(SYNCSCHED_CLUSTER_ENGINE_BIN,
              {uri_, "child", std::to_string(kLease.count()), std::to_string(kPartitions), "100"},
              &log_);
  ASSERT_TRUE(child.WaitForLine("ready", 20s));
  Db db(uri_);
  std::int64_t child_id = db.NodeId("child");
  ASSERT_TRUE(WaitFor(
      [&] {
        int on_child = 0;
        for (const auto& [p, o] : db.Owners()) on_child += o == child_id;
        return on_child == kPartitions / 2 && internal::EngineAccess::LoadedPartitions(*a).size() ==
                                                  static_cast<std::size_t>(kPartitions / 2);
      },
      10s));
  ASSERT_TRUE(WaitFor([&] { return child.runs() > 0; }, 10s));
  std::this_thread::sleep_for(1500ms);
  std::set<std::string> of_child;
  for (int i = 0; i < kSchedules; ++i) {
    if (!Loads(*a, PartitionOfConnection(Connection(i)))) of_child.insert(Connection(i));
  }
  ASSERT_FALSE(of_child.empty());
  const Target all{kIntegration, std::nullopt, {SyncSelector{kSync}}};
  child.Signal(SIGKILL);
  auto t0 = Clock::now();
  auto paused = a->Pause(all);
  auto took = Clock::now() - t0;
  const std::int64_t ack_wall = WallMs();
  child.Wait();
  std::printf("pause while the owner was killed: %lld ms, %s\n",
              static_cast<long long>(Ms(took).count()), paused.status().ToString().c_str());
  auto st = a->GetStatus(all);
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_EQ(st->size(), static_cast<std::size_t>(kSchedules));
  if (paused.ok()) {
    EXPECT_EQ(paused->Count(Outcome::kPaused), static_cast<std::size_t>(kSchedules));
    for (const ScheduleStatus& s : *st) {
      EXPECT_EQ(s.state, ScheduleState::kPaused) << ToString(s.key);
    }
    std::this_thread::sleep_for(2500ms);
    for (const Call& call : log_.All()) {
      EXPECT_LE(call.slot, ack_wall + 200) << call.connection << " on " << call.node << " ran slot "
                                           << call.slot << " after the pause was acknowledged";
    }
  } else {
    EXPECT_EQ(paused.status().code(), StatusCode::kUnavailable) << paused.status();
    for (const ScheduleStatus& s : *st) {
      if (of_child.count(s.key.connection) != 0) {
        EXPECT_EQ(s.state, ScheduleState::kStarted) << ToString(s.key) << ": cancelled part";
      }
    }
  }
  Stop("a");
  std::vector<Call> calls = log_.All();
  ExpectEachSlotCalledOnce(calls);
  ExpectHistoryConsistent(db, calls);
}

// Issue 13, catalog commands through any engine: three engines, none holding every partition. A
// sync defined through b, connections added through c, a changed frequency through a,
// connections deleted through b: each answered as one engine would, read back through every
// engine as soon as it is answered (every live engine has applied the catalog by then), the
// schedules created, regridded and deleted by the owners of their partitions, each slot run once.
TEST_F(EngineClusterTest, CatalogCommandsThroughAnyEngineReachEveryPartition) {
  constexpr int kConnections = 30;
  Engine* a = Open("a");
  Engine* b = Open("b");
  Engine* c = Open("c");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(WaitFor([&] { return Balanced({a, b, c}); }, 15s)) << "not balanced";
  for (Engine* e : {a, b, c}) ASSERT_FALSE(HoldsAll(*e));

  SyncDefinition def;
  def.name = kSync;
  def.frequency = "1s";
  Status defined = b->DefineSync(kIntegration, def);
  ASSERT_TRUE(defined.ok()) << defined;
  auto t0 = Clock::now();
  for (int i = 0; i < kConnections; ++i) {
    Status s = c->AddConnection(kIntegration, Connection(i));
    ASSERT_TRUE(s.ok()) << Connection(i) << ": " << s;
  }
  std::printf("%d connections added through c: %lld ms\n", kConnections,
              static_cast<long long>(Ms(Clock::now() - t0).count()));
  const std::int64_t added_wall = WallMs();
  const Target all{kIntegration, std::nullopt, {SyncSelector{kSync}}};
  for (Engine* e : {a, b, c}) {
    auto st = e->GetStatus(all);
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->size(), static_cast<std::size_t>(kConnections));
    for (const ScheduleStatus& s : *st) {
      EXPECT_EQ(s.state, ScheduleState::kStarted) << ToString(s.key);
      EXPECT_EQ(s.frequency, 1000ms) << ToString(s.key);
    }
  }
  Status twice = a->AddConnection(kIntegration, Connection(0));
  EXPECT_EQ(twice.code(), StatusCode::kAlreadyExists) << twice;
  Status redefined = c->DefineSync(kIntegration, def);
  EXPECT_TRUE(redefined.ok()) << "the same definition again: " << redefined;
  // Each schedule runs, on the engine that holds its partition.
  ASSERT_TRUE(WaitFor(
      [&] {
        std::set<std::string> ran;
        for (const Call& call : log_.All()) ran.insert(call.connection);
        return ran.size() == static_cast<std::size_t>(kConnections);
      },
      5s))
      << "not every added connection ran";
  for (const Call& call : log_.All()) {
    EXPECT_GE(call.slot, added_wall - 10000) << call.connection;
  }

  // A changed frequency through a: every engine reads it back at once; the owners regrid.
  def.frequency = "2s";
  Status changed = a->DefineSync(kIntegration, def);
  ASSERT_TRUE(changed.ok()) << changed;
  for (Engine* e : {a, b, c}) {
    auto st = e->GetStatus(all);
    ASSERT_TRUE(st.ok()) << st.status();
    ASSERT_EQ(st->size(), static_cast<std::size_t>(kConnections));
    for (const ScheduleStatus& s : *st) EXPECT_EQ(s.frequency, 2000ms) << ToString(s.key);
    auto got = e->GetSyncDefinition(kIntegration, kSync);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->frequency, "2s");
    EXPECT_EQ(e->GetSyncDefinition(kIntegration, "nope").status().code(), StatusCode::kNotFound);
  }

  // Connections deleted through b: gone from every engine once answered; no run of theirs begins
  // after that.
  std::set<std::string> deleted;
  for (int i = 0; i < kConnections; i += 3) {
    Status s = b->DeleteConnection(kIntegration, Connection(i));
    ASSERT_TRUE(s.ok()) << Connection(i) << ": " << s;
    deleted.insert(Connection(i));
  }
  const auto deleted_at = Clock::now();
  for (Engine* e : {a, b, c}) {
    auto st = e->GetStatus(all);
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->size(), static_cast<std::size_t>(kConnections) - deleted.size());
    for (const ScheduleStatus& s : *st) EXPECT_EQ(deleted.count(s.key.connection), 0u);
    auto one = e->GetStatus(Target{kIntegration, Connection(0), {}});
    EXPECT_EQ(one.status().code(), StatusCode::kNotFound) << one.status();
  }
  Status again = c->DeleteConnection(kIntegration, Connection(0));
  EXPECT_EQ(again.code(), StatusCode::kNotFound) << again;
  std::this_thread::sleep_for(2500ms);
  for (const Call& call : log_.All()) {
    if (deleted.count(call.connection) != 0) {
      EXPECT_LT(call.at, deleted_at) << call.connection << " ran after its deletion was answered";
    }
  }
  Db db(uri_);
  EXPECT_EQ(db.Rows("SELECT count(*) FROM syncsched.schedules")[0][0],
            std::to_string(kConnections - deleted.size()));
  // The catalog's log: one row per connection added (kind 2) and deleted (kind 3), each at the
  // version its commit counted; every live engine has applied the last version.
  EXPECT_EQ(db.Rows("SELECT count(*) FILTER (WHERE kind = 2), count(*) FILTER (WHERE kind = 3), "
                    "count(DISTINCT version) FROM syncsched_cluster.catalog_log")[0],
            (std::vector<std::string>{std::to_string(kConnections), std::to_string(deleted.size()),
                                      std::to_string(kConnections + deleted.size())}));
  EXPECT_EQ(
      db.Rows("SELECT count(*) FROM syncsched_cluster.nodes AS n, syncsched_cluster.meta AS m "
              "WHERE m.key = 'catalog_version' AND n.catalog_version = m.value")[0][0],
      "3");
  Stop("a");
  Stop("b");
  Stop("c");
  std::vector<Call> calls = log_.All();
  ExpectEachSlotCalledOnce(calls);
  std::erase_if(calls, [&](const Call& call) { return deleted.count(call.connection) != 0; });
  ExpectHistoryConsistent(db, calls);
}

// A catalog change made while a partition has no owner that can act (held by a node that does
// not exist) reaches that partition when an engine takes it: the deleted connection's schedule is
// deleted, never run, and the added connection's base schedule is created there and runs.
TEST_F(EngineClusterTest, ACatalogChangeReachesAPartitionWhenItIsTakenOver) {
  constexpr int kSchedules = 32;
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, kSchedules));
  const int p = PartitionOfConnection(Connection(0));
  std::string added;
  for (int i = kSchedules; added.empty(); ++i) {
    if (PartitionOfConnection(Connection(i)) == p) added = Connection(i);
  }
  Db db(uri_);
  ASSERT_NO_FATAL_FAILURE(TakeAway(db, p));
  ASSERT_TRUE(WaitFor([&] { return !Loads(*a, p); }, 10s));
  Status del = a->DeleteConnection(kIntegration, Connection(0));
  ASSERT_TRUE(del.ok()) << del;
  const auto deleted_at = Clock::now();
  Status add = a->AddConnection(kIntegration, added);
  ASSERT_TRUE(add.ok()) << add;
  const std::string of = "SELECT count(*) FROM syncsched.schedules WHERE connection = '";
  EXPECT_EQ(db.Rows(of + Connection(0) + "'::bytea")[0][0], "1") << "nobody holds it yet";
  EXPECT_EQ(db.Rows(of + added + "'::bytea")[0][0], "0") << "nobody holds its partition yet";

  ASSERT_NO_FATAL_FAILURE(GiveBack(db, p));
  ASSERT_TRUE(WaitFor([&] { return Loads(*a, p); }, 10s));
  ASSERT_TRUE(WaitFor([&] { return db.Rows(of + added + "'::bytea")[0][0] == "1"; }, 5s))
      << "the added connection's schedule was never created";
  EXPECT_EQ(db.Rows(of + Connection(0) + "'::bytea")[0][0], "0");
  auto st = a->GetStatus(Target{kIntegration, added, {}});
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_EQ(st->size(), 1u);
  EXPECT_EQ((*st)[0].state, ScheduleState::kStarted);
  ASSERT_TRUE(WaitFor(
      [&] {
        for (const Call& call : log_.All()) {
          if (call.connection == added) return true;
        }
        return false;
      },
      5s))
      << "the added connection never ran";
  Stop("a");
  for (const Call& call : log_.All()) {
    if (call.connection == Connection(0)) {
      EXPECT_LT(call.at, deleted_at);
    }
  }
  ExpectEachSlotCalledOnce(log_.All());
}

// An engine whose catalog is older than the catalog's log reaches back (the log's old rows were
// deleted) reads the whole catalog instead: here a change is written straight into the database
// with no row of the log, as if its rows had been deleted, and the log declared whole only from
// the next version on. Both engines apply it anyway (through the incremental path they would see
// nothing): the added connection's schedule is created by its partition's owner, the deleted
// one's schedule deleted, each read back through both.
TEST_F(EngineClusterTest, AnEngineBehindTheCatalogsLogReadsTheWholeCatalog) {
  constexpr int kSchedules = 12;
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, kSchedules));
  Engine* b = Open("b");
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(WaitFor([&] { return Balanced({a, b}); }, 15s)) << "not balanced";
  Status written = syncsched::testing::PgExec(
      uri_,
      "BEGIN; INSERT INTO syncsched.connections VALUES ('it'::bytea, 'late'::bytea); "
      "DELETE FROM syncsched.connections WHERE connection = '" +
          Connection(0) +
          "'::bytea; "
          "UPDATE syncsched_cluster.meta SET value = value + 1 WHERE key = 'catalog_version'; "
          "UPDATE syncsched_cluster.meta SET value = (SELECT value + 1 FROM "
          "syncsched_cluster.meta WHERE key = 'catalog_version') WHERE key = 'catalog_log_from'; "
          "NOTIFY syncsched_commands; COMMIT");
  ASSERT_TRUE(written.ok()) << written;
  const Target all{kIntegration, std::nullopt, {SyncSelector{kSync}}};
  auto applied = [&](Engine& e) {
    auto st = e.GetStatus(all);
    if (!st.ok()) return false;
    std::set<std::string> seen;
    for (const ScheduleStatus& s : *st) seen.insert(s.key.connection);
    return seen.count("late") == 1 && seen.count(Connection(0)) == 0 &&
           seen.size() == static_cast<std::size_t>(kSchedules);
  };
  EXPECT_TRUE(WaitFor([&] { return applied(*a) && applied(*b); }, 5s));
  Db db(uri_);
  EXPECT_TRUE(WaitFor(
      [&] {
        return db.Rows("SELECT count(*) FROM syncsched.schedules WHERE connection = '" +
                       Connection(0) + "'::bytea")[0][0] == "0" &&
               db.Rows(
                   "SELECT count(*) FROM syncsched.schedules WHERE connection = "
                   "'late'::bytea")[0][0] == "1";
      },
      5s));
  EXPECT_EQ(b->GetStatus(Target{kIntegration, Connection(0), {}}).status().code(),
            StatusCode::kNotFound);
}

// A load that read a partition before a connection's deletion and is merged after it must not
// bring the connection back (helper-35 saw its run start 64 ms after the deletion was answered).
// The load is held between its read and its merge while the connection is deleted: through the
// other engine (which answers once the loading one has applied the deletion), then through the
// loading engine itself.
TEST_F(EngineClusterTest, ALoadReadBeforeADeletionBringsNothingOfItBack) {
  constexpr int kSchedules = 48;
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, kSchedules));
  Engine* b = Open("b");
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(WaitFor([&] { return Balanced({a, b}); }, 15s)) << "not balanced";
  Db db(uri_);
  std::set<int> used;
  for (Engine* through : {b, a}) {
    SCOPED_TRACE(through == a ? "deleted through the loading engine" : "through the other");
    // A partition of a's with a connection in it.
    int p = -1;
    std::string victim;
    for (int i = 0; i < kSchedules && p < 0; ++i) {
      int q = PartitionOfConnection(Connection(i));
      if (used.count(q) == 0 && Loads(*a, q)) {
        p = q;
        victim = Connection(i);
      }
    }
    ASSERT_GE(p, 0);
    used.insert(p);
    // Shared with the hook, which the cluster thread may still hold a copy of after this round.
    // Once merged, before the catalog's sync that follows a load, the hook asks a for the victim:
    // a load that brought it back would show it there.
    struct Gate {
      std::mutex mu;
      std::condition_variable cv;
      bool held = false, release = false, merged = false;
      Status victim_after_merge;
    };
    auto gate = std::make_shared<Gate>();
    internal::EngineAccess::SetLoadHook(
        *a, [gate, p, a, victim](const std::vector<int>& parts, bool merged) {
          if (std::find(parts.begin(), parts.end(), p) == parts.end()) return;
          if (merged) {
            Status seen = a->GetStatus(Target{kIntegration, victim, {}}).status();
            std::lock_guard lock(gate->mu);
            if (gate->release && !gate->merged) {
              gate->merged = true;
              gate->victim_after_merge = seen;
              gate->cv.notify_all();
            }
            return;
          }
          std::unique_lock lock(gate->mu);
          gate->held = true;
          gate->cv.notify_all();
          gate->cv.wait_for(lock, 20s, [&] { return gate->release; });
        });
    // p taken from a and freed at once: a, below its share, claims and loads it again.
    ASSERT_NO_FATAL_FAILURE(GiveBack(db, p, /*new_epoch=*/true));
    {
      std::unique_lock lock(gate->mu);
      ASSERT_TRUE(gate->cv.wait_for(lock, 15s, [&] { return gate->held; }))
          << "a never loaded it again";
    }
    Status deleted = through->DeleteConnection(kIntegration, victim);
    const auto deleted_at = Clock::now();
    {
      std::lock_guard lock(gate->mu);
      gate->release = true;
    }
    gate->cv.notify_all();
    ASSERT_TRUE(deleted.ok()) << deleted;
    {
      std::unique_lock lock(gate->mu);
      ASSERT_TRUE(gate->cv.wait_for(lock, 15s, [&] { return gate->merged; })) << "never merged";
      EXPECT_EQ(gate->victim_after_merge.code(), StatusCode::kNotFound)
          << "the load brought the deleted connection back: " << gate->victim_after_merge;
    }
    ASSERT_TRUE(WaitFor([&] { return Loads(*a, p); }, 10s));
    std::this_thread::sleep_for(1500ms);  // its slot every second would have come
    internal::EngineAccess::SetLoadHook(*a, nullptr);
    for (Engine* e : {a, b}) {
      EXPECT_EQ(e->GetStatus(Target{kIntegration, victim, {}}).status().code(),
                StatusCode::kNotFound);
    }
    EXPECT_EQ(db.Rows("SELECT count(*) FROM syncsched.schedules WHERE connection = '" + victim +
                      "'::bytea")[0][0],
              "0");
    for (const Call& call : log_.All()) {
      if (call.connection == victim) {
        EXPECT_LT(call.at, deleted_at) << victim << " ran after its deletion was answered";
      }
    }
    ASSERT_TRUE(WaitFor([&] { return Balanced({a, b}); }, 15s)) << "not balanced again";
  }
  Stop("a");
  Stop("b");
  ExpectEachSlotCalledOnce(log_.All());
}

// An integration's limit set through one engine bounds the runs on each engine once answered
// (a limit is per engine: docs/cluster.md): before it, an engine runs several of the
// integration's slow runs at once; after it, one at a time, whichever engine it went through.
TEST_F(EngineClusterTest, ALimitSetThroughOneEngineBoundsTheRunsOfEachEngine) {
  constexpr int kConnections = 24;
  Engine* a = Open("a");
  Engine* b = Open("b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(WaitFor([&] { return Balanced({a, b}); }, 15s)) << "not balanced";
  // Per engine: runs in flight now, and the most seen at once since the last reset.
  struct InFlight {
    std::mutex mu;
    int now = 0, most = 0;
  };
  std::map<Engine*, std::shared_ptr<InFlight>> seen;
  for (Engine* e : {a, b}) {
    auto f = std::make_shared<InFlight>();
    seen[e] = f;
    ASSERT_TRUE(e->RegisterCallback(kIntegration, kSync, [f](const RunContext&) {
                   {
                     std::lock_guard lock(f->mu);
                     f->most = std::max(f->most, ++f->now);
                   }
                   std::this_thread::sleep_for(250ms);
                   std::lock_guard lock(f->mu);
                   --f->now;
                   return RunReport{};
                 }).ok());
  }
  auto most = [&](Engine* e) {
    std::lock_guard lock(seen[e]->mu);
    return seen[e]->most;
  };
  SyncDefinition def;
  def.name = kSync;
  def.frequency = "1s";
  ASSERT_TRUE(a->DefineSync(kIntegration, def).ok());
  for (int i = 0; i < kConnections; ++i) {
    ASSERT_TRUE(a->AddConnection(kIntegration, Connection(i)).ok()) << Connection(i);
  }
  ASSERT_TRUE(WaitFor([&] { return most(a) > 1 && most(b) > 1; }, 5s))
      << "without a limit each engine runs several at once: a " << most(a) << ", b " << most(b);

  Status limited = a->SetIntegrationLimits(kIntegration, IntegrationLimits{1});
  ASSERT_TRUE(limited.ok()) << limited;
  // The runs dispatched before the limit (some waiting for a worker) finish; from then on, one
  // at a time.
  ASSERT_TRUE(WaitFor(
      [&] { return a->GetMetrics().runs_in_flight <= 1 && b->GetMetrics().runs_in_flight <= 1; },
      10s))
      << "the runs dispatched before the limit never drained";
  for (Engine* e : {a, b}) {
    std::lock_guard lock(seen[e]->mu);
    seen[e]->most = seen[e]->now;
  }
  std::this_thread::sleep_for(2500ms);
  EXPECT_LE(most(a), 1) << "the engine the limit went through";
  EXPECT_LE(most(b), 1) << "the other engine";
  EXPECT_GE(most(a) + most(b), 1) << "nothing ran";
  Stop("a");
  Stop("b");
}

// A node that has not applied a catalog command by the receiver's deadline (lease + 2 s) loses
// its partitions then, so that it cannot run under the old catalog when it comes back (it could
// otherwise renew a lapsed lease at the same epoch and dispatch a deleted connection's slot:
// helper-36's B2). The node here is a row of `nodes` with no process behind it, live for an hour
// and never applying anything, holding the partition of the connection deleted.
TEST_F(EngineClusterTest, ANodeBehindTheCatalogLosesItsPartitionsAtTheDeadline) {
  constexpr int kSchedules = 32;
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, kSchedules));
  const int p = PartitionOfConnection(Connection(0));
  const std::string ps = std::to_string(p);
  Db db(uri_);
  ASSERT_EQ(db.Rows("INSERT INTO syncsched_cluster.nodes(id, name, started_at, heartbeat_at, "
                    "expires_at, catalog_version) VALUES (999999, 'behind', now(), now(), now() "
                    "+ interval '1 hour', 0) RETURNING id")
                .size(),
            1u);
  ASSERT_NO_FATAL_FAILURE(TakeAway(db, p));  // owner 999999, the node above
  const std::string epoch =
      db.Rows("SELECT epoch FROM syncsched_cluster.partitions WHERE partition = " + ps)[0][0];
  ASSERT_TRUE(WaitFor([&] { return !Loads(*a, p); }, 10s));
  // The node could pass the fence for p before the command.
  Status before =
      syncsched::testing::PgExec(uri_, "BEGIN; SELECT syncsched_cluster.fence(999999, ARRAY[" + ps +
                                           "], ARRAY[" + epoch + "]::int8[]); COMMIT");
  ASSERT_TRUE(before.ok()) << before;

  const auto t0 = Clock::now();
  Status del = a->DeleteConnection(kIntegration, Connection(0));
  const auto answered = Clock::now();
  ASSERT_TRUE(del.ok()) << del;
  EXPECT_GE(answered - t0, kLease + 2s) << "answered before the node behind was given up on";
  EXPECT_EQ(db.Rows("SELECT coalesce(owner, 0) FROM syncsched_cluster.partitions WHERE "
                    "partition = " +
                    ps)[0][0],
            "0")
      << "the node behind still owns the deleted connection's partition";
  EXPECT_EQ(a->GetMetrics().cluster_catalog_revocations, 1u);
  Status after =
      syncsched::testing::PgExec(uri_, "BEGIN; SELECT syncsched_cluster.fence(999999, ARRAY[" + ps +
                                           "], ARRAY[" + epoch + "]::int8[]); COMMIT");
  EXPECT_FALSE(after.ok()) << "the node behind can still commit for the partition";
  EXPECT_NE(after.message().find("fenced"), std::string::npos) << after;
  // The node's lease renewal (the keeper's: its partitions, expired or not, while it owns them)
  // finds nothing to renew.
  EXPECT_TRUE(db.Rows("UPDATE syncsched_cluster.partitions SET expires_at = now() + interval "
                      "'1 hour' WHERE owner = 999999 RETURNING partition")
                  .empty());

  // The node goes; a claims p and loads it under the new catalog: the deleted connection's
  // schedule is deleted, never loaded, never run.
  ASSERT_EQ(db.Rows("DELETE FROM syncsched_cluster.nodes WHERE id = 999999 RETURNING id").size(),
            1u);
  ASSERT_TRUE(WaitFor([&] { return Loads(*a, p); }, 10s)) << "a never claimed the partition";
  EXPECT_EQ(db.Rows("SELECT count(*) FROM syncsched.schedules WHERE connection = '" +
                    Connection(0) + "'::bytea")[0][0],
            "0");
  EXPECT_EQ(a->GetStatus(Target{kIntegration, Connection(0), {}}).status().code(),
            StatusCode::kNotFound);
  Stop("a");
  for (const Call& call : log_.All()) {
    if (call.connection == Connection(0)) {
      EXPECT_LT(call.at, t0);
    }
  }
  ExpectEachSlotCalledOnce(log_.All());
}

}  // namespace
}  // namespace syncsched
