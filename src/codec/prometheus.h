// The Prometheus text exposition (format 0.0.4) of the engine's metrics and the daemon's own
// counters, for GET /metrics. Part of the codec (no I/O); see codec.h.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "syncsched/types.h"

namespace syncsched::codec {

// The daemon's own figures, beside the engine's.
struct DaemonMetrics {
  std::map<unsigned, std::uint64_t> http_responses;  // by HTTP status
  std::uint64_t http_connections_open = 0;           // gauge
  std::uint64_t http_connections_total = 0;          // accepted since start
  std::uint64_t commands_spawned = 0;                // sync commands started
  std::uint64_t commands_failed_to_spawn = 0;        // posix_spawn errors (no such file, ...)
  // The C library's heap: bytes allocated and not freed (mallinfo2: uordblks + hblkhd), and
  // bytes it holds from the kernel (arena + hblkhd). The first grows with a leak, the second also
  // with free memory not yet returned (the daemon returns it once a minute: malloc_trim).
  std::uint64_t heap_in_use_bytes = 0;
  std::uint64_t heap_held_bytes = 0;
};

// Every metric is prefixed `syncsched_` (the engine's) or `syncschedd_` (the daemon's); counters
// end in `_total`; histograms are cumulative with `le` buckets, `_sum` and `_count`.
std::string EncodePrometheus(const EngineMetrics& engine, const DaemonMetrics& daemon);

}  // namespace syncsched::codec
