// syncschedd under valgrind's memcheck (issue 11): a short scenario over HTTP (every route, an
// error or two, runs of commands, a variant and a connection created and deleted) and a graceful
// stop, with no memory error and no definite or indirect leak. Skipped where valgrind is absent
// (SYNCSCHED_VALGRIND empty, as in the sanitizer builds).
#include <gtest/gtest.h>

#include "test_util.h"

namespace syncsched::daemon {
namespace {

using syncsched::testing::Client;
using syncsched::testing::Json;
using syncsched::testing::ListeningPort;
using syncsched::testing::Process;
using syncsched::testing::ReadFile;
using syncsched::testing::ReadLines;
using syncsched::testing::Reply;
using syncsched::testing::TempDir;
using syncsched::testing::WaitFor;
using syncsched::testing::WriteFile;
using namespace std::chrono_literals;

TEST(Valgrind, TheDaemonRunsAScenarioWithoutMemoryErrorsOrLeaks) {
  if (std::string(SYNCSCHED_VALGRIND).empty()) GTEST_SKIP() << "valgrind not found";
  TempDir dir;
  Json config = {
      {"listen", "127.0.0.1:0"},
      {"database", dir / "syncsched.db"},
      {"frequency_bounds", {{"min", "1s"}, {"max", "1d"}}},
      {"api_keys", {{{"key", "k"}, {"scopes", {"*"}}}}},
      {"shutdown_grace", "10s"},
      {"integrations",
       {{"github",
         {{"syncs",
           {{"issues",
             {{"runs", "every 1s"},
              {"command", {"/bin/sh", "-c", "echo run >> '" + (dir / "runs.txt") + "'"}}}},
            {"prs",
             {{"runs", "every 1h"},
              {"auto_start", false},
              {"retry", {{"max", 1}, {"backoff", "1s"}}},
              {"command", {"/bin/sh", "-c", "echo oops >&2; exit 3"}}}}}},
          {"connections", {"acme"}}}}}}};
  WriteFile(dir / "config.json", config.dump());
  Process daemon(
      {SYNCSCHED_VALGRIND, "--error-exitcode=99", "--leak-check=full",
       "--errors-for-leak-kinds=definite,indirect", "--show-leak-kinds=definite,indirect",
       "--trace-children=no", "--num-callers=30", SYNCSCHEDD_PATH, "--config", dir / "config.json"},
      dir / "daemon.log");
  auto port = ListeningPort(dir / "daemon.log", 120s);
  ASSERT_TRUE(port) << ReadFile(dir / "daemon.log");
  Client c(*port);
  const std::string acme = R"({"provider_config_key":"github","connection_id":"acme",)";
  EXPECT_EQ(c.Get("/health", "").status, 200u);
  EXPECT_EQ(c.Get("/sync/status?provider_config_key=github&syncs=*", "k").status, 200u);
  EXPECT_EQ(c.Post("/sync/start", acme + R"("syncs":["prs"]})", "k").status, 200u);
  EXPECT_EQ(
      c.Post("/sync/trigger", acme + R"("syncs":["issues"],"opts":{"reset":true}})", "k").status,
      200u);
  EXPECT_EQ(c.Put("/sync/update-connection-frequency",
                  acme + R"("sync_name":"issues","frequency":"every 2s"})", "k")
                .status,
            200u);
  EXPECT_EQ(c.Post("/sync/issues/variant/v1",
                   R"({"provider_config_key":"github","connection_id":"acme"})", "k")
                .status,
            200u);
  EXPECT_EQ(
      c.Post("/connections", R"({"provider_config_key":"github","connection_id":"globex"})", "k")
          .status,
      200u);
  EXPECT_EQ(c.Post("/sync/start", R"({"provider_config_key":"github","syncs":[]})", "k").status,
            200u);
  EXPECT_EQ(c.Get("/metrics", "k").status, 200u);
  // Errors: a bad body, an unknown connection, no key, a bad frequency.
  EXPECT_EQ(c.Post("/sync/start", "{", "k").status, 400u);
  EXPECT_EQ(c.Post("/sync/pause",
                   R"({"provider_config_key":"github","connection_id":"nope","syncs":[]})", "k")
                .status,
            404u);
  EXPECT_EQ(c.Get("/sync/status?provider_config_key=github&syncs=*", "").status, 401u);
  EXPECT_EQ(c.Put("/sync/update-connection-frequency",
                  acme + R"("sync_name":"issues","frequency":"soon"})", "k")
                .status,
            400u);
  // Runs of both syncs (prs fails, and is retried), then everything is taken down again.
  EXPECT_TRUE(WaitFor([&] { return ReadLines(dir / "runs.txt").size() >= 4; }, 60s));
  EXPECT_TRUE(WaitFor(
      [&] {
        Json s = c.Get("/sync/status?provider_config_key=github&connection_id=acme&syncs=prs", "k")
                     .json()["syncs"][0];
        return s.value("failures", 0) >= 2;
      },
      60s));
  EXPECT_EQ(c.Delete("/sync/issues/variant/v1",
                     R"({"provider_config_key":"github","connection_id":"acme"})", "k")
                .status,
            200u);
  EXPECT_EQ(c.Delete("/connections/globex?provider_config_key=github", "", "k").status, 200u);
  EXPECT_EQ(c.Post("/sync/pause", R"({"provider_config_key":"github","syncs":[]})", "k").status,
            200u);

  daemon.Signal(SIGTERM);
  auto code = daemon.Wait(120s);
  ASSERT_TRUE(code) << "no exit under valgrind";
  std::string log = ReadFile(dir / "daemon.log");
  EXPECT_EQ(*code, 0) << "valgrind found errors (exit 99) or the daemon failed:\n" << log;
  EXPECT_NE(log.find("ERROR SUMMARY: 0 errors"), std::string::npos) << log;
}

}  // namespace
}  // namespace syncsched::daemon
