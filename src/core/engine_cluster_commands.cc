// Cluster mode: commands through any engine (docs/cluster.md, "Commands through any engine").
//
// A target command (start, pause, trigger, a frequency update) or a status read whose partitions
// this engine does not all hold (loaded, under a valid lease) is resolved against the database
// (the schedules of its scope, read by the inbox: cluster/command_inbox.h), with the errors one
// engine gives. A status is then answered from the database (and from memory for the partitions
// this engine holds): it reflects every acknowledged command, since a command is acknowledged only
// once committed. A command is written to the inbox, one part per partition of its keys, with its
// moment fixed here (a start's anchor); each partition's owner applies its part through the same
// per-key steps as a local command, in one fenced transaction that also marks the part applied
// with its per-key outcomes; this engine gathers the outcomes into the CommandResult one engine
// returns. A part nobody applied by the deadline (lease + 2 s: a dead owner's partitions are taken
// within lease + 1 s) is cancelled, which the database makes exclusive with its application: its
// keys are answered UNAVAILABLE, with nothing applied to them.
#include <pthread.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>
#include <thread>
#include <tuple>

#include "cluster/partition.h"
#include "core/commit_queue.h"
#include "core/engine_core.h"
#include "core/names.h"
#include "store/pg_store.h"

namespace syncsched::core {
namespace {

using SteadyClock = std::chrono::steady_clock;

// Fields of a line of a command body or a part's result: tab-separated (no name may hold a tab
// or a newline: SPEC §1 forbids control characters in every name).
std::vector<std::string_view> Fields(std::string_view line) {
  std::vector<std::string_view> out;
  std::size_t at = 0;
  for (;;) {
    std::size_t tab = line.find('\t', at);
    if (tab == std::string_view::npos) {
      out.push_back(line.substr(at));
      return out;
    }
    out.push_back(line.substr(at, tab - at));
    at = tab + 1;
  }
}

std::vector<std::string_view> Lines(std::string_view text) {
  std::vector<std::string_view> out;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t nl = text.find('\n', at);
    if (nl == std::string_view::npos) nl = text.size();
    if (nl > at) out.push_back(text.substr(at, nl - at));
    at = nl + 1;
  }
  return out;
}

std::string KeyFields(const ScheduleKey& k) {
  return k.integration + '\t' + k.connection + '\t' + k.sync + '\t' + k.variant;
}

std::string Tuple(const ScheduleKey& k) { return KeyFields(k); }

}  // namespace

std::string EngineCore::EncodeRemote(const RemoteCommand& c) {
  std::string out = "v1\t" + std::to_string(static_cast<int>(c.kind)) + '\t' +
                    std::to_string(c.arg) + '\t' + std::to_string(c.anchor) + '\n';
  for (const RemoteKey& k : c.keys) {
    out += std::to_string(k.partition) + '\t' + KeyFields(k.key) + '\n';
  }
  return out;
}

bool EngineCore::DecodeRemote(std::string_view body, RemoteCommand& c) {
  std::vector<std::string_view> lines = Lines(body);
  if (lines.empty()) return false;
  std::vector<std::string_view> head = Fields(lines[0]);
  if (head.size() != 4 || head[0] != "v1") return false;
  int kind = std::atoi(std::string(head[1]).c_str());
  if (kind < 0 || kind > static_cast<int>(RemoteKind::kDeleteVariant)) return false;
  c.kind = static_cast<RemoteKind>(kind);
  c.arg = std::atoll(std::string(head[2]).c_str());
  c.anchor = std::atoll(std::string(head[3]).c_str());
  c.keys.clear();
  for (std::size_t i = 1; i < lines.size(); ++i) {
    std::vector<std::string_view> f = Fields(lines[i]);
    if (f.size() != 5) return false;
    RemoteKey& k = c.keys.emplace_back();
    k.partition = std::atoi(std::string(f[0]).c_str());
    k.key = ScheduleKey{std::string(f[1]), std::string(f[2]), std::string(f[3]), std::string(f[4])};
  }
  return true;
}

