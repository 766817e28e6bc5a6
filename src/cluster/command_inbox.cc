#include "cluster/command_inbox.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <utility>

#include "cluster/cluster_schema.h"
#include "cluster/pg_deadline.h"
#include "cluster/pg_util.h"

namespace syncsched::cluster {
namespace {

using internal::PgError;
using internal::ResultPtr;
using internal::SocketDeadline;

using std::chrono::milliseconds;

// The status of a call whose reply deadline (CommandInbox's reply_timeout) passed.
Status NoReply(milliseconds timeout, std::string_view context) {
  return Status::Unavailable(std::string(context) + ": no reply from the database within " +
                             std::to_string(timeout.count()) + " ms; the connection was closed");
}

// pg_util's PgExec under a reply deadline of `timeout`.
Status PgExec(milliseconds timeout, PGconn* conn, const char* sql, std::string_view context) {
  SocketDeadline deadline;
  deadline.Arm(conn, timeout);
  Status s = internal::PgExec(conn, sql, context);
  if (deadline.Disarm()) return NoReply(timeout, context);
  return s;
}

std::string Hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out = "\\x";
  out.reserve(2 + bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

int Nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return 0;
}

// A bytea in PostgreSQL's text output ("\x..." hex).
std::string Unhex(const char* text) {
  std::string_view s(text);
  if (s.size() >= 2 && s[0] == '\\' && s[1] == 'x') s.remove_prefix(2);
  std::string out;
  out.reserve(s.size() / 2);
  for (std::size_t i = 0; i + 1 < s.size(); i += 2) {
    out.push_back(static_cast<char>(Nibble(s[i]) << 4 | Nibble(s[i + 1])));
  }
  return out;
}

long long Int(const PGresult* r, int row, int col) {
  return PQgetisnull(r, row, col) ? 0 : std::strtoll(PQgetvalue(r, row, col), nullptr, 10);
}

std::string IntArray(const std::vector<int>& v) {
  std::string out = "{";
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(v[i]);
  }
  return out + "}";
}

// Runs `sql` with text parameters (nullptr-free) on `conn`.
Status Exec(milliseconds timeout, PGconn* conn, const char* sql,
            const std::vector<std::string>& params, std::string_view context,
            ResultPtr* out = nullptr) {
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const std::string& p : params) values.push_back(p.c_str());
  SocketDeadline deadline;
  deadline.Arm(conn, timeout);
  ResultPtr res(PQexecParams(conn, sql, static_cast<int>(values.size()), nullptr, values.data(),
                             nullptr, nullptr, 0));
  if (deadline.Disarm()) return NoReply(timeout, context);
  ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return PgError(conn, context, res.get());
  if (out != nullptr) *out = std::move(res);
  return Status::Ok();
}

std::vector<CommandPart> ReadParts(const PGresult* r) {
  std::vector<CommandPart> parts;
  for (int i = 0; i < PQntuples(r); ++i) {
    CommandPart& p = parts.emplace_back();
    p.partition = static_cast<int>(Int(r, i, 0));
    p.state = static_cast<PartState>(Int(r, i, 1));
    if (!PQgetisnull(r, i, 2)) p.result = Unhex(PQgetvalue(r, i, 2));
  }
  return parts;
}

constexpr const char* kPartsSql =
    "SELECT partition, state, result FROM syncsched_cluster.command_parts WHERE command = $1 "
    "ORDER BY partition";

}  // namespace

CommandInbox::CommandInbox(std::string uri, std::int64_t node_id,
                           std::chrono::milliseconds connect_timeout,
                           std::chrono::milliseconds reply_timeout)
    : uri_(std::move(uri)),
      node_id_(node_id),
      connect_timeout_(connect_timeout),
      reply_timeout_(reply_timeout) {}

CommandInbox::~CommandInbox() {
  for (PGconn* c : idle_) PQfinish(c);
  if (listen_ != nullptr) PQfinish(listen_);
}

PGconn* CommandInbox::Acquire(Status* error) {
  {
    std::lock_guard lock(mu_);
    while (!idle_.empty()) {
      PGconn* c = idle_.back();
      idle_.pop_back();
      if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) == PQTRANS_IDLE) return c;
      PQfinish(c);
    }
  }
  return Connect(error);
}

