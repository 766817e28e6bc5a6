#include "tool/workload.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace syncsched::benchtool {

namespace {

std::string Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return std::string(s);
}

// A non-negative decimal number at the start of `s`; `rest` gets what follows it.
std::optional<double> LeadingNumber(std::string_view s, std::string_view* rest) {
  std::size_t i = 0;
  bool digits = false, dot = false;
  while (i < s.size() && ((s[i] >= '0' && s[i] <= '9') || (s[i] == '.' && !dot))) {
    if (s[i] == '.')
      dot = true;
    else
      digits = true;
    ++i;
  }
  if (!digits) return std::nullopt;
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + i, v);
  if (ec != std::errc() || p != s.data() + i || !std::isfinite(v)) return std::nullopt;
  *rest = s.substr(i);
  return v;
}

std::optional<std::int64_t> ToInt(double v) {
  if (!std::isfinite(v) || v < 0 || v > 9.2e18) return std::nullopt;
  return static_cast<std::int64_t>(std::llround(v));
}

std::string Quoted(std::string_view s) {
  std::string q;  // (appended, not `"'" + ...`: GCC 12 warns falsely on that at -O2, -Wrestrict)
  q.reserve(s.size() + 2);
  q.push_back('\'');
  q.append(s);
  q.push_back('\'');
  return q;
}

}  // namespace

std::string_view ToString(Workload::Warmup w) {
  switch (w) {
    case Workload::Warmup::kNone:
      return "none";
    case Workload::Warmup::kStart:
      return "start";
    case Workload::Warmup::kRound:
      return "round";
  }
  return "?";
}

std::string_view ToString(EngineKind e) {
  switch (e) {
    case EngineKind::kSyncsched:
      return "syncsched";
    case EngineKind::kAsio:
      return "asio";
    case EngineKind::kHeap:
      return "heap";
    case EngineKind::kNango:
      return "nango";
  }
  return "?";
}

std::optional<std::int64_t> ParseCount(std::string_view text) {
  std::string t = Trim(text);
  std::string_view rest;
  auto v = LeadingNumber(t, &rest);
  if (!v) return std::nullopt;
  double mult = 1;
  if (rest == "k" || rest == "K")
    mult = 1e3;
  else if (rest == "m" || rest == "M")
    mult = 1e6;
  else if (rest == "g" || rest == "G")
    mult = 1e9;
  else if (!rest.empty())
    return std::nullopt;
  double n = *v * mult;
  if (n != std::floor(n)) return std::nullopt;  // 1.5 schedules
  return ToInt(n);
}

std::optional<std::int64_t> ParseDurationUs(std::string_view text) {
  std::string t = Trim(text);
  std::string_view rest;
  auto v = LeadingNumber(t, &rest);
  if (!v) return std::nullopt;
  std::string unit = Trim(rest);
  double us_per = 0;
  if (unit == "us")
    us_per = 1;
  else if (unit.empty() || unit == "ms")
    us_per = 1e3;
  else if (unit == "s" || unit == "sec")
    us_per = 1e6;
  else if (unit == "m" || unit == "min")
    us_per = 60e6;
  else if (unit == "h")
    us_per = 3600e6;
  else if (unit == "d")
    us_per = 86400e6;
  else
    return std::nullopt;
  return ToInt(*v * us_per);
}

std::optional<std::int64_t> ParseDurationMs(std::string_view text) {
  auto us = ParseDurationUs(text);
  if (!us || *us % 1000 != 0) return std::nullopt;
  return *us / 1000;
}

std::optional<double> ParseRate(std::string_view text) {
  std::string t = Trim(text);
  std::string_view rest;
  auto v = LeadingNumber(t, &rest);
  if (!v) return std::nullopt;
  double r = *v;
  if (rest == "%")
    r /= 100;
  else if (!rest.empty())
    return std::nullopt;
  if (r < 0 || r > 1) return std::nullopt;
  return r;
}

