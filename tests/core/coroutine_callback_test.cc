// Sync callbacks written as coroutines (syncsched/coroutine.h), in virtual time: the run's
// cancellation reaches the operation the coroutine awaits through Asio's cancellation slot.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>

#include "core/engine_test_util.h"
#include "syncsched/coroutine.h"

namespace syncsched::testing {
namespace {

namespace asio = boost::asio;

class CoroutineCallback : public EngineHarness {
 protected:
  // Defines github/issues (every hour, with `timeout`) with `cb` run on `ex` (the engine's run
  // executor unless given) and adds "acme", whose schedule starts and runs at once.
  void DefineWith(CoroutineSyncCallback cb, std::optional<asio::any_io_executor> ex = {},
                  Millis timeout = 1h) {
    ASSERT_TRUE(
        RegisterCoroutineCallback(*engine, "github", "issues", ex.value_or(io.get_executor()), cb)
            .ok());
    SyncDefinition def{.name = "issues", .frequency = "every 1h", .timeout = timeout};
    ASSERT_TRUE(engine->DefineSync("github", def).ok());
    ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
    Settle();
  }

  // Awaits a timer that never expires (no real time passes): only a cancellation ends it.
  static asio::awaitable<void> AwaitForever() {
    asio::steady_timer never(co_await asio::this_coro::executor,
                             asio::steady_timer::time_point::max());
    co_await never.async_wait(asio::use_awaitable);
  }

  // A sync that waits forever, counting its calls and the aborts of its wait.
  CoroutineSyncCallback WaitsForever() {
    return [this](RunContext) -> asio::awaitable<RunReport> {
      ++calls;
      try {
        co_await AwaitForever();
      } catch (const boost::system::system_error& e) {
        aborted += e.code() == asio::error::operation_aborted;
        throw;
      }
      co_return RunReport::Success();
    };
  }

  int calls = 0;
  int aborted = 0;  // awaited operations that ended with operation_aborted
};

TEST_F(CoroutineCallback, ItsReportIsTheRunsOutcome) {
  DefineWith([this](RunContext ctx) -> asio::awaitable<RunReport> {
    ++calls;
    EXPECT_EQ(ctx.key.connection, "acme");
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);  // suspends
    co_return RunReport::Success({{.model = "Issue", .added = 3}});
  });
  EXPECT_EQ(calls, 1);
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kSuccess);
  EXPECT_EQ(st.runs, 1u);
  Run(1h);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(StatusOf("github", "acme", "issues").runs, 2u);
}

TEST_F(CoroutineCallback, APauseAbortsTheAwaitedOperation) {
  DefineWith(WaitsForever());
  ASSERT_EQ(calls, 1);
  EXPECT_EQ(StatusOf("github", "acme", "issues").status, RunStatus::kRunning);
  ASSERT_TRUE(engine->Pause(T("github", "acme")).ok());
  Settle();
  EXPECT_EQ(aborted, 1);
  EngineMetrics m = engine->GetMetrics();
  EXPECT_EQ(m.runs_in_flight, 0u);
  EXPECT_EQ(m.runs_cancelled, 1u);
  EXPECT_EQ(m.runs_succeeded, 0u);
  EXPECT_EQ(StatusOf("github", "acme", "issues").status, RunStatus::kPaused);
}

TEST_F(CoroutineCallback, ATimeoutAbortsItWithDeadlineExceeded) {
  DefineWith(WaitsForever(), std::nullopt, 10min);
  Run(10min - 1ms);
  EXPECT_EQ(aborted, 0);
  EXPECT_EQ(engine->GetMetrics().runs_in_flight, 1u);
  Run(1ms);
  EXPECT_EQ(aborted, 1);
  EngineMetrics m = engine->GetMetrics();
  EXPECT_EQ(m.runs_timed_out, 1u);
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kError);
  EXPECT_NE(st.last_error.find("timed out"), std::string::npos) << st.last_error;
}

TEST_F(CoroutineCallback, AnExceptionFailsTheRunWithItsMessage) {
  DefineWith([this](RunContext) -> asio::awaitable<RunReport> {
    ++calls;
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    throw std::runtime_error("the API answered 500");
  });
  EXPECT_EQ(calls, 1);
  ScheduleStatus st = StatusOf("github", "acme", "issues");
  EXPECT_EQ(st.status, RunStatus::kError);
  EXPECT_EQ(st.last_error, "the API answered 500");
  EXPECT_EQ(engine->GetMetrics().runs_cancelled, 0u);
}

TEST_F(CoroutineCallback, ARunCancelledBeforeItsCoroutineStartsNeverCallsIt) {
  asio::io_context other;  // not run until the run is cancelled
  DefineWith(
      [this](RunContext) -> asio::awaitable<RunReport> {
        ++calls;
        co_return RunReport::Success();
      },
      other.get_executor());
  EXPECT_EQ(engine->GetMetrics().runs_in_flight, 1u);
  ASSERT_TRUE(engine->Pause(T("github", "acme")).ok());
  other.run();
  Settle();
  EXPECT_EQ(calls, 0);
  EngineMetrics m = engine->GetMetrics();
  EXPECT_EQ(m.runs_in_flight, 0u);
  EXPECT_EQ(m.runs_cancelled, 1u);
}

