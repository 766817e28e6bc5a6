#include "core/catalog.h"

#include "core/names.h"

#include <algorithm>

namespace syncsched::core {
namespace {

// Heap bytes of a string beyond the object itself (0 when the small-string buffer holds it).
std::size_t HeapOf(const std::string& s) { return s.capacity() > 15 ? s.capacity() + 1 : 0; }

template <typename Map>
std::size_t MapBytes(const Map& m) {
  // Node (key, value, hash, next) plus the bucket array; an estimate good to a few percent.
  std::size_t node = sizeof(typename Map::value_type) + 2 * sizeof(void*);
  std::size_t bytes = m.size() * node + m.bucket_count() * sizeof(void*);
  for (const auto& [k, v] : m) bytes += HeapOf(k);
  return bytes;
}

}  // namespace

Catalog::Catalog() { InternVariant(kBaseVariant); }

std::uint32_t Catalog::FindIntegration(std::string_view key) const {
  auto it = integration_by_key.find(std::string(key));
  return it == integration_by_key.end() ? kNone : it->second;
}

std::uint32_t Catalog::FindSync(std::uint32_t integration, std::string_view name) const {
  const auto& m = integrations[integration].sync_by_name;
  auto it = m.find(std::string(name));
  return it == m.end() ? kNone : it->second;
}

std::uint32_t Catalog::FindConnection(std::uint32_t integration, std::string_view id) const {
  const auto& m = integrations[integration].connection_by_id;
  auto it = m.find(std::string(id));
  return it == m.end() ? kNone : it->second;
}

std::uint32_t Catalog::FindVariant(std::string_view name) const {
  auto it = variant_by_name.find(std::string(name));
  return it == variant_by_name.end() ? kNone : it->second;
}

std::uint32_t Catalog::FindSchedule(std::uint32_t connection, std::uint32_t sync,
                                    std::uint32_t variant) const {
  for (std::uint32_t s : connections[connection].schedules) {
    if (schedules[s].sync == sync && schedules[s].variant == variant) return s;
  }
  return kNone;
}

std::uint32_t Catalog::AddIntegration(std::string key) {
  auto idx = static_cast<std::uint32_t>(integrations.size());
  integration_by_key.emplace(key, idx);
  integrations.emplace_back().key = std::move(key);
  return idx;
}

std::uint32_t Catalog::AddSync(std::uint32_t integration, SyncInfo info) {
  auto idx = static_cast<std::uint32_t>(syncs.size());
  info.integration = integration;
  integrations[integration].sync_by_name.emplace(info.name, idx);
  integrations[integration].syncs.push_back(idx);
  syncs.push_back(std::move(info));
  return idx;
}

std::uint32_t Catalog::AddConnection(std::uint32_t integration, std::string id) {
  std::uint32_t idx;
  if (!free_connections_.empty()) {
    idx = free_connections_.back();
    free_connections_.pop_back();
  } else {
    idx = static_cast<std::uint32_t>(connections.size());
    connections.emplace_back();
  }
  IntegrationInfo& integ = integrations[integration];
  ConnectionInfo& c = connections[idx];
  c.integration = integration;
  c.position = static_cast<std::uint32_t>(integ.connections.size());
  c.id = std::move(id);
  c.schedules.clear();
  integ.connections.push_back(idx);
  integ.connection_by_id.emplace(c.id, idx);
  return idx;
}

void Catalog::RemoveConnection(std::uint32_t connection) {
  ConnectionInfo& c = connections[connection];
  IntegrationInfo& integ = integrations[c.integration];
  integ.connection_by_id.erase(c.id);
  // Swap-remove from the integration's list, fixing the moved connection's position.
  std::uint32_t last = integ.connections.back();
  integ.connections[c.position] = last;
  connections[last].position = c.position;
  integ.connections.pop_back();
  c.id.clear();
  c.id.shrink_to_fit();
  c.schedules.clear();
  c.schedules.shrink_to_fit();
  free_connections_.push_back(connection);
}

std::uint32_t Catalog::InternVariant(std::string_view name) {
  if (auto id = FindVariant(name); id != kNone) return id;
  auto id = static_cast<std::uint32_t>(variants.size());
  variants.emplace_back(name);
  variant_by_name.emplace(std::string(name), id);
  return id;
}

std::uint32_t Catalog::AddSchedule(std::uint32_t connection, std::uint32_t sync,
                                   std::uint32_t variant, std::uint64_t uid) {
  std::uint32_t idx;
  if (!free_schedules_.empty()) {
    idx = free_schedules_.back();
    free_schedules_.pop_back();
  } else {
    idx = static_cast<std::uint32_t>(schedules.size());
    schedules.emplace_back();
  }
  Schedule& s = schedules[idx];
  s = Schedule{};
  s.uid = uid;
  s.connection = connection;
  s.sync = sync;
  s.variant = variant;
  s.state = ScheduleState::kPaused;
  s.live = true;
  connections[connection].schedules.push_back(idx);
  return idx;
}

void Catalog::RemoveSchedule(std::uint32_t schedule) {
  Schedule& s = schedules[schedule];
  auto& list = connections[s.connection].schedules;
  list.erase(std::remove(list.begin(), list.end(), schedule), list.end());
  details.erase(schedule);
  s = Schedule{};
  free_schedules_.push_back(schedule);
}

void Catalog::RemoveLastSync(std::uint32_t integration) {
  IntegrationInfo& integ = integrations[integration];
  integ.sync_by_name.erase(syncs.back().name);
  integ.syncs.pop_back();
  syncs.pop_back();
}

void Catalog::RemoveLastIntegration() {
  integration_by_key.erase(integrations.back().key);
  integrations.pop_back();
}

Result<std::vector<std::uint32_t>> Catalog::Resolve(const Target& target) const {
  // Checked in the order status.h promises: integration, syncs, connection, variants.
  std::uint32_t integ = FindIntegration(target.integration);
  if (integ == kNone) {
    return Status::NotFound("integration " + Quote(target.integration) + " does not exist",
                            StatusSubject::kIntegration);
  }
  std::vector<std::uint32_t> sync_ids;
  sync_ids.reserve(target.syncs.size());
  for (const SyncSelector& sel : target.syncs) {
    std::uint32_t sync = FindSync(integ, sel.name);
    if (sync == kNone) {
      return Status::NotFound(
          "sync " + Quote(sel.name) + " does not exist in integration " + Quote(target.integration),
          StatusSubject::kSync);
    }
    sync_ids.push_back(sync);
  }
  std::uint32_t conn = kNone;
  if (target.connection) {
    conn = FindConnection(integ, *target.connection);
    if (conn == kNone) {
      return Status::NotFound("connection " + Quote(*target.connection) +
                                  " does not exist in integration " + Quote(target.integration),
                              StatusSubject::kConnection);
    }
  }
  // Each selector as a packed (sync, variant) pair.
  std::vector<std::uint64_t> wanted;
  wanted.reserve(target.syncs.size());
  for (std::size_t i = 0; i < target.syncs.size(); ++i) {
    const SyncSelector& sel = target.syncs[i];
    std::uint32_t variant = FindVariant(sel.variant);
    if (variant == kNone) {
      return Status::NotFound("variant " + Quote(sel.variant) + " of sync " + Quote(sel.name) +
                                  " does not exist" +
                                  (target.connection ? " on connection " + Quote(*target.connection)
                                                     : std::string(" on any connection")),
                              StatusSubject::kVariant);
    }
    wanted.push_back(std::uint64_t{sync_ids[i]} << 32 | variant);
  }
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  std::vector<bool> matched(wanted.size(), false);

  std::vector<std::uint32_t> out;
  auto take = [&](std::uint32_t c) {
    for (std::uint32_t s : connections[c].schedules) {
      if (wanted.empty()) {
        out.push_back(s);
        continue;
      }
      std::uint64_t k = std::uint64_t{schedules[s].sync} << 32 | schedules[s].variant;
      auto it = std::lower_bound(wanted.begin(), wanted.end(), k);
      if (it != wanted.end() && *it == k) {
        matched[it - wanted.begin()] = true;
        out.push_back(s);
      }
    }
  };
  if (conn != kNone) {
    take(conn);
  } else {
    for (std::uint32_t c : integrations[integ].connections) take(c);
  }
  for (std::size_t i = 0; i < wanted.size(); ++i) {
    if (matched[i]) continue;
    const std::string& sync = syncs[wanted[i] >> 32].name;
    const std::string& variant = variants[wanted[i] & 0xffffffffu];
    std::string where = target.connection
                            ? "on connection " + Quote(*target.connection)
                            : "on any connection of integration " + Quote(target.integration);
    std::string name = sync;
    name.append("::").append(variant);
    // The sync exists; what is missing is its variant's schedule (for `base`, which every
    // connection has, the sync's: there is no connection to have it).
    StatusSubject subject =
        variant == kBaseVariant ? StatusSubject::kSync : StatusSubject::kVariant;
    return Status::NotFound("sync " + Quote(name) + " has no schedule " + where, subject);
  }
  return out;
}

ScheduleKey Catalog::KeyOf(std::uint32_t schedule) const {
  const Schedule& s = schedules[schedule];
  const ConnectionInfo& c = connections[s.connection];
  return ScheduleKey{integrations[c.integration].key, c.id, syncs[s.sync].name,
                     variants[s.variant]};
}

std::size_t Catalog::MemoryBytes() const {
  std::size_t bytes =
      schedules.capacity() * sizeof(Schedule) + connections.capacity() * sizeof(ConnectionInfo) +
      syncs.capacity() * sizeof(SyncInfo) + integrations.capacity() * sizeof(IntegrationInfo) +
      (free_schedules_.capacity() + free_connections_.capacity()) * 4;
  for (const ConnectionInfo& c : connections) {
    bytes += HeapOf(c.id) + c.schedules.capacity() * sizeof(std::uint32_t);
  }
  for (const IntegrationInfo& i : integrations) {
    bytes += MapBytes(i.connection_by_id) + MapBytes(i.sync_by_name) +
             i.connections.capacity() * sizeof(std::uint32_t);
  }
  bytes += MapBytes(integration_by_key) + MapBytes(variant_by_name);
  bytes += details.size() * (sizeof(ScheduleDetail) + 32) + details.bucket_count() * sizeof(void*);
  return bytes;
}

}  // namespace syncsched::core
