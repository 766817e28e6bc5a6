// The command runner over real processes: environment, exit codes, stderr tails, output logging,
// and the killing of whole process groups on cancellation.
#include "daemon/command_runner.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <future>
#include <mutex>
#include <thread>

#include "test_util.h"

namespace syncsched::daemon {
namespace {

using syncsched::testing::ProcessGone;
using syncsched::testing::ReadFile;
using syncsched::testing::ReadLines;
using syncsched::testing::TempDir;
using syncsched::testing::WaitFor;

template <typename F>
auto WithLock(std::mutex& mu, F f) {
  std::lock_guard<std::mutex> lock(mu);
  return f();
}

class CommandRunnerTest : public ::testing::Test {
 protected:
  CommandRunnerTest()
      : log_file_(std::fopen((dir_ / "log").c_str(), "w")),
        log_(LogLevel::kDebug, log_file_),
        runner_(log_, std::chrono::milliseconds(300)) {
    ctx_.key = {"github", "acme corp", "issues", "v2"};
    ctx_.run_id = "run-17";
    ctx_.slot = TimePoint(std::chrono::seconds(1767225600));
    ctx_.mode = RunMode::kFullResync;
    ctx_.attempt = 2;
    ctx_.heartbeat = [this] { beats_.fetch_add(1); };
  }
  ~CommandRunnerTest() override { std::fclose(log_file_); }

  RunReport Sh(const std::string& script) { return runner_.Run({"/bin/sh", "-c", script}, ctx_); }
  std::string Path(const std::string& name) { return dir_ / name; }
  pid_t PidIn(const std::string& name) {
    EXPECT_TRUE(WaitFor([&] { return ReadFile(Path(name)).find('\n') != std::string::npos; }));
    return static_cast<pid_t>(std::stol(ReadFile(Path(name))));
  }