std::optional<std::vector<MixEntry>> ParseMix(std::string_view text, std::string* why) {
  std::vector<MixEntry> mix;
  double total = 0;
  std::string s(text);
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    item = Trim(item);
    auto colon = item.find(':');
    std::string period = Trim(item.substr(0, colon));
    std::string share = colon == std::string::npos ? "100%" : Trim(item.substr(colon + 1));
    auto ms = ParseDurationMs(period);
    if (!ms || *ms <= 0) {
      *why = "bad period " + Quoted(period) + " (use e.g. 250ms, 30s, 1m, 1h, 1d)";
      return std::nullopt;
    }
    std::string_view rest;
    auto v = LeadingNumber(share, &rest);
    if (!v || (rest != "%" && !rest.empty()) || *v <= 0) {
      *why = "bad share " + Quoted(share) + " (use e.g. 10%)";
      return std::nullopt;
    }
    double frac = rest == "%" ? *v / 100 : *v;
    total += frac;
    mix.push_back({*ms, frac, period});
  }
  if (mix.empty()) {
    *why = "empty mix";
    return std::nullopt;
  }
  if (std::abs(total - 1.0) > 1e-6) {
    std::ostringstream o;
    o << "shares add up to " << total * 100 << "%, not 100%";
    *why = o.str();
    return std::nullopt;
  }
  return mix;
}

std::optional<DurationDist> ParseDurationDist(std::string_view text) {
  DurationDist d;
  d.text = Trim(text);
  std::string t = d.text;
  auto colon = t.find(':');
  std::string kind = colon == std::string::npos ? "" : t.substr(0, colon);
  std::string arg = colon == std::string::npos ? t : t.substr(colon + 1);
  if (kind.empty() || kind == "fixed") {
    auto us = ParseDurationUs(arg);
    if (!us) return std::nullopt;
    d.kind = *us == 0 ? DurationDist::Kind::kZero : DurationDist::Kind::kFixed;
    d.a_us = *us;
    return d;
  }
  if (kind == "uniform") {
    auto dash = arg.find('-');
    if (dash == std::string::npos) return std::nullopt;
    auto lo = ParseDurationUs(arg.substr(0, dash));
    auto hi = ParseDurationUs(arg.substr(dash + 1));
    if (!lo || !hi || *hi < *lo) return std::nullopt;
    d.kind = DurationDist::Kind::kUniform;
    d.a_us = *lo;
    d.b_us = *hi;
    return d;
  }
  if (kind == "exp") {
    auto mean = ParseDurationUs(arg);
    if (!mean) return std::nullopt;
    d.kind = *mean == 0 ? DurationDist::Kind::kZero : DurationDist::Kind::kExponential;
    d.a_us = *mean;
    return d;
  }
  return std::nullopt;
}

std::int64_t DurationDist::Sample(double u) const {
  switch (kind) {
    case Kind::kZero:
      return 0;
    case Kind::kFixed:
      return a_us;
    case Kind::kUniform:
      return a_us + static_cast<std::int64_t>(u * static_cast<double>(b_us - a_us));
    case Kind::kExponential: {
      double v = -std::log(1.0 - u) * static_cast<double>(a_us);
      return static_cast<std::int64_t>(std::min(v, 100.0 * static_cast<double>(a_us)));
    }
  }
  return 0;
}

std::vector<std::int64_t> Workload::Counts() const {
  std::vector<std::int64_t> counts;
  std::int64_t left = schedules;
  for (std::size_t i = 0; i < mix.size(); ++i) {
    std::int64_t c = i + 1 == mix.size()
                         ? left
                         : std::min(left, static_cast<std::int64_t>(std::llround(
                                              mix[i].share * static_cast<double>(schedules))));
    counts.push_back(c);
    left -= c;
  }
  return counts;
}

double Uniform01(std::uint64_t seed, std::uint64_t schedule, std::int64_t slot_ms, int attempt,
                 std::uint64_t stream) {
  // splitmix64 over the inputs.
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ULL ^ (schedule + 0x632BE59BD9B4E019ULL) * 31 ^
                    static_cast<std::uint64_t>(slot_ms) * 0xBF58476D1CE4E5B9ULL ^
                    static_cast<std::uint64_t>(attempt) << 48 ^ stream * 0x94D049BB133111EBULL;
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return static_cast<double>(x >> 11) * 0x1.0p-53;
}

RunPlan PlanRun(const Workload& w, std::uint64_t schedule, std::int64_t slot_ms, int attempt) {
  RunPlan p;
  if (w.callback.kind != DurationDist::Kind::kZero) {
    p.duration_us = w.callback.Sample(Uniform01(w.seed, schedule, slot_ms, attempt, 1));
  }
  if (w.failure_rate > 0)
    p.fail = Uniform01(w.seed, schedule, slot_ms, attempt, 2) < w.failure_rate;
  return p;
}

