// The reference model of the fault-injection tests (fault_injection_test.cc): what the catalog
// must look like after a sequence of acknowledged commands. Written from SPEC.md §1-§4 and issue 9,
// not from the engine's code:
//
// - defining a sync creates the `base` schedule of every existing connection; adding a connection
//   creates the `base` schedule of every sync; creating a variant creates its schedule: STARTED
//   when the sync auto-starts (and then its immediate run is owed), else PAUSED;
// - a redefinition changes the default frequency of every schedule without an override (all
//   variants) and auto_start for later schedules only;
// - start: PAUSED -> STARTED (an immediate run owed), STARTED: nothing; pause: STARTED -> PAUSED;
// - update frequency sets or (nullopt) clears a schedule's override;
// - deleting a connection or a variant makes its schedules DELETED (gone from status, or listed
//   as DELETED), the connection itself NOT_FOUND.
//
// Diff() compares the model with what an engine reports through its public GetStatus. It probes
// every integration and connection any command named, failed ones included, so that an effect of
// a failed command (a connection or variant that should not exist) shows up too.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "syncsched/syncsched.h"

namespace syncsched::testing::fault {

inline std::string Str(const ScheduleKey& key) { return ToString(key); }

inline std::string Show(Millis d) { return std::to_string(d.count()) + "ms"; }

// One sync of a scenario: what DefineSync is given, and what its frequency string means (the
// model does not parse frequencies; the scenario states both).
struct SyncSpec {
  std::string name;
  std::string frequency;
  Millis period{0};
  bool auto_start = true;
  OverlapPolicy overlap = OverlapPolicy::kSkip;
  RetryPolicy retry;
  std::optional<Millis> timeout;
  bool spread = false;

  SyncDefinition Definition() const {
    SyncDefinition d;
    d.name = name;
    d.frequency = frequency;
    d.auto_start = auto_start;
    d.overlap = overlap;
    d.retry = retry;
    d.timeout = timeout;
    d.spread = spread;
    return d;
  }
};

inline SyncSpec Spec(std::string name, std::string frequency, Millis period,
                     bool auto_start = true) {
  SyncSpec s;
  s.name = std::move(name);
  s.frequency = std::move(frequency);
  s.period = period;
  s.auto_start = auto_start;
  return s;
}

class CatalogModel {
 public:
  struct Schedule {
    ScheduleKey key;
    ScheduleState state = ScheduleState::kPaused;
    std::optional<Millis> override_period;
  };

  // Records that a command named these, so that Diff probes them (whatever the command's fate).
  void Note(const std::string& integration) { named_integrations_.insert(integration); }
  void Note(const std::string& integration, const std::string& connection) {
    named_integrations_.insert(integration);
    named_connections_.insert({integration, connection});
  }

  // ---- acknowledged commands; each returns the keys created STARTED (an immediate run owed) ----

  std::vector<ScheduleKey> DefineSync(const std::string& integration, const SyncSpec& sync) {
    Integration& in = integrations_[integration];
    const bool is_new = in.syncs.find(sync.name) == in.syncs.end();
    in.syncs[sync.name] = sync;
    std::vector<ScheduleKey> started;
    if (!is_new) return started;  // a redefinition: defaults change, no schedule is created
    for (const std::string& c : in.connections) {
      if (Create({integration, c, sync.name, std::string(kBaseVariant)}, sync.auto_start)) {
        started.push_back({integration, c, sync.name, std::string(kBaseVariant)});
      }
    }
    return started;
  }

  std::vector<ScheduleKey> AddConnection(const std::string& integration,
                                         const std::string& connection) {
    Integration& in = integrations_.at(integration);
    in.connections.insert(connection);
    std::vector<ScheduleKey> started;
    for (const auto& [name, sync] : in.syncs) {
      ScheduleKey key{integration, connection, name, std::string(kBaseVariant)};
      if (Create(key, sync.auto_start)) started.push_back(key);
    }
    return started;
  }

