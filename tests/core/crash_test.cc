// Crash safety (SPEC §6, issue 9): the engine runs in a child process on a SQLite file, or on a
// PostgreSQL database (issue 12: the test runs on both stores), and is
// killed with SIGKILL at well over a hundred points chosen by count, never by time, so every run of
// the test kills at the same points of the same sequence:
//  - after the k-th acknowledged command of a life, either between two commands (the child waits
//    for the parent's go-ahead after each acknowledgement) or as the next command starts (the
//    go-ahead given, then the kill at once); every tenth life right after recovery instead;
//  - once the script is done, after the r-th run callback of a life started (a run in flight) or
//    returned (its outcome being recorded), while `deals` fire every second.
// Each life carries on from the first command it was not told had succeeded, which it repeats.
//
// Every child reopens the file and, before it changes anything, reports the status of every
// schedule; the parent checks it against what the earlier lives acknowledged (the command a killed
// child may have been running counts either way):
//  - every acknowledged connection exists, with its three schedules, and no other does;
//  - each connection's first run (of `contacts`, which nothing pauses) was run (its callback was
//    called: its run id is in the log) or is recorded (runs >= 1, a run in flight, waiting for
//    the cap, or due at once);
//  - each acknowledged trigger of `tickets` (never started, so a trigger is its only run) was run
//    or is recorded, and the schedule is still paused;
//  - `deals` is paused or started as the last acknowledged pause or start left it;
//  - no schedule's count of finished runs went backwards.
// A last, clean life runs every owed run to the end and checks the same, with nothing left in
// flight, waiting or due, and that each acknowledged full resync of `contacts` was run (a
// full_resync callback) or recorded (the schedule finished every run it had when triggered, the
// one then in flight, and one more). Over all lives, no run id was executed twice.
//
// The integration has a cap of 2 runs at once, so that runs wait for it when a child dies; each
// callback takes about a millisecond. Public API only.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/test_database.h"
#include "syncsched/syncsched.h"