std::string HelpText() {
  return R"(usage: syncsched-bench [flags]

Runs a scheduling workload on syncsched or a baseline and reports throughput, lateness, memory
and CPU. Flags (a JSON file given with --config may set the same keys, without dashes):

  --schedules N          schedules in all: 10000, 10k, 1M (default 10k)
  --mix SPEC             frequency mix, e.g. 1m:10%,1h:90% (default 1m:100%)
  --duration D           how long to run: 500ms, 60s, 10m, 1d (default 10s; 1d with --virtual)
  --virtual              virtual time (syncsched, heap, nango): the clock jumps to the next
                         deadline, so a day of schedules runs in seconds
  --store S              memory (default), a SQLite file PATH, or a postgresql:// URI (passed to
                         the engine's database option)
  --engine E             syncsched (default), asio, heap or nango (the baselines)
  --json FILE            write the full result as JSON
  --callback DIST        callback duration: 0 (default), 5ms, fixed:5ms, uniform:1ms-50ms,
                         exp:20ms (exponential with that mean)
  --failure-rate P       fraction of runs that fail: 0.05 or 5% (default 0)
  --max-concurrency N    runs in flight at once; 0 = unlimited (default)
  --spread               phase spreading: schedules started together do not fire together
  --retries N            retries of a failed run (default 0)
  --retry-backoff D      first retry's backoff, doubling each retry (default 1s)
  --workers N            worker threads that run callbacks (default 2)
  --seed N               seed of the duration and failure draws (default 1)
  --recovery             after the run, time a reopen of the store (file stores)
  --warmup W             when the measured window begins (real time): none (default: once the
                         start returns), start (once the start's immediate runs have finished),
                         round (once they have, one period of the longest mix entry has passed,
                         and a scheduled run has started since)
  --warmup-limit D       the longest the warm-up may take; the window then begins anyway
                         (default 5m)
  --progress MODE        auto (default: on a terminal), always, never
  --quiet                same as --progress never
  --config FILE          read the workload from a JSON file (flags override it)
  --help, --version

Exit status: 0 on success, 1 when the run fails, 2 for a bad flag.
)";
}

