// wheel/: the timer wheel, a pure data structure of deadlines and ids. It knows nothing of Asio,
// schedules or the engine: the core arms one id per schedule and one Asio timer at NextDeadline().
//
// Thread safety: none. One owner (the engine, under its lock) calls every method.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace syncsched::wheel {

using TimerId = std::uint32_t;

// A tickless hierarchical timer wheel of millisecond deadlines, keyed by small dense ids.
//
// Levels. Six levels of 64 slots each. Level k has a granularity of 64^k ms, so level 0 holds
// single milliseconds and the six levels together cover 2^36 ms (about 795 days) ahead of Now().
// A timer sits at the level of the highest bit in which its deadline differs from Now() (as in
// Linux's classic wheel and wahern's timeout.c): level 0 holds deadlines in Now()'s 64 ms block,
// level 1 those in Now()'s 4 s block but a later 64 ms block, and so on. Hence every timer at level
// k is later than every timer at levels below k, and every level-0 slot holds a single deadline.
// Deadlines beyond the six levels wait in an overflow list; deadlines before Now() (armed after
// the fact, or by a callback re-arming into the past) wait in a small min-heap of "overdue" timers.
//
// Slots are index arrays. Each timer owns a 16-byte entry in a slab indexed by its id (deadline,
// generation, current slot). A slot is a std::vector of 8-byte refs {id, generation}; arming
// pushes a ref, so arming never allocates once the vectors have grown (they keep their capacity).
// Walking a slot reads consecutive refs and prefetches the entries a few refs ahead: expiry at
// scale is bandwidth, not pointer chasing (see /work/shared/PERFORMANCE.md).
//
// Lazy cancel. Cancel() and re-Arm() only bump the entry's generation and the slot's live count;
// the old ref stays in its vector and is skipped when the slot is walked, because its generation
// or slot no longer matches the entry's (checking both makes a 32-bit generation wrap harmless).
// Stale refs are bounded: when a slot's live count drops to zero its vector is emptied, and when a
// push finds a vector of at least 64 refs of which fewer than half are live, the vector is
// compacted in place. Both are amortized O(1) per operation, and a slot never holds more than
// max(64, 2 * live) refs for long.
//
// Time moves only in Advance(), which jumps instead of ticking: it finds the earliest occupied
// slot with one count-trailing-zeros on the per-level occupancy bitmaps. A level-0 slot is fired
// (its refs in order); a slot at a higher level is cascaded: Now() moves to the slot's start and
// its timers are re-placed relative to it, which puts each strictly lower. A timer is cascaded at
// most five times in its life, so expiry costs amortized O(1) per timer whatever the number armed.
// When the levels are empty, the overflow list is re-placed at the 2^36 ms block of its earliest
// deadline.
//
// Exact NextDeadline(). The occupancy bitmaps count live timers, not refs, so the first occupied
// level-0 slot gives the exact earliest deadline at once. Higher slots and the overflow list keep
// a lower bound of their live deadlines, exact until the timer holding it is cancelled or moved;
// then the next NextDeadline() recomputes it with one pass over that one slot (compacting it on
// the way). Because the earliest deadline always lies in the first occupied slot of the lowest
// occupied level, no other slot is looked at.
//
// Costs: Arm, Cancel, IsArmed, DeadlineOf O(1); Advance O(1) amortized per fired timer plus
// O(levels) per jump; NextDeadline O(1) unless the earliest deadline was just cancelled from a
// slot at level >= 1, where it costs one pass over that slot. Memory: 16 bytes per id up to the
// largest id used, plus 8 bytes per ref (one per armed timer, up to twice that with stale refs,
// plus vector slack), plus 16 bytes per overdue timer.
class TimerWheel {
 public:
  // `now_ms`: the wheel's current time. Deadlines are absolute milliseconds on the same axis.
  explicit TimerWheel(std::int64_t now_ms = 0);

  // Arms `id` at `deadline_ms`. Ids are small dense integers chosen by the caller (the wheel grows
  // to the largest id + 1). Arming an armed id moves it. A deadline <= Now() is due at the next
  // Advance. Any int64 deadline is accepted (beyond the horizon it waits in an overflow area).
  // O(1), and does not allocate once the wheel has grown to its working size, except for deadlines
  // before Now(), which cost O(log overdue timers).
  void Arm(TimerId id, std::int64_t deadline_ms);

  // Disarms `id`; returns whether it was armed. O(1).
  bool Cancel(TimerId id);

  bool IsArmed(TimerId id) const;
  // Precondition: IsArmed(id).
  std::int64_t DeadlineOf(TimerId id) const;

