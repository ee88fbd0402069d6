// Microbenchmark for the CPU linear-layer kernels (src/backend/cpu/gemm.h).
//
// Decode (GEMV) is memory-bound, so it is reported as weight bytes streamed per second next to the
// machine's read bandwidth, measured here by summing a 1 GiB float array with the same threads.
// Weights that would fit in the last-level cache are cycled through enough copies to exceed it,
// as a model's layers do. Prefill (GEMM) is compute-bound and reported in GFLOP/s.
//
//   build/apus_gemm_bench [threads]   (default: all cores; APUS_CPU_ISA caps the ISA)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/gemm.h"
#include "core/dtype.h"
#include "core/thread_pool.h"

namespace {

using apus::DType;
using apus::ThreadPool;
using Clock = std::chrono::steady_clock;
typedef float f32x4 __attribute__((vector_size(16)));  // GCC/Clang vector extension

f32x4 load4(const float* p) {
  f32x4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

constexpr size_t kBandwidthBytes = size_t(1) << 30;
constexpr size_t kColdBytes = size_t(512) << 20;  // weights per GEMV sweep: far beyond any LLC

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Best of several runs of fn(); returns seconds per run.
template <typename Fn>
double best_time(int runs, Fn&& fn) {
  double best = 1e30;
  for (int i = 0; i < runs; ++i) {
    auto t0 = Clock::now();
    fn();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

// Machine read bandwidth: threads sum disjoint halves of a 1 GiB float array.
class ReadBandwidth {
 public:
  explicit ReadBandwidth(ThreadPool& pool)
      : pool_(pool),
        count_(int64_t(kBandwidthBytes / sizeof(float))),
        data_(new float[size_t(count_)]) {
    pool_.parallel_for(count_, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) data_[size_t(i)] = float(i & 1023);
    });
  }

  // GB/s: the better of a plain pass and one with software prefetch. Which one streams faster
  // depends on the CPU (plain on Zen 4, prefetched on Sapphire Rapids); the kernels prefetch.
  double sample() { return std::max(pass<false>(), pass<true>()); }

 private:
  template <bool kPrefetch>
  double pass() {
    std::vector<float> sums(size_t(pool_.size()), 0.0f);
    auto t0 = Clock::now();
    pool_.run([&](int tid, int nt) {
      const int64_t n = count_ / 16;
      const float* p = data_.get();
      // Four independent SSE accumulators: enough adds in flight that one thread is limited by
      // memory, not by the adds, with the baseline flags this program is built with.
      f32x4 a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t blk = n * tid / nt; blk < n * (tid + 1) / nt; ++blk) {
        if (kPrefetch) __builtin_prefetch(p + blk * 16 + 2048, 0, 2);  // 8 KB ahead, into L2
        a0 += load4(p + blk * 16);
        a1 += load4(p + blk * 16 + 4);
        a2 += load4(p + blk * 16 + 8);
        a3 += load4(p + blk * 16 + 12);
      }
      const f32x4 s = (a0 + a1) + (a2 + a3);
      sums[size_t(tid)] = s[0] + s[1] + s[2] + s[3];
    });
    const double t = seconds_since(t0);
    volatile float sink = sums[0];  // keep the sums observable
    (void)sink;
    return double(kBandwidthBytes) / t / 1e9;
  }

  ThreadPool& pool_;
  int64_t count_;
  std::unique_ptr<float[]> data_;
};

std::vector<uint16_t> random_bf16(size_t count, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint16_t> v(count);
  for (auto& x : v) x = apus::f32_to_bf16(dist(rng));
  return v;
}

std::vector<float> random_f32(size_t count, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (auto& x : v) x = dist(rng);
  return v;
}

// The host's bandwidth drifts (other tenants), so bandwidth samples are interleaved with the GEMV
// runs and each side keeps its best.
void bench_gemv(ThreadPool& pool, ReadBandwidth& bw, int64_t n, int64_t k, std::mt19937& rng) {
  const size_t w_elems = size_t(n * k);
  const size_t w_bytes = w_elems * 2;
  const size_t copies = std::max<size_t>(1, kColdBytes / w_bytes);
  std::vector<uint16_t> W = random_bf16(w_elems * copies, rng);
  for (int64_t m : {1, 2, 4, 8}) {
    std::vector<float> A = random_f32(size_t(m * k), rng), C(size_t(m * n));
    size_t next = 0;
    auto one_call = [&] {
      apus::gemm(A.data(), k, W.data() + next * w_elems, DType::BF16, k, nullptr, C.data(), n, m, n,
                 k, pool);
      next = (next + 1) % copies;
    };
    one_call();  // warm-up: page faults, thread wake-up
    double t = 1e30, bandwidth = 0.0;
    for (int rep = 0; rep < 6; ++rep) {
      bandwidth = std::max(bandwidth, bw.sample());
      // Each timed run sweeps every copy once, so no copy is still cached when it comes round.
      t = std::min(t, best_time(1, [&] {
                        for (size_t c = 0; c < copies; ++c) one_call();
                      }) / double(copies));
    }
    const double gbs = double(w_bytes) / t / 1e9;
    std::printf(
        "  gemv  m=%-2lld n=%-6lld k=%-5lld bf16  %8.1f us  %5.1f GB/s of %5.1f GB/s read bw"
        " = %5.1f%%  %6.1f GFLOP/s\n",
        (long long)m, (long long)n, (long long)k, t * 1e6, gbs, bandwidth, 100.0 * gbs / bandwidth,
        2.0 * double(m * n * k) / t / 1e9);
  }
}

void bench_gemm(ThreadPool& pool, int64_t m, int64_t n, int64_t k, DType wtype, std::mt19937& rng) {
  std::vector<float> A = random_f32(size_t(m * k), rng), C(size_t(m * n));
  std::vector<float> Wf = random_f32(size_t(n * k), rng);
  std::vector<uint16_t> W16(Wf.size());
  for (size_t i = 0; i < Wf.size(); ++i)
    W16[i] = wtype == DType::F16 ? apus::f32_to_f16(Wf[i]) : apus::f32_to_bf16(Wf[i]);
  const void* W = wtype == DType::F32 ? static_cast<const void*>(Wf.data()) : W16.data();
  auto call = [&] { apus::gemm(A.data(), k, W, wtype, k, nullptr, C.data(), n, m, n, k, pool); };
  call();
  const double t = best_time(5, call);
  std::printf("  gemm  m=%-4lld n=%-6lld k=%-5lld %-4s  %8.2f ms  %6.1f GFLOP/s\n", (long long)m,
              (long long)n, (long long)k, std::string(apus::dtype_name(wtype)).c_str(), t * 1e3,
              2.0 * double(m * n * k) / t / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : ThreadPool::default_threads();
  ThreadPool pool(threads);
  std::mt19937 rng(42);
  std::printf("gemm_bench: isa=%s threads=%d\n", apus::gemm_isa(), pool.size());

  ReadBandwidth bw(pool);
  std::printf("  read bandwidth (sum of 1 GiB float array): %.1f GB/s\n", bw.sample());

  bench_gemv(pool, bw, 4864, 896, rng);
  bench_gemv(pool, bw, 151936, 896, rng);
  bench_gemv(pool, bw, 896, 4864, rng);

  for (DType t : {DType::BF16, DType::F16, DType::F32}) {
    bench_gemm(pool, 512, 4864, 896, t, rng);
    bench_gemm(pool, 512, 896, 4864, t, rng);
  }
  return 0;
}
