// Microbenchmark for the int4 / int8 decode kernels of src/backend/cuda/quant.cu on the linear
// layers of the Qwen2.5-7B shape: device time per call and weight bytes (codes, scales, zeros) per
// second, next to this GPU's copy bandwidth (cudaMemcpy device to device, read + write). Weights are
// cycled through enough copies to exceed the L2 cache, as a model's layers do. Built by hand on the
// GPU machine (it includes the kernels' source, so the launchers in its anonymous namespace are
// reachable):
//
//   nvcc -std=c++17 -O3 -arch=sm_90a -Isrc -Iinclude bench/quant_kernel_bench.cu -o qbench && ./qbench
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cuda/quant.cu"
#include "bench_check.cuh"

namespace apus::cuda::qbench {

__global__ void fill_bytes(uint8_t* p, int64_t n, uint32_t seed, uint32_t mask) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 13, h *= 0x5bd1e995u, h ^= h >> 15;
    p[i] = uint8_t(h & mask);
  }
}
__global__ void fill_scales(uint16_t* p, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = __half_as_ushort(__float2half(0.001f + 0.0001f * float(i % 97)));
}

__global__ void fill_x(__nv_bfloat16* p, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = __float2bfloat16(float(int(i % 201) - 100) / 100.0f);
}

struct Mat {
  std::vector<QuantArgs> copies;
  double bytes;
};

Mat make(int64_t n, int64_t k, int bits, int group) {
  const int groups = int(k / group);
  const double bytes = double(n) * (k * bits / 8 + groups * 3);
  const int copies = int(200e6 / bytes) + 1;
  Mat m{{}, bytes};
  for (int c = 0; c < copies; ++c) {
    uint8_t *q, *z;
    uint16_t* s;
    CK(cudaMalloc(&q, size_t(n * k * bits / 8)));
    CK(cudaMalloc(&s, size_t(n * groups * 2)));
    CK(cudaMalloc(&z, size_t(n * groups)));
    fill_bytes<<<1024, 256>>>(q, n * k * bits / 8, 17u + c, 0xffu);
    fill_bytes<<<1024, 256>>>(z, n * groups, 5u + c, bits == 4 ? 0xfu : 0xffu);
    fill_scales<<<1024, 256>>>(s, n * groups);
    m.copies.push_back(QuantArgs{q, k * bits / 8, s, z, groups, group, bits, n, k, quant_tile_rows(k * bits / 8)});
  }
  CK(cudaDeviceSynchronize());
  return m;
}

// The batch kernel with other numbers of chunks in flight (MT 16-row tiles, NT 8-column tiles).
template <int MT, int U, int NT = 2>
cudaError_t launch_qmm_u(const QuantArgs& w, const void* x, int64_t x_stride, int64_t m, const float* bias, void* y,
                         int64_t y_stride, cudaStream_t stream, bool, const NormFold&) {
  using B = __nv_bfloat16;
  return launch_kernel(qmm_kernel<B, B, 4, MT, U, NT>, ceil_div(w.n, 8 * NT) * ceil_div(m, int64_t(MT * 16)),
                       kQWarps * 32, 0, stream, w, static_cast<const B*>(x), x_stride, int(m), bias, static_cast<B*>(y),
                       y_stride);
}

void release(Mat& mat) {
  for (QuantArgs& w : mat.copies) {
    CK(cudaFree(const_cast<uint8_t*>(w.qweight)));
    CK(cudaFree(const_cast<uint16_t*>(w.scales)));
    CK(cudaFree(const_cast<uint8_t*>(w.zeros)));
  }
  mat.copies.clear();
}

template <typename F>
float time_us(const Mat& mat, int iters, F&& call) {
  return float(bench_mean_us(iters, [&](int i) { CK(call(mat.copies[size_t(i) % mat.copies.size()])); }));
}

}  // namespace apus::cuda::qbench

