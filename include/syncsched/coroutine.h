// Sync callbacks written as Asio coroutines: `awaitable<RunReport>(RunContext)`.
//
// A host that already runs Boost.Asio writes its sync as a coroutine and registers it here. The
// run's cancellation (pause, delete, a full resync, a timeout, a missed heartbeat, the engine
// shutting down) is bound to the coroutine's per-operation cancellation slot: the operation the
// coroutine is awaiting when the run is cancelled completes at once with
// `boost::asio::error::operation_aborted` (terminal cancellation), so a sync awaiting a socket, a
// timer or another coroutine needs no cancellation code of its own. Header-only; include it beside
// "syncsched/syncsched.h" (the umbrella header leaves it out, so hosts without coroutines do not
// parse Asio's coroutine headers).
//
// How a run ends, whatever the coroutine does:
//   - it returns a RunReport: that is the run's outcome;
//   - it throws while its run is cancelled (an awaited operation aborted by the cancellation, or
//     any later exception): the run ends with the cancellation's reason (CANCELLED or
//     DEADLINE_EXCEEDED), as it would have anyway;
//   - it throws otherwise: the run fails (INTERNAL) with the exception's what() as its message
//     ("unknown exception" for one not derived from std::exception).
//
// Threads: the coroutine runs on a strand of the executor given at registration, never on a
// command's caller and never under an engine lock; it may call the engine (its Async* forms with
// use_awaitable, so as not to block the executor). The cancellation is delivered through that
// strand too. The executor must keep running while runs are in flight; Engine::Shutdown and the
// destructor cancel the runs still going, and a coroutine that then never returns keeps its run's
// state (not the engine) alive until the executor is destroyed.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <exception>
#include <functional>
#include <memory>
#include <string_view>
#include <utility>

#include "syncsched/engine.h"
#include "syncsched/status.h"
#include "syncsched/types.h"

namespace syncsched {

// A sync written as a coroutine. It receives its own copy of the run's context.
using CoroutineSyncCallback = std::function<boost::asio::awaitable<RunReport>(RunContext)>;

namespace internal {
// What one run's coroutine and its cancellation share; touched only on the run's strand.
struct CoroutineRun {
  boost::asio::cancellation_signal signal;
  bool started = false;  // the coroutine has taken its first step: emitting reaches it
  bool finished = false;
};

// The coroutine spawned for one run: nothing when the run was cancelled before it began.
inline boost::asio::awaitable<RunReport> RunCoroutine(CoroutineSyncCallback callback,
                                                      RunContext ctx,
                                                      std::shared_ptr<CoroutineRun> run) {
  // From here on a cancellation is emitted (on this strand, after this step); one that came
  // before is seen by the check below. Emitting earlier would mark the spawn's own start as
  // cancelled, and Asio throws that where no handler can catch it (std::terminate).
  run->started = true;
  if (ctx.cancel.cancelled()) co_return RunReport{.status = ctx.cancel.reason()};
  // The call outside the co_await expression: GCC 12 miscompiles a class temporary passed by
  // value inside one (copied bytewise, then destroyed twice).
  boost::asio::awaitable<RunReport> work = callback(std::move(ctx));
  co_return co_await std::move(work);
}
}  // namespace internal

// Registers `callback` for runs of (integration, sync), replacing any earlier callback, exactly
// as Engine::RegisterAsyncCallback does (same errors: INVALID_ARGUMENT for an empty callback or
// bad names; nothing changes then). Each run co_spawns `callback(ctx)` on a new strand of
// `executor` (the engine's run executor, or any other the host runs). Any thread.
inline Status RegisterCoroutineCallback(Engine& engine, std::string_view integration,
                                        std::string_view sync,
                                        boost::asio::any_io_executor executor,
                                        CoroutineSyncCallback callback) {
  if (!callback) {
    return Status::InvalidArgument("the coroutine callback of " + std::string(integration) + "/" +
                                   std::string(sync) + " is empty");
  }
  if (!executor) {
    return Status::InvalidArgument("the executor for the coroutine callback of " +
                                   std::string(integration) + "/" + std::string(sync) +
                                   " is empty");
  }
  auto body = [executor = std::move(executor), callback = std::move(callback)](
                  const RunContext& ctx, RunDone done) {
    // One strand per run: the coroutine, its cancellation and its completion never run at once.
    auto strand = boost::asio::make_strand(executor);
    auto run = std::make_shared<internal::CoroutineRun>();
    CancellationToken token = ctx.cancel;
    // Registered before the spawn, and owned by the completion handler, which ends it: a cancel
    // arriving later finds nothing to emit to. The signal is emitted on the strand
    // (cancellation_signal is not thread-safe), and only once the coroutine has started.
    auto registration =
        std::make_shared<CancellationToken::Registration>(token.OnCancelScoped([strand, run] {
          boost::asio::post(strand, [run] {
            if (run->started && !run->finished) {
              run->signal.emit(boost::asio::cancellation_type::terminal);
            }
          });
        }));
    boost::asio::co_spawn(strand, internal::RunCoroutine(callback, ctx, run),
                          boost::asio::bind_cancellation_slot(
                              run->signal.slot(),
                              boost::asio::bind_executor(
                                  strand, [done = std::move(done), run, registration, token](
                                              std::exception_ptr error, RunReport report) mutable {
                                    run->finished = true;
                                    registration->Reset();
                                    if (error) {
                                      if (token.cancelled()) {
                                        report = RunReport{.status = token.reason()};
                                      } else {
                                        try {
                                          std::rethrow_exception(error);
                                        } catch (const std::exception& e) {
                                          report = RunReport::Failure(e.what());
                                        } catch (...) {
                                          report = RunReport::Failure("unknown exception");
                                        }
                                      }
                                    }
                                    done(std::move(report));
                                  })));
  };
  return engine.RegisterAsyncCallback(integration, sync, std::move(body));
}

}  // namespace syncsched