namespace {

bool TakesValue(const std::string& flag) {
  static const char* kValued[] = {
      "--schedules",     "--mix",         "--duration",     "--store",           "--engine",
      "--json",          "--callback",    "--failure-rate", "--max-concurrency", "--retries",
      "--retry-backoff", "--workers",     "--seed",         "--progress",        "--config",
      "--warmup",        "--warmup-limit"};
  return std::find(std::begin(kValued), std::end(kValued), flag) != std::end(kValued);
}

// Applies one flag. Returns an error message naming `name` (the flag or JSON key), or "".
std::string Apply(Workload& w, const std::string& flag, const std::string& value,
                  const std::string& name) {
  auto bad = [&](const std::string& what) {
    return name + ": expected " + what + ", got " + Quoted(value);
  };
  if (flag == "--schedules") {
    auto n = ParseCount(value);
    if (!n || *n < 1) return bad("a count of at least 1 such as 10000, 10k or 1M");
    w.schedules = *n;
  } else if (flag == "--mix") {
    std::string why;
    auto mix = ParseMix(value, &why);
    if (!mix) return name + ": " + why + " in " + Quoted(value) + " (e.g. 1m:10%,1h:90%)";
    w.mix = *mix;
  } else if (flag == "--duration") {
    auto ms = ParseDurationMs(value);
    if (!ms || *ms <= 0) return bad("a positive duration such as 500ms, 60s, 10m or 1d");
    w.duration_ms = *ms;
    w.duration_set = true;
  } else if (flag == "--store") {
    if (value.empty()) return bad("memory, a file path or a postgresql:// URI");
    w.store = value;
  } else if (flag == "--engine") {
    if (value == "syncsched")
      w.engine = EngineKind::kSyncsched;
    else if (value == "asio")
      w.engine = EngineKind::kAsio;
    else if (value == "heap")
      w.engine = EngineKind::kHeap;
    else if (value == "nango")
      w.engine = EngineKind::kNango;
    else
      return bad("one of syncsched, asio, heap, nango");
  } else if (flag == "--json") {
    if (value.empty()) return bad("a file name");
    w.json_path = value;
  } else if (flag == "--callback") {
    auto d = ParseDurationDist(value);
    if (!d) return bad("0, 5ms, fixed:5ms, uniform:1ms-50ms or exp:20ms");
    w.callback = *d;
  } else if (flag == "--failure-rate") {
    auto r = ParseRate(value);
    if (!r) return bad("a fraction in [0, 1] such as 0.05 or 5%");
    w.failure_rate = *r;
  } else if (flag == "--max-concurrency") {
    auto n = ParseCount(value);
    if (!n) return bad("a count (0 = unlimited)");
    w.max_concurrency = *n;
  } else if (flag == "--retries") {
    auto n = ParseCount(value);
    if (!n || *n > 20) return bad("a count from 0 to 20");
    w.retries = static_cast<int>(*n);
  } else if (flag == "--retry-backoff") {
    auto ms = ParseDurationMs(value);
    if (!ms || *ms <= 0) return bad("a positive duration such as 1s");
    w.retry_backoff_ms = *ms;
  } else if (flag == "--workers") {
    auto n = ParseCount(value);
    if (!n || *n < 1 || *n > 1024) return bad("a count from 1 to 1024");
    w.workers = static_cast<int>(*n);
  } else if (flag == "--seed") {
    auto n = ParseCount(value);
    if (!n) return bad("a non-negative integer");
    w.seed = static_cast<std::uint64_t>(*n);
  } else if (flag == "--progress") {
    if (value == "auto")
      w.progress = Workload::Progress::kAuto;
    else if (value == "always")
      w.progress = Workload::Progress::kAlways;
    else if (value == "never")
      w.progress = Workload::Progress::kNever;
    else
      return bad("auto, always or never");
  } else if (flag == "--warmup") {
    if (value == "none")
      w.warmup = Workload::Warmup::kNone;
    else if (value == "start")
      w.warmup = Workload::Warmup::kStart;
    else if (value == "round")
      w.warmup = Workload::Warmup::kRound;
    else
      return bad("none, start or round");
  } else if (flag == "--warmup-limit") {
    auto ms = ParseDurationMs(value);
    if (!ms || *ms <= 0) return bad("a positive duration such as 60s or 5m");
    w.warmup_limit_ms = *ms;
  } else if (flag == "--virtual") {
    w.virtual_time = true;
  } else if (flag == "--no-virtual") {
    w.virtual_time = false;
  } else if (flag == "--spread") {
    w.spread = true;
  } else if (flag == "--no-spread") {
    w.spread = false;
  } else if (flag == "--recovery") {
    w.recovery = true;
  } else if (flag == "--no-recovery") {
    w.recovery = false;
  } else if (flag == "--quiet") {
    w.progress = Workload::Progress::kNever;
  } else {
    return "unknown " + name + " (see --help)";
  }
  return "";
}

// Checks the combination once every flag is in.
std::string Validate(Workload& w) {
  if (!w.duration_set && w.virtual_time) w.duration_ms = 86'400'000;
  if (w.virtual_time && w.engine == EngineKind::kAsio) {
    return "--virtual: the asio baseline runs in real time only (its timers are "
           "boost::asio::steady_timer); use --engine heap for a virtual-time baseline";
  }
  if (w.durable() && (w.engine == EngineKind::kAsio || w.engine == EngineKind::kHeap)) {
    return "--store: the " + std::string(ToString(w.engine)) +
           " baseline keeps its schedules in memory only; use --store memory";
  }
  if (w.engine == EngineKind::kNango && w.store.rfind("postgresql://", 0) == 0) {
    return "--store: the nango baseline runs on SQLite in this build (a file path or memory)";
  }
  if (w.virtual_time && w.warmup != Workload::Warmup::kNone) {
    return "--warmup: real time only (in virtual time the window begins at the start)";
  }
  if (w.recovery && !w.durable()) return "--recovery: needs a durable --store (a file path)";
  if (w.recovery && w.engine != EngineKind::kSyncsched && w.engine != EngineKind::kNango) {
    return "--recovery: only the syncsched engine and the nango baseline have a store";
  }
  if (w.virtual_time && w.durable() && w.engine == EngineKind::kSyncsched) {
    // Allowed: the store is real, the clock virtual.
  }
  return "";
}

}  // namespace