// QBENCH_ONLY=TEXT: only the variants whose name holds TEXT (to profile one with ncu); QBENCH_SWEEP=1:
// only the decode kernel by block count; QBENCH_BALANCE=1: only what uneven work costs it (below).
// Kernels timed back to back here can rank otherwise inside the captured step (PDL overlap with the
// kernels around them): a variant is kept only on `apus bench latency` figures.
int main() {
  const char* only = std::getenv("QBENCH_ONLY");
  using namespace apus;
  using namespace apus::cuda;
  using namespace apus::cuda::qbench;
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
  {
    const size_t sz = size_t(1) << 30;
    void *a, *b;
    CK(cudaMalloc(&a, sz));
    CK(cudaMalloc(&b, sz));
    std::printf("copy bandwidth (read + write): %.0f GB/s\n", bench_copy_rate(a, b, sz, 5) / 1e9);
    CK(cudaFree(a));
    CK(cudaFree(b));
  }
  const int64_t kMaxK = 18944;
  __nv_bfloat16* x;
  __nv_bfloat16 *y, *y_ref;
  CK(cudaMalloc(&x, size_t(64 * kMaxK * 2)));
  CK(cudaMalloc(&y, size_t(64 * 37888 * 2)));
  CK(cudaMalloc(&y_ref, size_t(64 * 37888 * 2)));
  CK(cudaMemset(y, 0, size_t(64 * 37888 * 2)));
  fill_x<<<1024, 256>>>(x, 64 * kMaxK);
  struct Shape {
    const char* name;
    int64_t n, k;
  };
  const Shape shapes[] = {{"gate_up", 37888, 3584}, {"down", 3584, 18944}, {"qkv", 4608, 3584}, {"o", 3584, 3584}};
  // QBENCH_SWEEP=1: one row, 4 bits, the decode kernel's variants over a range of column counts (16
  // columns a block) at qkv's and down's k: how the time grows with the blocks an SM gets.
  if (std::getenv("QBENCH_SWEEP") != nullptr) {
    using B = __nv_bfloat16;
    std::printf("\nsweep: 1 row, 4 bits, group 128; us/call (GB/s) by blocks of 16 columns\n");
    for (const int64_t k : {int64_t(3584), kMaxK}) {
      std::printf("k %lld\n%8s %8s | %-13s | %-13s | %-13s | %-13s\n", static_cast<long long>(k), "blocks", "n",
                  "K8 U2 O24", "K16 U2 O32", "K4 U2 O32", "K8 U4 O24");
      for (int b = 96; b <= 432; b += 12) {
        const int64_t n = 16 * int64_t(b);
        Mat mat = make(n, k, 4, 128);
        std::printf("%8d %8lld", b, static_cast<long long>(n));
        for (auto f : {launch_qmv<B, B, 4, true, true, 8, 2, 24>, launch_qmv<B, B, 4, true, true, 16, 2, 32>,
                       launch_qmv<B, B, 4, true, true, 4, 2, 32>, launch_qmv<B, B, 4, true, true, 8, 4, 24>}) {
          const float t = time_us(mat, 100, [&](const QuantArgs& w) { return f(w, x, k, 1, nullptr, y, n, nullptr, false, NormFold{}); });
          std::printf(" | %6.2f (%4.0f)", t, mat.bytes / (t * 1e-6) / 1e9);
        }
        std::printf("\n");
        release(mat);
      }
    }
    return 0;
  }
  // QBENCH_BALANCE=1: one row, 4 bits, how much the decode kernel loses to work that does not divide
  // evenly: over the warps of a block (a layer's chunk pairs against the warps splitting K) and over
  // the SMs (down's 224 blocks at two an SM on 132 SMs). "down, even" has down's bytes in 264 blocks
  // of 63 chunk pairs (k 16,128): what a split of the work balanced over every warp would take
  // (H200, session 21: 13.3 us against down's 15.1; bench/RESULTS.md).
  if (std::getenv("QBENCH_BALANCE") != nullptr) {
    using B = __nv_bfloat16;
    using L = cudaError_t (*)(const QuantArgs&, const void*, int64_t, int64_t, const float*, void*, int64_t,
                              cudaStream_t, bool, const NormFold&);
    struct Case {
      const char* name;
      int64_t n, k;
      bool silu;
      L f;
    };
    const Case cases[] = {
        {"down K16 U2 O32", 3584, kMaxK, false, launch_qmv<B, B, 4, true, true, 16, 2, 32>},
        {"down, even K16 U2 O32", 4224, 16128, false, launch_qmv<B, B, 4, true, true, 16, 2, 32>},
        {"down K8 U2 O32", 3584, kMaxK, false, launch_qmv<B, B, 4, true, true, 8, 2, 32>},
        {"gate_up+silu K8 U2 O32", 37888, 3584, true, launch_qmv<B, B, 4, true, true, 8, 2, 32>},
        {"gate_up+silu K7 U2 O28", 37888, 3584, true, launch_qmv<B, B, 4, true, true, 7, 2, 28>},
        {"gate_up+silu K14 U2 O28", 37888, 3584, true, launch_qmv<B, B, 4, true, true, 14, 2, 28>},
        {"gate_up+silu K7 U2 O21", 37888, 3584, true, launch_qmv<B, B, 4, true, true, 7, 2, 21>},
        {"qkv K8 U2 O24", 4608, 3584, false, launch_qmv<B, B, 4, true, true, 8, 2, 24>},
        {"qkv K7 U2 O28", 4608, 3584, false, launch_qmv<B, B, 4, true, true, 7, 2, 28>},
        {"qkv K7 U2 O21", 4608, 3584, false, launch_qmv<B, B, 4, true, true, 7, 2, 21>},
        {"qkv K14 U2 O28", 4608, 3584, false, launch_qmv<B, B, 4, true, true, 14, 2, 28>},
        {"o K14 U2 O28", 3584, 3584, false, launch_qmv<B, B, 4, true, true, 14, 2, 28>},
        {"o K7 U2 O28", 3584, 3584, false, launch_qmv<B, B, 4, true, true, 7, 2, 28>},
    };
    std::printf("\nbalance: 1 row, 4 bits, group 128; us/call (GB/s of weights), three runs\n");
    for (const Case& c : cases) {
      Mat mat = make(c.n, c.k, 4, 128);
      std::printf("%-26s", c.name);
      for (int run = 0; run < 3; ++run) {
        const float t = time_us(mat, 200, [&](const QuantArgs& w) {
          return c.f(w, x, c.k, 1, nullptr, y, c.silu ? c.n / 2 : c.n, nullptr, c.silu, NormFold{});
        });
        std::printf(" | %6.2f (%4.0f)", t, mat.bytes / (t * 1e-6) / 1e9);
      }
      std::printf("\n");
      release(mat);
    }
    return 0;
  }
  for (const int bits : {4, 8}) {
    if (bits == 8 && only != nullptr) continue;
    std::printf("\n%d bits, group 128, bf16 activations: us/call (GB/s of weights)\n", bits);
    std::printf("%-8s", "rows");
    for (const Shape& s : shapes) std::printf(" | %-13s", s.name);
    std::printf("\n");
    std::vector<Mat> mats;
    for (const Shape& s : shapes) mats.push_back(make(s.n, s.k, bits, 128));
    for (const int64_t m : {1, 2, 4, 8, 16, 32, 64}) {
      if ((bits == 8 && m != 1 && m != 32) || only != nullptr) continue;
      std::printf("%-8lld", static_cast<long long>(m));
      for (size_t i = 0; i < mats.size(); ++i) {
        const Shape& s = shapes[i];
        const float tn = time_us(mats[i], 100, [&](const QuantArgs& w) {
          return quant_matmul(DType::BF16, DType::BF16, w, x, s.k, m, nullptr, y, s.n, nullptr);
        });
        std::printf(" | %6.1f (%4.0f)", tn, mats[i].bytes / (tn * 1e-6) / 1e9);
      }
      std::printf("\n");
    }
    if (only == nullptr) {  // gate_up with silu_mul fused into the decode kernel (half the outputs)
      std::printf("gate_up + silu_mul in one kernel:");
      for (const int64_t m : {1, 8}) {
        const float tn = time_us(mats[0], 100, [&](const QuantArgs& w) {
          return quant_matmul(DType::BF16, DType::BF16, w, x, shapes[0].k, m, nullptr, y, shapes[0].n / 2, nullptr, true);
        });
        std::printf(" %lld rows %.1f us (%4.0f GB/s)", static_cast<long long>(m), tn, mats[0].bytes / (tn * 1e-6) / 1e9);
      }
      std::printf("\n");
      // One row with the weights already in L2 (one copy, called again and again): what a layer
      // would cost if its weights were fetched into L2 ahead of it (layers that fit in L2 only).
      std::printf("%-8s", "1, L2");
      for (size_t i = 0; i < mats.size(); ++i) {
        if (mats[i].bytes > 0.5 * prop.l2CacheSize) {
          std::printf(" | %-13s", "(> L2 / 2)");
          continue;
        }
        Mat hot{{mats[i].copies[0]}, mats[i].bytes};
        const float tn = time_us(hot, 100, [&](const QuantArgs& w) {
          return quant_matmul(DType::BF16, DType::BF16, w, x, shapes[i].k, 1, nullptr, y, shapes[i].n, nullptr);
        });
        std::printf(" | %6.1f (%4.0f)", tn, mats[i].bytes / (tn * 1e-6) / 1e9);
      }
      std::printf("\n");
    }
    if (bits == 4) {
      // Variants of the kernels, timed and checked against the default for their rows.
      struct V {
        const char* name;
        int64_t m;
        cudaError_t (*f)(const QuantArgs&, const void*, int64_t, int64_t, const float*, void*, int64_t, cudaStream_t,
                         bool, const NormFold&);
      };
      using B = __nv_bfloat16;
      // The decode kernel's variants: warps splitting K, chunks in flight, warps per SM; the batch
      // kernel's: row tiles, chunks in flight, 8-column tiles.
      const V vs[] = {
          {"m1 K4 U2 O32", 1, launch_qmv<B, B, 4, true, true, 4, 2, 32>},
          {"m1 K8 U2 O24", 1, launch_qmv<B, B, 4, true, true, 8, 2, 24>},
          {"m1 K8 U2 O32", 1, launch_qmv<B, B, 4, true, true, 8, 2, 32>},
          {"m1 K14 U2 O28", 1, launch_qmv<B, B, 4, true, true, 14, 2, 28>},
          {"m1 K8 U4 O16", 1, launch_qmv<B, B, 4, true, true, 8, 4, 16>},
          {"m1 K8 U4 O24", 1, launch_qmv<B, B, 4, true, true, 8, 4, 24>},
          {"m1 K16 U4 O32", 1, launch_qmv<B, B, 4, true, true, 16, 4, 32>},
          {"m1 K16 U2 O32", 1, launch_qmv<B, B, 4, true, true, 16, 2, 32>},
          {"m8 K8 U2 O24", 8, launch_qmv<B, B, 4, true, true, 8, 2, 24>},
          {"m8 K16 U2 O32", 8, launch_qmv<B, B, 4, true, true, 16, 2, 32>},
          {"m16 qmm MT1 U2 NT2", 16, launch_qmm_u<1, 2, 2>},
          {"m16 qmm MT1 U2 NT4", 16, launch_qmm_u<1, 2, 4>},
          {"m32 qmm MT2 U2 NT4", 32, launch_qmm_u<2, 2, 4>},
          {"m32 qmm MT2 U4 NT2", 32, launch_qmm_u<2, 4, 2>},
          {"m64 qmm MT4 U1 NT2", 64, launch_qmm_u<4, 1, 2>},
          {"m64 qmm MT2 U2 NT4", 64, launch_qmm_u<2, 2, 4>},
      };
      std::vector<uint16_t> got(size_t(64 * 37888)), want(got.size());
      auto bf = [](uint16_t h) {
        uint32_t u = uint32_t(h) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
      };
      for (const V& v : vs) {
        if (only != nullptr && std::strstr(v.name, only) == nullptr) continue;
        std::printf("%-22s", v.name);
        bool same = true;
        double worst = 0.0, scale = 0.0;
        for (size_t i = 0; i < mats.size(); ++i) {
          const Shape& s = shapes[i];
          // The same results as the default kernel for these rows, bit for bit (the same sums in the same order).
          const QuantArgs& w0 = mats[i].copies[0];
          CK(quant_matmul(DType::BF16, DType::BF16, w0, x, s.k, v.m, nullptr, y_ref, s.n, nullptr));
          CK(v.f(w0, x, s.k, v.m, nullptr, y, s.n, nullptr, false, NormFold{}));
          const size_t count = size_t(v.m * s.n);
          CK(cudaMemcpy(got.data(), y, count * 2, cudaMemcpyDeviceToHost));
          CK(cudaMemcpy(want.data(), y_ref, count * 2, cudaMemcpyDeviceToHost));
          for (size_t e = 0; e < count; ++e) {
            same = same && got[e] == want[e];
            worst = std::max(worst, double(std::fabs(bf(got[e]) - bf(want[e]))));
            scale = std::max(scale, double(std::fabs(bf(want[e]))));
          }
          const float t = time_us(mats[i], 100, [&](const QuantArgs& w) {
            return v.f(w, x, s.k, int(v.m), nullptr, y, s.n, nullptr, false, NormFold{});
          });
          std::printf(" | %6.1f (%4.0f)", t, mats[i].bytes / (t * 1e-6) / 1e9);
        }
        if (same) std::printf("\n");
        else  // expected only where the variant splits K otherwise (another order of sums)
          std::printf("  differs from the default: largest |diff| %.3g of largest |y| %.3g\n", worst, scale);
      }
    }
    for (Mat& mt : mats) release(mt);
  }
  return 0;
}
