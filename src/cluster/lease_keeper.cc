// The LeaseKeeper (lease_keeper.h). Every statement is one implicit transaction sent as a simple
// query (several statements may share one); numbers are formatted into the SQL, the node name is
// escaped with PQescapeLiteral. The connection is driven asynchronously (PQsendQuery, poll) so
// that a query never waits longer than query_timeout_ (a lost network would otherwise block the
// thread until TCP gives up), and so that the thread wakes for notifications.
//
// Row locks (PostgreSQL's row-level lock modes; docs/cluster.md, "Fencing"):
// - renewal: UPDATE ... SET expires_at of its own rows: FOR NO KEY UPDATE, which does not
//   conflict with the fence's FOR KEY SHARE (commits never delay renewals) but does conflict with
//   a concurrent takeover's FOR UPDATE: the two serialize on the row and the later one re-checks
//   its WHERE on the new version (READ COMMITTED), so a renewal and a takeover of one partition
//   never both succeed;
// - claim and release: SELECT ... FOR UPDATE (SKIP LOCKED for claims: a claim never waits, so
//   that a row locked by a frozen engine's open transaction cannot block this thread and stop its
//   renewals), then UPDATE. FOR UPDATE conflicts with FOR KEY SHARE: a takeover waits for the old
//   owner's fenced commits in flight and cannot commit between their check and their commit.
#include "cluster/lease_keeper.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "cluster/pg_util.h"

namespace syncsched::cluster {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kTenureLog = 4096;
constexpr milliseconds kMinLease{300};
constexpr milliseconds kForeignSlack{5};
constexpr milliseconds kRetry{50};
constexpr milliseconds kClaimRetry{100};

std::string Ms(milliseconds d) { return "interval '" + std::to_string(d.count()) + " ms'"; }

long long Int(const PGresult* res, int row, int col) {
  return std::strtoll(PQgetvalue(res, row, col), nullptr, 10);
}

std::string Ids(const std::vector<int>& ids) {
  std::string out = "'{";
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(ids[i]);
  }
  return out + "}'::int4[]";
}

}  // namespace

LeaseKeeper::LeaseKeeper(LeaseKeeperOptions options)
    : options_(std::move(options)),
      lease_(options_.lease),
      renew_every_(options_.renew_every.count() > 0 ? options_.renew_every : options_.lease / 3),
      margin_(options_.safety_margin.count() > 0 ? options_.safety_margin : options_.lease / 10),
      query_timeout_(std::max(milliseconds(200), options_.lease / 3)) {}

