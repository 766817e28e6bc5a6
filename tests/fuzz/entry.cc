// libFuzzer's entry point for one target: SYNCSCHED_FUZZ_ENTRY names it (tests/fuzz/CMakeLists.txt
// compiles this file once per fuzzer).
#include <cstddef>
#include <cstdint>

#include "fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return syncsched::fuzz::SYNCSCHED_FUZZ_ENTRY(data, size);
}
