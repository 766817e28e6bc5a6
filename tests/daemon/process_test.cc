// syncschedd as a process: exit codes, configuration errors, signals, a second daemon on the same
// database, state kept across kill -9, and what a signal does to the listener and to the runs'
// processes (a second SIGTERM, a SIGKILL).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <algorithm>
#include <cstdlib>
#include <optional>

#include "test_util.h"

namespace syncsched::daemon {
namespace {

using syncsched::testing::Client;
using syncsched::testing::Json;
using syncsched::testing::ListeningPort;
using syncsched::testing::Process;
using syncsched::testing::ProcessGone;
using syncsched::testing::ReadFile;
using syncsched::testing::ReadLines;
using syncsched::testing::Reply;
using syncsched::testing::TempDir;
using syncsched::testing::WaitFor;
using syncsched::testing::WriteFile;

class ProcessTest : public ::testing::Test {
 protected:
  // A configuration on a free port whose `issues` sync records its runs and `slow` takes 300 ms.
  std::string WriteConfig(const std::string& name = "config.json",
                          const std::string& issues_runs = "every 1h") {
    Json config = {
        {"listen", "127.0.0.1:0"},
        {"database", dir_ / "syncsched.db"},
        {"api_keys", {{{"key", "k"}, {"scopes", {"*"}}}}},
        {"shutdown_grace", "10s"},
        {"integrations",
         {{"github",
           {{"syncs",
             {{"issues",
               {{"runs", issues_runs},
                {"command",
                 {"/bin/sh", "-c",
                  "echo \"$SYNCSCHED_CONNECTION $SYNCSCHED_SYNC $SYNCSCHED_MODE\" >> '" +
                      (dir_ / "runs.txt") + "'"}}}},
              {"slow",
               {{"runs", "every 1h"},
                {"auto_start", false},
                {"command",
                 {"/bin/sh", "-c",
                  "echo started >> '" + (dir_ / "slow.txt") + "'; sleep 0.3; echo finished >> '" +
                      (dir_ / "slow.txt") + "'"}}}}}},
            {"connections", {"acme"}}}}}}};
    std::string path = dir_ / name;
    WriteFile(path, config.dump(2));
    return path;
  }
  std::unique_ptr<Process> Start(const std::string& config, const std::string& log) {
    return std::make_unique<Process>(std::vector<std::string>{SYNCSCHEDD_PATH, "--config", config},
                                     dir_ / log);
  }

  TempDir dir_;
};

TEST_F(ProcessTest, UsageErrorsExit2) {
  Process none({SYNCSCHEDD_PATH}, dir_ / "none.log");
  EXPECT_EQ(none.Wait(), 2);
  EXPECT_NE(ReadFile(dir_ / "none.log").find("--config"), std::string::npos);
  Process missing({SYNCSCHEDD_PATH, "--config", dir_ / "absent.json"}, dir_ / "missing.log");
  EXPECT_EQ(missing.Wait(), 2);
  EXPECT_NE(ReadFile(dir_ / "missing.log").find("absent.json"), std::string::npos);
}

TEST_F(ProcessTest, AConfigurationErrorNamesTheFieldAndExits2) {
  WriteFile(dir_ / "bad.json", R"({"database": "x.db", "integrations": {"github": {"syncs": {
      "issues": {"runs": "every 30min"}}}}})");
  Process p({SYNCSCHEDD_PATH, "--config", dir_ / "bad.json"}, dir_ / "bad.log");
  EXPECT_EQ(p.Wait(), 2);
  std::vector<std::string> lines = ReadLines(dir_ / "bad.log");
  ASSERT_FALSE(lines.empty());
  Json line = Json::parse(lines.back());
  EXPECT_EQ(line["level"], "error");
  EXPECT_EQ(line["field"], R"(integrations["github"].syncs["issues"].command)");
  EXPECT_NE(
      line["msg"].get<std::string>().find(R"(integrations["github"].syncs["issues"].command)"),
      std::string::npos);
  EXPECT_FALSE(std::filesystem::exists("x.db"));
}

TEST_F(ProcessTest, CheckConfig) {
  std::string config = WriteConfig();
  Process p({SYNCSCHEDD_PATH, "--config", config, "--check-config"}, dir_ / "check.log");
  EXPECT_EQ(p.Wait(), 0);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "runs.txt")) << "nothing ran";
}

