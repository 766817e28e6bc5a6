// The asynchronous forms of the commands with each kind of completion token: a callback,
// boost::asio::use_future and boost::asio::use_awaitable. Public headers only.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <future>
#include <thread>

#include "syncsched/syncsched.h"

namespace {

using syncsched::Engine;
using syncsched::Result;
using syncsched::Status;

class AsyncCommands : public ::testing::Test {
 protected:
  void SetUp() override {
    auto e = Engine::Open({});
    ASSERT_TRUE(e.ok()) << e.status();
    engine = std::move(e).value();
    engine->SetFallbackCallback(
        [](const syncsched::RunContext&) { return syncsched::RunReport::Success(); });
  }
  static syncsched::SyncDefinition Def() {
    return {.name = "issues", .frequency = "every 1h", .auto_start = false};
  }
  std::unique_ptr<Engine> engine;
};

TEST_F(AsyncCommands, CallbackTokenRunsOffTheCallersThreadAndOnce) {
  std::promise<std::pair<Status, std::thread::id>> p;
  engine->AsyncDefineSync("github", Def(), [&](Status st) {
    p.set_value({st, std::this_thread::get_id()});
  });
  auto [st, on] = p.get_future().get();
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_NE(on, std::this_thread::get_id());
  // An error arrives as a value, as the blocking form returns it.
  std::promise<Status> p2;
  engine->AsyncAddConnection("nope", "acme", [&](Status s) { p2.set_value(s); });
  EXPECT_TRUE(p2.get_future().get().IsNotFound());
}

TEST_F(AsyncCommands, CallbackBoundToAHostExecutorRunsThere) {
  boost::asio::io_context io;
  Status got = Status::Internal("not called");
  std::thread::id on;
  engine->AsyncDefineSync("github", Def(), boost::asio::bind_executor(io, [&](Status st) {
                            got = st;
                            on = std::this_thread::get_id();
                          }));
  io.run();  // returns once the handler has run: the pending command keeps it busy until then
  EXPECT_TRUE(got.ok()) << got;
  EXPECT_EQ(on, std::this_thread::get_id());
}

TEST_F(AsyncCommands, FutureTokenForEveryCommand) {
  using boost::asio::use_future;
  ASSERT_TRUE(engine->AsyncDefineSync("github", Def(), use_future).get().ok());
  ASSERT_TRUE(engine->AsyncAddConnection("github", "acme", use_future).get().ok());
  syncsched::Target t{.integration = "github", .connection = "acme"};
  Result<syncsched::CommandResult> started = engine->AsyncStart(t, use_future).get();
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_EQ(started->Count(syncsched::Outcome::kStarted), 1u);
  auto triggered = engine->AsyncTrigger(t, syncsched::RunMode::kIncremental, use_future).get();
  ASSERT_TRUE(triggered.ok()) << triggered.status();
  auto paused = engine->AsyncPause(t, use_future).get();
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_EQ(paused->Count(syncsched::Outcome::kPaused), 1u);
  syncsched::ScheduleKey key{.integration = "github", .connection = "acme", .sync = "issues"};
  auto freq = engine->AsyncUpdateFrequency(key, "every 2h", use_future).get();
  ASSERT_TRUE(freq.ok()) << freq.status();
  EXPECT_EQ(*freq, syncsched::Millis(std::chrono::hours(2)));
  syncsched::ScheduleKey v1 = key;
  v1.variant = "v1";
  auto created = engine->AsyncCreateVariant(v1, use_future).get();
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->key, v1);
  EXPECT_NE(created->id, 0u);
  auto status = engine->AsyncGetStatus(t, use_future).get();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->size(), 2u);
  EXPECT_TRUE(engine->AsyncDeleteVariant(v1, use_future).get().ok());
  EXPECT_TRUE(
      engine->AsyncSetIntegrationLimits("github", {.max_concurrency = 2}, use_future).get().ok());
  EXPECT_TRUE(engine->AsyncDeleteConnection("github", "acme", use_future).get().ok());
  auto missing = engine->AsyncGetStatus(t, use_future).get();
  EXPECT_TRUE(missing.status().IsNotFound()) << missing.status();
}

TEST_F(AsyncCommands, AwaitableTokenResumesTheCoroutineOnItsExecutor) {
  boost::asio::io_context io;
  const std::thread::id host = std::this_thread::get_id();
  bool finished = false;
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        using boost::asio::use_awaitable;
        // Named locals, not temporaries made inside the co_await expression: GCC 12 miscompiles
        // a class temporary passed by value there (copied bytewise, then freed twice).
        const std::string integration = "github", connection = "acme";
        const syncsched::SyncDefinition def = Def();
        const syncsched::Target acme{.integration = integration, .connection = connection};
        Status st = co_await engine->AsyncDefineSync(integration, def, use_awaitable);
        EXPECT_TRUE(st.ok()) << st;
        EXPECT_EQ(std::this_thread::get_id(), host);
        st = co_await engine->AsyncAddConnection(integration, connection, use_awaitable);
        EXPECT_TRUE(st.ok()) << st;
        Result<syncsched::CommandResult> r = co_await engine->AsyncStart(acme, use_awaitable);
        EXPECT_TRUE(r.ok()) << r.status();
        EXPECT_EQ(std::this_thread::get_id(), host);
        finished = true;
      },
      boost::asio::detached);
  io.run();
  EXPECT_TRUE(finished);
}

TEST_F(AsyncCommands, AfterShutdownCommandsCompleteWithFailedPrecondition) {
  engine->Shutdown(std::chrono::steady_clock::now());
  Status st = engine->AsyncDefineSync("github", Def(), boost::asio::use_future).get();
  EXPECT_TRUE(st.IsFailedPrecondition()) << st;
}

}  // namespace

namespace {

// Regression: a command called while Shutdown ran could be posted to the command pool Shutdown
// was joining (its handler never ran) or had destroyed (a use after free). Every handler of a
// command called before, during or after Shutdown runs exactly once.
TEST_F(AsyncCommands, CommandsCalledDuringShutdownAllComplete) {
  ASSERT_TRUE(engine->DefineSync("github", Def()).ok());
  constexpr int kThreads = 3, kCalls = 2000;
  std::atomic<int> completed{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> callers;
  for (int t = 0; t < kThreads; ++t) {
    callers.emplace_back([&] {
      while (!go.load()) std::this_thread::yield();
      for (int i = 0; i < kCalls; ++i) {
        engine->AsyncGetStatus(
            syncsched::Target{.integration = "github"},
            [&](Result<std::vector<syncsched::ScheduleStatus>>) { completed.fetch_add(1); });
      }
    });
  }
  go.store(true);
  std::this_thread::sleep_for(std::chrono::milliseconds(1));  // let some calls in first
  engine->Shutdown(std::chrono::steady_clock::now());
  for (std::thread& t : callers) t.join();
  engine.reset();  // joins the pool that served the calls after Shutdown
  EXPECT_EQ(completed.load(), kThreads * kCalls);
}

}  // namespace
