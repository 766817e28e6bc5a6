#include "tool/runners.h"

namespace syncsched::benchtool {

std::string RunWorkload(Harness& h) {
  switch (h.workload().engine) {
    case EngineKind::kSyncsched:
      return RunSyncsched(h);
    case EngineKind::kAsio:
      return RunAsio(h);
    case EngineKind::kHeap:
      return RunHeap(h);
    case EngineKind::kNango:
      return RunNango(h);
  }
  return "unknown engine";
}

}  // namespace syncsched::benchtool
