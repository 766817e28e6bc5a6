// Scaffolding shared by the engine cluster tests (engine_cluster_test.cc) and the three-process
// soak (cluster_soak.cc): the database read directly, the callbacks' records and the checks on
// them (no slot called twice, the history consistent), and a child process running
// syncsched_cluster_engine with its stdout read line by line (and, optionally, its stdin a command
// channel).
#pragma once

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

extern char** environ;

namespace syncsched::cluster_testing {

using Clock = std::chrono::steady_clock;

inline std::int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

inline bool WaitFor(const std::function<bool()>& ready, Clock::duration timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (ready()) return true;
    if (Clock::now() >= deadline) return false;
    // Polling the database or the logs: no event to wait on.
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

// ---- Database ----

class Db {
 public:
  explicit Db(const std::string& uri) : uri_(uri), conn_(PQconnectdb(uri.c_str())) {}
  ~Db() { PQfinish(conn_); }
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  // The rows of `sql`; a failed query is a test failure unless `quiet` (then: no rows, ok()
  // false). A lost connection is re-established for the next query.
  std::vector<std::vector<std::string>> Rows(const std::string& sql, bool quiet = false) {
    std::vector<std::vector<std::string>> out;
    if (PQstatus(conn_) != CONNECTION_OK) PQreset(conn_);
    PGresult* r = PQexec(conn_, sql.c_str());
    ok_ = PQresultStatus(r) == PGRES_TUPLES_OK;
    if (ok_) {
      for (int i = 0; i < PQntuples(r); ++i) {
        out.emplace_back();
        for (int j = 0; j < PQnfields(r); ++j) out.back().emplace_back(PQgetvalue(r, i, j));
      }
    } else if (!quiet) {
      ADD_FAILURE() << sql << ": " << PQresultErrorMessage(r);
    }
    PQclear(r);
    return out;
  }
  bool ok() const { return ok_; }
  // partition -> owner node id (0: free).
  std::map<int, std::int64_t> Owners() {
    std::map<int, std::int64_t> out;
    for (const auto& r :
         Rows("SELECT partition, coalesce(owner, 0) FROM syncsched_cluster.partitions")) {
      out[std::stoi(r[0])] = std::stoll(r[1]);
    }
    return out;
  }
  std::int64_t NodeId(const std::string& name) {
    auto rows = Rows("SELECT id FROM syncsched_cluster.nodes WHERE name = '" + name + "'");
    return rows.empty() ? 0 : std::stoll(rows[0][0]);
  }

 private:
  std::string uri_;
  PGconn* conn_;
  bool ok_ = false;
};

// ---- What the callbacks saw ----

struct Call {
  std::string node;
  std::string run_id;
  std::string connection;  // in-process calls and the soak's records
  std::int64_t slot = 0;
  Clock::time_point at{};    // in-process calls only
  std::int64_t wall_ms = 0;  // in-process calls and the soak's records
};

class CallLog {
 public:
  void Add(Call c) {
    std::lock_guard lock(mu_);
    calls_.push_back(std::move(c));
  }
  std::vector<Call> All() {
    std::lock_guard lock(mu_);
    return calls_;
  }

 private:
  std::mutex mu_;
  std::vector<Call> calls_;
};

// The uid part of a run id ("<uid>-<slot>" or "<uid>-<slot>-<n>").
inline std::string UidOf(const std::string& run_id) { return run_id.substr(0, run_id.find('-')); }
// A grid slot's run id ("<uid>-<slot>"); off-grid runs (an immediate run, a trigger) add "-<n>".
inline bool IsGridRunId(const std::string& run_id) {
  auto first = run_id.find('-');
  return first != std::string::npos && run_id.find('-', first + 1) == std::string::npos;
}

// No run id called twice, and no (schedule, slot) called twice: of every run, or with
// `grid_slots_only` of grid slots only (an off-grid run, a trigger, may fall on the same
// millisecond as a grid slot of its schedule; it is keyed by its run id).
inline void ExpectEachSlotCalledOnce(const std::vector<Call>& calls, bool grid_slots_only = false) {
  std::map<std::string, std::string> ids;                             // run id -> node
  std::map<std::pair<std::string, std::int64_t>, std::string> slots;  // (uid, slot) -> node
  std::size_t failures = 0;
  for (const Call& c : calls) {
    auto [it, fresh] = ids.emplace(c.run_id, c.node);
    if (!fresh && ++failures <= 20) {
      ADD_FAILURE() << "run " << c.run_id << " called on " << it->second << " and " << c.node;
    }
    if (grid_slots_only && !IsGridRunId(c.run_id)) continue;
    auto [st, fresh_slot] = slots.emplace(std::pair{UidOf(c.run_id), c.slot}, c.node);
    if (!fresh_slot && ++failures <= 20) {
      ADD_FAILURE() << "schedule " << UidOf(c.run_id) << " slot " << c.slot << " called on "
                    << st->second << " and " << c.node;
    }
  }
  EXPECT_EQ(failures, 0u) << "runs or slots called twice";
}

// The history in the database: no (schedule, slot) recorded twice (of grid slots only with
// `grid_slots_only`), no run id twice, and every run a callback saw is recorded (as run, or as
// interrupted when its engine lost it in flight).
inline void ExpectHistoryConsistent(Db& db, const std::vector<Call>& calls,
                                    bool grid_slots_only = false) {
  const std::string grid =
      grid_slots_only ? " AND convert_from(run_id, 'UTF8') ~ '^[0-9]+-[0-9]+$'" : "";
  auto dups =
      db.Rows("SELECT schedule_uid, slot_ms, count(*) FROM syncsched.history WHERE place >= 0" +
              grid + " GROUP BY 1, 2 HAVING count(*) > 1");
  EXPECT_TRUE(dups.empty()) << dups.size() << " slots recorded twice, e.g. schedule "
                            << (dups.empty() ? "" : dups[0][0] + " slot " + dups[0][1]);
  auto id_dups = db.Rows(
      "SELECT convert_from(run_id, 'UTF8'), count(*) FROM syncsched.history WHERE place >= 0 "
      "GROUP BY 1 HAVING count(*) > 1");
  EXPECT_TRUE(id_dups.empty()) << "run " << (id_dups.empty() ? "" : id_dups[0][0])
                               << " recorded twice";
  std::set<std::string> recorded;
  for (const auto& r :
       db.Rows("SELECT convert_from(run_id, 'UTF8') FROM syncsched.history WHERE place >= 0")) {
    recorded.insert(r[0]);
  }
  std::size_t missing = 0;
  std::string example;
  for (const Call& c : calls) {
    if (recorded.count(c.run_id) == 0) {
      ++missing;
      example = c.run_id + " (" + c.node + ")";
    }
  }
  EXPECT_EQ(missing, 0u) << "runs called but not in the history, e.g. " << example;
}

// ---- A child process running syncsched_cluster_engine ----

// Its stdout is read continuously (a full pipe would block its callbacks): "run <node> <run id>
// <slot>" lines go to `log` (when given), answers to commands ("ack <id> ..." and the "st <id>
// ..." lines before it) are kept by command id, every other line in a set. With
// `commands`, its stdin is a pipe for Send.
class Child {
 public:
  Child(const std::string& bin, const std::vector<std::string>& args, CallLog* log,
        bool commands = false)
      : log_(log) {
    int out[2];
    int in[2] = {-1, -1};
    if (::pipe(out) != 0) return;
    if (commands && ::pipe(in) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    posix_spawn_file_actions_addclose(&actions, out[1]);
    if (commands) {
      posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
      posix_spawn_file_actions_addclose(&actions, in[0]);
      posix_spawn_file_actions_addclose(&actions, in[1]);
    }
    std::string path = bin;
    std::vector<std::string> copy = args;
    std::vector<char*> argv{path.data()};
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, path.c_str(), &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    if (commands) {
      ::close(in[0]);
      in_ = in[1];
    }
    reader_ = std::thread([this, fd = out[0]] { Read(fd); });
  }
  ~Child() {
    Signal(SIGKILL);
    Wait();
    if (in_ >= 0) ::close(in_);
    if (reader_.joinable()) reader_.join();
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  bool WaitForLine(const std::string& line, Clock::duration timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return lines_.count(line) != 0 || eof_; }) &&
           lines_.count(line) != 0;
  }
  // The first line starting with `prefix`, once there is one (nullopt after `timeout` or EOF).
  std::optional<std::string> WaitForPrefix(const std::string& prefix, Clock::duration timeout) {
    std::unique_lock lock(mu_);
    std::optional<std::string> found;
    cv_.wait_for(lock, timeout, [&] {
      auto it = lines_.lower_bound(prefix);
      if (it != lines_.end() && it->rfind(prefix, 0) == 0) found = *it;
      return found.has_value() || eof_;
    });
    return found;
  }
  std::size_t runs() {
    std::lock_guard lock(mu_);
    return runs_;
  }
  // Writes a command line to the child's stdin; false if it cannot (no channel, child gone).
  bool Send(const std::string& line) {
    if (in_ < 0) return false;
    std::string l = line + "\n";
    return ::write(in_, l.data(), l.size()) == static_cast<ssize_t>(l.size());
  }
  // The answer to command `id`: the lines "<tag> <id> ..." it printed, the last one "ack <id>
  // ...". nullopt when none came within `timeout`, or the child's output ended before it.
  std::optional<std::vector<std::string>> Answer(std::uint64_t id, Clock::duration timeout) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return acked_.count(id) != 0 || eof_; });
    if (acked_.count(id) == 0) return std::nullopt;
    std::vector<std::string> out = std::move(answers_[id]);
    answers_.erase(id);
    acked_.erase(id);
    return out;
  }
  bool ended() {
    std::lock_guard lock(mu_);
    return eof_;
  }
  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  // Waits for the process to exit: its exit status, or -1 (killed, or already waited for).
  int Wait() {
    if (pid_ <= 0) return -1;
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  pid_t pid() const { return pid_; }

 private:
  void Read(int fd) {
    std::string buffer;
    char buf[8192];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) break;
      buffer.append(buf, static_cast<std::size_t>(n));
      std::size_t start = 0;
      for (auto nl = buffer.find('\n', start); nl != std::string::npos;
           nl = buffer.find('\n', start)) {
        Line(buffer.substr(start, nl - start));
        start = nl + 1;
      }
      buffer.erase(0, start);
    }
    ::close(fd);
    std::lock_guard lock(mu_);
    eof_ = true;
    cv_.notify_all();
  }
  void Line(const std::string& line) {
    if (line.rfind("run ", 0) == 0) {
      std::istringstream in(line.substr(4));
      Call c;
      in >> c.node >> c.run_id >> c.slot;
      if (log_ != nullptr) log_->Add(c);
      std::lock_guard lock(mu_);
      ++runs_;
      return;
    }
    // "ack <id> ..." or "st <id> ...": an answer (or part of one) to a command.
    std::istringstream in(line);
    std::string tag;
    std::uint64_t id = 0;
    std::lock_guard lock(mu_);
    if (in >> tag >> id && (tag == "ack" || tag == "st")) {
      answers_[id].push_back(line);
      if (tag == "ack") acked_.insert(id);
    } else {
      lines_.insert(line);
    }
    cv_.notify_all();
  }

  CallLog* log_;
  pid_t pid_ = -1;
  int in_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> lines_;
  std::map<std::uint64_t, std::vector<std::string>> answers_;
  std::set<std::uint64_t> acked_;
  std::size_t runs_ = 0;
  bool eof_ = false;
};

}  // namespace syncsched::cluster_testing
