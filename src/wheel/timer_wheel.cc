#include "wheel/timer_wheel.h"

#include <algorithm>
#include <cassert>
#include <limits>

namespace syncsched::wheel {

TimerWheel::TimerWheel(std::int64_t now_ms) : slots_(kNumRefLists), now_(ToTicks(now_ms)) {}

std::uint16_t TimerWheel::SlotFor(std::uint64_t ticks) const {
  if (ticks < now_) return kOverdueSlot;
  // The highest differing bit picks the level; `| 1` maps ticks == now_ to level 0.
  const int bit = 63 - std::countl_zero((ticks ^ now_) | 1);
  if (bit < kL0Bits) return static_cast<std::uint16_t>(ticks & (kL0Slots - 1));
  const int level = 1 + (bit - kL0Bits) / kUpperBits;
  if (level >= kLevels) return kOverflowSlot;
  return UpperSlot(level, static_cast<int>((ticks >> LevelShift(level)) & (kUpperSlots - 1)));
}

void TimerWheel::SetOccupied(std::uint16_t slot) {
  if (slot < kL0Slots) {
    l0_occupied_[slot / 64] |= std::uint64_t{1} << (slot % 64);
    l0_summary_ |= std::uint64_t{1} << (slot / 64);
  } else if (slot < kOverflowSlot) {
    const int upper = slot - kL0Slots;
    upper_occupied_[upper / kUpperSlots] |= std::uint64_t{1} << (upper % kUpperSlots);
  }
}

void TimerWheel::ClearOccupied(std::uint16_t slot) {
  if (slot < kL0Slots) {
    if ((l0_occupied_[slot / 64] &= ~(std::uint64_t{1} << (slot % 64))) == 0) {
      l0_summary_ &= ~(std::uint64_t{1} << (slot / 64));
    }
  } else if (slot < kOverflowSlot) {
    const int upper = slot - kL0Slots;
    upper_occupied_[upper / kUpperSlots] &= ~(std::uint64_t{1} << (upper % kUpperSlots));
  }
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
  Slot& s = slots_[slot];
  if (s.live == 0) {
    s.min = ticks;
    s.min_exact = true;
    SetOccupied(slot);
  } else if (ticks < s.min) {
    // Below a lower bound of the others: exact.
    s.min = ticks;
    s.min_exact = true;
  }
  ++s.live;
  if (s.refs.capacity() == 0 && !spare_refs_.empty()) {
    s.refs.swap(spare_refs_.back());
    spare_refs_.pop_back();
  }
  s.refs.push_back(ref);
  if (slot == front_slot_) {
    // The heap never holds more nodes than the slot holds refs, so the compaction below (which
    // drops the heap) bounds its stale nodes too.
    front_heap_.push_back(OverdueRef{ticks, ref.id, ref.gen});
    std::push_heap(front_heap_.begin(), front_heap_.end(), Later{});
  }
  if (s.refs.size() >= kCompactMinRefs && s.refs.size() > 2 * s.live && slot != walking_) {
    Compact(slot);
  }
}

void TimerWheel::PushOverdue(OverdueRef ref) {
  ++overdue_live_;
  overdue_.push_back(ref);
  std::push_heap(overdue_.begin(), overdue_.end(), Later{});
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
  Slot& s = slots_[slot];
  if (--s.live == 0) {
    if (slot == front_slot_) DropFrontHeap();
    ClearOccupied(slot);
    if (slot != walking_) {
      s.refs.clear();
      if (slot == (now_ & (kL0Slots - 1))) head_ = 0;
    }
  } else if (e.ticks == s.min) {
    s.min_exact = false;
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

void TimerWheel::Recycle(std::vector<Ref>& refs, std::size_t held) {
  if (refs.capacity() >= kSpareMinRefs) {
    refs.clear();
    spare_refs_.push_back(std::move(refs));
    refs = std::vector<Ref>();  // moved-from: make "empty, no capacity" explicit
    if (spare_refs_.size() > kMaxSpares) {
      auto smallest = std::min_element(spare_refs_.begin(), spare_refs_.end(),
                                       [](const std::vector<Ref>& a, const std::vector<Ref>& b) {
                                         return a.capacity() < b.capacity();
                                       });
      std::swap(*smallest, spare_refs_.back());
      spare_refs_.pop_back();
    }
    return;
  }
  // Keeping capacity avoids allocating on the slot's next turn, which usually holds about as
  // many refs; capacity far beyond that (a burst, or the initial load) is given back.
  if (refs.capacity() > 4 * held + 256) {
    std::vector<Ref> smaller;
    smaller.reserve(2 * held);
    refs.swap(smaller);
  } else {
    refs.clear();
  }
}

void TimerWheel::Compact(std::uint16_t slot) {
  assert(slot != walking_);
  if (slot == front_slot_) DropFrontHeap();
  Slot& s = slots_[slot];
  std::vector<Ref>& refs = s.refs;
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
  s.min = min;
  s.min_exact = true;
  if (slot == (now_ & (kL0Slots - 1))) head_ = 0;  // the consumed prefix was stale
}

std::uint64_t TimerWheel::ExactMin(std::uint16_t slot) {
  Slot& s = slots_[slot];
  assert(s.live > 0 && slot >= kL0Slots && slot <= kOverflowSlot);
  if (s.min_exact) return s.min;
  if (slot != front_slot_) {
    if (s.refs.size() < kFrontHeapMinRefs) {
      Compact(slot);
      return s.min;
    }
    BuildFrontHeap(slot);
  }
  // Every live timer of the slot has a node in the heap; drop the stale ones on top.
  for (;;) {
    const OverdueRef& top = front_heap_.front();
    if (IsLive(Ref{top.id, top.gen}, slot)) break;
    std::pop_heap(front_heap_.begin(), front_heap_.end(), Later{});
    front_heap_.pop_back();
  }
  s.min = front_heap_.front().ticks;
  s.min_exact = true;
  return s.min;
}

void TimerWheel::BuildFrontHeap(std::uint16_t slot) {
  DropFrontHeap();
  Compact(slot);
  front_slot_ = slot;
  const std::vector<Ref>& refs = slots_[slot].refs;
  front_heap_.reserve(refs.size());
  for (const Ref& ref : refs) {
    front_heap_.push_back(OverdueRef{entries_[ref.id].ticks, ref.id, ref.gen});
  }
  std::make_heap(front_heap_.begin(), front_heap_.end(), Later{});
}

void TimerWheel::CompactOverdue() {
  std::erase_if(overdue_, [this](const OverdueRef& r) {
    const Entry& e = entries_[r.id];
    return e.gen != r.gen || e.slot != kOverdueSlot;
  });
  std::make_heap(overdue_.begin(), overdue_.end(), Later{});
}

void TimerWheel::Cascade(int level, int index) {
  const int shift = LevelShift(level + 1);
  now_ = ((now_ >> shift) << shift) | (std::uint64_t(index) << LevelShift(level));
  const std::uint16_t slot = UpperSlot(level, index);
  if (slot == front_slot_) DropFrontHeap();
  Slot& s = slots_[slot];
  std::vector<Ref>& refs = s.refs;
  // Every live timer here goes to a strictly lower level, so `refs` is not touched meanwhile.
  const std::size_t n = refs.size();
  for (std::size_t i = 0; i < n; ++i) {
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
  Recycle(refs, n);
  s.live = 0;
  ClearOccupied(slot);
}

bool TimerWheel::RehomeOverflow(std::uint64_t target) {
  const std::uint64_t block = (ExactMin(kOverflowSlot) >> kHorizonBits) << kHorizonBits;
  if (block > target) return false;
  now_ = block;
  if (front_slot_ == kOverflowSlot) DropFrontHeap();
  Slot& s = slots_[kOverflowSlot];
  std::vector<Ref>& refs = s.refs;
  std::uint64_t min = std::numeric_limits<std::uint64_t>::max();
  std::size_t kept = 0;
  for (std::size_t i = 0, n = refs.size(); i < n; ++i) {
    const Ref ref = refs[i];
    Entry& e = entries_[ref.id];
    if (e.gen != ref.gen || e.slot != kOverflowSlot) continue;
    const std::uint16_t to = SlotFor(e.ticks);
    if (to == kOverflowSlot) {
      refs[kept++] = ref;
      min = std::min(min, e.ticks);
    } else {
      e.slot = to;
      PushRef(to, ref, e.ticks);
    }
  }
  refs.resize(kept);
  s.live = kept;
  s.min = min;
  s.min_exact = true;
  return true;
}

void TimerWheel::StopWalk(int index, std::size_t next) {
  walking_ = kNoSlot;
  if (slots_[index].live == 0) {
    slots_[index].refs.clear();
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
    std::pop_heap(overdue_.begin(), overdue_.end(), Later{});
    overdue_.pop_back();
  }
  if (l0_summary_ != 0) {
    return FromTicks((now_ & ~std::uint64_t{kL0Slots - 1}) |
                     static_cast<std::uint64_t>(FirstLevel0Slot()));
  }
  for (int level = 1; level < kLevels; ++level) {
    const std::uint64_t occupied = upper_occupied_[level - 1];
    if (occupied != 0) return FromTicks(ExactMin(UpperSlot(level, std::countr_zero(occupied))));
  }
  if (slots_[kOverflowSlot].live > 0) return FromTicks(ExactMin(kOverflowSlot));
  return std::nullopt;
}

void TimerWheel::Reserve(std::size_t ids) { entries_.reserve(ids); }

std::size_t TimerWheel::MemoryBytes() const {
  std::size_t bytes = entries_.capacity() * sizeof(Entry) + slots_.capacity() * sizeof(Slot) +
                      (overdue_.capacity() + front_heap_.capacity()) * sizeof(OverdueRef);
  for (const Slot& s : slots_) bytes += s.refs.capacity() * sizeof(Ref);
  bytes += spare_refs_.capacity() * sizeof(std::vector<Ref>);
  for (const std::vector<Ref>& refs : spare_refs_) bytes += refs.capacity() * sizeof(Ref);
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
  for (Slot& s : slots_) {
    s.refs.clear();
    s.live = 0;
    s.min_exact = false;
  }
  l0_occupied_.fill(0);
  l0_summary_ = 0;
  upper_occupied_.fill(0);
  overdue_.clear();
  overdue_live_ = 0;
  DropFrontHeap();
  size_ = 0;
  head_ = 0;
}

}  // namespace syncsched::wheel
