// Blocking, threading and ISA dispatch for gemm(), plus the portable scalar kernels.
#include "backend/cpu/gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string_view>

#include "core/error.h"
#include "core/thread_pool.h"

namespace apus {
namespace detail {
namespace {

// K block of a packed panel: kKc x nr floats (64 KB for nr = 32) stay in L2 while every row tile
// of A streams past them. Longer blocks mean fewer passes over C; on Zen 4 256 -> 512 gained
// ~5% at m = 512 and ~15% at m = 16..64.
constexpr int64_t kKc = 512;
// Rows of A per pass over a K block: kMc x kKc floats (512 KB) stay in L2 across the panels.
constexpr int64_t kMc = 256;
// Row chunks of a GEMV are multiples of this so vector row groups stay whole.
constexpr int64_t kGemvGrain = 16;
// Multiply-adds below which waking other threads costs more than it saves.
constexpr int64_t kMinParallelMacs = int64_t(1) << 16;

// Per-thread panel buffer, kept for the life of the thread so steady-state calls don't allocate.
float* panel_buffer(size_t floats) {
  thread_local std::unique_ptr<float[]> buf;
  thread_local size_t cap = 0;
  if (cap < floats + 16) {
    cap = floats + 16;
    buf.reset(new float[cap]);
  }
  // 64-byte alignment keeps each panel row inside whole cache lines.
  auto addr = reinterpret_cast<uintptr_t>(buf.get());
  return buf.get() + ((64 - addr % 64) % 64) / sizeof(float);
}

void fill_bias(const float* bias, float* C, int64_t ldc, int64_t m, int64_t n) {
  for (int64_t r = 0; r < m; ++r) {
    if (bias)
      std::memcpy(C + r * ldc, bias, size_t(n) * sizeof(float));
    else
      std::memset(C + r * ldc, 0, size_t(n) * sizeof(float));
  }
}

// One gemm call's operands, so that the per-thread lambdas capture a single reference and fit in
// std::function's inline storage (no allocation per call on the decode path).
struct Problem {
  const GemmKernels* kr;
  const float* A;
  int64_t lda;
  const uint8_t* W;
  size_t esize;
  DType wtype;
  int64_t ldw;
  const float* bias;
  float* C;
  int64_t ldc, m, n, k;
};

void gemv_rows(const Problem& p, int64_t j0, int64_t j1) {
  p.kr->gemv(p.A, p.lda, p.W + size_t(j0 * p.ldw) * p.esize, p.wtype, p.ldw,
             p.bias ? p.bias + j0 : nullptr, p.C + j0, p.ldc, p.m, j1 - j0, p.k);
}

// Threads take contiguous runs of weight rows, so each streams its own part of W once.
void run_gemv(const Problem& p, ThreadPool& pool) {
  const int64_t min_rows = kMinParallelMacs / (p.m * p.k);
  struct Split {
    int64_t grain, units;
  } split;
  split.grain = std::max(kGemvGrain, (min_rows + kGemvGrain - 1) / kGemvGrain * kGemvGrain);
  split.units = (p.n + split.grain - 1) / split.grain;
  if (split.units == 1 || pool.size() == 1) return gemv_rows(p, 0, p.n);
  pool.run([&p, &split](int t, int nt) {
    const int64_t j0 = split.units * t / nt * split.grain;
    const int64_t j1 = std::min(p.n, split.units * (t + 1) / nt * split.grain);
    if (j0 < j1) gemv_rows(p, j0, j1);
  });
}

void run_blocked(const Problem& p, ThreadPool& pool) {
  const GemmKernels& kr = *p.kr;
  const int64_t nr = kr.nr, mr = kr.mr;
  const int64_t mc = kMc / mr * mr;  // whole micro-tiles per L2 block of A
  const int64_t n_blocks = (p.n + nr - 1) / nr;
  const int64_t m_tiles = (p.m + mr - 1) / mr;
  // Threads split panels (each thread converts only its own weights); when there are fewer
  // panels than threads the row tiles are split as well.
  const int64_t max_threads = std::max<int64_t>(1, p.m * p.n * p.k / kMinParallelMacs);
  const int64_t nt = std::min<int64_t>(pool.size(), max_threads);
  const int64_t tn = std::min(nt, n_blocks);
  const int64_t tm = std::min(std::max<int64_t>(1, nt / tn), m_tiles);
  auto work = [&](int t) {
    if (t >= tn * tm) return;
    const int64_t tj = t % tn, ti = t / tn;
    const int64_t nb0 = n_blocks * tj / tn, nb1 = n_blocks * (tj + 1) / tn;
    const int64_t r0 = m_tiles * ti / tm * mr, r1 = std::min(p.m, m_tiles * (ti + 1) / tm * mr);
    float* panel = panel_buffer(size_t(kKc * nr));
    for (int64_t ic = r0; ic < r1; ic += mc) {
      const int64_t ic_end = std::min(r1, ic + mc);
      for (int64_t pc = 0; pc < p.k; pc += kKc) {
        const int64_t kc = std::min(kKc, p.k - pc);
        for (int64_t jb = nb0; jb < nb1; ++jb) {
          const int64_t j = jb * nr, nc = std::min(nr, p.n - j);
          kr.pack(p.W + size_t(j * p.ldw + pc) * p.esize, p.wtype, p.ldw, nc, kc, panel);
          for (int64_t i = ic; i < ic_end; i += mr) {
            kr.tile(p.A + i * p.lda + pc, p.lda, panel, kc, p.bias ? p.bias + j : nullptr,
                    p.C + i * p.ldc + j, p.ldc, std::min(mr, ic_end - i), nc, pc > 0);
          }
        }
      }
    }
  };
  if (tn * tm == 1) return work(0);
  pool.run([&work](int t, int) { work(t); });
}

// ---- scalar kernels: the reference for the vector ones and the fallback on old CPUs ----

// Distinct types for the two 16-bit formats so templates can tell them apart.
struct Bf16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};
float to_f32(float w) { return w; }
float to_f32(Bf16 w) { return bf16_to_f32(w.bits); }
float to_f32(F16 w) { return f16_to_f32(w.bits); }

template <typename T>
void gemv_scalar_t(const float* A, int64_t lda, const T* W, int64_t ldw, const float* bias,
                   float* C, int64_t ldc, int64_t m, int64_t n, int64_t k) {
  for (int64_t j = 0; j < n; ++j) {
    const T* w = W + j * ldw;
    for (int64_t r = 0; r < m; ++r) {
      const float* a = A + r * lda;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t kk = 0; kk < k; ++kk) acc += a[kk] * to_f32(w[kk]);
      C[r * ldc + j] = acc + (bias ? bias[j] : 0.0f);
    }
  }
}

void gemv_scalar(const float* A, int64_t lda, const void* W, DType wtype, int64_t ldw,
                 const float* bias, float* C, int64_t ldc, int64_t m, int64_t n, int64_t k) {
  switch (wtype) {
    case DType::F32:
      return gemv_scalar_t(A, lda, static_cast<const float*>(W), ldw, bias, C, ldc, m, n, k);
    case DType::F16:
      return gemv_scalar_t(A, lda, static_cast<const F16*>(W), ldw, bias, C, ldc, m, n, k);
    default:
      return gemv_scalar_t(A, lda, static_cast<const Bf16*>(W), ldw, bias, C, ldc, m, n, k);
  }
}

constexpr int kScalarMr = 4;
constexpr int kScalarNr = 16;

template <typename T>
void pack_scalar_t(const T* W, int64_t ldw, int64_t n, int64_t k, float* panel) {
  for (int64_t kk = 0; kk < k; ++kk) {
    float* dst = panel + kk * kScalarNr;
    for (int64_t j = 0; j < n; ++j) dst[j] = to_f32(W[j * ldw + kk]);
    for (int64_t j = n; j < kScalarNr; ++j) dst[j] = 0.0f;
  }
}

void pack_scalar(const void* W, DType wtype, int64_t ldw, int64_t n, int64_t k, float* panel) {
  switch (wtype) {
    case DType::F32:
      return pack_scalar_t(static_cast<const float*>(W), ldw, n, k, panel);
    case DType::F16:
      return pack_scalar_t(static_cast<const F16*>(W), ldw, n, k, panel);
    default:
      return pack_scalar_t(static_cast<const Bf16*>(W), ldw, n, k, panel);
  }
}

void tile_scalar(const float* A, int64_t lda, const float* panel, int64_t k, const float* bias,
                 float* C, int64_t ldc, int64_t m, int64_t n, bool accumulate) {
  float acc[kScalarMr][kScalarNr] = {};
  for (int64_t kk = 0; kk < k; ++kk) {
    const float* p = panel + kk * kScalarNr;
    for (int64_t r = 0; r < m; ++r) {
      const float a = A[r * lda + kk];
#pragma omp simd
      for (int j = 0; j < kScalarNr; ++j) acc[r][j] += a * p[j];
    }
  }
  for (int64_t r = 0; r < m; ++r) {
    float* c = C + r * ldc;
    for (int64_t j = 0; j < n; ++j)
      c[j] = acc[r][j] + (accumulate ? c[j] : (bias ? bias[j] : 0.0f));
  }
}

const GemmKernels* pick_kernels() {
  std::vector<const GemmKernels*> supported = gemm_supported();
  const GemmKernels* best = supported.back();
  const char* env = std::getenv("APUS_CPU_ISA");
  if (!env || !*env) return best;
  const GemmKernels* levels[] = {&kGemmScalar, &kGemmAvx2, &kGemmAvx512};
  for (const GemmKernels* level : levels) {
    if (std::string_view(env) != level->name) continue;
    // A cap only: asking for more than the CPU has keeps what it has.
    for (const GemmKernels* s : supported)
      if (s == level) return level;
    return best;
  }
  fail("APUS_CPU_ISA={} is not one of scalar, avx2, avx512", env);
}

const GemmKernels& dispatched() {
  static const GemmKernels* kernels = pick_kernels();
  return *kernels;
}

}  // namespace

