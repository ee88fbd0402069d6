// A fixed pool of worker threads for data-parallel kernels. The calling thread takes part as
// thread 0, so a pool of size 1 runs everything inline. Workers spin briefly between jobs (decode
// issues hundreds of small jobs per token) and then sleep on an atomic wait.
#pragma once
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace apus {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(thread_index, n_threads) once on every thread; returns when all have finished.
  // An exception thrown on any thread is rethrown here.
  void run(const std::function<void(int, int)>& fn);

  // Splits [0, n) into one contiguous range per thread, boundaries multiples of `grain`.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  static int default_threads();  // hardware concurrency, or APUS_NUM_THREADS

 private:
  void worker_loop(int index);
  void run_job(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int, int)>* job_ = nullptr;
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

}  // namespace apus