TEST_F(ProcessTest, SigtermLetsTheRunFinishAndExits0) {
  auto daemon = Start(WriteConfig(), "daemon.log");
  auto port = ListeningPort(dir_ / "daemon.log");
  ASSERT_TRUE(port) << ReadFile(dir_ / "daemon.log");
  Client client(*port);
  ASSERT_EQ(
      client
          .Post("/sync/trigger",
                R"({"provider_config_key": "github", "connection_id": "acme", "syncs": ["slow"]})",
                "k")
          .status,
      200u);
  ASSERT_TRUE(WaitFor([&] { return ReadLines(dir_ / "slow.txt").size() == 1; }));
  daemon->Signal(SIGTERM);
  EXPECT_EQ(daemon->Wait(), 0) << ReadFile(dir_ / "daemon.log");
  EXPECT_EQ(ReadLines(dir_ / "slow.txt"), (std::vector<std::string>{"started", "finished"}));
  std::string log = ReadFile(dir_ / "daemon.log");
  EXPECT_NE(log.find("\"msg\":\"shutting down\""), std::string::npos);
  for (const std::string& line : ReadLines(dir_ / "daemon.log")) {
    EXPECT_TRUE(Json::accept(line)) << "every log line is JSON: " << line;
  }
}

TEST_F(ProcessTest, SigintExits0) {
  auto daemon = Start(WriteConfig(), "daemon.log");
  ASSERT_TRUE(ListeningPort(dir_ / "daemon.log"));
  daemon->Signal(SIGINT);
  EXPECT_EQ(daemon->Wait(), 0);
}

TEST_F(ProcessTest, ASecondDaemonOnTheSameDatabaseIsRefused) {
  std::string config = WriteConfig();
  auto first = Start(config, "first.log");
  ASSERT_TRUE(ListeningPort(dir_ / "first.log")) << ReadFile(dir_ / "first.log");
  auto second = Start(config, "second.log");
  auto code = second->Wait();
  ASSERT_TRUE(code.has_value()) << "the second daemon should exit";
  EXPECT_NE(*code, 0);
  std::string log = ReadFile(dir_ / "second.log");
  EXPECT_NE(log.find("UNAVAILABLE"), std::string::npos) << log;
  // The first one is unharmed.
  auto port = ListeningPort(dir_ / "first.log");
  Client client(*port);
  EXPECT_EQ(client.Get("/health").status, 200u);
  first->Signal(SIGTERM);
  EXPECT_EQ(first->Wait(), 0);
}

TEST_F(ProcessTest, StateSurvivesKill9) {
  std::string config = WriteConfig();
  auto daemon = Start(config, "first.log");
  auto port = ListeningPort(dir_ / "first.log");
  ASSERT_TRUE(port);
  ASSERT_TRUE(WaitFor([&] { return ReadLines(dir_ / "runs.txt").size() == 1; }));
  {
    Client client(*port);
    ASSERT_EQ(
        client
            .Post(
                "/sync/pause",
                R"({"provider_config_key": "github", "connection_id": "acme", "syncs": ["issues"]})",
                "k")
            .status,
        200u);
    ASSERT_EQ(client
                  .Put("/sync/update-connection-frequency",
                       R"({"provider_config_key": "github", "connection_id": "acme",
                             "sync_name": "issues", "frequency": "every 2h"})",
                       "k")
                  .status,
              200u);
    ASSERT_EQ(client
                  .Post("/connections",
                        R"({"provider_config_key": "github", "connection_id": "globex"})", "k")
                  .status,
              200u);
    ASSERT_TRUE(WaitFor([&] { return ReadLines(dir_ / "runs.txt").size() == 2; }));
  }
  daemon->Signal(SIGKILL);
  EXPECT_EQ(daemon->Wait(), 128 + SIGKILL);

  auto again = Start(config, "second.log");
  auto port2 = ListeningPort(dir_ / "second.log");
  ASSERT_TRUE(port2) << ReadFile(dir_ / "second.log");
  Client client(*port2);
  Reply r = client.Get("/sync/status?provider_config_key=github&syncs=issues", "k");
  ASSERT_EQ(r.status, 200u) << r.body;
  Json syncs = r.json()["syncs"];
  ASSERT_EQ(syncs.size(), 2u) << r.body;
  for (const Json& item : syncs) {
    if (item["connection_id"] == "acme") {
      EXPECT_EQ(item["schedule_status"], "PAUSED") << item.dump();
      EXPECT_EQ(item["frequency"], "2h") << item.dump();
      EXPECT_EQ(item["runs"], 1) << item.dump();
    } else {
      EXPECT_EQ(item["connection_id"], "globex");
      EXPECT_EQ(item["schedule_status"], "STARTED") << item.dump();
    }
  }
  // Nothing re-ran: a restart restarts nothing (acme is paused, globex is within its hour).
  EXPECT_EQ(ReadLines(dir_ / "runs.txt").size(), 2u);
  again->Signal(SIGTERM);
  EXPECT_EQ(again->Wait(), 0);
}