const GemmKernels kGemmScalar{.name = "scalar",
                              .mr = kScalarMr,
                              .nr = kScalarNr,
                              .gemv = gemv_scalar,
                              .pack = pack_scalar,
                              .tile = tile_scalar};

std::vector<const GemmKernels*> gemm_supported() {
  std::vector<const GemmKernels*> out{&kGemmScalar};
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")))
    return out;
  out.push_back(&kGemmAvx2);
  // gemm_avx512.cpp is also built with -mavx512dq, so that is required too (every CPU with BW
  // and VL has it).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    out.push_back(&kGemmAvx512);
  return out;
}

void gemm_with(const GemmKernels& kernels, const float* A, int64_t lda, const void* W, DType wtype,
               int64_t ldw, const float* bias, float* C, int64_t ldc, int64_t m, int64_t n,
               int64_t k, ThreadPool& pool) {
  APUS_CHECK(wtype == DType::F32 || wtype == DType::F16 || wtype == DType::BF16,
             "gemm: weight dtype {} is not F32, F16 or BF16", dtype_name(wtype));
  APUS_CHECK(m >= 0 && n >= 0 && k >= 0, "gemm: negative shape m={} n={} k={}", m, n, k);
  // A stride only matters when there is a second row to reach.
  APUS_CHECK((m <= 1 || (lda >= k && ldc >= n)) && (n <= 1 || ldw >= k),
             "gemm: row strides lda={} ldw={} ldc={} shorter than k={} / n={}", lda, ldw, ldc, k,
             n);
  if (m == 0 || n == 0) return;
  if (k == 0) return fill_bias(bias, C, ldc, m, n);
  const Problem p{.kr = &kernels,
                  .A = A,
                  .lda = lda,
                  .W = static_cast<const uint8_t*>(W),
                  .esize = dtype_size(wtype),
                  .wtype = wtype,
                  .ldw = ldw,
                  .bias = bias,
                  .C = C,
                  .ldc = ldc,
                  .m = m,
                  .n = n,
                  .k = k};
  if (m <= kGemvMaxRows)
    run_gemv(p, pool);
  else
    run_blocked(p, pool);
}

}  // namespace detail

void gemm(const float* A, int64_t lda, const void* W, DType wtype, int64_t ldw, const float* bias,
          float* C, int64_t ldc, int64_t m, int64_t n, int64_t k, ThreadPool& pool) {
  detail::gemm_with(detail::dispatched(), A, lda, W, wtype, ldw, bias, C, ldc, m, n, k, pool);
}

const char* gemm_isa() { return detail::dispatched().name; }

}  // namespace apus
