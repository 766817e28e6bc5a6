#include "cluster/cluster_schema.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "cluster/pg_util.h"

namespace syncsched::cluster {
namespace {

using internal::PgExec;
using internal::ResultPtr;

// Version 1. `%P%` is replaced by the partition count.
constexpr const char* kSchemaV1 = R"sql(
CREATE SCHEMA IF NOT EXISTS syncsched_cluster;
CREATE TABLE syncsched_cluster.meta(
  key text PRIMARY KEY,
  value bigint NOT NULL
);
CREATE SEQUENCE syncsched_cluster.node_ids;
CREATE TABLE syncsched_cluster.nodes(
  id bigint PRIMARY KEY,
  name text NOT NULL UNIQUE,
  started_at timestamptz NOT NULL,
  heartbeat_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL
);
CREATE TABLE syncsched_cluster.partitions(
  partition integer PRIMARY KEY,
  owner bigint,
  epoch bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
  expires_at timestamptz,
  acquired_at timestamptz,
  CHECK ((owner IS NULL) = (expires_at IS NULL))
) WITH (fillfactor = 50);
INSERT INTO syncsched_cluster.meta(key, value) VALUES ('schema_version', 1), ('partitions', %P%);
INSERT INTO syncsched_cluster.partitions(partition) SELECT generate_series(0, %P% - 1);
-- The fence (fence.h): locks the rows of the partitions a commit writes FOR KEY SHARE, which a
-- takeover or a release (SELECT ... FOR UPDATE) must wait for, and raises SQLSTATE SYF01 unless
-- node p_node holds each of them at its epoch with an unexpired lease.
CREATE FUNCTION syncsched_cluster.fence(p_node bigint, p_partitions integer[], p_epochs bigint[])
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
  held integer;
  bad record;
BEGIN
  SELECT count(*) INTO held FROM (
    SELECT 1 FROM syncsched_cluster.partitions AS p
      JOIN unnest(p_partitions, p_epochs) AS f(partition, epoch) ON p.partition = f.partition
     WHERE p.owner = p_node AND p.epoch = f.epoch AND p.expires_at > now()
       FOR KEY SHARE OF p) AS s;
  IF held = cardinality(p_partitions) THEN
    RETURN;
  END IF;
  SELECT f.partition, f.epoch, p.owner, p.epoch AS now_epoch,
         CASE WHEN p.expires_at > now() THEN 'valid' ELSE 'expired' END AS lease
    INTO bad
    FROM unnest(p_partitions, p_epochs) AS f(partition, epoch)
    LEFT JOIN syncsched_cluster.partitions AS p ON p.partition = f.partition
   WHERE p.partition IS NULL OR p.owner IS DISTINCT FROM p_node OR p.epoch <> f.epoch
      OR NOT coalesce(p.expires_at > now(), false)
   ORDER BY f.partition LIMIT 1;
  RAISE EXCEPTION 'fenced: node % does not hold partition % at epoch % (owner %, epoch %, lease %)',
    p_node, bad.partition, bad.epoch, coalesce(bad.owner::text, 'none'),
    coalesce(bad.now_epoch::text, 'none'), coalesce(bad.lease, 'none')
    USING ERRCODE = 'SYF01';
END
$fn$;
)sql";

// Version 2 (from 1): the command inbox (command_inbox.h). A command sent to an engine that does
// not hold every partition it touches is a row of `commands` with one row of `command_parts` per
// partition; each part is applied by the partition's owner in its fenced commit
// (apply_command_part) or cancelled by the receiver after its deadline, never both: both are
// updates of the part's row that require state 0 (pending), so the row lock orders them and the
// later one finds the part no longer pending (apply_command_part then raises SYF02, rolling the
// owner's commit back).
constexpr const char* kSchemaV2 = R"sql(
CREATE SEQUENCE syncsched_cluster.command_ids;
CREATE TABLE syncsched_cluster.commands(
  id bigint PRIMARY KEY,
  receiver bigint NOT NULL,
  body bytea NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE syncsched_cluster.command_parts(
  command bigint NOT NULL REFERENCES syncsched_cluster.commands(id) ON DELETE CASCADE,
  partition integer NOT NULL,
  state smallint NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),
  result bytea,
  applied_by bigint,
  applied_epoch bigint,
  done_at timestamptz,
  PRIMARY KEY (command, partition)
);
CREATE INDEX command_parts_pending ON syncsched_cluster.command_parts(partition)
  WHERE state = 0;
CREATE FUNCTION syncsched_cluster.apply_command_part(p_command bigint, p_partition integer,
                                                     p_node bigint, p_epoch bigint,
                                                     p_result bytea)
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  UPDATE syncsched_cluster.command_parts
     SET state = 1, result = p_result, applied_by = p_node, applied_epoch = p_epoch,
         done_at = now()
   WHERE command = p_command AND partition = p_partition AND state = 0;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'command % is no longer pending in partition % (cancelled or applied)',
      p_command, p_partition USING ERRCODE = 'SYF02';
  END IF;
END
$fn$;
UPDATE syncsched_cluster.meta SET value = 2 WHERE key = 'schema_version';
)sql";