void EngineCore::RefreshCatalog(const Target& target) {
  {
    MutexLock lock(mu_);
    if (shut_down_) return;
    std::uint32_t integ = cat_.FindIntegration(target.integration);
    bool known = integ != kNone;
    if (known && target.connection) {
      known = cat_.FindConnection(integ, *target.connection) != kNone;
    }
    for (const SyncSelector& sel : target.syncs) {
      if (known) known = cat_.FindSync(integ, sel.name) != kNone;
    }
    if (known) return;
  }
  // Something named is unknown here: it may have been created through another engine. The
  // catalog applied as the database holds it now, by version (a read merged without one could
  // bring back a connection deleted since: helper-36 saw such connections stay known for
  // minutes); on failure the command answers from what this engine knows.
  (void)SyncCatalogIfBehind();
}

Result<std::vector<cluster::StoredSchedule>> EngineCore::ResolveStored(const Target& target) {
  auto rows = inbox_->Schedules(target.integration, target.connection);
  if (!rows.ok()) {
    return Status::Unavailable("cluster mode: reading the command's schedules from the database: " +
                               rows.status().message() + "; nothing was changed");
  }
  MutexLock lock(mu_);
  // Checked in the order Catalog::Resolve checks them, with its messages.
  std::uint32_t integ = cat_.FindIntegration(target.integration);
  if (integ == kNone) {
    return Status::NotFound("integration " + Quote(target.integration) + " does not exist",
                            StatusSubject::kIntegration);
  }
  for (const SyncSelector& sel : target.syncs) {
    if (cat_.FindSync(integ, sel.name) == kNone) {
      return Status::NotFound(
          "sync " + Quote(sel.name) + " does not exist in integration " + Quote(target.integration),
          StatusSubject::kSync);
    }
  }
  if (target.connection && cat_.FindConnection(integ, *target.connection) == kNone) {
    return Status::NotFound("connection " + Quote(*target.connection) +
                                " does not exist in integration " + Quote(target.integration),
                            StatusSubject::kConnection);
  }
  std::vector<cluster::StoredSchedule> out;
  std::vector<bool> matched(target.syncs.size(), false);
  for (cluster::StoredSchedule& row : *rows) {
    if (row.state == static_cast<int>(ScheduleState::kDeleted)) continue;
    if (row.partition < 0) {
      row.partition =
          cluster::PartitionOf(row.integration, row.connection, row.sync, row.variant, partitions_);
    }
    if (target.syncs.empty()) {
      out.push_back(std::move(row));
      continue;
    }
    bool any = false;
    for (std::size_t i = 0; i < target.syncs.size(); ++i) {
      if (target.syncs[i].name == row.sync && target.syncs[i].variant == row.variant) {
        matched[i] = true;
        any = true;
      }
    }
    if (any) out.push_back(std::move(row));
  }
  for (std::size_t i = 0; i < target.syncs.size(); ++i) {
    if (matched[i]) continue;
    const SyncSelector& sel = target.syncs[i];
    if (sel.variant != kBaseVariant && cat_.FindVariant(sel.variant) == kNone) {
      return Status::NotFound("variant " + Quote(sel.variant) + " of sync " + Quote(sel.name) +
                                  " does not exist" +
                                  (target.connection ? " on connection " + Quote(*target.connection)
                                                     : std::string(" on any connection")),
                              StatusSubject::kVariant);
    }
    std::string where = target.connection
                            ? "on connection " + Quote(*target.connection)
                            : "on any connection of integration " + Quote(target.integration);
    std::string name = sel.name + "::" + sel.variant;
    StatusSubject subject =
        sel.variant == kBaseVariant ? StatusSubject::kSync : StatusSubject::kVariant;
    return Status::NotFound("sync " + Quote(name) + " has no schedule " + where, subject);
  }
  return out;
}