PGconn* CommandInbox::Connect(Status* error) {
  std::string timeout =
      std::to_string(std::max<long long>(2, (connect_timeout_.count() + 999) / 1000));
  const char* keys[] = {"fallback_application_name", "connect_timeout", "dbname", nullptr};
  const char* values[] = {"syncsched-commands", timeout.c_str(), uri_.c_str(), nullptr};
  PGconn* c = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  if (c == nullptr || PQstatus(c) != CONNECTION_OK) {
    *error = Status::Unavailable(std::string("cluster: the database cannot be reached: ") +
                                 (c != nullptr ? PQerrorMessage(c) : "out of memory"));
    if (c != nullptr) PQfinish(c);
    return nullptr;
  }
  // No statement of the inbox runs for long; a hung server must not hold a command forever.
  if (Status s =
          PgExec(reply_timeout_, c, "SET statement_timeout = '5s'", "preparing a command session");
      !s.ok()) {
    *error = s;
    PQfinish(c);
    return nullptr;
  }
  // The server's clock against this process's steady clock, for Submit's expiry: the server read
  // its clock before `answered`.
  ResultPtr res;
  Status s =
      Exec(reply_timeout_, c, "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8", {},
           "reading the database's clock", &res);
  if (!s.ok()) {
    *error = s;
    PQfinish(c);
    return nullptr;
  }
  auto answered = std::chrono::steady_clock::now();
  std::lock_guard lock(mu_);
  server_clock_ = {Int(res.get(), 0, 0), answered};
  return c;
}

void CommandInbox::Warm(std::size_t n) {
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (idle_.size() >= n) return;
    }
    Status err;
    PGconn* c = Connect(&err);
    if (c == nullptr) return;
    Release(c);
  }
}

void CommandInbox::Release(PGconn* conn) {
  if (conn == nullptr) return;
  if (PQstatus(conn) != CONNECTION_OK || PQtransactionStatus(conn) != PQTRANS_IDLE) {
    PQfinish(conn);
    return;
  }
  std::lock_guard lock(mu_);
  if (idle_.size() < 8) {
    idle_.push_back(conn);
  } else {
    PQfinish(conn);
  }
}

Result<std::int64_t> CommandInbox::Submit(const std::string& body,
                                          const std::vector<int>& partitions, bool* in_doubt) {
  if (in_doubt != nullptr) *in_doubt = false;
  Status err;
  PGconn* c = Acquire(&err);
  if (c == nullptr) return err;
  // The command expires, in the server's clock, when this receiver gives up on the statement
  // (its reply deadline; ServerClock). A statement that reaches the database later (a stalled
  // route that carries it after all) records nothing, so that no owner applies a command its
  // receiver answered as failed.
  std::int64_t expiry = 0;
  {
    std::lock_guard lock(mu_);
    expiry = server_clock_.Expiry(std::chrono::steady_clock::now() + reply_timeout_);
  }
  // One statement, sent as one simple-protocol message with its values as literals: the server
  // executes and commits it when the whole message has arrived, so that no later message (an
  // extended-protocol Sync, which a route could hold back) decides whether it commits after the
  // expiry was checked. The command, its parts and the notice commit together (a NOTIFY is
  // delivered at commit).
  std::string hex = Hex(body);  // "\x..."; decode() takes the digits alone
  std::string sql =
      "WITH c AS (INSERT INTO syncsched_cluster.commands(id, receiver, body) "
      "SELECT nextval('syncsched_cluster.command_ids'), " +
      std::to_string(node_id_) + ", decode('" + hex.substr(2) +
      "', 'hex') WHERE clock_timestamp() < to_timestamp(" + std::to_string(expiry) +
      " / 1000000.0) RETURNING id), "
      "p AS (INSERT INTO syncsched_cluster.command_parts(command, partition) "
      "SELECT c.id, unnest('" +
      IntArray(partitions) +
      "'::int4[]) FROM c), "
      "n AS (SELECT pg_notify('syncsched_commands', c.id::text) FROM c) "
      "SELECT c.id, (SELECT count(*) FROM n) FROM c";
  ResultPtr res;
  SocketDeadline deadline;
  deadline.Arm(c, reply_timeout_);
  Status s = internal::PgExec(c, sql.c_str(),
                              "cluster: recording a command for the partitions' owners", &res);
  if (deadline.Disarm()) {
    if (in_doubt != nullptr) *in_doubt = true;
    s = Status::Unavailable(
        "cluster: recording a command for the partitions' owners: no reply from the database "
        "within " +
        std::to_string(reply_timeout_.count()) +
        " ms; the connection was closed. Whether the command was recorded is unknown: it was if "
        "its statement reached the database within that time (its owners then apply it), and "
        "never will be otherwise");
  }
  if (s.ok() && PQntuples(res.get()) != 1) {
    s = Status::Unavailable(
        "cluster: the command reached the database after its receiver's deadline (" +
        std::to_string(reply_timeout_.count()) + " ms); nothing was recorded");
  }
  std::int64_t id = s.ok() ? Int(res.get(), 0, 0) : 0;
  Release(c);
  if (!s.ok()) return s;
  return id;
}