// A configuration whose definition of a sync differs from the database's (written by an earlier
// configuration, or in cluster mode by another daemon) replaces it, and says so once; the same
// configuration again says nothing.
TEST_F(ProcessTest, AChangedSyncDefinitionIsLoggedAndReplacesTheStoredOne) {
  auto first = Start(WriteConfig(), "first.log");
  ASSERT_TRUE(ListeningPort(dir_ / "first.log"));
  first->Signal(SIGTERM);
  ASSERT_EQ(first->Wait(), 0);
  EXPECT_EQ(ReadFile(dir_ / "first.log").find("sync definition replaced"), std::string::npos);

  auto second = Start(WriteConfig("changed.json", "every 2h"), "second.log");
  auto port = ListeningPort(dir_ / "second.log");
  ASSERT_TRUE(port) << ReadFile(dir_ / "second.log");
  std::string log = ReadFile(dir_ / "second.log");
  std::size_t at = log.find("\"msg\":\"sync definition replaced\"");
  ASSERT_NE(at, std::string::npos) << log;
  Json line = Json::parse(
      log.substr(log.rfind('\n', at) + 1, log.find('\n', at) - log.rfind('\n', at) - 1));
  EXPECT_EQ(line["level"], "warn") << line.dump();
  EXPECT_EQ(line["integration"], "github") << line.dump();
  EXPECT_EQ(line["sync"], "issues") << line.dump();
  EXPECT_NE(line["was"].get<std::string>().find("runs=\"every 1h\""), std::string::npos)
      << line.dump();
  EXPECT_NE(line["now"].get<std::string>().find("runs=\"every 2h\""), std::string::npos)
      << line.dump();
  {
    Client client(*port);
    Reply r =
        client.Get("/sync/status?provider_config_key=github&connection_id=acme&syncs=issues", "k");
    ASSERT_EQ(r.status, 200u) << r.body;
    EXPECT_EQ(r.json()["syncs"][0]["frequency"], "2h") << r.body;
  }
  second->Signal(SIGTERM);
  ASSERT_EQ(second->Wait(), 0);

  auto third = Start(WriteConfig("changed.json", "every 2h"), "third.log");
  ASSERT_TRUE(ListeningPort(dir_ / "third.log"));
  EXPECT_EQ(ReadFile(dir_ / "third.log").find("sync definition replaced"), std::string::npos)
      << "the same definition again replaced nothing";
  third->Signal(SIGTERM);
  EXPECT_EQ(third->Wait(), 0);
}

