// The precompiled header of the library's test binaries (tests/CMakeLists.txt,
// syncsched_test_precompiled_headers): GoogleTest, the Asio headers that the public headers
// include, and the standard library. Only third-party and standard headers: a change to
// syncsched's own code never rebuilds it. It saves each test file the parse of these (GoogleTest
// and Asio are most of a test file's compile time), which CI pays in four build trees on two
// cores. Every test file still includes what it uses; this file adds nothing to what compiles.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
