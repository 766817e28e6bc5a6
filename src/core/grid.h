// Small helpers shared by the engine's files: grid arithmetic and histograms.
#pragma once

#include <cstdint>
#include <vector>

#include "syncsched/types.h"

namespace syncsched::core {

// The first slot of the grid (anchor + k * freq) strictly after `t`.
inline std::int64_t NextSlotAfter(std::int64_t anchor, std::int64_t freq, std::int64_t t) {
  if (t < anchor) return anchor;
  return anchor + ((t - anchor) / freq + 1) * freq;
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
