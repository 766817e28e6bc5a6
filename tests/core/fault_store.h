// FaultStore: a store::Store wrapper for fault-injection tests (LevelDB's FaultInjectionTestEnv,
// SQLite's I/O-error and crash loops). It counts the commits that reach it (1-based) and, at the
// commit chosen by the test:
//
// - kFail: that one commit fails (UNAVAILABLE, nothing written) and later commits go through, as
//   after a transient full disk;
// - kCrash: that commit and every later one are dropped (each answers UNAVAILABLE, nothing
//   written), as if the process had died just before it. The test then destroys the engine and
//   reopens the same file: what it finds is exactly what was committed before the crash.
//
// The wrapper is thread-safe (the engine commits from its writer thread and, after stopping it,
// from the caller's thread). A FaultPlan is shared between the test and the wrapper, so the test
// can read how many commits happened and whether the fault has fired.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "core/engine_core.h"
#include "store/store.h"

namespace syncsched::testing {

struct FaultPlan {
  enum class Mode { kNone, kFail, kCrash };
  // Guards mode, at and match when a test changes them while the engine runs (the writer thread
  // reads them in FaultStore::Commit).
  std::mutex mu;
  Mode mode = Mode::kNone;
  std::uint64_t at = 0;  // the commit (1-based) that fails or crashes; 0: none
  // Instead of `at`: the first commit whose batch this accepts (the engine's writer commits
  // outcomes asynchronously, so a test that wants a command's commit names what it writes).
  std::function<bool(const store::Batch&)> match;

  std::atomic<std::uint64_t> commits{0};  // commits seen (the faulty ones included)
  std::atomic<bool> fired{false};         // the fault happened
  std::atomic<bool> crashed{false};       // kCrash fired: nothing more is written
  // Commits whose fate is settled: once this reaches n, `fired` and `crashed` tell what became
  // of commit n (`commits` counts a commit before that is decided).
  std::atomic<std::uint64_t> decided{0};
};

class FaultStore : public store::Store {
 public:
  FaultStore(std::unique_ptr<store::Store> inner, std::shared_ptr<FaultPlan> plan)
      : inner_(std::move(inner)), plan_(std::move(plan)) {}

  Result<store::Snapshot> Load() override { return inner_->Load(); }
  Status Health() const override { return inner_->Health(); }
  std::uint64_t CacheBytes() const override { return inner_->CacheBytes(); }

  // The wrapped store (for its own test hooks).
  store::Store& inner() { return *inner_; }

  Status Commit(const store::Batch& batch) override {
    std::lock_guard lock(mu_);
    if (Status fault = Decide(batch); !fault.ok()) return fault;
    return inner_->Commit(batch);
  }
  // A streamed commit is one commit: it fails or crashes whole, before any part is read (`match`
  // sees its first part), or goes to the wrapped store's own CommitStream.
  Status CommitStream(const store::Batch& first, store::BatchSource& more) override {
    std::lock_guard lock(mu_);
    if (Status fault = Decide(first); !fault.ok()) return fault;
    return inner_->CommitStream(first, more);
  }

 private:
  // Counts the commit of `batch` and returns its injected fault, or OK.
  Status Decide(const store::Batch& batch) {
    std::lock_guard plan_lock(plan_->mu);
    if (plan_->crashed.load()) return Status::Unavailable("fault injection: the process crashed");
    std::uint64_t n = ++plan_->commits;
    bool hit = plan_->match ? !plan_->fired.load() && plan_->match(batch)
                            : plan_->at != 0 && n == plan_->at;
    if (hit) {
      plan_->fired.store(true);
      if (plan_->mode == FaultPlan::Mode::kCrash) plan_->crashed.store(true);
    }
    ++plan_->decided;
    if (hit && plan_->mode == FaultPlan::Mode::kCrash) {
      return Status::Unavailable("fault injection: the process crashed");
    }
    if (hit && plan_->mode == FaultPlan::Mode::kFail) {
      return Status::Unavailable("fault injection: commit " + std::to_string(n) + " failed");
    }
    return Status::Ok();
  }

  std::mutex mu_;
  std::unique_ptr<store::Store> inner_;
  std::shared_ptr<FaultPlan> plan_;
};

// The wrapper to pass to internal::EngineAccess::OpenWrapped.
inline core::EngineCore::StoreWrapper WrapWith(std::shared_ptr<FaultPlan> plan) {
  return [plan](std::unique_ptr<store::Store> inner) -> std::unique_ptr<store::Store> {
    return std::make_unique<FaultStore>(std::move(inner), plan);
  };
}

}  // namespace syncsched::testing
