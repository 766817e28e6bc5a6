// PartitionOf: pinned values (computed by an independent implementation of the documented hash,
// in Python) and the spread of many keys over the partitions.
#include "cluster/partition.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace syncsched::cluster {
namespace {

struct Vector {
  const char* integration;
  const char* connection;
  const char* sync;
  const char* variant;
  std::uint64_t hash;
  int p64;
  int p7;
};

// A change here is a change of the database format: every cluster's schedules would move.
constexpr Vector kVectors[] = {
    {"", "", "", "", 0xa5e0dba6c385580aULL, 10, 2},
    {"github", "acme", "issues", "base", 0x67f3cd1ecfd4d07eULL, 62, 2},
    {"github", "acme", "issues", "v2", 0xa030f63e011dae3fULL, 63, 6},
    {"a", "bc", "d", "base", 0x9ebcabad4fa62b1dULL, 29, 2},  // the length prefixes tell these
    {"ab", "c", "d", "base", 0xefc8695cd92d9a35ULL, 53, 1},  // two keys apart
    {"slack",
     "t\xe9"
     "am",
     "messages", "base", 0x90d320efba72be64ULL, 36, 1},  // not UTF-8
    {"hubspot", "c-123", "contacts", "full_refresh", 0x86bd6759d0849d4dULL, 13, 0},
};

TEST(PartitionOfTest, PinnedVectors) {
  for (const Vector& v : kVectors) {
    SCOPED_TRACE(std::string(v.integration) + "/" + v.connection + "/" + v.sync + "::" + v.variant);
    EXPECT_EQ(KeyHash(v.integration, v.connection, v.sync, v.variant), v.hash);
    EXPECT_EQ(PartitionOf(v.integration, v.connection, v.sync, v.variant, 64), v.p64);
    EXPECT_EQ(PartitionOf(v.integration, v.connection, v.sync, v.variant, 7), v.p7);
    EXPECT_EQ(PartitionOf(v.integration, v.connection, v.sync, v.variant, 1), 0);
  }
}

TEST(PartitionOfTest, ScheduleKeyOverloadAndDefaults) {
  ScheduleKey key{"github", "acme", "issues"};  // variant "base"
  EXPECT_EQ(PartitionOf(key, 64), 62);
  EXPECT_EQ(PartitionOf(key, 0), 0);  // a caller bug, answered safely
}

TEST(PartitionOfTest, SpreadsKeysEvenly) {
  constexpr int kPartitions = 64;
  constexpr int kKeys = 64'000;
  std::vector<int> counts(kPartitions, 0);
  for (int i = 0; i < kKeys; ++i) {
    // Keys that differ little: the worst case for a weak hash.
    ++counts[PartitionOf("integration-" + std::to_string(i % 10),
                         "connection-" + std::to_string(i / 10), "sync", "base", kPartitions)];
  }
  // Mean 1000, standard deviation ~31: every partition within 15% (~5 sigma).
  for (int p = 0; p < kPartitions; ++p) {
    EXPECT_GT(counts[p], 850) << "partition " << p;
    EXPECT_LT(counts[p], 1150) << "partition " << p;
  }
  // Sequential variants of one schedule spread too.
  std::vector<int> by_variant(kPartitions, 0);
  for (int i = 0; i < kKeys; ++i) {
    ++by_variant[PartitionOf("i", "c", "s", "v" + std::to_string(i), kPartitions)];
  }
  for (int p = 0; p < kPartitions; ++p) {
    EXPECT_GT(by_variant[p], 850) << "partition " << p;
    EXPECT_LT(by_variant[p], 1150) << "partition " << p;
  }
}

}  // namespace
}  // namespace syncsched::cluster