namespace syncsched {
namespace {

using testing::StoreKind;
using testing::TestDatabase;

using namespace std::chrono_literals;

constexpr int kConnections = 300;
constexpr std::size_t kCap = 2;  // crm's max_concurrency
constexpr const char* kIntegration = "crm";
constexpr const char* kSyncs[] = {"contacts", "deals", "tickets"};

// ---- The script: the same list in parent and children ----

enum class Op { kAdd, kPause, kStart, kTrigger };

struct Command {
  Op op;
  int conn;
  std::string sync;  // empty for kAdd
  RunMode mode = RunMode::kIncremental;
};

std::string ConnId(int i) { return "c" + std::to_string(i); }

std::vector<Command> Script() {
  std::vector<Command> s;
  for (int i = 0; i < kConnections; ++i) {
    s.push_back({Op::kAdd, i, "", RunMode::kIncremental});
    // A full resync of the new connection's contacts: its immediate run is often still in
    // flight (pre-empted) or waiting for the cap (upgraded).
    if (i % 5 == 2) s.push_back({Op::kTrigger, i, "contacts", RunMode::kFullResync});
    if (i % 3 == 0) {
      s.push_back(
          {Op::kTrigger, i, "tickets", i % 2 ? RunMode::kFullResync : RunMode::kIncremental});
    }
    if (i % 4 == 1) s.push_back({Op::kPause, i - 1, "deals", RunMode::kIncremental});
    // c0, c8, c16, ... are paused and later started again; c4, c12, ... stay paused.
    if (i % 8 == 1 && i >= 9) s.push_back({Op::kStart, i - 9, "deals", RunMode::kIncremental});
  }
  return s;
}

// ---- The child ----

void WriteLine(int fd, const std::string& line) {
  std::string l = line + "\n";  // one write(2) of less than PIPE_BUF: never interleaved
  if (write(fd, l.data(), l.size()) != static_cast<ssize_t>(l.size())) _exit(7);
}

[[noreturn]] void Die(int fd, const std::string& what) {
  WriteLine(fd, "E " + what);
  _exit(9);
}

std::string Word(Outcome o) { return std::string(ToString(o)); }

// Reports every schedule's status ("S conn sync state running runs waiting due"), then `end`.
void Dump(Engine& engine, int fd, const char* tag, const char* end) {
  auto st = engine.GetStatus(Target{kIntegration, std::nullopt, {}, true});
  if (!st.ok() && !st.status().IsNotFound()) Die(fd, "status: " + st.status().ToString());
  if (st.ok()) {
    TimePoint now = engine.clock().Now();
    for (const ScheduleStatus& s : *st) {
      std::ostringstream l;
      l << tag << ' ' << s.key.connection << ' ' << s.key.sync << ' ' << ToString(s.state) << ' '
        << (s.status == RunStatus::kRunning) << ' ' << s.runs << ' ' << s.waiting_since.has_value()
        << ' ' << (s.next_run && *s.next_run <= now);
      WriteLine(fd, l.str());
    }
  }
  WriteLine(fd, end);
}

// One life: opens the file, reports the status, defines the catalog, runs the script from
// `first` (acknowledging each command), then lets runs fire until killed. The last life
// (`final_life`) instead pauses `deals`, waits until nothing is in flight or waiting, reports the
// status again and closes the engine cleanly.
[[noreturn]] void ChildMain(const std::string& db, int fd, int go_fd, std::size_t first,
                            bool final_life) {
  signal(SIGPIPE, SIG_DFL);
  // What the callbacks touch, declared before the engine (which is destroyed, in the last life,
  // before them).
  std::mutex mu;
  std::condition_variable ended_cv;
  Options o;
  o.database_path = db;
  o.hold_timers = true;
  o.worker_threads = 2;
  o.frequency_bounds.min = 1ms;
  auto opened = Engine::Open(o);
  if (!opened.ok()) Die(fd, "open: " + opened.status().ToString());
  std::unique_ptr<Engine> engine = std::move(opened).value();

  auto callback = [fd, &mu, &ended_cv](const RunContext& ctx) {
    WriteLine(fd, "X " + ctx.key.connection + " " + ctx.key.sync + " " + ctx.run_id + " " +
                      std::string(ToString(ctx.mode)));
    // The run's work (not a synchronisation): long enough that runs are in flight, and others
    // wait for the cap, when the process is killed.
    std::this_thread::sleep_for(1ms);
    WriteLine(fd, "Y " + ctx.run_id);
    {
      std::lock_guard lock(mu);
      ended_cv.notify_all();
    }
    return RunReport::Success();
  };
  for (const char* sync : kSyncs) {
    if (!engine->RegisterCallback(kIntegration, sync, callback).ok()) Die(fd, "register");
  }
  Dump(*engine, fd, "S", "R");

  for (const char* sync : kSyncs) {
    SyncDefinition def;
    def.name = sync;
    def.frequency = std::string(sync) == "deals" ? "1s" : "1h";
    def.auto_start = std::string(sync) != "tickets";
    if (Status s = engine->DefineSync(kIntegration, def); !s.ok()) Die(fd, s.ToString());
  }
  if (Status s = engine->SetIntegrationLimits(kIntegration, {kCap}); !s.ok()) Die(fd, s.ToString());
  engine->ReleaseTimers();

  const std::vector<Command> script = Script();
  for (std::size_t i = first; i < script.size(); ++i) {
    const Command& c = script[i];
    std::string conn = ConnId(c.conn);
    std::string ack = "A " + std::to_string(i) + " ";
    if (c.op == Op::kAdd) {
      Status s = engine->AddConnection(kIntegration, conn);
      if (!s.ok() && !s.IsAlreadyExists()) Die(fd, "add " + conn + ": " + s.ToString());
      ack += s.ok() ? "ok" : "exists";
    } else {
      Target t{kIntegration, conn, {{c.sync}}, true};
      // Before a trigger: the schedule's finished runs and whether a run is in flight, from which
      // the parent knows how many finished runs the schedule owes once the trigger's run is done.
      std::string before;
      if (c.op == Op::kTrigger) {
        auto st = engine->GetStatus(t);
        if (!st.ok() || st->size() != 1) Die(fd, "status before command " + std::to_string(i));
        before = " " + std::to_string(st->front().runs) + " " +
                 std::to_string(st->front().status == RunStatus::kRunning);
      }
      Result<CommandResult> r = c.op == Op::kPause   ? engine->Pause(t)
                                : c.op == Op::kStart ? engine->Start(t)
                                                     : engine->Trigger(t, c.mode);
      if (!r.ok()) Die(fd, "command " + std::to_string(i) + ": " + r.status().ToString());
      if (r->outcomes.size() != 1) Die(fd, "command " + std::to_string(i) + ": not one outcome");
      ack += Word(r->outcomes[0].outcome) + before;
    }
    WriteLine(fd, ack);
    // Waits for the parent's go-ahead, so that a kill "after the k-th acknowledgement" lands
    // either here, between two commands, or (go-ahead given, then the kill) inside the next one.
    char go;
    if (read(go_fd, &go, 1) != 1) _exit(8);
  }
  WriteLine(fd, "D");
  if (!final_life) {
    for (;;) pause();
  }

  // The last life: stop the grid runs, let every owed run finish, report, close cleanly.
  if (auto r = engine->Pause(Target{kIntegration, std::nullopt, {{"deals"}}, false}); !r.ok()) {
    Die(fd, "pause deals: " + r.status().ToString());
  }
  // Settled: nothing in flight or waiting, and no owed run due (not yet fired by the alarm).
  auto settled = [&] {
    EngineMetrics m = engine->GetMetrics();
    if (m.runs_in_flight != 0 || m.runs_waiting != 0) return false;
    auto st = engine->GetStatus(Target{kIntegration, std::nullopt, {}, true});
    if (!st.ok()) Die(fd, "status: " + st.status().ToString());
    TimePoint now = engine->clock().Now();
    for (const ScheduleStatus& s : *st) {
      if (s.status == RunStatus::kRunning || s.waiting_since) return false;
      if (s.state == ScheduleState::kStarted && s.next_run && *s.next_run <= now) return false;
    }
    return true;
  };
  auto deadline = std::chrono::steady_clock::now() + 30s;
  for (;;) {
    if (settled()) break;
    if (std::chrono::steady_clock::now() > deadline) Die(fd, "runs never settled");
    // Woken by each run's end; the engine records the end just after, hence the short re-check.
    std::unique_lock lock(mu);
    ended_cv.wait_for(lock, 5ms);
  }
  Dump(*engine, fd, "F", "Z");
  engine.reset();
  _exit(0);
}

// ---- The parent ----

struct ScheduleSeen {
  std::string state;
  bool running = false;
  std::uint64_t runs = 0;
  bool waiting = false;
  bool due = false;
};
using StatusMap = std::map<std::pair<std::string, std::string>, ScheduleSeen>;  // (conn, sync)

// When a life ends.
struct KillPoint {
  enum Kind {
    kBetweenCommands,  // after the count-th acknowledgement, before the next command starts
    kInNextCommand,    // after the count-th acknowledgement, as the next command starts
    kAfterRecovery,    // once the reopened file's status is reported
    kAfterRunStarts,   // once the count-th callback of the life started
    kAfterRunEnds,     // once the count-th callback of the life returned
    kNever,            // the last life
  } kind;
  std::size_t count = 0;
};

struct LifeLog {
  StatusMap opened;  // "S" lines: the status right after recovery
  StatusMap final;   // "F" lines (last life)
  bool recovered = false;
  bool script_done = false;
  bool killed = false;
  int exit_status = 0;
  std::map<std::pair<std::string, std::string>, std::set<std::string>> ran;  // -> modes run
  std::vector<std::string> errors;                                           // "E" lines
};

class CrashTest : public ::testing::TestWithParam<StoreKind> {
 protected:
  void SetUp() override {
    database_ = std::make_unique<TestDatabase>(GetParam());
    db_ = database_->path();
  }
  void TearDown() override { database_.reset(); }

