// The PostgreSQL store.
//
// Schema (version 5; the row `schema_version` of syncsched.meta holds the version, kMigrations
// lists the steps). Every table lives in the schema `syncsched` of the user's database:
// - meta(key text, value bigint): named integers. `schema_version`; `max_uid`, the largest
//   schedule uid ever issued (not max(uid): deleting every schedule must not let a uid be issued
//   twice); `history_kept`, the history_per_schedule the history was last written with; `owner`, a
//   random mark written by each store at open; `commit_seq`, bumped by every commit. The last two
//   let a store that lost its connection tell, once reconnected, whether another engine took the
//   database over meanwhile (owner changed) and whether a commit whose answer was lost was applied
//   (commit_seq). fillfactor 50: the two rows a commit rewrites stay HOT.
// - syncs, integrations, connections: keyed by their natural keys; small, looked up by key only.
// - schedules(uid bigint PRIMARY KEY, ...): keyed by the engine's uid, with a UNIQUE index on
//   (integration, connection, sync, variant). The row holds the run in flight (run_id '' when
//   none), run_seq, pending, and the waiting and retry runs as nullable columns (w_*, r_*; NULL
//   when none: PostgreSQL stores a NULL as one bit of the row's null bitmap, so the common row that
//   owes nothing costs nothing for them, and the columns stay queryable, unlike SQLite's `owed`
//   blob). fillfactor 45 (70 in version 1): a dispatch or an outcome rewrites the row without
//   touching the uid or the key, so with free space on the page the update is HOT (no index entry
//   is written); 45 leaves room for a new version of every row of a page, the case of a start that
//   rewrites every row at once.
// - history(schedule_uid, place, ...), PRIMARY KEY (schedule_uid, place): the finished runs, a
//   fixed ring of places per schedule exactly as in the SQLite store: place (number - 1) %
//   history_per_schedule, and place -1 for the last failure. A finished run is one upsert of its
//   place (HOT: the key never changes), the bound is exact with no pruning query, and a
//   schedule's history is one key range.
//
// - (v3) schedules.partition: the schedule's cluster partition (NULL until a store in cluster
//   mode fills it), indexed; the sequence schedule_uids (cluster mode: uids in blocks); and
//   commit_marks(node, seq), each cluster node's own commit mark (pg_store.h, cluster mode).
// - (v4) schedules.grid_slot_ms: the latest grid slot the schedule ever dispatched (the greatest
//   ever written: GREATEST in every write of the row), and the trigger grid_slot_once that refuses
//   (SQLSTATE SYD01, store::SlotTaken) a row whose new run in flight is a grid slot at or before
//   it: the backstop under the cluster's fence (docs/cluster.md).
// - (v5) the function refuse_late_commit and the deferred constraint triggers commit_expiry on
//   meta (commit_seq) and commit_marks: a commit that reaches the server after the transaction's
//   `syncsched.expiry_us` is refused at COMMIT (SQLSTATE SYE01; see SendExpiry).
//
// Strings are `bytea`, not `text`: the engine's strings are bytes (a connection id need not be
// UTF-8, a callback's error may hold any byte), and text would make such a value fail the commit
// in a UTF-8 database. Read them with convert_from(col, 'UTF8'). Unsigned 64-bit fields (uids,
// counters) are stored as the bigint with the same bits.
//
// Why this shape: a commit is one pipeline (BEGIN, at most a few statements per kind of row,
// COMMIT, then one Sync): one round trip whatever the batch holds. Rows travel as binary arrays
// expanded by UNNEST in prepared statements (one per column; update-only schedule rows as one
// array of the table's row type, see RowArrayParam), at most kChunk rows per statement, so a batch
// of a million rows is ~120 statements with no per-row parse, plan or round trip. COPY would be as
// fast for inserts but cannot upsert and is not allowed in a pipeline.
//
// Ownership: a session advisory lock (kPostgresOwnerLockKey), held by the store's one connection.
// The server releases it when the session ends, so a crashed engine never leaves it behind.
#include "store/pg_store.h"

#include "cluster/fence.h"
#include "cluster/partition.h"
#include "cluster/pg_deadline.h"
#include "syncsched/options.h"

#include <libpq-fe.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace syncsched {

std::string RedactedDatabasePath(std::string_view database_path) {
  return store::RedactDatabaseUri(database_path);
}

}  // namespace syncsched

namespace syncsched::store {

bool IsPostgresUri(std::string_view database) {
  return database.starts_with("postgresql://") || database.starts_with("postgres://");
}

std::string RedactDatabaseUri(std::string_view uri) {
  if (!IsPostgresUri(uri)) return std::string(uri);
  std::string out(uri);
  std::size_t start = out.find("://") + 3;
  std::size_t end = out.find_first_of("/?", start);
  if (end == std::string::npos) end = out.size();
  std::size_t at = out.rfind('@', end);
  if (at != std::string::npos && at >= start) {
    std::size_t colon = out.find(':', start);
    if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
  }
  // A `password=` parameter of the query part.
  std::size_t query = out.find('?');
  while (query != std::string::npos) {
    std::size_t key = query + 1;
    std::size_t next = out.find('&', key);
    if (out.compare(key, 9, "password=") == 0) {
      std::size_t value = key + 9;
      std::size_t value_end = next == std::string::npos ? out.size() : next;
      out.replace(value, value_end - value, "***");
      next = out.find('&', value);
    }
    query = next;
  }
  return out;
}

namespace {

// ---- Binary encoding of parameters and of COPY rows (network byte order) ----

template <typename T>
void PutBigEndian(T value, std::string* out) {
  auto bits = static_cast<std::make_unsigned_t<T>>(value);
  for (int i = static_cast<int>(sizeof(T)) - 1; i >= 0; --i) {
    out->push_back(static_cast<char>(static_cast<unsigned char>(bits >> (8 * i))));
  }
}

template <typename T>
T GetBigEndian(const char* p) {
  std::make_unsigned_t<T> bits = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    bits = static_cast<std::make_unsigned_t<T>>(bits << 8) |
           static_cast<std::make_unsigned_t<T>>(static_cast<unsigned char>(p[i]));
  }
  return static_cast<T>(bits);
}

// Element type OIDs (pg_type.h; stable across releases).
constexpr std::uint32_t kBoolOid = 16;
constexpr std::uint32_t kByteaOid = 17;
constexpr std::uint32_t kInt8Oid = 20;
constexpr std::uint32_t kInt2Oid = 21;
constexpr std::uint32_t kInt4Oid = 23;

// A one-dimensional array parameter in PostgreSQL's binary format (array_recv): ndim, has-null
// flag, element OID, length, lower bound, then each element as a length (-1: NULL) and its bytes.
class ArrayParam {
 public:
  void Reset(std::uint32_t element_oid) {
    oid_ = element_oid;
    buf_.assign(20, '\0');
    n_ = 0;
    has_null_ = false;
  }
  void Null() {
    PutBigEndian<std::int32_t>(-1, &buf_);
    ++n_;
    has_null_ = true;
  }
  void Int8(std::int64_t v) {
    PutBigEndian<std::int32_t>(8, &buf_);
    PutBigEndian(v, &buf_);
    ++n_;
  }
  void Int4(std::int32_t v) {
    PutBigEndian<std::int32_t>(4, &buf_);
    PutBigEndian(v, &buf_);
    ++n_;
  }
  void Int2(std::int16_t v) {
    PutBigEndian<std::int32_t>(2, &buf_);
    PutBigEndian(v, &buf_);
    ++n_;
  }
  void Bool(bool v) {
    PutBigEndian<std::int32_t>(1, &buf_);
    buf_.push_back(v ? 1 : 0);
    ++n_;
  }
  void Bytes(std::string_view v) {
    PutBigEndian(static_cast<std::int32_t>(v.size()), &buf_);
    buf_.append(v);
    ++n_;
  }
  // The finished parameter (valid until the next Reset).
  const std::string& Finish() {
    std::string header;
    PutBigEndian<std::int32_t>(1, &header);
    PutBigEndian<std::int32_t>(has_null_ ? 1 : 0, &header);
    PutBigEndian(oid_, &header);
    PutBigEndian(static_cast<std::int32_t>(n_), &header);
    PutBigEndian<std::int32_t>(1, &header);
    buf_.replace(0, 20, header);
    return buf_;
  }
  std::size_t size() const { return n_; }

 private:
  std::uint32_t oid_ = 0;
  std::string buf_;
  std::size_t n_ = 0;
  bool has_null_ = false;
};

// A one-dimensional array of rows of a table's composite type, in binary (array_recv of
// record_recv elements): the array header with the row type's OID, then per element its length,
// its column count and each column as its type's OID, a length (-1: NULL) and its bytes. One such
// parameter expanded by a single `unnest` costs the server one tuple per row, where one array per
// column expanded by a multi-argument `unnest` costs one tuple per row and column (each function
// of ROWS FROM materializes its own result): 1.6x the server's time for a start's UPDATE.
class RowArrayParam {
 public:
  void Reset(std::uint32_t row_oid) {
    oid_ = row_oid;
    buf_.assign(20, '\0');
    n_ = 0;
  }
  void BeginRow(int columns) {
    row_start_ = buf_.size();
    PutBigEndian<std::int32_t>(0, &buf_);  // the element's length, set by EndRow
    PutBigEndian<std::int32_t>(columns, &buf_);
  }
  void EndRow() {
    std::string len;
    PutBigEndian(static_cast<std::int32_t>(buf_.size() - row_start_ - 4), &len);
    buf_.replace(row_start_, 4, len);
    ++n_;
  }
  void Null(std::uint32_t oid) {
    PutBigEndian(oid, &buf_);
    PutBigEndian<std::int32_t>(-1, &buf_);
  }
  void Int8(std::int64_t v) { Fixed(kInt8, v); }
  void Int4(std::int32_t v) { Fixed(kInt4, v); }
  void Int2(std::int16_t v) { Fixed(kInt2, v); }
  void Bool(bool v) {
    PutBigEndian(kBool, &buf_);
    PutBigEndian<std::int32_t>(1, &buf_);
    buf_.push_back(v ? 1 : 0);
  }
  void Bytes(std::string_view v) {
    PutBigEndian(kBytea, &buf_);
    PutBigEndian(static_cast<std::int32_t>(v.size()), &buf_);
    buf_.append(v);
  }
  const std::string& Finish() {
    std::string header;
    PutBigEndian<std::int32_t>(1, &header);
    PutBigEndian<std::int32_t>(0, &header);
    PutBigEndian(oid_, &header);
    PutBigEndian(static_cast<std::int32_t>(n_), &header);
    PutBigEndian<std::int32_t>(1, &header);
    buf_.replace(0, 20, header);
    return buf_;
  }
  std::size_t size() const { return n_; }

 private:
  // Element type OIDs (pg_type.h), as record_recv checks them.
  static constexpr std::uint32_t kBool = 16, kBytea = 17, kInt8 = 20, kInt2 = 21, kInt4 = 23;
  template <typename T>
  void Fixed(std::uint32_t oid, T v) {
    PutBigEndian(oid, &buf_);
    PutBigEndian(static_cast<std::int32_t>(sizeof(T)), &buf_);
    PutBigEndian(v, &buf_);
  }
  std::uint32_t oid_ = 0;
  std::string buf_;
  std::size_t n_ = 0;
  std::size_t row_start_ = 0;
};

// Reads one row of a binary COPY (one CopyData message): a field count, then each field as a
// length (-1: NULL) and its bytes. The first message also carries the file header.
class CopyRow {
 public:
  // 1: a row, 0: the trailer, -1: malformed.
  int Begin(const char* data, std::size_t size, bool first) {
    p_ = data;
    end_ = data + size;
    if (first) {
      static constexpr char kSignature[] = "PGCOPY\n\377\r\n";  // with its NUL: 11 bytes
      if (size < 19 || std::memcmp(p_, kSignature, 11) != 0) return -1;
      p_ += 15;  // signature and flags
      auto extension = GetBigEndian<std::int32_t>(p_);
      p_ += 4;
      if (extension < 0 || end_ - p_ < extension) return -1;
      p_ += extension;
    }
    if (end_ - p_ < 2) return -1;
    fields_ = GetBigEndian<std::int16_t>(p_);
    p_ += 2;
    if (fields_ == -1) return 0;
    return fields_ >= 0 ? 1 : -1;
  }
  int fields() const { return fields_; }
  bool ok() const { return ok_; }

  // Each reads the next field; on a malformed or unexpected field, sets !ok() and returns a zero.
  std::int64_t Int8() { return Fixed<std::int64_t>(); }
  std::int32_t Int4() { return Fixed<std::int32_t>(); }
  std::int16_t Int2() { return Fixed<std::int16_t>(); }
  bool Bool() { return Fixed<std::int8_t>() != 0; }
  std::uint64_t U64() { return static_cast<std::uint64_t>(Int8()); }
  std::string Bytes() {
    std::string_view v;
    if (!Next(&v) || null_) return Fail(std::string());
    return std::string(v);
  }
  // The next field is NULL: consumes it and returns true. Else leaves it unread.
  bool NextIsNull() {
    if (end_ - p_ < 4) return false;
    if (GetBigEndian<std::int32_t>(p_) != -1) return false;
    p_ += 4;
    return true;
  }

 private:
  bool Next(std::string_view* v) {
    if (end_ - p_ < 4) return false;
    auto len = GetBigEndian<std::int32_t>(p_);
    p_ += 4;
    null_ = len == -1;
    if (null_) return true;
    if (len < 0 || end_ - p_ < len) return false;
    *v = std::string_view(p_, static_cast<std::size_t>(len));
    p_ += len;
    return true;
  }
  template <typename T>
  T Fixed() {
    std::string_view v;
    if (!Next(&v) || null_ || v.size() != sizeof(T)) return Fail(T{});
    return GetBigEndian<T>(v.data());
  }
  template <typename T>
  T Fail(T value) {
    ok_ = false;
    return value;
  }