Result<std::unique_ptr<LeaseKeeper>> LeaseKeeper::Start(LeaseKeeperOptions options) {
  if (!options.uri.starts_with("postgresql://") && !options.uri.starts_with("postgres://")) {
    return Status::InvalidArgument("cluster: the database must be a postgresql:// URI");
  }
  if (options.node.empty() || options.node.size() > 255) {
    return Status::InvalidArgument("cluster: the node name must be 1..255 bytes, not " +
                                   std::to_string(options.node.size()));
  }
  if (options.lease < kMinLease) {
    return Status::InvalidArgument("cluster: the lease must be at least 300 ms, not " +
                                   std::to_string(options.lease.count()) + " ms");
  }
  if (options.connect_timeout < milliseconds(100)) {
    return Status::InvalidArgument("cluster: connect_timeout must be at least 100 ms");
  }
  if (options.partitions < 1 || options.partitions > kMaxPartitions) {
    return Status::InvalidArgument("cluster: the partition count must be in [1, " +
                                   std::to_string(kMaxPartitions) + "], not " +
                                   std::to_string(options.partitions));
  }
  std::unique_ptr<LeaseKeeper> keeper(new LeaseKeeper(std::move(options)));
  if (keeper->renew_every_ + keeper->margin_ >= keeper->lease_ ||
      keeper->renew_every_.count() <= 0) {
    return Status::InvalidArgument(
        "cluster: renew_every (" + std::to_string(keeper->renew_every_.count()) +
        " ms) must be positive and below the lease minus the safety margin (" +
        std::to_string((keeper->lease_ - keeper->margin_).count()) + " ms)");
  }
  if (::pipe2(keeper->wake_, O_NONBLOCK | O_CLOEXEC) != 0) {
    return Status::Unavailable(std::string("cluster: pipe2: ") + std::strerror(errno));
  }
  Status s = keeper->Connect(keeper->options_.connect_timeout);
  if (!s.ok()) return s;
  // Joining may take longer than a renewal may (creating the schema, on a loaded server): it runs
  // under connect_timeout, then the session gets its renewal-sized statement timeout back.
  const milliseconds slow = keeper->options_.connect_timeout;
  auto relaxed = keeper->Query("SET statement_timeout = " + std::to_string(slow.count()),
                               "setting up the session", slow);
  if (!relaxed.ok()) return relaxed.status();
  Result<int> p = EnsureClusterSchema(keeper->conn_, keeper->options_.partitions);
  if (!p.ok()) return p.status();
  keeper->partitions_ = *p;
  auto id =
      keeper->Query("SELECT nextval('syncsched_cluster.node_ids')", "allocating a node id", slow);
  if (!id.ok()) return id.status();
  keeper->node_id_ = Int((*id)[0].get(), 0, 0);
  // A live node under this name may be this name's previous process, killed less than a lease
  // ago (a supervisor restarts it at once): its row expires within a lease of its last renewal.
  // Wait that out (the node row is rechecked every 100 ms); a name still renewed after it is
  // another engine's.
  const SteadyTime give_up = Clock::now() + keeper->lease_ + kRetry;
  for (;;) {
    s = keeper->Join(slow);
    if (s.code() != StatusCode::kAlreadyExists || Clock::now() >= give_up) break;
    std::this_thread::sleep_for(kClaimRetry);  // polling the row: the dead leave no event
  }
  if (!s.ok()) return s;
  auto restored =
      keeper->Query("SET statement_timeout = " + std::to_string(keeper->query_timeout_.count()),
                    "setting up the session", slow);
  if (!restored.ok()) {
    keeper->Leave();  // the node row exists: remove it (best effort)
    return restored.status();
  }
  keeper->poke_ = true;
  {
    std::lock_guard lock(keeper->mu_);
    keeper->connected_ = true;
  }
  keeper->thread_ = std::thread([k = keeper.get()] { k->Run(); });
  return keeper;
}

LeaseKeeper::~LeaseKeeper() {
  Stop();
  Disconnect();
  for (int fd : wake_) {
    if (fd >= 0) ::close(fd);
  }
}

void LeaseKeeper::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    paused_ = false;
  }
  cv_.notify_all();
  Wake();
  if (thread_.joinable()) thread_.join();
}

// ---- Connection ----

Status LeaseKeeper::Connect(milliseconds timeout) {
  Disconnect();
  const char* keys[] = {"fallback_application_name", "dbname", nullptr};
  const char* values[] = {"syncsched-cluster", options_.uri.c_str(), nullptr};
  conn_ = PQconnectStartParams(keys, values, /*expand_dbname=*/1);
  auto fail = [&](const std::string& why) {
    Disconnect();
    return Status::Unavailable("cluster: the database cannot be reached: " + why);
  };
  if (conn_ == nullptr) return fail("out of memory");
  if (PQstatus(conn_) == CONNECTION_BAD) return fail(PQerrorMessage(conn_));
  auto deadline = Clock::now() + timeout;
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  while (st != PGRES_POLLING_OK) {
    if (st == PGRES_POLLING_FAILED) return fail(PQerrorMessage(conn_));
    SteadyTime now = Clock::now();
    if (now >= deadline) return fail("connection timed out");
    // Leases that end meanwhile are reported at their time (held_ is empty during Start).
    ExpireLocal(now);
    SteadyTime until = deadline;
    {
      std::lock_guard lock(mu_);
      for (const auto& [p, lease] : held_) until = std::min(until, lease.valid_until);
    }
    auto left = std::max(milliseconds(1), std::chrono::ceil<milliseconds>(until - now));
    pollfd fd{PQsocket(conn_), static_cast<short>(st == PGRES_POLLING_READING ? POLLIN : POLLOUT),
              0};
    int n = ::poll(&fd, 1, static_cast<int>(left.count()));
    if (n < 0 && errno != EINTR) return fail(std::strerror(errno));
    if (n == 0) continue;
    st = PQconnectPoll(conn_);
  }
  own_pid_ = PQbackendPID(conn_);
  PQsetNoticeProcessor(
      conn_, [](void*, const char*) {}, nullptr);
  std::string setup = "SET client_min_messages = warning; SET lock_timeout = " +
                      std::to_string(std::max<long long>(50, lease_.count() / 4)) +
                      "; SET statement_timeout = " + std::to_string(query_timeout_.count()) +
                      "; LISTEN " + kClusterChannel +
                      "; SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8";
  auto res = Query(setup, "setting up the session", timeout);
  if (!res.ok()) {
    Disconnect();
    return res.status();
  }
  server_clock_ = {Int(res->back().get(), 0, 0), Clock::now()};
  return Status::Ok();
}