  // Runs one life and returns what it reported; acknowledgements and runs go to the model.
  LifeLog Life(KillPoint kill, bool final_life) {
    LifeLog life;
    int fds[2], go[2];  // child -> parent: its reports; parent -> child: go-aheads
    if (pipe(fds) != 0 || pipe(go) != 0) {
      ADD_FAILURE() << "pipe";
      return life;
    }
    std::size_t first = acked_;
    bool first_may_be_committed = next_may_be_committed_;  // by the last life, killed in it
    pid_t pid = fork();
    if (pid == 0) {
      close(fds[0]);
      close(go[1]);
      ChildMain(db_, fds[1], go[0], first, final_life);
    }
    close(fds[1]);
    close(go[0]);
    std::size_t acks = 0, starts = 0, ends = 0;
    auto should_kill = [&] {
      switch (kill.kind) {
        case KillPoint::kBetweenCommands:  // or, if the script ends first, at its end
        case KillPoint::kInNextCommand:
          return acks >= kill.count || life.script_done;
        case KillPoint::kAfterRecovery:
          return life.recovered;
        case KillPoint::kAfterRunStarts:
          return starts >= kill.count;
        case KillPoint::kAfterRunEnds:
          return ends >= kill.count;
        case KillPoint::kNever:
          return false;
      }
      return false;
    };
    std::string buf;
    char chunk[1 << 16];
    bool eof = false;
    auto watchdog = std::chrono::steady_clock::now() + 60s;
    while (!eof) {
      pollfd p{fds[0], POLLIN, 0};
      int ready = poll(&p, 1, 1000);
      if (std::chrono::steady_clock::now() > watchdog && !life.killed) {
        ADD_FAILURE() << "life " << lives_ << ": the child never reached its kill point; killed";
        kill_child(pid, life);
      }
      if (ready <= 0) continue;
      ssize_t n = read(fds[0], chunk, sizeof chunk);
      if (n <= 0) {
        eof = true;
        break;
      }
      buf.append(chunk, static_cast<std::size_t>(n));
      std::size_t pos;
      while ((pos = buf.find('\n')) != std::string::npos) {
        std::string line = buf.substr(0, pos);
        buf.erase(0, pos + 1);
        std::size_t acks_before = acks;
        Handle(line, life, acks, starts, ends);
        if (life.killed) continue;
        bool kill_now = should_kill();
        if (acks > acks_before && (!kill_now || kill.kind == KillPoint::kInNextCommand)) {
          if (write(go[1], "g", 1) != 1) ADD_FAILURE() << "go-ahead";
        }
        if (kill_now) {
          kill_child(pid, life);
          // Only a kill between two commands knows the next one never started.
          next_may_be_committed_ = !(kill.kind == KillPoint::kBetweenCommands && !life.script_done);
        }
      }
    }
    close(fds[0]);
    close(go[1]);
    int status = 0;
    waitpid(pid, &status, 0);
    life.exit_status = status;
    if (life.killed) {
      EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
          << "life " << lives_ << ": the child ended before it was killed";
    } else {
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
          << "life " << lives_ << ": the last child failed";
    }
    for (const std::string& e : life.errors) ADD_FAILURE() << "life " << lives_ << ": " << e;
    // The file as the earlier lives left it (reported before this life changed anything), against
    // what they acknowledged and ran; then this life's runs join the log.
    if (life.recovered) {
      Check(life.opened, first, first_may_be_committed,
            "reopened by life " + std::to_string(lives_),
            /*settled=*/false);
    }
    for (auto& [key, modes] : life.ran) ran_[key].insert(modes.begin(), modes.end());
    ++lives_;
    return life;
  }

