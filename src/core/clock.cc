// SystemClock (the wall clock, never read backwards) and VirtualClock (moved by hand).
//
// Both clocks' alarms share one shape: a state object holding a generation counter and the
// handler. SetAt and Cancel bump the generation, so a handler that was already handed to the
// executor checks, when it runs, that it is still the current one; this is what lets Cancel
// promise that a cancelled handler never starts.
#include "syncsched/clock.h"

#include <algorithm>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

namespace syncsched {
namespace {

struct AlarmState {
  std::mutex mu;
  std::uint64_t generation = 0;
  std::function<void()> handler;

  // Takes the handler if `generation` is still current.
  std::function<void()> Take(std::uint64_t gen) {
    std::lock_guard lock(mu);
    if (gen != generation) return nullptr;
    ++generation;
    return std::move(handler);
  }
};

// Waits in steps of at most the clock's `recheck`, comparing the deadline with Now() after each:
// the wall clock may step (forward: the deadline is reached early in steady time; back: Now()
// stands still, so it is reached late), which a steady_timer alone would not see.
class SteadyAlarm final : public Alarm {
 public:
  SteadyAlarm(const SystemClock& clock, boost::asio::any_io_executor ex)
      : state_(std::make_shared<State>(clock, std::move(ex))) {}
  ~SteadyAlarm() override { Cancel(); }

  void SetAt(TimePoint deadline, std::function<void()> handler) override {
    std::lock_guard lock(state_->mu);
    std::uint64_t gen = ++state_->generation;
    state_->handler = std::move(handler);
    state_->deadline = deadline;
    Wait(state_, gen);
  }

  void Cancel() override {
    std::lock_guard lock(state_->mu);
    ++state_->generation;
    state_->handler = nullptr;
    state_->timer.cancel();
  }

 private:
  struct State : AlarmState {
    State(const SystemClock& c, boost::asio::any_io_executor ex) : clock(c), timer(std::move(ex)) {}
    const SystemClock& clock;
    TimePoint deadline;
    boost::asio::steady_timer timer;
  };

  // Under st->mu: waits for the deadline, or for `recheck` if that is sooner, and then either runs
  // the handler (the deadline is reached) or waits again.
  static void Wait(const std::shared_ptr<State>& st, std::uint64_t gen) {
    Millis left = st->deadline - st->clock.Now();
    st->timer.expires_after(std::clamp(left, Millis(0), st->clock.recheck()));
    st->timer.async_wait([st, gen](boost::system::error_code ec) {
      if (ec) return;
      {
        std::lock_guard lock(st->mu);
        if (gen != st->generation) return;
        if (st->clock.Now() < st->deadline) {
          Wait(st, gen);
          return;
        }
      }
      if (auto h = st->Take(gen)) h();
    });
  }

  std::shared_ptr<State> state_;
};

}  // namespace

SystemClock::SystemClock() : recheck_(kDefaultRecheck) {}

SystemClock::SystemClock(std::function<TimePoint()> wall, Millis recheck)
    : wall_(std::move(wall)), recheck_(std::max(recheck, Millis(1))) {}

TimePoint SystemClock::Now() const {
  TimePoint wall =
      wall_ ? wall_() : std::chrono::time_point_cast<Millis>(std::chrono::system_clock::now());
  std::int64_t ms = wall.time_since_epoch().count();
  std::int64_t last = last_.load(std::memory_order_relaxed);
  // The latest answer wins: after a step back the clock stands still until the wall passes it.
  while (ms > last && !last_.compare_exchange_weak(last, ms, std::memory_order_relaxed)) {
  }
  return TimePoint(Millis(std::max(ms, last)));
}

std::unique_ptr<Alarm> SystemClock::MakeAlarm(boost::asio::any_io_executor executor) {
  return std::make_unique<SteadyAlarm>(*this, std::move(executor));
}

// ---- VirtualClock ----

class VirtualClock::VirtualAlarm final : public Alarm {
 public:
  VirtualAlarm(VirtualClock& clock, std::uint64_t id, boost::asio::any_io_executor ex)
      : clock_(clock), id_(id), ex_(std::move(ex)), state_(std::make_shared<AlarmState>()) {}
  ~VirtualAlarm() override {
    Cancel();
    std::lock_guard lock(clock_.mu_);
    clock_.alarms_.erase(id_);
  }

