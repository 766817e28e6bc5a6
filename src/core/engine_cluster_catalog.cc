// core/: the catalog in cluster mode (docs/cluster.md, "The catalog through any engine").
// Catalog commands (DefineSync, SetIntegrationLimits, AddConnection, DeleteConnection) are served
// by any engine: the receiver writes the catalog rows and the schedules of the partitions it
// holds, in one fenced commit that also counts the catalog's version, logs the connections it
// adds or deletes (cluster schema v3, v4) and notifies the others. Each engine then applies what
// changed since the version it applied (SyncCatalog: a deleted connection's schedules deleted, a
// changed definition adopted and regridded, a missing base schedule of a held partition created;
// the whole catalog when the log does not reach back, or after a load), records the version in
// its node row, and the receiver answers once every engine that may act has (SpreadCatalog).

#include <algorithm>
#include <set>
#include <thread>
#include <utility>

#include "cluster/command_inbox.h"
#include "cluster/lease_keeper.h"
#include "cluster/partition.h"
#include "core/engine_core.h"
#include "core/names.h"

namespace syncsched::core {

using SteadyClock = std::chrono::steady_clock;

bool EngineCore::Holds(int partition, const std::map<int, std::int64_t>& owned) const {
  if (partition < 0 || partition >= partitions_) return false;
  auto it = owned.find(partition);
  std::int64_t loaded = active_[static_cast<std::size_t>(partition)];
  return it != owned.end() && loaded > 0 && it->second == loaded;
}

int EngineCore::BasePartition(std::uint32_t connection, std::uint32_t sync) const {
  const ConnectionInfo& c = cat_.connections[connection];
  return cluster::PartitionOf(cat_.integrations[c.integration].key, c.id, cat_.syncs[sync].name,
                              kBaseVariant, partitions_);
}

Status EngineCore::ApplyCatalogLocked(const CatalogDelta& d, Effects& fx) {
  // The catalog's rows first, straight into memory: they mirror the database, so nothing of them
  // is undone if the schedules' commit below fails, except a changed definition or limit,
  // restored then; the caller then reads the whole catalog at its next sync (a sync or
  // connection added here would no longer look new).
  std::vector<std::pair<std::uint32_t, SyncInfo>> syncs_before;
  std::vector<std::pair<std::uint32_t, std::size_t>> limits_before;
  std::vector<std::uint32_t> regrid, new_syncs;
  for (const store::SyncRow& row : *d.syncs) {
    std::uint32_t integ = cat_.FindIntegration(row.integration);
    if (integ == kNone) integ = cat_.AddIntegration(row.integration);
    Result<SyncInfo> stored = SyncInfoOf(row);
    if (!stored.ok()) return stored.status();
    SyncInfo info = std::move(stored).value();
    std::uint32_t sync = cat_.FindSync(integ, row.name);
    if (sync == kNone) {
      info.callback = CallbackFor(integ, info.name);
      new_syncs.push_back(cat_.AddSync(integ, std::move(info)));
      continue;
    }
    const SyncInfo& old = cat_.syncs[sync];
    if (SameDefinition(old, info)) continue;
    if (old.frequency_ms != info.frequency_ms) regrid.push_back(sync);
    syncs_before.emplace_back(sync, old);
    info.integration = old.integration;
    info.callback = old.callback;
    cat_.syncs[sync] = std::move(info);
  }
  bool limits_raised = false;
  for (const store::IntegrationRow& row : *d.integrations) {
    std::uint32_t integ = cat_.FindIntegration(row.integration);
    if (integ == kNone) integ = cat_.AddIntegration(row.integration);
    auto limit = static_cast<std::size_t>(row.max_concurrency);
    std::size_t& now = cat_.integrations[integ].max_concurrency;
    if (now == limit) continue;
    limits_before.emplace_back(integ, now);
    limits_raised = limits_raised || limit == 0 || (now != 0 && limit > now);
    now = limit;
  }
  std::vector<std::uint32_t> added;  // the connections whose base schedules are checked
  for (const store::ConnectionRow& row : *d.added) {
    std::uint32_t integ = cat_.FindIntegration(row.integration);
    if (integ == kNone) integ = cat_.AddIntegration(row.integration);
    std::uint32_t conn = cat_.FindConnection(integ, row.connection);
    if (conn == kNone) conn = cat_.AddConnection(integ, row.connection);
    added.push_back(conn);
  }

  // Then the schedules of the partitions this engine holds, in one transaction.
  std::vector<std::uint32_t> gone;  // connections deleted through another engine
  if (d.whole) {
    std::set<std::pair<std::string_view, std::string_view>> present;
    for (const store::ConnectionRow& row : *d.added)
      present.emplace(row.integration, row.connection);
    for (const IntegrationInfo& info : cat_.integrations) {
      for (std::uint32_t conn : info.connections) {
        if (present.count({info.key, cat_.connections[conn].id}) == 0) gone.push_back(conn);
      }
    }
  } else {
    for (const store::ConnectionRow& row : *d.deleted) {
      std::uint32_t integ = cat_.FindIntegration(row.integration);
      std::uint32_t conn = integ == kNone ? kNone : cat_.FindConnection(integ, row.connection);
      if (conn != kNone) gone.push_back(conn);
    }
  }
  const std::map<int, std::int64_t> owned = keeper_->Owned();
  std::vector<std::pair<std::uint32_t, std::uint32_t>> create;  // (connection, sync)
  std::set<std::pair<std::uint32_t, std::uint32_t>> listed;
  auto check = [&](std::uint32_t conn, std::uint32_t sync) REQUIRES(mu_) {
    if (cat_.FindSchedule(conn, sync, 0) == kNone && Holds(BasePartition(conn, sync), owned) &&
        listed.emplace(conn, sync).second) {
      create.emplace_back(conn, sync);
    }
  };
  for (std::uint32_t conn : added) {
    for (std::uint32_t sync : cat_.integrations[cat_.connections[conn].integration].syncs) {
      check(conn, sync);
    }
  }
  for (std::uint32_t sync : new_syncs) {
    for (std::uint32_t conn : cat_.integrations[cat_.syncs[sync].integration].connections) {
      check(conn, sync);
    }
  }
  std::erase_if(create, [&](const auto& cs) {
    return std::find(gone.begin(), gone.end(), cs.first) != gone.end();
  });
  auto restore = [&]() REQUIRES(mu_) {
    for (auto& [sync, before] : syncs_before) cat_.syncs[sync] = std::move(before);
    for (auto [integ, limit] : limits_before) cat_.integrations[integ].max_concurrency = limit;
  };
  if (Status st = EnsureUids(create.size()); !st.ok()) {
    restore();
    return st;
  }
  Txn tx = Begin(/*undoable=*/true);
  for (std::uint32_t conn : gone) {
    std::vector<std::uint32_t> schedules = cat_.connections[conn].schedules;
    DeleteSchedules(tx, schedules);
    tx.connections_deleted.push_back(conn);
  }
  for (std::uint32_t sync : regrid) {
    const IntegrationInfo& info = cat_.integrations[cat_.syncs[sync].integration];
    for (std::uint32_t conn : info.connections) {
      for (std::uint32_t s : cat_.connections[conn].schedules) {
        if (cat_.schedules[s].sync == sync && cat_.schedules[s].freq_override == 0) Regrid(tx, s);
      }
    }
  }
  for (auto [conn, sync] : create) CreateSchedule(tx, conn, sync, 0);
  if (!gone.empty() || limits_raised) DrainWaiting(tx);
  if (Status st = Commit(tx); !st.ok()) {
    restore();
    return st;
  }
  fx = std::move(tx.fx);
  return Status::Ok();
}

Status EngineCore::SyncCatalog() {
  std::lock_guard sync_lock(catalog_sync_mu_);
  // A catalog change made in memory between the read below and its application (a command of
  // this engine, a partition's load) could look deleted or be undone: read again then.
  for (int attempt = 0; attempt < 8; ++attempt) {
    std::uint64_t local = 0;
    std::int64_t applied = -1;
    {
      MutexLock lock(mu_);
      if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
      local = catalog_local_;
      applied = catalog_applied_;
    }
    // What changed since the version applied here: the log of the connections, and the syncs and
    // integrations whole (cluster schema v4). The whole catalog when this engine has applied none
    // yet, when a partition was loaded (its load may have brought back a connection deleted
    // since), after a failed application, or when the log no longer goes back that far.
    const bool whole_due = catalog_whole_due_.exchange(false);
    Result<cluster::CatalogChanges> changes =
        inbox_->CatalogSince(std::max<std::int64_t>(applied, 0));
    if (!changes.ok()) {
      if (whole_due) catalog_whole_due_ = true;
      return changes.status();
    }
    const bool whole = whole_due || applied < 0 || changes->log_from > applied + 1;
    if (!whole && changes->version <= applied) return inbox_->AckCatalog(applied);
    store::Snapshot snap;
    if (whole) {
      // The catalog rows only (no partition's schedules), read after the version: as of it or
      // newer.
      Result<store::Snapshot> all = [&] {
        MutexLock lock(loader_mu_);
        return loader_->LoadPartitions({});
      }();
      if (!all.ok()) {
        catalog_whole_due_ = true;
        return all.status();
      }
      snap = std::move(all).value();
    }
    Effects fx;
    Status st;
    {
      MutexLock lock(mu_);
      if (shut_down_) return Status::FailedPrecondition("the engine is shut down");
      if (catalog_local_ != local) {
        if (whole) catalog_whole_due_ = true;
        continue;
      }
      CatalogDelta d;
      d.whole = whole;
      d.syncs = whole ? &snap.syncs : &changes->syncs;
      d.integrations = whole ? &snap.integrations : &changes->integrations;
      d.added = whole ? &snap.connections : &changes->added;
      d.deleted = &changes->deleted;
      st = ApplyCatalogLocked(d, fx);
      if (st.ok()) {
        catalog_applied_ = std::max(catalog_applied_, changes->version);
      } else {
        catalog_whole_due_ = true;
      }
    }
    Apply(fx);
    if (!st.ok()) return st;
    return inbox_->AckCatalog(changes->version);
  }
  return Status::Unavailable("cluster mode: the catalog kept changing while it was read");
}

Status EngineCore::SyncCatalogIfBehind() {
  Result<std::int64_t> version = inbox_->CatalogVersion();
  if (!version.ok()) return version.status();
  {
    MutexLock lock(mu_);
    if (*version <= catalog_applied_) return Status::Ok();
  }
  return SyncCatalog();
}

Status EngineCore::CatalogUpToDate() {
  {
    MutexLock lock(mu_);
    if (shut_down_) return Status::Ok();  // the command answers FAILED_PRECONDITION itself
  }
  Status s = SyncCatalogIfBehind();
  if (s.ok()) return s;
  return Status::Unavailable(
      "cluster mode: the catalog could not be brought up to date before the command (" +
      s.message() + "); nothing was changed");
}

void EngineCore::SpreadCatalog() {
  // This engine has applied its own change (it is in memory); a sync now records a version that
  // includes it (read after the commit), and applies whatever else came meanwhile.
  if (!SyncCatalog().ok()) return;
  std::int64_t version = 0;
  {
    MutexLock lock(mu_);
    version = catalog_applied_;
  }
  // The others apply it on the notice (or at their next poll); a node whose lease ended and
  // whose partitions another took is no longer waited for: the taker applies the catalog after
  // loading them.
  const auto deadline = SteadyClock::now() + options_.cluster->lease + std::chrono::seconds(2);
  auto nap = std::chrono::milliseconds(1);
  while (SteadyClock::now() < deadline) {
    Result<std::vector<std::string>> behind = inbox_->NodesBehind(version);
    if (behind.ok() && behind->empty()) return;
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, std::chrono::milliseconds(16));
  }
  // Whoever is still behind (frozen, cut off from the database with a lapsed lease that nobody
  // took yet, or failing to read the catalog) loses its partitions now: it could otherwise renew
  // them at the same epoch and run a deleted connection's schedule, or a redefined sync under its
  // old definition, after this command was answered. Once this commits none of its fenced
  // commits succeeds for them; whoever claims them next (it too) loads them under the new catalog.
  // If this fails too (the database is gone), the command is still answered OK: it is committed,
  // and the behind node cannot commit a dispatch without the database either.
  Result<std::vector<int>> revoked = inbox_->RevokeBehind(version);
  if (revoked.ok()) {
    catalog_revocations_.fetch_add(revoked->size(), std::memory_order_relaxed);
  }
}

}  // namespace syncsched::core
