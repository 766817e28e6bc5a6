// Baseline "asio": one boost::asio::steady_timer per schedule on an io_context run by one thread
// (the timer thread), each expiry re-arming its timer at the schedule's next slot and handing the
// run to a thread pool of the workload's size. Real time only.
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <thread>

#include "tool/baseline.h"
#include "tool/runners.h"

namespace syncsched::benchtool {

namespace {

// The faster executor type (io_context's own; the default any_io_executor costs more per timer).
using Timer = boost::asio::basic_waitable_timer<std::chrono::steady_clock,
                                                boost::asio::wait_traits<std::chrono::steady_clock>,
                                                boost::asio::io_context::executor_type>;

std::chrono::steady_clock::time_point AtMs(std::int64_t ms) {
  return std::chrono::steady_clock::time_point(std::chrono::milliseconds(ms));
}

struct AsioScheduler {
  Harness& h;
  ScheduleTable table;
  boost::asio::io_context io{1};
  std::vector<Timer> timers;
  std::vector<std::int64_t> slot;  // the slot each timer is armed for
  RealDispatcher dispatcher;

  explicit AsioScheduler(Harness& harness)
      : h(harness),
        table(harness.workload()),
        dispatcher(harness, table, [this](std::uint32_t idx, std::int64_t s, int attempt) {
          boost::asio::post(io, [this, idx, s, attempt] { Retry(idx, s, attempt); });
        }) {}

  void Arm(std::uint32_t idx) {
    timers[idx].expires_at(AtMs(slot[idx]));
    timers[idx].async_wait([this, idx](boost::system::error_code ec) {
      if (!ec) Expired(idx);
    });
  }

  void Expired(std::uint32_t idx) {
    std::int64_t now = SteadyUs() / 1000;
    dispatcher.Due(idx, slot[idx], 1, false);
    std::uint64_t jumped = 0;
    slot[idx] = NextFutureSlot(slot[idx], table.Period(idx), now, &jumped);
    if (jumped) h.recorder().skipped.fetch_add(jumped, std::memory_order_relaxed);
    Arm(idx);
  }

  // On the timer thread: a retry of a failed run, unless it would reach the next slot.
  void Retry(std::uint32_t idx, std::int64_t s, int attempt) {
    std::int64_t at = RetryAt(h.workload(), SteadyUs() / 1000, attempt);
    if (at >= slot[idx]) return;
    auto t = std::make_shared<Timer>(io.get_executor(), AtMs(at));
    t->async_wait([this, t, idx, s, attempt](boost::system::error_code ec) {
      if (!ec) dispatcher.Due(idx, s, attempt + 1, false);
    });
  }
};

}  // namespace

std::string RunAsio(Harness& h) {
  const Workload& w = h.workload();
  h.BeforeSetup();
  auto t0 = std::chrono::steady_clock::now();
  auto s = std::make_unique<AsioScheduler>(h);
  s->timers.reserve(static_cast<std::size_t>(w.schedules));
  for (std::int64_t i = 0; i < w.schedules; ++i) s->timers.emplace_back(s->io.get_executor());
  s->slot.resize(static_cast<std::size_t>(w.schedules));
  auto t1 = std::chrono::steady_clock::now();
  h.stats().setup_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();

  // Start: the immediate run of each schedule, and its timer armed at its first slot.
  h.BeginStart();
  std::int64_t start_ms = SteadyUs() / 1000;
  for (std::uint32_t i = 0; i < static_cast<std::uint32_t>(w.schedules); ++i) {
    s->dispatcher.Due(i, start_ms, 1, true);
    s->slot[i] = FirstSlot(i, start_ms, s->table.Period(i), w.spread);
    s->Arm(i);
  }
  h.EndStart();
  auto guard = boost::asio::make_work_guard(s->io);
  std::thread timer_thread([&] { s->io.run(); });

  h.BeginWindow();
  h.SleepWindow();
  h.EndWindow();

  s->io.stop();
  timer_thread.join();
  s->dispatcher.Stop();
  return "";
}

}  // namespace syncsched::benchtool
