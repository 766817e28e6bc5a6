// syncsched-bench: the workload a run executes, and how flags and JSON files describe it.
//
// A workload is the same for every engine (syncsched and the baselines), so that their figures
// compare: N schedules split over a frequency mix, each started at once (an immediate run, as
// syncsched's start does) and then due every period; callbacks whose duration and outcome are
// drawn from a seeded, per-(schedule, slot, attempt) hash, so that every engine sees the same
// durations and the same failures.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace syncsched::benchtool {

// One entry of the frequency mix: `share` (0..1) of the schedules run every `period_ms`.
struct MixEntry {
  std::int64_t period_ms = 60'000;
  double share = 1.0;
  std::string text;  // as given, e.g. "1m"
};

// The distribution of callback durations.
struct DurationDist {
  enum class Kind { kZero, kFixed, kUniform, kExponential };
  Kind kind = Kind::kZero;
  std::int64_t a_us = 0;  // fixed value, uniform low bound, exponential mean
  std::int64_t b_us = 0;  // uniform high bound
  std::string text = "0";

  // The duration for a uniform draw `u` in [0, 1).
  std::int64_t Sample(double u) const;
};

enum class EngineKind { kSyncsched, kAsio, kHeap, kNango };
std::string_view ToString(EngineKind e);

struct Workload {
  EngineKind engine = EngineKind::kSyncsched;
  std::int64_t schedules = 10'000;
  std::vector<MixEntry> mix = {{60'000, 1.0, "1m"}};
  std::int64_t duration_ms = 10'000;  // real time, or virtual time with `virtual_time`
  bool duration_set = false;          // (the default differs in virtual time: 1 day)
  bool virtual_time = false;
  std::string store = "memory";  // "memory", a file path, or a postgresql:// URI
  std::string json_path;         // empty: no JSON output
  DurationDist callback;
  double failure_rate = 0;
  std::int64_t max_concurrency = 0;  // 0: unlimited
  bool spread = false;
  int retries = 0;
  std::int64_t retry_backoff_ms = 1'000;
  int workers = 2;
  std::uint64_t seed = 1;
  bool recovery = false;  // after the run, time a reopen of the store (durable stores only)
  // When the measured window begins (real time only): kNone, as soon as the start returns; kStart,
  // once the start's immediate runs have finished; kRound, once they have, one period of the
  // mix's longest entry has passed since, and a scheduled run has started after that. Either waits
  // at most `warmup_limit_ms`.
  enum class Warmup { kNone, kStart, kRound };
  Warmup warmup = Warmup::kNone;
  std::int64_t warmup_limit_ms = 300'000;
  enum class Progress { kAuto, kAlways, kNever };
  Progress progress = Progress::kAuto;

  bool durable() const { return store != "memory"; }
  // How many schedules mix entry `i` gets (the last one takes the rounding remainder).
  std::vector<std::int64_t> Counts() const;
};

std::string_view ToString(Workload::Warmup w);

// The outcome of parsing a command line.
struct ParseOutcome {
  enum class Kind { kRun, kHelp, kVersion, kError };
  Kind kind = Kind::kRun;
  Workload workload;
  std::string error;  // for kError: one line naming the flag (or JSON key) and what it accepts
};

// Parses argv (without argv[0]). `--config FILE` reads a JSON object whose keys are the flags'
// names without dashes (values as strings, numbers or booleans); flags given on the command line
// override it wherever they appear.
ParseOutcome ParseArgs(const std::vector<std::string>& args);

// The same, from a JSON text (what `--config` reads); `origin` names it in errors.
ParseOutcome ParseJsonWorkload(std::string_view json_text, const std::string& origin,
                               Workload base = {});

// Building blocks, exposed for the tests. Each returns nullopt on bad input.
std::optional<std::int64_t> ParseCount(std::string_view text);       // 10000, 10k, 1.5M, 2G
std::optional<std::int64_t> ParseDurationMs(std::string_view text);  // 250ms, 60s, 5m, 1h, 1d
std::optional<std::int64_t> ParseDurationUs(std::string_view text);  // also us; bare: ms
std::optional<double> ParseRate(std::string_view text);              // 0.05 or 5%
std::optional<std::vector<MixEntry>> ParseMix(std::string_view text, std::string* why);
std::optional<DurationDist> ParseDurationDist(std::string_view text);

std::string HelpText();

// Deterministic draws per (schedule, slot, attempt): a uniform in [0, 1).
double Uniform01(std::uint64_t seed, std::uint64_t schedule, std::int64_t slot_ms, int attempt,
                 std::uint64_t stream);

// What a callback does for one run: its duration and whether it fails.
struct RunPlan {
  std::int64_t duration_us = 0;
  bool fail = false;
};
RunPlan PlanRun(const Workload& w, std::uint64_t schedule, std::int64_t slot_ms, int attempt);

}  // namespace syncsched::benchtool
