// A fresh database of either store for one test (issue 12: the engine's tests run on SQLite and on
// PostgreSQL): an SQLite file in a temporary directory of its own, or a uniquely named database on
// the shared PostgreSQL test server (SharedPgServer, or a private server the test may stop),
// dropped when the object is destroyed. Tests on either store can run in parallel (`ctest -j`).
#pragma once

#include <string>

#include "support/pg_server.h"
#include "syncsched/status.h"

namespace syncsched::testing {

enum class StoreKind { kSqlite, kPostgres };

inline const char* StoreKindName(StoreKind kind) {
  return kind == StoreKind::kSqlite ? "SQLite" : "PostgreSQL";
}
// For INSTANTIATE_TEST_SUITE_P(..., ::testing::Values(StoreKind::kSqlite, StoreKind::kPostgres),
// StoreParamName): the tests are named .../SQLite and .../PostgreSQL.
template <typename Info>
std::string StoreParamName(const Info& info) {
  return StoreKindName(info.param);
}
// "sqlite" or "pg" (command-line flags): the kind, false for anything else.
bool ParseStoreKind(const std::string& word, StoreKind* kind);

class TestDatabase {
 public:
  // SQLite: `<tmp>/syncsched-test-XXXXXX/state.db`; PostgreSQL: a new database on `server`
  // (SharedPgServer() when null). Aborts the process when neither can be made (no server).
  explicit TestDatabase(StoreKind kind, PgServer* server = nullptr);
  ~TestDatabase();
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;

  StoreKind kind() const { return kind_; }
  bool postgres() const { return kind_ == StoreKind::kPostgres; }
  // What Options::database_path (or the daemon's `database`) takes: a file path or a URI.
  const std::string& path() const { return path_; }
  // A directory of the test's own (both kinds), removed with the object.
  const std::string& dir() const { return dir_; }
  // Empties the database, as if new (no engine may have it open): SQLite removes the file and its
  // companions; PostgreSQL drops the schema `syncsched` (cheaper than a new database).
  Status Reset();

 private:
  StoreKind kind_;
  PgServer* server_ = nullptr;
  std::string dir_, path_, db_;
};

}  // namespace syncsched::testing
