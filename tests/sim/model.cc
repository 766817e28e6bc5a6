#include "sim/model.h"

#include <algorithm>
#include <sstream>

namespace syncsched::sim {
namespace {

using std::chrono::milliseconds;

std::int64_t Ms(TimePoint t) { return t.time_since_epoch().count(); }

// The smallest a + k*f strictly after t, k >= 0: a grid starts at its anchor (for a spread
// schedule, its first scheduled slot).
TimePoint FirstAfter(TimePoint a, Millis f, TimePoint t) {
  if (t < a) return a;
  std::int64_t d = (t - a).count(), fc = f.count();
  return a + (d / fc + 1) * f;
}
// The smallest a + k*f at or after t.
TimePoint FirstAtOrAfter(TimePoint a, Millis f, TimePoint t) {
  TimePoint x = FirstAfter(a, f, t - Millis(1));
  return x;
}
bool OnGrid(TimePoint a, Millis f, TimePoint t) {
  std::int64_t d = (t - a).count() % f.count();
  return d == 0;
}

bool ValidIntegration(const std::string& s) {
  if (s.empty() || s.size() > 255) return false;
  for (unsigned char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '~' || c == ':' || c == '.' || c == '@' || c == ' ' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}
bool ValidConnection(const std::string& s) {
  if (s.empty() || s.size() > 255) return false;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}
bool ValidName(const std::string& s) {
  if (s.empty() || s.size() > 255) return false;
  for (unsigned char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string CodeName(StatusCode c) { return std::string(StatusCodeName(c)); }

std::string Codes(const std::vector<StatusCode>& v) {
  std::string out;
  for (StatusCode c : v) {
    if (!out.empty()) out += "|";
    out += CodeName(c);
  }
  return out;
}

std::string OutcomeName(Outcome o) { return std::string(ToString(o)); }

}  // namespace

const std::vector<FrequencyCase>& FrequencyTable() {
  using namespace std::chrono_literals;
  static const std::vector<FrequencyCase> table = {
      {"every 5m", 5min},
      {"5 minutes", 5min},
      {"every 10 minutes", 10min},
      {"15m", 15min},
      {"every quarter hour", 15min},
      {"every 20min", 20min},
      {"every half hour", 30min},
      {"30 mins", 30min},
      {"45m", 45min},
      {"every hour", 1h},
      {"1h", 1h},
      {"1.5h", 90min},
      {"every 2 hours", 2h},
      {"2hrs", 2h},
      {"every 6h", 6h},
      {"every half day", 12h},
      {"every day", 24h},
      {"every 90s", 90s},
      // Invalid: outside the default bounds (30 s .. 31 d) or not the grammar.
      {"10s", 10s},
      {"every 40 days", 40 * 24h},
      {"every 0m", 0min},
      {"every blue moon", std::nullopt},
      {"", std::nullopt},
      {"5 fortnights", std::nullopt},
      {"-5m", std::nullopt},
      {"every", std::nullopt},
  };
  return table;
}

std::optional<Millis> ModelFrequency(const std::string& text) {
  for (const FrequencyCase& c : FrequencyTable()) {
    if (text == c.text) return c.value;
  }
  return std::nullopt;
}

std::string KeyString(const Key& k) {
  return std::get<0>(k) + "/" + std::get<1>(k) + "/" + std::get<2>(k) + "::" + std::get<3>(k);
}

std::string TimeString(TimePoint t) { return FormatTime(t); }

static std::string Opt(const std::optional<TimePoint>& t) { return t ? FormatTime(*t) : "-"; }

std::string StatusLine(const ScheduleStatus& s) {
  std::ostringstream o;
  o << ToString(s.key) << " id=" << s.id << " " << ToString(s.state) << " " << ToString(s.status)
    << " f=" << s.frequency.count() << (s.frequency_overridden ? "(o)" : "")
    << " next=" << Opt(s.next_run) << " start=" << Opt(s.last_start)
    << " finish=" << Opt(s.last_finish) << " ok=" << (s.last_ok ? (*s.last_ok ? "1" : "0") : "-")
    << " err=\"" << s.last_error << "\""
    << " runs=" << s.runs << " failures=" << s.failures << " skipped=" << s.skipped
    << " waiting=" << Opt(s.waiting_since) << " retry=" << Opt(s.next_retry) << " counts=[";
  for (const ModelCounts& c : s.last_counts) {
    o << c.model << ":" << c.added << "/" << c.updated << "/" << c.deleted << " ";
  }
  o << "] decisions=[";
  for (const Decision& d : s.decisions) {
    o << FormatTime(d.at) << " " << ToString(d.reason) << " " << d.detail << "; ";
  }
  o << "]";
  return o.str();
}

TimePoint RunModel::Deadline() const {
  TimePoint d = timeout_at;
  if (heartbeat) d = std::min(d, last_beat + *heartbeat);
  return d;
}

void Model::Fail(const std::string& what) {
  if (failure_.empty()) failure_ = what;
}

const SchedModel* Model::Find(const Key& k) const {
  auto it = schedules_.find(k);
  return it == schedules_.end() ? nullptr : &it->second;
}
SchedModel* Model::FindMut(const Key& k) {
  auto it = schedules_.find(k);
  return it == schedules_.end() ? nullptr : &it->second;
}

const SyncModel* Model::SyncOf(const SchedModel& s) const {
  auto i = integrations_.find(std::get<0>(s.key));
  if (i == integrations_.end()) return nullptr;
  auto y = i->second.syncs.find(std::get<2>(s.key));
  return y == i->second.syncs.end() ? nullptr : &y->second;
}

Millis Model::FreqOf(const SchedModel& s) const {
  if (s.override_freq) return *s.override_freq;
  const SyncModel* y = SyncOf(s);
  return y ? y->freq : Millis(0);
}

std::size_t Model::InFlightCount(const std::string* integration) const {
  std::size_t n = 0;
  for (const auto& [k, s] : schedules_) {
    if (s.run && (!integration || std::get<0>(k) == *integration)) ++n;
  }
  return n;
}

bool Model::Saturated(const std::string& integration) const {
  if (config_.max_concurrent_runs != 0 && InFlightCount(nullptr) >= config_.max_concurrent_runs) {
    return true;
  }
  auto it = integrations_.find(integration);
  if (it != integrations_.end() && it->second.max_concurrency != 0 &&
      InFlightCount(&integration) >= it->second.max_concurrency) {
    return true;
  }
  return false;
}

void Model::ExpectCancel(std::uint64_t serial, StatusCode code) {
  expected_cancels_[serial] = code;
}

bool Model::InFlight(std::uint64_t serial) const {
  for (const auto& [k, s] : schedules_) {
    if (s.run && s.run->serial == serial) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Schedules

void Model::Owe(SchedModel& s, bool sched, bool trig, bool resync, std::optional<TimePoint> slot) {
  if (s.fuzzy && sched && !trig) {  // after a tie, a slot's or buffer's run is not certain
    ++s.may_runs;
    return;
  }
  if (!s.must) {
    s.must = true;
    s.must_or_retry = false;
    s.must_slot = slot;
    s.must_slot_known = slot.has_value();
  } else if (!slot || !s.must_slot_known || *slot != *s.must_slot) {
    s.must_slot_known = false;  // merged into the one waiting run: its slot is not ours to say
  }
  s.must_sched |= sched;
  s.must_trig |= trig;
  s.must_resync |= resync;
}

void Model::StartOne(TimePoint now, SchedModel& s) {
  s.started = true;
  s.hinted = false;
  if (s.retry) {  // a retry armed while paused now meets a grid: the first slot may win over it
    s.retry->must = false;
    s.retry->regridded = true;
  }
  const SyncModel* y = SyncOf(s);
  Millis f = FreqOf(s);
  if (y && y->def.spread) {
    s.anchor.reset();
    s.spread_start = now;
    s.next = NextExpect{NextExpect::Kind::kSpreadStart, std::nullopt, {}, now};
  } else {
    s.anchor = now;
    s.next = NextExpect{NextExpect::Kind::kKnown, now + f, {}, now};
  }
  // A run in flight that nobody cancelled stands for the immediate run (docs/design.md); after a
  // pause's cancellation, the start's own run follows it.
  if (s.run && !s.run->cancelled) return;
  // With nothing in flight or waiting, the start's run is dispatched at once and stands for a
  // retry still pending, as a triggered run does (engine_core.cc, StartSchedule).
  if (!s.run && s.retry && !s.retry_due && !s.engine_waiting) s.retry.reset();
  // Behind a cancelled run, the start's run follows it, with a slot the contract leaves open.
  Owe(s, /*sched=*/true, /*trig=*/false, /*resync=*/false,
      s.run ? std::nullopt : std::optional(now));
  // A retry already waiting for a cap is the one waiting run: it may stand for the start's.
  if (s.retry && (s.retry_due || s.engine_waiting)) s.must_or_retry = true;
}

void Model::PauseOne(TimePoint, SchedModel& s) {
  s.started = false;
  s.engine_waiting = false;
  s.anchor.reset();
  s.spread_start.reset();
  s.next = NextExpect{};
  s.hinted = false;
  if (s.run && !s.run->cancelled) {
    s.run->cancelled = true;
    ExpectCancel(s.run->serial, StatusCode::kCancelled);
  }
  if (s.must) {
    // Slots, the start's run and buffered runs are dropped; whether a trigger's run waiting for a
    // cap survives a pause the contract does not say: it may run.
    if (s.must_trig) {
      ++s.may_runs;
      if (s.must_resync) ++s.may_resync;
    }
    s.must = s.must_resync = s.must_sched = s.must_trig = false;
  }
  s.buffered = false;
  if (s.retry) {
    if (s.retry->paused_origin) {
      s.retry->must = false;
    } else {
      s.retry.reset();
    }
  }
  s.retry_due = false;
}

void Model::Regrid(TimePoint now, SchedModel& s, Millis old_f) {
  if (!s.started) return;
  const SyncModel* y = SyncOf(s);
  Millis f = FreqOf(s);
  if (y && y->def.spread) {
    // The key's phase grid for the new period; before its first scheduled run, that run stays at
    // least half a period after the immediate one (engine.h, SyncDefinition::spread).
    // Whether that half period is the old one or the new one is not said: either.
    s.anchor.reset();
    NextExpect e{NextExpect::Kind::kSpreadRegrid, std::nullopt, {}, now};
    // The engine may also keep half a period after the latest run: at most now + f/2 + f.
    e.value = now + f / 2 + f;  // the latest it may be
    if (s.spread_start) {
      e.value = std::max(*e.value, *s.spread_start + std::max(f, old_f) / 2 + f);
    }
    s.next = e;
  } else if (s.anchor) {
    NextExpect e{NextExpect::Kind::kOneOf, std::nullopt, {}, now};
    e.candidates.push_back(FirstAtOrAfter(*s.anchor, f, now));
    e.candidates.push_back(FirstAfter(*s.anchor, f, now));
    if (s.hinted && s.next.value) e.candidates.push_back(*s.next.value);
    s.next = e;
  } else {
    s.next = NextExpect{NextExpect::Kind::kOnGrid, std::nullopt, {}, now - Millis(1)};
  }
  s.hinted = false;
  if (s.retry) {  // the next slot moved: the retry may now reach it, and the slot then wins
    s.retry->must = false;
    s.retry->regridded = true;
  }
}

void Model::Create(TimePoint now, const Key& key) {
  SchedModel s;
  s.key = key;
  schedules_[key] = s;
  SchedModel& m = schedules_[key];
  const SyncModel* y = SyncOf(m);
  if (y && y->def.auto_start) StartOne(now, m);
}

void Model::Remove(const Key& key) {
  SchedModel* s = FindMut(key);
  if (!s) return;
  // A token fires once: a run a pause or a resync already cancelled sees nothing new.
  if (s->run && !s->run->cancelled) ExpectCancel(s->run->serial, StatusCode::kCancelled);
  schedules_.erase(key);
}

void Model::FireSlot(TimePoint t, SchedModel& s) {
  ++stats_.slots;
  Millis f = FreqOf(s);
  const SyncModel* y = SyncOf(s);
  if (s.run) {
    ++s.skipped;
    if (y && y->def.overlap == OverlapPolicy::kBufferOne) s.buffered = true;
    if (s.fuzzy) s.buffered_must = false;
  } else if (s.must || (s.retry && s.retry_due) ||
             (s.engine_waiting && (s.may_runs > 0 || s.may_resync > 0))) {
    ++s.skipped;  // a run is already waiting for a cap: slots passing meanwhile are skipped
  } else {
    Owe(s, /*sched=*/true, false, false, t);
  }
  if (s.retry && !s.retry_due) {  // a slot that comes before a retry wins over it
    s.retry.reset();
  }
  s.hinted = false;
  s.spread_start.reset();
  if (s.anchor) {
    s.next = NextExpect{NextExpect::Kind::kKnown, FirstAfter(*s.anchor, f, t), {}, t};
  } else {
    s.next = NextExpect{NextExpect::Kind::kOnGrid, std::nullopt, {}, t};
  }
}

void Model::Abandon(TimePoint t, SchedModel& s) {
  ++stats_.abandons;
  ExpectCancel(s.run->serial, StatusCode::kDeadlineExceeded);
  ++s.runs;
  ++s.failures;
  s.last_ok = false;
  s.last_error_has.clear();
  s.last_finish = t;
  s.last_finish_known = true;
  s.run.reset();
  if (s.buffered) {  // whether a timed-out run's buffered slot follows it is not said: it may
    ++s.may_runs;
    s.buffered = false;
  }
  s.buffered_must = true;
}

void Model::EndRun(SchedModel& s) {
  s.run.reset();
  if (s.buffered) {
    if (s.buffered_must) {
      Owe(s, /*sched=*/true, false, false, std::nullopt);
    } else {
      ++s.may_runs;
    }
    s.buffered = false;
  }
  s.buffered_must = true;
}

// ---------------------------------------------------------------------------------------------
// Target resolution and errors

std::vector<StatusCode> Model::Resolve(const Target& target, std::vector<Key>& out) const {
  out.clear();
  // A malformed name is INVALID_ARGUMENT whatever else the target names (every name is checked
  // before any is looked up); NOT_FOUND is for a well-formed name that does not exist.
  bool malformed = !ValidIntegration(target.integration) ||
                   (target.connection && !ValidConnection(*target.connection));
  for (const SyncSelector& sel : target.syncs) {
    malformed = malformed || !ValidName(sel.name) || !ValidName(sel.variant);
  }
  if (malformed) return {StatusCode::kInvalidArgument};
  auto integ = integrations_.find(target.integration);
  if (integ == integrations_.end()) return {StatusCode::kNotFound};
  if (target.connection && !integ->second.connections.count(*target.connection)) {
    return {StatusCode::kNotFound};
  }
  auto in_scope = [&](const Key& k) {
    return std::get<0>(k) == target.integration &&
           (!target.connection || std::get<1>(k) == *target.connection);
  };
  std::set<Key> keys;
  for (const auto& [k, s] : schedules_) {
    if (!in_scope(k)) continue;
    if (target.syncs.empty()) {
      keys.insert(k);
      continue;
    }
    for (const SyncSelector& sel : target.syncs) {
      if (std::get<2>(k) == sel.name && std::get<3>(k) == sel.variant) keys.insert(k);
    }
  }
  for (const SyncSelector& sel : target.syncs) {
    bool found = false;
    for (const Key& k : keys) {
      if (std::get<2>(k) == sel.name && std::get<3>(k) == sel.variant) found = true;
    }
    if (!found) return {StatusCode::kNotFound};
  }
  out.assign(keys.begin(), keys.end());
  return {};
}

bool Model::CheckError(const std::string& what, const Status& answer,
                       const std::vector<StatusCode>& allowed) {
  if (answer.ok()) {
    Fail(what + ": accepted an invalid request (expected " + Codes(allowed) + ")");
    return false;
  }
  if (std::find(allowed.begin(), allowed.end(), answer.code()) == allowed.end()) {
    if (allow_errors_ && answer.code() == StatusCode::kUnavailable) return true;
    Fail(what + ": error " + answer.ToString() + ", expected " + Codes(allowed));
    return false;
  }
  if (answer.message().empty()) Fail(what + ": an error without a message");
  return true;
}

// Whether a valid command may have failed: only when the store was made to fail.
static bool AcceptFailure(Model& m, bool allow, const std::string& what, const Status& st) {
  if (st.ok()) return false;
  if (!allow) m.Fail(what + " failed: " + st.ToString());
  return true;
}

// ---------------------------------------------------------------------------------------------
// Commands

void Model::DefineSync(TimePoint now, const std::string& integration, const SyncDefinition& def,
                       const Status& answer) {
  const std::string what =
      "DefineSync(" + integration + ", " + def.name + ", \"" + def.frequency + "\")";
  std::vector<StatusCode> errors;
  std::optional<Millis> f = ModelFrequency(def.frequency);
  if (!ValidIntegration(integration) || !ValidName(def.name) || !f || *f < config_.bounds.min ||
      *f > config_.bounds.max || (def.timeout && def.timeout->count() <= 0) ||
      (def.heartbeat_timeout && def.heartbeat_timeout->count() <= 0) ||
      def.retry.backoff.count() <= 0 || def.retry.max < 0) {
    errors.push_back(StatusCode::kInvalidArgument);
  }
  if (!errors.empty()) {
    CheckError(what, answer, errors);
    return;
  }
  if (AcceptFailure(*this, allow_errors_, what, answer)) return;
  IntegrationModel& integ = integrations_[integration];
  auto it = integ.syncs.find(def.name);
  if (it == integ.syncs.end()) {
    integ.syncs[def.name] = SyncModel{def, *f};
    for (const std::string& c : integ.connections) {
      Create(now, Key{integration, c, def.name, std::string(kBaseVariant)});
    }
    return;
  }
  SyncModel old = it->second;
  it->second = SyncModel{def, *f};
  for (auto& [k, s] : schedules_) {
    if (std::get<0>(k) != integration || std::get<2>(k) != def.name) continue;
    if (old.freq != *f && !s.override_freq) Regrid(now, s, old.freq);
    if (old.def.overlap != def.overlap && s.run) {
      s.buffered_must = false;  // which policy a run in flight follows is not said
    }
    if ((old.def.retry.max != def.retry.max || old.def.retry.backoff != def.retry.backoff) &&
        s.retry) {
      s.retry->must = false;
    }
  }
}

void Model::AddConnection(TimePoint now, const std::string& integration,
                          const std::string& connection, const Status& answer) {
  const std::string what = "AddConnection(" + integration + ", " + connection + ")";
  std::vector<StatusCode> errors;
  auto integ = integrations_.find(integration);
  if (!ValidConnection(connection)) errors.push_back(StatusCode::kInvalidArgument);
  if (integ == integrations_.end()) {
    errors.push_back(StatusCode::kNotFound);
    if (!ValidIntegration(integration)) errors.push_back(StatusCode::kInvalidArgument);
  } else if (integ->second.connections.count(connection)) {
    errors.push_back(StatusCode::kAlreadyExists);
  }
  if (!errors.empty()) {
    CheckError(what, answer, errors);
    return;
  }
  if (AcceptFailure(*this, allow_errors_, what, answer)) return;
  integ->second.connections.insert(connection);
  for (const auto& [name, y] : integ->second.syncs) {
    Create(now, Key{integration, connection, name, std::string(kBaseVariant)});
  }
}

void Model::DeleteConnection(TimePoint, const std::string& integration,
                             const std::string& connection, const Status& answer) {
  const std::string what = "DeleteConnection(" + integration + ", " + connection + ")";
  std::vector<StatusCode> errors;
  auto integ = integrations_.find(integration);
  if (integ == integrations_.end() || !integ->second.connections.count(connection)) {
    errors.push_back(StatusCode::kNotFound);
    if (!ValidIntegration(integration) || !ValidConnection(connection)) {
      errors.push_back(StatusCode::kInvalidArgument);
    }
  }
  if (!errors.empty()) {
    CheckError(what, answer, errors);
    return;
  }
  if (AcceptFailure(*this, allow_errors_, what, answer)) return;
  std::vector<Key> gone;
  for (const auto& [k, s] : schedules_) {
    if (std::get<0>(k) == integration && std::get<1>(k) == connection) gone.push_back(k);
  }
  for (const Key& k : gone) Remove(k);
  integ->second.connections.erase(connection);
}

void Model::CreateVariant(TimePoint now, const ScheduleKey& key, const Status& answer) {
  const std::string what = "CreateVariant(" + ToString(key) + ")";
  std::vector<StatusCode> errors;
  auto integ = integrations_.find(key.integration);
  bool parts = integ != integrations_.end() && integ->second.connections.count(key.connection) &&
               integ->second.syncs.count(key.sync);
  if (!parts) {
    errors.push_back(StatusCode::kNotFound);
    if (!ValidIntegration(key.integration) || !ValidConnection(key.connection) ||
        !ValidName(key.sync)) {
      errors.push_back(StatusCode::kInvalidArgument);
    }
  }
  if (!ValidName(key.variant) || key.variant == kBaseVariant) {
    errors.push_back(StatusCode::kInvalidArgument);
    if (key.variant == kBaseVariant && parts) errors.push_back(StatusCode::kAlreadyExists);
  } else if (parts && schedules_.count(KeyOf(key))) {
    errors.push_back(StatusCode::kAlreadyExists);
  }
  if (!errors.empty()) {
    CheckError(what, answer, errors);
    return;
  }
  if (AcceptFailure(*this, allow_errors_, what, answer)) return;
  Create(now, KeyOf(key));
}

void Model::DeleteVariant(TimePoint, const ScheduleKey& key, const Status& answer) {
  const std::string what = "DeleteVariant(" + ToString(key) + ")";
  std::vector<StatusCode> errors;
  if (key.variant == kBaseVariant) errors.push_back(StatusCode::kInvalidArgument);
  if (!schedules_.count(KeyOf(key))) {
    errors.push_back(StatusCode::kNotFound);
    if (!ValidIntegration(key.integration) || !ValidConnection(key.connection) ||
        !ValidName(key.sync) || !ValidName(key.variant)) {
      errors.push_back(StatusCode::kInvalidArgument);
    }
  }
  if (!errors.empty()) {
    CheckError(what, answer, errors);
    return;
  }
  if (AcceptFailure(*this, allow_errors_, what, answer)) return;
  Remove(KeyOf(key));
}

void Model::Command(TimePoint now, Cmd cmd, const Target& target,
                    const Result<CommandResult>& answer) {
  static const char* kNames[] = {"Start", "Pause", "Trigger", "Trigger(full_resync)"};
  std::string what = std::string(kNames[static_cast<int>(cmd)]) + "(" + target.integration +
                     (target.connection ? "/" + *target.connection : std::string("/*"));
  for (const SyncSelector& s : target.syncs) what += " " + s.name + "::" + s.variant;
  what += ")";
  std::vector<Key> keys;
  std::vector<StatusCode> errors = Resolve(target, keys);
  if (!errors.empty()) {
    CheckError(what, answer.status(), errors);
    return;
  }
  if (AcceptFailure(*this, allow_errors_, what, answer.status())) return;
  const CommandResult& r = *answer;
  std::map<Key, Outcome> got;
  for (const KeyOutcome& ko : r.outcomes) {
    if (!got.emplace(KeyOf(ko.key), ko.outcome).second) {
      Fail(what + ": two outcomes for " + ToString(ko.key));
    }
  }
  std::size_t total = 0;
  for (std::size_t c : r.counts) total += c;
  if (got.size() != keys.size() || total != keys.size()) {
    Fail(what + ": " + std::to_string(got.size()) + " outcomes (counts " + std::to_string(total) +
         ") for " + std::to_string(keys.size()) + " targeted schedules");
    return;
  }
  std::array<std::size_t, kOutcomeCount> counts{};
  for (const Key& k : keys) {
    auto g = got.find(k);
    if (g == got.end()) {
      Fail(what + ": no outcome for " + KeyString(k));
      return;
    }
    ++counts[static_cast<std::size_t>(g->second)];
    SchedModel& s = schedules_[k];
    std::vector<Outcome> allowed;
    switch (cmd) {
      case Cmd::kStart:
        allowed = {s.started ? Outcome::kAlreadyStarted : Outcome::kStarted};
        break;
      case Cmd::kPause:
        allowed = {s.started ? Outcome::kPaused : Outcome::kAlreadyPaused};
        break;
      case Cmd::kTrigger:
        if (s.run) {
          allowed = {Outcome::kAlreadyRunning};
        } else if (s.must || s.engine_waiting || (s.retry && s.retry_due)) {
          // A run waits for a cap: it stands for the trigger either way.
          allowed = {Outcome::kAlreadyRunning, Outcome::kTriggered};
        } else {
          allowed = {Outcome::kTriggered};
        }
        break;
      case Cmd::kResync:
        allowed = {Outcome::kTriggered};
        break;
    }
    if (std::find(allowed.begin(), allowed.end(), g->second) == allowed.end()) {
      std::string exp;
      for (Outcome o : allowed) exp += (exp.empty() ? "" : "|") + OutcomeName(o);
      Fail(what + ": " + KeyString(k) + " answered " + OutcomeName(g->second) + ", expected " +
           exp + (s.run ? " (a run is in flight)" : "") + (s.must ? " (a run is owed)" : ""));
      return;
    }
    switch (cmd) {
      case Cmd::kStart:
        if (!s.started) StartOne(now, s);
        break;
      case Cmd::kPause:
        if (s.started) PauseOne(now, s);
        break;
      case Cmd::kTrigger:
        if (g->second == Outcome::kTriggered) {
          // A run waiting for a cap (owed, optional or a retry) is the one waiting run: the
          // trigger merges into it, with its slot.
          const bool waiting = s.must || s.engine_waiting || (s.retry && s.retry_due);
          const bool waiting_retry = !s.must && s.retry && (s.retry_due || s.engine_waiting);
          Owe(s, false, /*trig=*/true, false, waiting ? std::nullopt : std::optional(now));
          if (waiting_retry) s.must_or_retry = true;
          if (s.retry) s.retry->must = false;  // the triggered run may stand for the retry
        }
        break;
      case Cmd::kResync:
        if (s.run) {
          if (!s.run->cancelled) {
            s.run->cancelled = true;
            ExpectCancel(s.run->serial, StatusCode::kCancelled);
          }
          Owe(s, false, true, true, std::nullopt);
        } else if (s.must || s.engine_waiting || (s.retry && s.retry_due)) {
          // Upgrades the waiting run, which may be a retry.
          const bool waiting_retry = !s.must && s.retry && (s.retry_due || s.engine_waiting);
          Owe(s, false, true, true, std::nullopt);
          if (waiting_retry) s.must_or_retry = true;
          if (s.retry) {
            s.retry->mode_may_upgrade = true;
            s.retry->must = false;
          }
        } else {
          Owe(s, false, true, true, now);
          if (s.retry) s.retry->must = false;
        }
        break;
    }
  }
  if (counts != r.counts) Fail(what + ": counts do not match the outcomes");
}

void Model::GetStatus(TimePoint now, const Target& target,
                      const Result<std::vector<ScheduleStatus>>& answer) {
  std::string what = "GetStatus(" + target.integration +
                     (target.connection ? "/" + *target.connection : std::string("/*")) + ")";
  std::vector<Key> keys;
  std::vector<StatusCode> errors = Resolve(target, keys);
  if (!errors.empty()) {
    CheckError(what, answer.status(), errors);
    return;
  }
  if (AcceptFailure(*this, allow_errors_, what, answer.status())) return;
  const auto& list = *answer;
  if (list.size() != keys.size()) {
    Fail(what + ": " + std::to_string(list.size()) + " entries, expected " +
         std::to_string(keys.size()));
    return;
  }
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (KeyOf(list[i].key) != keys[i]) {
      Fail(what + ": entry " + std::to_string(i) + " is " + ToString(list[i].key) + ", expected " +
           KeyString(keys[i]) + " (order: connection, sync, variant)");
      return;
    }
    CheckOne(now, schedules_[keys[i]], list[i], /*after_command=*/false);
  }
}

void Model::UpdateFrequency(TimePoint now, const ScheduleKey& key,
                            const std::optional<std::string>& frequency,
                            const Result<Millis>& answer) {
  const std::string what = "UpdateFrequency(" + ToString(key) + ", " +
                           (frequency ? "\"" + *frequency + "\"" : std::string("null")) + ")";
  std::vector<StatusCode> errors;
  std::optional<Millis> f;
  if (frequency) {
    f = ModelFrequency(*frequency);
    if (!f || *f < config_.bounds.min || *f > config_.bounds.max) {
      errors.push_back(StatusCode::kInvalidArgument);
    }
  }
  if (!schedules_.count(KeyOf(key))) {
    errors.push_back(StatusCode::kNotFound);
    if (!ValidIntegration(key.integration) || !ValidConnection(key.connection) ||
        !ValidName(key.sync) || !ValidName(key.variant)) {
      errors.push_back(StatusCode::kInvalidArgument);
    }
  }
  if (!errors.empty()) {
    CheckError(what, answer.status(), errors);
    return;
  }
  if (AcceptFailure(*this, allow_errors_, what, answer.status())) return;
  SchedModel& s = schedules_[KeyOf(key)];
  const Millis old_f = FreqOf(s);
  s.override_freq = f;
  Regrid(now, s, old_f);
  if (*answer != FreqOf(s)) {
    Fail(what + ": answered " + FormatFrequency(*answer) + ", expected " +
         FormatFrequency(FreqOf(s)));
  }
}

void Model::SetLimits(TimePoint, const std::string& integration, std::size_t max_concurrency,
                      const Status& answer) {
  const std::string what =
      "SetIntegrationLimits(" + integration + ", " + std::to_string(max_concurrency) + ")";
  auto integ = integrations_.find(integration);
  if (integ == integrations_.end()) {
    std::vector<StatusCode> errors{StatusCode::kNotFound};
    if (!ValidIntegration(integration)) errors.push_back(StatusCode::kInvalidArgument);
    CheckError(what, answer, errors);
    return;
  }
  if (AcceptFailure(*this, allow_errors_, what, answer)) return;
  integ->second.max_concurrency = max_concurrency;
}

// ---------------------------------------------------------------------------------------------
// Runs

void Model::OnInvoke(TimePoint now, std::uint64_t serial, const RunContext& ctx) {
  const Key key = KeyOf(ctx.key);
  const std::string what = "run " + ctx.run_id + " of " + KeyString(key) + " (slot " +
                           TimeString(ctx.slot) + ", " + std::string(ToString(ctx.mode)) +
                           ", attempt " + std::to_string(ctx.attempt) + ")";
  ++stats_.invocations;
  SchedModel* s = FindMut(key);
  if (!s) {
    Fail(what + ": called for a schedule that does not exist (deleted or never created)");
    return;
  }
  touched_.insert(key);
  if (s->run) {
    Fail(what + ": called while run " + s->run->run_id + " of the same schedule is in flight");
    return;
  }
  if (config_.max_concurrent_runs != 0 && InFlightCount(nullptr) >= config_.max_concurrent_runs) {
    Fail(what + ": dispatched with " + std::to_string(InFlightCount(nullptr)) +
         " runs in flight, max_concurrent_runs " + std::to_string(config_.max_concurrent_runs));
    return;
  }
  const IntegrationModel& integ = integrations_[std::get<0>(key)];
  if (integ.max_concurrency != 0 && InFlightCount(&std::get<0>(key)) >= integ.max_concurrency) {
    Fail(what + ": dispatched with " + std::to_string(InFlightCount(&std::get<0>(key))) +
         " runs of the integration in flight, max_concurrency " +
         std::to_string(integ.max_concurrency));
    return;
  }
  if (ctx.slot > now) Fail(what + ": its slot is in the future (now " + TimeString(now) + ")");
  if (ctx.run_id.empty()) {
    Fail(what + ": an empty run id (a run id is the slot's idempotency key)");
    return;
  }
  if (ctx.attempt == 1) {
    if (!run_ids_.insert(ctx.run_id).second) {
      Fail(what + ": the run id was given to an earlier run (run ids are idempotency keys)");
      return;
    }
    bool by_trigger = false;
    auto check_slot = [&] {
      if (s->must_slot_known && ctx.slot != *s->must_slot) {
        Fail(what + ": carries slot " + TimeString(ctx.slot) + ", expected " +
             TimeString(*s->must_slot));
      }
    };
    if (ctx.mode == RunMode::kFullResync) {
      if (s->must && s->must_resync) {
        by_trigger = true;
        check_slot();
        s->must = s->must_resync = s->must_sched = s->must_trig = false;
      } else if (s->may_resync > 0) {
        by_trigger = true;
        --s->may_resync;
        if (s->may_runs > 0) --s->may_runs;
        if (s->must) s->must = s->must_sched = s->must_trig = false;
      } else if (s->must && s->retry && s->retry->mode == RunMode::kFullResync) {
        // The owed run merged with a pending retry of a full resync, whose mode it keeps.
        by_trigger = s->must_trig || s->retry->paused_origin;
        s->must = s->must_sched = s->must_trig = false;
        s->retry.reset();
        s->retry_due = false;
      } else {
        Fail(what + ": a full resync nobody asked for");
        return;
      }
    } else if (s->must && s->must_resync) {
      Fail(what + ": an incremental run while a full resync is owed (the resync must run)");
      return;
    } else if (s->must && !(s->must_slot_known && ctx.slot != *s->must_slot && s->may_runs > 0)) {
      by_trigger = s->must_trig;
      check_slot();
      s->must = s->must_sched = s->must_trig = false;
    } else if (s->may_runs > 0) {
      by_trigger = true;
      --s->may_runs;
    } else {
      Fail(what + ": a run nothing asked for (no slot due, start, trigger, buffered slot, " +
           "catch-up or retry)" + (s->started ? "" : "; the schedule is PAUSED"));
      return;
    }
    if (!s->started && !by_trigger) {
      Fail(what + ": a run of a PAUSED schedule");
      return;
    }
  } else {
    const bool main =
        s->retry && s->retry->run_id == ctx.run_id && s->retry->next_attempt == ctx.attempt;
    const bool alt = s->retry && s->retry->alt && s->retry->alt->run_id == ctx.run_id &&
                     s->retry->alt->next_attempt == ctx.attempt;
    if (!main && !alt) {
      Fail(what + ": a retry nobody armed" +
           (s->retry ? " (expected " + s->retry->run_id + " attempt " +
                           std::to_string(s->retry->next_attempt) + ")"
                     : std::string(" (no failed attempt to retry)")));
      return;
    }
    if (alt && !main) {  // the retry of the run the stop ended: its own slot and mode
      const RetryModel::Alternative a = *s->retry->alt;
      s->retry->run_id = a.run_id;
      s->retry->slot = a.slot;
      s->retry->mode = a.mode;
      s->retry->next_attempt = a.next_attempt;
    }
    const RetryModel& r = *s->retry;
    if (ctx.slot != r.slot ||
        (ctx.mode != r.mode && !(r.mode_may_upgrade && ctx.mode == RunMode::kFullResync))) {
      Fail(what + ": a retry must keep the slot and mode of its first attempt");
    }
    if (!r.loose && now < r.failed_at + r.base) {
      Fail(what + ": retried at " + TimeString(now) + ", before its backoff ended at " +
           TimeString(r.failed_at + r.base));
    }
    if (r.due && now < *r.due) {
      Fail(what + ": retried before its due time " + TimeString(*r.due));
    }
    if (!s->started && !r.paused_origin) {
      Fail(what + ": a retry of a PAUSED schedule");
    }
    s->retry.reset();
    s->retry_due = false;
    ++stats_.retries;
    if (s->must && s->must_or_retry && (!s->must_resync || ctx.mode == RunMode::kFullResync)) {
      s->must = s->must_resync = s->must_sched = s->must_trig = false;
    }
  }
  s->engine_waiting = false;
  const SyncModel* y = SyncOf(*s);
  RunModel r;
  r.serial = serial;
  r.run_id = ctx.run_id;
  r.slot = ctx.slot;
  r.mode = ctx.mode;
  r.attempt = ctx.attempt;
  r.invoked = now;
  r.timeout_at = now + (y && y->def.timeout ? *y->def.timeout : config_.default_run_timeout);
  if (y) r.heartbeat = y->def.heartbeat_timeout;
  r.last_beat = now;
  r.dispatched_paused = !s->started;
  s->run = r;
}

void Model::OnComplete(TimePoint now, std::uint64_t serial, bool ok, const std::string& error,
                       std::optional<Millis> hint) {
  if (crashed_) return;  // not committed: the run stays in flight in the file
  SchedModel* s = nullptr;
  for (auto& [k, m] : schedules_) {
    if (m.run && m.run->serial == serial) s = &m;
  }
  if (!s) return;  // abandoned (timeout, deletion) or from an older engine: ignored
  ++stats_.completions;
  touched_.insert(s->key);
  const RunModel run = *s->run;
  const bool failed = !ok || run.cancelled;
  ++s->runs;
  if (failed) ++s->failures;
  s->last_ok = !failed;
  s->last_error_has = (failed && !run.cancelled) ? error : std::string();
  s->last_finish = now;
  s->last_finish_known = true;
  const SyncModel* y = SyncOf(*s);
  if (!failed && hint && s->started) {
    Millis h = std::clamp(*hint, config_.bounds.min, config_.bounds.max);
    if (s->retry && s->next.kind == NextExpect::Kind::kKnown && s->next.value) {
      // A retry of another run is pending: whether the hint still applies is not said.
      NextExpect e{NextExpect::Kind::kOneOf, std::nullopt, {now + h, *s->next.value}, now};
      s->next = e;
    } else {
      s->next = NextExpect{NextExpect::Kind::kKnown, now + h, {}, now};
    }
    s->hinted = true;
    s->skipped_known = false;  // whether grid slots giving way to a hint count as skipped: open
  }
  // A slot of this schedule fired at this very millisecond, before or after the engine saw this
  // completion: either order is right.
  if (tie_.count(s->key)) {
    ++stats_.ties;
    s->fuzzy = true;
    s->skipped_known = false;
    s->buffered_must = false;
    ++s->may_runs;
  }
  if (!ok && !run.cancelled && y && run.attempt <= y->def.retry.max) {
    RetryModel r;
    r.run_id = run.run_id;
    r.slot = run.slot;
    r.mode = run.mode;
    r.next_attempt = run.attempt + 1;
    r.failed_at = now;
    r.base = y->def.retry.backoff * (std::int64_t{1} << (run.attempt - 1));
    r.paused_origin = run.dispatched_paused;
    const TimePoint lo = now + r.base, hi = lo + r.base / 5 + Millis(1);
    bool arm = true;
    if (s->started && s->next.kind == NextExpect::Kind::kKnown && s->next.value) {
      if (lo >= *s->next.value) arm = false;  // it would reach the next slot: dropped
      r.must = hi < *s->next.value && !s->buffered && !s->must && !s->fuzzy && s->may_runs == 0 &&
               s->may_resync == 0;
    }
    if (arm) {
      s->retry = r;
      s->retry_due = false;
    }
  }
  EndRun(*s);
}

void Model::OnHeartbeat(TimePoint now, std::uint64_t serial) {
  if (crashed_) return;
  for (auto& [k, m] : schedules_) {
    if (m.run && m.run->serial == serial) m.run->last_beat = now;
  }
}

void Model::OnCancel(TimePoint now, std::uint64_t serial, StatusCode reason) {
  auto it = expected_cancels_.find(serial);
  if (it == expected_cancels_.end()) {
    if (crashed_) return;
    Fail("run #" + std::to_string(serial) + " was cancelled (" + CodeName(reason) + ") at " +
         TimeString(now) + " though nothing asked for it");
    return;
  }
  if (it->second != reason) {
    Fail("run #" + std::to_string(serial) + " was cancelled with " + CodeName(reason) +
         ", expected " + CodeName(it->second));
  }
  expected_cancels_.erase(it);
}

// ---------------------------------------------------------------------------------------------
// Time

std::optional<TimePoint> Model::NextEvent(TimePoint now) const {
  std::optional<TimePoint> best;
  auto consider = [&](TimePoint t) {
    if (t > now && (!best || t < *best)) best = t;
  };
  for (const auto& [k, s] : schedules_) {
    if (s.started && s.next.kind == NextExpect::Kind::kKnown && s.next.value) {
      consider(*s.next.value);
    }
    if (s.run && !s.run->cancelled) consider(s.run->Deadline());
    if (s.retry && s.retry->due && !s.retry_due) consider(*s.retry->due);
  }
  return best;
}

void Model::BeginInstant(TimePoint t) {
  if (t != instant_) {
    touched_.clear();
    tie_.clear();
    instant_ = t;
  }
  if (crashed_) return;
  for (auto& [k, s] : schedules_) {
    bool abandoned = false;
    if (s.run && !s.run->cancelled && s.run->Deadline() <= t) {
      if (s.run->Deadline() < t) {
        Fail("model: the deadline of run " + s.run->run_id + " passed unprocessed");
        return;
      }
      Abandon(t, s);
      abandoned = true;
      touched_.insert(k);
    }
    if (s.started && s.next.kind == NextExpect::Kind::kKnown && s.next.value &&
        *s.next.value <= t) {
      if (*s.next.value < t) {
        Fail("model: slot " + TimeString(*s.next.value) + " of " + KeyString(k) +
             " passed unprocessed");
        return;
      }
      const bool had_run = s.run.has_value();
      if (abandoned) {  // the deadline and the slot at one millisecond: either order
        ++stats_.ties;
        s.fuzzy = true;
        s.skipped_known = false;
        ++s.may_runs;  // the run the other order would have buffered
      }
      FireSlot(t, s);
      if (had_run) tie_.insert(k);  // a completion at this instant may have come first
      touched_.insert(k);
    }
    if (s.retry && s.retry->due && *s.retry->due <= t && !s.retry_due) {
      s.retry_due = true;
      touched_.insert(k);
    }
  }
}

void Model::CloseInstant(TimePoint t, const StatusFn& status_of) {
  if (crashed_ || failed()) return;
  for (const auto& [serial, code] : expected_cancels_) {
    Fail("run #" + std::to_string(serial) + " was not cancelled (" + CodeName(code) + " expected)");
    return;
  }
  std::set<Key> read = touched_;
  for (auto& [k, s] : schedules_) {
    const bool owed = s.must || (s.retry_due && s.retry && s.retry->must);
    if (owed && !s.run) {
      if (!Saturated(std::get<0>(k))) {
        Fail(KeyString(k) + ": an owed " +
             std::string(s.must ? (s.must_resync ? "full resync" : "run") : "retry") +
             (s.must_sched ? " (start, slot, buffered slot or catch-up)" : "") +
             (s.must_trig ? " (trigger)" : "") + " was not dispatched at " + TimeString(t) +
             " though no cap is full (" + std::to_string(InFlightCount(nullptr)) +
             " runs in flight)");
        return;
      }
      read.insert(k);
    }
    if (s.started && !(s.next.kind == NextExpect::Kind::kKnown && s.next.value)) read.insert(k);
    if (s.retry && (!s.retry->due || s.retry_due)) read.insert(k);
  }
  for (const Key& k : read) {
    SchedModel* s = FindMut(k);
    if (!s) continue;
    std::optional<ScheduleStatus> st = status_of(k);
    if (!st) {
      Fail(KeyString(k) + ": no status from the engine");
      return;
    }
    CheckOne(t, *s, *st, /*after_command=*/false);
    if (failed()) return;
  }
}

void Model::LearnNext(TimePoint now, SchedModel& s, const ScheduleStatus& st) {
  const std::string where = KeyString(s.key) + ": next_run ";
  if (!st.next_run) {
    Fail(KeyString(s.key) + ": STARTED without a next run");
    return;
  }
  const TimePoint v = *st.next_run;
  const Millis f = FreqOf(s);
  const NextExpect& e = s.next;
  auto phase_check = [&] {
    auto pk = std::make_pair(s.key, f.count());
    auto it = phases_.find(pk);
    std::int64_t phase = ((Ms(v) % f.count()) + f.count()) % f.count();
    if (it != phases_.end() && it->second != phase) {
      Fail(where + TimeString(v) + " is not on the key's spread phase for " + FormatFrequency(f) +
           " (a phase is a stable hash of the key)");
    }
    phases_[pk] = phase;
  };
  switch (e.kind) {
    case NextExpect::Kind::kKnown:
      if (e.value) {
        if (v != *e.value) {
          Fail(where + TimeString(v) + ", expected " + TimeString(*e.value) +
               (s.hinted ? " (a hint)" : ""));
          return;
        }
      } else if (v < now) {
        Fail(where + TimeString(v) + " is in the past");
        return;
      }
      break;
    case NextExpect::Kind::kOneOf:
      if (std::find(e.candidates.begin(), e.candidates.end(), v) == e.candidates.end()) {
        std::string c;
        for (TimePoint x : e.candidates) c += (c.empty() ? "" : " or ") + TimeString(x);
        Fail(where + TimeString(v) + ", expected " + c +
             " (the first slot of the new grid, same anchor)");
        return;
      }
      break;
    case NextExpect::Kind::kSpreadStart: {
      const TimePoint lo = e.at + f / 2;
      if (v < lo - Millis(1) || v >= lo + f) {
        Fail(where + TimeString(v) + " of a spread schedule started at " + TimeString(e.at) +
             ": not in [start + f/2, start + f/2 + f) for f " + FormatFrequency(f));
        return;
      }
      phase_check();
      s.anchor = v;
      break;
    }
    case NextExpect::Kind::kSpreadRegrid:
      if (v < e.at || v > *e.value) {
        Fail(where + TimeString(v) + " of a spread schedule regridded at " + TimeString(e.at) +
             ": not in [now, " + TimeString(*e.value) + "] (one period " + FormatFrequency(f) +
             ", or half a period after the start first)");
        return;
      }
      phase_check();
      s.anchor = v;
      break;
    case NextExpect::Kind::kOnGrid:
      if (v <= e.at || v > e.at + f) {
        Fail(where + TimeString(v) + ": not the first grid slot after " + TimeString(e.at));
        return;
      }
      if (s.anchor && !OnGrid(*s.anchor, f, v)) {
        Fail(where + TimeString(v) + " is not on the grid anchored at " + TimeString(*s.anchor) +
             " every " + FormatFrequency(f));
        return;
      }
      break;
  }
  if (e.kind != NextExpect::Kind::kKnown || !e.value) ++stats_.learned;
  if (!s.anchor) s.anchor = v;
  s.next = NextExpect{NextExpect::Kind::kKnown, v, {}, now};
}

void Model::CheckOne(TimePoint now, SchedModel& s, const ScheduleStatus& st, bool after_command) {
  const bool failed_before = failed();
  CheckOneImpl(now, s, st, after_command);
  if (!failed_before && failed()) failure_ += "\n    engine: " + StatusLine(st);
}

void Model::CheckOneImpl(TimePoint now, SchedModel& s, const ScheduleStatus& st,
                         bool after_command) {
  const std::string k = KeyString(s.key) + ": ";
  if (s.uid == 0) {
    if (uids_.count(st.id)) {
      Fail(k + "schedule id " + std::to_string(st.id) + " was used by an earlier schedule");
      return;
    }
    s.uid = st.id;
    uids_.insert(st.id);
  } else if (st.id != s.uid) {
    Fail(k + "schedule id changed from " + std::to_string(s.uid) + " to " + std::to_string(st.id));
    return;
  }
  const ScheduleState state = s.started ? ScheduleState::kStarted : ScheduleState::kPaused;
  if (st.state != state) {
    Fail(k + "state " + std::string(ToString(st.state)) + ", expected " +
         std::string(ToString(state)));
    return;
  }
  if (st.frequency != FreqOf(s) || st.frequency_overridden != s.override_freq.has_value()) {
    Fail(k + "frequency " + FormatFrequency(st.frequency) +
         (st.frequency_overridden ? " (override)" : "") + ", expected " +
         FormatFrequency(FreqOf(s)) + (s.override_freq ? " (override)" : ""));
    return;
  }
  if (!s.started) {
    if (st.next_run) {
      Fail(k + "a PAUSED schedule shows next_run " + TimeString(*st.next_run));
      return;
    }
  } else {
    LearnNext(now, s, st);
    if (failed()) return;
    if (!after_command && *st.next_run <= now) {
      Fail(k + "next_run " + TimeString(*st.next_run) + " is not in the future (now " +
           TimeString(now) + ")");
      return;
    }
  }
  if (st.runs != s.runs || st.failures != s.failures) {
    Fail(k + "runs/failures " + std::to_string(st.runs) + "/" + std::to_string(st.failures) +
         ", expected " + std::to_string(s.runs) + "/" + std::to_string(s.failures));
    return;
  }
  if (s.skipped_known) {
    if (st.skipped != s.skipped) {
      Fail(k + "skipped " + std::to_string(st.skipped) + ", expected " + std::to_string(s.skipped));
      return;
    }
  } else {
    if (st.skipped < s.skipped_floor) {
      Fail(k + "skipped went back from " + std::to_string(s.skipped_floor) + " to " +
           std::to_string(st.skipped));
      return;
    }
    s.skipped = st.skipped;
    s.skipped_known = true;
  }
  s.skipped_floor = s.skipped;
  if (st.last_ok != s.last_ok) {
    auto show = [](std::optional<bool> b) {
      return b ? (*b ? std::string("success") : std::string("error")) : std::string("none");
    };
    Fail(k + "last result " + show(st.last_ok) + ", expected " + show(s.last_ok));
    return;
  }
  if (s.last_ok == true && !st.last_error.empty()) {
    Fail(k + "a successful last run shows error \"" + st.last_error + "\"");
    return;
  }
  if (s.last_ok == false && !s.last_error_has.empty() &&
      st.last_error.find(s.last_error_has) == std::string::npos) {
    Fail(k + "last error \"" + st.last_error + "\", expected it to contain \"" + s.last_error_has +
         "\"");
    return;
  }
  if (s.last_finish_known && st.last_finish != s.last_finish) {
    Fail(k + "last finish " + (st.last_finish ? TimeString(*st.last_finish) : "none") +
         ", expected " + (s.last_finish ? TimeString(*s.last_finish) : "none"));
    return;
  }
  if (!s.last_finish_known) {
    s.last_finish = st.last_finish;
    s.last_finish_known = true;
  }
  if (after_command) return;  // runs the command dispatched have not reached their callbacks

  RunStatus expect = s.run                ? RunStatus::kRunning
                     : !s.started         ? RunStatus::kPaused
                     : s.last_ok == false ? RunStatus::kError
                                          : RunStatus::kSuccess;
  if (st.status != expect) {
    Fail(k + "status " + std::string(ToString(st.status)) + ", expected " +
         std::string(ToString(expect)));
    return;
  }
  const bool may = s.may_runs > 0 || s.may_resync > 0 || s.retry.has_value();
  s.engine_waiting = st.waiting_since.has_value();
  if (st.waiting_since && !Saturated(std::get<0>(s.key))) {
    Fail(k + "waits for a cap since " + TimeString(*st.waiting_since) + " though no cap is full (" +
         std::to_string(InFlightCount(nullptr)) + " runs in flight)");
    return;
  }
  if (st.waiting_since) {
    if (s.run || (!s.must && !may)) {
      Fail(k + "waiting for a cap since " + TimeString(*st.waiting_since) +
           (s.run ? " with a run in flight" : " though no run is owed"));
      return;
    }
    if (*st.waiting_since > now) Fail(k + "waiting since a future time");
  } else if (s.must && !s.run) {
    Fail(k + "an owed " + std::string(s.must_resync ? "full resync" : "run") +
         " is neither in flight nor waiting for a cap (lost)");
    return;
  }
  if (st.next_retry) {
    if (!s.retry) {
      Fail(k + "a retry is armed at " + TimeString(*st.next_retry) + " but none is expected");
      return;
    }
    const RetryModel& r = *s.retry;
    const TimePoint lo = r.failed_at + r.base, hi = lo + r.base / 5 + Millis(1);
    if (!r.loose && (*st.next_retry < lo || *st.next_retry > hi)) {
      Fail(k + "retry at " + TimeString(*st.next_retry) + ", outside backoff+jitter [" +
           TimeString(lo) + ", " + TimeString(hi) + "]");
      return;
    }
    if (s.started && s.next.value && *st.next_retry >= *s.next.value && !s.hinted && !r.regridded) {
      Fail(k + "retry at " + TimeString(*st.next_retry) + " reaches the next slot " +
           TimeString(*s.next.value) + " (it must be dropped)");
      return;
    }
    if (s.retry->due && *s.retry->due != *st.next_retry) {
      Fail(k + "retry moved from " + TimeString(*s.retry->due) + " to " +
           TimeString(*st.next_retry));
      return;
    }
    s.retry->due = st.next_retry;
  }
  if (!s.run && !s.must && !st.waiting_since && !st.next_retry) {
    // Idle: nothing is in flight, waiting or armed, so nothing optional is pending any more.
    s.may_runs = s.may_resync = 0;
    s.fuzzy = false;
  }
  // A due retry is in flight (consumed by its invocation) or waits for a cap; otherwise it is gone.
  if (s.retry && s.retry_due && !st.waiting_since && !st.next_retry) {
    if (s.retry->must && !s.run) {
      Fail(k + "retry " + std::to_string(s.retry->next_attempt) + " of " + s.retry->run_id +
           " came due and is neither in flight nor waiting for a cap (lost)");
      return;
    }
    s.retry.reset();
    s.retry_due = false;
  }
  // No retry armed: the engine dropped it, unless it is a retry whose due time only the engine
  // knows (after a restart) and which is waiting for a cap.
  if (!st.next_retry && s.retry && !s.retry_due && !(st.waiting_since && !s.retry->due)) {
    if (s.retry->must) {
      Fail(k + "no retry armed after failed attempt " + std::to_string(s.retry->next_attempt - 1) +
           " of " + s.retry->run_id + " though its backoff ends well before the next slot");
      return;
    }
    s.retry.reset();  // dropped (allowed here)
  }
}

void Model::CheckAll(TimePoint now, const std::map<std::string, std::vector<ScheduleStatus>>& all,
                     bool after_command) {
  if (failed()) return;
  for (const auto& [name, integ] : integrations_) {
    auto it = all.find(name);
    if (it == all.end()) {
      Fail("integration " + name + ": no status from the engine");
      return;
    }
    std::vector<Key> keys;
    for (const auto& [k, s] : schedules_) {
      if (std::get<0>(k) == name) keys.push_back(k);
    }
    const auto& list = it->second;
    for (std::size_t i = 0; i < std::max(keys.size(), list.size()); ++i) {
      if (i >= keys.size()) {
        Fail("the engine has schedule " + ToString(list[i].key) + ", which should not exist");
        return;
      }
      if (i >= list.size() || KeyOf(list[i].key) != keys[i]) {
        Fail("schedule " + KeyString(keys[i]) + " is missing from the engine" +
             (i < list.size() ? " (found " + ToString(list[i].key) + ")" : std::string()));
        return;
      }
      SchedModel& s = schedules_[keys[i]];
      const ScheduleStatus& st = list[i];
      if (reopen_check_ && s.must && !s.run && !st.waiting_since && st.runs == s.runs + 1) {
        // Not run after the restart but recorded as what happened to it (SPEC §6): fine, unless
        // it is recorded as "interrupted", which is only for a run whose callback was called.
        if (st.last_error.find("interrupted") != std::string::npos) {
          Fail(KeyString(keys[i]) + ": an owed run that never reached its callback is recorded " +
               "as \"" + st.last_error + "\" after the restart, and is not run");
          return;
        }
        ++stats_.recorded_at_reopen;
        s.must = s.must_resync = s.must_sched = s.must_trig = false;
        s.runs = st.runs;
        s.failures = st.failures;
        s.last_ok = st.last_ok;
        s.last_error_has.clear();
        s.last_finish_known = false;
      }
      CheckOne(now, s, st, after_command);
      if (failed()) return;
    }
  }
  reopen_check_ = false;
}

// ---------------------------------------------------------------------------------------------
// Restarts

void Model::OnShutdown(bool crash) {
  for (auto& [k, s] : schedules_) {
    if (!s.run) continue;
    // The run ends as an error; whether that error is retried (its attempts allowing) is the
    // engine's choice.
    const SyncModel* y = SyncOf(s);
    if (y && !s.run->cancelled && s.run->attempt <= y->def.retry.max && s.retry) {
      s.retry->alt =
          RetryModel::Alternative{s.run->run_id, s.run->slot, s.run->mode, s.run->attempt + 1};
      s.retry->must = false;
      s.retry->loose = true;
    } else if (y && !s.run->cancelled && s.run->attempt <= y->def.retry.max) {
      RetryModel r;
      r.run_id = s.run->run_id;
      r.slot = s.run->slot;
      r.mode = s.run->mode;
      r.next_attempt = s.run->attempt + 1;
      r.paused_origin = s.run->dispatched_paused;
      r.loose = true;
      s.retry = r;
      s.retry_due = false;
    }
    ++s.runs;
    ++s.failures;
    s.last_ok = false;
    s.last_error_has = crash ? "interrupted" : "";
    s.last_finish_known = false;
    if (crash) {
      ++s.skipped;  // a run in flight at the crash counts as a missed slot
    } else {
      s.skipped_known = false;
    }
    EndRun(s);
  }
  for (auto& [k, s] : schedules_) {
    s.retry_due = false;
    s.engine_waiting = false;
  }
  expected_cancels_.clear();
  crashed_ = false;
}

void Model::OnReopen(TimePoint now, bool, Config config) {
  config_ = config;
  crashed_ = false;
  allow_errors_ = false;
  instant_ = now;
  touched_.clear();
  tie_.clear();
  for (auto& [k, s] : schedules_) {
    bool missed = false;
    if (s.started && !(s.next.kind == NextExpect::Kind::kKnown && s.next.value)) {
      // The next slot was never learned (a crash right after a regrid): slots may have been
      // missed or not.
      s.next = NextExpect{};
      s.skipped_known = false;
      ++s.may_runs;
      missed = true;
    } else if (s.started && s.next.kind == NextExpect::Kind::kKnown && s.next.value &&
               *s.next.value <= now) {
      missed = true;
      const Millis f = FreqOf(s);
      if (s.hinted || !s.anchor) {
        s.skipped_known = false;
        if (s.must) {
          ++s.may_runs;
        } else {
          Owe(s, true, false, false, std::nullopt);
        }
        if (s.anchor) {  // a missed hinted slot: the grid resumes
          s.next = NextExpect{NextExpect::Kind::kKnown, FirstAfter(*s.anchor, f, now), {}, now};
        } else {
          s.next = NextExpect{NextExpect::Kind::kOnGrid, std::nullopt, {}, now};
        }
      } else {
        const TimePoint first = *s.next.value;
        const std::int64_t count = (now - first) / f + 1;
        const TimePoint latest = first + (count - 1) * f;
        if (s.must || s.may_runs > 0 || s.may_resync > 0) {
          // A run owed (or maybe owed) and the collapsed missed slots: one run, or two.
          if (!s.must) Owe(s, true, false, false, std::nullopt);
          ++s.may_runs;
          s.skipped_known = false;
        } else {
          Owe(s, true, false, false, latest);
          s.skipped += static_cast<std::uint64_t>(count - 1);
        }
        s.next = NextExpect{NextExpect::Kind::kKnown, FirstAfter(*s.anchor, f, now), {}, now};
      }
      s.hinted = false;
    }
    if (s.retry) {
      if (s.retry->due && *s.retry->due <= now) s.retry_due = true;
      if (missed) {
        // A retry due and slots missed while down: one run, the retry or the collapsed slots'.
        s.retry->must = false;
        if (s.retry_due && s.must) {
          s.must_or_retry = true;
          s.skipped_known = false;
          ++s.may_runs;
        }
      }
    }
  }
  reopen_check_ = true;
}

}  // namespace syncsched::sim
