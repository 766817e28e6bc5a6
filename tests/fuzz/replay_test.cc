// Replays the fuzz targets' kept inputs through their entry points in the ordinary test builds
// (gcc; plain, and ASan+UBSan in CI): every file of tests/fuzz/regressions/<target>/ (the inputs
// that once crashed a target or broke one of its invariants) and of tests/fuzz/corpus/<target>/
// (the seed corpus). A regression that comes back aborts this test, naming the input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz.h"

namespace syncsched::fuzz {
namespace {

namespace fs = std::filesystem;
using Target = int (*)(const std::uint8_t*, std::size_t);

// Replays every file under tests/fuzz/<kind>/<name>/; returns how many.
std::size_t Replay(const std::string& kind, const std::string& name, Target target) {
  fs::path dir = fs::path(SYNCSCHED_FUZZ_DIR) / kind / name;
  if (!fs::is_directory(dir)) return 0;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& file : files) {
    std::ifstream in(file, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    SetCurrentInput(file.string());
    target(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  }
  SetCurrentInput("");
  return files.size();
}

void ReplayAll(const std::string& name, Target target) {
  std::size_t regressions = Replay("regressions", name, target);
  std::size_t corpus = Replay("corpus", name, target);
  EXPECT_GT(corpus, 0u) << "no seed corpus in tests/fuzz/corpus/" << name;
  std::printf("%s: %zu regression inputs, %zu corpus inputs replayed\n", name.c_str(), regressions,
              corpus);
}

TEST(FuzzReplay, Frequency) { ReplayAll("frequency", FuzzFrequency); }
TEST(FuzzReplay, Url) { ReplayAll("url", FuzzUrl); }
TEST(FuzzReplay, Codec) { ReplayAll("codec", FuzzCodec); }
TEST(FuzzReplay, Config) { ReplayAll("config", FuzzConfig); }
TEST(FuzzReplay, Http) { ReplayAll("http", FuzzHttp); }

}  // namespace
}  // namespace syncsched::fuzz
