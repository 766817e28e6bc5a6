// The cluster's leases and fencing against a real PostgreSQL 15 server (support/pg_server.h):
// balance, graceful handover, a frozen node (a test hook, and a child process under SIGSTOP), a
// killed node (a child process under SIGKILL), a restarted server. The invariants are read from
// the database (a monitor polls the partitions table: epochs only grow, a tenure never changes
// owner) and from the keepers' own records of their tenures (no two keepers ever held one
// partition at the same instant); the only timing bounds asserted are the issue's own (a graceful
// stop hands over within 1 s, a dead node's partitions are taken within lease + 1 s).
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
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cluster/cluster_schema.h"
#include "cluster/fence.h"
#include "cluster/lease_keeper.h"
#include "support/pg_database_test.h"
#include "support/pg_server.h"
#include "support/stall_proxy.h"

extern char** environ;

namespace syncsched::cluster {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using syncsched::testing::PgDatabaseTest;
using syncsched::testing::PgServer;

// ---- Database helpers ----

class Conn {
 public:
  explicit Conn(const std::string& uri) : uri_(uri), conn_(PQconnectdb(uri.c_str())) {}
  ~Conn() { PQfinish(conn_); }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  PGconn* get() { return conn_; }
  bool ok() const { return PQstatus(conn_) == CONNECTION_OK; }
  void Reconnect() {
    PQfinish(conn_);
    conn_ = PQconnectdb(uri_.c_str());
  }
  // The rows of `sql` as text (NULL as ""); `*error` (when given) set on failure.
  std::vector<std::vector<std::string>> Rows(const std::string& sql, std::string* error = nullptr) {
    std::vector<std::vector<std::string>> out;
    PGresult* r = PQexec(conn_, sql.c_str());
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
      if (error != nullptr) *error = PQresultErrorMessage(r);
      PQclear(r);
      return out;
    }
    for (int i = 0; i < PQntuples(r); ++i) {
      out.emplace_back();
      for (int j = 0; j < PQnfields(r); ++j) out.back().emplace_back(PQgetvalue(r, i, j));
    }
    PQclear(r);
    return out;
  }
  // Runs `sql`; "" on success, else the error message.
  std::string Exec(const std::string& sql) {
    std::string error;
    Rows(sql, &error);
    return error;
  }
  std::int64_t Int(const std::string& sql) {
    auto rows = Rows(sql);
    return rows.empty() || rows[0].empty() ? -1 : std::stoll(rows[0][0]);
  }

 private:
  std::string uri_;
  PGconn* conn_;
};

struct Row {
  std::int64_t owner = 0;  // 0: free
  std::int64_t epoch = 0;
};

// partition -> (owner, epoch), as the database says; empty on failure.
std::map<int, Row> ReadPartitions(Conn& db) {
  std::map<int, Row> out;
  for (const auto& r :
       db.Rows("SELECT partition, coalesce(owner, 0), epoch FROM syncsched_cluster.partitions")) {
    out[std::stoi(r[0])] = {std::stoll(r[1]), std::stoll(r[2])};
  }
  return out;
}

std::map<std::int64_t, int> Counts(const std::map<int, Row>& rows) {
  std::map<std::int64_t, int> out;
  for (const auto& [p, row] : rows) ++out[row.owner];
  return out;
}

// Every partition is owned by one of `nodes`, each within one partition of the mean.
bool Balanced(const std::map<int, Row>& rows, const std::set<std::int64_t>& nodes, int partitions) {
  if (static_cast<int>(rows.size()) != partitions || nodes.empty()) return false;
  auto counts = Counts(rows);
  auto n = static_cast<int>(nodes.size());
  for (const auto& [owner, count] : counts) {
    if (nodes.count(owner) == 0) return false;
  }
  for (std::int64_t node : nodes) {
    int c = counts.count(node) != 0 ? counts[node] : 0;
    if (std::abs(c * n - partitions) > n) return false;
  }
  return true;
}

bool WaitFor(const std::function<bool()>& condition, Clock::duration timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
}

// Polls the partitions table and records any violation of: a partition's epoch never decreases;
// one tenure (partition, epoch) never changes from one owner to another (a release may end it).
class Monitor {
 public:
  explicit Monitor(std::string uri) : uri_(std::move(uri)) {
    thread_ = std::thread([this] { Run(); });
  }
  ~Monitor() { Finish(); }
  std::vector<std::string> Finish() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    std::lock_guard lock(mu_);
    return violations_;
  }
  int samples() const { return samples_.load(); }

 private:
  void Run() {
    Conn db(uri_);
    std::map<int, Row> last;
    while (!stop_) {
      if (!db.ok()) db.Reconnect();
      auto rows = ReadPartitions(db);
      if (rows.empty()) {
        std::this_thread::sleep_for(20ms);
        if (PQstatus(db.get()) != CONNECTION_OK) db.Reconnect();
        continue;
      }
      ++samples_;
      for (const auto& [p, row] : rows) {
        auto it = last.find(p);
        if (it == last.end()) continue;
        const Row& before = it->second;
        std::string where = "partition " + std::to_string(p) + ": ";
        if (row.epoch < before.epoch) {
          Add(where + "epoch went back from " + std::to_string(before.epoch) + " to " +
              std::to_string(row.epoch));
        }
        if (row.epoch == before.epoch && row.owner != 0 && row.owner != before.owner) {
          Add(where + "epoch " + std::to_string(row.epoch) + " changed owner from " +
              std::to_string(before.owner) + " to " + std::to_string(row.owner));
        }
      }
      last = rows;
      std::this_thread::sleep_for(5ms);
    }
  }
  void Add(std::string v) {
    std::lock_guard lock(mu_);
    violations_.push_back(std::move(v));
  }
  std::string uri_;
  std::atomic<bool> stop_{false};
  std::atomic<int> samples_{0};
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> violations_;
};

