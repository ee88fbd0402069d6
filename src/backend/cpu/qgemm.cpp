// Activation reordering, threading, ISA dispatch and the prefill path for qgemm(), plus the
// portable scalar GEMV (the reference for the vector kernels).
#include "backend/cpu/qgemm.h"

#include <algorithm>
#include <cstring>
#include <string_view>
#include <vector>

#include "backend/cpu/gemm.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace apus {
namespace detail {
namespace {

// Multiply-adds below which waking other threads costs more than it saves; weight rows per thread
// chunk are a multiple of kGrain.
constexpr int64_t kMinParallelMacs = int64_t(1) << 16;
constexpr int64_t kGrain = 16;
// Prefill: weights dequantized per block of about this many floats (4 MiB), then one gemm().
constexpr int64_t kDequantFloats = int64_t(1) << 20;

// Column c (0..31) of a 32-column block of X holds weight column kX(c) of that block (qgemm.h).
inline int64_t x_order(int bits, int64_t c) { return bits == 4 ? (c < 16 ? 2 * c : 2 * (c - 16) + 1) : c; }

// Code at X position c (0..31) of the block whose codes start at `w` (16 bytes for 4 bits, 32 for 8).
inline int code_at(const uint8_t* w, int bits, int64_t c) {
  if (bits == 8) return w[c];
  return c < 16 ? (w[c] & 15) : (w[c - 16] >> 4);
}

void qgemv_scalar(const float* X, const float* xsum, const uint8_t* q, int64_t ldq, const uint16_t* scales,
                  const uint8_t* zeros, int64_t groups, int64_t group_size, int bits, const float* bias, float* C,
                  int64_t ldc, int64_t m, int64_t n, int64_t k) {
  const int64_t block_bytes = 32 * bits / 8;
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* w = q + j * ldq;
    for (int64_t r = 0; r < m; ++r) {
      const float* x = X + r * k;
      float total = 0.0f;
      for (int64_t g = 0; g < groups; ++g) {
        float acc = 0.0f;
        for (int64_t kk = g * group_size; kk < (g + 1) * group_size; kk += 32) {
          const uint8_t* b = w + kk / 32 * block_bytes;
          for (int64_t c = 0; c < 32; ++c) acc += x[kk + c] * float(code_at(b, bits, c));
        }
        const float s = f16_to_f32(scales[j * groups + g]);
        total += s * (acc - float(zeros[j * groups + g]) * xsum[r * groups + g]);
      }
      C[r * ldc + j] = total + (bias ? bias[j] : 0.0f);
    }
  }
}

// X and its group sums for rows of A (layout in qgemm.h).
void reorder_activations(const float* A, int64_t lda, const QuantWeight& W, int64_t m, float* X, float* xsum) {
  const int64_t k = W.in(), groups = W.groups(), gs = W.group_size;
  const int32_t* perm = W.perm.empty() ? nullptr : W.perm.ptr<int32_t>();
  for (int64_t r = 0; r < m; ++r) {
    const float* a = A + r * lda;
    float* x = X + r * k;
    for (int64_t kb = 0; kb < k; kb += 32)
      for (int64_t c = 0; c < 32; ++c) {
        const int64_t col = kb + x_order(W.bits, c);
        x[kb + c] = a[perm ? perm[col] : col];
      }
    for (int64_t g = 0; g < groups; ++g) {
      float s = 0.0f;
      for (int64_t kk = g * gs; kk < (g + 1) * gs; ++kk) s += x[kk];
      xsum[r * groups + g] = s;
    }
  }
}

// Rows [j0, j0 + rows) of W as float32 [rows, k] in X's column order.
void dequantize_rows(const QuantWeight& W, int64_t j0, int64_t rows, float* out) {
  const int64_t k = W.in(), groups = W.groups(), gs = W.group_size, block_bytes = 32 * W.bits / 8;
  for (int64_t j = j0; j < j0 + rows; ++j) {
    const uint8_t* w = W.qweight.row<uint8_t>(j);
    float* o = out + (j - j0) * k;
    for (int64_t g = 0; g < groups; ++g) {
      const float s = f16_to_f32(W.scales.row<uint16_t>(j)[g]);
      const float z = float(W.zeros.row<uint8_t>(j)[g]);
      for (int64_t kk = g * gs; kk < (g + 1) * gs; kk += 32)
        for (int64_t c = 0; c < 32; ++c) o[kk + c] = (float(code_at(w + kk / 32 * block_bytes, W.bits, c)) - z) * s;
    }
  }
}

const QGemvKernels* pick_kernels() {
  // The same level as gemm() (which honours APUS_CPU_ISA).
  const std::string_view isa = gemm_isa();
  for (const QGemvKernels* kr : qgemv_supported())
    if (isa == kr->name) return kr;
  return &kQGemvScalar;
}

}  // namespace

