// syncsched-bench: one runner per engine. Each creates the workload's schedules, starts them
// (one immediate run each, then every period), calls Harness::BeginWindow, runs for the window,
// calls Harness::EndWindow and cleans up. An error (the engine could not open its store, ...) is
// returned as a one-line message; "" on success.
#pragma once

#include <string>

#include "tool/harness.h"

namespace syncsched::benchtool {

std::string RunSyncsched(Harness& h);
std::string RunAsio(Harness& h);
std::string RunHeap(Harness& h);
std::string RunNango(Harness& h);

// Runs the workload on its engine.
std::string RunWorkload(Harness& h);

}  // namespace syncsched::benchtool
