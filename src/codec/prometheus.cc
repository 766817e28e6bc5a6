// Prometheus text exposition. See prometheus.h.
#include "codec/prometheus.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace syncsched::codec {
namespace {

// The shortest text that reads back as `v`.
std::string Number(double v) {
  // Whole numbers as integers ("10", not "1e+01").
  if (std::abs(v) < 1e15 && v == static_cast<double>(static_cast<long long>(v))) {
    return std::to_string(static_cast<long long>(v));
  }
  char buf[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

void Header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void Metric(std::string& out, std::string_view name, std::string_view type, std::string_view help,
            std::uint64_t value) {
  Header(out, name, type, help);
  out += name;
  out += ' ';
  out += std::to_string(value);
  out += '\n';
}

// A gauge that may be negative.
void SignedMetric(std::string& out, std::string_view name, std::string_view help,
                  std::int64_t value) {
  Header(out, name, "gauge", help);
  out += name;
  out += ' ';
  out += std::to_string(value);
  out += '\n';
}

// Engine histograms count per bucket; Prometheus wants cumulative `le` buckets.
void HistogramMetric(std::string& out, std::string_view name, std::string_view help,
                     const Histogram& h) {
  Header(out, name, "histogram", help);
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < h.bounds.size(); ++i) {
    if (i < h.counts.size()) cumulative += h.counts[i];
    out += std::string(name) + "_bucket{le=\"" + Number(h.bounds[i]) + "\"} " +
           std::to_string(cumulative) + "\n";
  }
  out += std::string(name) + "_bucket{le=\"+Inf\"} " + std::to_string(h.count) + "\n";
  out += std::string(name) + "_sum " + Number(h.sum) + "\n";
  out += std::string(name) + "_count " + std::to_string(h.count) + "\n";
}

}  // namespace

std::string EncodePrometheus(const EngineMetrics& m, const DaemonMetrics& d) {
  std::string out;
  out.reserve(4096);
  Header(out, "syncsched_schedules", "gauge", "Schedules by state.");
  out += "syncsched_schedules{state=\"started\"} " + std::to_string(m.schedules_started) + "\n";
  out += "syncsched_schedules{state=\"paused\"} " + std::to_string(m.schedules_paused) + "\n";
  Metric(out, "syncsched_runs_in_flight", "gauge", "Runs dispatched and not finished.",
         m.runs_in_flight);
  Metric(out, "syncsched_runs_waiting", "gauge", "Runs due and waiting for a worker or a cap.",
         m.runs_waiting);
  Metric(out, "syncsched_runs_started_total", "counter", "Runs started.", m.runs_started);
  Metric(out, "syncsched_runs_succeeded_total", "counter", "Runs that succeeded.",
         m.runs_succeeded);
  Metric(out, "syncsched_runs_failed_total", "counter",
         "Runs that failed (errors, timeouts and cancellations included).", m.runs_failed);
  Metric(out, "syncsched_runs_cancelled_total", "counter", "Runs cancelled through their token.",
         m.runs_cancelled);
  Metric(out, "syncsched_runs_timed_out_total", "counter", "Runs that outlived their timeout.",
         m.runs_timed_out);
  Metric(out, "syncsched_slots_skipped_total", "counter",
         "Slots skipped (a run in flight, or missed while down).", m.slots_skipped);
  Metric(out, "syncsched_runs_retried_total", "counter",
         "Retry attempts of failed runs dispatched.", m.retries);
  HistogramMetric(out, "syncsched_run_duration_seconds", "Duration of finished runs.",
                  m.run_duration_seconds);
  HistogramMetric(out, "syncsched_fire_lateness_seconds",
                  "Dispatch time minus slot time of scheduled runs.", m.fire_lateness_seconds);
  HistogramMetric(out, "syncsched_run_wait_seconds", "Time due runs waited for a concurrency cap.",
                  m.wait_seconds);

  Metric(out, "syncsched_store_healthy", "gauge",
         "1 while the database accepts commits, 0 from a refused commit until one succeeds.",
         m.store_healthy ? 1 : 0);
  Metric(out, "syncsched_store_broken", "gauge",
         "1 once the database store refuses every further call (the engine must be reopened)",
         m.store_broken ? 1 : 0);
  Metric(out, "syncsched_store_commits_failed_total", "counter",
         "Commits the database refused (full disk, I/O error, corruption).",
         m.store_commits_failed);
  Metric(out, "syncsched_store_rows_unrecorded", "gauge",
         "Schedule rows and finished runs held in memory, not yet in the database.",
         m.store_rows_unrecorded);
  Metric(out, "syncsched_store_history_dropped_total", "counter",
         "Finished runs dropped from the unrecorded backlog above its bound.",
         m.store_history_dropped);
  Metric(out, "syncsched_store_cache_bytes", "gauge",
         "Bytes held by the database's page cache (SQLite), bounded by database_cache_mb.",
         m.store_cache_bytes);
  Metric(out, "syncsched_slots_refused_total", "counter",
         "Dispatches the database refused: that grid slot of the schedule was dispatched before "
         "(PostgreSQL's backstop); the callback was not called.",
         m.slots_refused);

  if (m.cluster_partitions_total > 0) {  // cluster mode only (docs/cluster.md)
    Metric(out, "syncsched_cluster_partitions_owned", "gauge",
           "Partitions whose schedules this engine runs (valid lease, loaded).",
           m.cluster_partitions_owned);
    Metric(out, "syncsched_cluster_partitions", "gauge",
           "Partitions of the cluster (fixed when its database was created).",
           m.cluster_partitions_total);
    Metric(out, "syncsched_cluster_nodes_live", "gauge",
           "Live engines of the cluster, as of this engine's last lease renewal.",
           m.cluster_nodes_live);
    Metric(out, "syncsched_cluster_lease_renewals_total", "counter",
           "Renewals of this engine's node row and leases.", m.cluster_lease_renewals);
    Metric(out, "syncsched_cluster_claims_total", "counter", "Free partitions taken.",
           m.cluster_claims);
    Metric(out, "syncsched_cluster_takeovers_total", "counter",
           "Partitions taken from an engine whose lease had ended.", m.cluster_takeovers);
    Metric(out, "syncsched_cluster_releases_total", "counter",
           "Partitions handed back (rebalance, shutdown).", m.cluster_releases);
    Metric(out, "syncsched_cluster_leases_lost_total", "counter",
           "Leases that ended without a release (taken over, expired).", m.cluster_leases_lost);
    Metric(out, "syncsched_cluster_withdrawals_total", "counter",
           "Times the engine left the cluster because its store could not commit for lease/2.",
           m.cluster_withdrawals);
    Metric(out, "syncsched_cluster_fenced_writes_refused_total", "counter",
           "Commits refused by the fence: the partition's lease had ended; nothing applied.",
           m.cluster_fenced_refusals);
    Metric(out, "syncsched_cluster_catalog_revocations_total", "counter",
           "Partitions taken from engines that did not apply a catalog change in time.",
           m.cluster_catalog_revocations);
    SignedMetric(out, "syncsched_cluster_catalog_version",
                 "The catalog version this engine has applied (-1: none yet).",
                 m.cluster_catalog_version);
  }

  Header(out, "syncschedd_http_responses_total", "counter", "HTTP responses by status.");
  for (const auto& [status, count] : d.http_responses) {
    out += "syncschedd_http_responses_total{code=\"" + std::to_string(status) + "\"} " +
           std::to_string(count) + "\n";
  }
  Metric(out, "syncschedd_http_connections_open", "gauge", "Open HTTP connections.",
         d.http_connections_open);
  Metric(out, "syncschedd_http_connections_total", "counter", "HTTP connections accepted.",
         d.http_connections_total);
  Metric(out, "syncschedd_commands_spawned_total", "counter", "Sync commands started.",
         d.commands_spawned);
  Metric(out, "syncschedd_commands_spawn_failures_total", "counter",
         "Sync commands that could not be started.", d.commands_failed_to_spawn);
  Metric(out, "syncschedd_heap_in_use_bytes", "gauge",
         "Heap bytes allocated and not freed (malloc; a leak grows it).", d.heap_in_use_bytes);
  Metric(out, "syncschedd_heap_held_bytes", "gauge",
         "Heap bytes held from the kernel, in use or free (malloc).", d.heap_held_bytes);
  return out;
}

}  // namespace syncsched::codec