  void SetAt(TimePoint deadline, std::function<void()> handler) override {
    std::lock_guard clock_lock(clock_.mu_);
    clock_.Remove(id_);
    {
      std::lock_guard lock(state_->mu);
      ++state_->generation;
      state_->handler = std::move(handler);
    }
    clock_.pending_.emplace(deadline, id_);
  }

  void Cancel() override {
    std::lock_guard clock_lock(clock_.mu_);
    clock_.Remove(id_);
    std::lock_guard lock(state_->mu);
    ++state_->generation;
    state_->handler = nullptr;
  }

  // Called by the clock, under its lock, when the deadline is reached.
  void Fire() {
    std::uint64_t gen;
    {
      std::lock_guard lock(state_->mu);
      gen = state_->generation;
    }
    boost::asio::post(ex_, [st = state_, gen] {
      if (auto h = st->Take(gen)) h();
    });
  }

 private:
  VirtualClock& clock_;
  std::uint64_t id_;
  boost::asio::any_io_executor ex_;
  std::shared_ptr<AlarmState> state_;
};

VirtualClock::VirtualClock(TimePoint start) : now_(start) {}
VirtualClock::~VirtualClock() = default;

TimePoint VirtualClock::Now() const {
  std::lock_guard lock(mu_);
  return now_;
}

std::unique_ptr<Alarm> VirtualClock::MakeAlarm(boost::asio::any_io_executor executor) {
  std::lock_guard lock(mu_);
  std::uint64_t id = next_alarm_id_++;
  auto alarm = std::make_unique<VirtualAlarm>(*this, id, std::move(executor));
  alarms_.emplace(id, alarm.get());
  return alarm;
}

void VirtualClock::Remove(std::uint64_t alarm_id) {
  for (auto it = pending_.begin(); it != pending_.end(); ++it) {
    if (it->second == alarm_id) {
      pending_.erase(it);
      return;
    }
  }
}

std::size_t VirtualClock::FireDue() {
  std::lock_guard lock(mu_);
  std::size_t fired = 0;
  while (!pending_.empty() && pending_.begin()->first <= now_) {
    std::uint64_t id = pending_.begin()->second;
    pending_.erase(pending_.begin());
    if (auto it = alarms_.find(id); it != alarms_.end()) {
      it->second->Fire();
      ++fired;
    }
  }
  return fired;
}

void VirtualClock::AdvanceTo(TimePoint t) {
  {
    std::lock_guard lock(mu_);
    if (t > now_) now_ = t;
  }
  FireDue();
}

std::optional<TimePoint> VirtualClock::NextAlarm() const {
  std::lock_guard lock(mu_);
  if (pending_.empty()) return std::nullopt;
  return pending_.begin()->first;
}

void VirtualClock::RunFor(boost::asio::io_context& io, Millis d) { RunUntil(io, Now() + d); }

void VirtualClock::RunUntil(boost::asio::io_context& io, TimePoint end) {
  for (;;) {
    io.restart();
    std::size_t ran = io.poll();
    std::size_t fired = FireDue();  // alarms set at or before now by the handlers just run
    if (ran > 0 || fired > 0) continue;
    std::optional<TimePoint> next = NextAlarm();
    if (next && *next <= end) {
      AdvanceTo(*next);
      continue;
    }
    break;
  }
  AdvanceTo(end);
  for (;;) {
    io.restart();
    if (io.poll() == 0 && FireDue() == 0) break;
  }
}

}  // namespace syncsched