// Version 3: catalog commands through any engine (docs/cluster.md, "The catalog"). Every commit
// that changes the catalog (syncs, integrations, connections) adds one to catalog_version and
// notifies kCommandChannel in its transaction; each engine, once it has applied the catalog as of
// a version to the partitions it holds, writes that version into its node row. A receiver waits
// for every live node to have done so before it answers (read-your-writes on any engine).
constexpr const char* kSchemaV3 = R"sql(
INSERT INTO syncsched_cluster.meta(key, value) VALUES ('catalog_version', 0)
  ON CONFLICT (key) DO NOTHING;
ALTER TABLE syncsched_cluster.nodes ADD COLUMN IF NOT EXISTS catalog_version bigint NOT NULL
  DEFAULT 0;
UPDATE syncsched_cluster.meta SET value = 3 WHERE key = 'schema_version';
)sql";

// Version 4: the catalog's log, so that an engine applies a change of the connections by reading
// that change rather than every connection: each commit that adds or deletes connections writes
// one row per connection here, at the catalog version it counts (`ord`: their order in the
// commit, deletions first, as the commit applies them). Rows older than an hour are deleted
// (CommandInbox::Cleanup), and catalog_log_from then says from which version on the log is
// whole: an engine further behind reads the whole catalog.
constexpr const char* kSchemaV4 = R"sql(
CREATE TABLE IF NOT EXISTS syncsched_cluster.catalog_log(
  version bigint NOT NULL,
  ord integer NOT NULL,
  kind smallint NOT NULL CHECK (kind IN (2, 3)),
  integration bytea NOT NULL,
  connection bytea NOT NULL,
  at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS catalog_log_by_version ON syncsched_cluster.catalog_log(version);
INSERT INTO syncsched_cluster.meta(key, value)
  SELECT 'catalog_log_from', value + 1 FROM syncsched_cluster.meta WHERE key = 'catalog_version'
  ON CONFLICT (key) DO NOTHING;
UPDATE syncsched_cluster.meta SET value = 4 WHERE key = 'schema_version';
)sql";

std::string WithPartitions(std::string sql, int partitions) {
  std::string p = std::to_string(partitions);
  for (std::size_t at = sql.find("%P%"); at != std::string::npos; at = sql.find("%P%", at)) {
    sql.replace(at, 3, p);
  }
  return sql;
}