// Coroutines on a pool of two threads, cancelled from the test's thread while they run there: the
// cancellation crosses threads through each run's strand (ThreadSanitizer runs this).
TEST_F(CoroutineCallback, RunsOnAThreadPoolAreAllAbortedByOnePause) {
  constexpr int kConnections = 200;
  asio::thread_pool pool(2);
  std::atomic<int> waiting{0}, pool_aborted{0};
  ASSERT_TRUE(RegisterCoroutineCallback(*engine, "github", "issues", pool.get_executor(),
                                        [&](RunContext) -> asio::awaitable<RunReport> {
                                          ++waiting;
                                          try {
                                            co_await AwaitForever();
                                          } catch (const boost::system::system_error& e) {
                                            pool_aborted +=
                                                e.code() == asio::error::operation_aborted;
                                            throw;
                                          }
                                          co_return RunReport::Success();
                                        })
                  .ok());
  SyncDefinition def{.name = "issues", .frequency = "every 1h"};
  ASSERT_TRUE(engine->DefineSync("github", def).ok());
  for (int i = 0; i < kConnections; ++i) {
    ASSERT_TRUE(engine->AddConnection("github", "c" + std::to_string(i)).ok());
  }
  Settle();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (waiting.load() < kConnections && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  ASSERT_EQ(waiting.load(), kConnections);
  ASSERT_TRUE(engine->Pause(T("github", std::nullopt)).ok());
  while (engine->GetMetrics().runs_in_flight > 0 && std::chrono::steady_clock::now() < deadline) {
    Settle();
    std::this_thread::yield();
  }
  pool.join();
  Settle();
  EXPECT_EQ(pool_aborted.load(), kConnections);
  EngineMetrics m = engine->GetMetrics();
  EXPECT_EQ(m.runs_in_flight, 0u);
  EXPECT_EQ(m.runs_cancelled, static_cast<std::uint64_t>(kConnections));
  EXPECT_EQ(m.runs_succeeded, 0u);
}

// Regression: a cancellation delivered before the coroutine's first step crashed the process
// (Asio threw from the spawn's own start, where nothing catches). Each connection's run is
// cancelled as it starts, on a pool of two threads.
TEST_F(CoroutineCallback, RunsCancelledAsTheyStartEndCleanly) {
  constexpr int kConnections = 500;
  asio::thread_pool pool(2);
  std::atomic<int> started{0};
  ASSERT_TRUE(RegisterCoroutineCallback(*engine, "github", "issues", pool.get_executor(),
                                        [&](RunContext) -> asio::awaitable<RunReport> {
                                          ++started;
                                          co_await AwaitForever();
                                          co_return RunReport::Success();
                                        })
                  .ok());
  SyncDefinition def{.name = "issues", .frequency = "every 1h"};
  ASSERT_TRUE(engine->DefineSync("github", def).ok());
  for (int i = 0; i < kConnections; ++i) {
    std::string connection = "c" + std::to_string(i);
    ASSERT_TRUE(engine->AddConnection("github", connection).ok());
    Settle();  // the run is dispatched: its coroutine is being spawned on the pool
    ASSERT_TRUE(engine->Pause(T("github", connection)).ok());
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (engine->GetMetrics().runs_in_flight > 0 && std::chrono::steady_clock::now() < deadline) {
    Settle();
    std::this_thread::yield();
  }
  pool.join();
  Settle();
  EngineMetrics m = engine->GetMetrics();
  EXPECT_EQ(m.runs_in_flight, 0u);
  EXPECT_EQ(m.runs_cancelled, static_cast<std::uint64_t>(kConnections));
  EXPECT_EQ(m.runs_succeeded, 0u);
  EXPECT_LE(started.load(), kConnections);
}

TEST_F(CoroutineCallback, AnEmptyCallbackOrExecutorIsRefusedAndChangesNothing) {
  Status st = RegisterCoroutineCallback(*engine, "github", "issues", io.get_executor(), nullptr);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("github/issues"), std::string::npos) << st;
  st = RegisterCoroutineCallback(
      *engine, "github", "issues", asio::any_io_executor(),
      [](RunContext) -> asio::awaitable<RunReport> { co_return RunReport::Success(); });
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  st = RegisterCoroutineCallback(
      *engine, "bad integration!", "issues", io.get_executor(),
      [](RunContext) -> asio::awaitable<RunReport> { co_return RunReport::Success(); });
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  // Nothing was registered: a run finds no callback.
  SyncDefinition def{.name = "issues", .frequency = "every 1h"};
  ASSERT_TRUE(engine->DefineSync("github", def).ok());
  ASSERT_TRUE(engine->AddConnection("github", "acme").ok());
  Settle();
  ScheduleStatus s = StatusOf("github", "acme", "issues");
  EXPECT_EQ(s.status, RunStatus::kError);
  EXPECT_NE(s.last_error.find("callback"), std::string::npos) << s.last_error;
}

}  // namespace
}  // namespace syncsched::testing
