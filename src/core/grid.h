// Small helpers shared by the engine's files: grid arithmetic and histograms.
#pragma once

#include <charconv>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "syncsched/types.h"

namespace syncsched::core {

// The first slot of the grid (anchor + k * freq) strictly after `t`.
inline std::int64_t NextSlotAfter(std::int64_t anchor, std::int64_t freq, std::int64_t t) {
  if (t < anchor) return anchor;
  return anchor + ((t - anchor) / freq + 1) * freq;
}

// The longest duration the engine accepts for a timeout, heartbeat or retry backoff (366 days):
// far beyond any sync, and far from overflowing time arithmetic in milliseconds or nanoseconds.
inline constexpr Millis kMaxDuration = std::chrono::hours(24 * 366);

// Deadlines are clamped here before they reach a clock (~292 years of nanoseconds overflow
// std::chrono::steady_clock): about 100 years after the epoch of the engine's clock.
inline constexpr std::int64_t kFarFutureMs = std::int64_t{100} * 366 * 24 * 3600 * 1000;

// A run's error message is kept to this many bytes (in memory, its schedule's row and history).
inline constexpr std::size_t kMaxErrorBytes = 4096;

// a + b for times in milliseconds, saturating instead of overflowing (undefined behaviour).
inline std::int64_t SatAdd(std::int64_t a, std::int64_t b) {
  std::int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) {
    return b > 0 ? std::numeric_limits<std::int64_t>::max()
                 : std::numeric_limits<std::int64_t>::min();
  }
  return r;
}

// A grid slot's run id, "<schedule uid>-<slot ms>"; off-grid runs (an immediate run, a trigger, a
// resync, a buffered run) add "-<n>", the schedule's n-th such run (EngineCore::NextRunId).
// `<uid>-<slot>`, or `<uid>-<slot>-<seq>` off the grid (seq > 0): one allocation (a start of a
// million schedules names a million runs).
inline std::string GridRunId(std::uint64_t uid, std::int64_t slot, std::uint64_t seq = 0) {
  char buf[64];
  char* p = std::to_chars(buf, buf + 20, uid).ptr;
  *p++ = '-';
  p = std::to_chars(p, p + 20, slot).ptr;
  if (seq) {
    *p++ = '-';
    p = std::to_chars(p, p + 20, seq).ptr;
  }
  return std::string(buf, p);
}

inline void Observe(Histogram& h, double v) {
  std::size_t i = 0;
  while (i < h.bounds.size() && v > h.bounds[i]) ++i;
  ++h.counts[i];
  h.sum += v;
  ++h.count;
}

inline Histogram MakeHistogram(std::vector<double> bounds) {
  Histogram h;
  h.counts.assign(bounds.size() + 1, 0);
  h.bounds = std::move(bounds);
  return h;
}

}  // namespace syncsched::core