  const char* p_ = nullptr;
  const char* end_ = nullptr;
  int fields_ = 0;
  bool null_ = false;
  bool ok_ = true;
};

// ---- Schema ----

struct Migration {
  int version;
  const char* sql;
  std::array<const char*, 7> tables;  // tables the schema has from this version on
};

constexpr Migration kMigrations[] = {
    {1,
     R"sql(
CREATE SCHEMA IF NOT EXISTS syncsched;
CREATE TABLE syncsched.meta(
  key text PRIMARY KEY,
  value bigint NOT NULL
) WITH (fillfactor = 50);
INSERT INTO syncsched.meta(key, value) VALUES
  ('schema_version', 0), ('max_uid', 0), ('history_kept', 20), ('owner', 0), ('commit_seq', 0);
CREATE TABLE syncsched.syncs(
  integration bytea NOT NULL,
  name bytea NOT NULL,
  frequency_text bytea NOT NULL,
  frequency_ms bigint NOT NULL,
  auto_start boolean NOT NULL,
  timeout_ms bigint NOT NULL,
  heartbeat_timeout_ms bigint NOT NULL,
  policy bytea NOT NULL,
  PRIMARY KEY (integration, name)
);
CREATE TABLE syncsched.integrations(
  integration bytea PRIMARY KEY,
  max_concurrency bigint NOT NULL
);
CREATE TABLE syncsched.connections(
  integration bytea NOT NULL,
  connection bytea NOT NULL,
  PRIMARY KEY (integration, connection)
);
CREATE TABLE syncsched.schedules(
  uid bigint PRIMARY KEY,
  integration bytea NOT NULL,
  connection bytea NOT NULL,
  sync bytea NOT NULL,
  variant bytea NOT NULL,
  state smallint NOT NULL,
  anchor_ms bigint NOT NULL,
  frequency_override_ms bigint NOT NULL,
  next_slot_ms bigint NOT NULL,
  runs bigint NOT NULL,
  failures bigint NOT NULL,
  skipped bigint NOT NULL,
  last_start_ms bigint NOT NULL,
  last_finish_ms bigint NOT NULL,
  last_ok smallint NOT NULL,
  last_error bytea NOT NULL,
  run_id bytea NOT NULL,
  run_slot_ms bigint NOT NULL,
  run_mode smallint NOT NULL,
  run_attempt integer NOT NULL,
  run_started_ms bigint NOT NULL,
  run_seq bigint NOT NULL,
  pending smallint NOT NULL,
  w_run_id bytea, w_slot_ms bigint, w_mode smallint, w_attempt integer, w_at_ms bigint,
  w_seq bigint, w_scheduled boolean,
  r_run_id bytea, r_slot_ms bigint, r_mode smallint, r_attempt integer, r_at_ms bigint,
  r_seq bigint, r_scheduled boolean
) WITH (fillfactor = 70);
CREATE UNIQUE INDEX schedules_by_key
  ON syncsched.schedules(integration, connection, sync, variant);
CREATE TABLE syncsched.history(
  schedule_uid bigint NOT NULL,
  place smallint NOT NULL,
  run_id bytea NOT NULL,
  slot_ms bigint NOT NULL,
  mode smallint NOT NULL,
  attempt integer NOT NULL,
  started_ms bigint NOT NULL,
  finished_ms bigint NOT NULL,
  ok smallint NOT NULL,
  error bytea NOT NULL,
  PRIMARY KEY (schedule_uid, place)
) WITH (fillfactor = 80);
)sql",
     {"meta", "syncs", "integrations", "connections", "schedules", "history"}},
    // Version 2: schedules at fillfactor 45, so that the first rewrite of every row of a page
    // (a start of paused schedules: each row gains its run in flight) fits beside the old
    // versions and stays HOT. At 70, a start of 1M paused schedules updated only 37% of its rows
    // in place; the others moved to new pages with new entries in both indexes (2.4x the
    // server's time). Pages written before the migration keep their fill.
    {2,
     "ALTER TABLE syncsched.schedules SET (fillfactor = 45);",
     {"meta", "syncs", "integrations", "connections", "schedules", "history"}},
    // Version 3: cluster mode (docs/cluster.md). Each schedule's partition (NULL until a store in
    // cluster mode fills it: P lives in syncsched_cluster.meta, which a single engine may never
    // have created), indexed so that a new owner loads exactly its partitions; the sequence that
    // issues schedule uids to the engines of a cluster (blocks of kPostgresUidBlock, starting past
    // max_uid); and each cluster node's commit mark.
    {3,
     R"sql(
ALTER TABLE syncsched.schedules ADD COLUMN IF NOT EXISTS partition integer;
CREATE INDEX IF NOT EXISTS schedules_by_partition ON syncsched.schedules(partition);
CREATE SEQUENCE IF NOT EXISTS syncsched.schedule_uids INCREMENT BY 4096 MINVALUE 1;
SELECT setval('syncsched.schedule_uids',
              (SELECT value FROM syncsched.meta WHERE key = 'max_uid') + 1, false);
CREATE TABLE IF NOT EXISTS syncsched.commit_marks(
  node bigint PRIMARY KEY,
  seq bigint NOT NULL
);
)sql",
     {"meta", "syncs", "integrations", "connections", "schedules", "history", "commit_marks"}},
    // Version 4: the backstop under the fence (docs/cluster.md, "Each slot once"). grid_slot_ms
    // is the latest grid slot ever dispatched for the schedule (NULL: none), never lowered by a
    // write of the row (InsertSchedulesSql), and a trigger refuses, with SQLSTATE SYD01,
    // a row whose new run in flight is the first attempt of a grid slot at or before it: a
    // `(schedule, slot)` of the grid is dispatched once, whatever an engine believes. A grid
    // run's id is "<uid>-<slot>" (core/grid.h); runs off the grid (a start's immediate run,
    // triggers, resyncs) have a suffix and are keyed by their own ids; a retry keeps its failed
    // run's id with a higher attempt, and is not a new dispatch of the slot. The trigger's
    // condition is in its WHEN clause, so that the function is called only to refuse: a write
    // that passes costs no PL/pgSQL call.
    {4,
     R"sql(
ALTER TABLE syncsched.schedules ADD COLUMN IF NOT EXISTS grid_slot_ms bigint;
CREATE OR REPLACE FUNCTION syncsched.refuse_grid_slot() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'SYD01',
    MESSAGE = format('schedule uid %s: grid slot %s dispatched again (grid slots up to %s were '
                     'dispatched already)', NEW.uid, NEW.run_slot_ms, OLD.grid_slot_ms),
    DETAIL = format('schedule uid %s slot %s', NEW.uid, NEW.run_slot_ms);
END
$f$;
CREATE OR REPLACE TRIGGER grid_slot_once BEFORE UPDATE ON syncsched.schedules FOR EACH ROW
  WHEN (NEW.run_id <> OLD.run_id AND OLD.grid_slot_ms IS NOT NULL AND NEW.run_attempt = 1
        AND NEW.run_slot_ms <= OLD.grid_slot_ms
        AND NEW.run_id = convert_to(NEW.uid::text || '-' || NEW.run_slot_ms::text, 'UTF8'))
  EXECUTE FUNCTION syncsched.refuse_grid_slot();
)sql",
     {"meta", "syncs", "integrations", "connections", "schedules", "history", "commit_marks"}},
    // Version 5: a commit's expiry, checked AT commit (stores.md, "Stalled routes"). Each commit
    // sets the transaction-local `syncsched.expiry_us` (PgStore::SendExpiry: the server time, in
    // µs since the epoch, at which the store gives up on the commit's answer) and writes its commit
    // mark (meta's commit_seq, or its node's row of commit_marks). A deferred constraint trigger on
    // the mark runs when COMMIT is executed and refuses (SQLSTATE SYE01) a commit that reaches the
    // server after the expiry: a route that held back only the final COMMIT (or the Sync that ends
    // the pipeline) cannot apply a commit its store already reported as failed. A transaction
    // without the setting (migrations, claims, tests by hand) is not checked.
    {5,
     R"sql(
CREATE OR REPLACE FUNCTION syncsched.refuse_late_commit() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE
  expiry text := current_setting('syncsched.expiry_us', true);
BEGIN
  IF expiry IS NOT NULL AND expiry <> ''
     AND clock_timestamp() >= to_timestamp(expiry::int8 / 1000000.0) THEN
    RAISE EXCEPTION USING ERRCODE = 'SYE01',
      MESSAGE = format('the commit reached the server at %s, after its store gave up on it at %s',
                       clock_timestamp(), to_timestamp(expiry::int8 / 1000000.0));
  END IF;
  RETURN NULL;
END
$f$;
DROP TRIGGER IF EXISTS commit_expiry ON syncsched.meta;
DROP TRIGGER IF EXISTS commit_expiry ON syncsched.commit_marks;
CREATE CONSTRAINT TRIGGER commit_expiry AFTER UPDATE ON syncsched.meta
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.key = 'commit_seq')
  EXECUTE FUNCTION syncsched.refuse_late_commit();
CREATE CONSTRAINT TRIGGER commit_expiry AFTER INSERT OR UPDATE ON syncsched.commit_marks
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  EXECUTE FUNCTION syncsched.refuse_late_commit();
)sql",
     {"meta", "syncs", "integrations", "connections", "schedules", "history", "commit_marks"}},
};

// The largest uid the sequence has issued (the end of its last block), or just below the next
// one it will issue.
constexpr const char* kSequenceHighSql =
    "(SELECT CASE WHEN is_called THEN last_value + 4095 ELSE last_value - 1 END "
    "FROM syncsched.schedule_uids)";

constexpr int kSchemaVersion = static_cast<int>(std::size(kMigrations));

// Rows per statement: bounds the size of one parameter (an array) and of the server's work per
// statement, while keeping statements per batch few.
constexpr std::size_t kChunk = 8192;
constexpr std::int16_t kFailurePlace = -1;

struct Column {
  const char* name;
  const char* type;
};

// The schedules table's columns, in table order; the first is the uid, the next four the key.
constexpr Column kScheduleColumns[] = {
    {"uid", "int8"},
    {"integration", "bytea"},
    {"connection", "bytea"},
    {"sync", "bytea"},
    {"variant", "bytea"},
    {"state", "int2"},
    {"anchor_ms", "int8"},
    {"frequency_override_ms", "int8"},
    {"next_slot_ms", "int8"},
    {"runs", "int8"},
    {"failures", "int8"},
    {"skipped", "int8"},
    {"last_start_ms", "int8"},
    {"last_finish_ms", "int8"},
    {"last_ok", "int2"},
    {"last_error", "bytea"},
    {"run_id", "bytea"},
    {"run_slot_ms", "int8"},
    {"run_mode", "int2"},
    {"run_attempt", "int4"},
    {"run_started_ms", "int8"},
    {"run_seq", "int8"},
    {"pending", "int2"},
    {"w_run_id", "bytea"},
    {"w_slot_ms", "int8"},
    {"w_mode", "int2"},
    {"w_attempt", "int4"},
    {"w_at_ms", "int8"},
    {"w_seq", "int8"},
    {"w_scheduled", "bool"},
    {"r_run_id", "bytea"},
    {"r_slot_ms", "int8"},
    {"r_mode", "int2"},
    {"r_attempt", "int4"},
    {"r_at_ms", "int8"},
    {"r_seq", "int8"},
    {"r_scheduled", "bool"},
    {"partition", "int4"},     // v3; never updated (a function of the key)
    {"grid_slot_ms", "int8"},  // v4; the greatest ever written (InsertSchedulesSql)
};
constexpr std::size_t kScheduleColumnCount = std::size(kScheduleColumns);
constexpr std::size_t kPartitionColumn = kScheduleColumnCount - 2;
constexpr std::size_t kKeyColumns = 4;  // columns 1..4

constexpr Column kHistoryColumns[] = {
    {"schedule_uid", "int8"}, {"place", "int2"},   {"run_id", "bytea"},    {"slot_ms", "int8"},
    {"mode", "int2"},         {"attempt", "int4"}, {"started_ms", "int8"}, {"finished_ms", "int8"},
    {"ok", "int2"},           {"error", "bytea"},
};

// "$first::type[], ..." for `columns`, numbering parameters from `first`.
template <typename Columns>
std::string UnnestArgs(const Columns& columns, int first = 1) {
  std::string out;
  int n = first;
  for (const Column& c : columns) {
    if (!out.empty()) out += ", ";
    out += '$';  // appended piece by piece: GCC 12 warns (-Wrestrict, falsely) on the chain
    out += std::to_string(n++);
    out += "::";
    out += c.type;
    out += "[]";
  }
  return out;
}

template <typename Columns>
std::string Names(const Columns& columns, const char* prefix = "") {
  std::string out;
  for (const Column& c : columns) {
    if (!out.empty()) out += ", ";
    out += std::string(prefix) + c.name;
  }
  return out;
}

// grid_slot_ms (v4, the backstop): the store sends the slot of a row's run in flight when that
// run is the first attempt of a grid slot (GridSlotOf), else NULL, and the server keeps the
// greatest ever written (GREATEST ignores NULLs). The trigger that refuses checks the run id
// itself; this value only advances the mark, so a row sent without it can never be refused
// wrongly. Computing the id on the server instead cost 10% of a 1M-schedule start.
std::string InsertSchedulesSql(bool upsert) {
  std::string sql = "INSERT INTO syncsched.schedules(" + Names(kScheduleColumns) +
                    ") SELECT * FROM unnest(" + UnnestArgs(kScheduleColumns) + ")";
  if (!upsert) return sql;
  sql += " ON CONFLICT (uid) DO UPDATE SET ";
  for (std::size_t i = kKeyColumns + 1; i < kPartitionColumn; ++i) {
    sql += std::string(kScheduleColumns[i].name) + " = excluded." + kScheduleColumns[i].name;
    sql += ", ";
  }
  sql += "grid_slot_ms = GREATEST(excluded.grid_slot_ms, schedules.grid_slot_ms)";
  return sql;
}

