// A thin RAII layer over the SQLite C API, for the SQLite store only: a connection (Db) and a
// prepared statement (Stmt) that finalize themselves, binding by index without copies, and a
// scope guard that resets a statement after use so that it can be reused at once.
//
// Nothing here allocates per row: text and blobs are bound with SQLITE_STATIC, so the caller keeps
// them alive until the statement is stepped and reset (the Batch being committed does).
//
// Return codes: every sqlite3_* call that can fail reports its code to the caller, except the
// three whose codes carry nothing new, which are ignored on purpose: sqlite3_reset() and
// sqlite3_finalize() return the error of the statement's last step (already seen by whoever
// stepped it), and sqlite3_close_v2() always succeeds on a valid handle (statements not yet
// finalized keep the connection alive as a zombie until they are).
//
// Thread safety: as the underlying sqlite3 handle opened with SQLITE_OPEN_NOMUTEX: one thread at a
// time per Db and its statements.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace syncsched::store::sqlite {

// A prepared statement. Move-only; finalized on destruction.
class Stmt {
 public:
  // A bind that failed: its SQLite result code and parameter index (code SQLITE_OK: none).
  struct BindFailure {
    int code = SQLITE_OK;
    int index = 0;
  };

  Stmt() = default;
  explicit Stmt(sqlite3_stmt* stmt) : stmt_(stmt) {}
  Stmt(Stmt&& other) noexcept
      : stmt_(std::exchange(other.stmt_, nullptr)),
        names_(std::exchange(other.names_, {})),
        bind_failure_(std::exchange(other.bind_failure_, {})),
        column_failed_(std::exchange(other.column_failed_, false)) {}
  Stmt& operator=(Stmt&& other) noexcept {
    if (this != &other) {
      sqlite3_finalize(stmt_);  // its code is the last step's, already seen (see the top)
      stmt_ = std::exchange(other.stmt_, nullptr);
      names_ = std::exchange(other.names_, {});
      bind_failure_ = std::exchange(other.bind_failure_, {});
      column_failed_ = std::exchange(other.column_failed_, false);
    }
    return *this;
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  ~Stmt() { sqlite3_finalize(stmt_); }

  sqlite3_stmt* get() const { return stmt_; }

  // Names of the parameters, for error messages: names[i - 1] names parameter ?i. The array must
  // outlive the statement (a static table).
  void SetParameterNames(std::span<const char* const> names) { names_ = names; }
  // The name of parameter ?`index` from SetParameterNames, else "?<index>".
  std::string ParameterName(int index) const {
    if (index >= 1 && static_cast<std::size_t>(index) <= names_.size() &&
        names_[static_cast<std::size_t>(index - 1)] != nullptr) {
      return names_[static_cast<std::size_t>(index - 1)];
    }
    return "?" + std::to_string(index);
  }

  // Binders check each bind's result code and remember the first that failed (its code and
  // parameter) until TakeBindFailure(), so that a row's binds read as one sequence and the row is
  // refused, naming the parameter, before it is stepped. (The connection's error message is no
  // help here: a later successful bind resets it.)
  void Bind(int index, std::int64_t value) {
    Check(sqlite3_bind_int64(stmt_, index, value), index);
  }
  void BindU64(int index, std::uint64_t value) {
    // Unsigned values are stored bit-cast into SQLite's signed 64-bit integers.
    Check(sqlite3_bind_int64(stmt_, index, static_cast<std::int64_t>(value)), index);
  }
  void BindText(int index, std::string_view value) {
    Check(sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_STATIC, SQLITE_UTF8),
          index);
  }
  // `value` must not be empty (SQLite binds a blob without data as NULL).
  void BindBlob(int index, std::string_view value) {
    Check(sqlite3_bind_blob64(stmt_, index, value.data(), value.size(), SQLITE_STATIC), index);
  }
  void BindNull(int index) { Check(sqlite3_bind_null(stmt_, index), index); }
  // The first bind that failed since the last call (code SQLITE_OK: none), and forgets it.
  BindFailure TakeBindFailure() { return std::exchange(bind_failure_, {}); }

  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(stmt_); }
  // Its code is the last step's, already seen by the caller (see the top).
  void Reset() { sqlite3_reset(stmt_); }

  int Type(int column) const { return sqlite3_column_type(stmt_, column); }
  std::int64_t Int(int column) const { return sqlite3_column_int64(stmt_, column); }
  std::uint64_t U64(int column) const { return static_cast<std::uint64_t>(Int(column)); }
  // Text() and Blob() read a NULL value as empty. When SQLite runs out of memory converting a
  // value, they read it as empty too but set ColumnFailed(), which a reader tests per row.
  std::string Text(int column) {
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
    if (text == nullptr) {
      NoteMissing();
      return {};
    }
    return std::string(text, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, column)));
  }
  // Valid until the statement is stepped, reset or finalized.
  std::string_view Blob(int column) {
    const void* data = sqlite3_column_blob(stmt_, column);
    if (data == nullptr) {
      NoteMissing();
      return {};
    }
    return {static_cast<const char*>(data),
            static_cast<std::size_t>(sqlite3_column_bytes(stmt_, column))};
  }
  bool ColumnFailed() const { return column_failed_; }

 private:
  void Check(int rc, int index) {
    if (rc != SQLITE_OK && bind_failure_.code == SQLITE_OK) bind_failure_ = {rc, index};
  }
  // A NULL pointer is a NULL value, an empty blob, or a conversion that ran out of memory; SQLite
  // tells the last apart only by the connection's error code, read before any other call.
  void NoteMissing() {
    if (sqlite3_errcode(sqlite3_db_handle(stmt_)) == SQLITE_NOMEM) column_failed_ = true;
  }

  sqlite3_stmt* stmt_ = nullptr;
  std::span<const char* const> names_;
  BindFailure bind_failure_;
  bool column_failed_ = false;
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

  // Takes over `handle` (from sqlite3_open_v2, which returns one even when it fails, for its
  // error message and code).
  void Adopt(sqlite3* handle) {
    Close();
    db_ = handle;
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
