// cluster/: several engines sharing one PostgreSQL database (docs/cluster.md). This header: which
// partition a schedule belongs to.
//
// A schedule's partition is a pure function of its key and of the partition count P, fixed when
// the cluster's schema is created (cluster_schema.h). It must give the same answer on every
// engine of a cluster, whatever its version, compiler, platform or byte order: a disagreement
// would let two engines both believe they own one schedule. So the hash is written out here
// (never std::hash, whose values are unspecified and differ across standard libraries), and its
// values are pinned by test vectors (tests/cluster/partition_test.cc). Changing it is a change of
// the database format.
//
// The hash: FNV-1a (64-bit) over the key encoded without ambiguity (each of integration,
// connection, sync, variant as its length, 4 bytes little-endian, then its bytes), then the
// 64-bit finalizer of MurmurHash3 (fmix64) so that every bit of the result depends on every
// input bit (FNV-1a alone mixes its low bits poorly, and `% P` reads the low bits). The
// partition is the result modulo P.
//
// Thread safety: pure functions; any thread.
#pragma once

#include <cstdint>
#include <string_view>

#include "syncsched/types.h"

namespace syncsched::cluster {

// The stable 64-bit hash of a schedule key (see above). Strings are bytes (no normalization);
// the variant is hashed as given ("base" for the base variant, never an empty string).
std::uint64_t KeyHash(std::string_view integration, std::string_view connection,
                      std::string_view sync, std::string_view variant);

// KeyHash(...) % partitions: a value in [0, partitions). `partitions` must be at least 1
// (0 is a caller bug: returns 0).
int PartitionOf(std::string_view integration, std::string_view connection, std::string_view sync,
                std::string_view variant, int partitions);
inline int PartitionOf(const ScheduleKey& key, int partitions) {
  return PartitionOf(key.integration, key.connection, key.sync, key.variant, partitions);
}

}  // namespace syncsched::cluster