// Rows of schedules the store holds, as one array of the table's row type (RowArrayParam; the
// key columns are sent empty and not written).
std::string UpdateSchedulesSql() {
  std::string sql = "UPDATE syncsched.schedules AS s SET ";
  for (std::size_t i = kKeyColumns + 1; i < kPartitionColumn; ++i) {
    if (i > kKeyColumns + 1) sql += ", ";
    sql += std::string(kScheduleColumns[i].name) + " = u." + kScheduleColumns[i].name;
  }
  sql += ", grid_slot_ms = GREATEST(u.grid_slot_ms, s.grid_slot_ms)";
  sql += " FROM unnest($1::syncsched.schedules[]) AS u WHERE s.uid = u.uid";
  return sql;
}

std::string PutHistorySql() {
  std::string sql = "INSERT INTO syncsched.history(" + Names(kHistoryColumns) +
                    ") SELECT * FROM unnest(" + UnnestArgs(kHistoryColumns) +
                    ") ON CONFLICT (schedule_uid, place) DO UPDATE SET ";
  for (std::size_t i = 2; i < std::size(kHistoryColumns); ++i) {
    if (i > 2) sql += ", ";
    sql += std::string(kHistoryColumns[i].name) + " = excluded." + kHistoryColumns[i].name;
  }
  return sql;
}

// The prepared statements, by name.
enum Statement : int {
  kUpsertSyncs,
  kUpsertIntegrations,
  kDeleteConnections,
  kInsertConnections,
  kDeleteSchedules,
  kInsertSchedules,
  kUpsertSchedules,
  kUpdateSchedules,
  kPutHistory,
  kSetMeta,
  kSetMark,           // cluster mode
  kFence,             // cluster mode (prepared only then: the function is in syncsched_cluster)
  kApplyCommandPart,  // cluster mode, likewise (cluster/command_inbox.h)
  kLogCatalog,        // cluster mode, likewise (cluster_schema.h, version 4)
  kStatementCount
};

std::vector<std::string> StatementSql() {
  std::vector<std::string> sql(kStatementCount);
  sql[kUpsertSyncs] =
      "INSERT INTO syncsched.syncs(integration, name, frequency_text, frequency_ms, auto_start, "
      "timeout_ms, heartbeat_timeout_ms, policy) SELECT * FROM unnest($1::bytea[], $2::bytea[], "
      "$3::bytea[], $4::int8[], $5::bool[], $6::int8[], $7::int8[], $8::bytea[]) "
      "ON CONFLICT (integration, name) DO UPDATE SET frequency_text = excluded.frequency_text, "
      "frequency_ms = excluded.frequency_ms, auto_start = excluded.auto_start, "
      "timeout_ms = excluded.timeout_ms, heartbeat_timeout_ms = excluded.heartbeat_timeout_ms, "
      "policy = excluded.policy";
  sql[kUpsertIntegrations] =
      "INSERT INTO syncsched.integrations(integration, max_concurrency) "
      "SELECT * FROM unnest($1::bytea[], $2::int8[]) "
      "ON CONFLICT (integration) DO UPDATE SET max_concurrency = excluded.max_concurrency";
  sql[kDeleteConnections] =
      "DELETE FROM syncsched.connections AS c USING unnest($1::bytea[], $2::bytea[]) "
      "AS d(integration, connection) "
      "WHERE c.integration = d.integration AND c.connection = d.connection";
  sql[kInsertConnections] =
      "INSERT INTO syncsched.connections(integration, connection) "
      "SELECT * FROM unnest($1::bytea[], $2::bytea[]) ON CONFLICT DO NOTHING";
  sql[kDeleteSchedules] =
      "WITH h AS (DELETE FROM syncsched.history WHERE schedule_uid = ANY($1::int8[])) "
      "DELETE FROM syncsched.schedules WHERE uid = ANY($1::int8[])";
  sql[kInsertSchedules] = InsertSchedulesSql(false);
  sql[kUpsertSchedules] = InsertSchedulesSql(true);
  sql[kUpdateSchedules] = UpdateSchedulesSql();
  sql[kPutHistory] = PutHistorySql();
  sql[kSetMeta] =
      "UPDATE syncsched.meta SET value = CASE key WHEN 'commit_seq' THEN $1::int8 "
      "ELSE $2::int8 END WHERE key IN ('commit_seq', 'max_uid')";
  sql[kSetMark] =
      "INSERT INTO syncsched.commit_marks(node, seq) VALUES ($1::int8, $2::int8) "
      "ON CONFLICT (node) DO UPDATE SET seq = excluded.seq";
  sql[kFence] = cluster::kFenceSql;
  // After the catalog version's increment, in the same transaction: the version it counts.
  sql[kLogCatalog] =
      "INSERT INTO syncsched_cluster.catalog_log(version, ord, kind, integration, connection) "
      "SELECT (SELECT value FROM syncsched_cluster.meta WHERE key = 'catalog_version'), u.o, "
      "u.k, u.i, u.c FROM unnest($1::int2[], $2::bytea[], $3::bytea[]) WITH ORDINALITY "
      "AS u(k, i, c, o)";
  sql[kApplyCommandPart] =
      "SELECT syncsched_cluster.apply_command_part($1::int8, $2::int4, $3::int8, $4::int8, "
      "$5::bytea)";
  return sql;
}

const char* StatementName(int statement) {
  static constexpr const char* kNames[] = {
      "syncsched_upsert_syncs",       "syncsched_upsert_integrations",
      "syncsched_delete_connections", "syncsched_insert_connections",
      "syncsched_delete_schedules",   "syncsched_insert_schedules",
      "syncsched_upsert_schedules",   "syncsched_update_schedules",
      "syncsched_put_history",        "syncsched_set_meta",
      "syncsched_set_mark",           "syncsched_fence",
      "syncsched_apply_command_part", "syncsched_log_catalog"};
  return kNames[statement];
}

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Schema v5's trigger refuses a commit that reached the server after its expiry.
constexpr const char* kLateCommitSqlState = "SYE01";

// What PgStore::SendExpiry's statement does, for errors.
constexpr const char* kExpiryWhat =
    "checking that the commit reached the server before the store gave up on it (reply_timeout)";

// One statement of a commit's pipeline, with its parameters (binary).
struct Query {
  int statement = -1;  // -1: `sql` as is (BEGIN, COMMIT), without parameters
  const char* sql = nullptr;
  std::vector<std::string> params;
  std::string what;  // for errors: what it writes
};

class PgStore final : public Store {
 public:
  explicit PgStore(const PostgresStoreOptions& options)
      : options_(options), name_("PostgreSQL database " + RedactDatabaseUri(options.uri)) {
    std::random_device rd;
    owner_ = (static_cast<std::int64_t>(rd()) << 31 ^ rd()) & INT64_MAX;
    if (owner_ == 0) owner_ = 1;
    backoff_ = options_.reconnect_backoff_min;
  }
  ~PgStore() override { Close(); }

  Status Open();
  Result<Snapshot> Load() override { return LoadSome(nullptr); }
  Result<Snapshot> LoadPartitions(const std::vector<int>& partitions) override;
  Result<std::uint64_t> ReserveUids(std::uint64_t* count) override;
  Status Commit(const Batch& batch) override;
  // Each part is planned and sent as it comes, while the server executes the statements sent
  // before: one transaction, one pipeline, as Commit.
  Status CommitStream(const Batch& first, BatchSource& more) override;
  // Not OK once the store refuses every call for good (another engine took the database over, or
  // a commit reported as failed proved applied); a lost connection alone does not change it.
  Status Health() const override { return broken_; }
  // A commit of the commit mark alone (CommitParts with `probe`).
  std::optional<Status> Probe() override { return CommitParts(Batch{}, nullptr, /*probe=*/true); }

  void DropConnection() { Lost("the connection was dropped (DropConnectionForTest)"); }
  int BackendPid() const { return conn_ != nullptr ? PQbackendPID(conn_) : 0; }

 private:
  void Close() {
    deadline_.Disarm();  // before the socket is closed (pg_deadline.h)
    if (conn_ != nullptr) {
      // The server may not have seen the connection end (a stalled route, a deadline that shut
      // the socket down): the next Connect ends that session first, if it still runs.
      if (session_pid_ != 0) ghost_ = {session_pid_, session_start_};
      PQfinish(conn_);
    }
    conn_ = nullptr;
    session_pid_ = 0;
  }
  // Runs one blocking libpq call under the reply deadline (PostgresStoreOptions::reply_timeout).
  template <typename Call>
  auto Timed(Call&& call) {
    return cluster::internal::WithDeadline(deadline_, conn_, reply_timeout_, &expired_,
                                           std::forward<Call>(call));
  }
  // Why the connection was lost, for messages: libpq's words, or the deadline's.
  std::string LostDetail() const {
    if (expired_) {
      return "no reply from the server within " + std::to_string(reply_timeout_.count()) +
             " ms (reply_timeout): the store closed the connection";
    }
    return conn_ != nullptr ? Trimmed(PQerrorMessage(conn_)) : lost_cause_;
  }
  // Ends the session of this store's previous connection if the server still runs it (matched
  // by pid and start time, so that a reused pid is never touched), waiting for it to end: a
  // commit it still holds can then no longer apply, and its owner lock is free. Best effort (a
  // role without the right to signal it leaves it to the server's own timeouts).
  void EndGhost();
  // The connection is gone (or must go): closes it; the next call reconnects.
  void Lost(std::string cause) {
    Close();
    lost_cause_ = std::move(cause);
  }
  bool Connected() const { return conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK; }

  // The status for a failed statement (`res` may be null: a failure without a result).
  Status Error(std::string_view context, const PGresult* res) const;
  // Runs one statement without parameters; OK for COMMAND_OK or TUPLES_OK (then `*out`).
  Status Exec(const char* sql, std::string_view context, ResultPtr* out = nullptr);

  // Connects, sets up the session, takes the advisory lock (waiting up to `wait` for it) and
  // prepares the statements.
  // `connect_timeout`: 0 for options_.connect_timeout.
  Status Connect(std::chrono::milliseconds wait,
                 std::chrono::milliseconds connect_timeout = std::chrono::milliseconds(0));
  // After a lost connection: connects again and checks that nobody took the database over. Sets
  // `*applied` when the commit in doubt (if any) proves applied.
  // `connect_timeout` as Connect's.
  Status Reconnect(bool* applied,
                   std::chrono::milliseconds connect_timeout = std::chrono::milliseconds(0));
  // Reconnects when needed, honouring the backoff.
  Status EnsureConnected();
  Status Inspect(int* version);
  Status Migrate(int from_version);
  Status Claim();
  Status ClaimCluster();
  // Cluster mode: fills the partition column of rows written without it.
  Status Backfill();
  Status Prepare();
  bool InCluster() const { return options_.cluster.has_value(); }
  // Reads the catalog and the schedules (of `partitions` only, when not null).
  Result<Snapshot> LoadSome(const std::vector<int>* partitions);
  // Cluster mode: the fence statement for `batch` (none when it touches no partition), or
  // INTERNAL for rows without a valid tag.
  Status PlanFence(const Batch& batch, std::vector<Query>* queries) const;

  // Builds the statements of `batch` (after BEGIN, before COMMIT) into `queries`.
  Status Plan(const Batch& batch, std::uint64_t* max_uid, std::vector<Query>* queries);
  // Commit and CommitStream: `first`, then every part of `more` (if any), in one transaction.
  // `probe`: commits even an empty batch (its commit mark alone): Store::Probe.
  Status CommitParts(const Batch& first, BatchSource* more, bool probe = false);

  // One commit's pipeline. The statements are sent as they are planned (libpq writes to the
  // socket whenever its buffer holds 8 kB, so the server executes the first statements while the
  // next are planned); the results are read at the end.
  struct Pipeline {
    std::vector<std::string> whats;  // of each statement sent, for errors
    Status send_error;               // the first statement that could not be sent
    bool commit_sent = false;
  };
  // Enters pipeline mode.
  Status BeginPipeline();
  // Sends `q` (nothing once a send failed); a COMMIT sets `commit_sent`.
  void Send(Pipeline& p, const Query& q);
  // Sends, right before COMMIT, a statement that aborts the transaction when the server executes
  // it after this store gave up on the commit's replies (reply_timeout): a stalled route that
  // carries the commit later applies nothing. Nothing without a reply deadline.
  void SendExpiry(Pipeline& p);
  // Ends the pipeline: a sync, then every result read. `abandon` (not OK): the commit was given
  // up before its COMMIT was sent (planning failed): the transaction is rolled back and this
  // status returned. `*in_doubt`: the connection was lost after COMMIT was sent, with no error
  // before: the commit may have been applied.
  Status EndPipeline(Pipeline& p, const Status& abandon, bool* in_doubt);
  // Runs a binary COPY TO STDOUT of `sql`, calling `row(CopyRow&)` per row; `row` returns a
  // Status.
  template <typename Row>
  Status CopyOut(const std::string& sql, std::string_view what, const Row& row);
  // Decodes one row of syncsched.schedules (kScheduleColumns) into `row`, adding its run in
  // flight to `unfinished`.
  Status DecodeSchedule(CopyRow& r, ScheduleRow& row, std::vector<RunRow>* unfinished) const;