  // Moves the wheel's time to `now_ms` (never backwards) and calls `fn(TimerId id, int64_t
  // deadline)` for each armed timer whose deadline <= now_ms, in nondecreasing deadline order, at
  // most `max_fires` times. Each timer is disarmed before its call; `fn` may Arm and Cancel any id
  // (re-arming the fired id at a later deadline is the common case). A timer armed by `fn` at a
  // deadline <= now_ms fires in this call if `max_fires` allows. Returns the number of calls.
  // When it stops at `max_fires`, Now() is the deadline of the last fired timer and the rest stay
  // due.
  //
  // Precisely: every call of `fn` is for an armed timer of the earliest armed deadline at that
  // moment. During a call Now() is the deadline being fired, so a timer that `fn` arms before it
  // fires right after the current call; as Now() never moves backwards, after a stop Now() is the
  // largest deadline fired (or the earlier Now(), if larger). `max_fires == 0` does nothing.
  // `fn` may call every method except Advance and Clear. If `fn` throws, the exception propagates,
  // the timer it was called for stays disarmed, and the wheel is left as after a stop at that call.
  template <typename Fn>
  std::size_t Advance(std::int64_t now_ms, Fn&& fn, std::size_t max_fires = SIZE_MAX);

  // The exact earliest deadline of the armed timers, or nullopt when none is armed. It may be
  // <= Now() (timers due at the next Advance). Non-const: it may recompute and compact one slot.
  std::optional<std::int64_t> NextDeadline();

  std::int64_t Now() const;
  std::size_t size() const;  // armed timers
  // Grows the id slab to hold ids [0, ids) without further allocation.
  void Reserve(std::size_t ids);
  std::size_t MemoryBytes() const;  // heap bytes held, for the benchmarks' bytes-per-schedule

  // Disarms every timer; keeps Now() and the memory held. O(largest id + slots).
  void Clear();

 private:
  static constexpr int kLevels = 6;
  static constexpr int kSlotBits = 6;
  static constexpr int kSlotsPerLevel = 1 << kSlotBits;
  // Slot numbers: level * 64 + index for the wheel, then the overflow list, then the overdue
  // heap (which has no ref vector), then "not armed".
  static constexpr std::uint16_t kOverflowSlot = kLevels * kSlotsPerLevel;
  static constexpr std::uint16_t kOverdueSlot = kOverflowSlot + 1;
  static constexpr std::uint16_t kNoSlot = 0xFFFF;
  static constexpr int kNumRefLists = kOverflowSlot + 1;
  // A vector is compacted when it holds at least this many refs and fewer than half are live.
  static constexpr std::size_t kCompactMinRefs = 64;
  // How many refs ahead a walk prefetches the entries.
  static constexpr std::size_t kPrefetchDistance = 16;

  // Deadlines are kept as "ticks": the int64 milliseconds with the sign bit flipped, so that
  // unsigned order is signed order and the bit arithmetic of levels works over the whole range.
  static constexpr std::uint64_t ToTicks(std::int64_t ms) {
    return static_cast<std::uint64_t>(ms) ^ (std::uint64_t{1} << 63);
  }
  static constexpr std::int64_t FromTicks(std::uint64_t ticks) {
    return static_cast<std::int64_t>(ticks ^ (std::uint64_t{1} << 63));
  }

  struct Entry {
    std::uint64_t ticks = 0;  // deadline
    std::uint32_t gen = 0;    // bumped by every Arm, Cancel and fire
    std::uint16_t slot = kNoSlot;
    std::uint16_t unused = 0;
  };
  static_assert(sizeof(Entry) == 16);
  struct Ref {
    TimerId id;
    std::uint32_t gen;
  };
  struct OverdueRef {
    std::uint64_t ticks;
    TimerId id;
    std::uint32_t gen;
  };

  bool IsLive(const Ref& ref, std::uint16_t slot) const {
    const Entry& e = entries_[ref.id];
    return e.gen == ref.gen && e.slot == slot;
  }
  // The slot a deadline belongs in, relative to now_.
  std::uint16_t SlotFor(std::uint64_t ticks) const;
  // Puts `ref` (whose entry is `e`) in the slot its deadline belongs in.
  void Place(Ref ref, Entry& e);
  void PushRef(std::uint16_t slot, Ref ref, std::uint64_t ticks);
  void PushOverdue(OverdueRef ref);
  // Takes an armed entry out of its slot's accounting (its ref goes stale once gen/slot change).
  void Unlink(const Entry& e);
  // Drops stale refs of a ref list and makes its minimum exact.
  void Compact(std::uint16_t slot);
  void CompactOverdue();
  // Moves now_ to the start of slot `index` of `level` (>= 1) and re-places its timers.
  void Cascade(int level, int index);
  // If the overflow list's earliest 2^36 ms block starts at or before `target`, moves now_ there,
  // re-places the overflow timers and returns true.
  bool RehomeOverflow(std::uint64_t target);
  // Ends a walk of level-0 slot `index` (== now_ & 63) that stopped before ref `next`.
  void StopWalk(int index, std::size_t next);

  // Fires overdue timers (all earlier than now_) in deadline order; returns true when it stopped
  // because `fires` reached `max_fires`.
  template <typename Fn>
  bool FireOverdue(Fn& fn, std::size_t& fires, std::size_t max_fires);
  // Fires level-0 slot `index`, whose deadline is now_; returns true when it stopped at
  // `max_fires`.
  template <typename Fn>
  bool FireSlot(int index, Fn& fn, std::size_t& fires, std::size_t max_fires);