  TempDir dir_;
  std::FILE* log_file_;
  Logger log_;
  CommandRunner runner_;
  RunContext ctx_;
  std::atomic<int> beats_{0};
};

TEST_F(CommandRunnerTest, PassesTheRunInTheEnvironment) {
  setenv("SYNCSCHED_STALE", "from the daemon", 1);
  setenv("SYNCSCHED_NODE", "an operator's", 1);  // not the daemon's name: dropped as well
  RunReport r = Sh("env | grep '^SYNCSCHED_' | sort > '" + Path("env") + "'");
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(ReadFile(Path("env")),
            "SYNCSCHED_ATTEMPT=2\n"
            "SYNCSCHED_CONNECTION=acme corp\n"
            "SYNCSCHED_INTEGRATION=github\n"
            "SYNCSCHED_MODE=full_resync\n"
            "SYNCSCHED_RUN_ID=run-17\n"
            "SYNCSCHED_SLOT=2026-01-01T00:00:00.000Z\n"
            "SYNCSCHED_SYNC=issues\n"
            "SYNCSCHED_VARIANT=v2\n");
  // The daemon's name (issue 13), once it is set.
  runner_.SetNode("sched-a:3003");
  r = Sh("env | grep '^SYNCSCHED_NODE' > '" + Path("node") + "'");
  unsetenv("SYNCSCHED_STALE");
  unsetenv("SYNCSCHED_NODE");
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(ReadFile(Path("node")), "SYNCSCHED_NODE=sched-a:3003\n");
  EXPECT_EQ(runner_.spawned(), 2u);
}

TEST_F(CommandRunnerTest, RunsArgvWithoutAShell) {
  // Shell syntax in an argument reaches the program untouched.
  RunReport r = runner_.Run({"/usr/bin/printf", "%s", "$HOME; rm -rf / | *"}, ctx_);
  ASSERT_TRUE(r.status.ok());
  bool logged = false;
  for (const std::string& line : ReadLines(Path("log"))) {
    if (line.find(R"("line":"$HOME; rm -rf / | *")") != std::string::npos) logged = true;
  }
  EXPECT_TRUE(logged) << ReadFile(Path("log"));
}

TEST_F(CommandRunnerTest, StdinIsEmpty) {
  RunReport r = Sh("cat > '" + Path("stdin") + "'");
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(ReadFile(Path("stdin")), "");
}

TEST_F(CommandRunnerTest, InheritsNoOtherFileDescriptor) {
  int leaky = open("/dev/null", O_RDONLY);  // no O_CLOEXEC, as a careless library might
  ASSERT_GE(leaky, 3);
  RunReport r = Sh("exec /bin/ls /proc/self/fd > '" + Path("fds") + "'");
  close(leaky);
  ASSERT_TRUE(r.status.ok()) << r.status;
  std::vector<std::string> fds = ReadLines(Path("fds"));
  EXPECT_EQ(std::count(fds.begin(), fds.end(), std::to_string(leaky)), 0) << ReadFile(Path("fds"));
  // 0-2, and the directory ls reads.
  for (const std::string& fd : fds) EXPECT_LE(std::stoi(fd), 3) << ReadFile(Path("fds"));
}

TEST_F(CommandRunnerTest, FailureMessageIsTheTailOfStderr) {
  RunReport r = Sh("echo progress; echo first >&2; echo last >&2; exit 3");
  ASSERT_FALSE(r.status.ok());
  EXPECT_EQ(r.status.message(), "first\nlast");
}

TEST_F(CommandRunnerTest, LongStderrKeepsItsLast2KiB) {
  RunReport r =
      Sh("i=0; while [ $i -lt 300 ]; do echo \"line $i of a long error output\" >&2; "
         "i=$((i+1)); done; echo END >&2; exit 1");
  ASSERT_FALSE(r.status.ok());
  EXPECT_LE(r.status.message().size(), kStderrTailBytes);
  EXPECT_GT(r.status.message().size(), kStderrTailBytes - 100);
  EXPECT_EQ(r.status.message().substr(r.status.message().size() - 3), "END");
}

TEST_F(CommandRunnerTest, FailureWithoutStderrGivesTheExitStatus) {
  RunReport r = Sh("exit 4");
  ASSERT_FALSE(r.status.ok());
  EXPECT_EQ(r.status.message(), "command exited with status 4");
}

TEST_F(CommandRunnerTest, DeathBySignal) {
  RunReport r = Sh("kill -KILL $$");
  ASSERT_FALSE(r.status.ok());
  EXPECT_EQ(r.status.message(), "command killed by SIGKILL");
}

TEST_F(CommandRunnerTest, ACommandThatCannotStart) {
  RunReport r = runner_.Run({"/nonexistent/sync-command"}, ctx_);
  ASSERT_FALSE(r.status.ok());
  EXPECT_NE(r.status.message().find("cannot start"), std::string::npos) << r.status;
  EXPECT_NE(r.status.message().find("/nonexistent/sync-command"), std::string::npos);
  EXPECT_EQ(runner_.spawn_failures(), 1u);
  EXPECT_EQ(runner_.running(), 0u);
}

TEST_F(CommandRunnerTest, OutputGoesToTheLogAndCountsAsHeartbeat) {
  RunReport r = Sh("echo to-stdout; echo to-stderr >&2; printf 'no newline'");
  ASSERT_TRUE(r.status.ok());
  std::string log = ReadFile(Path("log"));
  EXPECT_NE(log.find(R"("stream":"stdout","line":"to-stdout")"), std::string::npos) << log;
  EXPECT_NE(log.find(R"("stream":"stderr","line":"to-stderr")"), std::string::npos) << log;
  EXPECT_NE(log.find(R"("line":"no newline")"), std::string::npos) << log;
  EXPECT_NE(log.find(R"("schedule":"github/acme corp/issues::v2")"), std::string::npos) << log;
  EXPECT_GE(beats_.load(), 1);
  for (const std::string& line : ReadLines(Path("log"))) {
    EXPECT_TRUE(codec::Json::accept(line)) << "every log line is JSON: " << line;
  }
}

TEST_F(CommandRunnerTest, NoDirectivesNoHintNoCounts) {
  RunReport r = Sh("echo hello");
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_FALSE(r.next_run_in.has_value());
  EXPECT_TRUE(r.counts.empty());
}

TEST_F(CommandRunnerTest, AHintLineSetsTheNextRun) {
  RunReport r = Sh("echo SYNCSCHED_NEXT_RUN_IN=1h; echo 'SYNCSCHED_NEXT_RUN_IN= 15m '; echo done");
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.next_run_in, std::chrono::minutes(15));  // the last one wins
  // Kept on failure too (a command backing off after a rate limit).
  RunReport f = Sh("printf 'SYNCSCHED_NEXT_RUN_IN=2h\r\n'; echo 'rate limited' >&2; exit 1");
  EXPECT_FALSE(f.status.ok());
  EXPECT_EQ(f.next_run_in, std::chrono::hours(2));
  // A malformed hint is ignored (and logged); on stderr it is no directive at all.
  RunReport bad = Sh("echo SYNCSCHED_NEXT_RUN_IN=soon; echo SYNCSCHED_NEXT_RUN_IN=1h >&2");
  ASSERT_TRUE(bad.status.ok()) << bad.status;
  EXPECT_FALSE(bad.next_run_in.has_value());
  std::fflush(log_file_);
  EXPECT_NE(ReadFile(Path("log")).find("ignored a malformed directive"), std::string::npos);
}

TEST_F(CommandRunnerTest, CountLinesReportPerModelCounts) {
  RunReport r =
      Sh("echo 'SYNCSCHED_COUNTS Issue 1 2 3'; echo 'SYNCSCHED_COUNTS Comment 4 0 0';"
         "echo 'SYNCSCHED_COUNTS Issue 10 0 1'; echo 'SYNCSCHED_COUNTS Bad x 1 2'");
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.counts, (std::vector<ModelCounts>{{"Issue", 11, 2, 4}, {"Comment", 4, 0, 0}}));
}

