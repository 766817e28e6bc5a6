// The precompiled header of the daemon's test binaries (tests/daemon/CMakeLists.txt): the
// library tests' (tests/support/pch.h) plus nlohmann/json, which every daemon test reads its
// answers with. Third-party and standard headers only. (Beast's HTTP is not here: the tests'
// client is compiled once, in test_util.cc.)
#pragma once

#include "../support/pch.h"

#include <nlohmann/json.hpp>
