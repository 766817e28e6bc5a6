// Test-only access to an Engine's internals (engine.h befriends internal::EngineAccess). Defined
// once, here, for every test of the library binary: two definitions would break the ODR.
#pragma once

#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "core/engine_core.h"
#include "syncsched/engine.h"

namespace syncsched::internal {
struct EngineAccess {
  // The engine's store (it must have a database).
  static store::Store& StoreOf(Engine& engine) { return *engine.core_->StoreForTest(); }

  // Cluster mode: the engine's LeaseKeeper (null otherwise).
  static cluster::LeaseKeeper* KeeperOf(Engine& engine) { return engine.core_->KeeperForTest(); }

  // Cluster mode: the partitions the engine has loaded under a valid lease.
  static std::vector<int> LoadedPartitions(Engine& engine) {
    return engine.core_->LoadedPartitionsForTest();
  }

  // Commands touching more than `rows` schedules stream their rows to the store in parts of
  // `rows` (EngineCore::kStreamRows by default).
  static void SetStreamRows(Engine& engine, std::size_t rows) {
    engine.core_->SetStreamRowsForTest(rows);
  }
  // Cluster mode: `hook` runs on the cluster thread after each load read its partitions, and
  // after they are merged (EngineCore::SetLoadHookForTest).
  static void SetLoadHook(Engine& engine,
                          std::function<void(const std::vector<int>&, bool merged)> hook) {
    engine.core_->SetLoadHookForTest(std::move(hook));
  }

  // Engine::Open, with the store wrapped by `wrap` once opened (fault injection).
  static Result<std::unique_ptr<Engine>> OpenWrapped(Options options,
                                                     core::EngineCore::StoreWrapper wrap) {
    auto core = core::EngineCore::Create(std::move(options), std::move(wrap));
    if (!core.ok()) return core.status();
    return std::unique_ptr<Engine>(new Engine(std::move(core).value()));
  }
};
}  // namespace syncsched::internal