  PostgresStoreOptions options_;
  std::string name_;  // "PostgreSQL database <uri without password>"
  PGconn* conn_ = nullptr;
  std::int64_t owner_ = 0;         // this store's owner mark
  std::int64_t commit_seq_ = 0;    // the last commit_seq this store knows applied
  std::int64_t in_doubt_seq_ = 0;  // a commit whose outcome is unknown (0: none)
  std::uint64_t in_doubt_max_uid_ = 0;
  bool in_doubt_probe_ = false;  // that commit was a Probe's: applied, it changes nothing of ours
  std::uint64_t max_uid_ = 0;    // as committed
  std::string lost_cause_;
  Status broken_;  // not OK: every call returns it
  std::chrono::steady_clock::time_point next_attempt_{};
  std::chrono::milliseconds backoff_{0};
  std::vector<std::string> statement_sql_ = StatementSql();
  std::uint32_t schedules_type_oid_ = 0;  // the row type of syncsched.schedules (RowArrayParam)
  cluster::internal::SocketDeadline deadline_;
  // The server's clock (microseconds since the epoch, 0: unknown) as read at connect, and a moment
  // of the steady clock after it was read.
  cluster::internal::ServerClock server_clock_;                      // read at Connect (SendExpiry)
  std::chrono::milliseconds reply_timeout_{options_.reply_timeout};  // 0 while migrating
  bool expired_ = false;       // the deadline shut the current connection down
  int session_pid_ = 0;        // the server process of the current connection
  std::string session_start_;  // and its backend_start (text)
  struct Ghost {
    int pid = 0;
    std::string start;
  } ghost_;  // the previous connection's session, when it may still run
};

Status PgStore::Error(std::string_view context, const PGresult* res) const {
  const char* state = res != nullptr ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
  std::string detail;
  if (res != nullptr) {
    if (const char* primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)) {
      detail = primary;
      if (const char* more = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL)) {
        detail += " (" + std::string(more) + ")";
      }
    } else {
      detail = Trimmed(PQresultErrorMessage(res));
    }
  }
  if (expired_) detail = LostDetail();
  if (detail.empty() && conn_ != nullptr) detail = Trimmed(PQerrorMessage(conn_));
  if (detail.empty()) detail = "no connection";
  std::string code = state != nullptr ? state : "";
  if (!code.empty()) detail += " [SQLSTATE " + code + "]";
  std::string message = name_ + ": " + std::string(context) + ": " + detail;
  // What the environment may fix (the server, the network, space, load) is UNAVAILABLE; a broken
  // invariant or corruption is INTERNAL.
  if (code.empty()) {
    bool lost = conn_ == nullptr || PQstatus(conn_) != CONNECTION_OK;
    return lost ? Status::Unavailable(message + " (the connection to the server was lost)")
                : Status::Internal(message);
  }
  std::string_view cls = std::string_view(code).substr(0, 2);
  if (code == cluster::kFencedSqlState) {
    // Another node holds the partition (or the lease expired): nothing of the commit is applied.
    return Status::FailedPrecondition(std::move(message));
  }
  if (code == kSlotTakenSqlState) {
    // The backstop of grid slots (schema v4): the slot was dispatched before; nothing applied.
    return Status::FailedPrecondition(std::move(message));
  }
  if (code == "SYF02") {
    // A command part no longer pending (cluster/command_inbox.h): nothing of the commit applied.
    return Status::FailedPrecondition(std::move(message));
  }
  if ((code == "22012" && context == kExpiryWhat) || code == kLateCommitSqlState) {
    // SendExpiry's statement ran after the store's deadline (the route stalled, or the clocks
    // stepped): the transaction is aborted, nothing applied.
    return Status::Unavailable(name_ +
                               ": the commit reached the server after the store's "
                               "reply deadline; nothing of it is applied");
  }
  if (code == "XX001" || code == "XX002") {
    return Status::Internal(name_ + " is corrupt (" + std::string(context) + ": " + detail + ")");
  }
  if (cls == "08" || cls == "53" || cls == "57" || cls == "58" || cls == "40" || code == "55P03" ||
      code == "55006" || code == "25006") {
    return Status::Unavailable(std::move(message));
  }
  return Status::Internal(std::move(message));
}

Status PgStore::Exec(const char* sql, std::string_view context, ResultPtr* out) {
  ResultPtr res(Timed([&] { return PQexec(conn_, sql); }));
  ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return Error(context, res.get());
  if (out != nullptr) *out = std::move(res);
  return Status::Ok();
}

Status PgStore::Connect(std::chrono::milliseconds wait, std::chrono::milliseconds connect_timeout) {
  Close();
  expired_ = false;
  if (connect_timeout.count() <= 0) connect_timeout = options_.connect_timeout;
  auto timeout_s = std::max<std::int64_t>(2, (connect_timeout.count() + 999) / 1000);
  std::string timeout = std::to_string(timeout_s);
  // Earlier keywords are defaults that the URI (expanded from dbname) overrides.
  const char* keys[] = {"connect_timeout", "fallback_application_name", "dbname", nullptr};
  const char* values[] = {timeout.c_str(), "syncsched", options_.uri.c_str(), nullptr};
  conn_ = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  if (conn_ == nullptr) return Status::Unavailable(name_ + " cannot be reached: out of memory");
  if (PQstatus(conn_) != CONNECTION_OK) {
    std::string why = Trimmed(PQerrorMessage(conn_));
    Close();
    return Status::Unavailable(name_ + " cannot be reached: " + why);
  }
  PQsetNoticeProcessor(
      conn_, [](void*, const char*) {}, nullptr);
  // Generic plans for the prepared statements: a custom plan sees the length of a 8192-row array
  // and picks a merge join that scans the whole schedules index once per statement (a durable
  // start of 1M schedules took 11x the raw COPY of its rows); the generic plan's index lookups
  // per row are right for every batch size, and small commits skip planning altogether.
  std::string setup = "SET client_min_messages = warning; SET plan_cache_mode = force_generic_plan";
  if (options_.statement_timeout.count() > 0) {
    setup += "; SET statement_timeout = " + std::to_string(options_.statement_timeout.count());
  }
  // Last: this session's start, which names it (with its pid) to a later connection's EndGhost,
  // and the server's clock (for the commits' expiry, see SendExpiry).
  setup +=
      "; SELECT backend_start::text, (extract(epoch FROM clock_timestamp()) * 1000000)::int8 "
      "FROM pg_stat_activity WHERE pid = pg_backend_pid()";
  ResultPtr started;
  if (Status s = Exec(setup.c_str(), "setting up the session", &started); !s.ok()) return s;
  server_clock_ = {0, std::chrono::steady_clock::now()};
  if (PQntuples(started.get()) == 1 && !PQgetisnull(started.get(), 0, 0)) {
    session_pid_ = PQbackendPID(conn_);
    session_start_ = PQgetvalue(started.get(), 0, 0);
    server_clock_.micros = std::strtoll(PQgetvalue(started.get(), 0, 1), nullptr, 10);
  }
  EndGhost();
  if (InCluster()) {
    if (Status s = cluster::PrepareFencedSession(conn_, options_.cluster->lease,
                                                 options_.cluster->node_id);
        !s.ok()) {
      return Status(s.code(), name_ + ": " + s.message());
    }
  }

  // A single engine locks exclusively; the engines of a cluster share the lock.
  std::string lock = std::string("SELECT ") +
                     (InCluster() ? "pg_try_advisory_lock_shared(" : "pg_try_advisory_lock(") +
                     std::to_string(kPostgresOwnerLockKey) + ")";
  auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    ResultPtr res;
    if (Status s = Exec(lock.c_str(), "taking the owner lock", &res); !s.ok()) return s;
    if (std::strcmp(PQgetvalue(res.get(), 0, 0), "t") == 0) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      // Who holds it: an advisory lock on a bigint key is (classid, objid) = (high, low) halves.
      auto key = static_cast<std::uint64_t>(kPostgresOwnerLockKey);
      std::string who =
          "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND "
          "database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND "
          "classid = " +
          std::to_string(key >> 32) + " AND objid = " + std::to_string(key & 0xffffffffu);
      ResultPtr holder;
      std::string pid;
      if (Exec(who.c_str(), "finding the owner", &holder).ok() && PQntuples(holder.get()) > 0) {
        pid = PQgetvalue(holder.get(), 0, 0);
      }
      Close();
      return Status::Unavailable(
          name_ +
          (InCluster() ? " is in use by a syncsched engine that is not in cluster mode"
                       : " is in use by another syncsched engine") +
          (pid.empty() ? "" : " (backend pid " + pid + ")") + "; it holds the advisory lock " +
          std::to_string(kPostgresOwnerLockKey) +
          (InCluster() ? " exclusively" : " (engines in cluster mode share it)"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return Status::Ok();
}

void PgStore::EndGhost() {
  if (ghost_.pid == 0) return;
  // pg_terminate_backend waits up to 5 s for the process to exit (false, with a warning, if it
  // does not; an error without the right to signal it). Either way the ghost is not retried: a
  // session that outlives this is left to the server (and the owner lock's wait below).
  std::string sql = "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE pid = " +
                    std::to_string(ghost_.pid) + " AND backend_start = '" + ghost_.start +
                    "'::timestamptz";
  (void)Exec(sql.c_str(), "ending the previous connection's session");
  ghost_ = {};
}

Status PgStore::Inspect(int* version) {
  ResultPtr res;
  Status s = Exec(
      "SELECT to_regclass('syncsched.meta') IS NOT NULL, "
      "(SELECT count(*) FROM pg_tables WHERE schemaname = 'syncsched')",
      "reading the schema", &res);
  if (!s.ok()) return s;
  bool has_meta = std::strcmp(PQgetvalue(res.get(), 0, 0), "t") == 0;
  long tables = std::strtol(PQgetvalue(res.get(), 0, 1), nullptr, 10);
  if (!has_meta) {
    if (tables != 0) {
      return Status::FailedPrecondition(
          name_ +
          " holds a schema 'syncsched' of another application (tables but no syncsched.meta); "
          "refusing to change it");
    }
    *version = 0;
    return Status::Ok();
  }
  s = Exec("SELECT value FROM syncsched.meta WHERE key = 'schema_version'",
           "reading the schema version", &res);
  if (!s.ok()) return s;
  if (PQntuples(res.get()) != 1) {
    return Status::Internal(name_ +
                            " is not a syncsched database or is corrupt (no schema_version in "
                            "syncsched.meta)");
  }
  long long v = std::strtoll(PQgetvalue(res.get(), 0, 0), nullptr, 10);
  if (v > kSchemaVersion) {
    return Status::FailedPrecondition(name_ + " has schema version " + std::to_string(v) +
                                      ", newer than version " + std::to_string(kSchemaVersion) +
                                      " that this syncsched knows; open it with a newer syncsched");
  }
  if (v <= 0) {
    return Status::Internal(name_ + " is not a syncsched database or is corrupt (schema version " +
                            std::to_string(v) + ")");
  }
  *version = static_cast<int>(v);
  for (const char* table : kMigrations[v - 1].tables) {
    if (table == nullptr) break;
    std::string sql = "SELECT to_regclass('syncsched." + std::string(table) + "') IS NOT NULL";
    s = Exec(sql.c_str(), "reading the schema", &res);
    if (!s.ok()) return s;
    if (std::strcmp(PQgetvalue(res.get(), 0, 0), "t") != 0) {
      return Status::Internal(name_ +
                              " is not a syncsched database or is corrupt (schema version " +
                              std::to_string(v) + " without table 'syncsched." + table + "')");
    }
  }
  return Status::Ok();
}

Status PgStore::Migrate(int from_version) {
  for (const Migration& step : kMigrations) {
    if (step.version <= from_version) continue;
    std::string context = "migrating the schema to version " + std::to_string(step.version);
    std::string sql = "BEGIN;" + std::string(step.sql) +
                      "UPDATE syncsched.meta SET value = " + std::to_string(step.version) +
                      " WHERE key = 'schema_version'; COMMIT";
    Status s = Exec(sql.c_str(), context);
    if (!s.ok()) {
      if (Connected() && PQtransactionStatus(conn_) != PQTRANS_IDLE) {
        (void)Exec("ROLLBACK", context);
      }
      return s;
    }
  }
  return Status::Ok();
}

// Marks the database as this store's, trims the history to history_per_schedule, and reads
// max_uid and commit_seq: one transaction.
Status PgStore::Claim() {
  auto keep = static_cast<std::int64_t>(options_.history_per_schedule);
  std::string sql =
      "BEGIN;"
      "DELETE FROM syncsched.history WHERE place >= " +
      std::to_string(keep) + " AND " + std::to_string(keep) +
      " < (SELECT value FROM syncsched.meta WHERE key = 'history_kept');"
      "UPDATE syncsched.meta SET value = CASE key WHEN 'owner' THEN " +
      std::to_string(owner_) + " WHEN 'history_kept' THEN " + std::to_string(keep) +
      " ELSE value + 1 END WHERE key IN ('owner', 'history_kept', 'commit_seq');"
      "COMMIT";
  Status s = Exec(sql.c_str(), "claiming the database");
  if (!s.ok()) {
    if (Connected() && PQtransactionStatus(conn_) != PQTRANS_IDLE) (void)Exec("ROLLBACK", "");
    return s;
  }
  ResultPtr res;
  // max_uid: also past every uid the engines of a cluster took from the sequence.
  // (Compared as unsigned here: a uid is stored as the bigint with the same bits.)
  std::string read = std::string(
                         "SELECT (SELECT value FROM syncsched.meta WHERE key = 'max_uid'), "
                         "(SELECT value FROM syncsched.meta WHERE key = 'commit_seq'), ") +
                     kSequenceHighSql;
  s = Exec(read.c_str(), "reading max_uid", &res);
  if (!s.ok()) return s;
  if (PQgetisnull(res.get(), 0, 0) || PQgetisnull(res.get(), 0, 1)) {
    return Status::Internal(name_ +
                            " is not a syncsched database or is corrupt (syncsched.meta misses "
                            "max_uid or commit_seq)");
  }
  max_uid_ =
      std::max(static_cast<std::uint64_t>(std::strtoll(PQgetvalue(res.get(), 0, 0), nullptr, 10)),
               static_cast<std::uint64_t>(
                   std::max<long long>(0, std::strtoll(PQgetvalue(res.get(), 0, 2), nullptr, 10))));
  commit_seq_ = std::strtoll(PQgetvalue(res.get(), 0, 1), nullptr, 10);
  return Status::Ok();
}

// Cluster mode: writes the owner mark (a single engine that lost its connection then refuses to
// write again), moves the uid sequence past meta's max_uid when a single engine issued more uids
// than it (serialized with other cluster stores' opens), reads this node's commit mark, and fills
// missing partitions.
Status PgStore::ClaimCluster() {
  ResultPtr res;
  Status s = Exec("SELECT to_regclass('syncsched_cluster.partitions') IS NOT NULL",
                  "reading the cluster schema", &res);
  if (!s.ok()) return s;
  if (std::strcmp(PQgetvalue(res.get(), 0, 0), "t") != 0) {
    return Status::Internal(name_ +
                            " has no cluster schema (syncsched_cluster); the engine's LeaseKeeper "
                            "creates it and must start before the store opens");
  }
  std::string sql =
      "BEGIN;"
      "SELECT pg_advisory_xact_lock(" +
      std::to_string(kPostgresOwnerLockKey ^ 1) +
      ");"
      "UPDATE syncsched.meta SET value = " +
      std::to_string(owner_) +
      " WHERE key = 'owner';"
      "SELECT setval('syncsched.schedule_uids', m.value + 1, false) "
      "FROM syncsched.meta AS m, syncsched.schedule_uids AS q WHERE m.key = 'max_uid' AND "
      "m.value >= CASE WHEN q.is_called THEN q.last_value + 4096 ELSE q.last_value END;"
      "COMMIT";
  s = Exec(sql.c_str(), "claiming the database for a cluster node");
  if (!s.ok()) {
    if (Connected() && PQtransactionStatus(conn_) != PQTRANS_IDLE) (void)Exec("ROLLBACK", "");
    return s;
  }
  std::string mark = "SELECT coalesce((SELECT seq FROM syncsched.commit_marks WHERE node = " +
                     std::to_string(options_.cluster->node_id) + "), 0)";
  s = Exec(mark.c_str(), "reading the node's commit mark", &res);
  if (!s.ok()) return s;
  commit_seq_ = std::strtoll(PQgetvalue(res.get(), 0, 0), nullptr, 10);
  // Backfill rewrites every row written without a partition: no reply deadline while it runs.
  reply_timeout_ = std::chrono::milliseconds(0);
  s = Backfill();
  reply_timeout_ = options_.reply_timeout;
  return s;
}

Status PgStore::Backfill() {
  const char* select =
      "SELECT uid, integration, connection, sync, variant FROM syncsched.schedules "
      "WHERE partition IS NULL";
  ResultPtr res(
      Timed([&] { return PQexecParams(conn_, select, 0, nullptr, nullptr, nullptr, nullptr, 1); }));
  if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
    return Error("reading schedules without a partition", res.get());
  }
  const int n = PQntuples(res.get());
  if (n == 0) return Status::Ok();
  auto field = [&](int row, int col) {
    return std::string_view(PQgetvalue(res.get(), row, col),
                            static_cast<std::size_t>(PQgetlength(res.get(), row, col)));
  };
  ArrayParam uids, parts;
  uids.Reset(kInt8Oid);
  parts.Reset(kInt4Oid);
  for (int i = 0; i < n; ++i) {
    if (PQgetlength(res.get(), i, 0) != 8) {
      return Status::Internal(name_ + " is corrupt (a schedule uid of unexpected size)");
    }
    uids.Int8(GetBigEndian<std::int64_t>(PQgetvalue(res.get(), i, 0)));
    parts.Int4(cluster::PartitionOf(field(i, 1), field(i, 2), field(i, 3), field(i, 4),
                                    options_.cluster->partitions));
  }
  res.reset();
  std::string p1 = uids.Finish(), p2 = parts.Finish();
  const char* values[] = {p1.data(), p2.data()};
  const int lengths[] = {static_cast<int>(p1.size()), static_cast<int>(p2.size())};
  const int formats[] = {1, 1};
  ResultPtr upd(Timed([&] {
    return PQexecParams(conn_,
                        "UPDATE syncsched.schedules AS s SET partition = u.p FROM "
                        "unnest($1::int8[], $2::int4[]) AS u(uid, p) "
                        "WHERE s.uid = u.uid AND s.partition IS NULL",
                        2, nullptr, values, lengths, formats, 0);
  }));
  if (!upd || PQresultStatus(upd.get()) != PGRES_COMMAND_OK) {
    return Error("filling the schedules' partitions", upd.get());
  }
  return Status::Ok();
}

Result<std::uint64_t> PgStore::ReserveUids(std::uint64_t* count) {
  *count = 0;
  if (!InCluster()) return Store::ReserveUids(count);
  if (Status s = EnsureConnected(); !s.ok()) return s;
  ResultPtr res;
  Status s = Exec("SELECT nextval('syncsched.schedule_uids')", "reserving schedule uids", &res);
  if (!s.ok()) return s;
  *count = kPostgresUidBlock;
  return static_cast<std::uint64_t>(std::strtoll(PQgetvalue(res.get(), 0, 0), nullptr, 10));
}

Status PgStore::Prepare() {
  ResultPtr type;
  if (Status s = Exec("SELECT 'syncsched.schedules'::regtype::oid",
                      "reading the schedules' row type", &type);
      !s.ok()) {
    return s;
  }
  schedules_type_oid_ =
      static_cast<std::uint32_t>(std::strtoul(PQgetvalue(type.get(), 0, 0), nullptr, 10));
  for (int i = 0; i < kStatementCount; ++i) {
    if ((i == kFence || i == kApplyCommandPart || i == kLogCatalog) && !InCluster()) continue;
    ResultPtr res(Timed(
        [&] { return PQprepare(conn_, StatementName(i), statement_sql_[i].c_str(), 0, nullptr); }));
    if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
      return Error(std::string("preparing ") + StatementName(i), res.get());
    }
  }
  return Status::Ok();
}

