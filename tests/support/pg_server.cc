// See pg_server.h.
#include "support/pg_server.h"

#include <fcntl.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern char** environ;

namespace syncsched::testing {
namespace {

constexpr const char* kBinDir = "/usr/lib/postgresql/15/bin/";

std::string ReadTail(const std::string& path, std::size_t bytes = 2000) {
  std::ifstream in(path, std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), {});
  return all.size() > bytes ? all.substr(all.size() - bytes) : all;
}

}  // namespace

Status PgServer::Run(const std::vector<std::string>& command, const std::string& what) const {
  std::vector<std::string> argv;
  // PostgreSQL refuses to run as root: run its tools as the postgres user then.
  if (::geteuid() == 0) argv = {"/usr/sbin/runuser", "-u", "postgres", "--"};
  argv.insert(argv.end(), command.begin(), command.end());
  std::vector<char*> args;
  for (std::string& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  std::string log = dir_ + "/tool.log";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return Status::Unavailable(what + ": cannot run " + argv[0] + ": " + std::strerror(rc));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Status::Unavailable(what + " failed (status " + std::to_string(status) + "): " +
                               ReadTail(log) + "\nserver log: " + ReadTail(dir_ + "/server.log"));
  }
  return Status::Ok();
}

Status PgServer::PgCtlStart() const {
  std::string options = "-c listen_addresses='' -c unix_socket_directories='" + dir_ +
                        "' -c port=5432 -c max_connections=200 " + settings_;
  return Run({std::string(kBinDir) + "pg_ctl", "-D", dir_ + "/data", "-l", dir_ + "/server.log",
              "-w", "-t", "120", "-o", options, "start"},
             "pg_ctl start in " + dir_);
}

Result<std::unique_ptr<PgServer>> PgServer::Start(bool for_tests) {
  std::string pattern = (std::filesystem::temp_directory_path() / "syncsched-pg-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    return Status::Unavailable("cannot create a directory for a test server: " +
                               std::string(std::strerror(errno)));
  }
  std::unique_ptr<PgServer> server(new PgServer(pattern, true));
  server->settings_ = for_tests ? "-c fsync=off -c full_page_writes=off -c shared_buffers=64MB"
                                : "-c shared_buffers=256MB -c max_wal_size=4GB";
  if (::geteuid() == 0) {
    struct passwd* pw = ::getpwnam("postgres");
    if (pw == nullptr) return Status::Unavailable("no user 'postgres' to run the test server as");
    if (::chown(pattern.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      return Status::Unavailable("cannot give " + pattern + " to postgres");
    }
  }
  ::chmod(pattern.c_str(), 0755);
  Status s = server->Run({std::string(kBinDir) + "initdb", "-D", pattern + "/data", "-U",
                          "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--locale=C"},
                         "initdb in " + pattern);
  if (!s.ok()) return s;
  s = server->PgCtlStart();
  if (!s.ok()) return s;
  server->running_ = true;
  return server;
}

std::unique_ptr<PgServer> PgServer::Attach(const std::string& dir) {
  std::unique_ptr<PgServer> server(new PgServer(dir, false));
  server->running_ = true;
  return server;
}

PgServer::~PgServer() {
  if (!owned_) return;
  if (running_) {
    (void)Run(
        {std::string(kBinDir) + "pg_ctl", "-D", dir_ + "/data", "-m", "immediate", "-w", "stop"},
        "pg_ctl stop");
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

Status PgServer::Stop() {
  Status s =
      Run({std::string(kBinDir) + "pg_ctl", "-D", dir_ + "/data", "-m", "fast", "-w", "stop"},
          "pg_ctl stop in " + dir_);
  if (s.ok()) running_ = false;
  return s;
}

Status PgServer::StartAgain() {
  Status s = PgCtlStart();
  if (s.ok()) running_ = true;
  return s;
}

std::string PgServer::Uri(const std::string& database) const {
  return "postgresql://postgres@/" + database + "?host=" + dir_ + "&port=5432";
}

Result<std::string> PgServer::CreateDatabase(std::string* name) {
  static std::atomic<int> counter{0};
  std::random_device rd;
  std::string db = "t_" + std::to_string(::getpid()) + "_" + std::to_string(++counter) + "_" +
                   std::to_string(rd() % 100000);
  // template0: nobody connects to it, so concurrent test processes never block each other's copy.
  Status s = PgExec(Uri("postgres"), "CREATE DATABASE " + db + " TEMPLATE template0");
  if (!s.ok()) return s;
  if (name != nullptr) *name = db;
  return Uri(db);
}

Status PgServer::DropDatabase(const std::string& name) {
  return PgExec(Uri("postgres"), "DROP DATABASE IF EXISTS " + name + " WITH (FORCE)");
}

Status PgExec(const std::string& uri, const std::string& sql) {
  PGconn* conn = PQconnectdb(uri.c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string why = PQerrorMessage(conn);
    PQfinish(conn);
    return Status::Unavailable("cannot connect to " + uri + ": " + why);
  }
  PQsetNoticeProcessor(
      conn, [](void*, const char*) {}, nullptr);
  PGresult* res = PQexec(conn, sql.c_str());
  ExecStatusType st = PQresultStatus(res);
  Status s;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    s = Status::Internal(sql + ": " + PQresultErrorMessage(res));
  }
  PQclear(res);
  PQfinish(conn);
  return s;
}

Result<std::string> PgQuery(const std::string& uri, const std::string& sql) {
  PGconn* conn = PQconnectdb(uri.c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string why = PQerrorMessage(conn);
    PQfinish(conn);
    return Status::Unavailable("cannot connect to " + uri + ": " + why);
  }
  PGresult* res = PQexec(conn, sql.c_str());
  Result<std::string> out = std::string("<none>");
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    out = Status::Internal(sql + ": " + PQresultErrorMessage(res));
  } else if (PQntuples(res) > 0) {
    out = PQgetisnull(res, 0, 0) ? std::string("<null>") : std::string(PQgetvalue(res, 0, 0));
  }
  PQclear(res);
  PQfinish(conn);
  return out;
}

PgServer& SharedPgServer() {
  static std::unique_ptr<PgServer> server = [] {
    if (const char* file = std::getenv("SYNCSCHED_TEST_PG_DIRFILE"); file != nullptr) {
      std::string dir;
      std::ifstream(file) >> dir;
      if (!dir.empty()) return PgServer::Attach(dir);
    }
    auto started = PgServer::Start();
    if (!started.ok()) {
      std::fprintf(stderr, "cannot start a PostgreSQL test server: %s\n",
                   started.status().message().c_str());
      std::abort();
    }
    return std::move(started).value();
  }();
  return *server;
}

}  // namespace syncsched::testing