Result<std::vector<CommandPart>> CommandInbox::Parts(std::int64_t id) {
  Status err;
  PGconn* c = Acquire(&err);
  if (c == nullptr) return err;
  ResultPtr res;
  Status s = Exec(reply_timeout_, c, kPartsSql, {std::to_string(id)},
                  "cluster: reading a command's results", &res);
  Release(c);
  if (!s.ok()) return s;
  return ReadParts(res.get());
}

Result<std::vector<CommandPart>> CommandInbox::Cancel(std::int64_t id) {
  Status err;
  PGconn* c = Acquire(&err);
  if (c == nullptr) return err;
  Status s = Exec(reply_timeout_, c,
                  "UPDATE syncsched_cluster.command_parts SET state = 2, done_at = now() "
                  "WHERE command = $1 AND state = 0",
                  {std::to_string(id)}, "cluster: cancelling a command's pending parts");
  ResultPtr res;
  if (s.ok()) {
    s = Exec(reply_timeout_, c, kPartsSql, {std::to_string(id)},
             "cluster: reading a command's results", &res);
  }
  Release(c);
  if (!s.ok()) return s;
  return ReadParts(res.get());
}

void CommandInbox::Forget(std::int64_t id) {
  Status err;
  PGconn* c = Acquire(&err);
  if (c == nullptr) return;
  (void)Exec(reply_timeout_, c, "DELETE FROM syncsched_cluster.commands WHERE id = $1",
             {std::to_string(id)}, "cluster: deleting an answered command");
  Release(c);
}

void CommandInbox::Cleanup() {
  Status err;
  PGconn* c = Acquire(&err);
  if (c == nullptr) return;
  (void)PgExec(reply_timeout_, c,
               "DELETE FROM syncsched_cluster.commands AS c "
               "WHERE created_at < now() - interval '10 minutes' AND NOT EXISTS "
               "(SELECT 1 FROM syncsched_cluster.command_parts AS p "
               "WHERE p.command = c.id AND p.state = 0)",
               "cluster: deleting old commands");
  // The catalog's log older than an hour, and from which version on it is whole now.
  (void)PgExec(reply_timeout_, c,
               "WITH d AS (DELETE FROM syncsched_cluster.catalog_log "
               "WHERE at < now() - interval '1 hour' RETURNING version) "
               "UPDATE syncsched_cluster.meta SET value = greatest(value, "
               "(SELECT max(version) + 1 FROM d)) "
               "WHERE key = 'catalog_log_from' AND EXISTS (SELECT 1 FROM d)",
               "cluster: deleting the catalog's old log");
  Release(c);
}

Result<std::int64_t> CommandInbox::CatalogVersion() {
  Status err;
  PGconn* c = Acquire(&err);
  if (c == nullptr) return err;
  ResultPtr res;
  Status s = Exec(reply_timeout_, c,
                  "SELECT value FROM syncsched_cluster.meta WHERE key = 'catalog_version'", {},
                  "cluster: reading the catalog's version", &res);
  Release(c);
  if (!s.ok()) return s;
  if (PQntuples(res.get()) != 1) {
    return Status::Internal(
        "the cluster schema syncsched_cluster is corrupt: "
        "syncsched_cluster.meta misses catalog_version");
  }
  return static_cast<std::int64_t>(Int(res.get(), 0, 0));
}

