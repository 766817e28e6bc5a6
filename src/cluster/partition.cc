#include "cluster/partition.h"

namespace syncsched::cluster {
namespace {

constexpr std::uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr std::uint64_t kFnvPrime = 0x100000001b3ULL;

std::uint64_t FnvByte(std::uint64_t h, unsigned char byte) { return (h ^ byte) * kFnvPrime; }

std::uint64_t FnvField(std::uint64_t h, std::string_view field) {
  auto n = static_cast<std::uint32_t>(field.size());
  for (int i = 0; i < 4; ++i) h = FnvByte(h, static_cast<unsigned char>(n >> (8 * i)));
  for (char c : field) h = FnvByte(h, static_cast<unsigned char>(c));
  return h;
}

// MurmurHash3's fmix64.
std::uint64_t Fmix64(std::uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

}  // namespace

std::uint64_t KeyHash(std::string_view integration, std::string_view connection,
                      std::string_view sync, std::string_view variant) {
  std::uint64_t h = kFnvOffset;
  h = FnvField(h, integration);
  h = FnvField(h, connection);
  h = FnvField(h, sync);
  h = FnvField(h, variant);
  return Fmix64(h);
}

int PartitionOf(std::string_view integration, std::string_view connection, std::string_view sync,
                std::string_view variant, int partitions) {
  if (partitions <= 0) return 0;
  return static_cast<int>(KeyHash(integration, connection, sync, variant) %
                          static_cast<std::uint64_t>(partitions));
}

}  // namespace syncsched::cluster
