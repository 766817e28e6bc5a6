// SYNCSCHED_EXPORT: marks the public API (classes and functions declared in these headers) as
// visible from the library. The library is built with hidden symbols (CMake's
// CXX_VISIBILITY_PRESET hidden, VISIBILITY_INLINES_HIDDEN), so that a shared build exports exactly
// the public API and nothing of src/. It changes nothing for the static library (the default
// build), whose internals the daemon, tests and benchmarks link against.
#pragma once

#if defined(_WIN32) || defined(__CYGWIN__)
#if defined(SYNCSCHED_SHARED) && defined(SYNCSCHED_BUILDING)
#define SYNCSCHED_EXPORT __declspec(dllexport)
#elif defined(SYNCSCHED_SHARED)
#define SYNCSCHED_EXPORT __declspec(dllimport)
#else
#define SYNCSCHED_EXPORT
#endif
#elif defined(__GNUC__) || defined(__clang__)
#define SYNCSCHED_EXPORT [[gnu::visibility("default")]]
#else
#define SYNCSCHED_EXPORT
#endif