  // Returns the keys deleted.
  std::vector<ScheduleKey> DeleteConnection(const std::string& integration,
                                            const std::string& connection) {
    integrations_.at(integration).connections.erase(connection);
    std::vector<ScheduleKey> gone;
    for (auto it = schedules_.begin(); it != schedules_.end();) {
      const ScheduleKey& k = it->second.key;
      if (k.integration == integration && k.connection == connection) {
        gone.push_back(k);
        deleted_.insert(it->first);
        it = schedules_.erase(it);
      } else {
        ++it;
      }
    }
    return gone;
  }

  std::vector<ScheduleKey> CreateVariant(const ScheduleKey& key) {
    const SyncSpec& sync = integrations_.at(key.integration).syncs.at(key.sync);
    if (Create(key, sync.auto_start)) return {key};
    return {};
  }

  void DeleteVariant(const ScheduleKey& key) {
    schedules_.erase(Str(key));
    deleted_.insert(Str(key));
  }

  void SetState(const ScheduleKey& key, ScheduleState state) {
    schedules_.at(Str(key)).state = state;
  }
  void SetOverride(const ScheduleKey& key, std::optional<Millis> period) {
    schedules_.at(Str(key)).override_period = period;
  }

  // ---- queries ----

  const Schedule* Find(const ScheduleKey& key) const {
    auto it = schedules_.find(Str(key));
    return it == schedules_.end() ? nullptr : &it->second;
  }
  bool Deleted(const ScheduleKey& key) const {
    return deleted_.count(Str(key)) != 0 && Find(key) == nullptr;
  }
  const SyncSpec* Sync(const std::string& integration, const std::string& name) const {
    auto in = integrations_.find(integration);
    if (in == integrations_.end()) return nullptr;
    auto s = in->second.syncs.find(name);
    return s == in->second.syncs.end() ? nullptr : &s->second;
  }
  Millis Frequency(const Schedule& s) const {
    if (s.override_period) return *s.override_period;
    return Sync(s.key.integration, s.key.sync)->period;
  }
  std::vector<const Schedule*> Schedules() const {
    std::vector<const Schedule*> out;
    for (const auto& [k, s] : schedules_) out.push_back(&s);
    return out;
  }
  // (integration, connection) of every live connection.
  std::vector<std::pair<std::string, std::string>> Connections() const {
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& [name, in] : integrations_) {
      for (const std::string& c : in.connections) out.emplace_back(name, c);
    }
    return out;
  }

  // The schedules a command's target names (SPEC §4): with a connection, that connection's
  // schedules (an empty list: all of them, every variant); without one, every connection's.
  // A selector names (sync, variant). The scenarios only use valid targets.
  std::vector<ScheduleKey> Resolve(const Target& t) const {
    std::vector<ScheduleKey> out;
    for (const auto& [k, s] : schedules_) {
      if (s.key.integration != t.integration) continue;
      if (t.connection && s.key.connection != *t.connection) continue;
      bool named = t.syncs.empty();
      for (const SyncSelector& sel : t.syncs) {
        named = named || (sel.name == s.key.sync && sel.variant == s.key.variant);
      }
      if (named) out.push_back(s.key);
    }
    return out;
  }

  // Whether a command is valid in the model's state (SPEC §4: every command validates its whole
  // request first). An earlier failed command can make a later one of the script invalid: the
  // engine must then refuse it, changing nothing.
  bool HasIntegration(const std::string& integration) const {
    return integrations_.count(integration) != 0;
  }
  bool HasConnection(const std::string& integration, const std::string& connection) const {
    auto in = integrations_.find(integration);
    return in != integrations_.end() && in->second.connections.count(connection) != 0;
  }
  bool ValidTarget(const Target& t) const {
    if (!HasIntegration(t.integration)) return false;
    if (t.connection && !HasConnection(t.integration, *t.connection)) return false;
    for (const SyncSelector& sel : t.syncs) {
      Target one = t;
      one.syncs = {sel};
      if (Resolve(one).empty()) return false;  // names nothing in scope
    }
    return true;
  }
  bool ValidCreateVariant(const ScheduleKey& key) const {
    return HasConnection(key.integration, key.connection) && Sync(key.integration, key.sync) &&
           key.variant != kBaseVariant && Find(key) == nullptr;
  }
  bool ValidDeleteVariant(const ScheduleKey& key) const {
    return key.variant != kBaseVariant && Find(key) != nullptr;
  }