  static void kill_child(pid_t pid, LifeLog& life) {
    kill(pid, SIGKILL);
    life.killed = true;
  }

  void Handle(const std::string& line, LifeLog& life, std::size_t& acks, std::size_t& starts,
              std::size_t& ends) {
    std::istringstream in(line);
    std::string tag;
    in >> tag;
    if (tag == "S" || tag == "F") {
      std::string conn, sync;
      ScheduleSeen s;
      in >> conn >> sync >> s.state >> s.running >> s.runs >> s.waiting >> s.due;
      (tag == "S" ? life.opened : life.final)[{conn, sync}] = s;
    } else if (tag == "R") {
      life.recovered = true;
    } else if (tag == "A") {
      std::size_t index;
      std::string outcome;
      in >> index >> outcome;
      if (index != acked_) {
        life.errors.push_back("acknowledgement out of order: " + line);
        return;
      }
      outcomes_[index] = outcome;
      if (script_[index].op == Op::kTrigger) {
        std::uint64_t runs = 0;
        bool running = false;
        in >> runs >> running;
        // The trigger's run finishes (or is recorded) after the run in flight, if any.
        runs_owed_after_[index] = runs + (running ? 2 : 1);
      }
      ack_life_[index] = lives_;
      ++acked_;
      ++acks;
    } else if (tag == "D") {
      life.script_done = true;
    } else if (tag == "X") {
      std::string conn, sync, run_id, mode;
      in >> conn >> sync >> run_id >> mode;
      ++run_ids_[run_id];
      life.ran[{conn, sync}].insert(mode);
      ++starts;
    } else if (tag == "Y") {
      ++ends;
    } else if (tag == "E") {
      life.errors.push_back(line);
    }
  }