TEST_F(ProcessTest, ASlotMissedWhileDownRunsWithItsCommandAfterARestart) {
  // `issues` every second; the daemon is killed, then restarted once a slot has passed.
  Json config = Json::parse(ReadFile(WriteConfig()));
  config["frequency_bounds"] = {{"min", "1s"}, {"max", "1d"}};
  config["integrations"]["github"]["syncs"]["issues"]["runs"] = "every 1s";
  WriteFile(dir_ / "fast.json", config.dump());
  auto daemon = Start(dir_ / "fast.json", "first.log");
  ASSERT_TRUE(ListeningPort(dir_ / "first.log"));
  ASSERT_TRUE(WaitFor([&] { return ReadLines(dir_ / "runs.txt").size() >= 1; }));
  daemon->Signal(SIGKILL);
  daemon->Wait();
  auto down_since = std::chrono::steady_clock::now();
  std::size_t before = ReadLines(dir_ / "runs.txt").size();
  // Down for more than a period: wait for the clock, not for a guess at the daemon.
  WaitFor(
      [&] {
        return std::chrono::steady_clock::now() - down_since > std::chrono::milliseconds(1100);
      },
      std::chrono::seconds(5));

  auto again = Start(dir_ / "fast.json", "second.log");
  auto port = ListeningPort(dir_ / "second.log");
  ASSERT_TRUE(port);
  ASSERT_TRUE(WaitFor([&] { return ReadLines(dir_ / "runs.txt").size() > before; }));
  Client client(*port);
  Json item;
  ASSERT_TRUE(WaitFor([&] {
    Reply r =
        client.Get("/sync/status?provider_config_key=github&connection_id=acme&syncs=issues", "k");
    item = r.json()["syncs"][0];
    return item["status"] != "RUNNING" && item["runs"].get<int>() >= 2;
  }));
  EXPECT_EQ(item["latestExecutionStatus"], "SUCCESS") << item.dump();
  again->Signal(SIGTERM);
  EXPECT_EQ(again->Wait(), 0);
}

// ---- Shutdown and the runs' processes ----

// What a client connecting to 127.0.0.1:port and asking for /health gets within `timeout`.
enum class Outcome { kRefused, kAnswered, kHung };
Outcome TryHealth(std::uint16_t port, std::string* answer,
                  std::chrono::milliseconds timeout = std::chrono::seconds(1)) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto left = [&] {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    return static_cast<int>(std::max<std::int64_t>(ms.count(), 0));
  };
  Outcome outcome = Outcome::kHung;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    if (errno != EINPROGRESS) {
      ::close(fd);
      return Outcome::kRefused;
    }
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, left()) <= 0) {
      ::close(fd);
      return Outcome::kHung;
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      ::close(fd);
      return Outcome::kRefused;
    }
  }
  const std::string request = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) < 0) {
    ::close(fd);
    return Outcome::kRefused;  // reset: the kernel dropped it with the listener
  }
  std::string got;
  while (true) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, left()) <= 0) break;  // hung
    char buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == ECONNRESET && got.empty()) {
      outcome = Outcome::kRefused;
      break;
    }
    if (n <= 0) {
      outcome = got.empty() ? Outcome::kRefused : Outcome::kAnswered;
      break;
    }
    got.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  if (answer != nullptr) *answer = got;
  return outcome;
}

// The daemon re-executes itself with huge pages for malloc (main.cc) unless GLIBC_TUNABLES already
// names them; its commands get GLIBC_TUNABLES as it was, and no variable of the daemon's own.
TEST_F(ProcessTest, MallocGetsHugePagesAndCommandsGetTheEnvironmentAsItWas) {
  struct Case {
    std::optional<std::string> given;  // GLIBC_TUNABLES in the daemon's environment
    std::string daemon_part;           // the start of the daemon's GLIBC_TUNABLES
    bool huge;                         // whether the daemon's GLIBC_TUNABLES adds hugetlb=1
    bool forged_mark = false;          // started with a mark of the re-execution it did not make
  };
  const Case cases[] = {
      {std::nullopt, "glibc.malloc.hugetlb=1", true},
      {"glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2", true},
      {"glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0", false},
      {"glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2", true, true},
  };
  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.given.value_or("(unset)"));
    std::string env_file = dir_ / ("env" + std::to_string(n) + ".txt");
    Json config = Json::parse(ReadFile(WriteConfig()));
    config["database"] = dir_ / ("env" + std::to_string(n) + ".db");
    config["integrations"]["github"]["syncs"]["issues"]["command"] = {
        "/bin/sh", "-c",
        "echo \"${GLIBC_TUNABLES-unset} ${SYNCSCHED_GLIBC_TUNABLES_BEFORE-none}\" >> '" + env_file +
            "'"};
    std::string path = dir_ / ("env" + std::to_string(n) + ".json");
    WriteFile(path, config.dump());
    std::optional<std::string> saved;
    if (const char* t = std::getenv("GLIBC_TUNABLES")) saved = t;
    if (c.given) {
      setenv("GLIBC_TUNABLES", c.given->c_str(), 1);
    } else {
      unsetenv("GLIBC_TUNABLES");
    }
    if (c.forged_mark) setenv("SYNCSCHED_GLIBC_TUNABLES_BEFORE", "1=forged", 1);
    std::string log = "env" + std::to_string(n) + ".log";
    auto daemon = Start(path, log);
    unsetenv("SYNCSCHED_GLIBC_TUNABLES_BEFORE");
    if (saved) {
      setenv("GLIBC_TUNABLES", saved->c_str(), 1);
    } else {
      unsetenv("GLIBC_TUNABLES");
    }
    ASSERT_TRUE(ListeningPort(dir_ / log)) << ReadFile(dir_ / log);
    ASSERT_TRUE(WaitFor([&] { return ReadLines(env_file).size() == 1; })) << ReadFile(dir_ / log);
    std::string environ_text = ReadFile("/proc/" + std::to_string(daemon->pid()) + "/environ");
    // glibc splits the variable it parsed at its colons (in place), so look for the parts.
    EXPECT_NE(environ_text.find("GLIBC_TUNABLES=" + c.daemon_part), std::string::npos)
        << environ_text;
    EXPECT_EQ(environ_text.find("hugetlb=1") != std::string::npos, c.huge) << environ_text;
    EXPECT_EQ(ReadLines(env_file)[0], c.given.value_or("unset") + " none");
    daemon->Signal(SIGTERM);
    EXPECT_EQ(daemon->Wait(), 0) << ReadFile(dir_ / log);
    EXPECT_EQ(ReadFile(dir_ / log).find("not passed to commands"), std::string::npos)
        << "the daemon's own marker is not the operator's variable";
    ++n;
  }
}

