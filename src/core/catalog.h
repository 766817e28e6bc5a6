// core/: the engine. This header holds the catalog: integrations, their syncs, connections,
// variants and the schedule table, with the lookups and target resolution that commands share.
// It owns no threads and takes no locks: EngineCore (engine_core.h) owns one Catalog and guards
// it with its lock. The timer wheel, the store and the run dispatch live beside it, not in it.
//
// Memory layout: at a million schedules memory is the product, so a Schedule is a fixed-size POD
// of indices and integers (about 80 bytes); its key's strings live once per integration, sync,
// connection and variant name. Rare or large per-schedule data (the last error and model counts)
// lives in a side table keyed by schedule index.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "syncsched/engine.h"
#include "syncsched/status.h"
#include "syncsched/types.h"

namespace syncsched::core {

inline constexpr std::uint32_t kNone = UINT32_MAX;

// A registered callback: exactly one of the two is set.
struct Callback {
  SyncCallback sync;
  AsyncSyncCallback async;
};

struct SyncInfo {
  std::uint32_t integration = kNone;
  std::string name;
  std::string frequency_text;
  std::int64_t frequency_ms = 0;
  bool auto_start = true;
  std::int64_t timeout_ms = 0;               // 0: the engine's default
  std::int64_t heartbeat_timeout_ms = 0;     // 0: none
  std::shared_ptr<const Callback> callback;  // null: the fallback
  OverlapPolicy overlap = OverlapPolicy::kSkip;
  int retry_max = 0;
  std::int64_t retry_backoff_ms = 0;
  bool spread = false;
};

struct IntegrationInfo {
  std::string key;
  std::vector<std::uint32_t> syncs;  // in definition order
  std::unordered_map<std::string, std::uint32_t> sync_by_name;
  std::vector<std::uint32_t> connections;  // live connections, unordered
  std::unordered_map<std::string, std::uint32_t> connection_by_id;
  std::size_t max_concurrency = 0;  // 0: unlimited
  std::size_t in_flight = 0;        // runs of the integration in flight
};

struct ConnectionInfo {
  std::uint32_t integration = kNone;
  std::uint32_t position = 0;  // index in IntegrationInfo::connections
  std::string id;
  std::vector<std::uint32_t> schedules;
};

struct Schedule {
  std::int64_t anchor = 0;         // grid anchor (ms since epoch); slots at anchor + k * freq
  std::int64_t freq_override = 0;  // 0: the sync's default
  std::int64_t next_slot = 0;      // the armed slot, when STARTED
  std::int64_t last_start = 0;     // 0: none
  std::int64_t last_finish = 0;    // 0: none
  std::uint64_t uid = 0;
  std::uint32_t connection = kNone;
  std::uint32_t sync = kNone;
  std::uint32_t variant = 0;  // interned; 0 is "base"
  std::uint32_t run = kNone;  // slot in EngineCore's in-flight run table
  std::uint32_t runs = 0;
  std::uint32_t failures = 0;
  std::uint32_t skipped = 0;
  std::uint32_t run_seq = 0;  // off-grid run ids issued (their suffix; never reused)
  ScheduleState state = ScheduleState::kDeleted;
  std::int8_t last_ok = -1;  // -1 none, 0 error, 1 success
  std::uint8_t pending = 0;  // 0 none; 1 + RunMode: a run to dispatch once the one in flight ends
  std::uint8_t flags = 0;    // kWaiting | kHinted | kRetrying
  bool live = false;
};

inline constexpr std::uint8_t kWaiting = 1;   // a due run waits for a concurrency cap
inline constexpr std::uint8_t kHinted = 2;    // next_slot is a run's hint, off the grid
inline constexpr std::uint8_t kRetrying = 4;  // a failed run's retry is armed
inline constexpr std::uint8_t kTouched = 8;   // in the open transaction's touched list
inline constexpr std::uint8_t kCreated = 16;  // created by the open transaction (a full row)

struct ScheduleDetail {
  std::string last_error;
  std::vector<ModelCounts> last_counts;
};

class Catalog {
 public:
  Catalog();

  // ---- lookups (kNone when absent) ----
  std::uint32_t FindIntegration(std::string_view key) const;
  std::uint32_t FindSync(std::uint32_t integration, std::string_view name) const;
  std::uint32_t FindConnection(std::uint32_t integration, std::string_view id) const;
  std::uint32_t FindVariant(std::string_view name) const;  // interned id
  // The schedule of (connection, sync, variant), or kNone.
  std::uint32_t FindSchedule(std::uint32_t connection, std::uint32_t sync,
                             std::uint32_t variant) const;

  // ---- mutations (no validation: the engine validated) ----
  std::uint32_t AddIntegration(std::string key);
  std::uint32_t AddSync(std::uint32_t integration, SyncInfo info);
  std::uint32_t AddConnection(std::uint32_t integration, std::string id);
  void RemoveConnection(std::uint32_t connection);  // its schedules must be removed first
  std::uint32_t InternVariant(std::string_view name);
  std::uint32_t AddSchedule(std::uint32_t connection, std::uint32_t sync, std::uint32_t variant,
                            std::uint64_t uid);
  void RemoveSchedule(std::uint32_t schedule);  // unlinks it from its connection, frees the slot
  // Undo the last AddSync of `integration` / the last AddIntegration (a rolled-back definition).
  void RemoveLastSync(std::uint32_t integration);
  void RemoveLastIntegration();

  // Resolves a command's target (SPEC §4) to schedule indices, in the connection's order.
  // Errors name the missing integration, connection, sync or variant; nothing is changed.
  Result<std::vector<std::uint32_t>> Resolve(const Target& target) const;

  ScheduleKey KeyOf(std::uint32_t schedule) const;
  std::int64_t FrequencyOf(const Schedule& s) const {
    return s.freq_override ? s.freq_override : syncs[s.sync].frequency_ms;
  }

  std::size_t MemoryBytes() const;

  std::vector<IntegrationInfo> integrations;
  std::unordered_map<std::string, std::uint32_t> integration_by_key;
  std::vector<SyncInfo> syncs;
  std::vector<ConnectionInfo> connections;
  std::vector<std::string> variants;  // interned names; [0] == "base"
  std::unordered_map<std::string, std::uint32_t> variant_by_name;
  std::vector<Schedule> schedules;
  std::unordered_map<std::uint32_t, ScheduleDetail> details;  // by schedule index

 private:
  std::vector<std::uint32_t> free_connections_;
  std::vector<std::uint32_t> free_schedules_;
};

}  // namespace syncsched::core