  // Whether (conn, sync) was run (its callback called, in any life so far) or is recorded.
  bool RunOrRecorded(const std::string& conn, const std::string& sync, const ScheduleSeen& s,
                     bool settled) const {
    if (ran_.count({conn, sync})) return true;
    if (s.runs >= 1) return true;
    return !settled && (s.running || s.waiting || s.due);
  }

  // Checks a status report (taken at a reopen, or after settling) against the first `acked`
  // commands of the script, those acknowledged when it was taken. When `next_may_be_committed`
  // (the killed child was perhaps running the command after them), either outcome is accepted for
  // that one.
  void Check(const StatusMap& status, std::size_t acked, bool next_may_be_committed,
             const std::string& when, bool settled) {
    // Each defect is reported once, when first seen (a lost run stays lost at every later reopen).
    auto fail = [&](const char* kind, const std::string& subject, const std::string& msg) {
      if (!seen_.insert(std::string(kind) + " " + subject).second) return;
      Defects& d = defects_[kind];
      if (++d.count <= 3) d.examples += "\n  " + when + ": " + msg;
    };
    std::optional<std::size_t> uncertain;
    if (acked < script_.size() && next_may_be_committed) uncertain = acked;
    std::map<int, std::string> deals;  // conn -> expected deals state ("" when either)
    std::map<int, std::string> tickets_owed, resync_owed;  // conn -> the command, for messages
    std::map<int, std::size_t> resync_command;             // conn -> its full-resync trigger
    std::set<int> uncertain_add;
    std::map<int, std::string> added;  // conn -> its AddConnection, for messages
    for (std::size_t i = 0; i < acked; ++i) {
      const Command& c = script_[i];
      switch (c.op) {
        case Op::kAdd:
          added[c.conn] = "command " + std::to_string(i) + " answered " + outcomes_.at(i) +
                          " in life " + std::to_string(ack_life_.at(i));
          deals[c.conn] = "STARTED";
          break;
        case Op::kPause:
          deals[c.conn] = "PAUSED";
          break;
        case Op::kStart:
          deals[c.conn] = "STARTED";
          break;
        case Op::kTrigger:
          std::string what = "command " + std::to_string(i) + " (" + std::string(ToString(c.mode)) +
                             ") answered " + outcomes_.at(i) + " in life " +
                             std::to_string(ack_life_.at(i));
          if (c.sync == "tickets") tickets_owed[c.conn] = what;
          if (c.sync == "contacts" && outcomes_.at(i) == "triggered") {
            resync_owed[c.conn] = what;
            resync_command[c.conn] = i;
          }
          break;
      }
    }
    if (uncertain) {
      const Command& c = script_[*uncertain];
      if (c.op == Op::kAdd) uncertain_add.insert(c.conn);
      if (c.op == Op::kPause || c.op == Op::kStart) deals[c.conn] = "";  // either
    }

    std::set<int> present;
    for (const auto& [key, s] : status) present.insert(std::stoi(key.first.substr(1)));
    for (const auto& [conn, how] : added) {
      if (!present.count(conn))
        fail("acknowledged connections lost", ConnId(conn),
             "acknowledged connection " + ConnId(conn) + " is lost (" + how + ")");
    }
    for (int conn : present) {
      if (!added.count(conn) && !uncertain_add.count(conn)) {
        fail("connections nobody added", ConnId(conn),
             "connection " + ConnId(conn) + " exists, but no AddConnection of it was run");
      }
    }
    for (int conn : present) {
      std::string id = ConnId(conn);
      for (const char* sync : kSyncs) {
        auto it = status.find({id, sync});
        if (it == status.end()) {
          fail("schedules missing", id + sync, id + "/" + sync + " is missing");
          continue;
        }
        const ScheduleSeen& s = it->second;
        auto prev = last_runs_.find({id, sync});
        if (prev != last_runs_.end() && s.runs < prev->second) {
          fail("finished-run counts that went backwards", id + sync,
               id + "/" + sync + ": finished runs went from " + std::to_string(prev->second) +
                   " to " + std::to_string(s.runs));
        }
        if (std::string(sync) == "contacts") {
          if (s.state != "STARTED")
            fail("schedules in the wrong state", id + sync,
                 id + "/contacts is " + s.state + ", not STARTED");
          if (!RunOrRecorded(id, sync, s, settled)) {
            fail("first runs neither run nor recorded", id,
                 id + "/contacts: the first run was neither run nor recorded (runs " +
                     std::to_string(s.runs) + ", not running, not waiting, not due); created by " +
                     (added.count(conn) ? added[conn]
                                        : "the unacknowledged last command of the killed life"));
          }
          // A full resync is run (a full_resync callback in the log), or recorded: the schedule
          // has finished the runs it had when triggered, the one in flight then, and one more.
          auto ran = ran_.find({id, sync});
          if (settled && resync_owed.count(conn) &&
              (ran == ran_.end() || !ran->second.count("full_resync"))) {
            std::uint64_t owed = runs_owed_after_.at(resync_command[conn]);
            if (s.runs < owed) {
              fail("acknowledged full resyncs neither run nor recorded", id,
                   id + "/contacts: the acknowledged full resync, " + resync_owed[conn] +
                       ", never ran and is not recorded (runs " + std::to_string(s.runs) +
                       ", owed at least " + std::to_string(owed) + ")");
            }
          }
        } else if (std::string(sync) == "tickets") {
          if (s.state != "PAUSED")
            fail("schedules in the wrong state", id + sync,
                 id + "/tickets is " + s.state + ", not PAUSED");
          if (tickets_owed.count(conn) && !RunOrRecorded(id, sync, s, settled)) {
            fail("acknowledged triggers neither run nor recorded", id,
                 id + "/tickets: the acknowledged trigger, " + tickets_owed[conn] +
                     ", was neither run nor recorded (runs " + std::to_string(s.runs) +
                     ", not running, not waiting, not due)");
          }
        } else if (!settled) {  // deals (the last life pauses them all before settling)
          const std::string& want = deals.count(conn) ? deals[conn] : "";
          if (!want.empty() && s.state != want) {
            fail(
                "schedules in the wrong state", id + sync + want,
                id + "/deals is " + s.state + " but the last acknowledged command made it " + want);
          }
        }
        if (settled && (s.running || s.waiting))
          fail("runs still owed after settling", id + sync, id + "/" + sync + " still owes a run");
      }
    }
    for (const auto& [key, s] : status) last_runs_[key] = s.runs;
  }

