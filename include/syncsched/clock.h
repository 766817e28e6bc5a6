// Clocks: where the engine reads the time and how it waits for the next deadline.
//
// Engine time is wall-clock milliseconds since the Unix epoch (TimePoint), so that grids persist
// as instants and survive restarts, yet it never goes backwards while a process runs: the
// SystemClock follows the wall clock, forward steps included (NTP, a host resumed from suspend),
// and stands still after a step back until the wall clock is past its last answer again.
// The VirtualClock is moved by hand; with it a schedule's week runs in milliseconds, which is how
// syncsched's own tests run and how users can test their schedules.
//
// Ownership: the engine does not own the clock passed in its Options; it must outlive the engine.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/io_context.hpp>

#include "syncsched/export.h"

namespace syncsched {

using Millis = std::chrono::milliseconds;
// Milliseconds since the Unix epoch (UTC).
using TimePoint = std::chrono::sys_time<std::chrono::milliseconds>;

// Formats `t` as ISO 8601 UTC with milliseconds: "2026-01-01T00:00:00.000Z". Any thread.
SYNCSCHED_EXPORT std::string FormatTime(TimePoint t);

// One pending wake-up. Owned by whoever made it (the engine owns one); destroying it cancels it.
// Thread safety: SetAt and Cancel may be called from any thread, but not concurrently with the
// destructor.
class SYNCSCHED_EXPORT Alarm {
 public:
  virtual ~Alarm() = default;
  // Arranges for `handler` to run once on the alarm's executor when the clock reaches `deadline`
  // (soon, if it already has), replacing any earlier setting, whose handler then never runs.
  // Never runs `handler` inside this call.
  virtual void SetAt(TimePoint deadline, std::function<void()> handler) = 0;
  // Drops the pending handler, if any. After Cancel returns, that handler does not start.
  virtual void Cancel() = 0;
};

class SYNCSCHED_EXPORT Clock {
 public:
  virtual ~Clock() = default;
  // The current time; never less than an earlier answer. Any thread.
  virtual TimePoint Now() const = 0;
  // A new alarm whose handlers run on `executor`. Any thread.
  virtual std::unique_ptr<Alarm> MakeAlarm(boost::asio::any_io_executor executor) = 0;
};

// The real clock: std::chrono::system_clock, never read as less than an earlier answer (after a
// step back, Now() stays at its last answer until the wall clock passes it). So a step forward is
// seen as time that passed (slots missed meanwhile collapse into one run per schedule, as after a
// downtime) and a step back re-runs nothing; grids stay where they are, in wall time.
// Alarms are boost::asio::steady_timer waits of at most `recheck` each, after which the deadline is
// compared with Now() again: a step forward is noticed within `recheck`. Thread-safe.
class SYNCSCHED_EXPORT SystemClock final : public Clock {
 public:
  static constexpr Millis kDefaultRecheck{1000};

  SystemClock();
  // For tests: `wall` replaces std::chrono::system_clock as the source of wall time (a test steps
  // it), and alarms re-read the clock at least every `recheck`.
  SystemClock(std::function<TimePoint()> wall, Millis recheck);

  TimePoint Now() const override;
  std::unique_ptr<Alarm> MakeAlarm(boost::asio::any_io_executor executor) override;
  Millis recheck() const { return recheck_; }

 private:
  std::function<TimePoint()> wall_;  // empty: std::chrono::system_clock
  Millis recheck_;
  mutable std::atomic<std::int64_t> last_{0};  // the latest answer of Now(), in ms
};

// A clock moved by hand. Alarms fire (their handlers are posted to their executors) when time is
// advanced to or past their deadlines, in deadline order. Thread-safe; the usual driver is one
// test thread calling RunFor while the engine and the callbacks run on the same io_context.
class SYNCSCHED_EXPORT VirtualClock final : public Clock {
 public:
  // Starts at `start`; the default is 2026-01-01T00:00:00Z.
  explicit VirtualClock(TimePoint start = TimePoint(std::chrono::seconds(1767225600)));
  ~VirtualClock() override;

  TimePoint Now() const override;
  std::unique_ptr<Alarm> MakeAlarm(boost::asio::any_io_executor executor) override;

  // Moves time to `t` (ignored if `t` is not later than Now()), posting every alarm due by then.
  void AdvanceTo(TimePoint t);
  // The earliest pending alarm deadline, if any.
  std::optional<TimePoint> NextAlarm() const;

  // Drives `io` in virtual time up to Now() + `d`: runs every ready handler, then jumps to the
  // next alarm deadline (if within the window) and repeats, so that every handler due in the
  // window runs at its own virtual instant; ends with time at Now() + `d` and no handler ready.
  // Call from one thread that owns `io` (nothing else may be running it).
  void RunFor(boost::asio::io_context& io, Millis d);
  // RunFor up to `t`.
  void RunUntil(boost::asio::io_context& io, TimePoint t);

 private:
  class VirtualAlarm;
  struct Entry {
    std::uint64_t alarm_id;
    std::uint64_t generation;
  };
  void Remove(std::uint64_t alarm_id);
  std::size_t FireDue();  // posts the handlers of due alarms; returns how many

  mutable std::mutex mu_;
  TimePoint now_;
  std::uint64_t next_alarm_id_ = 1;
  std::multimap<TimePoint, std::uint64_t> pending_;  // deadline -> alarm id
  std::map<std::uint64_t, VirtualAlarm*> alarms_;    // live alarms by id
};

}  // namespace syncsched
