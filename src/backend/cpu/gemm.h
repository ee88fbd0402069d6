// CPU matrix kernels behind every linear layer: C = A W^T (+ bias) with float32 activations and
// F32 / F16 / BF16 weights, accumulating in float32.
//
// Two regimes share one entry point. Few rows of A (decode) are a memory-bound GEMV: every weight
// row is streamed once for all rows of A. Many rows (prefill) are compute-bound: blocks of W are
// converted into float32 panels and multiplied by a register-blocked micro-kernel.
#pragma once
#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace apus {

class ThreadPool;

// C[m, n] = A[m, k] * W[n, k]^T (+ bias[n]). A and C are float32 with row strides lda and ldc
// (elements); W is row-major [n, k] of dtype F32, F16 or BF16 with row stride ldw (elements);
// bias is F32 [n] or nullptr. With k == 0, C is bias (or zeros). Work is split over `pool`.
void gemm(const float* A, int64_t lda, const void* W, DType wtype, int64_t ldw, const float* bias,
          float* C, int64_t ldc, int64_t m, int64_t n, int64_t k, ThreadPool& pool);

// The instruction set the dispatcher picked: "avx512", "avx2" or "scalar". APUS_CPU_ISA (one of
// those names) caps it, which lets tests and benchmarks exercise the lower levels.
const char* gemm_isa();

namespace detail {

// Up to this many rows of A the weights dominate the cost: gemm streams them once (GEMV). Above it,
// packing panels is amortised over enough rows for the micro-kernel to compete (measured on Zen 4:
// the two paths are within ~10% of each other from 9 to 16 rows, the packed one ahead beyond).
constexpr int kGemvMaxRows = 8;

// One instruction set's building blocks. gemm.cpp owns the blocking and threading so that each
// ISA file holds only kernels, with no code shared with other TUs (see gemm_avx512.cpp).
struct GemmKernels {
  const char* name;
  int mr;  // rows of A one `tile` call covers
  int nr;  // output columns in one packed panel
  // C[r, j] = bias[j] + sum_kk A[r, kk] W[j, kk] for r < m, j < n; m <= kGemvMaxRows, k >= 1.
  void (*gemv)(const float* A, int64_t lda, const void* W, DType wtype, int64_t ldw,
               const float* bias, float* C, int64_t ldc, int64_t m, int64_t n, int64_t k);
  // panel[kk * nr + j] = float(W[j, kk]) for j < n <= nr, kk < k; columns n..nr-1 become zero.
  void (*pack)(const void* W, DType wtype, int64_t ldw, int64_t n, int64_t k, float* panel);
  // C[r, j] (+)= sum_kk A[r, kk] panel[kk * nr + j] for r < m <= mr, j < n <= nr, k >= 1.
  // Without `accumulate`, C is first set to bias[j] (or 0 when bias is null).
  void (*tile)(const float* A, int64_t lda, const float* panel, int64_t k, const float* bias,
               float* C, int64_t ldc, int64_t m, int64_t n, bool accumulate);
};

extern const GemmKernels kGemmScalar;
extern const GemmKernels kGemmAvx2;
extern const GemmKernels kGemmAvx512;

// The kernel sets this CPU can execute, scalar first (ignores APUS_CPU_ISA).
std::vector<const GemmKernels*> gemm_supported();

// gemm() with an explicit kernel set; the dispatcher and the tests go through here.
void gemm_with(const GemmKernels& kernels, const float* A, int64_t lda, const void* W, DType wtype,
               int64_t ldw, const float* bias, float* C, int64_t ldc, int64_t m, int64_t n,
               int64_t k, ThreadPool& pool);

}  // namespace detail
}  // namespace apus