  // What differs between the model and the engine's status (empty: nothing).
  std::vector<std::string> Diff(Engine& engine) const {
    std::vector<std::string> out;
    for (const std::string& integration : named_integrations_) {
      if (integrations_.count(integration) == 0 &&
          engine.GetStatus(Target{integration, std::nullopt, {}}).ok()) {
        out.push_back("integration " + integration +
                      " exists, though no definition of it was "
                      "acknowledged");
      }
    }
    for (const auto& [integration, connection] : named_connections_) {
      auto in = integrations_.find(integration);
      const bool live = in != integrations_.end() && in->second.connections.count(connection);
      auto st = engine.GetStatus(Target{integration, connection, {}});
      if (!live) {
        if (st.ok()) {
          out.push_back("connection " + integration + "/" + connection + " exists, though " +
                        (WasDeleted(integration, connection)
                             ? "its deletion was acknowledged"
                             : "its creation was not acknowledged"));
        }
        continue;
      }
      if (!st.ok()) {
        out.push_back("connection " + integration + "/" + connection +
                      " is missing: " + st.status().ToString());
        continue;
      }
      std::set<std::string> seen;
      for (const ScheduleStatus& s : *st) {
        const std::string key = Str(s.key);
        seen.insert(key);
        auto m = schedules_.find(key);
        if (m == schedules_.end()) {
          if (s.state == ScheduleState::kDeleted && deleted_.count(key)) continue;
          out.push_back(key + " exists (" + std::string(ToString(s.state)) +
                        "), though its creation was not acknowledged" +
                        (deleted_.count(key) ? " (its deletion was)" : ""));
          continue;
        }
        const Schedule& want = m->second;
        if (s.state != want.state) {
          out.push_back(key + ": state " + std::string(ToString(s.state)) + ", want " +
                        std::string(ToString(want.state)));
        }
        if (s.frequency != Frequency(want)) {
          out.push_back(key + ": frequency " + Show(s.frequency) + ", want " +
                        Show(Frequency(want)));
        }
        if (s.frequency_overridden != want.override_period.has_value()) {
          out.push_back(key + ": frequency_overridden " +
                        (s.frequency_overridden ? "true" : "false") + ", want " +
                        (want.override_period ? "true" : "false"));
        }
        if (s.next_run.has_value() != (want.state == ScheduleState::kStarted)) {
          out.push_back(key + ": next_run " + (s.next_run ? "set" : "unset") + " in state " +
                        std::string(ToString(s.state)));
        }
      }
      for (const auto& [key, s] : schedules_) {
        if (s.key.integration == integration && s.key.connection == connection &&
            !seen.count(key)) {
          out.push_back(key + " is missing (want " + std::string(ToString(s.state)) + ")");
        }
      }
    }
    return out;
  }

 private:
  struct Integration {
    std::map<std::string, SyncSpec> syncs;
    std::set<std::string> connections;
  };

  bool Create(const ScheduleKey& key, bool started) {
    Schedule s;
    s.key = key;
    s.state = started ? ScheduleState::kStarted : ScheduleState::kPaused;
    schedules_[Str(key)] = s;
    deleted_.erase(Str(key));
    return started;
  }
  bool WasDeleted(const std::string& integration, const std::string& connection) const {
    for (const std::string& k : deleted_) {
      if (k.rfind(integration + "/" + connection + "/", 0) == 0) return true;
    }
    return false;
  }

  std::map<std::string, Integration> integrations_;
  std::map<std::string, Schedule> schedules_;  // live schedules by Str(key)
  std::set<std::string> deleted_;              // keys whose deletion was acknowledged
  std::set<std::string> named_integrations_;
  std::set<std::pair<std::string, std::string>> named_connections_;
};

}  // namespace syncsched::testing::fault