  struct Defects {
    std::size_t count = 0;
    std::string examples;  // the first three
  };

  std::unique_ptr<TestDatabase> database_;
  std::string db_;  // the file or URI
  const std::vector<Command> script_ = Script();
  std::size_t acked_ = 0;                        // acknowledged prefix of the script
  std::map<std::size_t, std::string> outcomes_;  // acknowledged command -> outcome
  // Acknowledged trigger -> the finished runs its schedule has at least once its run is done.
  std::map<std::size_t, std::uint64_t> runs_owed_after_;
  std::map<std::size_t, int> ack_life_;  // acknowledged command -> the life that did it
  std::map<std::string, int> run_ids_;   // run id -> callbacks called with it, all lives
  std::map<std::pair<std::string, std::string>, std::set<std::string>> ran_;  // -> modes run
  std::map<std::pair<std::string, std::string>, std::uint64_t> last_runs_;
  // Failed checks, each subject counted once (a lost run stays lost at every later reopen) and
  // reported by kind at the end.
  std::set<std::string> seen_;
  std::map<std::string, Defects> defects_;
  bool next_may_be_committed_ = true;  // whether the last child may have run the next command
  int lives_ = 0;
};

// Under a sanitizer a life costs several times more (the whole test: 170 s under TSan, 57 s under
// ASan, 10 s without): the sanitizer builds kill at a third as many points, with lives three times
// as long, since they look for memory errors and races on the same paths; the normal build (CI
// runs it too) kills at every point.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kSparse = 3;
#else
constexpr int kSparse = 1;
#endif

TEST_P(CrashTest, KilledAtOverAHundredPointsLosesNothingAcknowledgedAndRunsNoSlotTwice) {
  auto t0 = std::chrono::steady_clock::now();
  int kills = 0, command_kills = 0, run_kills = 0;
  // Lives killed during the script: right after the k-th acknowledgement of the life (the kill
  // lands in the command after it), and every tenth right after recovery.
  for (int l = 0; acked_ < script_.size(); ++l) {
    std::size_t k = kSparse * (1 + (l * 5) % 13u);
    KillPoint kp = l % 10 == 9 ? KillPoint{KillPoint::kAfterRecovery, 0}
                   : l % 2     ? KillPoint{KillPoint::kInNextCommand, k}
                               : KillPoint{KillPoint::kBetweenCommands, k};
    LifeLog life = Life(kp, false);
    if (!life.killed || !life.errors.empty()) return;  // the child failed: reported
    ++kills;
    ++command_kills;
    ASSERT_LT(l, 1000) << "the script makes no progress";
  }
  // Lives killed while runs fire (deals every second, the cap making runs wait): right after the
  // r-th callback of the life started (the run in flight) or ended (its outcome being recorded).
  for (int l = 0; l < 30 / kSparse || kills < 110 / kSparse; ++l) {
    std::size_t r = 3 + (l * 37) % 100u;
    KillPoint kp{l % 2 ? KillPoint::kAfterRunEnds : KillPoint::kAfterRunStarts, r};
    LifeLog life = Life(kp, false);
    if (!life.killed || !life.errors.empty()) return;
    ++kills;
    ++run_kills;
  }
  // The last life: checked on reopening, then runs every owed run and is checked again.
  LifeLog last = Life({KillPoint::kNever, 0}, true);
  ASSERT_FALSE(last.final.empty()) << "the last life reported no final status";
  Check(last.final, acked_, false, "after the last life ran every owed run", /*settled=*/true);

  for (const auto& [kind, d] : defects_) {
    ADD_FAILURE() << d.count << " " << kind << "; the first:" << d.examples;
  }
  EXPECT_GE(kills, 100 / kSparse);
  std::size_t runs = 0, twice = 0;
  for (const auto& [id, n] : run_ids_) {
    runs += static_cast<std::size_t>(n);
    if (n > 1 && ++twice <= 10) ADD_FAILURE() << "run id " << id << " was run " << n << " times";
  }
  EXPECT_EQ(twice, 0u) << "slots run twice";
  EXPECT_GT(runs, 1000u) << "runs fired";
  std::printf(
      "[ crash    ] %d kills (%d in commands, %d while runs fire), %zu commands, %zu runs, "
      "%.1f s\n",
      kills, command_kills, run_kills, script_.size(), runs,
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

INSTANTIATE_TEST_SUITE_P(Stores, CrashTest,
                         ::testing::Values(StoreKind::kSqlite, StoreKind::kPostgres),
                         testing::StoreParamName<::testing::TestParamInfo<StoreKind>>);

}  // namespace
}  // namespace syncsched