Status PgStore::Open() {
  Status s = Connect(options_.wait_for_owner);
  if (!s.ok()) return s;
  // The stores of a cluster open at once: one inspects and migrates at a time (a single engine
  // holds the owner lock exclusively and needs no more).
  const std::string key = std::to_string(kPostgresOwnerLockKey ^ 1);
  if (InCluster()) {
    s = Exec(("SELECT pg_advisory_lock(" + key + ")").c_str(), "waiting to migrate the schema");
    if (!s.ok()) return s;
  }
  int version = 0;
  s = Inspect(&version);
  if (!s.ok()) return s;
  // A migration rewrites whole tables: no reply deadline while it runs.
  reply_timeout_ = std::chrono::milliseconds(0);
  s = Migrate(version);
  reply_timeout_ = options_.reply_timeout;
  if (!s.ok()) return s;
  if (InCluster()) {
    s = Exec(("SELECT pg_advisory_unlock(" + key + ")").c_str(), "ending the migration");
    if (!s.ok()) return s;
  }
  s = InCluster() ? ClaimCluster() : Claim();
  if (!s.ok()) return s;
  return Prepare();
}

Status PgStore::Reconnect(bool* applied, std::chrono::milliseconds connect_timeout) {
  *applied = false;
  Status s = Connect(std::chrono::milliseconds(0), connect_timeout);
  if (!s.ok()) return s;
  ResultPtr res;
  if (InCluster()) {
    // Others write freely; only this node's own commit mark tells whether a commit in doubt was
    // applied.
    std::string mark = "SELECT coalesce((SELECT seq FROM syncsched.commit_marks WHERE node = " +
                       std::to_string(options_.cluster->node_id) + "), 0)";
    s = Exec(mark.c_str(), "reading the node's commit mark", &res);
    if (!s.ok()) {
      Lost(s.message());
      return s;
    }
    std::int64_t seq = std::strtoll(PQgetvalue(res.get(), 0, 0), nullptr, 10);
    if (in_doubt_seq_ != 0 && seq == in_doubt_seq_) *applied = true;
    commit_seq_ = seq;
    in_doubt_seq_ = 0;
    s = Prepare();
    if (!s.ok()) {
      Lost(s.message());
      return s;
    }
    lost_cause_.clear();
    backoff_ = options_.reconnect_backoff_min;
    return Status::Ok();
  }
  s = Exec(
      "SELECT (SELECT value FROM syncsched.meta WHERE key = 'owner'),"
      "       (SELECT value FROM syncsched.meta WHERE key = 'commit_seq')",
      "reading the owner mark", &res);
  if (!s.ok()) {
    Lost(s.message());
    return s;
  }
  std::int64_t owner = std::strtoll(PQgetvalue(res.get(), 0, 0), nullptr, 10);
  std::int64_t seq = std::strtoll(PQgetvalue(res.get(), 0, 1), nullptr, 10);
  if (owner != owner_) {
    broken_ = Status::Unavailable(
        name_ +
        " is in use by another syncsched engine: it was opened by another engine while this "
        "store's connection was lost (" +
        lost_cause_ +
        "); this store refuses every further Commit and Load; destroy it and open the database "
        "again");
    Close();
    return broken_;
  }
  if (in_doubt_seq_ != 0 && seq == in_doubt_seq_) {
    *applied = true;
    commit_seq_ = seq;
    max_uid_ = std::max(max_uid_, in_doubt_max_uid_);
  } else if (seq != commit_seq_) {
    broken_ = Status::Internal(name_ + ": its commit mark is " + std::to_string(seq) +
                               " where this store expected " + std::to_string(commit_seq_) +
                               ": something else wrote to it; this store refuses every further "
                               "Commit and Load; destroy it and open the database again");
    Close();
    return broken_;
  }
  in_doubt_seq_ = 0;
  s = Prepare();
  if (!s.ok()) {
    Lost(s.message());
    return s;
  }
  lost_cause_.clear();
  backoff_ = options_.reconnect_backoff_min;
  return Status::Ok();
}

Status PgStore::EnsureConnected() {
  if (!broken_.ok()) return broken_;
  if (Connected()) return Status::Ok();
  if (conn_ != nullptr) Lost("the connection was lost: " + Trimmed(PQerrorMessage(conn_)));
  auto now = std::chrono::steady_clock::now();
  if (now < next_attempt_) {
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_attempt_ - now);
    return Status::Unavailable(name_ + ": not connected (" + lost_cause_ +
                               "); the next reconnect attempt is in " +
                               std::to_string(wait.count()) + " ms");
  }
  bool applied = false;
  Status s = Reconnect(&applied);
  if (!s.ok()) {
    if (broken_.ok()) {
      next_attempt_ = std::chrono::steady_clock::now() + backoff_;
      backoff_ = std::min(options_.reconnect_backoff_max, backoff_ * 2);
      if (backoff_.count() == 0) backoff_ = options_.reconnect_backoff_min;
    }
    return s;
  }
  if (applied && in_doubt_probe_) {
    in_doubt_probe_ = false;  // a probe's commit mark alone: the engine's state still matches
  } else if (applied) {
    // The engine was told that commit failed and rolled back what it had applied in memory.
    broken_ = Status::Internal(
        name_ +
        ": a commit reported as failed (its connection was lost before its answer) was applied; "
        "this store refuses every further Commit and Load, since the engine's state no longer "
        "matches the database's; destroy it and open the database again");
    Close();
    return broken_;
  }
  return Status::Ok();
}

// ---- Commit ----

// Where AddScheduleRow writes a row's columns: one array per column, or one row of a row array.
struct ColumnArrays {
  std::vector<ArrayParam>& a;
  std::size_t i = 0;
  void Int8(std::int64_t v) { a[i++].Int8(v); }
  void Int4(std::int32_t v) { a[i++].Int4(v); }
  void Int2(std::int16_t v) { a[i++].Int2(v); }
  void Bool(bool v) { a[i++].Bool(v); }
  void Bytes(std::string_view v) { a[i++].Bytes(v); }
  void Null(std::uint32_t) { a[i++].Null(); }
};
struct RowOfArray {
  RowArrayParam& p;
  void Int8(std::int64_t v) { p.Int8(v); }
  void Int4(std::int32_t v) { p.Int4(v); }
  void Int2(std::int16_t v) { p.Int2(v); }
  void Bool(bool v) { p.Bool(v); }
  void Bytes(std::string_view v) { p.Bytes(v); }
  void Null(std::uint32_t oid) { p.Null(oid); }
};

// The slot of `run` (in flight in schedule `uid`'s row) when it is the first attempt of a grid
// slot: its id is exactly "<uid>-<slot>" (core/grid.h). Else nullopt.
std::optional<std::int64_t> GridSlotOf(std::uint64_t uid, const RunRow& run) {
  if (run.run_id.empty() || run.attempt != 1) return std::nullopt;
  char buf[48];
  char* p = std::to_chars(buf, buf + 20, uid).ptr;
  *p++ = '-';
  p = std::to_chars(p, buf + sizeof buf, run.slot_ms).ptr;
  if (std::string_view(buf, static_cast<std::size_t>(p - buf)) != run.run_id) return std::nullopt;
  return run.slot_ms;
}

