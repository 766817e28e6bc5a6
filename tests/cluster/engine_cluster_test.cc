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

#include "cluster/lease_keeper.h"
#include "cluster/partition.h"
#include "core/engine_access.h"
#include "store/pg_store.h"
#include "support/pg_database_test.h"
#include "syncsched/engine.h"
#include "syncsched/options.h"

extern char** environ;

namespace syncsched {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using syncsched::testing::PgDatabaseTest;

constexpr int kPartitions = 16;
constexpr auto kLease = 1500ms;
constexpr const char* kIntegration = "it";
constexpr const char* kSync = "s";

std::int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool WaitFor(const std::function<bool()>& ready, Clock::duration timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (ready()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);  // polling the database or the logs: no event to wait on
  }
}

// ---- Database ----

class Db {
 public:
  explicit Db(const std::string& uri) : conn_(PQconnectdb(uri.c_str())) {}
  ~Db() { PQfinish(conn_); }
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  std::vector<std::vector<std::string>> Rows(const std::string& sql) {
    std::vector<std::vector<std::string>> out;
    PGresult* r = PQexec(conn_, sql.c_str());
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
      for (int i = 0; i < PQntuples(r); ++i) {
        out.emplace_back();
        for (int j = 0; j < PQnfields(r); ++j) out.back().emplace_back(PQgetvalue(r, i, j));
      }
    } else {
      ADD_FAILURE() << sql << ": " << PQresultErrorMessage(r);
    }
    PQclear(r);
    return out;
  }
  // partition -> owner node id (0: free).
  std::map<int, std::int64_t> Owners() {
    std::map<int, std::int64_t> out;
    for (const auto& r :
         Rows("SELECT partition, coalesce(owner, 0) FROM syncsched_cluster.partitions")) {
      out[std::stoi(r[0])] = std::stoll(r[1]);
    }
    return out;
  }
  std::int64_t NodeId(const std::string& name) {
    auto rows = Rows("SELECT id FROM syncsched_cluster.nodes WHERE name = '" + name + "'");
    return rows.empty() ? 0 : std::stoll(rows[0][0]);
  }

 private:
  PGconn* conn_;
};

// ---- What the callbacks saw ----

struct Call {
  std::string node;
  std::string run_id;
  std::string connection;  // in-process calls only
  std::int64_t slot = 0;
  Clock::time_point at{};    // in-process calls only
  std::int64_t wall_ms = 0;  // in-process calls only
};

class CallLog {
 public:
  void Add(Call c) {
    std::lock_guard lock(mu_);
    calls_.push_back(std::move(c));
  }
  std::vector<Call> All() {
    std::lock_guard lock(mu_);
    return calls_;
  }

 private:
  std::mutex mu_;
  std::vector<Call> calls_;
};

// The uid part of a run id ("<uid>-<slot>" or "<uid>-<slot>-<n>").
std::string UidOf(const std::string& run_id) { return run_id.substr(0, run_id.find('-')); }

// No run id and no (schedule, slot) called twice.
void ExpectEachSlotCalledOnce(const std::vector<Call>& calls) {
  std::map<std::string, std::string> ids;                             // run id -> node
  std::map<std::pair<std::string, std::int64_t>, std::string> slots;  // (uid, slot) -> node
  for (const Call& c : calls) {
    auto [it, fresh] = ids.emplace(c.run_id, c.node);
    EXPECT_TRUE(fresh) << "run " << c.run_id << " called on " << it->second << " and " << c.node;
    auto [st, fresh_slot] = slots.emplace(std::pair{UidOf(c.run_id), c.slot}, c.node);
    EXPECT_TRUE(fresh_slot) << "schedule " << UidOf(c.run_id) << " slot " << c.slot << " called on "
                            << st->second << " and " << c.node;
  }
}

// The history in the database: no (schedule, slot) recorded twice, and every run a callback saw
// is recorded (as run, or as interrupted when its engine lost it in flight).
void ExpectHistoryConsistent(Db& db, const std::vector<Call>& calls) {
  auto dups = db.Rows(
      "SELECT schedule_uid, slot_ms, count(*) FROM syncsched.history WHERE place >= 0 "
      "GROUP BY 1, 2 HAVING count(*) > 1");
  EXPECT_TRUE(dups.empty()) << dups.size() << " slots recorded twice, e.g. schedule "
                            << (dups.empty() ? "" : dups[0][0] + " slot " + dups[0][1]);
  auto id_dups = db.Rows(
      "SELECT convert_from(run_id, 'UTF8'), count(*) FROM syncsched.history WHERE place >= 0 "
      "GROUP BY 1 HAVING count(*) > 1");
  EXPECT_TRUE(id_dups.empty()) << "run " << (id_dups.empty() ? "" : id_dups[0][0])
                               << " recorded twice";
  std::set<std::string> recorded;
  for (const auto& r :
       db.Rows("SELECT convert_from(run_id, 'UTF8') FROM syncsched.history WHERE place >= 0")) {
    recorded.insert(r[0]);
  }
  std::size_t missing = 0;
  std::string example;
  for (const Call& c : calls) {
    if (recorded.count(c.run_id) == 0) {
      ++missing;
      example = c.run_id + " (" + c.node + ")";
    }
  }
  EXPECT_EQ(missing, 0u) << "runs called but not in the history, e.g. " << example;
}

// ---- A child process running syncsched_cluster_engine ----