// The database's version and P (schema exists). Inside the creating transaction.
Result<int> ReadExisting(PGconn* conn, long long* version_out) {
  ResultPtr res;
  Status s =
      PgExec(conn,
             "SELECT (SELECT value FROM syncsched_cluster.meta WHERE key = 'schema_version'),"
             " (SELECT value FROM syncsched_cluster.meta WHERE key = 'partitions'),"
             " (SELECT count(*) FROM syncsched_cluster.partitions),"
             " (SELECT coalesce(min(partition), 0) FROM syncsched_cluster.partitions),"
             " (SELECT coalesce(max(partition), -1) FROM syncsched_cluster.partitions)",
             "reading the cluster schema", &res);
  if (!s.ok()) return s;
  if (PQgetisnull(res.get(), 0, 0) || PQgetisnull(res.get(), 0, 1)) {
    return Status::Internal(
        "the cluster schema syncsched_cluster is corrupt: syncsched_cluster.meta misses "
        "schema_version or partitions");
  }
  long long version = std::strtoll(PQgetvalue(res.get(), 0, 0), nullptr, 10);
  *version_out = version;
  long long partitions = std::strtoll(PQgetvalue(res.get(), 0, 1), nullptr, 10);
  long long rows = std::strtoll(PQgetvalue(res.get(), 0, 2), nullptr, 10);
  long long min = std::strtoll(PQgetvalue(res.get(), 0, 3), nullptr, 10);
  long long max = std::strtoll(PQgetvalue(res.get(), 0, 4), nullptr, 10);
  if (version > kClusterSchemaVersion) {
    return Status::FailedPrecondition("the cluster schema syncsched_cluster has version " +
                                      std::to_string(version) + ", newer than version " +
                                      std::to_string(kClusterSchemaVersion) +
                                      " that this syncsched knows; use a newer syncsched");
  }
  if (version < 1 || partitions < 1 || partitions > kMaxPartitions || rows != partitions ||
      min != 0 || max != partitions - 1) {
    return Status::Internal("the cluster schema syncsched_cluster is corrupt: version " +
                            std::to_string(version) + ", " + std::to_string(partitions) +
                            " partitions declared, " + std::to_string(rows) + " partition rows (" +
                            std::to_string(min) + ".." + std::to_string(max) + ")");
  }
  return static_cast<int>(partitions);
}

}  // namespace

Result<int> EnsureClusterSchema(PGconn* conn, int partitions) {
  if (partitions < 1 || partitions > kMaxPartitions) {
    return Status::InvalidArgument("the partition count must be in [1, " +
                                   std::to_string(kMaxPartitions) + "], not " +
                                   std::to_string(partitions));
  }
  const std::string lock =
      "BEGIN; SELECT pg_advisory_xact_lock(" + std::to_string(kClusterSchemaLockKey) + ")";
  Status s = PgExec(conn, lock.c_str(), "creating the cluster schema");
  auto fail = [&](Status status) -> Result<int> {
    if (PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) != PQTRANS_IDLE) {
      ResultPtr(PQexec(conn, "ROLLBACK"));
    }
    return status;
  };
  if (!s.ok()) return fail(s);
  ResultPtr res;
  s = PgExec(conn,
             "SELECT to_regclass('syncsched_cluster.meta') IS NOT NULL, "
             "EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'syncsched_cluster')",
             "reading the cluster schema", &res);
  if (!s.ok()) return fail(s);
  bool has_meta = std::strcmp(PQgetvalue(res.get(), 0, 0), "t") == 0;
  bool has_schema = std::strcmp(PQgetvalue(res.get(), 0, 1), "t") == 0;
  if (has_meta) {
    long long version = 0;
    Result<int> existing = ReadExisting(conn, &version);
    if (!existing.ok()) return fail(existing.status());
    if (version < 2) {  // migrations, in the same transaction
      s = PgExec(conn, kSchemaV2, "migrating the cluster schema to version 2");
      if (!s.ok()) return fail(s);
    }
    if (version < 3) {
      s = PgExec(conn, kSchemaV3, "migrating the cluster schema to version 3");
      if (!s.ok()) return fail(s);
    }
    if (version < 4) {
      s = PgExec(conn, kSchemaV4, "migrating the cluster schema to version 4");
      if (!s.ok()) return fail(s);
    }
    s = PgExec(conn, "COMMIT", "creating the cluster schema");
    if (!s.ok()) return fail(s);
    return existing;
  }
  if (has_schema) {
    return fail(Status::FailedPrecondition(
        "the database holds a schema 'syncsched_cluster' without syncsched_cluster.meta (another "
        "application's?); refusing to change it"));
  }
  std::string sql =
      WithPartitions(kSchemaV1, partitions) + kSchemaV2 + kSchemaV3 + kSchemaV4 + "; COMMIT";
  s = PgExec(conn, sql.c_str(), "creating the cluster schema");
  if (!s.ok()) return fail(s);
  return partitions;
}

}  // namespace syncsched::cluster
