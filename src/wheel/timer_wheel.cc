#include "wheel/timer_wheel.h"

#include <algorithm>
#include <cassert>
#include <limits>

namespace syncsched::wheel {
namespace {

constexpr bool OverdueAfter(std::uint64_t a, std::uint64_t b) { return a > b; }

}  // namespace

TimerWheel::TimerWheel(std::int64_t now_ms) : now_(ToTicks(now_ms)) {}

std::uint16_t TimerWheel::SlotFor(std::uint64_t ticks) const {
  if (ticks < now_) return kOverdueSlot;
  // The highest differing bit picks the level; `| 1` maps ticks == now_ to level 0.
  const int bit = 63 - std::countl_zero((ticks ^ now_) | 1);
  const int level = bit / kSlotBits;
  if (level >= kLevels) return kOverflowSlot;
  return static_cast<std::uint16_t>(level * kSlotsPerLevel +
                                    ((ticks >> (kSlotBits * level)) & (kSlotsPerLevel - 1)));
}

void TimerWheel::Place(Ref ref, Entry& e) {
  const std::uint16_t slot = SlotFor(e.ticks);
  e.slot = slot;
  if (slot == kOverdueSlot) {
    PushOverdue(OverdueRef{e.ticks, ref.id, ref.gen});
  } else {
    PushRef(slot, ref, e.ticks);
  }
}

void TimerWheel::PushRef(std::uint16_t slot, Ref ref, std::uint64_t ticks) {
  std::vector<Ref>& refs = refs_[slot];
  if (live_[slot] == 0) {
    min_[slot] = ticks;
    min_exact_[slot] = true;
    if (slot < kOverflowSlot) {
      occupied_[slot / kSlotsPerLevel] |= std::uint64_t{1} << (slot % kSlotsPerLevel);
    }
  } else if (ticks < min_[slot]) {
    // Below a lower bound of the others: exact.
    min_[slot] = ticks;
    min_exact_[slot] = true;
  }
  ++live_[slot];
  refs.push_back(ref);
  if (refs.size() >= kCompactMinRefs && refs.size() > 2 * live_[slot] && slot != walking_) {
    Compact(slot);
  }
}

void TimerWheel::PushOverdue(OverdueRef ref) {
  ++overdue_live_;
  overdue_.push_back(ref);
  std::push_heap(overdue_.begin(), overdue_.end(), [](const OverdueRef& a, const OverdueRef& b) {
    return OverdueAfter(a.ticks, b.ticks);
  });
  if (overdue_.size() >= kCompactMinRefs && overdue_.size() > 2 * overdue_live_) {
    CompactOverdue();
  }
}

void TimerWheel::Unlink(const Entry& e) {
  const std::uint16_t slot = e.slot;
  if (slot == kOverdueSlot) {
    if (--overdue_live_ == 0) overdue_.clear();
    return;
  }
  if (--live_[slot] == 0) {
    if (slot < kOverflowSlot) {
      occupied_[slot / kSlotsPerLevel] &= ~(std::uint64_t{1} << (slot % kSlotsPerLevel));
    }
    if (slot != walking_) {
      refs_[slot].clear();
      if (slot == (now_ & (kSlotsPerLevel - 1))) head_ = 0;
    }
  } else if (e.ticks == min_[slot]) {
    min_exact_[slot] = false;
  }
}

void TimerWheel::Arm(TimerId id, std::int64_t deadline_ms) {
  if (id >= entries_.size()) entries_.resize(std::size_t{id} + 1);
  Entry& e = entries_[id];
  if (e.slot != kNoSlot) {
    Unlink(e);
  } else {
    ++size_;
  }
  ++e.gen;
  e.ticks = ToTicks(deadline_ms);
  Place(Ref{id, e.gen}, e);
}

bool TimerWheel::Cancel(TimerId id) {
  if (id >= entries_.size()) return false;
  Entry& e = entries_[id];
  if (e.slot == kNoSlot) return false;
  Unlink(e);
  ++e.gen;
  e.slot = kNoSlot;
  --size_;
  return true;
}

bool TimerWheel::IsArmed(TimerId id) const {
  return id < entries_.size() && entries_[id].slot != kNoSlot;
}

std::int64_t TimerWheel::DeadlineOf(TimerId id) const {
  assert(IsArmed(id));
  return FromTicks(entries_[id].ticks);
}

void TimerWheel::Compact(std::uint16_t slot) {
  assert(slot != walking_);
  std::vector<Ref>& refs = refs_[slot];
  std::uint64_t min = std::numeric_limits<std::uint64_t>::max();
  std::size_t kept = 0;
  for (std::size_t i = 0, n = refs.size(); i < n; ++i) {
    if (i + kPrefetchDistance < n) __builtin_prefetch(&entries_[refs[i + kPrefetchDistance].id]);
    const Ref ref = refs[i];
    if (!IsLive(ref, slot)) continue;
    min = std::min(min, entries_[ref.id].ticks);
    refs[kept++] = ref;
  }
  refs.resize(kept);
  min_[slot] = min;
  min_exact_[slot] = true;
  if (slot == (now_ & (kSlotsPerLevel - 1))) head_ = 0;  // the consumed prefix was stale
}

void TimerWheel::CompactOverdue() {
  std::erase_if(overdue_, [this](const OverdueRef& r) {
    const Entry& e = entries_[r.id];
    return e.gen != r.gen || e.slot != kOverdueSlot;
  });
  std::make_heap(overdue_.begin(), overdue_.end(), [](const OverdueRef& a, const OverdueRef& b) {
    return OverdueAfter(a.ticks, b.ticks);
  });
}

void TimerWheel::Cascade(int level, int index) {
  const int shift = kSlotBits * (level + 1);
  now_ = ((now_ >> shift) << shift) | (std::uint64_t(index) << (kSlotBits * level));
  const auto slot = static_cast<std::uint16_t>(level * kSlotsPerLevel + index);
  std::vector<Ref>& refs = refs_[slot];
  // Every live timer here goes to a strictly lower level, so `refs` is not touched meanwhile.
  for (std::size_t i = 0, n = refs.size(); i < n; ++i) {
    if (i + kPrefetchDistance < n) {
      __builtin_prefetch(&entries_[refs[i + kPrefetchDistance].id], 1);
    }
    const Ref ref = refs[i];
    Entry& e = entries_[ref.id];
    if (e.gen != ref.gen || e.slot != slot) continue;
    const std::uint16_t to = SlotFor(e.ticks);
    assert(to < slot);
    e.slot = to;
    PushRef(to, ref, e.ticks);
  }
  refs.clear();
  live_[slot] = 0;
  occupied_[level] &= ~(std::uint64_t{1} << index);
}

bool TimerWheel::RehomeOverflow(std::uint64_t target) {
  if (!min_exact_[kOverflowSlot]) Compact(kOverflowSlot);
  constexpr int kShift = kSlotBits * kLevels;
  const std::uint64_t block = (min_[kOverflowSlot] >> kShift) << kShift;
  if (block > target) return false;
  now_ = block;
  std::vector<Ref>& refs = refs_[kOverflowSlot];
  std::uint64_t min = std::numeric_limits<std::uint64_t>::max();
  std::size_t kept = 0;
  std::size_t kept_live = 0;
  for (std::size_t i = 0, n = refs.size(); i < n; ++i) {
    const Ref ref = refs[i];
    Entry& e = entries_[ref.id];
    if (e.gen != ref.gen || e.slot != kOverflowSlot) continue;
    const std::uint16_t to = SlotFor(e.ticks);
    if (to == kOverflowSlot) {
      refs[kept++] = ref;
      ++kept_live;
      min = std::min(min, e.ticks);
    } else {
      e.slot = to;
      PushRef(to, ref, e.ticks);
    }
  }
  refs.resize(kept);
  live_[kOverflowSlot] = kept_live;
  min_[kOverflowSlot] = min;
  min_exact_[kOverflowSlot] = true;
  return true;
}

void TimerWheel::StopWalk(int index, std::size_t next) {
  walking_ = kNoSlot;
  if (live_[index] == 0) {
    refs_[index].clear();
    head_ = 0;
  } else {
    head_ = next;
  }
}

std::optional<std::int64_t> TimerWheel::NextDeadline() {
  while (overdue_live_ > 0) {
    const OverdueRef& top = overdue_.front();
    const Entry& e = entries_[top.id];
    if (e.gen == top.gen && e.slot == kOverdueSlot) return FromTicks(top.ticks);
    std::pop_heap(overdue_.begin(), overdue_.end(), [](const OverdueRef& a, const OverdueRef& b) {
      return OverdueAfter(a.ticks, b.ticks);
    });
    overdue_.pop_back();
  }
  if (occupied_[0] != 0) {
    return FromTicks((now_ & ~std::uint64_t{kSlotsPerLevel - 1}) |
                     static_cast<std::uint64_t>(std::countr_zero(occupied_[0])));
  }
  for (int level = 1; level < kLevels; ++level) {
    if (occupied_[level] == 0) continue;
    const auto slot =
        static_cast<std::uint16_t>(level * kSlotsPerLevel + std::countr_zero(occupied_[level]));
    if (!min_exact_[slot]) Compact(slot);
    return FromTicks(min_[slot]);
  }
  if (live_[kOverflowSlot] > 0) {
    if (!min_exact_[kOverflowSlot]) Compact(kOverflowSlot);
    return FromTicks(min_[kOverflowSlot]);
  }
  return std::nullopt;
}

void TimerWheel::Reserve(std::size_t ids) { entries_.reserve(ids); }

std::size_t TimerWheel::MemoryBytes() const {
  std::size_t bytes = entries_.capacity() * sizeof(Entry) + overdue_.capacity() * sizeof(OverdueRef);
  for (const std::vector<Ref>& refs : refs_) bytes += refs.capacity() * sizeof(Ref);
  return bytes;
}

void TimerWheel::Clear() {
  assert(walking_ == kNoSlot);
  for (Entry& e : entries_) {
    if (e.slot != kNoSlot) {
      ++e.gen;
      e.slot = kNoSlot;
    }
  }
  for (std::vector<Ref>& refs : refs_) refs.clear();
  live_.fill(0);
  min_exact_.fill(false);
  occupied_.fill(0);
  overdue_.clear();
  overdue_live_ = 0;
  size_ = 0;
  head_ = 0;
}

}  // namespace syncsched::wheel