// The columns of `r` in table order; the key (from `key`) when `with_key`; the partition column
// last (NULL when negative).
template <typename Sink>
void AddScheduleRow(const ScheduleRow& r, const ScheduleRow* key, bool with_key, int partition,
                    Sink&& a) {
  a.Int8(static_cast<std::int64_t>(r.uid));
  if (with_key) {
    a.Bytes(key->integration);
    a.Bytes(key->connection);
    a.Bytes(key->sync);
    a.Bytes(key->variant);
  }
  a.Int2(r.state);
  a.Int8(r.anchor_ms);
  a.Int8(r.frequency_override_ms);
  a.Int8(r.next_slot_ms);
  a.Int8(static_cast<std::int64_t>(r.runs));
  a.Int8(static_cast<std::int64_t>(r.failures));
  a.Int8(static_cast<std::int64_t>(r.skipped));
  a.Int8(r.last_start_ms);
  a.Int8(r.last_finish_ms);
  a.Int2(r.last_ok);
  a.Bytes(r.last_error);
  const RunRow& run = r.in_flight;
  a.Bytes(run.run_id);
  a.Int8(run.run_id.empty() ? 0 : run.slot_ms);
  a.Int2(run.run_id.empty() ? 0 : run.mode);
  a.Int4(run.run_id.empty() ? 0 : run.attempt);
  a.Int8(run.run_id.empty() ? 0 : run.started_ms);
  a.Int8(static_cast<std::int64_t>(r.run_seq));
  a.Int2(r.pending);
  for (const OwedRun* owed : {&r.waiting, &r.retry}) {
    if (owed->empty()) {
      for (std::uint32_t oid :
           {kByteaOid, kInt8Oid, kInt2Oid, kInt4Oid, kInt8Oid, kInt8Oid, kBoolOid}) {
        a.Null(oid);
      }
      continue;
    }
    a.Bytes(owed->run_id);
    a.Int8(owed->slot_ms);
    a.Int2(owed->mode);
    a.Int4(owed->attempt);
    a.Int8(owed->at_ms);
    a.Int8(static_cast<std::int64_t>(owed->seq));
    a.Bool(owed->scheduled);
  }
  if (partition >= 0) {
    a.Int4(partition);
  } else {
    a.Null(kInt4Oid);
  }
  if (std::optional<std::int64_t> slot = GridSlotOf(r.uid, run)) {
    a.Int8(*slot);
  } else {
    a.Null(kInt8Oid);
  }
}

std::vector<std::uint32_t> ScheduleOids(bool with_key) {
  std::vector<std::uint32_t> oids;
  for (std::size_t i = 0; i < kScheduleColumnCount; ++i) {
    if (!with_key && i >= 1 && i <= kKeyColumns) continue;
    std::string_view t = kScheduleColumns[i].type;
    oids.push_back(t == "int8"   ? kInt8Oid
                   : t == "int4" ? kInt4Oid
                   : t == "int2" ? kInt2Oid
                   : t == "bool" ? kBoolOid
                                 : kByteaOid);
  }
  return oids;
}

// Turns `arrays` into a query's parameters and starts them afresh.
Query Finish(int statement, std::vector<ArrayParam>& arrays, const std::vector<std::uint32_t>& oids,
             std::string what) {
  Query q;
  q.statement = statement;
  q.what = std::move(what);
  for (std::size_t i = 0; i < arrays.size(); ++i) {
    q.params.push_back(arrays[i].Finish());
    arrays[i].Reset(oids[i]);
  }
  return q;
}

std::string Key2(std::string_view a, std::string_view b) {
  std::string k;
  k.reserve(a.size() + b.size() + 1);
  k.append(a);
  k.push_back('\0');
  k.append(b);
  return k;
}

Status PgStore::Plan(const Batch& batch, std::uint64_t* max_uid, std::vector<Query>* queries) {
  std::vector<ArrayParam> a;
  auto reset = [&](const std::vector<std::uint32_t>& oids) {
    a.assign(oids.size(), ArrayParam());
    for (std::size_t i = 0; i < oids.size(); ++i) a[i].Reset(oids[i]);
  };
  // Emits the rows gathered so far as one statement; `force`: even below kChunk rows.
  auto flush = [&](int statement, const std::vector<std::uint32_t>& oids, bool force,
                   const char* what) {
    if (a.empty() || a[0].size() == 0 || (!force && a[0].size() < kChunk)) return;
    std::string w = std::string(what) + " (" + std::to_string(a[0].size()) + " rows)";
    queries->push_back(Finish(statement, a, oids, std::move(w)));
  };

  if (!batch.syncs.empty()) {
    std::vector<std::uint32_t> oids = {kByteaOid, kByteaOid, kByteaOid, kInt8Oid,
                                       kBoolOid,  kInt8Oid,  kInt8Oid,  kByteaOid};
    std::unordered_map<std::string, std::size_t> last;
    for (std::size_t i = 0; i < batch.syncs.size(); ++i) {
      last[Key2(batch.syncs[i].integration, batch.syncs[i].name)] = i;
    }
    reset(oids);
    for (std::size_t i = 0; i < batch.syncs.size(); ++i) {
      const SyncRow& r = batch.syncs[i];
      if (last[Key2(r.integration, r.name)] != i) continue;
      a[0].Bytes(r.integration);
      a[1].Bytes(r.name);
      a[2].Bytes(r.frequency_text);
      a[3].Int8(r.frequency_ms);
      a[4].Bool(r.auto_start);
      a[5].Int8(r.timeout_ms);
      a[6].Int8(r.heartbeat_timeout_ms);
      a[7].Bytes(r.policy);
      flush(kUpsertSyncs, oids, false, "writing syncs");
    }
    flush(kUpsertSyncs, oids, true, "writing syncs");
  }
  if (!batch.integrations.empty()) {
    std::vector<std::uint32_t> oids = {kByteaOid, kInt8Oid};
    std::unordered_map<std::string, std::size_t> last;
    for (std::size_t i = 0; i < batch.integrations.size(); ++i) {
      last[batch.integrations[i].integration] = i;
    }
    reset(oids);
    for (std::size_t i = 0; i < batch.integrations.size(); ++i) {
      const IntegrationRow& r = batch.integrations[i];
      if (last[r.integration] != i) continue;
      a[0].Bytes(r.integration);
      a[1].Int8(static_cast<std::int64_t>(r.max_concurrency));
      flush(kUpsertIntegrations, oids, false, "writing integrations");
    }
    flush(kUpsertIntegrations, oids, true, "writing integrations");
  }
  const std::vector<std::uint32_t> pair_oids = {kByteaOid, kByteaOid};
  for (auto [rows, statement, what] :
       {std::tuple{&batch.connections_deleted, kDeleteConnections, "deleting connections"},
        std::tuple{&batch.connections_added, kInsertConnections, "adding connections"}}) {
    if (rows->empty()) continue;
    std::unordered_set<std::string> seen;
    reset(pair_oids);
    for (const ConnectionRow& r : *rows) {
      if (!seen.insert(Key2(r.integration, r.connection)).second) continue;
      a[0].Bytes(r.integration);
      a[1].Bytes(r.connection);
      flush(statement, pair_oids, false, what);
    }
    flush(statement, pair_oids, true, what);
  }

  std::unordered_set<std::uint64_t> deleted(batch.schedules_deleted.begin(),
                                            batch.schedules_deleted.end());
  if (!deleted.empty()) {
    std::vector<std::uint32_t> oids = {kInt8Oid};
    reset(oids);
    for (std::uint64_t uid : deleted) {
      a[0].Int8(static_cast<std::int64_t>(uid));
      flush(kDeleteSchedules, oids, false, "deleting schedules");
    }
    flush(kDeleteSchedules, oids, true, "deleting schedules");
  }

  // Schedule rows: the last version of each uid, with the key of any version that has one.
  if (!batch.schedules.empty()) {
    struct Latest {
      std::size_t last;
      const ScheduleRow* key = nullptr;
    };
    std::unordered_map<std::uint64_t, Latest> latest;
    latest.reserve(batch.schedules.size());
    for (std::size_t i = 0; i < batch.schedules.size(); ++i) {
      const ScheduleRow& r = batch.schedules[i];
      if (!deleted.empty() && deleted.count(r.uid) != 0) continue;
      auto [it, inserted] = latest.try_emplace(r.uid, Latest{i});
      it->second.last = i;
      if (!r.update_only) it->second.key = &r;
      *max_uid = std::max(*max_uid, r.uid);
    }
    const std::vector<std::uint32_t> keyed = ScheduleOids(true);
    const ScheduleRow no_key;  // update-only rows: the key columns go empty and are not written
    RowArrayParam updates;
    updates.Reset(schedules_type_oid_);
    auto flush_updates = [&](bool force) {
      if (updates.size() == 0 || (!force && updates.size() < kChunk)) return;
      Query q;
      q.statement = kUpdateSchedules;
      q.what = "updating schedules (" + std::to_string(updates.size()) + " rows)";
      q.params.push_back(updates.Finish());
      queries->push_back(std::move(q));
      updates.Reset(schedules_type_oid_);
    };
    // Three passes: new rows (a uid above the committed max_uid cannot exist: uids are never
    // reused), keyed rows that may exist (upsert), and update-only rows.
    for (int pass = 0; pass < 3; ++pass) {
      const int statement = pass == 0 ? kInsertSchedules : kUpsertSchedules;
      const char* what = pass == 0 ? "inserting schedules" : "writing schedules";
      if (pass < 2) reset(keyed);
      for (std::size_t i = 0; i < batch.schedules.size(); ++i) {
        const ScheduleRow& r = batch.schedules[i];
        auto it = latest.find(r.uid);
        if (it == latest.end() || it->second.last != i) continue;
        const ScheduleRow* key = it->second.key;
        // Cluster mode: uids come from the sequence, and max_uid_ means nothing: every keyed
        // row is an upsert.
        int kind = key == nullptr ? 2 : (!InCluster() && r.uid > max_uid_) ? 0 : 1;
        if (kind != pass) continue;
        if (pass == 2) {
          updates.BeginRow(static_cast<int>(kScheduleColumnCount));
          AddScheduleRow(r, &no_key, true, -1, RowOfArray{updates});
          updates.EndRow();
          flush_updates(false);
          continue;
        }
        int partition = InCluster()
                            ? cluster::PartitionOf(key->integration, key->connection, key->sync,
                                                   key->variant, options_.cluster->partitions)
                            : -1;
        AddScheduleRow(r, key, true, partition, ColumnArrays{a});
        flush(statement, keyed, false, what);
      }
      if (pass < 2) flush(statement, keyed, true, what);
    }
    flush_updates(true);
  }

  if (!batch.runs.empty()) {
    const auto keep = static_cast<std::uint64_t>(options_.history_per_schedule);
    // (uid, place) -> the run that takes it: the last one in the batch.
    struct PlaceHash {
      std::size_t operator()(const std::pair<std::uint64_t, std::int16_t>& p) const {
        return std::hash<std::uint64_t>()(p.first * 1031 + static_cast<std::uint64_t>(p.second));
      }
    };
    std::unordered_map<std::pair<std::uint64_t, std::int16_t>, std::size_t, PlaceHash> place;
    std::vector<std::pair<std::int16_t, std::size_t>> puts;  // (place, run index)
    for (std::size_t i = 0; i < batch.runs.size(); ++i) {
      const RunRow& r = batch.runs[i];
      if (!deleted.empty() && deleted.count(r.schedule_uid) != 0) continue;
      if (r.finished_ms == 0 || r.number == 0) {
        return Status::Internal(name_ + ": writing run " + r.run_id + " of schedule uid " +
                                std::to_string(r.schedule_uid) +
                                ": not a finished run (finished_ms and number must be set)");
      }
      if (keep > 0) {
        auto p = static_cast<std::int16_t>((r.number - 1) % keep);
        place[{r.schedule_uid, p}] = i;
        puts.emplace_back(p, i);
      }
      if (r.ok == 0) {
        place[{r.schedule_uid, kFailurePlace}] = i;
        puts.emplace_back(kFailurePlace, i);
      }
    }
    std::vector<std::uint32_t> oids = {kInt8Oid, kInt2Oid, kByteaOid, kInt8Oid, kInt2Oid,
                                       kInt4Oid, kInt8Oid, kInt8Oid,  kInt2Oid, kByteaOid};
    reset(oids);
    for (auto [p, i] : puts) {
      const RunRow& r = batch.runs[i];
      if (place[{r.schedule_uid, p}] != i) continue;
      a[0].Int8(static_cast<std::int64_t>(r.schedule_uid));
      a[1].Int2(p);
      a[2].Bytes(r.run_id);
      a[3].Int8(r.slot_ms);
      a[4].Int2(r.mode);
      a[5].Int4(r.attempt);
      a[6].Int8(r.started_ms);
      a[7].Int8(r.finished_ms);
      a[8].Int2(r.ok);
      a[9].Bytes(r.error);
      flush(kPutHistory, oids, false, "writing finished runs");
    }
    flush(kPutHistory, oids, true, "writing finished runs");
  }
  for (const CommandApplied& c : batch.commands) {
    if (!InCluster()) {
      return Status::Internal(name_ +
                              ": a command part in a commit of a store not in cluster mode");
    }
    Query q;
    q.statement = kApplyCommandPart;
    q.what = "recording command " + std::to_string(c.command) + " applied in partition " +
             std::to_string(c.partition);
    std::string p1, p2, p3, p4;
    PutBigEndian(c.command, &p1);
    PutBigEndian(static_cast<std::int32_t>(c.partition), &p2);
    PutBigEndian(options_.cluster->node_id, &p3);
    PutBigEndian(c.epoch, &p4);
    q.params = {std::move(p1), std::move(p2), std::move(p3), std::move(p4), c.result};
    queries->push_back(std::move(q));
  }
  return Status::Ok();
}