const QGemvKernels kQGemvScalar{.name = "scalar", .gemv = qgemv_scalar};

std::vector<const QGemvKernels*> qgemv_supported() {
  std::vector<const QGemvKernels*> out;
  for (const GemmKernels* g : gemm_supported()) {
    const std::string_view name = g->name;
    out.push_back(name == "avx512" ? &kQGemvAvx512 : name == "avx2" ? &kQGemvAvx2 : &kQGemvScalar);
  }
  return out;
}

void qgemm_with(const QGemvKernels& kernels, const float* A, int64_t lda, const QuantWeight& W, const float* bias,
                float* C, int64_t ldc, int64_t m, ThreadPool& pool) {
  const int64_t n = W.out(), k = W.in(), groups = W.groups();
  APUS_CHECK(W.bits == 4 || W.bits == 8, "qgemm: {} bits are not supported", W.bits);
  APUS_CHECK(W.group_size % 32 == 0 && k % W.group_size == 0 && W.scales.rows() == n && W.zeros.cols() == groups,
             "qgemm: weight [{}, {}] with groups of {} is malformed", n, k, W.group_size);
  if (m == 0 || n == 0) return;
  // Scratch of the calling thread, kept between calls; the pool's threads get plain pointers
  // (naming a thread_local inside the lambdas would reach each worker's own, empty, copy).
  thread_local std::vector<float> x_buf, xsum_buf, w_buf;
  x_buf.resize(size_t(m * k));
  xsum_buf.resize(size_t(m * groups));
  float* X = x_buf.data();
  const float* xsum = xsum_buf.data();
  reorder_activations(A, lda, W, m, X, xsum_buf.data());
  if (m > kGemvMaxRows) {
    const int64_t block = std::min(n, std::max<int64_t>(kGrain, kDequantFloats / k / kGrain * kGrain));
    w_buf.resize(size_t(block * k));
    float* wf = w_buf.data();
    for (int64_t j0 = 0; j0 < n; j0 += block) {
      const int64_t rows = std::min(block, n - j0);
      pool.parallel_for(rows, 1, [&](int64_t b, int64_t e) { dequantize_rows(W, j0 + b, e - b, wf + b * k); });
      gemm(X, k, wf, DType::F32, k, bias ? bias + j0 : nullptr, C + j0, ldc, m, rows, k, pool);
    }
    return;
  }
  auto rows = [&](int64_t j0, int64_t j1) {
    kernels.gemv(X, xsum, W.qweight.row<uint8_t>(j0), W.qweight.row_stride, W.scales.row<uint16_t>(j0),
                 W.zeros.row<uint8_t>(j0), groups, W.group_size, W.bits, bias ? bias + j0 : nullptr, C + j0, ldc, m,
                 j1 - j0, k);
  };
  const int64_t min_rows = kMinParallelMacs / (m * k);
  const int64_t grain = std::max(kGrain, (min_rows + kGrain - 1) / kGrain * kGrain);
  if (pool.size() == 1 || n <= grain) return rows(0, n);
  pool.parallel_for(n, grain, rows);
}

}  // namespace detail

void qgemm(const float* A, int64_t lda, const QuantWeight& W, const float* bias, float* C, int64_t ldc, int64_t m,
           ThreadPool& pool) {
  static const detail::QGemvKernels* kernels = detail::pick_kernels();
  detail::qgemm_with(*kernels, A, lda, W, bias, C, ldc, m, pool);
}

}  // namespace apus
