// syncschedd suspended (SIGSTOP) past several slots and resumed (SIGCONT): the gap is downtime,
// so each schedule gets one catch-up run (its latest missed slot), not a burst, and its grid stays
// on anchor + k * frequency (issue 11, "Time").
#include <gtest/gtest.h>

#include <ctime>
#include <map>

#include "test_util.h"

namespace syncsched::daemon {
namespace {

using syncsched::testing::Client;
using syncsched::testing::Json;
using syncsched::testing::ListeningPort;
using syncsched::testing::Process;
using syncsched::testing::ReadLines;
using syncsched::testing::TempDir;
using syncsched::testing::WaitFor;
using syncsched::testing::WriteFile;
using namespace std::chrono_literals;

using Ms = std::int64_t;  // milliseconds since the epoch

// "2026-01-01T00:00:01.234Z" -> ms since the epoch (-1 if malformed).
Ms ParseIso(const std::string& s) {
  std::tm tm{};
  int ms = 0;
  if (std::sscanf(s.c_str(), "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7) {
    return -1;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<Ms>(timegm(&tm)) * 1000 + ms;
}

Ms WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct RunLine {
  Ms slot;
  std::string run_id;
};

// runs.txt: "<connection> <slot> <run id>" per run, by connection.
std::map<std::string, std::vector<RunLine>> ReadRuns(const std::string& path) {
  std::map<std::string, std::vector<RunLine>> runs;
  for (const std::string& line : ReadLines(path)) {
    std::istringstream in(line);
    std::string conn, slot, id;
    in >> conn >> slot >> id;
    runs[conn].push_back(RunLine{ParseIso(slot), id});
  }
  return runs;
}

TEST(Suspend, ADaemonStoppedPastSeveralSlotsRunsEachScheduleOnceWhenContinued) {
  TempDir dir;
  const std::vector<std::string> conns = {"a", "b", "c"};
  const Ms freq = 1000;
  Json config = {{"listen", "127.0.0.1:0"},
                 {"database", dir / "syncsched.db"},
                 {"frequency_bounds", {{"min", "1s"}, {"max", "1d"}}},
                 {"api_keys", {{{"key", "k"}, {"scopes", {"*"}}}}},
                 {"integrations",
                  {{"github",
                    {{"syncs",
                      {{"issues",
                        {{"runs", "every 1s"},
                         {"command",
                          {"/bin/sh", "-c",
                           "echo \"$SYNCSCHED_CONNECTION $SYNCSCHED_SLOT $SYNCSCHED_RUN_ID\" >> '" +
                               (dir / "runs.txt") + "'"}}}}}},
                     {"connections", conns}}}}}};
  WriteFile(dir / "config.json", config.dump());
  Process daemon({SYNCSCHEDD_PATH, "--config", dir / "config.json"}, dir / "daemon.log");
  auto port = ListeningPort(dir / "daemon.log");
  ASSERT_TRUE(port);
  // On its grid: the immediate run and at least one slot of each schedule.
  ASSERT_TRUE(WaitFor(
      [&] {
        auto runs = ReadRuns(dir / "runs.txt");
        for (const std::string& c : conns) {
          if (runs[c].size() < 2) return false;
        }
        return true;
      },
      20s));

  daemon.Signal(SIGSTOP);
  const Ms stopped_at = WallMs();
  // Stopped for four and a half periods, by the clock.
  WaitFor([&] { return WallMs() - stopped_at >= 4 * freq + freq / 2; }, 10s);
  auto before = ReadRuns(dir / "runs.txt");  // nothing runs while the daemon is stopped
  const Ms continued_at = WallMs();
  daemon.Signal(SIGCONT);

  // After the catch-up, two more slots of each schedule's grid.
  ASSERT_TRUE(WaitFor(
      [&] {
        auto runs = ReadRuns(dir / "runs.txt");
        for (const std::string& c : conns) {
          if (runs[c].size() < before[c].size() + 3) return false;
        }
        return true;
      },
      20s));
  Client client(*port);
  Json status =
      client.Get("/sync/status?provider_config_key=github&syncs=issues", "k").json()["syncs"];
  daemon.Signal(SIGTERM);
  EXPECT_EQ(daemon.Wait(), 0);

  auto after = ReadRuns(dir / "runs.txt");
  std::set<std::string> ids;
  for (const std::string& c : conns) {
    const std::vector<RunLine>& all = after[c];
    const Ms anchor = all.front().slot;
    for (const RunLine& r : all) {
      EXPECT_TRUE(ids.insert(r.run_id).second) << "run id " << r.run_id << " twice";
      EXPECT_EQ((r.slot - anchor) % freq, 0) << c << ": slot " << r.slot << " off the grid";
    }
    // The runs that started after SIGCONT: those of slots that passed while the daemon was stopped
    // are one (the catch-up) or none (a run dispatched just before SIGSTOP stood for it, or the
    // latest slot came due as the daemon woke up), never one per missed slot.
    std::size_t old_slots = 0;
    Ms last_before = before[c].back().slot;
    for (std::size_t i = before[c].size(); i < all.size(); ++i) {
      if (all[i].slot <= continued_at) ++old_slots;
      EXPECT_GT(all[i].slot, last_before) << c << ": a slot ran twice or out of order";
      last_before = all[i].slot;
    }
    EXPECT_LE(old_slots, 1u) << c << ": a burst of missed slots after SIGCONT";
    // The first run after SIGCONT is at the latest missed slot (or later), not at the first one.
    EXPECT_GE(all[before[c].size()].slot, continued_at - freq - 100) << c;
  }
  // Status saw the collapsed slots: at least three of the four skipped, per schedule.
  ASSERT_EQ(status.size(), conns.size()) << status.dump();
  for (const Json& item : status) {
    EXPECT_GE(item.value("skipped", 0), 3) << item.dump();
  }
}

}  // namespace
}  // namespace syncsched::daemon
