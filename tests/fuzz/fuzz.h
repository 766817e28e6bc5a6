// The fuzz targets of syncsched (docs/reliability.md, "Fuzzing"). Each target is a function with
// libFuzzer's signature; tests/fuzz/entry.cc makes one of them LLVMFuzzerTestOneInput in a
// libFuzzer binary (the clang build with SYNCSCHED_FUZZ=ON), and tests/fuzz/replay_test.cc calls
// all of them on the corpus and the kept crashing inputs in the ordinary test builds.
//
// A target returns 0 for every input. An input that breaks an invariant ends the process through
// FUZZ_CHECK (abort: libFuzzer records it as a crash and keeps the input); an input that crashes,
// throws out of a target, or trips ASan or UBSan does too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace syncsched::fuzz {

// Prints what failed (and the input being replayed, if any) and aborts.
[[noreturn]] void Fail(const char* file, int line, const char* condition, std::string_view detail);

// The name of the input being replayed (set by replay_test.cc), for Fail's message.
void SetCurrentInput(std::string name);

#define FUZZ_CHECK(condition, detail)                                    \
  do {                                                                   \
    if (!(condition)) {                                                  \
      ::syncsched::fuzz::Fail(__FILE__, __LINE__, #condition, (detail)); \
    }                                                                    \
  } while (0)

// Percent-encodes every byte but A-Z a-z 0-9 - . _ ~ (so that any string survives a query or a
// path segment).
std::string PercentEncode(std::string_view s);

// The targets. Each takes any bytes.
int FuzzFrequency(const std::uint8_t* data, std::size_t size);  // ParseFrequency, FormatFrequency
int FuzzUrl(const std::uint8_t* data, std::size_t size);        // codec/url.h
int FuzzCodec(const std::uint8_t* data, std::size_t size);      // codec.h: every request decoder
int FuzzConfig(const std::uint8_t* data, std::size_t size);     // daemon/config.h: ParseConfig
int FuzzHttp(const std::uint8_t* data, std::size_t size);       // Beast's parser, then daemon::Api

}  // namespace syncsched::fuzz
