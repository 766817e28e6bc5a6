#include "wheel/timer_wheel.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <utility>
#include <vector>

namespace syncsched::wheel {
namespace {

using Fired = std::vector<std::pair<TimerId, std::int64_t>>;

constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();
constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kHour = 3'600'000;
constexpr std::int64_t kDay = 24 * kHour;

// Advances and records every call.
Fired AdvanceAll(TimerWheel& w, std::int64_t now, std::size_t max_fires = SIZE_MAX) {
  Fired fired;
  const std::size_t n = w.Advance(
      now, [&](TimerId id, std::int64_t d) { fired.emplace_back(id, d); }, max_fires);
  EXPECT_EQ(n, fired.size());
  return fired;
}

TEST(TimerWheelTest, EmptyWheel) {
  TimerWheel w(42);
  EXPECT_EQ(w.Now(), 42);
  EXPECT_EQ(w.size(), 0u);
  EXPECT_FALSE(w.NextDeadline().has_value());
  EXPECT_FALSE(w.IsArmed(0));
  EXPECT_FALSE(w.IsArmed(1000));
  EXPECT_FALSE(w.Cancel(7));
  EXPECT_TRUE(AdvanceAll(w, 1000).empty());
  EXPECT_EQ(w.Now(), 1000);
}

TEST(TimerWheelTest, ArmFiresAtDeadline) {
  TimerWheel w;
  w.Arm(3, 100);
  EXPECT_TRUE(w.IsArmed(3));
  EXPECT_EQ(w.DeadlineOf(3), 100);
  EXPECT_EQ(w.size(), 1u);
  EXPECT_TRUE(AdvanceAll(w, 99).empty());
  EXPECT_EQ(w.Now(), 99);
  EXPECT_EQ(AdvanceAll(w, 100), (Fired{{3, 100}}));
  EXPECT_FALSE(w.IsArmed(3));
  EXPECT_EQ(w.size(), 0u);
  EXPECT_EQ(w.Now(), 100);
}

TEST(TimerWheelTest, ArmingAnArmedIdMovesIt) {
  TimerWheel w;
  w.Arm(1, 500);
  w.Arm(1, 70);
  EXPECT_EQ(w.size(), 1u);
  EXPECT_EQ(w.DeadlineOf(1), 70);
  EXPECT_EQ(w.NextDeadline(), 70);
  w.Arm(1, 9000);
  EXPECT_EQ(w.NextDeadline(), 9000);
  EXPECT_EQ(AdvanceAll(w, 10'000), (Fired{{1, 9000}}));
}

TEST(TimerWheelTest, CancelReturnsWhetherArmed) {
  TimerWheel w;
  w.Arm(5, 10);
  EXPECT_TRUE(w.Cancel(5));
  EXPECT_FALSE(w.Cancel(5));
  EXPECT_FALSE(w.IsArmed(5));
  EXPECT_EQ(w.size(), 0u);
  EXPECT_FALSE(w.NextDeadline().has_value());
  EXPECT_TRUE(AdvanceAll(w, 100).empty());
  w.Arm(5, 200);  // re-arm after cancel
  EXPECT_EQ(AdvanceAll(w, 300), (Fired{{5, 200}}));
}

TEST(TimerWheelTest, FiresInDeadlineOrderAcrossLevels) {
  TimerWheel w;
  const std::vector<std::int64_t> deadlines = {5,
                                               63,
                                               64,
                                               65,
                                               4095,
                                               4096,
                                               4097,
                                               262'143,
                                               262'144,
                                               kHour,
                                               kDay,
                                               31 * kDay,
                                               (std::int64_t{1} << 36) - 1,
                                               std::int64_t{1} << 36,
                                               1000 * kDay,
                                               (std::int64_t{1} << 42) - 1,
                                               std::int64_t{1} << 42,
                                               (std::int64_t{1} << 42) + 1,
                                               1'000'000 * kDay,
                                               0,
                                               1};
  for (TimerId id = 0; id < deadlines.size(); ++id) w.Arm(id, deadlines[id]);
  Fired fired = AdvanceAll(w, 2'000'000 * kDay);
  ASSERT_EQ(fired.size(), deadlines.size());
  for (std::size_t i = 1; i < fired.size(); ++i) EXPECT_LE(fired[i - 1].second, fired[i].second);
  for (const auto& [id, d] : fired) EXPECT_EQ(d, deadlines[id]);
}

TEST(TimerWheelTest, NextDeadlineIsExact) {
  TimerWheel w(1000);
  EXPECT_FALSE(w.NextDeadline());
  w.Arm(1, 1000 + 3 * kHour + 17);
  EXPECT_EQ(w.NextDeadline(), 1000 + 3 * kHour + 17);
  w.Arm(2, 1000 + 3 * kHour + 5);  // same high-level slot, earlier
  EXPECT_EQ(w.NextDeadline(), 1000 + 3 * kHour + 5);
  w.Arm(3, 1000 + 3 * kHour + 9);
  EXPECT_TRUE(w.Cancel(2));  // cancel the minimum of a high-level slot
  EXPECT_EQ(w.NextDeadline(), 1000 + 3 * kHour + 9);
  w.Arm(3, 1000 + 3 * kHour + 400);  // move the minimum within the slot
  EXPECT_EQ(w.NextDeadline(), 1000 + 3 * kHour + 17);
  w.Arm(4, 1010);
  EXPECT_EQ(w.NextDeadline(), 1010);
  w.Arm(5, 900);  // before Now()
  EXPECT_EQ(w.NextDeadline(), 900);
  w.Cancel(5);
  w.Cancel(4);
  EXPECT_EQ(w.NextDeadline(), 1000 + 3 * kHour + 17);
  // After advancing partway the answer stays exact.
  EXPECT_TRUE(AdvanceAll(w, 1000 + 3 * kHour).empty());
  EXPECT_EQ(w.NextDeadline(), 1000 + 3 * kHour + 17);
  w.Cancel(1);
  EXPECT_EQ(w.NextDeadline(), 1000 + 3 * kHour + 400);
  w.Cancel(3);
  EXPECT_FALSE(w.NextDeadline());
}

TEST(TimerWheelTest, NextDeadlineExactWithManyTimersInOneSlot) {
  TimerWheel w;
  // 10'000 timers in one level-2 slot (262'144 ms wide), cancelled from the earliest.
  const std::int64_t base = 5 * 262'144;
  for (TimerId id = 0; id < 10'000; ++id) w.Arm(id, base + 10'000 - id);
  for (TimerId id = 9'999; id > 5'000; --id) {
    ASSERT_EQ(w.NextDeadline(), base + 10'000 - id);
    ASSERT_TRUE(w.Cancel(id));
  }
  EXPECT_EQ(w.NextDeadline(), base + 10'000 - 5'000);
}

// Regression: cancelling the earliest timer of a large far slot, then asking NextDeadline(), once
// cost a scan of the slot each time (quadratic overall). 100'000 rounds must take milliseconds.
TEST(TimerWheelTest, CancellingEarliestOfLargeSlotOneByOneIsNotQuadratic) {
  TimerWheel w;
  constexpr TimerId kN = 100'000;
  const std::int64_t base = 3 * (std::int64_t{1} << 30);  // one level-4 slot
  for (TimerId id = 0; id < kN; ++id) w.Arm(id, base + 7 * static_cast<std::int64_t>(id));
  for (TimerId id = 0; id < kN; ++id) {
    ASSERT_EQ(w.NextDeadline(), base + 7 * static_cast<std::int64_t>(id));
    if (id % 1000 == 0) {
      w.Arm(kN + id, base + 7 * static_cast<std::int64_t>(id) + 3);  // arms into the indexed slot
      ASSERT_EQ(w.NextDeadline(), base + 7 * static_cast<std::int64_t>(id));
      ASSERT_TRUE(w.Cancel(kN + id));
    }
    ASSERT_TRUE(w.Cancel(id));
  }
  EXPECT_FALSE(w.NextDeadline());
  // The same deadline shared by many timers (a cluster "daily at midnight").
  for (TimerId id = 0; id < kN; ++id) w.Arm(id, 5 * kDay);
  for (TimerId id = 0; id + 1 < kN; ++id) {
    ASSERT_TRUE(w.Cancel(id));
    ASSERT_EQ(w.NextDeadline(), 5 * kDay);
  }
  EXPECT_EQ(AdvanceAll(w, 6 * kDay), (Fired{{kN - 1, 5 * kDay}}));
}

TEST(TimerWheelTest, DeadlineAtOrBeforeNowIsDueAtNextAdvance) {
  TimerWheel w(1000);
  w.Arm(1, 1000);
  w.Arm(2, 999);
  w.Arm(3, kMin);
  w.Arm(4, 500);
  EXPECT_EQ(w.NextDeadline(), kMin);
  // Advance to the same time fires them, in deadline order.
  EXPECT_EQ(AdvanceAll(w, 1000), (Fired{{3, kMin}, {4, 500}, {2, 999}, {1, 1000}}));
  EXPECT_EQ(w.Now(), 1000);
  // Advancing backwards does not move time, but still fires what is due.
  w.Arm(5, 10);
  EXPECT_EQ(AdvanceAll(w, 0), (Fired{{5, 10}}));
  EXPECT_EQ(w.Now(), 1000);
}

TEST(TimerWheelTest, MaxFiresStopsAtLastFiredDeadline) {
  TimerWheel w;
  for (TimerId id = 0; id < 10; ++id) w.Arm(id, 100 + 10 * id);
  w.Arm(10, 120);  // ties with id 2
  Fired fired = AdvanceAll(w, 1000, 3);
  ASSERT_EQ(fired.size(), 3u);
  EXPECT_EQ(fired[0], (std::pair<TimerId, std::int64_t>{0, 100}));
  EXPECT_EQ(fired[1], (std::pair<TimerId, std::int64_t>{1, 110}));
  EXPECT_EQ(fired[2].second, 120);
  EXPECT_EQ(w.Now(), 120);  // the deadline of the last fired timer
  EXPECT_EQ(w.size(), 8u);
  EXPECT_EQ(w.NextDeadline(), 120);  // the other timer at 120 stays due
  fired = AdvanceAll(w, 1000, 1);
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_EQ(fired[0].second, 120);
  EXPECT_EQ(w.Now(), 120);
  EXPECT_EQ(AdvanceAll(w, 1000, 0).size(), 0u);  // max_fires 0 does nothing
  EXPECT_EQ(w.Now(), 120);
  fired = AdvanceAll(w, 1000);
  EXPECT_EQ(fired.size(), 7u);
  EXPECT_EQ(w.Now(), 1000);
}

TEST(TimerWheelTest, MaxFiresStopInsideLargeSlotResumes) {
  TimerWheel w;
  for (TimerId id = 0; id < 1000; ++id) w.Arm(id, 50);
  std::size_t total = 0;
  std::set<TimerId> seen;
  while (total < 1000) {
    const std::size_t n = w.Advance(
        100,
        [&](TimerId id, std::int64_t d) {
          EXPECT_EQ(d, 50);
          seen.insert(id);
        },
        7);
    ASSERT_GT(n, 0u);
    total += n;
    if (total < 1000) {
      EXPECT_EQ(w.Now(), 50);
      // Cancels and arms in the stopped slot keep working.
      if (total == 700) {
        w.Arm(5000, 50);
        w.Cancel(5000);
      }
    }
  }
  EXPECT_EQ(seen.size(), 1000u);
  EXPECT_TRUE(AdvanceAll(w, 100).empty());
  EXPECT_EQ(w.Now(), 100);
}

TEST(TimerWheelTest, RearmInsideFnIsPeriodic) {
  TimerWheel w;
  w.Arm(0, 1000);
  w.Arm(1, 250);
  std::map<TimerId, int> count;
  const std::size_t n = w.Advance(10'000, [&](TimerId id, std::int64_t d) {
    ++count[id];
    w.Arm(id, d + (id == 0 ? 1000 : 250));
  });
  EXPECT_EQ(n, 10u + 40u);
  EXPECT_EQ(count[0], 10);
  EXPECT_EQ(count[1], 40);
  EXPECT_EQ(w.DeadlineOf(0), 11'000);
  EXPECT_EQ(w.DeadlineOf(1), 10'250);
  EXPECT_EQ(w.NextDeadline(), 10'250);
}

TEST(TimerWheelTest, RearmAtSameDeadlineFiresAgainInSameCall) {
  TimerWheel w;
  w.Arm(1, 10);
  int calls = 0;
  const std::size_t n = w.Advance(20, [&](TimerId id, std::int64_t d) {
    if (++calls < 5) w.Arm(id, d);
  });
  EXPECT_EQ(n, 5u);
  EXPECT_FALSE(w.IsArmed(1));
  // Bounded by max_fires when it never stops re-arming.
  w.Arm(2, 30);
  EXPECT_EQ(w.Advance(
                40, [&](TimerId id, std::int64_t d) { w.Arm(id, d); }, 100),
            100u);
  EXPECT_EQ(w.Now(), 30);
  EXPECT_TRUE(w.IsArmed(2));
}

TEST(TimerWheelTest, ArmBeforeNowInsideFnFiresNextInSameCall) {
  TimerWheel w;
  w.Arm(1, 100);
  w.Arm(2, 100);
  w.Arm(3, 200);
  Fired fired;
  w.Advance(1000, [&](TimerId id, std::int64_t d) {
    fired.emplace_back(id, d);
    if (id == 1 || id == 2) w.Arm(id + 10, 50 - static_cast<std::int64_t>(id));
  });
  ASSERT_EQ(fired.size(), 5u);
  // Each overdue timer fires right after the call that armed it (it is then the earliest).
  EXPECT_EQ(fired[0].second, 100);
  EXPECT_EQ(fired[1], (std::pair<TimerId, std::int64_t>{fired[0].first + 10,
                                                        50 - std::int64_t{fired[0].first}}));
  EXPECT_EQ(fired[2].second, 100);
  EXPECT_EQ(fired[4], (std::pair<TimerId, std::int64_t>{3, 200}));
}

TEST(TimerWheelTest, CancelAndArmOthersInsideFn) {
  TimerWheel w;
  for (TimerId id = 0; id < 100; ++id) w.Arm(id, 100);  // one slot
  w.Arm(100, 150);
  Fired fired;
  w.Advance(1000, [&](TimerId id, std::int64_t d) {
    fired.emplace_back(id, d);
    if (id % 2 == 0 && id < 100) {
      w.Cancel(id + 1);       // a later ref of the slot being walked, if not yet fired
      w.Arm(id + 1000, 100);  // appended to the slot being walked
    }
    if (id == 100) w.Cancel(100);  // cancelling the fired id is a no-op
  });
  std::set<TimerId> ids;
  for (const auto& [id, d] : fired) {
    EXPECT_TRUE(ids.insert(id).second) << id;
    EXPECT_EQ(d, id == 100 ? 150 : 100);
  }
  // The first fired id cancels its successor; which ids fire depends on the walk order, but every
  // armed timer fires exactly once and nothing stays armed.
  EXPECT_EQ(w.size(), 0u);
  EXPECT_TRUE(ids.count(100));
  for (TimerId id : ids) {
    if (id < 100 && id % 2 == 0) {
      EXPECT_TRUE(ids.count(id + 1000));
    }
  }
}

TEST(TimerWheelTest, FarDeadlinesBeyondHorizon) {
  TimerWheel w;
  const std::int64_t horizon = std::int64_t{1} << 42;  // about 139 years
  w.Arm(1, 1000 * 365 * kDay);
  w.Arm(2, horizon + 5);
  w.Arm(3, kMax);
  w.Arm(4, 3 * horizon + 1);
  w.Arm(5, 40 * kDay);
  EXPECT_EQ(w.NextDeadline(), 40 * kDay);
  w.Cancel(5);
  EXPECT_EQ(w.NextDeadline(), horizon + 5);
  w.Cancel(2);
  EXPECT_EQ(w.NextDeadline(), 3 * horizon + 1);
  EXPECT_TRUE(AdvanceAll(w, 3 * horizon).empty());
  EXPECT_EQ(w.NextDeadline(), 3 * horizon + 1);
  EXPECT_EQ(AdvanceAll(w, 3 * horizon + 1), (Fired{{4, 3 * horizon + 1}}));
  EXPECT_EQ(AdvanceAll(w, kMax), (Fired{{1, 1000 * 365 * kDay}, {3, kMax}}));
  EXPECT_EQ(w.Now(), kMax);
  w.Arm(6, kMax);
  w.Arm(7, kMin);
  EXPECT_EQ(AdvanceAll(w, kMax), (Fired{{7, kMin}, {6, kMax}}));
}

TEST(TimerWheelTest, Int64Extremes) {
  TimerWheel w(kMin);
  EXPECT_EQ(w.Now(), kMin);
  w.Arm(0, kMin);
  w.Arm(1, kMin + 1);
  w.Arm(2, -1);
  w.Arm(3, 0);
  w.Arm(4, kMax - 1);
  w.Arm(5, kMax);
  EXPECT_EQ(w.NextDeadline(), kMin);
  EXPECT_EQ(AdvanceAll(w, kMin), (Fired{{0, kMin}}));
  EXPECT_EQ(AdvanceAll(w, -1), (Fired{{1, kMin + 1}, {2, -1}}));
  EXPECT_EQ(w.NextDeadline(), 0);
  EXPECT_EQ(AdvanceAll(w, kMax), (Fired{{3, 0}, {4, kMax - 1}, {5, kMax}}));
  EXPECT_EQ(w.Now(), kMax);
  EXPECT_FALSE(w.NextDeadline());
}

TEST(TimerWheelTest, NegativeTimesAcrossZero) {
  TimerWheel w(-100'000);
  for (TimerId id = 0; id < 200; ++id) w.Arm(id, -100'000 + 1000 * static_cast<std::int64_t>(id));
  Fired fired = AdvanceAll(w, 100'000);
  ASSERT_EQ(fired.size(), 200u);
  for (TimerId id = 0; id < 200; ++id) EXPECT_EQ(fired[id].first, id);
}

TEST(TimerWheelTest, StaleRefsStayBounded) {
  TimerWheel w;
  for (TimerId id = 0; id < 100; ++id) w.Arm(id, 10 * kHour);
  const std::size_t before = w.MemoryBytes();
  // Half a million moves of one timer between far slots would leave as many stale refs without the
  // compaction rule.
  for (int i = 0; i < 500'000; ++i) w.Arm(7, 2 * kHour + (i % 3) * kHour);
  EXPECT_LT(w.MemoryBytes(), before + 64 * 1024);
  // Cancel-heavy use too.
  for (int i = 0; i < 500'000; ++i) {
    w.Arm(1000, 5 * kHour);
    w.Cancel(1000);
  }
  EXPECT_LT(w.MemoryBytes(), before + 128 * 1024);
  EXPECT_EQ(w.size(), 100u);
  Fired fired = AdvanceAll(w, 11 * kHour);
  EXPECT_EQ(fired.size(), 100u);
}

TEST(TimerWheelTest, StaleOverdueRefsStayBounded) {
  TimerWheel w(1000);
  const std::size_t empty = w.MemoryBytes();
  w.Arm(1, 10);
  for (int i = 0; i < 100'000; ++i) w.Arm(2, i % 500);
  EXPECT_LT(w.MemoryBytes(), empty + 64 * 1024u);
  EXPECT_EQ(w.NextDeadline(), 10);
  EXPECT_EQ(AdvanceAll(w, 1000), (Fired{{1, 10}, {2, 99'999 % 500}}));
}

// Periodic timers as the engine arms them: every timer fires exactly at phase + k * period, and
// the memory held stays proportional to the timers (slot vectors are recycled across turns).
TEST(TimerWheelTest, PeriodicLoadFiresExactlyAndKeepsMemoryBounded) {
  constexpr TimerId kN = 20'000;
  constexpr std::int64_t kPeriods[] = {1'000, 10'000};
  constexpr std::int64_t kEnd = 60'000;
  TimerWheel w;
  const std::size_t empty = w.MemoryBytes();
  std::mt19937_64 rng(7);
  std::vector<std::int64_t> next(kN);
  std::vector<int> count(kN);
  for (TimerId id = 0; id < kN; ++id) {
    next[id] = 1 + static_cast<std::int64_t>(rng() % kPeriods[id % 2]);
    w.Arm(id, next[id]);
  }
  std::size_t peak = 0;
  for (std::int64_t now = 0; now < kEnd + 7; now += 7) {
    w.Advance(std::min(now, kEnd), [&](TimerId id, std::int64_t d) {
      ASSERT_EQ(d, next[id]);
      ++count[id];
      next[id] = d + kPeriods[id % 2];
      w.Arm(id, next[id]);
    });
    peak = std::max(peak, w.MemoryBytes());
  }
  for (TimerId id = 0; id < kN; ++id) {
    ASSERT_EQ(count[id], (kEnd - (next[id] - count[id] * kPeriods[id % 2])) / kPeriods[id % 2] + 1)
        << id;
  }
  // About 90 bytes per timer at this small N (the 4096 level-0 vectors keep a little capacity
  // each); a leak of one stale ref per fire would add 5 MB.
  EXPECT_LT(peak, empty + kN * 128u);
}

TEST(TimerWheelTest, ReserveAndMemoryBytes) {
  TimerWheel w;
  const std::size_t empty = w.MemoryBytes();  // fixed per-slot state
  EXPECT_LT(empty, 512 * 1024u);
  w.Reserve(1000);
  EXPECT_GE(w.MemoryBytes(), empty + 1000 * 16u);
  for (TimerId id = 0; id < 1000; ++id) w.Arm(id, 100'000 + id);
  EXPECT_GE(w.MemoryBytes(), empty + 1000 * (16u + 8u));
  EXPECT_LT(w.MemoryBytes(), empty + 1000 * 64u);
}

TEST(TimerWheelTest, LargeIdGrowsTheSlab) {
  TimerWheel w;
  w.Arm(100'000, 5);
  EXPECT_TRUE(w.IsArmed(100'000));
  EXPECT_FALSE(w.IsArmed(99'999));
  EXPECT_EQ(AdvanceAll(w, 5), (Fired{{100'000, 5}}));
}

TEST(TimerWheelTest, ClearDisarmsEverything) {
  TimerWheel w(10);
  for (TimerId id = 0; id < 100; ++id) w.Arm(id, 10 + 1000 * static_cast<std::int64_t>(id) - 50);
  w.Clear();
  EXPECT_EQ(w.size(), 0u);
  EXPECT_FALSE(w.NextDeadline());
  EXPECT_FALSE(w.IsArmed(3));
  EXPECT_TRUE(AdvanceAll(w, 1'000'000).empty());
  w.Arm(3, 2'000'000);
  EXPECT_EQ(AdvanceAll(w, 3'000'000), (Fired{{3, 2'000'000}}));
}

TEST(TimerWheelTest, ExceptionFromFnLeavesWheelUsable) {
  TimerWheel w;
  for (TimerId id = 0; id < 10; ++id) w.Arm(id, 100);
  w.Arm(10, 200);
  int calls = 0;
  EXPECT_THROW(w.Advance(1000,
                         [&](TimerId, std::int64_t) {
                           if (++calls == 4) throw std::runtime_error("boom");
                         }),
               std::runtime_error);
  EXPECT_EQ(w.Now(), 100);
  EXPECT_EQ(w.size(), 7u);  // the throwing call's timer stays disarmed
  Fired fired = AdvanceAll(w, 1000);
  EXPECT_EQ(fired.size(), 7u);
  EXPECT_EQ(fired.back(), (std::pair<TimerId, std::int64_t>{10, 200}));
}

// ---- Differential test against a reference model. ----

class Model {
 public:
  void Arm(TimerId id, std::int64_t d) {
    Cancel(id);
    by_id_[id] = d;
    by_deadline_.insert({d, id});
  }
  bool Cancel(TimerId id) {
    auto it = by_id_.find(id);
    if (it == by_id_.end()) return false;
    by_deadline_.erase({it->second, id});
    by_id_.erase(it);
    return true;
  }
  std::optional<TimerId> EarliestId() const {
    if (by_deadline_.empty()) return std::nullopt;
    return by_deadline_.begin()->second;
  }
  std::optional<std::int64_t> Next() const {
    if (by_deadline_.empty()) return std::nullopt;
    return by_deadline_.begin()->first;
  }
  const std::map<TimerId, std::int64_t>& by_id() const { return by_id_; }
  std::size_t size() const { return by_id_.size(); }

 private:
  std::map<TimerId, std::int64_t> by_id_;
  std::set<std::pair<std::int64_t, TimerId>> by_deadline_;
};

std::int64_t SatAdd(std::int64_t a, std::int64_t b) {
  if (b > 0 && a > kMax - b) return kMax;
  if (b < 0 && a < kMin - b) return kMin;
  return a + b;
}

class Differential {
 public:
  // `clustered`: nearly all deadlines fall in one far, narrow window, making a large front slot
  // whose earliest timers get cancelled (the indexed front slot).
  Differential(std::uint64_t seed, std::int64_t start, TimerId ids, bool clustered)
      : rng_(seed), wheel_(start), ids_(ids), clustered_(clustered) {}

  TimerId RandomId() { return std::uniform_int_distribution<TimerId>(0, ids_ - 1)(rng_); }
  std::uint64_t Below(std::uint64_t n) {
    return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng_);
  }

  // A deadline relative to `base`, mixing every distance class.
  std::int64_t RandomDeadline(std::int64_t base) {
    if (clustered_ && Below(100) < 98) {
      if (cluster_ <= wheel_.Now()) {
        cluster_ = SatAdd(wheel_.Now(), (std::int64_t{1} << 30) * (1 + Below(3)));
      }
      return SatAdd(cluster_, static_cast<std::int64_t>(Below(20'000)));
    }
    switch (Below(16)) {
      case 0:
        return SatAdd(base, -static_cast<std::int64_t>(Below(5000)));  // past
      case 1:
        return base;
      case 2:
      case 3:
      case 4:
        return SatAdd(base, static_cast<std::int64_t>(Below(64)));
      case 5:
      case 6:
      case 7:
        return SatAdd(base, static_cast<std::int64_t>(Below(5000)));
      case 8:
      case 9:
        return SatAdd(base, static_cast<std::int64_t>(Below(2 * kHour)));
      case 10:
        return SatAdd(base, static_cast<std::int64_t>(Below(std::uint64_t{1} << 40)));
      case 11:
        // Around powers of two, among them the boundaries of the levels.
        return SatAdd(base,
                      (std::int64_t{1} << Below(45)) + static_cast<std::int64_t>(Below(3)) - 1);
      case 12:
        return static_cast<std::int64_t>(rng_());  // anywhere
      case 13:
        return Below(2) ? kMax : kMin;
      default:
        return SatAdd(base, static_cast<std::int64_t>(Below(200)));
    }
  }

  void CheckNext() {
    ASSERT_EQ(wheel_.NextDeadline(), model_.Next());
    ASSERT_EQ(wheel_.size(), model_.size());
  }

  void ArmOne(TimerId id, std::int64_t d) {
    wheel_.Arm(id, d);
    model_.Arm(id, d);
  }

  void CancelOne(TimerId id) { ASSERT_EQ(wheel_.Cancel(id), model_.Cancel(id)); }

  void AdvanceStep() {
    std::int64_t target;
    // Clustered runs rarely jump far, so that the cluster stays armed and large for a while.
    switch (clustered_ && Below(50) != 0 ? 5 + Below(5) : Below(10)) {
      case 0:
        target = wheel_.Now();
        break;
      case 1:
        target = SatAdd(wheel_.Now(), -static_cast<std::int64_t>(Below(100)));  // backwards
        break;
      case 2:
        target = SatAdd(wheel_.Now(), static_cast<std::int64_t>(Below(std::uint64_t{1} << 42)));
        break;
      case 3:
        // Jump to just past the next deadline, whatever its distance.
        target =
            model_.Next() ? std::max(wheel_.Now(), SatAdd(*model_.Next(), Below(3))) : wheel_.Now();
        break;
      case 4:
        target = SatAdd(wheel_.Now(), static_cast<std::int64_t>(Below(10 * kHour)));
        break;
      default:
        target = SatAdd(wheel_.Now(), static_cast<std::int64_t>(Below(300)));
    }
    const std::size_t max_fires = Below(4) == 0 ? 1 + Below(20) : SIZE_MAX;
    const std::int64_t before = wheel_.Now();
    std::optional<std::int64_t> last;  // the largest deadline fired
    std::size_t calls = 0;
    const std::size_t n = wheel_.Advance(
        target,
        [&](TimerId id, std::int64_t d) {
          ++calls;
          // The fired timer is the earliest armed one, with the deadline it was armed at.
          ASSERT_LE(d, std::max(target, before));
          ASSERT_EQ(model_.Next(), d);
          auto it = model_.by_id().find(id);
          ASSERT_NE(it, model_.by_id().end());
          ASSERT_EQ(it->second, d);
          model_.Cancel(id);
          ASSERT_FALSE(wheel_.IsArmed(id));
          last = std::max(last.value_or(d), d);
          const std::uint64_t action = Below(20);
          if (action < 6) {
            ArmOne(id, SatAdd(d, 1 + static_cast<std::int64_t>(Below(action < 3 ? 100 : 100'000))));
          } else if (action == 6) {
            ArmOne(RandomId(), RandomDeadline(wheel_.Now()));
          } else if (action == 7) {
            CancelOne(RandomId());
          } else if (action == 8) {
            ArmOne(RandomId(), d);  // same deadline: fires in this call
          } else if (action == 9) {
            CheckNext();
            ASSERT_EQ(wheel_.Now(), std::max(before, *last));
          }
        },
        max_fires);
    ASSERT_EQ(n, calls);
    ASSERT_LE(n, max_fires);
    if (n < max_fires) {
      ASSERT_EQ(wheel_.Now(), std::max(before, target));
      if (model_.Next()) {
        ASSERT_GT(*model_.Next(), wheel_.Now());
      }
    } else {
      ASSERT_TRUE(last.has_value());
      ASSERT_EQ(wheel_.Now(), std::max(before, *last));
    }
    total_fires_ += n;
  }

  void Step() {
    const std::uint64_t op = Below(100);
    if (op < 40) {
      ArmOne(RandomId(), RandomDeadline(wheel_.Now()));
    } else if (op < 55) {
      if (clustered_ && model_.EarliestId() && Below(2) == 0) {
        CancelOne(*model_.EarliestId());  // the pattern that needs the indexed front slot
        CheckNext();
      } else {
        CancelOne(RandomId());
      }
    } else if (op < 65) {
      // Re-arm an armed timer.
      const TimerId id = RandomId();
      if (wheel_.IsArmed(id)) ArmOne(id, RandomDeadline(wheel_.DeadlineOf(id)));
    } else if (op < 75) {
      const TimerId id = RandomId();
      ASSERT_EQ(wheel_.IsArmed(id), model_.by_id().count(id) == 1);
      if (wheel_.IsArmed(id)) {
        ASSERT_EQ(wheel_.DeadlineOf(id), model_.by_id().at(id));
      }
    } else if (op < 85) {
      CheckNext();
    } else {
      AdvanceStep();
    }
  }

  void Run(int steps) {
    for (int i = 0; i < steps; ++i) {
      ASSERT_NO_FATAL_FAILURE(Step()) << "step " << i;
    }
    // Drain everything at the end.
    std::size_t n = wheel_.Advance(kMax, [&](TimerId id, std::int64_t d) {
      ASSERT_EQ(model_.Next(), d);
      ASSERT_TRUE(model_.Cancel(id));
    });
    total_fires_ += n;
    ASSERT_EQ(model_.size(), 0u);
    ASSERT_EQ(wheel_.size(), 0u);
    ASSERT_FALSE(wheel_.NextDeadline());
  }

  std::size_t total_fires() const { return total_fires_; }

 private:
  std::mt19937_64 rng_;
  TimerWheel wheel_;
  Model model_;
  TimerId ids_;
  bool clustered_;
  std::int64_t cluster_ = kMin;
  std::size_t total_fires_ = 0;
};

struct DiffCase {
  std::uint64_t seed;
  std::int64_t start;
  TimerId ids;
  bool clustered = false;
};

class TimerWheelDifferentialTest : public ::testing::TestWithParam<DiffCase> {};

TEST_P(TimerWheelDifferentialTest, MatchesReferenceModel) {
  const DiffCase& c = GetParam();
  SCOPED_TRACE(::testing::Message() << "seed=" << c.seed << " start=" << c.start << " ids=" << c.ids
                                    << " clustered=" << c.clustered);
  Differential diff(c.seed, c.start, c.ids, c.clustered);
  diff.Run(200'000);
  EXPECT_GT(diff.total_fires(), 1000u);
}

INSTANTIATE_TEST_SUITE_P(Seeds, TimerWheelDifferentialTest,
                         ::testing::Values(DiffCase{1, 0, 64}, DiffCase{2, 0, 1000},
                                           DiffCase{3, 1'700'000'000'000, 4000},
                                           DiffCase{4, -5'000'000, 300}, DiffCase{5, kMin, 500},
                                           DiffCase{6, kMax - (std::int64_t{1} << 45), 2000},
                                           DiffCase{7, (std::int64_t{1} << 42) - 3, 100},
                                           DiffCase{8, 123'456'789, 20'000},
                                           DiffCase{9, 0, 5'000, true},
                                           DiffCase{10, -77'777, 30'000, true}),
                         [](const ::testing::TestParamInfo<DiffCase>& info) {
                           return "seed" + std::to_string(info.param.seed);
                         });

}  // namespace
}  // namespace syncsched::wheel