class RunProcessesTest : public ProcessTest {
 protected:
  // `hold` runs a command that ignores SIGTERM, with a child of its own (a grandchild of the
  // daemon, in the command's process group), each writing its pid; it would run for 5 minutes.
  std::string HoldConfig(bool auto_start) {
    Json config = Json::parse(ReadFile(WriteConfig()));
    config["shutdown_grace"] = "30s";
    config["kill_grace"] = "1s";
    config["integrations"]["github"]["syncs"]["hold"] = {
        {"runs", "every 1h"},
        {"auto_start", auto_start},
        {"command",
         {"/bin/sh", "-c",
          "trap '' TERM; sleep 300 & echo $! > '" + (dir_ / "grandchild.pid") + "'; echo $$ > '" +
              (dir_ / "leader.pid") + "'; wait"}}};
    WriteFile(dir_ / "hold.json", config.dump());
    return dir_ / "hold.json";
  }
  // The pids the current `hold` run wrote (after `previous_leader`, if given).
  std::pair<pid_t, pid_t> HoldPids(pid_t previous_leader = 0) {
    pid_t leader = 0, grandchild = 0;
    EXPECT_TRUE(WaitFor([&] {
      auto l = ReadLines(dir_ / "leader.pid");
      auto g = ReadLines(dir_ / "grandchild.pid");
      if (l.empty() || g.empty()) return false;
      leader = static_cast<pid_t>(std::stol(l[0]));
      grandchild = static_cast<pid_t>(std::stol(g[0]));
      return leader != previous_leader;
    }));
    return {leader, grandchild};
  }
  bool LogSays(const std::string& log, const std::string& msg) {
    for (const std::string& line : ReadLines(dir_ / log)) {
      Json j = Json::parse(line, nullptr, false);
      if (j.is_object() && j.value("msg", "") == msg) return true;
    }
    return false;
  }
  const std::string kTriggerHold =
      R"({"provider_config_key": "github", "connection_id": "acme", "syncs": ["hold"]})";
};

