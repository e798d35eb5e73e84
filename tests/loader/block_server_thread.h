// Test support: a BlockServer polled on a thread of its own, its one driver,
// from construction until stop() or destruction. A poll error fails the test.
#pragma once

#include <atomic>
#include <thread>

#include <gtest/gtest.h>

#include <dualpath/loader/remote_block_store.h>

namespace dualpath::loader::testing {

class BlockServerThread {
 public:
  explicit BlockServerThread(BlockServer& server)
      : thread_([this, &server] {
          while (serving_.load(std::memory_order_acquire)) {
            Status s = server.poll();
            if (!s.isOk()) ADD_FAILURE() << s.toString();
            std::this_thread::yield();
          }
        }) {}
  ~BlockServerThread() { stop(); }
  BlockServerThread(const BlockServerThread&) = delete;
  BlockServerThread& operator=(const BlockServerThread&) = delete;

  // Returns once the thread has stopped polling.
  void stop() {
    serving_.store(false, std::memory_order_release);
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> serving_{true};
  std::thread thread_;
};

}  // namespace dualpath::loader::testing