// No two keepers (of this process: one steady clock) ever held one partition at the same
// instant, by their own records; epochs grow from one keeper's tenure to the next's.
void ExpectDisjointTenures(const std::vector<const LeaseKeeper*>& keepers) {
  struct Entry {
    std::size_t keeper;
    LeaseKeeper::Tenure tenure;
  };
  std::map<int, std::vector<Entry>> by_partition;
  for (std::size_t k = 0; k < keepers.size(); ++k) {
    for (const auto& t : TenuresForTest(*keepers[k])) by_partition[t.partition].push_back({k, t});
  }
  int checked = 0;
  for (auto& [p, list] : by_partition) {
    std::sort(list.begin(), list.end(),
              [](const Entry& a, const Entry& b) { return a.tenure.acquired < b.tenure.acquired; });
    for (std::size_t i = 1; i < list.size(); ++i) {
      const Entry& a = list[i - 1];
      const Entry& b = list[i];
      ++checked;
      EXPECT_LE(a.tenure.valid_until, b.tenure.acquired)
          << "partition " << p << ": keeper " << a.keeper << " (epoch " << a.tenure.epoch
          << ") still valid when keeper " << b.keeper << " (epoch " << b.tenure.epoch
          << ") acquired it";
      if (a.keeper != b.keeper) {
        EXPECT_GT(b.tenure.epoch, a.tenure.epoch) << "partition " << p;
      } else {
        EXPECT_GE(b.tenure.epoch, a.tenure.epoch) << "partition " << p;
      }
    }
  }
  (void)checked;
}

// ---- A child process running syncsched_cluster_node ----