Status PgStore::PlanFence(const Batch& batch, std::vector<Query>* queries) const {
  const int partitions = options_.cluster->partitions;
  std::map<int, std::int64_t> fence;  // partition -> epoch (the oldest, when two)
  auto add = [&](std::int32_t partition, std::int64_t epoch, const std::string& what) {
    if (partition < 0 || partition >= partitions || epoch <= 0) {
      return Status::Internal(name_ + ": cluster mode: " + what +
                              " has no valid tenure (partition " + std::to_string(partition) +
                              ", epoch " + std::to_string(epoch) +
                              "); nothing of the batch is written");
    }
    auto [it, inserted] = fence.try_emplace(partition, epoch);
    if (!inserted) it->second = std::min(it->second, epoch);
    return Status::Ok();
  };
  for (const ScheduleRow& r : batch.schedules) {
    if (Status s = add(r.partition, r.epoch, "schedule row uid " + std::to_string(r.uid));
        !s.ok()) {
      return s;
    }
    if (!r.update_only && cluster::PartitionOf(r.integration, r.connection, r.sync, r.variant,
                                               partitions) != r.partition) {
      return Status::Internal(name_ + ": cluster mode: schedule row uid " + std::to_string(r.uid) +
                              " is tagged with partition " + std::to_string(r.partition) +
                              ", not its key's; nothing of the batch is written");
    }
  }
  for (const RunRow& r : batch.runs) {
    if (Status s = add(r.partition, r.epoch, "finished run " + r.run_id); !s.ok()) return s;
  }
  for (const Tenure& t : batch.fence) {
    if (Status s = add(t.partition, t.epoch, "a tenure of Batch::fence"); !s.ok()) return s;
  }
  for (const CommandApplied& c : batch.commands) {
    if (Status s = add(c.partition, c.epoch, "command " + std::to_string(c.command)); !s.ok()) {
      return s;
    }
  }
  if (!batch.schedules_deleted.empty() && batch.fence.empty()) {
    return Status::Internal(name_ +
                            ": cluster mode: schedules deleted without their tenures in "
                            "Batch::fence; nothing of the batch is written");
  }
  if (fence.empty()) return Status::Ok();  // catalog rows only
  ArrayParam parts, epochs;
  parts.Reset(kInt4Oid);
  epochs.Reset(kInt8Oid);
  for (const auto& [p, e] : fence) {
    parts.Int4(p);
    epochs.Int8(e);
  }
  Query q;
  q.statement = kFence;
  q.what = "checking the partition fence (" + std::to_string(fence.size()) + " partitions)";
  std::string node;
  PutBigEndian(options_.cluster->node_id, &node);
  q.params = {std::move(node), parts.Finish(), epochs.Finish()};
  queries->push_back(std::move(q));
  return Status::Ok();
}

Status PgStore::BeginPipeline() {
  if (PQenterPipelineMode(conn_) != 1) return Error("cannot enter pipeline mode", nullptr);
  return Status::Ok();
}

void PgStore::Send(Pipeline& p, const Query& q) {
  if (!p.send_error.ok()) return;
  int ok = 0;
  if (q.statement < 0 && q.params.empty()) {
    ok = Timed(
        [&] { return PQsendQueryParams(conn_, q.sql, 0, nullptr, nullptr, nullptr, nullptr, 0); });
  } else if (q.statement < 0) {
    // Parameters of a one-off statement: int8, binary.
    std::vector<const char*> values;
    std::vector<int> lengths;
    for (const std::string& param : q.params) {
      values.push_back(param.data());
      lengths.push_back(static_cast<int>(param.size()));
    }
    std::vector<Oid> types(q.params.size(), 20);  // int8
    std::vector<int> formats(q.params.size(), 1);
    ok = Timed([&] {
      return PQsendQueryParams(conn_, q.sql, static_cast<int>(values.size()), types.data(),
                               values.data(), lengths.data(), formats.data(), 0);
    });
  } else {
    std::vector<const char*> values;
    std::vector<int> lengths;
    values.reserve(q.params.size());
    lengths.reserve(q.params.size());
    for (const std::string& param : q.params) {
      values.push_back(param.data());
      lengths.push_back(static_cast<int>(param.size()));
    }
    std::vector<int> formats(q.params.size(), 1);
    ok = Timed([&] {
      return PQsendQueryPrepared(conn_, StatementName(q.statement), static_cast<int>(values.size()),
                                 values.data(), lengths.data(), formats.data(), 0);
    });
  }
  if (ok != 1) {
    p.send_error = Error("sending " + q.what, nullptr);
    return;
  }
  p.whats.push_back(q.what);
  if (q.statement < 0 && std::strcmp(q.sql, "COMMIT") == 0) p.commit_sent = true;
}

void PgStore::SendExpiry(Pipeline& p) {
  if (reply_timeout_.count() <= 0 || !server_clock_.known()) return;
  // This store gives up on a reply no earlier than reply_timeout after now (each wait is armed
  // after this is sent): a statement executed before `expiry` (server time) runs while the store
  // still waits for its answer (ServerClock).
  std::int64_t expiry = server_clock_.Expiry(std::chrono::steady_clock::now() + reply_timeout_);
  Query q;
  // Schema v5's trigger on the commit mark checks it when COMMIT runs; the set_config statement
  // itself refuses at once a commit already late.
  q.sql =
      "SELECT set_config('syncsched.expiry_us', $1::int8::text, true), "
      "1 / (clock_timestamp() < to_timestamp($1::int8 / 1000000.0))::int";
  std::string param;
  PutBigEndian(expiry, &param);
  q.params = {std::move(param)};
  q.what = kExpiryWhat;
  Send(p, q);
}

Status PgStore::EndPipeline(Pipeline& p, const Status& abandon, bool* in_doubt) {
  *in_doubt = false;
  // A sync even when the commit was abandoned: it ends the pipeline, so that the statements sent
  // are answered and the open transaction can be rolled back below.
  bool synced = Connected() && Timed([&] { return PQpipelineSync(conn_); }) == 1;
  if (p.send_error.ok() && !synced) p.send_error = Error("sending the commit", nullptr);

  Status first_error = abandon;
  bool answered_commit = false;
  const std::size_t sent = p.whats.size();
  // Reads the results of the statements sent, then the sync. A lost connection ends the loop.
  for (std::size_t i = 0; synced && i < sent && Connected(); ++i) {
    ResultPtr res(Timed([&] { return PQgetResult(conn_); }));
    if (!res) break;
    ExecStatusType st = PQresultStatus(res.get());
    if (st == PGRES_FATAL_ERROR && first_error.ok()) {
      // A deadline that shut the socket fails whichever statement was being read: name the wait.
      first_error = Error(expired_ ? "waiting for the commit's replies" : p.whats[i], res.get());
    } else if (st == PGRES_COMMAND_OK && i + 1 == sent && p.commit_sent && first_error.ok() &&
               std::strcmp(PQcmdStatus(res.get()), "COMMIT") == 0) {
      answered_commit = true;
    }
    while (ResultPtr more{Timed([&] { return PQgetResult(conn_); })}) {
    }  // the NULL that ends each statement's results
  }
  if (synced && Connected()) {
    while (ResultPtr res{Timed([&] { return PQgetResult(conn_); })}) {
      if (PQresultStatus(res.get()) == PGRES_PIPELINE_SYNC) break;
      if (PQresultStatus(res.get()) == PGRES_FATAL_ERROR && first_error.ok() && !answered_commit) {
        first_error = Error("committing", res.get());
      }
    }
  }
  if (Connected()) {
    if (PQexitPipelineMode(conn_) != 1) Lost("cannot leave pipeline mode");
  }
  if (first_error.ok() && !p.send_error.ok()) first_error = p.send_error;
  if (answered_commit) {
    // Applied, whatever happened to the connection after COMMIT's answer.
    if (!Connected()) Lost("the connection was lost after a commit");
    return Status::Ok();
  }
  if (!Connected()) {
    std::string cause = LostDetail();
    // Sent whole, no statement failed, COMMIT's answer not read: the server may have committed.
    *in_doubt = synced && p.commit_sent && p.send_error.ok() && abandon.ok() &&
                (first_error.ok() || first_error.message().find("SQLSTATE") == std::string::npos);
    Lost("the connection was lost during a commit: " + cause);
    if (first_error.ok()) {
      first_error = Status::Unavailable(name_ + ": " + lost_cause_);
    }
    return first_error;
  }
  if (first_error.ok() && !answered_commit) {
    first_error = Status::Internal(name_ + ": the server did not answer the commit");
  }
  if (!first_error.ok() && PQtransactionStatus(conn_) != PQTRANS_IDLE) {
    ResultPtr res(Timed([&] { return PQexec(conn_, "ROLLBACK"); }));
    // A connection that cannot roll back is closed: ending the session discards the transaction.
    if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK) Lost("ROLLBACK failed");
  }
  return first_error;
}

Status PgStore::Commit(const Batch& batch) { return CommitParts(batch, nullptr); }

Status PgStore::CommitStream(const Batch& first, BatchSource& more) {
  return CommitParts(first, &more);
}

Status PgStore::CommitParts(const Batch& first, BatchSource* more, bool probe) {
  if (!broken_.ok()) return broken_;
  if (first.empty() && more == nullptr && !probe) return Status::Ok();
  auto failed = [](const Status& s) {
    return Status(s.code(), s.message() + " (commit failed; nothing of the batch is applied)");
  };
  if (Status s = EnsureConnected(); !s.ok()) return broken_.ok() ? failed(s) : s;
  std::uint64_t max_uid = max_uid_;
  if (Status s = BeginPipeline(); !s.ok()) return failed(s);
  Pipeline pipeline;
  Send(pipeline, Query{-1, "BEGIN", {}, "beginning"});
  // Plans one part and sends its statements at once.
  std::vector<Query> queries;
  bool catalog_changed = false;
  // Cluster mode: the connections added and deleted, for the catalog's log (deletions first, as
  // Plan applies them).
  ArrayParam log_kinds, log_integrations, log_connections;
  log_kinds.Reset(kInt2Oid);
  log_integrations.Reset(kByteaOid);
  log_connections.Reset(kByteaOid);
  std::size_t logged = 0;
  auto send_part = [&](const Batch& part) {
    queries.clear();
    catalog_changed = catalog_changed || !part.syncs.empty() || !part.integrations.empty() ||
                      !part.connections_added.empty() || !part.connections_deleted.empty();
    if (InCluster()) {
      for (auto [rows, kind] : {std::pair{&part.connections_deleted, std::int16_t{3}},
                                std::pair{&part.connections_added, std::int16_t{2}}}) {
        for (const ConnectionRow& r : *rows) {
          log_kinds.Int2(kind);
          log_integrations.Bytes(r.integration);
          log_connections.Bytes(r.connection);
          ++logged;
        }
      }
    }
    // In cluster mode the fence of each part's partitions comes before its rows: its row locks
    // are held from there to COMMIT, and a refusal aborts the transaction, parts sent before
    // included, before anything of the part is written.
    Status planned = InCluster() ? PlanFence(part, &queries) : Status::Ok();
    if (planned.ok()) planned = Plan(part, &max_uid, &queries);
    for (const Query& q : queries) Send(pipeline, q);
    // What libpq still buffers (under 8 kB) goes now: the server may wait for the next part.
    if (more != nullptr && pipeline.send_error.ok() && Timed([&] { return PQflush(conn_); }) != 0) {
      pipeline.send_error = Error("sending a part of the commit", nullptr);
    }
    return planned;
  };
  Status planned = send_part(first);
  if (more != nullptr) {
    Batch part;
    while (planned.ok() && pipeline.send_error.ok() && more->Next(part)) planned = send_part(part);
  }
  const std::int64_t seq = commit_seq_ + 1;
  if (planned.ok() && InCluster()) {
    Query mark;
    mark.statement = kSetMark;
    mark.what = "writing the node's commit mark";
    std::string p1, p2;
    PutBigEndian(options_.cluster->node_id, &p1);
    PutBigEndian(seq, &p2);
    mark.params = {std::move(p1), std::move(p2)};
    Send(pipeline, mark);
    if (catalog_changed) {
      // Cluster schema v3: the other engines apply the catalog as of this version to the
      // partitions they hold (docs/cluster.md, "The catalog"); the notice wakes them.
      Send(pipeline, Query{-1,
                           "UPDATE syncsched_cluster.meta SET value = value + 1 "
                           "WHERE key = 'catalog_version'",
                           {},
                           "counting the catalog's version"});
      if (logged > 0) {
        Query log;
        log.statement = kLogCatalog;
        log.what = "writing the catalog's log";
        log.params = {log_kinds.Finish(), log_integrations.Finish(), log_connections.Finish()};
        Send(pipeline, log);
      }
      Send(pipeline, Query{-1,
                           "SELECT pg_notify('syncsched_commands', 'catalog')",
                           {},
                           "announcing the catalog's change"});
    }
    SendExpiry(pipeline);
    Send(pipeline, Query{-1, "COMMIT", {}, "committing"});
  } else if (planned.ok()) {
    Query meta;
    meta.statement = kSetMeta;
    meta.what = "writing the commit mark and max_uid";
    std::string p1, p2;
    PutBigEndian(seq, &p1);
    PutBigEndian(static_cast<std::int64_t>(max_uid), &p2);
    meta.params = {std::move(p1), std::move(p2)};
    Send(pipeline, meta);
    SendExpiry(pipeline);
    Send(pipeline, Query{-1, "COMMIT", {}, "committing"});
  }

  bool in_doubt = false;
  Status s = EndPipeline(pipeline, planned, &in_doubt);
  if (s.ok()) {
    commit_seq_ = seq;
    max_uid_ = max_uid;
    return s;
  }
  if (!in_doubt) return failed(s);
  // Learn the outcome now, if the server can be reached at once.
  in_doubt_seq_ = seq;
  in_doubt_max_uid_ = max_uid;
  in_doubt_probe_ = probe;
  bool applied = false;
  // At once, but briefly (libpq's least, 2 s): the caller has waited reply_timeout already, and a
  // route that stalled this connection may stall a new one too; later calls retry with backoff.
  Status again = Reconnect(&applied, std::chrono::seconds(2));
  if (again.ok()) return applied ? Status::Ok() : failed(s);
  if (!broken_.ok()) return broken_;
  next_attempt_ = std::chrono::steady_clock::now() + backoff_;
  return Status::Unavailable(s.message() +
                             " (this store sent the whole commit and its outcome is unknown "
                             "until the store reconnects; if it proves applied then, the store "
                             "refuses every further call and the engine must be reopened: "
                             "syncschedd restarts itself)");
}

