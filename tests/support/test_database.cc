// See test_database.h.
#include "support/test_database.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <system_error>

namespace syncsched::testing {

bool ParseStoreKind(const std::string& word, StoreKind* kind) {
  if (word == "sqlite") {
    *kind = StoreKind::kSqlite;
  } else if (word == "pg" || word == "postgresql") {
    *kind = StoreKind::kPostgres;
  } else {
    return false;
  }
  return true;
}

TestDatabase::TestDatabase(StoreKind kind, PgServer* server) : kind_(kind) {
  std::string pattern = (std::filesystem::temp_directory_path() / "syncsched-test-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::fprintf(stderr, "TestDatabase: cannot create %s\n", pattern.c_str());
    std::abort();
  }
  dir_ = pattern;
  if (kind_ == StoreKind::kSqlite) {
    path_ = dir_ + "/state.db";
    return;
  }
  server_ = server != nullptr ? server : &SharedPgServer();
  auto uri = server_->CreateDatabase(&db_);
  if (!uri.ok()) {
    std::fprintf(stderr, "TestDatabase: %s\n", uri.status().ToString().c_str());
    std::abort();
  }
  path_ = *uri;
}

TestDatabase::~TestDatabase() {
  if (!db_.empty()) (void)server_->DropDatabase(db_);
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

Status TestDatabase::Reset() {
  if (kind_ == StoreKind::kPostgres) {
    return PgExec(path_, "DROP SCHEMA IF EXISTS syncsched CASCADE");
  }
  std::error_code ec;
  for (const char* suffix : {"", "-wal", "-shm", "-journal", ".lock"}) {
    std::filesystem::remove(path_ + suffix, ec);
  }
  return Status::Ok();
}

}  // namespace syncsched::testing