Status CommandInbox::AckCatalog(std::int64_t version) {
  Status err;
  PGconn* c = Acquire(&err);
  if (c == nullptr) return err;
  Status s = Exec(reply_timeout_, c,
                  "UPDATE syncsched_cluster.nodes SET catalog_version = "
                  "greatest(catalog_version, $2::int8) WHERE id = $1::int8",
                  {std::to_string(node_id_), std::to_string(version)},
                  "cluster: recording the catalog's version applied", nullptr);
  Release(c);
  return s;
}

Result<CatalogChanges> CommandInbox::CatalogSince(std::int64_t after) {
  Status err;
  PGconn* c = Acquire(&err);
  if (c == nullptr) return err;
  CatalogChanges out;
  auto read = [&]() -> Status {
    ResultPtr res;
    Status s = Exec(reply_timeout_, c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", {},
                    "cluster: reading the catalog", nullptr);
    if (!s.ok()) return s;
    s = Exec(reply_timeout_, c,
             "SELECT (SELECT value FROM syncsched_cluster.meta WHERE key = 'catalog_version'), "
             "(SELECT value FROM syncsched_cluster.meta WHERE key = 'catalog_log_from')",
             {}, "cluster: reading the catalog's version", &res);
    if (!s.ok()) return s;
    if (PQntuples(res.get()) != 1 || PQgetisnull(res.get(), 0, 0) || PQgetisnull(res.get(), 0, 1)) {
      return Status::Internal(
          "the cluster schema syncsched_cluster is corrupt: "
          "syncsched_cluster.meta misses catalog_version or catalog_log_from");
    }
    out.version = Int(res.get(), 0, 0);
    out.log_from = Int(res.get(), 0, 1);
    s = Exec(reply_timeout_, c,
             "SELECT kind, integration, connection FROM syncsched_cluster.catalog_log "
             "WHERE version > $1::int8 AND version <= $2::int8 ORDER BY version, ord",
             {std::to_string(after), std::to_string(out.version)},
             "cluster: reading the catalog's log", &res);
    if (!s.ok()) return s;
    // The last state of each connection, in the order first seen.
    std::vector<std::pair<store::ConnectionRow, bool>> last;
    std::map<std::pair<std::string, std::string>, std::size_t> at;
    for (int i = 0; i < PQntuples(res.get()); ++i) {
      store::ConnectionRow row{Unhex(PQgetvalue(res.get(), i, 1)),
                               Unhex(PQgetvalue(res.get(), i, 2))};
      bool added = Int(res.get(), i, 0) == 2;
      auto [it, fresh] = at.try_emplace({row.integration, row.connection}, last.size());
      if (fresh) {
        last.emplace_back(std::move(row), added);
      } else {
        last[it->second].second = added;
      }
    }
    for (auto& [row, added] : last) (added ? out.added : out.deleted).push_back(std::move(row));
    s = Exec(reply_timeout_, c,
             "SELECT integration, name, frequency_text, frequency_ms, auto_start, timeout_ms, "
             "heartbeat_timeout_ms, policy FROM syncsched.syncs ORDER BY 1, 2",
             {}, "cluster: reading syncsched.syncs", &res);
    if (!s.ok()) return s;
    for (int i = 0; i < PQntuples(res.get()); ++i) {
      store::SyncRow& row = out.syncs.emplace_back();
      row.integration = Unhex(PQgetvalue(res.get(), i, 0));
      row.name = Unhex(PQgetvalue(res.get(), i, 1));
      row.frequency_text = Unhex(PQgetvalue(res.get(), i, 2));
      row.frequency_ms = Int(res.get(), i, 3);
      row.auto_start = std::strcmp(PQgetvalue(res.get(), i, 4), "t") == 0;
      row.timeout_ms = Int(res.get(), i, 5);
      row.heartbeat_timeout_ms = Int(res.get(), i, 6);
      row.policy = Unhex(PQgetvalue(res.get(), i, 7));
    }
    s = Exec(reply_timeout_, c,
             "SELECT integration, max_concurrency FROM syncsched.integrations ORDER BY 1", {},
             "cluster: reading syncsched.integrations", &res);
    if (!s.ok()) return s;
    for (int i = 0; i < PQntuples(res.get()); ++i) {
      out.integrations.push_back(store::IntegrationRow{
          Unhex(PQgetvalue(res.get(), i, 0)), static_cast<std::uint64_t>(Int(res.get(), i, 1))});
    }
    return Exec(reply_timeout_, c, "COMMIT", {}, "cluster: reading the catalog", nullptr);
  };
  Status s = read();
  if (!s.ok() && PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE) {
    (void)PgExec(reply_timeout_, c, "ROLLBACK", "cluster: ending a catalog read");
  }
  Release(c);
  if (!s.ok()) return s;
  return out;
}

