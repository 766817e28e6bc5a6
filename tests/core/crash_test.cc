// Crash safety (SPEC §6): the engine runs in a child process on a SQLite file and is killed with
// SIGKILL at chosen points: during a long series of acknowledged commands, and while runs fire.
// After each kill the file is reopened (by another child, which carries on) and checked: every
// acknowledged connection is there, and no slot ran twice (every run id the callbacks saw, over
// all lives of the engine, is unique).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "syncsched/syncsched.h"

namespace syncsched {
namespace {

using namespace std::chrono_literals;

constexpr int kConnections = 300;

// The child: opens the engine, registers a callback that logs each run id, defines the sync,
// adds the connections it has not yet added (acknowledging each on `ack_fd`), then lets the runs
// fire until it is killed.
[[noreturn]] void ChildMain(const std::string& db, const std::string& log, int ack_fd) {
  Options o;
  o.database_path = db;
  o.frequency_bounds.min = 1ms;
  o.hold_timers = true;
  o.worker_threads = 2;
  auto opened = Engine::Open(o);
  if (!opened.ok()) {
    std::fprintf(stderr, "child: %s\n", opened.status().ToString().c_str());
    _exit(3);
  }
  auto engine = std::move(opened).value();
  FILE* out = std::fopen(log.c_str(), "a");
  if (!out) _exit(4);
  std::setvbuf(out, nullptr, _IONBF, 0);
  (void)engine->RegisterCallback("crm", "contacts", [out](const RunContext& ctx) {
    std::string line = ctx.run_id + "\n";
    std::fwrite(line.data(), 1, line.size(), out);  // unbuffered: one write(2) per run
    return RunReport::Success();
  });
  SyncDefinition def;
  def.name = "contacts";
  def.frequency = "20ms";
  if (!engine->DefineSync("crm", def).ok()) _exit(5);
  engine->ReleaseTimers();
  for (int i = 0; i < kConnections; ++i) {
    std::string id = "c" + std::to_string(i);
    Status s = engine->AddConnection("crm", id);
    if (!s.ok() && !s.IsAlreadyExists()) _exit(6);
    std::string ack = id + "\n";
    if (write(ack_fd, ack.data(), ack.size()) < 0) _exit(7);
  }
  if (write(ack_fd, "done\n", 5) < 0) _exit(7);
  for (;;) pause();
}

class CrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/syncsched-crash-XXXXXX";
    dir_ = mkdtemp(tmpl);
    db_ = dir_ + "/state.db";
    log_ = dir_ + "/runs.log";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Starts a child and kills it after it has acknowledged `acks` commands (or, when it has
  // acknowledged them all, after the run log has grown by `runs` lines). Returns the acks read.
  std::set<std::string> LifeUntilKilled(std::size_t acks, std::size_t runs) {
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
      close(fds[0]);
      ChildMain(db_, log_, fds[1]);
    }
    close(fds[1]);
    std::set<std::string> acked;
    FILE* in = fdopen(fds[0], "r");
    char line[64];
    bool done = false;
    while (acked.size() < acks && std::fgets(line, sizeof line, in)) {
      std::string s(line);
      s.pop_back();
      if (s == "done") {
        done = true;
        break;
      }
      acked.insert(s);
    }
    if (done || acked.size() >= static_cast<std::size_t>(kConnections)) {
      std::size_t start = LogLines().size();
      // Bounded wait for runs to fire (a 20 ms grid over hundreds of schedules fills fast).
      auto deadline = std::chrono::steady_clock::now() + 30s;
      while (LogLines().size() < start + runs && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::yield();
      }
    }
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFSIGNALED(status)) << "the child exited by itself with " << WEXITSTATUS(status);
    std::fclose(in);
    return acked;
  }

  std::vector<std::string> LogLines() {
    std::vector<std::string> lines;
    std::ifstream f(log_);
    for (std::string l; std::getline(f, l);) lines.push_back(l);
    return lines;
  }

  std::string dir_, db_, log_;
};

TEST_F(CrashTest, KilledAtRandomPointsLosesNoAcknowledgedCommandAndRunsNoSlotTwice) {
  std::mt19937 rng(20261129);
  std::set<std::string> acked;
  // Lives killed during the commands, then lives killed while runs fire.
  for (int life = 0; life < 6; ++life) {
    bool during_commands = life < 3;
    std::size_t acks = during_commands ? 20 + rng() % 100 : kConnections + 1;
    std::size_t runs = 200 + rng() % 2000;
    auto got = LifeUntilKilled(acks, runs);
    acked.insert(got.begin(), got.end());

    // Reopen in this process and check every acknowledged connection is there.
    Options o;
    o.database_path = db_;
    o.hold_timers = true;
    auto engine = Engine::Open(o);
    ASSERT_TRUE(engine.ok()) << "life " << life << ": " << engine.status();
    for (const std::string& id : acked) {
      auto st = (*engine)->GetStatus(Target{"crm", id, {}});
      ASSERT_TRUE(st.ok()) << "acknowledged connection " << id << " lost in life " << life << ": "
                           << st.status();
      ASSERT_EQ(st->size(), 1u);
      EXPECT_EQ(st->front().state, ScheduleState::kStarted);
    }
  }
  std::vector<std::string> lines = LogLines();
  ASSERT_GT(lines.size(), 1000u) << "runs fired";
  std::set<std::string> unique(lines.begin(), lines.end());
  EXPECT_EQ(unique.size(), lines.size()) << "a slot ran twice";
}

}  // namespace
}  // namespace syncsched
