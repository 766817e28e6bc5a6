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
// Levels. Level 0 has 4096 slots of 1 ms; five more levels have 64 slots each, of 4096 * 64^(k-1)
// ms at level k, so the wheel covers 2^42 ms (139 years) ahead of Now(). A timer sits at the level
// of the highest bit in which its deadline differs from Now() (as in Linux's classic wheel and
// wahern's timeout.c): level 0 holds the deadlines in Now()'s 4096 ms block, level 1 those in
// Now()'s 2^18 ms block but a later 4096 ms block, and so on. Hence every timer at level k is
// later than every timer at the levels below, and every level-0 slot holds a single deadline.
// Level 0 is wide so that a timer of a period up to a few seconds usually goes straight there,
// and every timer is cascaded one time fewer than with 64 slots. Deadlines beyond the levels wait
// in an overflow list; deadlines before Now() (armed after the fact, or by a callback re-arming
// into the past) wait in a min-heap of "overdue" timers.
//
// Slots are index arrays. Each timer owns a 16-byte entry in a slab indexed by its id (deadline,
// generation, current slot). A slot is a std::vector of 8-byte refs {id, generation}; arming
// pushes a ref, so arming does not allocate once the vectors have grown (they keep their capacity,
// except that a slot just fired or cascaded hands a large vector to a small pool of spares, which
// the next slot to fill takes, and a small one gives back capacity beyond 4x what it held). Walking
// a slot reads consecutive refs and prefetches the entries a few refs ahead: expiry at scale is
// bandwidth, not pointer chasing (see /work/shared/PERFORMANCE.md).
//
// Lazy cancel. Cancel() and re-Arm() only bump the entry's generation and the slot's live count;
// the old ref stays in its vector and is skipped when the slot is walked, because its generation
// or slot no longer matches the entry's (checking both makes a 32-bit generation wrap harmless).
// Stale refs are bounded: when a slot's live count drops to zero its vector is emptied, and when a
// push finds a vector of at least 64 refs of which fewer than half are live, the vector is
// compacted in place. Both are amortized O(1) per operation, and a slot never holds more than
// max(64, 2 * live) refs after a push.
//
// Time moves only in Advance(), which jumps instead of ticking: it finds the earliest occupied
// slot with count-trailing-zeros on per-level occupancy bitmaps (level 0 has a summary word over
// its 64 bitmap words). A level-0 slot is fired, its refs in order; a slot at a higher level is
// cascaded: Now() moves to the slot's start and its timers are re-placed relative to it, which
// puts each strictly lower. A timer is cascaded at most five times in its life, so expiry costs
// amortized O(1) per timer whatever the number armed. When the levels are empty, the overflow
// list is re-placed from the 2^42 ms block of its earliest deadline.
//
// Exact NextDeadline(). The occupancy bitmaps count live timers, not refs, so the first occupied
// level-0 slot gives the exact earliest deadline at once. Higher slots and the overflow list keep
// a lower bound of their live deadlines, exact until the timer holding it is cancelled or moved.
// The earliest deadline always lies in the first occupied slot of the lowest occupied level, so
// only that one "front" slot ever needs its minimum recomputed: a small one is scanned (and
// compacted on the way); a large one (>= 256 refs) is indexed once in a min-heap, kept while it
// stays the front, so that cancelling its timers in deadline order (a tenant deleting a cluster
// of schedules due at midnight) costs O(log n) per NextDeadline() rather than a scan each.
//
// Costs: Arm, Cancel, IsArmed, DeadlineOf O(1) (arming into the indexed front slot, O(log n));
// Advance O(1) amortized per fired timer plus O(levels) per jump; NextDeadline O(1), or amortized
// O(log n) after its earliest timer was cancelled. Memory: 16 bytes per id up to the largest id
// used, plus 8 bytes per ref (one per armed timer, up to twice that with stale refs, plus vector
// slack), plus 16 bytes per overdue timer and per timer of the indexed front slot, plus about
// 210 KB of fixed per-slot state.
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
  // Level 0: 2^12 slots of 1 ms. Levels 1..5: 64 slots each.
  static constexpr int kL0Bits = 12;
  static constexpr int kL0Slots = 1 << kL0Bits;
  static constexpr int kUpperBits = 6;
  static constexpr int kUpperSlots = 1 << kUpperBits;
  static constexpr int kLevels = 6;
  static constexpr int kHorizonBits = kL0Bits + kUpperBits * (kLevels - 1);  // 42
  // Slot numbers: level-0 slots, then level k >= 1 at kL0Slots + (k - 1) * 64 + index, then the
  // overflow list, then the overdue heap (which has no ref vector), then "not armed".
  static constexpr std::uint16_t kOverflowSlot = kL0Slots + kUpperSlots * (kLevels - 1);
  static constexpr std::uint16_t kOverdueSlot = kOverflowSlot + 1;
  static constexpr std::uint16_t kNoSlot = 0xFFFF;
  static constexpr int kNumRefLists = kOverflowSlot + 1;
  // A vector is compacted when it holds at least this many refs and fewer than half are live.
  static constexpr std::size_t kCompactMinRefs = 64;
  // A slot needing its minimum recomputed is scanned below this many refs and indexed in a heap
  // from this many on.
  static constexpr std::size_t kFrontHeapMinRefs = 256;
  // How many refs ahead a walk prefetches the entries.
  static constexpr std::size_t kPrefetchDistance = 16;
  // Ref vectors with at least this capacity are pooled when emptied; the pool keeps the
  // kMaxSpares largest.
  static constexpr std::size_t kSpareMinRefs = 4096;
  static constexpr std::size_t kMaxSpares = 2;

  // The lowest deadline bit that indexes level k's slots.
  static constexpr int LevelShift(int level) {
    return level == 0 ? 0 : kL0Bits + kUpperBits * (level - 1);
  }
  static constexpr std::uint16_t UpperSlot(int level, int index) {
    return static_cast<std::uint16_t>(kL0Slots + kUpperSlots * (level - 1) + index);
  }

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
  // Orders a std::*_heap of OverdueRef as a min-heap on ticks.
  struct Later {
    bool operator()(const OverdueRef& a, const OverdueRef& b) const { return a.ticks > b.ticks; }
  };
  // One slot of the wheel, or the overflow list.
  struct Slot {
    std::vector<Ref> refs;  // with stale refs
    std::size_t live = 0;   // armed timers
    // Levels >= 1 and overflow: a lower bound of the live deadlines, exact when min_exact.
    std::uint64_t min = 0;
    bool min_exact = false;
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
  void SetOccupied(std::uint16_t slot);
  void ClearOccupied(std::uint16_t slot);
  // The first occupied level-0 slot; precondition: there is one.
  int FirstLevel0Slot() const {
    const int word = std::countr_zero(l0_summary_);
    return word * 64 + std::countr_zero(l0_occupied_[word]);
  }
  // Takes an armed entry out of its slot's accounting (its ref goes stale once gen/slot change).
  void Unlink(const Entry& e);
  // Empties the ref vector of a slot just fired or cascaded, which held `held` refs: a large one
  // goes to spare_refs_, a small one keeps capacity up to about 4x what it held.
  void Recycle(std::vector<Ref>& refs, std::size_t held);
  // Drops stale refs of a ref list and makes its minimum exact.
  void Compact(std::uint16_t slot);
  // The exact earliest deadline of a ref list at level >= 1 or overflow with live timers.
  std::uint64_t ExactMin(std::uint16_t slot);
  // Compacts `slot` and indexes its live timers in front_heap_.
  void BuildFrontHeap(std::uint16_t slot);
  void DropFrontHeap() {
    front_slot_ = kNoSlot;
    front_heap_.clear();
  }
  void CompactOverdue();
  // Moves now_ to the start of slot `index` of `level` (>= 1) and re-places its timers.
  void Cascade(int level, int index);
  // If the overflow list's earliest 2^42 ms block starts at or before `target`, moves now_ there,
  // re-places the overflow timers and returns true.
  bool RehomeOverflow(std::uint64_t target);
  // Ends a walk of level-0 slot `index` (== now_ % kL0Slots) that stopped before ref `next`.
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
  std::vector<Slot> slots_;     // kNumRefLists, by slot number
  // Large ref vectors of slots emptied by a fire or cascade, handed to the next slot that starts
  // filling. Without it each slot keeps the capacity of its largest turn: at level 1 a turn
  // comes every 262 s, so 64 slots would each hold a buffer sized for a full 4 s of deadlines.
  std::vector<std::vector<Ref>> spare_refs_;
  // Occupancy: bit i of l0_occupied_[w]: level-0 slot 64 * w + i has live timers; bit w of
  // l0_summary_: l0_occupied_[w] != 0; bit i of upper_occupied_[k - 1]: slot i of level k does.
  std::array<std::uint64_t, kL0Slots / 64> l0_occupied_{};
  std::uint64_t l0_summary_ = 0;
  std::array<std::uint64_t, kLevels - 1> upper_occupied_{};
  std::vector<OverdueRef> overdue_;  // min-heap on ticks, with stale refs
  std::size_t overdue_live_ = 0;
  // A min-heap of the timers of one large ref list (level >= 1 or overflow) whose minimum had to
  // be recomputed, so that cancelling its earliest timers one by one costs O(log n) each, not a
  // scan each. While front_slot_ names it, every ref pushed to that list is pushed here too.
  std::uint16_t front_slot_ = kNoSlot;
  std::vector<OverdueRef> front_heap_;
  std::uint64_t now_;
  std::size_t size_ = 0;
  // After a stop at max_fires: refs [0, head_) of level-0 slot (now_ % kL0Slots) are consumed.
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
    if (l0_summary_ != 0) {
      const int index = FirstLevel0Slot();
      const std::uint64_t t = (now_ & ~std::uint64_t{kL0Slots - 1}) | std::uint64_t(index);
      if (t > target) break;
      now_ = t;
      if (FireSlot(index, fn, fires, max_fires)) return fires;
      continue;
    }
    int level = 1;
    while (level < kLevels && upper_occupied_[level - 1] == 0) ++level;
    if (level < kLevels) {
      const int index = std::countr_zero(upper_occupied_[level - 1]);
      const int shift = LevelShift(level + 1);
      const std::uint64_t start =
          ((now_ >> shift) << shift) | (std::uint64_t(index) << LevelShift(level));
      if (start > target) break;
      Cascade(level, index);
      continue;
    }
    if (slots_[kOverflowSlot].live == 0 || !RehomeOverflow(target)) break;
  }
  // Nothing is due in (now_, target]; moving now_ there keeps every timer's level valid.
  now_ = target;
  return fires;
}

template <typename Fn>
bool TimerWheel::FireOverdue(Fn& fn, std::size_t& fires, std::size_t max_fires) {
  while (!overdue_.empty()) {
    const OverdueRef top = overdue_.front();
    std::pop_heap(overdue_.begin(), overdue_.end(), Later{});
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
  Slot& s = slots_[slot];
  std::vector<Ref>& refs = s.refs;  // may grow while fn runs: index it, never hold pointers
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
      if (--s.live == 0) ClearOccupied(slot);
      fn(ref.id, deadline);
      if (++fires == max_fires || (overdue_live_ > 0 && FireOverdue(fn, fires, max_fires))) {
        StopWalk(index, i + 1);
        return true;
      }
    }
  } catch (...) {
    StopWalk(index, i + 1);
    throw;
  }
  walking_ = kNoSlot;
  Recycle(refs, refs.size());  // every ref is now fired or stale, and s.live == 0
  return false;
}

}  // namespace syncsched::wheel
