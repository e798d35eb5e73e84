// Clang thread-safety annotations and an annotated mutex.
//
// Clang builds (the fuzz and TSan builds in scripts/test.sh) compile with
// -Wthread-safety, so a guarded member touched without its lock is a compile
// error there. Under GCC the macros expand to nothing.
//
// Threading: Mutex is std::mutex with annotations; MutexLock is its scoped guard.
#pragma once

#include <mutex>

#if defined(__clang__)
#define DP_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define DP_THREAD_ANNOTATION(x)
#endif

#define DP_CAPABILITY(name) DP_THREAD_ANNOTATION(capability(name))
#define DP_SCOPED_CAPABILITY DP_THREAD_ANNOTATION(scoped_lockable)
#define DP_GUARDED_BY(mu) DP_THREAD_ANNOTATION(guarded_by(mu))
#define DP_REQUIRES(...) DP_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define DP_ACQUIRE(...) DP_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define DP_RELEASE(...) DP_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define DP_EXCLUDES(...) DP_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))

namespace dualpath {

class DP_CAPABILITY("mutex") Mutex {
 public:
  void lock() DP_ACQUIRE() { mu_.lock(); }
  void unlock() DP_RELEASE() { mu_.unlock(); }
  // Tells the analysis that the caller holds the lock: for callbacks that
  // run inside a locked call (UCX callbacks inside ucp_worker_progress).
  void assertHeld() const DP_THREAD_ANNOTATION(assert_capability(this)) {}

 private:
  std::mutex mu_;
};

class DP_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) DP_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() DP_RELEASE() { mu_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

}  // namespace dualpath
