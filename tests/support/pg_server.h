// A throwaway PostgreSQL 15 server for tests: `initdb` into a fresh temporary directory (as the
// `postgres` user when the tests run as root, since PostgreSQL refuses to run as root), started
// with `pg_ctl` on a unix socket inside that directory (no TCP port: nothing to collide with), with
// fsync off (the tests crash processes, never the machine). No mock: the store under test talks to
// a real server.
//
// One server is shared by every test of a process (SharedPgServer), each test in a database of its
// own (CreateDatabase). Under ctest, the fixture `pg_server` starts one server for the whole run
// (tests/CMakeLists.txt) and names the file holding its directory in
// SYNCSCHED_TEST_PG_DIRFILE; tests then only create
// databases on it. Tests that stop or restart the server start a private one.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "syncsched/status.h"

namespace syncsched::testing {

class PgServer {
 public:
  // Creates the cluster and starts the server. UNAVAILABLE naming the step and its log on failure.
  // `for_tests`: fsync and full-page writes off (fast; the tests crash processes, not machines).
  // false, for benchmarks: PostgreSQL 15's durable defaults (fsync, synchronous_commit and
  // full_page_writes on), with shared_buffers=256MB and max_wal_size=4GB.
  static Result<std::unique_ptr<PgServer>> Start(bool for_tests = true);
  // Attaches to a server started by another process in `dir` (not stopped by this object).
  static std::unique_ptr<PgServer> Attach(const std::string& dir);
  // Stops the server (immediate mode) and removes its directory, unless attached.
  ~PgServer();
  PgServer(const PgServer&) = delete;
  PgServer& operator=(const PgServer&) = delete;

  // This object no longer stops the server when destroyed (it outlives the process).
  void Detach() { owned_ = false; }
  // This object stops the server and removes its directory when destroyed.
  void Adopt() { owned_ = true; }

  // pg_ctl stop (fast mode: sessions are terminated, as in a server restart) and start again.
  Status Stop();
  Status StartAgain();

  const std::string& dir() const { return dir_; }
  // A libpq URI for `database` over the server's unix socket, as the user postgres.
  std::string Uri(const std::string& database) const;
  // Creates a fresh, uniquely named database and returns its URI (`*name`: its name).
  Result<std::string> CreateDatabase(std::string* name = nullptr);
  Status DropDatabase(const std::string& name);

 private:
  explicit PgServer(std::string dir, bool owned) : dir_(std::move(dir)), owned_(owned) {}
  std::string settings_;
  Status Run(const std::vector<std::string>& argv, const std::string& what) const;
  Status PgCtlStart() const;

  std::string dir_;
  bool owned_ = true;
  bool running_ = false;
};

// Runs `sql` on `uri`: OK or INTERNAL with the server's message.
Status PgExec(const std::string& uri, const std::string& sql);
// The first column of the first row of `sql` on `uri` as text ("<none>" without a row, "<null>"
// for NULL).
Result<std::string> PgQuery(const std::string& uri, const std::string& sql);

// The server of this process's tests: the ctest fixture's (SYNCSCHED_TEST_PG_DIRFILE) or one
// started at the first call and stopped at exit. Aborts the test binary if no server can be
// started.
PgServer& SharedPgServer();

}  // namespace syncsched::testing