class Child {
 public:
  Child(const std::vector<std::string>& args, CallLog* log) : log_(log) {
    int fds[2];
    if (::pipe(fds) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    posix_spawn_file_actions_addclose(&actions, fds[1]);
    std::string bin = SYNCSCHED_CLUSTER_ENGINE_BIN;
    std::vector<std::string> copy = args;
    std::vector<char*> argv{bin.data()};
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, bin.c_str(), &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    // Drains its output continuously (a full pipe would block its callbacks).
    reader_ = std::thread([this, fd = fds[0]] { Read(fd); });
  }
  ~Child() {
    Signal(SIGKILL);
    Wait();
    if (reader_.joinable()) reader_.join();
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  bool WaitForLine(const std::string& line, Clock::duration timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return lines_.count(line) != 0 || eof_; }) &&
           lines_.count(line) != 0;
  }
  std::size_t runs() {
    std::lock_guard lock(mu_);
    return runs_;
  }
  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  int Wait() {
    if (pid_ <= 0) return -1;
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  void Read(int fd) {
    std::string buffer;
    char buf[4096];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) break;
      buffer.append(buf, static_cast<std::size_t>(n));
      for (auto nl = buffer.find('\n'); nl != std::string::npos; nl = buffer.find('\n')) {
        std::string line = buffer.substr(0, nl);
        buffer.erase(0, nl + 1);
        if (line.rfind("run ", 0) == 0) {
          std::istringstream in(line.substr(4));
          Call c;
          in >> c.node >> c.run_id >> c.slot;
          log_->Add(c);
          std::lock_guard lock(mu_);
          ++runs_;
        } else {
          std::lock_guard lock(mu_);
          lines_.insert(line);
        }
        cv_.notify_all();
      }
    }
    ::close(fd);
    std::lock_guard lock(mu_);
    eof_ = true;
    cv_.notify_all();
  }

  CallLog* log_;
  pid_t pid_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> lines_;
  std::size_t runs_ = 0;
  bool eof_ = false;
};

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

  Engine* Open(const std::string& node) {
    auto e = Engine::Open(ClusterEngineOptions(node));
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

  // The engine serves a command over every partition: it holds and has loaded all of them.
  static bool HoldsAll(Engine& e) {
    return e.GetStatus(Target{kIntegration, std::nullopt, {}}).ok();
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
  static int PartitionOfConnection(const std::string& connection) {
    return cluster::PartitionOf(kIntegration, connection, kSync, kBaseVariant, kPartitions);
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

TEST_F(EngineClusterTest, ACommandOnAPartitionHeldElsewhereFailsNamingTheCause) {
  Engine* a = Open("a");
  ASSERT_NE(a, nullptr);
  ASSERT_NO_FATAL_FAILURE(Populate(*a, 40));
  Engine* b = Open("b");
  ASSERT_NE(b, nullptr);
  Db db(uri_);
  std::int64_t a_id = db.NodeId("a"), b_id = db.NodeId("b");
  ASSERT_TRUE(WaitFor(
      [&] {
        auto owners = db.Owners();
        int on_a = 0, on_b = 0;
        for (const auto& [p, o] : owners) {
          on_a += o == a_id;
          on_b += o == b_id;
        }
        return on_a == kPartitions / 2 && on_b == kPartitions / 2;
      },
      10s));
  // A connection whose schedule is in one of a's partitions, and one in b's.
  auto owners = db.Owners();
  std::string on_a, on_b;
  for (int i = 0; i < 40 && (on_a.empty() || on_b.empty()); ++i) {
    std::int64_t owner = owners[PartitionOfConnection(Connection(i))];
    (owner == a_id ? on_a : on_b) = Connection(i);
  }
  ASSERT_FALSE(on_a.empty());
  ASSERT_FALSE(on_b.empty());
  Target mine{kIntegration, on_a, {SyncSelector{kSync}}};
  Target theirs{kIntegration, on_b, {SyncSelector{kSync}}};
  ASSERT_TRUE(WaitFor([&] { return a->GetStatus(mine).ok(); }, 10s));
  auto paused = a->Pause(mine);
  ASSERT_TRUE(paused.ok()) << paused.status();
  auto refused = a->Pause(theirs);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_NE(refused.status().message().find("cluster mode"), std::string::npos) << refused.status();
  EXPECT_NE(
      refused.status().message().find("partition " + std::to_string(PartitionOfConnection(on_b))),
      std::string::npos)
      << refused.status();
  // The owner serves it.
  ASSERT_TRUE(WaitFor([&] { return b->GetStatus(theirs).ok(); }, 10s));
  auto paused_there = b->Pause(theirs);
  ASSERT_TRUE(paused_there.ok()) << paused_there.status();
  auto st = b->GetStatus(theirs);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ((*st)[0].state, ScheduleState::kPaused);
  // A command over every variant needs every partition.
  auto all = a->GetStatus(Target{kIntegration, on_a, {}});
  EXPECT_EQ(all.status().code(), StatusCode::kFailedPrecondition) << all.status();
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
  Child child({uri_, "child", std::to_string(kLease.count()), std::to_string(kPartitions), "100"},
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
  Child child({uri_, "frozen", std::to_string(kLease.count()), std::to_string(kPartitions), "50"},
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
  ASSERT_TRUE(db.Rows("UPDATE syncsched_cluster.partitions SET owner = 999999, epoch = epoch + "
                      "1, expires_at = now() + interval '1 hour' WHERE partition = " +
                      std::to_string(p) + " RETURNING partition")
                  .size() == 1);
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
  auto status = a->GetStatus(Target{kIntegration, Connection(0), {SyncSelector{kSync}}});
  EXPECT_EQ(status.status().code(), StatusCode::kFailedPrecondition) << status.status();
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

}  // namespace
}  // namespace syncsched
