// AVX2 + FMA + F16C kernels for gemm.h. This file is compiled with -mavx2: everything lives in an
// anonymous namespace and nothing inline from shared headers or std templates is instantiated,
// so the linker can never pick an AVX2 copy of a vague-linkage function for code that runs on
// older CPUs. Only kGemmAvx2 is visible outside, and gemm.cpp uses it after a CPUID check.
#include <immintrin.h>

#include <cstring>

#include "backend/cpu/gemm.h"

namespace apus::detail {
namespace {

constexpr int kMr = 6;  // 6 x 16 tile: 12 ymm accumulators + 2 panel vectors + 1 broadcast
constexpr int kNr = 16;
// GEMV software prefetch into L2, this far ahead along the weight stream; see gemm_avx512.cpp.
constexpr int kPrefetchBytes = 8192;
static_assert(kGemvMaxRows == 8, "gemv_rows is instantiated for 1..8 rows of A");

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Weight formats: 8 consecutive weights as float32, and one weight as a scalar for tails.
struct WF32 {
  using T = float;
  static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  static float scalar(float w) { return w; }
};
// bf16 is the top half of a float32: zero-extend to 32 bits and shift into place.
struct WBF16 {
  using T = uint16_t;
  static __m256 load(const uint16_t* p) {
    const __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
  }
  static float scalar(uint16_t w) {
    const uint32_t u = uint32_t(w) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
struct WF16 {
  using T = uint16_t;
  static __m256 load(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static float scalar(uint16_t w) { return _cvtsh_ss(w); }
};

// acc[s][i] += A[i, 0:16] . w[0:16] for M rows of A, split over S accumulator sets.
template <class WT, int M, int S>
[[gnu::always_inline]] inline void dot_step(const float* A, int64_t lda, const typename WT::T* w,
                                            __m256 (&acc)[2][M]) {
  const __m256 w0 = WT::load(w), w1 = WT::load(w + 8);
  for (int i = 0; i < M; ++i) {
    acc[0][i] = _mm256_fmadd_ps(_mm256_loadu_ps(A + i * lda), w0, acc[0][i]);
    acc[S - 1][i] = _mm256_fmadd_ps(_mm256_loadu_ps(A + i * lda + 8), w1, acc[S - 1][i]);
  }
}

// out[i] = 8 partial sums of A[i, :] . w for M rows of A and one row of W. Rows of W are
// streamed one after another: interleaving several rows' streams defeats the hardware prefetcher.
// Small M gets a second accumulator set (S = 2) so there are enough FMA chains to hide latency;
// large M has enough chains already and needs the registers.
template <class WT, int M>
[[gnu::always_inline]] inline void dot_row(const float* A, int64_t lda, const typename WT::T* w,
                                           int64_t k, __m256* out) {
  constexpr int S = M <= 4 ? 2 : 1;
  __m256 acc[2][M];
  for (int i = 0; i < M; ++i) acc[0][i] = acc[1][i] = _mm256_setzero_ps();
  int64_t kk = 0;
  for (; kk + 16 <= k; kk += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(w + kk) + kPrefetchBytes, _MM_HINT_T1);
    dot_step<WT, M, S>(A + kk, lda, w + kk, acc);
  }
  if (kk < k) {
    // AVX2 has no 16-bit masked load: copy the tail into zero-padded buffers instead.
    typename WT::T wt[16] = {};
    float at[M][16] = {};
    const int64_t rest = k - kk;
    std::memcpy(wt, w + kk, size_t(rest) * sizeof(wt[0]));
    for (int i = 0; i < M; ++i) std::memcpy(at[i], A + i * lda + kk, size_t(rest) * sizeof(float));
    dot_step<WT, M, S>(at[0], 16, wt, acc);
  }
  for (int i = 0; i < M; ++i) out[i] = S == 2 ? _mm256_add_ps(acc[0][i], acc[1][i]) : acc[0][i];
}

// Lane l of the result is the sum of v[l]'s 8 lanes, in one tree for all eight vectors.
__m256 hsum8(const __m256 (&v)[8]) {
  const __m256 q0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 q1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  // q0 = [v0..v3 low-half sums | v0..v3 high-half sums], q1 likewise for v4..v7.
  return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}

// C[0:M, 0:n] = bias + A W^T. Weight rows go in groups of B whose B * M dot products share one
// reduction tree.
template <class WT, int M>
void gemv_rows(const float* A, int64_t lda, const typename WT::T* W, int64_t ldw, const float* bias,
               float* C, int64_t ldc, int64_t n, int64_t k) {
  constexpr int B = 8 / M;
  for (int64_t j = 0; j < n; j += B) {
    const int rows = int(min64(B, n - j));
    __m256 v[8];
    for (int b = 0; b < 8; ++b) v[b] = _mm256_setzero_ps();
    for (int b = 0; b < B; ++b)
      if (b < rows) dot_row<WT, M>(A, lda, W + (j + b) * ldw, k, v + b * M);
    alignas(32) float sums[8];
    _mm256_store_ps(sums, hsum8(v));
    for (int b = 0; b < rows; ++b) {
      const float add = bias ? bias[j + b] : 0.0f;
      for (int i = 0; i < M; ++i) C[i * ldc + j + b] = sums[b * M + i] + add;
    }
  }
}

template <class WT>
void gemv_t(const float* A, int64_t lda, const typename WT::T* W, int64_t ldw, const float* bias,
            float* C, int64_t ldc, int64_t m, int64_t n, int64_t k) {
  using RowsFn = void (*)(const float*, int64_t, const typename WT::T*, int64_t, const float*,
                          float*, int64_t, int64_t, int64_t);
  static constexpr RowsFn kRows[kGemvMaxRows] = {
      gemv_rows<WT, 1>, gemv_rows<WT, 2>, gemv_rows<WT, 3>, gemv_rows<WT, 4>,
      gemv_rows<WT, 5>, gemv_rows<WT, 6>, gemv_rows<WT, 7>, gemv_rows<WT, 8>};
  kRows[m - 1](A, lda, W, ldw, bias, C, ldc, n, k);
}

void gemv(const float* A, int64_t lda, const void* W, DType wtype, int64_t ldw, const float* bias,
          float* C, int64_t ldc, int64_t m, int64_t n, int64_t k) {
  switch (wtype) {
    case DType::F32:
      return gemv_t<WF32>(A, lda, static_cast<const float*>(W), ldw, bias, C, ldc, m, n, k);
    case DType::F16:
      return gemv_t<WF16>(A, lda, static_cast<const uint16_t*>(W), ldw, bias, C, ldc, m, n, k);
    default:
      return gemv_t<WBF16>(A, lda, static_cast<const uint16_t*>(W), ldw, bias, C, ldc, m, n, k);
  }
}

// In-register 8 x 8 transpose: r[i] = row i on entry, column i on exit.
void transpose8(__m256 (&r)[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {  // 32-bit interleave of row pairs
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  __m256 u[8];  // u[4h + c], 128-bit lane L: rows 4h..4h+3 of column 4L + c
  for (int h = 0; h < 8; h += 4) {
    u[h] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}

// Transposes W[0:n, 0:k] into panel[kk][j] as float32, zero-padding columns n..kNr-1 so the
// micro-kernel never needs a column tail. Whole 8 x 8 blocks go through registers; the k tail and
// a partial row group (AVX2 has no masked 16-bit loads) are copied one element at a time.
template <class WT>
void pack_t(const typename WT::T* W, int64_t ldw, int64_t n, int64_t k, float* panel) {
  const int64_t k8 = k / 8 * 8;
  for (int64_t jb = 0; jb < kNr; jb += 8) {
    const int64_t rows = n - jb < 0 ? 0 : min64(8, n - jb);
    if (rows == 8) {
      for (int64_t kk = 0; kk < k8; kk += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = WT::load(W + (jb + i) * ldw + kk);
        transpose8(r);
        for (int c = 0; c < 8; ++c) _mm256_store_ps(panel + (kk + c) * kNr + jb, r[c]);
      }
    }
    for (int64_t kk = rows == 8 ? k8 : 0; kk < k; ++kk)
      for (int64_t i = 0; i < 8; ++i)
        panel[kk * kNr + jb + i] = i < rows ? WT::scalar(W[(jb + i) * ldw + kk]) : 0.0f;
  }
}

void pack(const void* W, DType wtype, int64_t ldw, int64_t n, int64_t k, float* panel) {
  switch (wtype) {
    case DType::F32:
      return pack_t<WF32>(static_cast<const float*>(W), ldw, n, k, panel);
    case DType::F16:
      return pack_t<WF16>(static_cast<const uint16_t*>(W), ldw, n, k, panel);
    default:
      return pack_t<WBF16>(static_cast<const uint16_t*>(W), ldw, n, k, panel);
  }
}

// C[0:MR, 0:n] (+)= A[0:MR, 0:k] * panel: per k step two panel loads feed 2 * MR FMAs.
template <int MR>
void tile_t(const float* A, int64_t lda, const float* panel, int64_t k, const float* bias, float* C,
            int64_t ldc, int64_t n, bool accumulate) {
  // The C tile was last touched a whole K block ago: fetch it during the k loop.
  for (int r = 0; r < MR; ++r) {
    const char* c = reinterpret_cast<const char*>(C + r * ldc);
    _mm_prefetch(c, _MM_HINT_T0);
    _mm_prefetch(c + 60, _MM_HINT_T0);  // the second line an unaligned row of 16 floats touches
  }
  // Every loop over r is unrolled up front so that GCC keeps lo/hi in registers; left to its own
  // heuristics it kept them in memory and stored them on every k step (2.4x slower on Zen 4).
  __m256 lo[MR], hi[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m256 p0 = _mm256_load_ps(panel + kk * kNr);
    const __m256 p1 = _mm256_load_ps(panel + kk * kNr + 8);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + kk);
      lo[r] = _mm256_fmadd_ps(a, p0, lo[r]);
      hi[r] = _mm256_fmadd_ps(a, p1, hi[r]);
    }
  }
  // Masked loads and stores cover a column tail (AVX2 masks are lanes of all ones).
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), lane);
  const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n) - 8), lane);
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* c = C + r * ldc;
    if (const float* add = accumulate ? c : bias) {
      lo[r] = _mm256_add_ps(lo[r], _mm256_maskload_ps(add, m0));
      hi[r] = _mm256_add_ps(hi[r], _mm256_maskload_ps(add + 8, m1));
    }
    _mm256_maskstore_ps(c, m0, lo[r]);
    _mm256_maskstore_ps(c + 8, m1, hi[r]);
  }
}

void tile(const float* A, int64_t lda, const float* panel, int64_t k, const float* bias, float* C,
          int64_t ldc, int64_t m, int64_t n, bool accumulate) {
  using TileFn = void (*)(const float*, int64_t, const float*, int64_t, const float*, float*,
                          int64_t, int64_t, bool);
  static constexpr TileFn kTiles[kMr] = {tile_t<1>, tile_t<2>, tile_t<3>,
                                         tile_t<4>, tile_t<5>, tile_t<6>};
  kTiles[m - 1](A, lda, panel, k, bias, C, ldc, n, accumulate);
}

}  // namespace

const GemmKernels kGemmAvx2{
    .name = "avx2", .mr = kMr, .nr = kNr, .gemv = gemv, .pack = pack, .tile = tile};

}  // namespace apus::detail