void LeaseKeeper::Disconnect() {
  if (conn_ != nullptr) PQfinish(conn_);
  conn_ = nullptr;
  own_pid_ = 0;
  server_clock_ = {};
}

void LeaseKeeper::ConsumeInput() {
  if (conn_ == nullptr) return;
  if (PQconsumeInput(conn_) == 0) {
    Disconnect();
    return;
  }
  while (PGnotify* n = PQnotifies(conn_)) {
    if (n->be_pid != own_pid_) poke_ = true;
    PQfreemem(n);
  }
}

Result<LeaseKeeper::ResultList> LeaseKeeper::Query(const std::string& sql, std::string_view context,
                                                   milliseconds timeout) {
  if (timeout.count() <= 0) timeout = query_timeout_;
  std::string what = "cluster node '" + options_.node + "': " + std::string(context);
  if (conn_ == nullptr) return Status::Unavailable(what + ": not connected");
  // The query's expiry, in the server's clock: when this call gives up on it (ServerClock). A
  // simple query is one message and one transaction: a first statement that fails past the expiry
  // aborts every statement after it, so a query that a stalled route delivers late (a dead node's
  // renewal or claim) changes nothing.
  const bool checked = server_clock_.known();
  std::string full;
  if (checked) {
    std::int64_t expiry = server_clock_.Expiry(Clock::now() + timeout);
    full = "SELECT 1 / (clock_timestamp() < to_timestamp(" + std::to_string(expiry) +
           " / 1000000.0))::int;" + sql;
  }
  if (PQsendQuery(conn_, checked ? full.c_str() : sql.c_str()) == 0) {
    Status s = internal::PgError(conn_, what, nullptr);
    Disconnect();
    return Status::Unavailable(s.message());
  }
  auto deadline = Clock::now() + timeout;
  ResultList results;
  Status first;
  for (;;) {
    while (PQisBusy(conn_) != 0) {
      auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        Disconnect();
        return Status::Unavailable(what + ": no answer within " + std::to_string(timeout.count()) +
                                   " ms");
      }
      pollfd fd{PQsocket(conn_), POLLIN, 0};
      int n = ::poll(&fd, 1, static_cast<int>(left.count()));
      if (n < 0 && errno != EINTR) {
        Disconnect();
        return Status::Unavailable(what + ": poll: " + std::strerror(errno));
      }
      if (n > 0 && PQconsumeInput(conn_) == 0) {
        Status s = internal::PgError(conn_, what, nullptr);
        Disconnect();
        return Status::Unavailable(s.message());
      }
    }
    internal::ResultPtr res(PQgetResult(conn_));
    if (!res) break;
    ExecStatusType st = PQresultStatus(res.get());
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && first.ok()) {
      first = checked && results.empty()
                  ? Status::Unavailable(what +
                                        ": the query reached the database after this node gave "
                                        "up on it; nothing of it was applied")
                  : internal::PgError(conn_, what, res.get());
    }
    results.push_back(std::move(res));
  }
  if (checked && !results.empty()) results.erase(results.begin());  // the expiry's check
  // Notifications that came with the answer.
  while (PGnotify* n = PQnotifies(conn_)) {
    if (n->be_pid != own_pid_) poke_ = true;
    PQfreemem(n);
  }
  if (PQstatus(conn_) != CONNECTION_OK) {
    Disconnect();
    if (first.ok()) first = Status::Unavailable(what + ": the connection was lost");
  }
  if (!first.ok()) return first;
  return results;
}

void LeaseKeeper::Wake() {
  if (wake_[1] >= 0) {
    char c = 1;
    (void)!::write(wake_[1], &c, 1);
  }
}

