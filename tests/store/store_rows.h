// Rows for store tests (the PostgreSQL store's; the SQLite store's test has its own copies): a
// row of each kind with every field set, and comparisons of every field.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "store/store.h"

namespace syncsched::store::testing {

inline SyncRow MakeSync(std::string integration, std::string name, std::int64_t frequency_ms) {
  SyncRow row;
  row.integration = std::move(integration);
  row.name = std::move(name);
  row.frequency_text = "every " + std::to_string(frequency_ms / 1000) + "s";
  row.frequency_ms = frequency_ms;
  row.auto_start = false;
  row.timeout_ms = 3'600'000;
  row.heartbeat_timeout_ms = 60'000;
  return row;
}

inline ScheduleRow MakeSchedule(std::uint64_t uid, std::string connection,
                                std::string sync = "issues", std::string variant = "base") {
  ScheduleRow row;
  row.uid = uid;
  row.integration = "github";
  row.connection = std::move(connection);
  row.sync = std::move(sync);
  row.variant = std::move(variant);
  row.state = 1;
  row.anchor_ms = 1'700'000'000'000;
  row.frequency_override_ms = 90'000;
  row.next_slot_ms = 1'700'000'090'000;
  row.runs = 12;
  row.failures = 3;
  row.skipped = 4;
  row.last_start_ms = 1'700'000'001'000;
  row.last_finish_ms = 1'700'000'002'000;
  row.last_ok = 0;
  row.last_error = "HTTP 502 from upstream";
  return row;
}

// A finished run, the schedule's run number `number`.
inline RunRow MakeRun(std::string id, std::uint64_t uid, std::int64_t finished_ms,
                      std::int8_t ok = 1, std::uint64_t number = 1) {
  RunRow row;
  row.run_id = std::move(id);
  row.schedule_uid = uid;
  row.number = number;
  row.slot_ms = 1'700'000'000'000 + finished_ms;
  row.mode = 1;
  row.attempt = 2;
  row.started_ms = 1'700'000'000'500;
  row.finished_ms = finished_ms;
  row.ok = ok;
  row.error = ok == 0 ? "boom" : "";
  return row;
}

// Schedule `row` with run `id` in flight.
inline ScheduleRow WithRunInFlight(ScheduleRow row, std::string id) {
  RunRow& run = row.in_flight;
  run.run_id = std::move(id);
  run.schedule_uid = row.uid;
  run.slot_ms = 1'700'000'000'000;
  run.mode = 1;
  run.attempt = 2;
  run.started_ms = 1'700'000'000'500;
  return row;
}

inline void ExpectSameSync(const SyncRow& a, const SyncRow& b) {
  EXPECT_EQ(a.integration, b.integration);
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.frequency_text, b.frequency_text);
  EXPECT_EQ(a.frequency_ms, b.frequency_ms);
  EXPECT_EQ(a.auto_start, b.auto_start);
  EXPECT_EQ(a.timeout_ms, b.timeout_ms);
  EXPECT_EQ(a.heartbeat_timeout_ms, b.heartbeat_timeout_ms);
}

inline void ExpectSameOwedRun(const OwedRun& a, const OwedRun& b, const char* which) {
  SCOPED_TRACE(which);
  EXPECT_EQ(a.run_id, b.run_id);
  EXPECT_EQ(a.slot_ms, b.slot_ms);
  EXPECT_EQ(a.mode, b.mode);
  EXPECT_EQ(a.attempt, b.attempt);
  EXPECT_EQ(a.at_ms, b.at_ms);
  EXPECT_EQ(a.seq, b.seq);
  EXPECT_EQ(a.scheduled, b.scheduled);
}

// Compares every field but update_only (and the key, when `key` is false: update-only rows
// leave it empty).
inline void ExpectSameSchedule(const ScheduleRow& a, const ScheduleRow& b, bool key = true) {
  SCOPED_TRACE("schedule uid " + std::to_string(b.uid));
  EXPECT_EQ(a.uid, b.uid);
  if (key) {
    EXPECT_EQ(a.integration, b.integration);
    EXPECT_EQ(a.connection, b.connection);
    EXPECT_EQ(a.sync, b.sync);
    EXPECT_EQ(a.variant, b.variant);
  }
  EXPECT_EQ(a.state, b.state);
  EXPECT_EQ(a.anchor_ms, b.anchor_ms);
  EXPECT_EQ(a.frequency_override_ms, b.frequency_override_ms);
  EXPECT_EQ(a.next_slot_ms, b.next_slot_ms);
  EXPECT_EQ(a.runs, b.runs);
  EXPECT_EQ(a.failures, b.failures);
  EXPECT_EQ(a.skipped, b.skipped);
  EXPECT_EQ(a.last_start_ms, b.last_start_ms);
  EXPECT_EQ(a.last_finish_ms, b.last_finish_ms);
  EXPECT_EQ(a.last_ok, b.last_ok);
  EXPECT_EQ(a.last_error, b.last_error);
  EXPECT_EQ(a.in_flight.run_id, b.in_flight.run_id);
  if (!a.in_flight.run_id.empty()) {
    EXPECT_EQ(a.in_flight.schedule_uid, b.in_flight.schedule_uid);
    EXPECT_EQ(a.in_flight.slot_ms, b.in_flight.slot_ms);
    EXPECT_EQ(a.in_flight.mode, b.in_flight.mode);
    EXPECT_EQ(a.in_flight.attempt, b.in_flight.attempt);
    EXPECT_EQ(a.in_flight.started_ms, b.in_flight.started_ms);
  }
  EXPECT_EQ(a.run_seq, b.run_seq);
  EXPECT_EQ(a.pending, b.pending);
  ExpectSameOwedRun(a.waiting, b.waiting, "waiting");
  ExpectSameOwedRun(a.retry, b.retry, "retry");
}

inline void ExpectSameRun(const RunRow& a, const RunRow& b) {
  EXPECT_EQ(a.run_id, b.run_id);
  EXPECT_EQ(a.schedule_uid, b.schedule_uid);
  EXPECT_EQ(a.slot_ms, b.slot_ms);
  EXPECT_EQ(a.mode, b.mode);
  EXPECT_EQ(a.attempt, b.attempt);
  EXPECT_EQ(a.started_ms, b.started_ms);
  EXPECT_EQ(a.finished_ms, b.finished_ms);
  EXPECT_EQ(a.ok, b.ok);
  EXPECT_EQ(a.error, b.error);
}

inline OwedRun MakeOwed(std::string id, std::int64_t offset) {
  OwedRun run;
  run.run_id = std::move(id);
  run.slot_ms = 1'700'000'000'000 + offset;
  run.mode = 1;
  run.attempt = 3;
  run.at_ms = 1'700'000'000'500 + offset;
  run.seq = 42 + static_cast<std::uint64_t>(offset);
  run.scheduled = true;
  return run;
}

// `row` as the engine sends a new version of a stored row: update_only, without its key.
inline ScheduleRow UpdateOnly(ScheduleRow row) {
  row.update_only = true;
  row.integration.clear();
  row.connection.clear();
  row.sync.clear();
  row.variant.clear();
  return row;
}

}  // namespace syncsched::store::testing