TEST_F(CommandRunnerTest, CancellationKillsTheWholeProcessGroup) {
  auto done = std::async(std::launch::async, [&] {
    return Sh("sleep 30 & echo $! > '" + Path("child") + "'; echo $$ > '" + Path("leader") +
              "'; wait");
  });
  pid_t child = PidIn("child");
  pid_t leader = PidIn("leader");
  EXPECT_EQ(runner_.running(), 1u);
  ctx_.cancel.Cancel(Status::Cancelled("paused"));
  ASSERT_EQ(done.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  RunReport r = done.get();
  EXPECT_EQ(r.status.code(), StatusCode::kCancelled);
  EXPECT_TRUE(WaitFor([&] { return ProcessGone(leader) && ProcessGone(child); }));
  EXPECT_EQ(runner_.running(), 0u);
}

TEST_F(CommandRunnerTest, ACommandIgnoringSigtermIsKilledAfterTheGrace) {
  auto done = std::async(std::launch::async, [&] {
    return Sh("trap '' TERM; echo $$ > '" + Path("leader") + "'; while :; do sleep 0.05; done");
  });
  pid_t leader = PidIn("leader");
  auto cancelled_at = std::chrono::steady_clock::now();
  ctx_.cancel.Cancel(Status::DeadlineExceeded("timed out"));
  ASSERT_EQ(done.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_GE(std::chrono::steady_clock::now() - cancelled_at, std::chrono::milliseconds(300));
  EXPECT_EQ(done.get().status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(WaitFor([&] { return ProcessGone(leader); }));
}

// A run abandoned at its timeout may leave its process group alive for the kill grace (a command
// ignoring SIGTERM). The schedule's next run waits for that group to end: never two commands of
// one schedule at once. A waiting run that is cancelled reports at once and never starts.
TEST_F(CommandRunnerTest, ARunWaitsUntilItsSchedulesPreviousProcessGroupHasEnded) {
  RunContext first = ctx_;
  first.run_id = "first";
  first.cancel = CancellationToken();
  std::promise<RunReport> first_report;
  runner_.RunAsync(
      {"/bin/sh", "-c",
       "trap '' TERM; echo $$ > '" + Path("leader") + "'; while :; do sleep 0.05; done"},
      first, [&](RunReport r) { first_report.set_value(std::move(r)); });
  pid_t leader = PidIn("leader");
  first.cancel.Cancel(Status::DeadlineExceeded("timed out"));  // killed after the 300 ms grace

  RunContext cancelled = ctx_;  // waits, then is cancelled while it waits
  cancelled.run_id = "cancelled";
  cancelled.cancel = CancellationToken();
  std::promise<RunReport> cancelled_report;
  runner_.RunAsync({"/bin/sh", "-c", "touch '" + Path("cancelled") + "'"}, cancelled,
                   [&](RunReport r) { cancelled_report.set_value(std::move(r)); });
  RunContext second = ctx_;
  second.run_id = "second";
  second.cancel = CancellationToken();
  std::promise<RunReport> second_report;
  runner_.RunAsync(
      {"/bin/sh", "-c",
       "echo started > '" + Path("second") + "'; if kill -0 " + std::to_string(leader) +
           " 2>/dev/null; then echo overlap >> '" + Path("second") + "'; fi"},
      second, [&](RunReport r) { second_report.set_value(std::move(r)); });
  cancelled.cancel.Cancel(Status::Cancelled("paused"));
  auto c = cancelled_report.get_future();
  ASSERT_EQ(c.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(c.get().status.code(), StatusCode::kCancelled);

  auto s = second_report.get_future();
  ASSERT_EQ(s.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(s.get().status.ok());
  EXPECT_EQ(ReadLines(Path("second")), std::vector<std::string>{"started"})
      << "the second run started while the first one's process was alive";
  EXPECT_FALSE(std::filesystem::exists(Path("cancelled")));
  auto f = first_report.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(f.get().status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(runner_.spawned(), 2u);
}

TEST_F(CommandRunnerTest, ProcessesLeftBehindAreKilled) {
  RunReport r = Sh("sleep 30 > /dev/null 2>&1 & echo $! > '" + Path("child") + "'; exit 0");
  EXPECT_TRUE(r.status.ok());
  pid_t child = PidIn("child");
  EXPECT_TRUE(WaitFor([&] { return ProcessGone(child); }));
}

TEST_F(CommandRunnerTest, AnAlreadyCancelledRunStartsNothing) {
  ctx_.cancel.Cancel(Status::Cancelled("deleted"));
  RunReport r = Sh("touch '" + Path("ran") + "'");
  EXPECT_EQ(r.status.code(), StatusCode::kCancelled);
  EXPECT_FALSE(std::filesystem::exists(Path("ran")));
  EXPECT_EQ(runner_.spawned(), 0u);
}

TEST_F(CommandRunnerTest, AfterBeginShutdownNothingStarts) {
  runner_.BeginShutdown();
  auto done = std::async(std::launch::async, [&] { return Sh("touch '" + Path("ran") + "'"); });
  EXPECT_EQ(done.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout)
      << "a run waits for its cancellation";
  ctx_.cancel.Cancel(Status::Cancelled("engine closing"));
  ASSERT_EQ(done.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(done.get().status.code(), StatusCode::kCancelled);
  EXPECT_FALSE(std::filesystem::exists(Path("ran")));
}

TEST_F(CommandRunnerTest, WaitIdle) {
  EXPECT_TRUE(runner_.WaitIdle(std::chrono::steady_clock::now()));
  auto done = std::async(std::launch::async,
                         [&] { return Sh("echo $$ > '" + Path("leader") + "'; sleep 30"); });
  PidIn("leader");
  EXPECT_FALSE(runner_.WaitIdle(std::chrono::steady_clock::now() + std::chrono::milliseconds(20)));
  ctx_.cancel.Cancel(Status::Cancelled("stop"));
  EXPECT_TRUE(runner_.WaitIdle(std::chrono::steady_clock::now() + std::chrono::seconds(10)));
  done.get();
}

TEST_F(CommandRunnerTest, ManyRunsAtOnce) {
  std::vector<std::future<RunReport>> runs;
  for (int i = 0; i < 8; ++i) {
    runs.push_back(std::async(std::launch::async, [this, i] {
      RunContext ctx = ctx_;
      ctx.run_id = "r" + std::to_string(i);
      ctx.key.connection = "c" + std::to_string(i);
      return runner_.Run({"/bin/sh", "-c", "echo $SYNCSCHED_RUN_ID >> '" + Path("runs") + "'"},
                         ctx);
    }));
  }
  for (auto& r : runs) EXPECT_TRUE(r.get().status.ok());
  EXPECT_EQ(ReadLines(Path("runs")).size(), 8u);
  EXPECT_EQ(runner_.spawned(), 8u);
}

// Runs hold no thread (issue 10): 1,000 `sleep` commands started from 2 threads are all in
// flight at once, watched on the runner's one thread; cancelled, each reports once its process
// is gone.
TEST_F(CommandRunnerTest, AThousandRunsInFlightOnTwoThreads) {
  constexpr int kRuns = 1000;
  rlimit nofile{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &nofile), 0);
  if (nofile.rlim_cur < 4 * kRuns) {
    nofile.rlim_cur = std::min<rlim_t>(nofile.rlim_max, 8 * kRuns);
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &nofile), 0);
  }
  if (nofile.rlim_cur < 3 * kRuns + 64) GTEST_SKIP() << "the hard limit on open files is too low";
  std::mutex mu;
  std::condition_variable cv;
  int reported = 0, stopped = 0;
  std::string other;      // the first report that is not the cancellation's
  CancellationToken all;  // one token for every run: cancelling it stops them all
  auto start = [&](int first) {
    for (int i = first; i < kRuns; i += 2) {
      RunContext ctx = ctx_;
      ctx.run_id = "r" + std::to_string(i);
      ctx.key.connection = "c" + std::to_string(i);  // one schedule's runs never overlap
      ctx.heartbeat = nullptr;
      ctx.cancel = all;
      runner_.RunAsync({"sleep", "600"}, ctx, [&](RunReport r) {
        std::lock_guard<std::mutex> lock(mu);
        ++reported;
        stopped += r.status.code() == StatusCode::kCancelled;
        if (r.status.code() != StatusCode::kCancelled && other.empty()) other = r.status.ToString();
        cv.notify_all();
      });
    }
  };
  std::thread a(start, 0), b(start, 1);
  a.join();
  b.join();
  // RunAsync returned at once; the runner's thread spawns them one after the other.
  // A run counts as running from just before its spawn, and as spawned once the exec succeeded.
  EXPECT_TRUE(WaitFor(
      [&] {
        return runner_.running() == static_cast<std::size_t>(kRuns) &&
               runner_.spawned() == static_cast<std::uint64_t>(kRuns);
      },
      std::chrono::seconds(120)))
      << runner_.running() << " in flight; " << WithLock(mu, [&] { return other; });
  EXPECT_EQ(runner_.spawned(), static_cast<std::uint64_t>(kRuns));
  all.Cancel(Status::Cancelled("paused"));
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(120), [&] { return reported == kRuns; }))
      << reported << " of " << kRuns << " reported";
  EXPECT_EQ(stopped, kRuns) << other;
  lock.unlock();
  EXPECT_TRUE(runner_.WaitIdle(std::chrono::steady_clock::now() + std::chrono::seconds(5)));
}

}  // namespace
}  // namespace syncsched::daemon
