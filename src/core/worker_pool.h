// The engine-owned worker pool: threads pulling runs from one FIFO queue (runs are queued in due
// order). A worker takes a small batch when the queue is deep, so that the completions of quick
// runs are recorded under one engine lock, yet never more than its share, so that one long run
// cannot hold up runs another worker could take.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "core/engine_core.h"
#include "core/thread_annotations.h"

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

  void Push(std::vector<RunPtr>&& runs) EXCLUDES(mu_) {
    std::size_t n = runs.size();
    {
      MutexLock lock(mu_);
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
      cv_.NotifyOne();
    } else {
      cv_.NotifyAll();
    }
  }

  std::size_t Waiting() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return queue_.size();
  }

  // Lets the workers finish the runs they hold, drops the queued ones (cancelled through their
  // tokens by the engine) and joins. Idempotent.
  void Stop() EXCLUDES(mu_) {
    {
      MutexLock lock(mu_);
      stop_ = true;
    }
    cv_.NotifyAll();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
    std::deque<RunPtr> dropped;
    {
      MutexLock lock(mu_);
      dropped.swap(queue_);
    }
    if (!dropped.empty()) {
      std::vector<RunPtr> rest(dropped.begin(), dropped.end());
      fn_(rest);
    }
  }

 private:
  void Loop() EXCLUDES(mu_) {
    std::vector<RunPtr> batch;
    for (;;) {
      {
        MutexLock lock(mu_);
        while (!(stop_ || !queue_.empty())) cv_.Wait(mu_);
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

  BatchFn fn_;  // set once
  Mutex mu_;
  CondVar cv_;
  std::deque<RunPtr> queue_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  // Not guarded: filled by the constructor (a worker reads its size only once Push has given it
  // work, after the constructor), joined by Stop, which the engine calls from one thread at a
  // time (Shutdown, then the destructor).
  std::vector<std::thread> threads_;
};

}  // namespace syncsched::core