  std::vector<Entry> entries_;  // by id
  std::array<std::vector<Ref>, kNumRefLists> refs_;
  std::array<std::size_t, kNumRefLists> live_{};  // armed timers per ref list
  // Per ref list at level >= 1 and overflow: a lower bound of the live deadlines, exact when
  // min_exact_ is set.
  std::array<std::uint64_t, kNumRefLists> min_{};
  std::array<bool, kNumRefLists> min_exact_{};
  std::array<std::uint64_t, kLevels> occupied_{};  // bit i of level k: live_[k * 64 + i] > 0
  std::vector<OverdueRef> overdue_;                // min-heap on ticks, with stale refs
  std::size_t overdue_live_ = 0;
  std::uint64_t now_;
  std::size_t size_ = 0;
  // After a stop at max_fires: refs [0, head_) of level-0 slot (now_ & 63) are consumed.
  std::size_t head_ = 0;
  // The level-0 slot Advance is walking (its vector must not be cleared or compacted).
  std::uint16_t walking_ = kNoSlot;
};

// ---- Implementation details: the template members. ----

inline std::int64_t TimerWheel::Now() const { return FromTicks(now_); }
inline std::size_t TimerWheel::size() const { return size_; }

template <typename Fn>
std::size_t TimerWheel::Advance(std::int64_t now_ms, Fn&& fn, std::size_t max_fires) {
  if (max_fires == 0) return 0;
  std::uint64_t target = ToTicks(now_ms);
  if (target < now_) target = now_;
  std::size_t fires = 0;
  if (overdue_live_ > 0 && FireOverdue(fn, fires, max_fires)) return fires;
  for (;;) {
    if (occupied_[0] != 0) {
      const int index = std::countr_zero(occupied_[0]);
      const std::uint64_t t = (now_ & ~std::uint64_t{kSlotsPerLevel - 1}) | index;
      if (t > target) break;
      now_ = t;
      if (FireSlot(index, fn, fires, max_fires)) return fires;
      continue;
    }
    int level = 1;
    while (level < kLevels && occupied_[level] == 0) ++level;
    if (level < kLevels) {
      const int index = std::countr_zero(occupied_[level]);
      const int shift = kSlotBits * (level + 1);
      const std::uint64_t start =
          ((now_ >> shift) << shift) | (std::uint64_t(index) << (kSlotBits * level));
      if (start > target) break;
      Cascade(level, index);
      continue;
    }
    if (live_[kOverflowSlot] == 0 || !RehomeOverflow(target)) break;
  }
  // Nothing is due in (now_, target]; moving now_ there keeps every timer's level valid.
  now_ = target;
  return fires;
}

template <typename Fn>
bool TimerWheel::FireOverdue(Fn& fn, std::size_t& fires, std::size_t max_fires) {
  while (!overdue_.empty()) {
    const OverdueRef top = overdue_.front();
    std::pop_heap(overdue_.begin(), overdue_.end(),
                  [](const OverdueRef& a, const OverdueRef& b) { return a.ticks > b.ticks; });
    overdue_.pop_back();
    Entry& e = entries_[top.id];
    if (e.gen != top.gen || e.slot != kOverdueSlot) continue;
    --overdue_live_;
    ++e.gen;
    e.slot = kNoSlot;
    --size_;
    fn(top.id, FromTicks(top.ticks));
    if (++fires == max_fires) return true;
  }
  return false;
}

template <typename Fn>
bool TimerWheel::FireSlot(int index, Fn& fn, std::size_t& fires, std::size_t max_fires) {
  const auto slot = static_cast<std::uint16_t>(index);
  std::vector<Ref>& refs = refs_[slot];  // may grow while fn runs: index it, never hold pointers
  const std::int64_t deadline = FromTicks(now_);
  std::size_t i = head_;
  head_ = 0;
  walking_ = slot;
  try {
    for (; i < refs.size(); ++i) {
      if (i + kPrefetchDistance < refs.size()) {
        __builtin_prefetch(&entries_[refs[i + kPrefetchDistance].id], 1);
      }
      const Ref ref = refs[i];
      Entry& e = entries_[ref.id];
      if (e.gen != ref.gen || e.slot != slot) continue;
      ++e.gen;
      e.slot = kNoSlot;
      --size_;
      if (--live_[slot] == 0) occupied_[0] &= ~(std::uint64_t{1} << index);
      fn(ref.id, deadline);
      if (++fires == max_fires ||
          (overdue_live_ > 0 && FireOverdue(fn, fires, max_fires))) {
        StopWalk(index, i + 1);
        return true;
      }
    }
  } catch (...) {
    StopWalk(index, i + 1);
    throw;
  }
  walking_ = kNoSlot;
  refs.clear();  // every ref is now fired or stale, and live_[slot] == 0
  return false;
}

}  // namespace syncsched::wheel
