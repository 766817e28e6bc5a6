// A thin RAII layer over the SQLite C API, for the SQLite store only: a connection (Db) and a
// prepared statement (Stmt) that finalize themselves, binding by index without copies, and a
// scope guard that resets a statement after use so that it can be reused at once.
//
// Nothing here allocates per row: text is bound with SQLITE_STATIC, so the caller keeps it alive
// until the statement is stepped and reset (the Batch being committed does).
//
// Thread safety: as the underlying sqlite3 handle opened with SQLITE_OPEN_NOMUTEX: one thread at a
// time per Db and its statements.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace syncsched::store::sqlite {

// A prepared statement. Move-only; finalized on destruction.
class Stmt {
 public:
  Stmt() = default;
  explicit Stmt(sqlite3_stmt* stmt) : stmt_(stmt) {}
  Stmt(Stmt&& other) noexcept : stmt_(std::exchange(other.stmt_, nullptr)) {}
  Stmt& operator=(Stmt&& other) noexcept {
    if (this != &other) {
      sqlite3_finalize(stmt_);
      stmt_ = std::exchange(other.stmt_, nullptr);
    }
    return *this;
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  ~Stmt() { sqlite3_finalize(stmt_); }

  sqlite3_stmt* get() const { return stmt_; }

  // Binders return the SQLite result code; callers OR them together and test once per row.
  int Bind(int index, std::int64_t value) { return sqlite3_bind_int64(stmt_, index, value); }
  int BindU64(int index, std::uint64_t value) {
    // Unsigned values are stored bit-cast into SQLite's signed 64-bit integers.
    return sqlite3_bind_int64(stmt_, index, static_cast<std::int64_t>(value));
  }
  int BindText(int index, std::string_view value) {
    return sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_STATIC,
                               SQLITE_UTF8);
  }

  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(stmt_); }
  void Reset() { sqlite3_reset(stmt_); }

  std::int64_t Int(int column) const { return sqlite3_column_int64(stmt_, column); }
  std::uint64_t U64(int column) const { return static_cast<std::uint64_t>(Int(column)); }
  std::string Text(int column) const {
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
    if (text == nullptr) return {};
    return std::string(text, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, column)));
  }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

// Resets a statement (and so releases its read or write cursor and the text bound with
// SQLITE_STATIC) when the scope ends, whatever the path out.
class ResetGuard {
 public:
  explicit ResetGuard(Stmt& stmt) : stmt_(stmt) {}
  ResetGuard(const ResetGuard&) = delete;
  ResetGuard& operator=(const ResetGuard&) = delete;
  ~ResetGuard() { stmt_.Reset(); }

 private:
  Stmt& stmt_;
};

// A database connection. Move-only; closed on destruction (sqlite3_close_v2, so statements not
// yet finalized keep it alive until they are).
class Db {
 public:
  Db() = default;
  Db(Db&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}
  Db& operator=(Db&& other) noexcept {
    if (this != &other) {
      Close();
      db_ = std::exchange(other.db_, nullptr);
    }
    return *this;
  }
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  ~Db() { Close(); }

  // Opens `path` with `flags` (SQLITE_OPEN_*). On failure the handle is closed and the result
  // code returned; `error` receives SQLite's message.
  int Open(const std::string& path, int flags, std::string* error) {
    Close();
    int rc = sqlite3_open_v2(path.c_str(), &db_, flags, nullptr);
    if (rc != SQLITE_OK) {
      *error = db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
      Close();
    }
    return rc;
  }

  void Close() {
    if (db_ != nullptr) sqlite3_close_v2(db_);
    db_ = nullptr;
  }

  sqlite3* get() const { return db_; }
  std::string ErrorMessage() const { return db_ != nullptr ? sqlite3_errmsg(db_) : "no database"; }

  // Runs one or more statements that return no rows of interest.
  int Exec(const char* sql) { return sqlite3_exec(db_, sql, nullptr, nullptr, nullptr); }

  int Prepare(std::string_view sql, Stmt* out) {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                                SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
    *out = Stmt(stmt);
    return rc;
  }

 private:
  sqlite3* db_ = nullptr;
};

}  // namespace syncsched::store::sqlite
