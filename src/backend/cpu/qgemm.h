// CPU products with quantized weights (GPTQ / AWQ, quant/quant_weight.h): C = A W^T (+ bias) with
// float32 activations, W's 4- or 8-bit codes read as they are stored, accumulating in float32.
//
// Per output j and group g of G consecutive columns, W[j, k] = s[j,g] (q[j,k] - z[j,g]), so
//   C[r, j] = sum_g s[j,g] * (sum_{k in g} X[r,k] q[j,k]  -  z[j,g] * sum_{k in g} X[r,k]).
// The kernels convert codes to float and multiply-add them into a per-group accumulator; the scale
// is applied once per group and the zero once per group through the precomputed group sums of X.
// X is A with its columns in the weight's order (perm, for act-order checkpoints) and, for 4 bits,
// the two nibbles of a byte split: within each 32-column block X holds the 16 even columns, then
// the 16 odd ones, so that the low nibbles of 16 bytes line up with 16 consecutive X values. That
// gather happens once per call (qgemm), not in the kernels. Few rows of A (decode) run the GEMV
// kernels, which stream the codes once for all rows; more rows dequantize blocks of W into float32
// and run them through gemm() (gemm.h).
#pragma once
#include <cstdint>
#include <vector>

#include "quant/quant_weight.h"

namespace apus {

class ThreadPool;

// C[m, n] = A[m, k] W^T + bias, W a host QuantWeight [n, k]; A and C float32 with row strides
// lda, ldc; bias F32 [n] or nullptr.
void qgemm(const float* A, int64_t lda, const QuantWeight& W, const float* bias, float* C, int64_t ldc, int64_t m,
           ThreadPool& pool);

namespace detail {

// One instruction set's GEMV for at most kGemvMaxRows rows: for j < n (weight rows starting at q,
// row stride ldq bytes; scales / zeros [n, groups]) and r < m, C[r*ldc + j] = formula above + bias[j].
// X [m, k] contiguous in the order described above, xsum [m, groups].
struct QGemvKernels {
  const char* name;
  void (*gemv)(const float* X, const float* xsum, const uint8_t* q, int64_t ldq, const uint16_t* scales,
               const uint8_t* zeros, int64_t groups, int64_t group_size, int bits, const float* bias, float* C,
               int64_t ldc, int64_t m, int64_t n, int64_t k);
};
extern const QGemvKernels kQGemvScalar;
extern const QGemvKernels kQGemvAvx2;
extern const QGemvKernels kQGemvAvx512;
// The kernel sets this CPU can execute, scalar first; and qgemm() with an explicit one (tests).
std::vector<const QGemvKernels*> qgemv_supported();
void qgemm_with(const QGemvKernels& kernels, const float* A, int64_t lda, const QuantWeight& W, const float* bias,
                float* C, int64_t ldc, int64_t m, ThreadPool& pool);

}  // namespace detail
}  // namespace apus
