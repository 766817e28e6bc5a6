// A virtual-time harness for engine scenario tests: one io_context runs the engine's alarm and the
// runs, a VirtualClock moves time, and every sync callback is asynchronous and recorded, so a test
// decides when each run finishes ("this run takes 3 hours") without threads or sleeps.
#pragma once

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <memory>
#include <string>
#include <vector>

#include "syncsched/syncsched.h"

namespace syncsched::testing {

using namespace std::chrono_literals;

class EngineHarness : public ::testing::Test {
 protected:
  struct Call {
    RunContext ctx;
    RunDone done;
    TimePoint at;  // when the callback was invoked
    bool finished = false;
  };

  void SetUp() override { Open(); }

  void Open(Options extra = {}) {
    extra.clock = &clock;
    extra.executor = io.get_executor();
    extra.run_executor = io.get_executor();
    auto e = Engine::Open(std::move(extra));
    ASSERT_TRUE(e.ok()) << e.status();
    engine = std::move(e).value();
    t0 = clock.Now();
  }

  // Defines integration/sync and records its runs.
  void Define(const std::string& integration, const std::string& sync, const std::string& freq,
              bool auto_start = false, std::optional<Millis> timeout = std::nullopt,
              std::optional<Millis> heartbeat = std::nullopt) {
    SyncDefinition def;
    def.name = sync;
    def.frequency = freq;
    def.auto_start = auto_start;
    def.timeout = timeout;
    def.heartbeat_timeout = heartbeat;
    // The callback first, so that runs dispatched by the definition itself find it.
    ASSERT_TRUE(engine->RegisterAsyncCallback(integration, sync, Recorder()).ok());
    ASSERT_TRUE(engine->DefineSync(integration, def).ok());
  }

  // A callback that records each run in `calls` and, with auto_complete, finishes it at once.
  AsyncSyncCallback Recorder() {
    return [this](const RunContext& ctx, RunDone done) {
      calls.push_back(Call{ctx, done, clock.Now()});
      if (auto_complete) {
        calls.back().finished = true;
        done(RunReport::Success());
      }
    };
  }

  void Run(Millis d) { clock.RunFor(io, d); }
  void Settle() { clock.RunFor(io, 0ms); }

  // Finishes call `i` now with `report`.
  void Finish(std::size_t i, RunReport report = RunReport::Success()) {
    ASSERT_LT(i, calls.size());
    calls[i].finished = true;
    calls[i].done(std::move(report));
    Settle();
  }

  std::size_t Unfinished() const {
    std::size_t n = 0;
    for (const Call& c : calls) n += !c.finished;
    return n;
  }

  static Target T(std::string integration, std::optional<std::string> connection,
                  std::vector<SyncSelector> syncs = {}) {
    return Target{std::move(integration), std::move(connection), std::move(syncs)};
  }

  ScheduleStatus StatusOf(const std::string& integration, const std::string& connection,
                          const std::string& sync, const std::string& variant = "base") {
    auto st = engine->GetStatus(T(integration, connection, {SyncSelector{sync, variant}}));
    EXPECT_TRUE(st.ok()) << st.status();
    if (!st.ok() || st->size() != 1) return {};
    return st->front();
  }

  boost::asio::io_context io;
  VirtualClock clock;
  std::unique_ptr<Engine> engine;
  TimePoint t0;
  std::vector<Call> calls;
  bool auto_complete = true;
};

}  // namespace syncsched::testing
