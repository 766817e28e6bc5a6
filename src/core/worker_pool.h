// The engine-owned worker pool: threads pulling runs from one FIFO queue (runs are queued in due
// order). A worker takes a small batch when the queue is deep, so that the completions of quick
// runs are recorded under one engine lock, yet never more than its share, so that one long run
// cannot hold up runs another worker could take.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "core/engine_core.h"

namespace syncsched::core {

class WorkerPool {
 public:
  using BatchFn = std::function<void(std::vector<RunPtr>&)>;

  WorkerPool(std::size_t threads, BatchFn fn) : fn_(std::move(fn)) {
    for (std::size_t i = 0; i < threads; ++i) {
      threads_.emplace_back([this] {
        pthread_setname_np(pthread_self(), "syncsched-run");  // as `top -H` and /proc show it
        Loop();
      });
    }
  }
  ~WorkerPool() { Stop(); }

  void Push(std::vector<RunPtr>&& runs) {
    std::size_t n = runs.size();
    {
      std::lock_guard lock(mu_);
      if (!stop_) {
        for (RunPtr& r : runs) queue_.push_back(std::move(r));
        runs.clear();
      }
    }
    if (!runs.empty()) {  // after Stop: their tokens are cancelled; record them here
      fn_(runs);
      return;
    }
    if (n == 1) {
      cv_.notify_one();
    } else {
      cv_.notify_all();
    }
  }

  std::size_t Waiting() {
    std::lock_guard lock(mu_);
    return queue_.size();
  }

  // Lets the workers finish the runs they hold, drops the queued ones (cancelled through their
  // tokens by the engine) and joins. Idempotent.
  void Stop() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
    std::deque<RunPtr> dropped;
    {
      std::lock_guard lock(mu_);
      dropped.swap(queue_);
    }
    if (!dropped.empty()) {
      std::vector<RunPtr> rest(dropped.begin(), dropped.end());
      fn_(rest);
    }
  }

 private:
  void Loop() {
    std::vector<RunPtr> batch;
    for (;;) {
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        std::size_t take = std::clamp<std::size_t>(queue_.size() / (2 * threads_.size()), 1, 64);
        for (std::size_t i = 0; i < take; ++i) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
      fn_(batch);
      batch.clear();
    }
  }

  BatchFn fn_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RunPtr> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace syncsched::core
