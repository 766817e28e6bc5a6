// Engine: the public facade. Every call forwards to the EngineCore, which owns the state.
#include "syncsched/engine.h"

#include <mutex>
#include <thread>

#include <boost/asio/thread_pool.hpp>

#include "core/engine_core.h"
#include "core/names.h"

namespace syncsched {

// The asynchronous forms' thread: made at the first Async call, so engines that never use them
// cost no thread. One thread keeps them in call order.
struct Engine::AsyncState {
  std::mutex mu;
  std::unique_ptr<boost::asio::thread_pool> pool;  // guarded by mu until stopped
  bool stopped = false;
  // Waits for the commands already posted, then ends the thread. Later calls still need an
  // executor (they then fail with FAILED_PRECONDITION): a fresh pool serves them. A command is
  // posted under `mu` (Engine::LockCommandExecutor), so it either reached this pool before it was
  // taken (join runs it) or goes to the fresh one.
  void Join() {
    std::unique_ptr<boost::asio::thread_pool> p;
    {
      std::lock_guard lock(mu);
      p = std::move(pool);
    }
    if (p) p->join();
  }
};

Result<std::unique_ptr<Engine>> Engine::Open(Options options) {
  auto core = core::EngineCore::Create(std::move(options));
  if (!core.ok()) return core.status();
  return std::unique_ptr<Engine>(new Engine(std::move(core).value()));
}

Engine::Engine(std::shared_ptr<core::EngineCore> core)
    : core_(std::move(core)), async_(std::make_unique<AsyncState>()) {}

Engine::~Engine() {
  async_->Join();  // commands already called complete first (they use core_)
  if (core_) core_->Shutdown();
  async_->Join();  // one posted by a handler meanwhile
}

std::unique_lock<std::mutex> Engine::LockCommandExecutor(boost::asio::any_io_executor& executor) {
  std::unique_lock lock(async_->mu);
  if (!async_->pool) async_->pool = std::make_unique<boost::asio::thread_pool>(1);
  executor = async_->pool->get_executor();
  return lock;
}

void Engine::Shutdown(std::chrono::steady_clock::time_point deadline) {
  async_->Join();
  core_->HoldTimers();
  // Polled: the runs finish on threads the engine does not own (a host executor, an asynchronous
  // callback's), and a drain happens once per process.
  while (core_->GetMetrics().runs_in_flight > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  core_->Shutdown();  // cancels what is left, commits, stops the threads
}

Status Engine::DefineSync(std::string_view integration, const SyncDefinition& sync) {
  return core_->DefineSync(integration, sync);
}
Result<SyncDefinition> Engine::GetSyncDefinition(std::string_view integration,
                                                 std::string_view sync) {
  return core_->GetSyncDefinition(integration, sync);
}
Status Engine::RegisterCallback(std::string_view integration, std::string_view sync,
                                SyncCallback callback) {
  if (!callback)
    return Status::InvalidField("callback", "callback for sync " + core::Quote(sync) + " is empty");
  return core_->RegisterCallback(integration, sync, core::Callback{std::move(callback), nullptr});
}
Status Engine::RegisterAsyncCallback(std::string_view integration, std::string_view sync,
                                     AsyncSyncCallback callback) {
  if (!callback)
    return Status::InvalidField("callback", "callback for sync " + core::Quote(sync) + " is empty");
  return core_->RegisterCallback(integration, sync, core::Callback{nullptr, std::move(callback)});
}
void Engine::SetFallbackCallback(SyncCallback callback) {
  core_->SetFallbackCallback(core::Callback{std::move(callback), nullptr});
}
Status Engine::AddConnection(std::string_view integration, std::string_view connection) {
  return core_->AddConnection(integration, connection);
}
Status Engine::DeleteConnection(std::string_view integration, std::string_view connection) {
  return core_->DeleteConnection(integration, connection);
}
Result<ScheduleStatus> Engine::CreateVariant(const ScheduleKey& key) {
  return core_->CreateVariant(key);
}
Status Engine::DeleteVariant(const ScheduleKey& key) { return core_->DeleteVariant(key); }
Result<CommandResult> Engine::Start(const Target& target) { return core_->Start(target); }
Result<CommandResult> Engine::Pause(const Target& target) { return core_->Pause(target); }
Result<CommandResult> Engine::Trigger(const Target& target, RunMode mode) {
  return core_->Trigger(target, mode);
}
Result<std::vector<ScheduleStatus>> Engine::GetStatus(const Target& target) {
  return core_->GetStatus(target);
}
Result<Millis> Engine::UpdateFrequency(const ScheduleKey& key,
                                       std::optional<std::string> frequency) {
  return core_->UpdateFrequency(key, std::move(frequency));
}
Status Engine::SetIntegrationLimits(std::string_view integration, const IntegrationLimits& limits) {
  return core_->SetIntegrationLimits(integration, limits);
}
Result<std::vector<ForecastMinute>> Engine::Forecast(Millis horizon,
                                                     std::optional<std::string> integration) {
  return core_->Forecast(horizon, std::move(integration));
}
void Engine::ReleaseTimers() { core_->ReleaseTimers(); }
EngineMetrics Engine::GetMetrics() { return core_->GetMetrics(); }

EngineHealth Engine::GetHealth() { return core_->GetHealth(); }
Clock& Engine::clock() { return core_->clock(); }
std::size_t Engine::MemoryBytes() { return core_->MemoryBytes(); }

}  // namespace syncsched