void LeaseKeeper::WaitUntil(SteadyTime deadline) {
  auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now());
  if (left.count() <= 0) return;
  pollfd fds[2] = {{wake_[0], POLLIN, 0}, {conn_ != nullptr ? PQsocket(conn_) : -1, POLLIN, 0}};
  int n = ::poll(fds, 2, static_cast<int>(std::min<long long>(left.count(), 60'000)));
  if (n <= 0) return;
  if ((fds[0].revents & POLLIN) != 0) {
    char buf[64];
    while (::read(wake_[0], buf, sizeof buf) > 0) {
    }
  }
  if (fds[1].revents != 0) ConsumeInput();
}

// ---- Membership and leases ----

Status LeaseKeeper::Join(milliseconds timeout) {
  std::string id = std::to_string(node_id_);
  std::string name = internal::Literal(conn_, options_.node);
  if (name.empty()) return Status::InvalidArgument("cluster: the node name is not valid text");
  std::string sql =
      "INSERT INTO syncsched_cluster.nodes AS n (id, name, started_at, heartbeat_at, expires_at) "
      "VALUES (" +
      id + ", " + name + ", now(), now(), now() + " + Ms(lease_) +
      ") ON CONFLICT (name) DO UPDATE SET id = excluded.id, started_at = excluded.started_at, "
      "heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at, "
      // A new process under the name has applied no catalog yet (cluster schema v3).
      "catalog_version = CASE WHEN n.id = excluded.id THEN n.catalog_version ELSE 0 END "
      "WHERE n.expires_at <= now() OR n.id = excluded.id RETURNING id; NOTIFY " +
      kClusterChannel;
  auto res = Query(sql, "joining the cluster", timeout);
  if (!res.ok()) return res.status();
  if (PQntuples((*res)[0].get()) != 1) {
    return Status::AlreadyExists("cluster: the node name '" + options_.node +
                                 "' is held by another live node: a node under this name has kept "
                                 "renewing its lease (" +
                                 std::to_string(lease_.count()) +
                                 " ms) since this one began to wait; another engine runs under "
                                 "this name: give each engine a name of its own");
  }
  return Status::Ok();
}

Status LeaseKeeper::Tick() {
  const std::string id = std::to_string(node_id_);
  const SteadyTime sent = Clock::now();
  foreign_wake_ = SteadyTime::max();  // set again from a successful answer (else: next_tick_)
  std::string sql =
      // 0: the node row.
      "UPDATE syncsched_cluster.nodes SET heartbeat_at = now(), expires_at = now() + " +
      Ms(lease_) + " WHERE id = " + id +
      " RETURNING id;"
      // 1: its leases (expired ones too, as long as nobody took them).
      "UPDATE syncsched_cluster.partitions SET expires_at = now() + " +
      Ms(lease_) + " WHERE owner = " + id +
      " AND EXISTS (SELECT 1 FROM syncsched_cluster.nodes WHERE id = " + id +
      ") RETURNING partition, epoch;"
      // 2: rows of nodes gone for more than a lease.
      "DELETE FROM syncsched_cluster.nodes WHERE expires_at < now() - " +
      Ms(lease_) +
      ";"
      // 3: the live nodes, oldest first, with the ms left on each.
      "SELECT id, ceil(extract(epoch FROM expires_at - now()) * 1000)::int8 "
      "FROM syncsched_cluster.nodes WHERE expires_at > now() ORDER BY id;"
      // 4: partitions claimable now, and the ms to the next foreign expiry.
      "SELECT count(*) FILTER (WHERE owner IS NULL OR (owner <> " +
      id + " AND expires_at <= now())), ceil(extract(epoch FROM min(expires_at - now()) " +
      "FILTER (WHERE owner <> " + id +
      " AND expires_at > now())) * 1000)::int8 FROM syncsched_cluster.partitions";
  auto res = Query(sql, "renewing its leases");
  if (!res.ok()) return res.status();
  const SteadyTime received = Clock::now();
  const ResultList& r = *res;
  if (r.size() != 5) return Status::Internal("cluster: renewal: unexpected answer");
  bool node_alive = PQntuples(r[0].get()) == 1;

  // What the database says this node holds.
  std::map<int, std::int64_t> owned;
  for (int i = 0; i < PQntuples(r[1].get()); ++i) {
    owned[static_cast<int>(Int(r[1].get(), i, 0))] = Int(r[1].get(), i, 1);
  }
  LeaseChange change;
  int mine = 0;
  std::vector<int> stale;
  {
    std::lock_guard lock(mu_);
    for (auto it = held_.begin(); it != held_.end();) {
      auto o = owned.find(it->first);
      if (o == owned.end() || o->second != it->second.epoch) {
        int partition = it->first;
        ++it;
        lost_.fetch_add(1, std::memory_order_relaxed);
        EndTenure(partition, received, &change);
      } else {
        ++it;
      }
    }
    for (const auto& [partition, epoch] : owned) {
      SteadyTime until = sent + lease_ - margin_;
      auto it = held_.find(partition);
      if (it != held_.end()) {
        it->second.valid_until = until;
      } else if (Ended(partition, epoch)) {
        // A tenure this node ended (its lease lapsed here, or it withdrew and the release failed)
        // is never resumed: the engine dropped it and may refuse its epoch for good. Released, so
        // that its next owner (this node too) claims it at a new epoch (helper-41: a partition
        // renewed at such an epoch ran nowhere until SIGTERM).
        stale.push_back(partition);
      } else if (until > received) {
        Lease lease{partition, epoch, received, until};
        held_[partition] = lease;
        change.gained.push_back(lease);
      }
    }
    mine = static_cast<int>(owned.size() - stale.size());
    live_nodes_ = PQntuples(r[3].get());
  }
  if (node_alive) renewals_.fetch_add(1, std::memory_order_relaxed);
  next_tick_ = sent + renew_every_;
  Publish(change);
  if (!stale.empty() && !Release(stale).ok()) next_tick_ = Clock::now() + kRetry;

  if (!node_alive) {
    // The row went (this node was away for more than two leases): join again under the same id.
    Status s = Join();
    if (s.code() == StatusCode::kAlreadyExists) {
      std::lock_guard lock(mu_);
      health_ = s;
      return s;
    }
    poke_ = true;
    next_tick_ = Clock::now();
    return s;
  }

  // Quota: rank among live nodes by id.
  const PGresult* nodes = r[3].get();
  int n = PQntuples(nodes);
  int rank = -1;
  foreign_wake_ = SteadyTime::max();
  for (int i = 0; i < n; ++i) {
    std::int64_t other = Int(nodes, i, 0);
    if (other == node_id_) {
      rank = i;
    } else {
      foreign_wake_ =
          std::min(foreign_wake_, received + milliseconds(Int(nodes, i, 1)) + kForeignSlack);
    }
  }
  const PGresult* parts = r[4].get();
  int claimable = static_cast<int>(Int(parts, 0, 0));
  if (!PQgetisnull(parts, 0, 1)) {
    foreign_wake_ =
        std::min(foreign_wake_, received + milliseconds(Int(parts, 0, 1)) + kForeignSlack);
  }
  if (rank < 0) return Status::Ok();  // not live by the server's clock: renew first
  int quota = partitions_ / n + (rank < partitions_ % n ? 1 : 0);
  if (mine > quota) {
    std::vector<int> surplus;
    for (auto it = owned.rbegin();
         it != owned.rend() && mine - static_cast<int>(surplus.size()) > quota; ++it) {
      surplus.push_back(it->first);
    }
    return Release(std::move(surplus));
  }
  if (mine < quota && claimable > 0) return Claim(std::min(quota - mine, claimable));
  return Status::Ok();
}

Status LeaseKeeper::Claim(int count) {
  const std::string id = std::to_string(node_id_);
  const SteadyTime sent = Clock::now();
  std::string sql =
      "WITH c AS (SELECT partition, owner FROM syncsched_cluster.partitions "
      "WHERE owner IS NULL OR (owner <> " +
      id + " AND expires_at <= now()) ORDER BY owner IS NOT NULL, partition LIMIT " +
      std::to_string(count) +
      " FOR UPDATE SKIP LOCKED) "
      "UPDATE syncsched_cluster.partitions AS p SET owner = " +
      id + ", epoch = p.epoch + 1, expires_at = now() + " + Ms(lease_) +
      ", acquired_at = now() FROM c WHERE p.partition = c.partition AND EXISTS (SELECT 1 FROM "
      "syncsched_cluster.nodes WHERE id = " +
      id + " AND expires_at > now()) RETURNING p.partition, p.epoch, c.owner IS NOT NULL";
  auto res = Query(sql, "claiming partitions");
  if (!res.ok()) return res.status();
  const SteadyTime received = Clock::now();
  const PGresult* r = (*res)[0].get();
  LeaseChange change;
  {
    std::lock_guard lock(mu_);
    for (int i = 0; i < PQntuples(r); ++i) {
      Lease lease{static_cast<int>(Int(r, i, 0)), Int(r, i, 1), received, sent + lease_ - margin_};
      bool takeover = std::strcmp(PQgetvalue(r, i, 2), "t") == 0;
      (takeover ? takeovers_ : claims_).fetch_add(1, std::memory_order_relaxed);
      if (held_.count(lease.partition) != 0) EndTenure(lease.partition, received, &change);
      if (lease.valid_until <= received) continue;  // too slow to count: the renewal adopts it
      held_[lease.partition] = lease;
      change.gained.push_back(lease);
    }
  }
  // Fewer than asked: rows were locked (another claimer, or a fenced transaction of their old
  // owner still open) or changed meanwhile. Look again soon rather than at the next renewal.
  if (PQntuples(r) < count) {
    next_tick_ = std::min(next_tick_, Clock::now() + kClaimRetry);
    EndLostNodesSessions();
  }
  Publish(change);
  return Status::Ok();
}

void LeaseKeeper::EndLostNodesSessions() {
  // The sessions named for a node that is not live, inside a transaction older than lease / 2
  // (the name's prefix compared with left(), not LIKE: no wildcard to escape).
  const std::string prefix = kFencedSessionPrefix;
  std::string sql =
      "SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid)) FROM pg_stat_activity a "
      "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND "
      "left(a.application_name, " +
      std::to_string(prefix.size()) + ") = '" + prefix + "' AND a.xact_start < now() - " +
      Ms(lease_ / 2) +
      " AND NOT EXISTS (SELECT 1 FROM syncsched_cluster.nodes n WHERE n.expires_at > now() AND "
      "a.application_name = '" +
      prefix + "' || n.id)";
  auto res = Query(sql, "ending the sessions of lost nodes");
  // An error (no privilege to signal the other engines' sessions, say) leaves the takeover to wait
  // for the old owner's transaction, as without this; the claim is retried either way.
  if (!res.ok()) return;
  sessions_ended_.fetch_add(static_cast<std::uint64_t>(Int((*res)[0].get(), 0, 0)),
                            std::memory_order_relaxed);
}

Status LeaseKeeper::Release(std::vector<int> partitions) {
  if (partitions.empty()) return Status::Ok();
  // Stop acting on them first; the release then waits (FOR UPDATE) for commits still in flight.
  LeaseChange change;
  {
    std::lock_guard lock(mu_);
    SteadyTime now = Clock::now();
    for (int p : partitions) {
      if (held_.count(p) != 0) EndTenure(p, now, &change);
    }
  }
  Publish(change);
  const std::string id = std::to_string(node_id_);
  std::string sql =
      "WITH c AS (SELECT partition FROM syncsched_cluster.partitions WHERE partition = ANY(" +
      Ids(partitions) + ") AND owner = " + id +
      " FOR UPDATE) UPDATE syncsched_cluster.partitions AS p SET owner = NULL, expires_at = NULL "
      "FROM c WHERE p.partition = c.partition RETURNING p.partition; NOTIFY " +
      kClusterChannel;
  auto res = Query(sql, "releasing partitions");
  if (!res.ok()) return res.status();
  releases_.fetch_add(static_cast<std::uint64_t>(PQntuples((*res)[0].get())),
                      std::memory_order_relaxed);
  return Status::Ok();
}

void LeaseKeeper::Leave() {
  LeaseChange change;
  {
    std::lock_guard lock(mu_);
    SteadyTime now = Clock::now();
    while (!held_.empty()) EndTenure(held_.begin()->first, now, &change);
  }
  Publish(change);
  if (conn_ == nullptr || !health_.ok()) return;
  const std::string id = std::to_string(node_id_);
  std::string sql =
      "WITH c AS (SELECT partition FROM syncsched_cluster.partitions WHERE owner = " + id +
      " FOR UPDATE) UPDATE syncsched_cluster.partitions AS p SET owner = NULL, expires_at = NULL "
      "FROM c WHERE p.partition = c.partition RETURNING p.partition; "
      "DELETE FROM syncsched_cluster.nodes WHERE id = " +
      id + "; NOTIFY " + kClusterChannel;
  auto res = Query(sql, "leaving the cluster");
  if (res.ok()) {
    releases_.fetch_add(static_cast<std::uint64_t>(PQntuples((*res)[0].get())),
                        std::memory_order_relaxed);
  }
}

bool LeaseKeeper::Ended(int partition, std::int64_t epoch) const {
  return std::any_of(ended_.begin(), ended_.end(),
                     [&](const Tenure& t) { return t.partition == partition && t.epoch == epoch; });
}

void LeaseKeeper::EndTenure(int partition, SteadyTime end, LeaseChange* change) {
  auto it = held_.find(partition);
  if (it == held_.end()) return;
  Tenure t{partition, it->second.epoch, it->second.acquired, std::min(it->second.valid_until, end)};
  ended_.push_back(t);
  if (ended_.size() > kTenureLog) ended_.pop_front();
  change->lost.push_back({partition, it->second.epoch});
  held_.erase(it);
}

void LeaseKeeper::ExpireLocal(SteadyTime now) {
  LeaseChange change;
  {
    std::lock_guard lock(mu_);
    for (auto it = held_.begin(); it != held_.end();) {
      int partition = it->first;
      bool expired = it->second.valid_until <= now;
      ++it;
      if (expired) {
        lost_.fetch_add(1, std::memory_order_relaxed);
        EndTenure(partition, now, &change);
      }
    }
  }
  Publish(change);
}

void LeaseKeeper::Publish(const LeaseChange& change) {
  if (change.gained.empty() && change.lost.empty()) return;
  if (options_.on_change) options_.on_change(change);
}

void LeaseKeeper::Run() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (paused_ && !stop_) {
        paused_ack_ = true;
        cv_.notify_all();
        cv_.wait(lock, [&] { return !paused_ || stop_; });
        paused_ack_ = false;
      }
      if (stop_) break;
      if (!health_.ok()) {
        lock.unlock();
        WaitUntil(Clock::now() + milliseconds(60'000));
        continue;
      }
    }
    SteadyTime now = Clock::now();
    ExpireLocal(now);
    // Withdraw: leave once, then wait out the time; at its end join again (the next Tick finds
    // the node row gone and joins under the same id).
    bool away = false;
    {
      std::lock_guard lock(mu_);
      if (withdrawn_ && now >= withdrawn_until_) {
        withdrawn_ = false;
        if (left_) poke_ = true;
        left_ = false;
      }
      away = withdrawn_;
    }
    if (away) {
      bool leave = false;
      SteadyTime until;
      {
        std::lock_guard lock(mu_);
        leave = !left_;
        left_ = true;
        until = withdrawn_until_;
      }
      if (leave) Leave();
      WaitUntil(until);
      continue;
    }
    if (conn_ == nullptr && now >= next_connect_) {
      Status s = Connect(options_.connect_timeout);
      if (s.ok()) {
        poke_ = true;
        backoff_ = milliseconds(100);
      } else {
        next_connect_ = Clock::now() + backoff_;
        backoff_ = std::min(backoff_ * 2, renew_every_);
      }
      std::lock_guard lock(mu_);
      connected_ = conn_ != nullptr;
    }
    if (conn_ != nullptr && (poke_ || now >= next_tick_ || now >= foreign_wake_)) {
      poke_ = false;
      Status s = Tick();
      if (!s.ok() && conn_ != nullptr) next_tick_ = std::min(next_tick_, Clock::now() + kRetry);
      if (conn_ == nullptr) next_connect_ = Clock::now();  // reconnect at once, then back off
      std::lock_guard lock(mu_);
      connected_ = conn_ != nullptr;
    }
    SteadyTime deadline = conn_ != nullptr ? std::min(next_tick_, foreign_wake_) : next_connect_;
    {
      std::lock_guard lock(mu_);
      for (const auto& [p, lease] : held_) deadline = std::min(deadline, lease.valid_until);
    }
    if (!poke_) WaitUntil(deadline);
  }
  Leave();
  std::lock_guard lock(mu_);
  connected_ = false;
}

// ---- Queries from any thread ----

LeaseSnapshot LeaseKeeper::Snapshot() const {
  std::lock_guard lock(mu_);
  LeaseSnapshot snap;
  snap.node_id = node_id_;
  snap.partitions_total = partitions_;
  snap.live_nodes = live_nodes_;
  snap.connected = connected_;
  for (const auto& [p, lease] : held_) snap.leases.push_back(lease);
  return snap;
}

std::map<int, std::int64_t> LeaseKeeper::Owned(SteadyTime now) const {
  std::lock_guard lock(mu_);
  std::map<int, std::int64_t> out;
  for (const auto& [p, lease] : held_) {
    if (lease.ValidAt(now)) out[p] = lease.epoch;
  }
  return out;
}

bool LeaseKeeper::Holds(int partition, std::int64_t epoch, SteadyTime now) const {
  std::lock_guard lock(mu_);
  auto it = held_.find(partition);
  return it != held_.end() && it->second.epoch == epoch && it->second.ValidAt(now);
}

Result<Fence> LeaseKeeper::FenceFor(std::span<const int> partitions, SteadyTime now) {
  Fence fence;
  fence.node_id = node_id_;
  std::vector<int> sorted(partitions.begin(), partitions.end());
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  std::lock_guard lock(mu_);
  for (int p : sorted) {
    auto it = held_.find(p);
    if (it == held_.end() || !it->second.ValidAt(now)) {
      fenced_.fetch_add(1, std::memory_order_relaxed);
      return Status::FailedPrecondition(
          "cluster node '" + options_.node + "': fenced locally: partition " + std::to_string(p) +
          (it == held_.end() ? " is not held" : "'s lease is no longer valid") + " " +
          kFencedMarker);
    }
    fence.partitions.push_back({p, it->second.epoch});
  }
  return fence;
}

Status LeaseKeeper::CheckFence(PGconn* txn, const Fence& fence) {
  Status s = cluster::CheckFence(txn, fence);
  if (IsFenced(s)) fenced_.fetch_add(1, std::memory_order_relaxed);
  return s;
}

LeaseKeeperCounters LeaseKeeper::counters() const {
  LeaseKeeperCounters c;
  c.renewals = renewals_.load(std::memory_order_relaxed);
  c.claims = claims_.load(std::memory_order_relaxed);
  c.takeovers = takeovers_.load(std::memory_order_relaxed);
  c.releases = releases_.load(std::memory_order_relaxed);
  c.lost = lost_.load(std::memory_order_relaxed);
  c.fenced_refusals = fenced_.load(std::memory_order_relaxed);
  c.sessions_ended = sessions_ended_.load(std::memory_order_relaxed);
  c.withdrawals = withdrawals_.load(std::memory_order_relaxed);
  return c;
}

void LeaseKeeper::Withdraw(milliseconds duration) {
  {
    std::lock_guard lock(mu_);
    if (withdrawn_ || stop_) return;
    withdrawn_ = true;
    withdrawn_until_ = Clock::now() + duration;
  }
  withdrawals_.fetch_add(1, std::memory_order_relaxed);
  Wake();
}

void LeaseKeeper::Rejoin() {
  {
    std::lock_guard lock(mu_);
    if (!withdrawn_) return;
    withdrawn_until_ = Clock::now();
  }
  Wake();
}

bool LeaseKeeper::withdrawn() const {
  std::lock_guard lock(mu_);
  return withdrawn_;
}

Status LeaseKeeper::Health() const {
  std::lock_guard lock(mu_);
  return health_;
}

void PauseForTest(LeaseKeeper& keeper, bool paused) {
  std::unique_lock lock(keeper.mu_);
  keeper.paused_ = paused;
  if (!paused) {
    keeper.cv_.notify_all();
    return;
  }
  lock.unlock();
  keeper.Wake();
  lock.lock();
  keeper.cv_.wait(lock, [&] { return keeper.paused_ack_ || keeper.stop_; });
}

std::vector<LeaseKeeper::Tenure> TenuresForTest(const LeaseKeeper& keeper) {
  std::lock_guard lock(keeper.mu_);
  std::vector<LeaseKeeper::Tenure> out(keeper.ended_.begin(), keeper.ended_.end());
  for (const auto& [p, lease] : keeper.held_) {
    out.push_back({p, lease.epoch, lease.acquired, lease.valid_until});
  }
  return out;
}

}  // namespace syncsched::cluster