Result<std::vector<std::string>> CommandInbox::NodesBehind(std::int64_t version) {
  Status err;
  PGconn* c = Acquire(&err);
  if (c == nullptr) return err;
  ResultPtr res;
  Status s = Exec(reply_timeout_, c,
                  // A node whose lease lapsed but whose partitions nobody took yet may renew
                  // them and act on what it holds (after the database came back): waited for.
                  "SELECT n.name FROM syncsched_cluster.nodes AS n "
                  "WHERE n.catalog_version < $1::int8 AND (n.expires_at > now() OR EXISTS "
                  "(SELECT 1 FROM syncsched_cluster.partitions AS p WHERE p.owner = n.id)) "
                  "ORDER BY n.name",
                  {std::to_string(version)}, "cluster: reading the nodes' catalog versions", &res);
  Release(c);
  if (!s.ok()) return s;
  std::vector<std::string> out;
  for (int i = 0; i < PQntuples(res.get()); ++i) out.emplace_back(PQgetvalue(res.get(), i, 0));
  return out;
}

Result<std::vector<int>> CommandInbox::RevokeBehind(std::int64_t version) {
  Status err;
  PGconn* c = Acquire(&err);
  if (c == nullptr) return err;
  ResultPtr res;
  // FOR UPDATE waits for the fenced commits in flight on these rows (they hold them FOR KEY
  // SHARE until they end), so none of the old owner's commits can follow this one.
  Status s = Exec(reply_timeout_, c,
                  "WITH c AS (SELECT p.partition FROM syncsched_cluster.partitions AS p "
                  "JOIN syncsched_cluster.nodes AS n ON n.id = p.owner "
                  "WHERE n.catalog_version < $1::int8 FOR UPDATE OF p) "
                  "UPDATE syncsched_cluster.partitions AS p SET owner = NULL, expires_at = NULL "
                  "FROM c WHERE p.partition = c.partition RETURNING p.partition",
                  {std::to_string(version)}, "cluster: taking partitions from nodes behind", &res);
  std::vector<int> out;
  if (s.ok()) {
    for (int i = 0; i < PQntuples(res.get()); ++i) {
      out.push_back(static_cast<int>(Int(res.get(), i, 0)));
    }
    std::sort(out.begin(), out.end());
    if (!out.empty()) {
      s = Exec(reply_timeout_, c, (std::string("NOTIFY ") + kClusterChannel).c_str(), {},
               "cluster: announcing the partitions taken", nullptr);
    }
  }
  Release(c);
  if (!s.ok()) return s;
  return out;
}

Result<std::vector<PendingCommand>> CommandInbox::Pending(const std::vector<int>& partitions) {
  std::vector<PendingCommand> out;
  if (partitions.empty()) return out;
  Status err;
  PGconn* c = Acquire(&err);
  if (c == nullptr) return err;
  ResultPtr res;
  Status s = Exec(reply_timeout_, c,
                  "SELECT p.command, p.partition, c.body FROM syncsched_cluster.command_parts AS p "
                  "JOIN syncsched_cluster.commands AS c ON c.id = p.command "
                  "WHERE p.state = 0 AND p.partition = ANY($1::int4[]) "
                  "ORDER BY p.command, p.partition",
                  {IntArray(partitions)}, "cluster: reading pending commands", &res);
  Release(c);
  if (!s.ok()) return s;
  for (int i = 0; i < PQntuples(res.get()); ++i) {
    PendingCommand& p = out.emplace_back();
    p.id = Int(res.get(), i, 0);
    p.partition = static_cast<int>(Int(res.get(), i, 1));
    p.body = Unhex(PQgetvalue(res.get(), i, 2));
  }
  return out;
}