ParseOutcome ParseJsonWorkload(std::string_view json_text, const std::string& origin,
                               Workload base) {
  ParseOutcome out;
  out.workload = std::move(base);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const std::exception& e) {
    out.kind = ParseOutcome::Kind::kError;
    out.error = origin + ": not valid JSON: " + e.what();
    return out;
  }
  if (!j.is_object()) {
    out.kind = ParseOutcome::Kind::kError;
    out.error = origin + ": expected a JSON object of workload keys";
    return out;
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    std::string key = it.key();
    std::string flag = "--" + key;
    std::replace(flag.begin(), flag.end(), '_', '-');
    std::string name = origin + ": key \"" + key + "\"";
    std::string err;
    if (flag == "--config") {
      err = name + ": a workload file cannot name another";
    } else if (it->is_boolean()) {
      if (TakesValue(flag)) {
        err = name + ": expected a string or a number";
      } else {
        std::string f = it->get<bool>() ? flag : "--no-" + flag.substr(2);
        err = Apply(out.workload, f, "", name);
      }
    } else if (!TakesValue(flag)) {
      err = flag == "--quiet" || flag == "--virtual" || flag == "--spread" || flag == "--recovery"
                ? name + ": expected true or false"
                : "unknown " + name;
    } else if (it->is_string()) {
      err = Apply(out.workload, flag, it->get<std::string>(), name);
    } else if (it->is_number_integer() || it->is_number_unsigned()) {
      err = Apply(out.workload, flag, std::to_string(it->get<std::int64_t>()), name);
    } else if (it->is_number_float()) {
      std::ostringstream o;
      o << it->get<double>();
      err = Apply(out.workload, flag, o.str(), name);
    } else if (it->is_object() && flag == "--mix") {
      std::string spec;
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!spec.empty()) spec += ",";
        spec += m.key() + ":" + (m->is_string() ? m->get<std::string>() : m->dump());
      }
      err = Apply(out.workload, flag, spec, name);
    } else {
      err = name + ": expected a string or a number";
    }
    if (!err.empty()) {
      out.kind = ParseOutcome::Kind::kError;
      out.error = err;
      return out;
    }
  }
  return out;
}

ParseOutcome ParseArgs(const std::vector<std::string>& args) {
  ParseOutcome out;
  // Pairs (flag, value) in order; --config is applied first so that flags override it.
  std::vector<std::pair<std::string, std::string>> flags;
  std::string config;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    if (a == "--help" || a == "-h") {
      out.kind = ParseOutcome::Kind::kHelp;
      return out;
    }
    if (a == "--version") {
      out.kind = ParseOutcome::Kind::kVersion;
      return out;
    }
    std::string value;
    bool has_value = false;
    if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_value = true;
    }
    if (a.rfind("--", 0) != 0) {
      out.kind = ParseOutcome::Kind::kError;
      out.error = "unexpected argument " + Quoted(a) + " (flags start with --; see --help)";
      return out;
    }
    if (TakesValue(a)) {
      if (!has_value) {
        if (i + 1 >= args.size()) {
          out.kind = ParseOutcome::Kind::kError;
          out.error = a + ": missing its value (see --help)";
          return out;
        }
        value = args[++i];
      }
    } else if (has_value) {
      out.kind = ParseOutcome::Kind::kError;
      bool known = a == "--virtual" || a == "--spread" || a == "--recovery" || a == "--quiet" ||
                   a == "--no-virtual" || a == "--no-spread" || a == "--no-recovery";
      out.error = known ? a + ": takes no value" : "unknown flag " + a + " (see --help)";
      return out;
    }
    if (a == "--config")
      config = value;
    else
      flags.emplace_back(a, value);
  }
  if (!config.empty()) {
    std::ifstream in(config);
    if (!in) {
      out.kind = ParseOutcome::Kind::kError;
      out.error = "--config: cannot read " + Quoted(config);
      return out;
    }
    std::stringstream text;
    text << in.rdbuf();
    out = ParseJsonWorkload(text.str(), config, out.workload);
    if (out.kind == ParseOutcome::Kind::kError) return out;
  }
  for (const auto& [flag, value] : flags) {
    std::string name = flag;
    std::string err = Apply(out.workload, flag, value, name);
    if (!err.empty()) {
      out.kind = ParseOutcome::Kind::kError;
      out.error = err.rfind("unknown ", 0) == 0 ? "unknown flag " + flag + " (see --help)" : err;
      return out;
    }
  }
  if (std::string err = Validate(out.workload); !err.empty()) {
    out.kind = ParseOutcome::Kind::kError;
    out.error = err;
  }
  return out;
}

}  // namespace syncsched::benchtool