TEST_F(RunProcessesTest, SigtermClosesTheListenerAtOnceAndASecondSignalKillsTheRuns) {
  auto daemon = Start(HoldConfig(false), "daemon.log");
  auto port = ListeningPort(dir_ / "daemon.log");
  ASSERT_TRUE(port) << ReadFile(dir_ / "daemon.log");
  {
    Client client(*port);
    ASSERT_EQ(client.Post("/sync/trigger", kTriggerHold, "k").status, 200u);
  }
  auto [leader, grandchild] = HoldPids();
  daemon->Signal(SIGTERM);
  // From the signal on, every client is either answered (before the listener closed) or
  // refused; none is left waiting. Then, once the daemon waits for its run, all are refused.
  int answered = 0, refused = 0, hung = 0;
  bool waiting = false;
  for (int i = 0; i < 200 && !waiting; ++i) {
    waiting = LogSays("daemon.log", "waiting for runs to finish");
    std::string answer;
    switch (TryHealth(*port, &answer)) {
      case Outcome::kAnswered:
        ++answered;
        EXPECT_TRUE(answer.rfind("HTTP/1.1 200", 0) == 0 || answer.rfind("HTTP/1.1 503", 0) == 0)
            << answer;
        EXPECT_FALSE(waiting) << "answered after the listener closed: " << answer;
        break;
      case Outcome::kRefused:
        ++refused;
        break;
      case Outcome::kHung:
        ++hung;
        break;
    }
  }
  ASSERT_TRUE(waiting) << ReadFile(dir_ / "daemon.log");
  EXPECT_EQ(hung, 0) << answered << " answered, " << refused << " refused";
  for (int i = 0; i < 20; ++i) EXPECT_EQ(TryHealth(*port, nullptr), Outcome::kRefused);
  // The run ignores SIGTERM and the grace is 30 s: the daemon waits. A second signal kills the
  // run's process group, grandchild included, and exits 1.
  EXPECT_FALSE(ProcessGone(leader));
  daemon->Signal(SIGTERM);
  EXPECT_EQ(daemon->Wait(), 1);
  EXPECT_TRUE(WaitFor([&] { return ProcessGone(leader) && ProcessGone(grandchild); }))
      << "leader " << leader << " gone: " << ProcessGone(leader) << ", grandchild " << grandchild
      << " gone: " << ProcessGone(grandchild);
  EXPECT_TRUE(LogSays("daemon.log",
                      "second signal: killing the runs' process groups and exiting "
                      "without waiting"));
}

TEST_F(RunProcessesTest, ASigkilledDaemonLeavesNoCommandRunning) {
  std::string config = HoldConfig(true);
  auto daemon = Start(config, "first.log");
  ASSERT_TRUE(ListeningPort(dir_ / "first.log")) << ReadFile(dir_ / "first.log");
  auto [leader, grandchild] = HoldPids();
  ASSERT_FALSE(ProcessGone(leader));
  ASSERT_FALSE(ProcessGone(grandchild));
  daemon->Signal(SIGKILL);
  EXPECT_EQ(daemon->Wait(), 128 + SIGKILL);
  // The command dies with the daemon (PR_SET_PDEATHSIG), its child too (the watchdog).
  EXPECT_TRUE(WaitFor([&] { return ProcessGone(leader) && ProcessGone(grandchild); }))
      << "leader " << leader << " gone: " << ProcessGone(leader) << ", grandchild " << grandchild
      << " gone: " << ProcessGone(grandchild);

  // Restarted: the run is recorded as interrupted, and the schedule's next run is the only one.
  auto again = Start(config, "second.log");
  auto port = ListeningPort(dir_ / "second.log");
  ASSERT_TRUE(port) << ReadFile(dir_ / "second.log");
  Client client(*port);
  Json item;
  ASSERT_TRUE(WaitFor([&] {
    Reply r =
        client.Get("/sync/status?provider_config_key=github&connection_id=acme&syncs=hold", "k");
    item = r.json()["syncs"][0];
    return item.value("error", Json()).is_string();
  })) << item.dump();
  EXPECT_NE(item["error"].get<std::string>().find("interrupted"), std::string::npos) << item.dump();
  Reply r = client.Post("/sync/trigger", kTriggerHold, "k");
  EXPECT_EQ(r.status, 200u) << r.body;
  auto [leader2, grandchild2] = HoldPids(leader);
  EXPECT_NE(leader2, leader);
  EXPECT_TRUE(ProcessGone(leader));
  EXPECT_TRUE(ProcessGone(grandchild));
  again->Signal(SIGKILL);
  again->Wait();
  EXPECT_TRUE(WaitFor([&] { return ProcessGone(leader2) && ProcessGone(grandchild2); }));
}

}  // namespace
}  // namespace syncsched::daemon