class Child {
 public:
  explicit Child(const std::vector<std::string>& args) {
    int fds[2];
    if (::pipe(fds) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    posix_spawn_file_actions_addclose(&actions, fds[1]);
    std::vector<char*> argv;
    std::string bin = SYNCSCHED_CLUSTER_NODE_BIN;
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, bin.c_str(), &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    out_ = fds[0];
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      Wait();
    }
    if (out_ >= 0) ::close(out_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  bool started() const { return pid_ > 0; }
  // The next line of its stdout, "" after `timeout` or at EOF.
  std::string ReadLine(Clock::duration timeout) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
      auto nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return "";
      pollfd fd{out_, POLLIN, 0};
      if (::poll(&fd, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[256];
      ssize_t n = ::read(out_, buf, sizeof buf);
      if (n <= 0) return "";
      buffer_.append(buf, static_cast<std::size_t>(n));
    }
  }
  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  // Its exit status (-1: killed by a signal or not started).
  int Wait() {
    if (pid_ <= 0) return -1;
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::string buffer_;
};

// ---- Fixture ----

class ClusterTest : public PgDatabaseTest {
 protected:
  void TearDown() override {
    keepers_.clear();  // their connections, before the database is dropped
    PgDatabaseTest::TearDown();
  }
  LeaseKeeperOptions Options(const std::string& node, std::chrono::milliseconds lease) const {
    LeaseKeeperOptions o;
    o.uri = uri_;
    o.node = node;
    o.lease = lease;
    return o;
  }
  LeaseKeeper* StartKeeper(const std::string& node, std::chrono::milliseconds lease = 1000ms) {
    auto k = LeaseKeeper::Start(Options(node, lease));
    EXPECT_TRUE(k.ok()) << k.status();
    if (!k.ok()) return nullptr;
    keepers_.push_back(std::move(k).value());
    return keepers_.back().get();
  }
  bool WaitBalanced(const std::set<std::int64_t>& nodes, Clock::duration timeout = 5s) {
    Conn db(uri_);
    return WaitFor([&] { return Balanced(ReadPartitions(db), nodes, kDefaultPartitions); },
                   timeout);
  }
  // The keeper's view (valid leases) equals the database's rows of its node.
  bool WaitConsistent(const LeaseKeeper& k, Clock::duration timeout = 3s) {
    Conn db(uri_);
    return WaitFor(
        [&] {
          std::map<int, std::int64_t> from_db;
          for (const auto& [p, row] : ReadPartitions(db)) {
            if (row.owner == k.node_id()) from_db[p] = row.epoch;
          }
          return from_db == k.Owned();
        },
        timeout);
  }
  std::vector<const LeaseKeeper*> All() const {
    std::vector<const LeaseKeeper*> out;
    for (const auto& k : keepers_) out.push_back(k.get());
    return out;
  }

  std::vector<std::unique_ptr<LeaseKeeper>> keepers_;
};

// ---- Schema and fence basics ----

TEST_F(ClusterTest, SchemaIsCreatedOnceAndKeepsItsPartitionCount) {
  Conn a(uri_), b(uri_);
  // Two engines creating it at once: one creates, the other finds it.
  Result<int> pa = Status::Internal(""), pb = Status::Internal("");
  std::thread ta([&] { pa = EnsureClusterSchema(a.get(), 16); });
  std::thread tb([&] { pb = EnsureClusterSchema(b.get(), 16); });
  ta.join();
  tb.join();
  ASSERT_TRUE(pa.ok()) << pa.status();
  ASSERT_TRUE(pb.ok()) << pb.status();
  EXPECT_EQ(*pa, 16);
  EXPECT_EQ(*pb, 16);
  auto again = EnsureClusterSchema(a.get(), 64);  // P is fixed at creation
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, 16);
  EXPECT_EQ(a.Int("SELECT count(*) FROM syncsched_cluster.partitions"), 16);
  EXPECT_EQ(EnsureClusterSchema(a.get(), 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PQtransactionStatus(a.get()), PQTRANS_IDLE);

  // A version 1 schema (before the command inbox and the catalog's version) is migrated in place,
  // keeping P.
  ASSERT_EQ(a.Exec("DROP FUNCTION syncsched_cluster.apply_command_part(bigint, integer, bigint, "
                   "bigint, bytea); DROP TABLE syncsched_cluster.command_parts; DROP TABLE "
                   "syncsched_cluster.commands; DROP SEQUENCE syncsched_cluster.command_ids; "
                   "ALTER TABLE syncsched_cluster.nodes DROP COLUMN catalog_version; "
                   "DROP TABLE syncsched_cluster.catalog_log; "
                   "DELETE FROM syncsched_cluster.meta WHERE key IN ('catalog_version', "
                   "'catalog_log_from'); "
                   "UPDATE syncsched_cluster.meta SET value = 1 WHERE key = 'schema_version'"),
            "");
  auto migrated = EnsureClusterSchema(a.get(), 64);
  ASSERT_TRUE(migrated.ok()) << migrated.status();
  EXPECT_EQ(*migrated, 16);
  EXPECT_EQ(a.Int("SELECT value FROM syncsched_cluster.meta WHERE key = 'schema_version'"), 4);
  EXPECT_EQ(a.Int("SELECT count(*) FROM syncsched_cluster.commands"), 0);
  EXPECT_EQ(a.Int("SELECT value FROM syncsched_cluster.meta WHERE key = 'catalog_version'"), 0);
  EXPECT_EQ(a.Int("SELECT value FROM syncsched_cluster.meta WHERE key = 'catalog_log_from'"), 1);
  EXPECT_EQ(a.Int("SELECT count(*) FROM syncsched_cluster.catalog_log"), 0);
  EXPECT_EQ(a.Int("SELECT count(catalog_version) FROM syncsched_cluster.nodes"),
            a.Int("SELECT count(*) FROM syncsched_cluster.nodes"));

  ASSERT_EQ(a.Exec("UPDATE syncsched_cluster.meta SET value = 5 WHERE key = 'schema_version'"), "");
  auto newer = EnsureClusterSchema(a.get(), 16);
  EXPECT_EQ(newer.status().code(), StatusCode::kFailedPrecondition) << newer.status();
  EXPECT_EQ(PQtransactionStatus(a.get()), PQTRANS_IDLE);
  ASSERT_EQ(a.Exec("UPDATE syncsched_cluster.meta SET value = 2 WHERE key = 'schema_version'"), "");
  ASSERT_EQ(a.Exec("DELETE FROM syncsched_cluster.partitions WHERE partition = 3"), "");
  EXPECT_EQ(EnsureClusterSchema(a.get(), 16).status().code(), StatusCode::kInternal);
}

// The lock modes the design relies on (docs/cluster.md, "Fencing"), shown on the real table:
// while a fence (FOR KEY SHARE) is held, a takeover's FOR UPDATE waits and a renewal does not; a
// takeover by plain UPDATE would not wait either, which is why takeovers lock FOR UPDATE first.
TEST_F(ClusterTest, FenceLockModesBlockTakeoversButNotRenewals) {
  Conn setup(uri_);
  ASSERT_TRUE(EnsureClusterSchema(setup.get(), 4).ok());
  ASSERT_EQ(setup.Exec("UPDATE syncsched_cluster.partitions SET owner = 1, epoch = 1, "
                       "expires_at = now() + interval '1 min' WHERE partition = 0"),
            "");
  Conn fenced(uri_), other(uri_);
  ASSERT_EQ(fenced.Exec("BEGIN"), "");
  ASSERT_TRUE(CheckFence(fenced.get(), Fence{1, {{0, 1}}}).ok());
  ASSERT_EQ(other.Exec("SET lock_timeout = '200ms'"), "");

  // A takeover: SELECT ... FOR UPDATE waits (here: gives up after the lock timeout).
  std::string error = other.Exec(
      "BEGIN; SELECT 1 FROM syncsched_cluster.partitions WHERE partition = 0 FOR UPDATE");
  EXPECT_NE(error.find("lock timeout"), std::string::npos) << error;
  ASSERT_EQ(other.Exec("ROLLBACK"), "");
  // A renewal does not wait.
  EXPECT_EQ(other.Exec("UPDATE syncsched_cluster.partitions SET expires_at = now() + "
                       "interval '1 min' WHERE partition = 0 AND owner = 1"),
            "");
  // The trap: a takeover by plain UPDATE (FOR NO KEY UPDATE) does not wait for the fence and
  // commits between the fence's check and its commit.
  EXPECT_EQ(other.Exec("UPDATE syncsched_cluster.partitions SET owner = 2, epoch = epoch + 1 "
                       "WHERE partition = 0"),
            "");
  EXPECT_EQ(fenced.Exec("COMMIT"), "");
  // Once the takeover committed, the old owner's fence is refused.
  ASSERT_EQ(fenced.Exec("BEGIN"), "");
  Status s = CheckFence(fenced.get(), Fence{1, {{0, 1}}});
  EXPECT_TRUE(IsFenced(s)) << s;
  EXPECT_NE(s.message().find("partition 0"), std::string::npos) << s;
  ASSERT_EQ(fenced.Exec("ROLLBACK"), "");
}

TEST_F(ClusterTest, FenceNeedsAnOpenTransactionAndDistinctPartitions) {
  Conn db(uri_);
  ASSERT_TRUE(EnsureClusterSchema(db.get(), 4).ok());
  EXPECT_TRUE(CheckFence(db.get(), Fence{1, {}}).ok());  // nothing to fence
  EXPECT_EQ(CheckFence(db.get(), Fence{1, {{0, 1}}}).code(), StatusCode::kInvalidArgument);
  ASSERT_EQ(db.Exec("BEGIN"), "");
  EXPECT_EQ(CheckFence(db.get(), Fence{1, {{0, 1}, {0, 1}}}).code(), StatusCode::kInvalidArgument);
  Status free = CheckFence(db.get(), Fence{1, {{0, 0}}});  // a free partition
  EXPECT_TRUE(IsFenced(free)) << free;
  ASSERT_EQ(db.Exec("ROLLBACK"), "");
}

TEST_F(ClusterTest, StartRejectsBadOptionsAndADuplicateLiveName) {
  EXPECT_EQ(LeaseKeeper::Start(Options("", 1000ms)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(LeaseKeeper::Start(Options("a", 100ms)).status().code(), StatusCode::kInvalidArgument);
  auto bad_uri = Options("a", 1000ms);
  bad_uri.uri = "/tmp/x.db";
  EXPECT_EQ(LeaseKeeper::Start(bad_uri).status().code(), StatusCode::kInvalidArgument);
  auto slow = Options("a", 1000ms);
  slow.renew_every = 950ms;
  EXPECT_EQ(LeaseKeeper::Start(slow).status().code(), StatusCode::kInvalidArgument);

  ASSERT_NE(StartKeeper("same"), nullptr);
  // Refused after waiting a lease for the name to free: it is still renewed.
  auto dup = LeaseKeeper::Start(Options("same", 1000ms));
  EXPECT_EQ(dup.status().code(), StatusCode::kAlreadyExists) << dup.status();
  EXPECT_NE(dup.status().message().find("has kept renewing its lease (1000 ms)"), std::string::npos)
      << dup.status();
}

// ---- Balance and handover ----

TEST_F(ClusterTest, OneTwoThreeKeepersBalanceWithinOnePartitionOfTheMean) {
  Monitor monitor(uri_);
  LeaseKeeper* a = StartKeeper("a");
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(WaitBalanced({a->node_id()}));
  EXPECT_TRUE(WaitConsistent(*a));
  EXPECT_EQ(a->Owned().size(), static_cast<std::size_t>(kDefaultPartitions));

  LeaseKeeper* b = StartKeeper("b");
  ASSERT_NE(b, nullptr);
  EXPECT_TRUE(WaitBalanced({a->node_id(), b->node_id()}));
  LeaseKeeper* c = StartKeeper("c");
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(WaitBalanced({a->node_id(), b->node_id(), c->node_id()}));
  for (LeaseKeeper* k : {a, b, c}) {
    EXPECT_TRUE(WaitConsistent(*k)) << k->node();
    auto owned = k->Owned().size();
    EXPECT_TRUE(owned == 21 || owned == 22) << k->node() << " holds " << owned;
    EXPECT_TRUE(WaitFor([&] { return k->Snapshot().live_nodes == 3; }, 2s));
  }
  // One leaves: the two others share its partitions.
  b->Stop();
  EXPECT_TRUE(WaitBalanced({a->node_id(), c->node_id()}));
  EXPECT_TRUE(WaitConsistent(*a));
  EXPECT_TRUE(WaitConsistent(*c));
  auto counters = a->counters();
  EXPECT_GT(counters.renewals, 0u);
  EXPECT_GT(counters.releases, 0u);  // it shed partitions to b and c
  EXPECT_GT(c->counters().claims, 0u);
  EXPECT_GT(monitor.samples(), 0);
  EXPECT_EQ(monitor.Finish(), std::vector<std::string>{});
  ExpectDisjointTenures(All());
}

TEST_F(ClusterTest, GracefulStopHandsOverWithinOneSecond) {
  Monitor monitor(uri_);
  // The default lease (10 s): the handover must not wait for it.
  LeaseKeeper* a = StartKeeper("a", 10'000ms);
  LeaseKeeper* b = StartKeeper("b", 10'000ms);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  ASSERT_TRUE(WaitBalanced({a->node_id(), b->node_id()}));
  Conn db(uri_);
  std::map<int, Row> before = ReadPartitions(db);

  auto released_before = a->counters().releases;  // it shed half to b when b joined
  auto stopped = Clock::now();
  a->Stop();
  ASSERT_TRUE(WaitBalanced({b->node_id()}, 1s)) << "not handed over within 1 s";
  auto took = Clock::now() - stopped;
  EXPECT_LE(took, 1s);
  EXPECT_EQ(db.Int("SELECT count(*) FROM syncsched_cluster.nodes WHERE id = " +
                   std::to_string(a->node_id())),
            0);
  EXPECT_TRUE(a->Owned().empty());
  EXPECT_EQ(a->counters().releases - released_before, 32u);
  for (const auto& [p, row] : ReadPartitions(db)) {
    if (before[p].owner == a->node_id()) {
      EXPECT_GT(row.epoch, before[p].epoch) << p;
    }
  }
  EXPECT_TRUE(WaitConsistent(*b));
  EXPECT_EQ(monitor.Finish(), std::vector<std::string>{});
  ExpectDisjointTenures(All());
}

// ---- A frozen keeper ----

TEST_F(ClusterTest, FrozenKeeperLosesItsLeasesAndItsStaleCommitIsFenced) {
  Monitor monitor(uri_);
  LeaseKeeper* a = StartKeeper("a");
  LeaseKeeper* b = StartKeeper("b");
  ASSERT_TRUE(a != nullptr && b != nullptr);
  ASSERT_TRUE(WaitBalanced({a->node_id(), b->node_id()}));
  ASSERT_TRUE(WaitConsistent(*a));
  auto held = a->Owned();
  ASSERT_FALSE(held.empty());
  int p = held.begin()->first;
  std::vector<int> ps = {p};
  auto fence = a->FenceFor(ps);
  ASSERT_TRUE(fence.ok()) << fence.status();

  auto frozen = Clock::now();
  PauseForTest(*a, true);
  Conn db(uri_);
  ASSERT_TRUE(WaitFor([&] { return Balanced(ReadPartitions(db), {b->node_id()}, 64); }, 3s));
  EXPECT_LE(Clock::now() - frozen, 2s) << "taken over later than lease + 1 s";
  EXPECT_GT(ReadPartitions(db)[p].epoch, fence->partitions[0].epoch);

  // Locally, the frozen keeper's leases are no longer valid (it would run nothing)...
  EXPECT_TRUE(a->Owned().empty());
  EXPECT_TRUE(IsFenced(a->FenceFor(ps).status()));
  // ...and a commit fenced at the old epoch is refused and changes nothing.
  Conn txn(uri_);
  ASSERT_EQ(txn.Exec("CREATE TABLE effects(x int)"), "");
  ASSERT_EQ(txn.Exec("BEGIN; INSERT INTO effects VALUES (1)"), "");
  Status s = a->CheckFence(txn.get(), *fence);
  EXPECT_TRUE(IsFenced(s)) << s;
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(txn.Exec("COMMIT"), "");  // of an aborted transaction: rolls back
  EXPECT_EQ(db.Int("SELECT count(*) FROM effects"), 0);
  EXPECT_EQ(a->counters().fenced_refusals, 2u);  // FenceFor and CheckFence

  // It wakes: it finds its leases gone, and gets a share again at new epochs.
  PauseForTest(*a, false);
  ASSERT_TRUE(WaitBalanced({a->node_id(), b->node_id()}));
  ASSERT_TRUE(WaitConsistent(*a));
  for (const auto& [q, epoch] : a->Owned()) {
    if (held.count(q) != 0) {
      EXPECT_GT(epoch, held[q]) << q;
    }
  }
  EXPECT_GE(a->counters().lost, held.size());
  EXPECT_GT(b->counters().takeovers, 0u);
  EXPECT_EQ(monitor.Finish(), std::vector<std::string>{});
  ExpectDisjointTenures(All());
}

// The check and the commit are atomic against a takeover: while a fenced transaction is open, the
// partition's lease may expire but nobody takes the partition until the transaction ends.
TEST_F(ClusterTest, TakeoverWaitsForAnOpenFencedCommit) {
  Monitor monitor(uri_);
  LeaseKeeper* a = StartKeeper("a");
  LeaseKeeper* b = StartKeeper("b");
  ASSERT_TRUE(a != nullptr && b != nullptr);
  ASSERT_TRUE(WaitBalanced({a->node_id(), b->node_id()}));
  ASSERT_TRUE(WaitConsistent(*a));
  int p = a->Owned().begin()->first;
  std::vector<int> ps = {p};
  auto fence = a->FenceFor(ps);
  ASSERT_TRUE(fence.ok()) << fence.status();
  std::int64_t epoch = fence->partitions[0].epoch;

  Conn txn(uri_), db(uri_);
  ASSERT_EQ(txn.Exec("CREATE TABLE effects(x int)"), "");
  ASSERT_EQ(txn.Exec("BEGIN"), "");
  ASSERT_TRUE(a->CheckFence(txn.get(), *fence).ok());
  PauseForTest(*a, true);
  // b takes every other partition of a's...
  ASSERT_TRUE(WaitFor([&] { return Counts(ReadPartitions(db))[b->node_id()] == 63; }, 3s));
  std::this_thread::sleep_for(500ms);  // several of b's turns
  auto rows = ReadPartitions(db);
  EXPECT_EQ(rows[p].owner, a->node_id());  // ...but not this one
  EXPECT_EQ(rows[p].epoch, epoch);
  // The fenced commit goes through, and only then b takes the partition.
  ASSERT_EQ(txn.Exec("INSERT INTO effects VALUES (1); COMMIT"), "");
  EXPECT_EQ(db.Int("SELECT count(*) FROM effects"), 1);
  EXPECT_TRUE(WaitFor(
      [&] {
        auto r = ReadPartitions(db)[p];
        return r.owner == b->node_id() && r.epoch > epoch;
      },
      2s));
  PauseForTest(*a, false);
  EXPECT_TRUE(WaitBalanced({a->node_id(), b->node_id()}));
  EXPECT_EQ(monitor.Finish(), std::vector<std::string>{});
  ExpectDisjointTenures(All());
}

// A keeper frozen inside an open fenced transaction, on a session prepared as the store's will be
// (PrepareFencedSession): the server ends that transaction before the lease ends, so the takeover
// is not delayed, and the transaction's writes are lost, not committed late.
TEST_F(ClusterTest, FrozenInsideAFencedTransactionIsCutOffByTheServer) {
  Monitor monitor(uri_);
  LeaseKeeper* a = StartKeeper("a");
  LeaseKeeper* b = StartKeeper("b");
  ASSERT_TRUE(a != nullptr && b != nullptr);
  ASSERT_TRUE(WaitBalanced({a->node_id(), b->node_id()}));
  ASSERT_TRUE(WaitConsistent(*a));
  std::vector<int> ps;
  for (const auto& [p, epoch] : a->Owned()) ps.push_back(p);
  auto fence = a->FenceFor(ps);
  ASSERT_TRUE(fence.ok()) << fence.status();

  Conn txn(uri_), db(uri_);
  ASSERT_EQ(txn.Exec("CREATE TABLE effects(x int)"), "");
  ASSERT_TRUE(PrepareFencedSession(txn.get(), 1000ms, a->node_id()).ok());
  ASSERT_EQ(txn.Exec("BEGIN; INSERT INTO effects VALUES (1)"), "");
  ASSERT_TRUE(a->CheckFence(txn.get(), *fence).ok());
  auto frozen = Clock::now();
  PauseForTest(*a, true);  // and the transaction stays open, as in a frozen process
  ASSERT_TRUE(WaitBalanced({b->node_id()}, 3s));
  EXPECT_LE(Clock::now() - frozen, 2s) << "taken over later than lease + 1 s";
  EXPECT_NE(txn.Exec("COMMIT"), "");  // the server ended the session
  EXPECT_EQ(db.Int("SELECT count(*) FROM effects"), 0);
  PauseForTest(*a, false);
  EXPECT_TRUE(WaitBalanced({a->node_id(), b->node_id()}));
  EXPECT_EQ(monitor.Finish(), std::vector<std::string>{});
  ExpectDisjointTenures(All());
}

// The hole the idle timeout leaves (found by the cluster soak, docs/cluster.md): an engine frozen
// in the middle of a commit's pipeline, BEGIN and the fence sent but not the Sync. The server waits
// for the rest with the rows locked, and no server timeout ends it: a survivor whose claim finds
// the rows locked ends the fenced sessions of the node that is no longer live (lease_keeper.h).
// A live node's session in the same state, older still, is left alone.
TEST_F(ClusterTest, FrozenMidPipelineIsCutOffByASurvivor) {
  Monitor monitor(uri_);
  LeaseKeeper* a = StartKeeper("a");
  LeaseKeeper* b = StartKeeper("b");
  LeaseKeeper* c = StartKeeper("c");
  ASSERT_TRUE(a != nullptr && b != nullptr && c != nullptr);
  ASSERT_TRUE(WaitBalanced({a->node_id(), b->node_id(), c->node_id()}));
  ASSERT_TRUE(WaitConsistent(*a));
  ASSERT_TRUE(WaitConsistent(*c));
  Conn db(uri_);
  ASSERT_EQ(db.Exec("CREATE TABLE effects(x int)"), "");

  // A commit of `keeper`'s partitions sent up to the fence and its first write, without the Sync.
  auto stall = [&](LeaseKeeper& keeper, Conn& txn) -> std::int64_t {
    std::vector<int> ps;
    for (const auto& [p, epoch] : keeper.Owned()) ps.push_back(p);
    auto fence = keeper.FenceFor(ps);
    EXPECT_TRUE(fence.ok()) << fence.status();
    if (!fence.ok()) return -1;
    EXPECT_TRUE(PrepareFencedSession(txn.get(), 1000ms, keeper.node_id()).ok());
    const std::int64_t pid = PQbackendPID(txn.get());
    EXPECT_EQ(PQenterPipelineMode(txn.get()), 1);
    auto params = FenceParams(*fence);
    const char* values[3] = {params[0].c_str(), params[1].c_str(), params[2].c_str()};
    EXPECT_EQ(PQsendQueryParams(txn.get(), "BEGIN", 0, nullptr, nullptr, nullptr, nullptr, 0), 1);
    EXPECT_EQ(PQsendQueryParams(txn.get(), kFenceSql, 3, nullptr, values, nullptr, nullptr, 0), 1);
    EXPECT_EQ(PQsendQueryParams(txn.get(), "INSERT INTO effects VALUES (1)", 0, nullptr, nullptr,
                                nullptr, nullptr, 0),
              1);
    EXPECT_EQ(PQflush(txn.get()), 0);
    // The fence ran: the session holds the lease rows (a lock on the table) and waits for its
    // client, neither idle in a transaction nor running a statement.
    const std::string held =
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid) WHERE pid = " +
        std::to_string(pid) +
        " AND l.relation = 'syncsched_cluster.partitions'::regclass AND l.granted AND s.state = "
        "'active' AND s.wait_event = 'ClientRead' AND s.application_name = '" +
        FencedSessionName(keeper.node_id()) + "'";
    EXPECT_TRUE(WaitFor([&] { return db.Int(held) == 1; }, 5s)) << "the pipeline did not stall";
    return pid;
  };
  Conn live_txn(uri_), frozen_txn(uri_);
  const std::int64_t live_pid = stall(*c, live_txn);
  const std::int64_t frozen_pid = stall(*a, frozen_txn);
  ASSERT_TRUE(live_pid > 0 && frozen_pid > 0);
  auto alive = [&](std::int64_t pid) {
    return db.Int("SELECT count(*) FROM pg_stat_activity WHERE pid = " + std::to_string(pid)) == 1;
  };

  auto frozen = Clock::now();
  PauseForTest(*a, true);
  ASSERT_TRUE(WaitBalanced({b->node_id(), c->node_id()}, 5s))
      << "the frozen pipeline kept its partitions";
  EXPECT_LE(Clock::now() - frozen, 2s) << "taken over later than lease + 1 s";
  EXPECT_GE(b->counters().sessions_ended + c->counters().sessions_ended, 1u);
  EXPECT_FALSE(alive(frozen_pid));
  EXPECT_TRUE(alive(live_pid)) << "a live node's session was ended";
  // The live node's commit, completed, is applied; the frozen one's never was.
  ASSERT_EQ(PQsendQueryParams(live_txn.get(), "COMMIT", 0, nullptr, nullptr, nullptr, nullptr, 0),
            1);
  ASSERT_EQ(PQpipelineSync(live_txn.get()), 1);
  int failed = 0;
  bool synced = false;
  for (int i = 0; i < 64 && !synced; ++i) {
    PGresult* r = PQgetResult(live_txn.get());
    if (r == nullptr) continue;  // the end of one statement's results
    ExecStatusType st = PQresultStatus(r);
    synced = st == PGRES_PIPELINE_SYNC;
    if (!synced && st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) ++failed;
    PQclear(r);
  }
  EXPECT_TRUE(synced);
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(db.Int("SELECT count(*) FROM effects"), 1);
  PauseForTest(*a, false);
  EXPECT_TRUE(WaitBalanced({a->node_id(), b->node_id(), c->node_id()}));
  EXPECT_EQ(monitor.Finish(), std::vector<std::string>{});
  ExpectDisjointTenures(All());
}

// ---- Other processes: killed, frozen, stopped ----

std::int64_t ReadyId(Child& child) {
  std::string line = child.ReadLine(10s);
  if (line.rfind("ready ", 0) != 0) return -1;
  return std::stoll(line.substr(6));
}

TEST_F(ClusterTest, KilledNodeIsTakenOverWithinLeasePlusOneSecond) {
  Monitor monitor(uri_);
  LeaseKeeper* b = StartKeeper("b");
  ASSERT_NE(b, nullptr);
  Child child({uri_, "a", "1000"});
  ASSERT_TRUE(child.started());
  std::int64_t a = ReadyId(child);
  ASSERT_GT(a, 0);
  ASSERT_TRUE(WaitBalanced({a, b->node_id()}));
  Conn db(uri_);
  std::map<int, Row> before = ReadPartitions(db);

  auto killed = Clock::now();
  child.Signal(SIGKILL);
  ASSERT_TRUE(WaitBalanced({b->node_id()}, 3s));
  auto took = Clock::now() - killed;
  EXPECT_LE(took, 2s) << "taken over later than lease + 1 s";
  for (const auto& [p, row] : ReadPartitions(db)) {
    if (before[p].owner == a) {
      EXPECT_GT(row.epoch, before[p].epoch) << p;
    }
  }
  EXPECT_EQ(b->counters().takeovers, 32u);
  EXPECT_TRUE(WaitConsistent(*b));
  EXPECT_EQ(monitor.Finish(), std::vector<std::string>{});
}

TEST_F(ClusterTest, SigtermedNodeHandsOverWithinOneSecond) {
  LeaseKeeper* b = StartKeeper("b", 10'000ms);
  ASSERT_NE(b, nullptr);
  Child child({uri_, "a", "10000"});
  std::int64_t a = ReadyId(child);
  ASSERT_GT(a, 0);
  ASSERT_TRUE(WaitBalanced({a, b->node_id()}));
  auto stopped = Clock::now();
  child.Signal(SIGTERM);
  ASSERT_TRUE(WaitBalanced({b->node_id()}, 1s)) << "not handed over within 1 s";
  EXPECT_LE(Clock::now() - stopped, 1s);
  EXPECT_EQ(child.Wait(), 0);
}

// A node frozen with SIGSTOP past its lease, with a writer that does not even check its leases'
// local validity: after SIGCONT its stale commits are refused (or were cut off by the server, when
// it froze inside a transaction), and the log of every fenced write shows no write at an old epoch
// after a newer one.
TEST_F(ClusterTest, StoppedNodeWakesAndItsStaleWritesAreRefused) {
  Conn db(uri_);
  ASSERT_EQ(db.Exec("CREATE TABLE cluster_log(seq bigserial PRIMARY KEY, partition int NOT NULL, "
                    "epoch bigint NOT NULL, node bigint NOT NULL)"),
            "");
  Monitor monitor(uri_);
  LeaseKeeper* b = StartKeeper("b");
  ASSERT_NE(b, nullptr);
  Child child({uri_, "a", "1000", "--writer"});
  std::int64_t a = ReadyId(child);
  ASSERT_GT(a, 0);
  ASSERT_TRUE(WaitBalanced({a, b->node_id()}));
  std::string node_a = std::to_string(a);
  ASSERT_TRUE(WaitFor(
      [&] { return db.Int("SELECT count(*) FROM cluster_log WHERE node = " + node_a) > 0; }, 3s));

  auto frozen = Clock::now();
  child.Signal(SIGSTOP);
  ASSERT_TRUE(WaitBalanced({b->node_id()}, 3s));
  EXPECT_LE(Clock::now() - frozen, 2s) << "taken over later than lease + 1 s";
  std::int64_t seq_at_takeover = db.Int("SELECT coalesce(max(seq), 0) FROM cluster_log");
  child.Signal(SIGCONT);
  ASSERT_TRUE(WaitBalanced({a, b->node_id()}));
  ASSERT_TRUE(WaitFor(
      [&] {
        return db.Int("SELECT count(*) FROM cluster_log WHERE node = " + node_a + " AND seq > " +
                      std::to_string(seq_at_takeover)) > 0;
      },
      3s));
  child.Signal(SIGTERM);
  std::string line = child.ReadLine(5s);
  EXPECT_EQ(child.Wait(), 0);
  unsigned long long written = 0, refused = 0, failed = 0, counted = 0;
  ASSERT_EQ(
      std::sscanf(line.c_str(), "stopped written=%llu refused=%llu failed=%llu fenced_counter=%llu",
                  &written, &refused, &failed, &counted),
      4)
      << line;
  EXPECT_GT(written, 0u);
  // Its first write after waking used the stale fence: refused by the fence (stopped between two
  // transactions), or failed because the server had ended its open transaction (stopped inside
  // one, on a session prepared by PrepareFencedSession).
  EXPECT_GE(refused + failed, 1u) << "the stale fence was never tried";
  EXPECT_EQ(counted, refused);

  // From the log: per partition, epochs never go back, and one epoch has one writer.
  EXPECT_EQ(db.Int("SELECT count(*) FROM (SELECT partition, epoch < max(epoch) OVER (PARTITION BY "
                   "partition ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) "
                   "AS back FROM cluster_log) s WHERE back"),
            0);
  EXPECT_EQ(db.Int("SELECT count(*) FROM (SELECT partition, epoch FROM cluster_log "
                   "GROUP BY partition, epoch HAVING count(DISTINCT node) > 1) s"),
            0);
  EXPECT_EQ(monitor.Finish(), std::vector<std::string>{});
}

// A node whose route stalls: its renewal is held back by the route (support/stall_proxy.h), it
// gives up on it, and it dies; when the route delivers the renewal after all, the server must not
// renew a dead node's leases (helper-39 saw a late renewal keep 5 of 16 partitions ownerless for
// 10-15 s, and refuse a restart under the node's name meanwhile). Every query of the keeper
// carries its expiry in the server's clock; without it, the late renewal extends the node row
// and its leases.
TEST_F(ClusterTest, ARenewalDeliveredAfterItsNodeGaveUpRenewsNothing) {
  auto proxy = syncsched::testing::StallProxy::Start(server_->dir());
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  LeaseKeeperOptions o = Options("stalled", 1000ms);
  o.uri = (*proxy)->Uri(db_);
  auto started = LeaseKeeper::Start(o);
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<LeaseKeeper> k = std::move(started).value();
  ASSERT_TRUE(WaitBalanced({k->node_id()}));
  Conn db(uri_);
  const std::string id = std::to_string(k->node_id());
  std::string pid = db.Rows(
      "SELECT pid FROM pg_stat_activity WHERE application_name = 'syncsched-cluster' AND "
      "datname = current_database()")[0][0];
  (*proxy)->HoldFrom('Q', "SET heartbeat_at = now()");
  (*proxy)->RefuseNew(true);
  // The node's next renewal is held, it gives up on it (its query timeout) and loses its route.
  ASSERT_TRUE(WaitFor([&] { return !k->Snapshot().connected; }, 5s));
  // The node row's expiry and its leases' latest, as the server holds them.
  const std::string expiries =
      "SELECT expires_at::text || ' ' || (SELECT max(expires_at) FROM syncsched_cluster.partitions "
      "WHERE owner = " +
      id + ")::text FROM syncsched_cluster.nodes WHERE id = " + id;
  const std::string before = db.Rows(expiries)[0][0];
  k.reset();               // the node dies
  (*proxy)->Stall(false);  // the renewal reaches the server now, then the close
  ASSERT_TRUE(WaitFor(
      [&] { return db.Int("SELECT count(*) FROM pg_stat_activity WHERE pid = " + pid) == 0; },
      60s));
  EXPECT_EQ(db.Rows(expiries)[0][0], before);
  // And so the node's partitions are free for a survivor by the end of its lease.
  LeaseKeeper* b = StartKeeper("b");
  ASSERT_NE(b, nullptr);
  EXPECT_TRUE(WaitBalanced({b->node_id()}, 3s));
}

// A node killed (SIGKILL) and restarted at once under its name, as a supervisor does: its row is
// still live for up to a lease, and the restart waits that out instead of being refused
// (helper-40: the restarted daemon exited 1, "another engine runs under this name").
TEST_F(ClusterTest, ANodeRestartedUnderItsNameRightAfterAKillJoins) {
  Child child({uri_, "phoenix", "1000"});
  ASSERT_GT(ReadyId(child), 0);
  child.Signal(SIGKILL);
  child.Wait();
  LeaseKeeper* again = StartKeeper("phoenix");
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(WaitBalanced({again->node_id()}));
}

// A tenure that ended here (the lease lapsed locally while the keeper could not renew, or a
// withdrawal whose release failed) is never resumed at its epoch, even when the database still
// names this node its owner: the engine dropped that tenure and may refuse its epoch for good, and
// a partition renewed at it ran nowhere until SIGTERM (helper-41). It is released and claimed
// again at a new epoch.
TEST_F(ClusterTest, ALeaseThatLapsedHereIsNeverResumedAtItsEpoch) {
  LeaseKeeper* a = StartKeeper("a");
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(WaitBalanced({a->node_id()}));
  Conn db(uri_);
  std::map<int, Row> before = ReadPartitions(db);
  PauseForTest(*a, true);
  // Past the lease in the server's clock: nobody else could take them, so they are still a's.
  ASSERT_TRUE(WaitFor(
      [&] {
        return db.Int(
                   "SELECT count(*) FROM syncsched_cluster.partitions WHERE expires_at > "
                   "now()") == 0;
      },
      5s));
  PauseForTest(*a, false);
  ASSERT_TRUE(WaitFor(
      [&] {
        std::map<int, Row> now = ReadPartitions(db);
        if (now.size() != before.size()) return false;
        for (const auto& [p, row] : now) {
          if (row.owner != a->node_id() || row.epoch <= before[p].epoch) return false;
        }
        return true;
      },
      5s))
      << "a resumed tenures it had ended, at their old epochs";
  EXPECT_TRUE(WaitConsistent(*a));
  ExpectDisjointTenures(All());
}

// ---- The database server restarts ----

TEST_F(ClusterTest, ServerRestartKeepsOneOwnerPerPartition) {
  PgServer& server = UsePrivateServer();
  Monitor monitor(uri_);
  LeaseKeeper* a = StartKeeper("a", 2000ms);
  LeaseKeeper* b = StartKeeper("b", 2000ms);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  ASSERT_TRUE(WaitBalanced({a->node_id(), b->node_id()}));

  ASSERT_TRUE(server.Stop().ok());
  EXPECT_TRUE(WaitFor([&] { return !a->Snapshot().connected && !b->Snapshot().connected; }, 3s));
  std::this_thread::sleep_for(300ms);
  ASSERT_TRUE(server.StartAgain().ok());
  auto renewals_a = a->counters().renewals, renewals_b = b->counters().renewals;
  EXPECT_TRUE(WaitFor(
      [&] {
        return a->Snapshot().connected && b->Snapshot().connected &&
               a->counters().renewals > renewals_a && b->counters().renewals > renewals_b;
      },
      10s));
  EXPECT_TRUE(WaitBalanced({a->node_id(), b->node_id()}, 10s));
  EXPECT_TRUE(WaitConsistent(*a));
  EXPECT_TRUE(WaitConsistent(*b));
  EXPECT_EQ(monitor.Finish(), std::vector<std::string>{});
  ExpectDisjointTenures(All());
}

}  // namespace
}  // namespace syncsched::cluster