// ---- Load ----

template <typename Row>
Status PgStore::CopyOut(const std::string& sql, std::string_view what, const Row& row) {
  std::string copy = "COPY (" + sql + ") TO STDOUT (FORMAT binary)";
  ResultPtr res(Timed([&] { return PQexec(conn_, copy.c_str()); }));
  if (!res || PQresultStatus(res.get()) != PGRES_COPY_OUT) return Error(what, res.get());
  res.reset();
  bool first = true;
  Status status;
  std::size_t n = 0;
  // The reply deadline covers each stretch of 4096 rows (re-arming per row would cost a lock each).
  std::size_t received = 0;
  for (;;) {
    char* buf = nullptr;
    if (received++ % 4096 == 0) deadline_.Arm(conn_, reply_timeout_);
    int len = PQgetCopyData(conn_, &buf, 0);
    if (len < 0 && deadline_.Disarm()) expired_ = true;
    if (len == -1) break;
    if (len == -2) return Error(what, nullptr);
    std::unique_ptr<char, decltype(&PQfreemem)> owned(buf, &PQfreemem);
    if (!status.ok()) continue;  // drain the rest
    CopyRow r;
    int begun = r.Begin(buf, static_cast<std::size_t>(len), first);
    first = false;
    if (begun == 0) continue;
    if (begun < 0) {
      status = Status::Internal(name_ + " returned a malformed row while " + std::string(what));
      continue;
    }
    ++n;
    status = row(r);
    if (status.ok() && !r.ok()) {
      status = Status::Internal(name_ + " is not a syncsched database or is corrupt (" +
                                std::string(what) + ": row " + std::to_string(n) +
                                " has a NULL or a value of an unexpected size)");
    }
  }
  res.reset(Timed([&] { return PQgetResult(conn_); }));
  if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK) return Error(what, res.get());
  while (ResultPtr more{Timed([&] { return PQgetResult(conn_); })}) {
  }
  return status;
}

Result<Snapshot> PgStore::LoadPartitions(const std::vector<int>& partitions) {
  if (!InCluster()) return Store::LoadPartitions(partitions);
  for (int p : partitions) {
    if (p < 0 || p >= options_.cluster->partitions) {
      return Status::InvalidArgument(name_ + ": no partition " + std::to_string(p) +
                                     " (there are " + std::to_string(options_.cluster->partitions) +
                                     ")");
    }
  }
  return LoadSome(&partitions);
}

Status PgStore::DecodeSchedule(CopyRow& r, ScheduleRow& row,
                               std::vector<RunRow>* unfinished) const {
  if (r.fields() != static_cast<int>(kScheduleColumnCount)) {
    return Status::Internal(name_ + ": syncsched.schedules has " + std::to_string(r.fields()) +
                            " columns, not " + std::to_string(kScheduleColumnCount));
  }
  row.uid = r.U64();
  row.integration = r.Bytes();
  row.connection = r.Bytes();
  row.sync = r.Bytes();
  row.variant = r.Bytes();
  row.state = static_cast<std::uint8_t>(r.Int2());
  row.anchor_ms = r.Int8();
  row.frequency_override_ms = r.Int8();
  row.next_slot_ms = r.Int8();
  row.runs = r.U64();
  row.failures = r.U64();
  row.skipped = r.U64();
  row.last_start_ms = r.Int8();
  row.last_finish_ms = r.Int8();
  row.last_ok = static_cast<std::int8_t>(r.Int2());
  row.last_error = r.Bytes();
  RunRow& run = row.in_flight;
  run.run_id = r.Bytes();
  run.slot_ms = r.Int8();
  run.mode = static_cast<std::uint8_t>(r.Int2());
  run.attempt = r.Int4();
  run.started_ms = r.Int8();
  row.run_seq = r.U64();
  row.pending = static_cast<std::uint8_t>(r.Int2());
  for (OwedRun* owed : {&row.waiting, &row.retry}) {
    if (r.NextIsNull()) {
      for (int k = 0; k < 6; ++k) {
        if (!r.NextIsNull()) {
          return Status::Internal(name_ +
                                  " is not a syncsched database or is corrupt (schedule uid " +
                                  std::to_string(row.uid) + ": an owed run without a run id)");
        }
      }
      continue;
    }
    owed->run_id = r.Bytes();
    owed->slot_ms = r.Int8();
    owed->mode = static_cast<std::uint8_t>(r.Int2());
    owed->attempt = r.Int4();
    owed->at_ms = r.Int8();
    owed->seq = r.U64();
    owed->scheduled = r.Bool();
    if (r.ok() && owed->run_id.empty()) {
      return Status::Internal(name_ + " is not a syncsched database or is corrupt (schedule uid " +
                              std::to_string(row.uid) + ": an owed run with an empty run id)");
    }
  }
  row.partition = r.NextIsNull() ? -1 : r.Int4();
  if (!r.NextIsNull()) (void)r.Int8();  // grid_slot_ms: the database's mark (v4)
  if (!r.ok()) {
    return Status::Internal(name_ + " is not a syncsched database or is corrupt (schedule uid " +
                            std::to_string(row.uid) + ": a NULL or a value of an unexpected size)");
  }
  if (!run.run_id.empty()) {
    run.schedule_uid = row.uid;
    unfinished->push_back(run);
  } else {
    run = RunRow{};
  }
  return Status::Ok();
}

Result<Snapshot> PgStore::LoadSome(const std::vector<int>* partitions) {
  if (Status s = EnsureConnected(); !s.ok()) return s;
  Status s = Exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "beginning to read");
  if (!s.ok()) return s;
  auto fail = [&](Status status) -> Result<Snapshot> {
    if (Connected() && PQtransactionStatus(conn_) != PQTRANS_IDLE) {
      ResultPtr res(Timed([&] { return PQexec(conn_, "ROLLBACK"); }));
      if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK) Lost("ROLLBACK failed");
    }
    if (!Connected() && conn_ != nullptr) Lost(status.message());
    return status;
  };
  Snapshot snap;
  if (InCluster()) {
    ResultPtr version;
    s = Exec("SELECT value FROM syncsched_cluster.meta WHERE key = 'catalog_version'",
             "reading the catalog's version", &version);
    if (!s.ok()) return fail(s);
    if (PQntuples(version.get()) == 1) {
      snap.catalog_version = std::strtoll(PQgetvalue(version.get(), 0, 0), nullptr, 10);
    }
  }
  s = CopyOut(
      "SELECT integration, name, frequency_text, frequency_ms, auto_start, timeout_ms, "
      "heartbeat_timeout_ms, policy FROM syncsched.syncs ORDER BY 1, 2",
      "reading syncsched.syncs", [&](CopyRow& r) {
        SyncRow& row = snap.syncs.emplace_back();
        row.integration = r.Bytes();
        row.name = r.Bytes();
        row.frequency_text = r.Bytes();
        row.frequency_ms = r.Int8();
        row.auto_start = r.Bool();
        row.timeout_ms = r.Int8();
        row.heartbeat_timeout_ms = r.Int8();
        row.policy = r.Bytes();
        return Status::Ok();
      });
  if (!s.ok()) return fail(s);
  s = CopyOut("SELECT integration, max_concurrency FROM syncsched.integrations ORDER BY 1",
              "reading syncsched.integrations", [&](CopyRow& r) {
                IntegrationRow& row = snap.integrations.emplace_back();
                row.integration = r.Bytes();
                row.max_concurrency = r.U64();
                return Status::Ok();
              });
  if (!s.ok()) return fail(s);
  s = CopyOut("SELECT integration, connection FROM syncsched.connections ORDER BY 1, 2",
              "reading syncsched.connections", [&](CopyRow& r) {
                ConnectionRow& row = snap.connections.emplace_back();
                row.integration = r.Bytes();
                row.connection = r.Bytes();
                return Status::Ok();
              });
  if (!s.ok()) return fail(s);
  std::string where;
  if (partitions != nullptr) {
    where = " WHERE partition = ANY('{";
    for (std::size_t i = 0; i < partitions->size(); ++i) {
      if (i > 0) where += ',';
      where += std::to_string((*partitions)[i]);
    }
    where += "}'::int4[])";
  }
  // In the table's order, not ORDER BY uid: an index scan of every row (or, before the table is
  // analyzed, a sort of them all, spilling to disk past work_mem) cost the server more than the
  // sort below, which finds the rows in uid order as the start inserted them, or nearly.
  // The vector is reserved (not touched) for the table's estimated rows, a little over, at most
  // 16M: growing it moved every row about twice (recovery of 1M rows: 0.95 client CPU-s against
  // 1.7). The estimate: the table's statistics, or before it is analyzed its size.
  {
    ResultPtr res;
    s = Exec(
        "SELECT (SELECT reltuples FROM pg_class WHERE oid = 'syncsched.schedules'::regclass), "
        "pg_relation_size('syncsched.schedules')",
        "reading the size of syncsched.schedules", &res);
    if (!s.ok()) return fail(s);
    double rows = std::strtod(PQgetvalue(res.get(), 0, 0), nullptr);
    if (rows < 0) rows = std::strtod(PQgetvalue(res.get(), 0, 1), nullptr) / 400;  // ~bytes/row
    if (partitions != nullptr && InCluster()) {
      rows = rows * static_cast<double>(partitions->size()) / options_.cluster->partitions;
    }
    snap.schedules.reserve(static_cast<std::size_t>(std::clamp(rows * 1.05 + 16, 0.0, 16e6)));
  }
  s = CopyOut("SELECT " + Names(kScheduleColumns) + " FROM syncsched.schedules" + where,
              "reading syncsched.schedules", [&](CopyRow& r) {
                return DecodeSchedule(r, snap.schedules.emplace_back(), &snap.unfinished_runs);
              });
  if (!s.ok()) return fail(s);
  // In uid order, as Load promises the engine whatever the table's physical order.
  auto by_uid = [](const ScheduleRow& a, const ScheduleRow& b) { return a.uid < b.uid; };
  if (!std::is_sorted(snap.schedules.begin(), snap.schedules.end(), by_uid)) {
    std::sort(snap.schedules.begin(), snap.schedules.end(), by_uid);
  }
  auto run_by_uid = [](const RunRow& a, const RunRow& b) {
    return a.schedule_uid < b.schedule_uid;
  };
  if (!std::is_sorted(snap.unfinished_runs.begin(), snap.unfinished_runs.end(), run_by_uid)) {
    std::sort(snap.unfinished_runs.begin(), snap.unfinished_runs.end(), run_by_uid);
  }
  ResultPtr res;
  // max_uid: also past every uid the engines of a cluster took from the sequence (compared as
  // unsigned: a uid is stored as the bigint with the same bits).
  std::string max_uid = std::string("SELECT value, ") + kSequenceHighSql +
                        " FROM syncsched.meta WHERE key = 'max_uid'";
  s = Exec(max_uid.c_str(), "reading max_uid", &res);
  if (!s.ok()) return fail(s);
  if (PQntuples(res.get()) != 1) {
    return fail(Status::Internal(
        name_ + " is not a syncsched database or is corrupt (no max_uid in syncsched.meta)"));
  }
  snap.max_uid =
      std::max(static_cast<std::uint64_t>(std::strtoll(PQgetvalue(res.get(), 0, 0), nullptr, 10)),
               static_cast<std::uint64_t>(
                   std::max<long long>(0, std::strtoll(PQgetvalue(res.get(), 0, 1), nullptr, 10))));
  if (InCluster()) snap.max_uid = 0;  // uids come from ReserveUids
  s = Exec("COMMIT", "finishing reading");
  if (!s.ok()) return fail(s);
  return snap;
}

}  // namespace

Result<std::unique_ptr<Store>> OpenPostgresStore(const PostgresStoreOptions& options) {
  if (!IsPostgresUri(options.uri)) {
    return Status::InvalidArgument("PostgresStoreOptions.uri '" + RedactDatabaseUri(options.uri) +
                                   "' is not a PostgreSQL URI; it must start with "
                                   "\"postgresql://\" or \"postgres://\"");
  }
  if (options.history_per_schedule > 1000) {
    return Status::InvalidArgument("PostgresStoreOptions.history_per_schedule is " +
                                   std::to_string(options.history_per_schedule) +
                                   "; at most 1000 runs per schedule are kept");
  }
  if (options.reconnect_backoff_max < options.reconnect_backoff_min) {
    return Status::InvalidArgument("PostgresStoreOptions.reconnect_backoff_max (" +
                                   std::to_string(options.reconnect_backoff_max.count()) +
                                   " ms) is below reconnect_backoff_min (" +
                                   std::to_string(options.reconnect_backoff_min.count()) + " ms)");
  }
  if (options.reply_timeout.count() < 0) {
    return Status::InvalidArgument("PostgresStoreOptions.reply_timeout is negative (" +
                                   std::to_string(options.reply_timeout.count()) +
                                   " ms); 0 means no deadline");
  }
  if (options.cluster) {
    const PostgresClusterMode& c = *options.cluster;
    if (c.node_id <= 0 || c.partitions < 1 || c.partitions > 4096 || c.lease.count() < 2) {
      return Status::InvalidArgument("PostgresStoreOptions.cluster: node_id must be positive (is " +
                                     std::to_string(c.node_id) + "), partitions in 1..4096 (is " +
                                     std::to_string(c.partitions) + "), lease at least 2 ms (is " +
                                     std::to_string(c.lease.count()) + " ms)");
    }
  }
  auto store = std::make_unique<PgStore>(options);
  Status s = store->Open();
  if (!s.ok()) return s;
  return std::unique_ptr<Store>(std::move(store));
}

namespace internal {

void DropConnectionForTest(Store& store) { static_cast<PgStore&>(store).DropConnection(); }

int BackendPidForTest(Store& store) { return static_cast<PgStore&>(store).BackendPid(); }

}  // namespace internal

}  // namespace syncsched::store
