// An existing Asio application embedding syncsched: one io_context runs the host's own work, the
// engine's alarm and the sync runs. The host drives the engine from a coroutine with the
// asynchronous commands (co_await engine.AsyncStart(..., use_awaitable)), so none of its threads
// ever blocks on a command; the sync itself is a coroutine too (RegisterCoroutineCallback), whose
// awaited operation a cancellation of the run aborts. It runs about two seconds in real time and
// exits 0 when the schedule ran as expected (built and run as a ctest).
//
//   ./build/examples/asio_host
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <iostream>
#include <memory>
#include <string>

#include "syncsched/coroutine.h"
#include "syncsched/syncsched.h"

using namespace std::chrono_literals;
namespace asio = boost::asio;
using syncsched::Status;

namespace {

// The sync: "fetches" for 50 ms. A cancelled run (pause, delete, timeout, shutdown) aborts the
// wait through the coroutine's cancellation slot: async_wait then throws operation_aborted, and
// the run ends with the cancellation's reason.
asio::awaitable<syncsched::RunReport> SyncIssues(syncsched::RunContext ctx, int& runs) {
  ++runs;  // on the io_context's thread: no lock needed
  std::cout << "run " << ctx.run_id << " attempt " << ctx.attempt << "\n";
  asio::steady_timer work(co_await asio::this_coro::executor, 50ms);
  co_await work.async_wait(asio::use_awaitable);
  co_return syncsched::RunReport::Success({{.model = "Issue", .added = 3}});
}

asio::awaitable<void> Host(syncsched::Engine& engine, int& runs, bool& ok) {
  using asio::use_awaitable;
  // The arguments are named locals, not temporaries made inside the co_await expression: GCC 12
  // miscompiles a class temporary passed by value there (copied bytewise, then freed twice).
  const std::string integration = "github", connection = "acme";
  const syncsched::SyncDefinition issues{.name = "issues", .frequency = "1s", .auto_start = false};
  const syncsched::Target acme{.integration = integration, .connection = connection};
  const syncsched::Target all{.integration = integration};
  Status st = co_await engine.AsyncDefineSync(integration, issues, use_awaitable);
  if (!st.ok()) co_return (void)(std::cerr << st << "\n");
  st = co_await engine.AsyncAddConnection(integration, connection, use_awaitable);
  if (!st.ok()) co_return (void)(std::cerr << st << "\n");
  auto started = co_await engine.AsyncStart(acme, use_awaitable);
  if (!started.ok()) co_return (void)(std::cerr << started.status() << "\n");
  std::cout << "started " << started->Count(syncsched::Outcome::kStarted) << " schedule\n";

  // The host's own work goes on meanwhile on the same io_context.
  asio::steady_timer wait(co_await asio::this_coro::executor, 2500ms);
  co_await wait.async_wait(use_awaitable);

  auto status = co_await engine.AsyncGetStatus(all, use_awaitable);
  if (!status.ok()) co_return (void)(std::cerr << status.status() << "\n");
  for (const syncsched::ScheduleStatus& s : *status) {
    std::cout << syncsched::ToString(s.key) << ": " << s.runs << " runs, last "
              << syncsched::ToString(s.status) << "\n";
  }
  ok = runs >= 2 && status->size() == 1 && status->front().runs >= 2;
  auto paused = co_await engine.AsyncPause(all, use_awaitable);
  ok = ok && paused.ok();
}

}  // namespace

int main() {
  asio::io_context io;
  syncsched::Options options;
  options.executor = io.get_executor();      // the engine's alarm runs on the host's loop
  options.run_executor = io.get_executor();  // and so do its runs
  options.frequency_bounds.min = 1s;         // short frequencies for the demonstration
  auto opened = syncsched::Engine::Open(options);
  if (!opened.ok()) {
    std::cerr << opened.status() << "\n";
    return 1;
  }
  std::unique_ptr<syncsched::Engine> engine = std::move(opened).value();

  int runs = 0;
  Status reg = syncsched::RegisterCoroutineCallback(
      *engine, "github", "issues", io.get_executor(),
      [&runs](syncsched::RunContext ctx) { return SyncIssues(std::move(ctx), runs); });
  if (!reg.ok()) return 2;

  bool ok = false;
  asio::co_spawn(io, Host(*engine, runs, ok), [&](std::exception_ptr) { io.stop(); });
  io.run();
  // The loop has stopped: no run can finish any more, so do not wait for them.
  engine->Shutdown(std::chrono::steady_clock::now());
  std::cout << (ok ? "ok" : "FAILED") << "\n";
  return ok ? 0 : 3;
}