Result<std::vector<cluster::CommandPart>> EngineCore::SubmitAndWait(const RemoteCommand& cmd) {
  std::vector<int> parts;
  for (const RemoteKey& k : cmd.keys) parts.push_back(k.partition);
  std::sort(parts.begin(), parts.end());
  parts.erase(std::unique(parts.begin(), parts.end()), parts.end());
  bool in_doubt = false;
  auto id = inbox_->Submit(EncodeRemote(cmd), parts, &in_doubt);
  if (!id.ok()) {
    return Status::Unavailable(
        "cluster mode: the command could not be handed to the owners of its partitions: " +
        id.status().message() +
        (in_doubt ? "; read the schedules' status to learn whether it was applied"
                  : "; nothing was changed"));
  }
  // A dead owner's partitions are taken over within lease + 1 s of its death, then loaded and
  // their pending commands applied: a second more for that.
  const auto wait = options_.cluster->lease + std::chrono::seconds(2);
  const auto deadline = SteadyClock::now() + wait;
  std::optional<std::vector<cluster::CommandPart>> done;
  auto nap = std::chrono::milliseconds(1);
  for (;;) {
    auto st = inbox_->Parts(*id);
    if (st.ok() && std::none_of(st->begin(), st->end(), [](const cluster::CommandPart& p) {
          return p.state == cluster::PartState::kPending;
        })) {
      done = std::move(st).value();
      break;
    }
    if (SteadyClock::now() >= deadline) break;
    std::this_thread::sleep_for(nap);  // the owners answer in the database; no event to wait on
    nap = std::min(nap * 2, std::chrono::milliseconds(16));
  }
  if (!done) {
    // Cancels what no owner applied; what was applied stays so (the row lock orders the two).
    const auto give_up = SteadyClock::now() + options_.cluster->lease;
    for (;;) {
      auto st = inbox_->Cancel(*id);
      if (st.ok()) {
        done = std::move(st).value();
        break;
      }
      if (SteadyClock::now() >= give_up) {
        return Status::Unavailable(
            "cluster mode: command " + std::to_string(*id) +
            " was handed to the owners of its partitions, but its outcome could not be learned or "
            "its pending parts cancelled (" +
            st.status().message() +
            "); it may have been applied in part or whole, or will be: read the schedules' "
            "status");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  inbox_->Forget(*id);
  std::set<int> cancelled;
  for (const cluster::CommandPart& p : *done) {
    if (p.state == cluster::PartState::kCancelled) cancelled.insert(p.partition);
  }
  if (cancelled.empty()) return std::move(done).value();
  std::size_t not_applied = 0, applied = 0;
  std::string examples;
  for (const RemoteKey& k : cmd.keys) {
    if (cancelled.count(k.partition) == 0) {
      ++applied;
      continue;
    }
    if (++not_applied <= 5) examples += (examples.empty() ? "" : ", ") + ToString(k.key);
  }
  std::string which;
  for (int p : cancelled) which += (which.empty() ? "" : ", ") + std::to_string(p);
  return Status::Unavailable(
      "cluster mode: no engine applied this command in partition(s) " + which + " within " +
      std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(wait).count()) +
      " ms (their owner stopped, or could not commit in time, and no other engine had taken "
      "them over yet); nothing was "
      "applied to their " +
      std::to_string(not_applied) + " schedule(s) (" + examples + (not_applied > 5 ? ", ..." : "") +
      "); " +
      (applied == 0 ? std::string("nothing else was changed")
                    : "it was applied to the other " + std::to_string(applied) + " schedule(s)"));
}

Result<CommandResult> EngineCore::RemoteTarget(RemoteKind kind, const Target& target,
                                               std::int64_t arg) {
  auto rows = ResolveStored(target);
  if (!rows.ok()) return rows.status();
  CommandResult result;
  if (rows->empty()) return result;
  RemoteCommand cmd;
  cmd.kind = kind;
  cmd.arg = arg;
  cmd.anchor = NowMs();  // a start's anchor: the moment this engine received it
  cmd.keys.reserve(rows->size());
  for (const cluster::StoredSchedule& r : *rows) {
    cmd.keys.push_back(
        RemoteKey{r.partition, ScheduleKey{r.integration, r.connection, r.sync, r.variant}});
  }
  auto parts = SubmitAndWait(cmd);
  if (!parts.ok()) return parts.status();
  std::map<std::string, Outcome> outcomes;
  for (const cluster::CommandPart& p : *parts) {
    for (std::string_view line : Lines(p.result)) {
      std::vector<std::string_view> f = Fields(line);
      if (f.size() != 5) continue;
      int o = std::atoi(std::string(f[0]).c_str());
      if (o < 0 || o >= static_cast<int>(kOutcomeCount)) continue;
      ScheduleKey k{std::string(f[1]), std::string(f[2]), std::string(f[3]), std::string(f[4])};
      outcomes[Tuple(k)] = static_cast<Outcome>(o);
    }
  }
  for (const RemoteKey& k : cmd.keys) {
    auto it = outcomes.find(Tuple(k.key));
    if (it == outcomes.end()) continue;  // deleted before its owner applied the command
    ++result.counts[static_cast<std::size_t>(it->second)];
    if (target.report_keys) result.outcomes.push_back(KeyOutcome{k.key, it->second});
  }
  return result;
}

Result<Millis> EngineCore::RemoteFrequency(const ScheduleKey& key, std::int64_t override_ms) {
  Target t{key.integration, key.connection, {SyncSelector{key.sync, key.variant}}, false};
  auto rows = ResolveStored(t);
  if (!rows.ok()) return rows.status();
  if (rows->empty()) {
    return Status::NotFound("sync " + Quote(key.sync + "::" + key.variant) +
                                " has no schedule on connection " + Quote(key.connection),
                            StatusSubject::kVariant);
  }
  RemoteCommand cmd;
  cmd.kind = RemoteKind::kFrequency;
  cmd.arg = override_ms;
  cmd.anchor = NowMs();
  const cluster::StoredSchedule& r = rows->front();
  cmd.keys.push_back(
      RemoteKey{r.partition, ScheduleKey{r.integration, r.connection, r.sync, r.variant}});
  auto parts = SubmitAndWait(cmd);
  if (!parts.ok()) return parts.status();
  for (const cluster::CommandPart& p : *parts) {
    for (std::string_view line : Lines(p.result)) {
      std::vector<std::string_view> f = Fields(line);
      if (f.size() == 2 && f[0] == "F") return Millis(std::atoll(std::string(f[1]).c_str()));
    }
  }
  return Status::NotFound("variant " + Quote(key.variant) + " of sync " + Quote(key.sync) +
                              " does not exist on connection " + Quote(key.connection) +
                              " (deleted while the frequency was being updated)",
                          StatusSubject::kVariant);
}

Result<ScheduleStatus> EngineCore::RemoteVariant(const ScheduleKey& key, bool create) {
  auto rows = inbox_->Schedules(key.integration, key.connection);
  if (!rows.ok()) {
    return Status::Unavailable("cluster mode: reading the variant's schedule from the database: " +
                               rows.status().message() + "; nothing was changed");
  }
  bool exists = std::any_of(rows->begin(), rows->end(), [&](const cluster::StoredSchedule& r) {
    return r.sync == key.sync && r.variant == key.variant;
  });
  auto already = [&] {
    return Status::AlreadyExists("variant " + Quote(key.variant) + " of sync " + Quote(key.sync) +
                                     " already exists on connection " + Quote(key.connection),
                                 StatusSubject::kVariant);
  };
  auto missing = [&] {
    return Status::NotFound("variant " + Quote(key.variant) + " of sync " + Quote(key.sync) +
                                " does not exist on connection " + Quote(key.connection),
                            StatusSubject::kVariant);
  };
  if (create && exists) return already();
  if (!create && !exists) return missing();
  RemoteCommand cmd;
  cmd.kind = create ? RemoteKind::kCreateVariant : RemoteKind::kDeleteVariant;
  cmd.anchor = NowMs();
  cmd.keys.push_back(RemoteKey{cluster::PartitionOf(key, partitions_), key});
  auto parts = SubmitAndWait(cmd);
  if (!parts.ok()) return parts.status();
  std::string_view outcome;
  for (const cluster::CommandPart& p : *parts) {
    for (std::string_view line : Lines(p.result)) outcome = line;
  }
  if (outcome == "exists") return already();
  if (outcome == "missing") return missing();
  if (outcome == "deleted") return ScheduleStatus{};
  if (outcome != "created") {
    return Status::Internal("cluster mode: the owner of partition " +
                            std::to_string(cmd.keys[0].partition) +
                            " answered the variant's command with '" + std::string(outcome) + "'");
  }
  auto st = RemoteStatus(
      Target{key.integration, key.connection, {SyncSelector{key.sync, key.variant}}, false});
  if (!st.ok()) return st.status();
  if (st->empty()) return missing();  // deleted again meanwhile
  return st->front();
}

ScheduleStatus EngineCore::StatusOfStored(const cluster::StoredSchedule& row) const {
  ScheduleStatus st;
  st.key = ScheduleKey{row.integration, row.connection, row.sync, row.variant};
  st.id = row.uid;
  st.state = static_cast<ScheduleState>(row.state);
  if (row.running) {
    st.status = RunStatus::kRunning;
  } else if (st.state == ScheduleState::kPaused) {
    st.status = RunStatus::kPaused;
  } else {
    st.status = row.last_ok == 0 ? RunStatus::kError : RunStatus::kSuccess;
  }
  std::int64_t freq = row.frequency_override_ms;
  if (freq == 0) {
    std::uint32_t integ = cat_.FindIntegration(row.integration);
    std::uint32_t sync = integ == kNone ? kNone : cat_.FindSync(integ, row.sync);
    if (sync != kNone) freq = cat_.syncs[sync].frequency_ms;
  }
  st.frequency = Millis(freq);
  st.frequency_overridden = row.frequency_override_ms != 0;
  if (st.state == ScheduleState::kStarted) st.next_run = TimePoint(Millis(row.next_slot_ms));
  if (row.last_start_ms) st.last_start = TimePoint(Millis(row.last_start_ms));
  if (row.last_finish_ms) st.last_finish = TimePoint(Millis(row.last_finish_ms));
  if (row.last_ok >= 0) st.last_ok = row.last_ok == 1;
  if (!row.last_error.empty()) st.last_error = row.last_error;
  st.runs = row.runs;
  st.failures = row.failures;
  st.skipped = row.skipped;
  if (row.waiting_at) st.waiting_since = TimePoint(Millis(row.waiting_at));
  if (row.retry_at) st.next_retry = TimePoint(Millis(row.retry_at));
  return st;
}

Result<std::vector<ScheduleStatus>> EngineCore::RemoteStatus(const Target& target) {
  auto rows = ResolveStored(target);
  if (!rows.ok()) return rows.status();
  std::vector<ScheduleStatus> out;
  out.reserve(rows->size());
  {
    MutexLock lock(mu_);
    std::vector<bool> here(static_cast<std::size_t>(partitions_), false);
    for (int p : LoadedPartitions()) here[static_cast<std::size_t>(p)] = true;
    for (const cluster::StoredSchedule& r : *rows) {
      std::uint32_t idx = kNone;
      if (r.partition >= 0 && r.partition < partitions_ &&
          here[static_cast<std::size_t>(r.partition)]) {
        std::uint32_t integ = cat_.FindIntegration(r.integration);
        std::uint32_t conn = integ == kNone ? kNone : cat_.FindConnection(integ, r.connection);
        std::uint32_t sync = integ == kNone ? kNone : cat_.FindSync(integ, r.sync);
        std::uint32_t var = cat_.FindVariant(r.variant);
        if (conn != kNone && sync != kNone && var != kNone)
          idx = cat_.FindSchedule(conn, sync, var);
      }
      // This engine's own partitions: memory is ahead of the database (runs in flight).
      out.push_back(idx != kNone ? StatusOf(idx) : StatusOfStored(r));
    }
  }
  std::sort(out.begin(), out.end(), [](const ScheduleStatus& a, const ScheduleStatus& b) {
    return std::tie(a.key.connection, a.key.sync, a.key.variant) <
           std::tie(b.key.connection, b.key.sync, b.key.variant);
  });
  return out;
}

std::vector<int> EngineCore::LoadedPartitions() const {
  std::vector<int> out;
  std::map<int, std::int64_t> owned = keeper_->Owned();
  for (const auto& [p, epoch] : owned) {
    if (p >= 0 && p < partitions_ && active_[static_cast<std::size_t>(p)] == epoch && epoch > 0) {
      out.push_back(p);
    }
  }
  return out;
}

void EngineCore::ApplyPending(const std::vector<cluster::PendingCommand>& pending) {
  // One command at a time (each in its own transaction), oldest first.
  std::map<std::int64_t, std::vector<cluster::PendingCommand>> by_id;
  for (const cluster::PendingCommand& p : pending) by_id[p.id].push_back(p);
  for (auto& [id, parts] : by_id) {
    Effects fx;
    {
      MutexLock lock(mu_);
      if (shut_down_) return;
      ApplyPendingLocked(parts, fx);
    }
    Apply(fx);
  }
}

void EngineCore::ApplyPendingLocked(const std::vector<cluster::PendingCommand>& pending,
                                    Effects& fx) {
  std::map<std::int64_t, std::vector<const cluster::PendingCommand*>> by_id;
  for (const cluster::PendingCommand& p : pending) by_id[p.id].push_back(&p);
  std::vector<int> loaded = LoadedPartitions();
  for (auto& [id, parts] : by_id) {
    RemoteCommand cmd;
    if (!DecodeRemote(parts.front()->body, cmd)) continue;  // a newer engine's: left to it
    std::map<int, std::int64_t> epochs;  // the parts this engine applies, at its tenures
    for (const cluster::PendingCommand* p : parts) {
      if (applied_parts_.count({id, p->partition}) != 0) continue;
      if (!std::binary_search(loaded.begin(), loaded.end(), p->partition)) continue;
      epochs[p->partition] = active_[static_cast<std::size_t>(p->partition)];
    }
    if (epochs.empty()) continue;
    if (cmd.kind == RemoteKind::kCreateVariant) {
      // The catalog may lack the connection or the sync (created through another engine), and
      // the new schedules need uids: both before the transaction, which cannot undo them.
      bool known = true;
      for (const RemoteKey& k : cmd.keys) {
        std::uint32_t integ = cat_.FindIntegration(k.key.integration);
        known = known && integ != kNone && cat_.FindConnection(integ, k.key.connection) != kNone &&
                cat_.FindSync(integ, k.key.sync) != kNone;
      }
      if (!known) {
        Result<store::Snapshot> snap = [&] {
          MutexLock lock(loader_mu_);
          return loader_->LoadPartitions({});
        }();
        if (!snap.ok()) continue;  // left pending: the next look tries again
        (void)RecoverCatalog(*snap);
      }
      if (!EnsureUids(cmd.keys.size()).ok()) continue;
    }
    Txn tx = Begin(/*undoable=*/true);
    bool deleted = false;
    tx.Reserve(cmd.keys.size());
    std::map<int, std::string> results;
    for (const RemoteKey& k : cmd.keys) {
      if (epochs.count(k.partition) == 0) continue;
      std::uint32_t integ = cat_.FindIntegration(k.key.integration);
      std::uint32_t conn = integ == kNone ? kNone : cat_.FindConnection(integ, k.key.connection);
      std::uint32_t sync = integ == kNone ? kNone : cat_.FindSync(integ, k.key.sync);
      std::uint32_t var = cat_.FindVariant(k.key.variant);
      std::uint32_t idx = conn == kNone || sync == kNone || var == kNone
                              ? kNone
                              : cat_.FindSchedule(conn, sync, var);
      if (idx != kNone && cat_.schedules[idx].state == ScheduleState::kDeleted) idx = kNone;
      std::string& out = results[k.partition];
      if (cmd.kind == RemoteKind::kCreateVariant) {
        if (conn == kNone || sync == kNone || idx != kNone) {
          out += idx != kNone ? "exists\n" : "missing\n";
        } else {
          CreateSchedule(tx, conn, sync, cat_.InternVariant(k.key.variant));
          out += "created\n";
        }
        continue;
      }
      if (cmd.kind == RemoteKind::kDeleteVariant) {
        if (idx == kNone) {
          out += "missing\n";
        } else {
          DeleteSchedules(tx, {idx});
          deleted = true;
          out += "deleted\n";
        }
        continue;
      }
      // Gone (deleted since the command was received): the command applies to what exists.
      if (idx == kNone) continue;
      Outcome o = Outcome::kStarted;
      switch (cmd.kind) {
        case RemoteKind::kStart:
          o = StartOne(tx, idx, cmd.anchor);
          break;
        case RemoteKind::kPause:
          o = PauseOne(tx, idx);
          break;
        case RemoteKind::kTrigger:
          o = TriggerOne(tx, idx, cmd.arg == 1 ? RunMode::kFullResync : RunMode::kIncremental);
          break;
        case RemoteKind::kFrequency:
          Touch(tx, idx).freq_override = cmd.arg;
          Regrid(tx, idx);
          out += "F\t" + std::to_string(cat_.FrequencyOf(cat_.schedules[idx])) + '\n';
          continue;
        case RemoteKind::kCreateVariant:
        case RemoteKind::kDeleteVariant:
          continue;  // above
      }
      out += std::to_string(static_cast<int>(o)) + '\t' + KeyFields(k.key) + '\n';
    }
    if (deleted) DrainWaiting(tx);  // the cancelled runs freed their places under the caps
    for (const auto& [p, epoch] : epochs) {
      tx.batch.commands.push_back(store::CommandApplied{id, p, epoch, results[p]});
      tx.batch.fence.push_back(store::Tenure{p, epoch});
    }
    if (Status st = Commit(tx); !st.ok()) continue;  // rolled back; the parts stay pending
    const auto now = SteadyClock::now();
    for (const auto& [p, epoch] : epochs) applied_parts_[{id, p}] = now;
    for (RunPtr& r : tx.fx.dispatch) fx.dispatch.push_back(std::move(r));
    for (auto& c : tx.fx.cancel) fx.cancel.push_back(std::move(c));
  }
}

void EngineCore::InboxLoop() {
  pthread_setname_np(pthread_self(), "syncsched-cmds");
  // Notices wake it at once; a look every 500 ms finds what a lost notice left pending (NOTIFY
  // is not delivered to a session that was disconnected).
  constexpr auto kPoll = std::chrono::milliseconds(500);
  auto last_poll = SteadyClock::time_point{};
  auto last_cleanup = SteadyClock::now();
  // Connections for this thread's reads, a partition load's, and commands received meanwhile.
  inbox_->Warm(3);
  while (!inbox_stop_.load()) {
    auto began = SteadyClock::now();
    // A partition just loaded: a command that arrived while it loaded (after the load read the
    // pending parts, before it was merged) is read now rather than at the next poll.
    bool notice = inbox_poke_.exchange(false) ||
                  inbox_->WaitForNotice(std::chrono::milliseconds(100)) ||
                  inbox_poke_.exchange(false);
    auto now = SteadyClock::now();
    if (!notice && now - began < std::chrono::milliseconds(20)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the database is away
    }
    if (!notice && now - last_poll < kPoll) continue;
    last_poll = now;
    if (!notice) inbox_->Warm(3);  // connections closed by a server restart, or lent out
    std::vector<int> parts;
    {
      MutexLock lock(mu_);
      if (shut_down_) break;
      parts = LoadedPartitions();
      std::erase_if(applied_parts_,
                    [&](const auto& e) { return now - e.second > std::chrono::minutes(1); });
    }
    // A catalog changed through another engine (its commit notifies this channel too).
    (void)SyncCatalogIfBehind();
    if (parts.empty()) continue;
    auto pending = inbox_->Pending(parts);
    if (pending.ok() && !pending->empty()) ApplyPending(*pending);
    if (now - last_cleanup > std::chrono::minutes(1)) {
      inbox_->Cleanup();
      last_cleanup = now;
    }
  }
}

}  // namespace syncsched::core