Result<std::vector<StoredSchedule>> CommandInbox::Schedules(
    const std::string& integration, const std::optional<std::string>& connection) {
  Status err;
  PGconn* c = Acquire(&err);
  if (c == nullptr) return err;
  ResultPtr res;
  std::string sql =
      "SELECT integration, connection, sync, variant, uid, coalesce(partition, -1), state, "
      "anchor_ms, frequency_override_ms, next_slot_ms, runs, failures, skipped, last_start_ms, "
      "last_finish_ms, last_ok, last_error, length(run_id) > 0, coalesce(w_at_ms, 0), "
      "coalesce(r_at_ms, 0) FROM syncsched.schedules WHERE integration = $1::bytea";
  std::vector<std::string> params = {Hex(integration)};
  if (connection) {
    sql += " AND connection = $2::bytea";
    params.push_back(Hex(*connection));
  }
  sql += " ORDER BY connection, sync, variant";
  Status s = Exec(reply_timeout_, c, sql.c_str(), params, "cluster: reading schedules", &res);
  Release(c);
  if (!s.ok()) return s;
  std::vector<StoredSchedule> out;
  const PGresult* r = res.get();
  out.reserve(static_cast<std::size_t>(PQntuples(r)));
  for (int i = 0; i < PQntuples(r); ++i) {
    StoredSchedule& row = out.emplace_back();
    row.integration = Unhex(PQgetvalue(r, i, 0));
    row.connection = Unhex(PQgetvalue(r, i, 1));
    row.sync = Unhex(PQgetvalue(r, i, 2));
    row.variant = Unhex(PQgetvalue(r, i, 3));
    row.uid = static_cast<std::uint64_t>(Int(r, i, 4));
    row.partition = static_cast<int>(Int(r, i, 5));
    row.state = static_cast<int>(Int(r, i, 6));
    row.anchor_ms = Int(r, i, 7);
    row.frequency_override_ms = Int(r, i, 8);
    row.next_slot_ms = Int(r, i, 9);
    row.runs = static_cast<std::uint64_t>(Int(r, i, 10));
    row.failures = static_cast<std::uint64_t>(Int(r, i, 11));
    row.skipped = static_cast<std::uint64_t>(Int(r, i, 12));
    row.last_start_ms = Int(r, i, 13);
    row.last_finish_ms = Int(r, i, 14);
    row.last_ok = static_cast<int>(Int(r, i, 15));
    row.last_error = Unhex(PQgetvalue(r, i, 16));
    row.running = std::strcmp(PQgetvalue(r, i, 17), "t") == 0;
    row.waiting_at = Int(r, i, 18);
    row.retry_at = Int(r, i, 19);
  }
  return out;
}

bool CommandInbox::WaitForNotice(std::chrono::milliseconds timeout) {
  bool fresh = false;
  if (listen_ == nullptr || PQstatus(listen_) != CONNECTION_OK) {
    if (listen_ != nullptr) PQfinish(listen_);
    listen_ = nullptr;
    Status err;
    PGconn* c = Acquire(&err);
    if (c == nullptr) return false;
    if (!PgExec(reply_timeout_, c, "LISTEN syncsched_commands", "cluster: listening for commands")
             .ok()) {
      PQfinish(c);
      return false;
    }
    listen_ = c;
    fresh = true;  // notices sent while not listening are lost: the caller reads what is pending
  }
  auto take = [&] {
    bool any = false;
    while (PGnotify* n = PQnotifies(listen_)) {
      any = true;
      PQfreemem(n);
    }
    return any;
  };
  if (PQconsumeInput(listen_) != 1) {
    PQfinish(listen_);
    listen_ = nullptr;
    return true;
  }
  if (take() || fresh) return true;
  pollfd fd{PQsocket(listen_), POLLIN, 0};
  int n = ::poll(&fd, 1, static_cast<int>(std::max<long long>(1, timeout.count())));
  if (n <= 0) return false;
  if (PQconsumeInput(listen_) != 1) {
    PQfinish(listen_);
    listen_ = nullptr;
    return true;
  }
  return take();
}

}  // namespace syncsched::cluster
