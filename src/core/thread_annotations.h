// Clang's thread-safety analysis (-Wthread-safety) for the core's lock-protected state, after
// LevelDB's port/thread_annotations.h and util/mutexlock.h: attribute macros that say which mutex
// guards a member and which functions need it held, and a Mutex the analysis understands (a
// std::mutex, which it does not), with a scoped MutexLock and a CondVar to wait on it.
//
// The macros expand to nothing on compilers without the attributes (GCC), so they cost nothing
// there; Mutex, MutexLock and CondVar are then a std::mutex, a lock guard and a
// std::condition_variable, with no overhead anywhere. See
// https://clang.llvm.org/docs/ThreadSafetyAnalysis.html for the attributes' meaning.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define SYNCSCHED_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define SYNCSCHED_THREAD_ANNOTATION(x)
#endif

// A class that is a lock (Mutex).
#define CAPABILITY(x) SYNCSCHED_THREAD_ANNOTATION(capability(x))
// A class whose objects hold a lock for their lifetime (MutexLock).
#define SCOPED_CAPABILITY SYNCSCHED_THREAD_ANNOTATION(scoped_lockable)
// A member read and written only with the lock `x` held.
#define GUARDED_BY(x) SYNCSCHED_THREAD_ANNOTATION(guarded_by(x))
// A pointer member whose pointee is read and written only with the lock `x` held.
#define PT_GUARDED_BY(x) SYNCSCHED_THREAD_ANNOTATION(pt_guarded_by(x))
// A function called with the locks held (it neither takes nor lets go of them).
#define REQUIRES(...) SYNCSCHED_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
// A function that must not be called with the locks held (it takes them, or calls code that may).
#define EXCLUDES(...) SYNCSCHED_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
// A function that takes the locks (no argument in a lock's own methods: the lock itself).
#define ACQUIRE(...) SYNCSCHED_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
// A function that lets go of the locks.
#define RELEASE(...) SYNCSCHED_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
// A function that checks (or, as here, states) that the lock is held; the analysis trusts it.
#define ASSERT_CAPABILITY(x) SYNCSCHED_THREAD_ANNOTATION(assert_capability(x))
// Turns the analysis off for one function. Say why wherever it is used.
#define NO_THREAD_SAFETY_ANALYSIS SYNCSCHED_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace syncsched::core {

class CondVar;

// A std::mutex the analysis can follow. Not recursive.
class CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ACQUIRE() { mu_.lock(); }
  void Unlock() RELEASE() { mu_.unlock(); }
  // Tells the analysis the lock is held where it cannot see it (a callback called under it).
  // Checks nothing at run time.
  void AssertHeld() const ASSERT_CAPABILITY(this) {}

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds `mu` from its construction to its destruction, or to Unlock().
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : mu_(&mu) { mu_->Lock(); }
  ~MutexLock() RELEASE() {
    if (mu_) mu_->Unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  // Lets go of the lock before the end of the scope.
  void Unlock() RELEASE() {
    mu_->Unlock();
    mu_ = nullptr;
  }

 private:
  Mutex* mu_;
};

// A std::condition_variable waited on with a Mutex held. A predicate is checked by the caller in
// a loop, `while (!ready) cv.Wait(mu);`, so that the analysis sees it read under the lock (what
// std::condition_variable::wait(lock, pred) does, spelled out).
class CondVar {
 public:
  // Lets go of `mu` while it waits; holds it again when it returns (perhaps spuriously).
  void Wait(Mutex& mu) REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu.mu_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();  // still held, by the caller
  }
  // As Wait, returning after `timeout` at the latest.
  template <typename Rep, typename Period>
  void WaitFor(Mutex& mu, std::chrono::duration<Rep, Period> timeout) REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu.mu_, std::adopt_lock);
    cv_.wait_for(lock, timeout);
    lock.release();
  }
  void NotifyOne() { cv_.notify_one(); }
  void NotifyAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace syncsched::core
