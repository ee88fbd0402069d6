// AVX-512 kernels for gemm.h (F, BW, VL). This file is compiled with -mavx512*: everything lives in
// an anonymous namespace and nothing inline from shared headers or std templates is instantiated,
// so the linker can never pick an AVX-512 copy of a vague-linkage function for code that runs on
// older CPUs. Only kGemmAvx512 is visible outside, and gemm.cpp uses it after a CPUID check.
// GCC 12 flags the deliberately undefined registers inside its own AVX-512 intrinsics
// (_mm512_undefined_*, GCC bug 105593) once they are inlined here; the header is not at fault.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "backend/cpu/gemm.h"

namespace apus::detail {
namespace {

// 8 x 32 tile: 16 zmm accumulators, A broadcast straight from memory. 12 and 14 rows (more FMAs
// per panel load) measured no faster on Zen 4 and leave bigger row tails.
constexpr int kMr = 8;
constexpr int kNr = 32;
// GEMV software prefetch into L2, this far ahead along the weight stream. The hardware prefetchers
// alone fall behind once rows of A stop fitting in L1 next to the stream or several rows of A
// slow the consumption of each line (measured on Zen 4: up to 1.5x for m = 1 with k = 4864 and
// for m = 4..8). Past a row's end it runs into the next row, where the stream goes next when rows
// are contiguous.
constexpr int kPrefetchBytes = 8192;
static_assert(kGemvMaxRows == 8, "gemv_rows is instantiated for 1..8 rows of A");

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__mmask16 low_mask(int64_t count) {  // the first min(count, 16) lanes
  return count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1u);
}

// Weight formats: load 16 consecutive weights as float32, optionally masked (zero beyond).
struct WF32 {
  using T = float;
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static __m512 load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};
// bf16 is the top half of a float32: zero-extend to 32 bits and shift into place.
struct WBF16 {
  using T = uint16_t;
  static __m512 widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static __m512 load(const uint16_t* p) {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512 load(const uint16_t* p, __mmask16 m) {
    return widen(_mm256_maskz_loadu_epi16(m, p));
  }
};
struct WF16 {
  using T = uint16_t;
  static __m512 load(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512 load(const uint16_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};

// out[i] = 16 partial sums of A[i, :] . w for M rows of A and one row of W. Rows of W are
// streamed one after another: interleaving several rows' streams defeats the hardware prefetcher
// (measured: half the bandwidth on Zen 4). Separate accumulators for the two halves give 2 * M
// independent FMA chains, enough to hide FMA latency even for M = 1.
template <class WT, int M>
[[gnu::always_inline]] inline void dot_row(const float* A, int64_t lda, const typename WT::T* w,
                                           int64_t k, __m512* out) {
  __m512 lo[M], hi[M];
  for (int i = 0; i < M; ++i) lo[i] = hi[i] = _mm512_setzero_ps();
  int64_t kk = 0;
  for (; kk + 32 <= k; kk += 32) {
    const char* ahead = reinterpret_cast<const char*>(w + kk) + kPrefetchBytes;
    for (int line = 0; line < int(32 * sizeof(typename WT::T)); line += 64)
      _mm_prefetch(ahead + line, _MM_HINT_T1);
    const __m512 w0 = WT::load(w + kk), w1 = WT::load(w + kk + 16);
    for (int i = 0; i < M; ++i) {
      lo[i] = _mm512_fmadd_ps(_mm512_loadu_ps(A + i * lda + kk), w0, lo[i]);
      hi[i] = _mm512_fmadd_ps(_mm512_loadu_ps(A + i * lda + kk + 16), w1, hi[i]);
    }
  }
  if (kk < k) {  // masked loads read nothing past the end of a row
    const __mmask16 m0 = low_mask(k - kk), m1 = low_mask(k - kk > 16 ? k - kk - 16 : 0);
    const __m512 w0 = WT::load(w + kk, m0), w1 = WT::load(w + kk + 16, m1);
    for (int i = 0; i < M; ++i) {
      lo[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, A + i * lda + kk), w0, lo[i]);
      hi[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, A + i * lda + kk + 16), w1, hi[i]);
    }
  }
  for (int i = 0; i < M; ++i) out[i] = _mm512_add_ps(lo[i], hi[i]);
}

// Lane l of the result is the sum of v[l]'s 16 lanes: one shuffle-and-add tree for all eight,
// several times cheaper than eight separate horizontal reductions.
__m256 hsum8(const __m512 (&v)[8]) {
  __m512 s[4];  // 128-bit lanes: [v_2p halves summed (2 lanes), v_2p+1 halves summed (2 lanes)]
  for (int p = 0; p < 4; ++p)
    s[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xee));
  __m512 t[2];  // 128-bit lane q of t[h]: 4 partial sums of v[4h + q]
  for (int h = 0; h < 2; ++h)
    t[h] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * h], s[2 * h + 1], 0x88),
                         _mm512_shuffle_f32x4(s[2 * h], s[2 * h + 1], 0xdd));
  // Lane q: [v_q, v_q, v_q+4, v_q+4] as 2 partial sums each, then complete.
  const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(t[0], t[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(t[0], t[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 f = _mm512_add_ps(z, _mm512_shuffle_ps(z, z, _MM_SHUFFLE(2, 3, 0, 1)));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castps512_ps256(_mm512_permutexvar_ps(order, f));
}

// C[0:M, 0:n] = bias + A W^T. Weight rows go in groups of B whose B * M dot products share one
// reduction tree.
template <class WT, int M>
void gemv_rows(const float* A, int64_t lda, const typename WT::T* W, int64_t ldw, const float* bias,
               float* C, int64_t ldc, int64_t n, int64_t k) {
  constexpr int B = 8 / M;
  for (int64_t j = 0; j < n; j += B) {
    const int rows = int(min64(B, n - j));
    __m512 v[8];
    for (int b = 0; b < 8; ++b) v[b] = _mm512_setzero_ps();
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

// In-register 16 x 16 transpose: r[i] = row i on entry, column i on exit. Four shuffle stages
// (64 shuffles) instead of 256 scalar stores with a 128-byte stride.
void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {  // 32-bit interleave of row pairs
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // r[i + c], 128-bit lane L: rows i..i+3 of column 4L + c
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 2]);
    const __m512d c = _mm512_castps_pd(t[i + 1]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  __m512 u[16];
  for (int c = 0; c < 4; ++c) {  // gather lane L of r[c], r[4 + c], r[8 + c], r[12 + c]
    const __m512 a = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);
    const __m512 b = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
    const __m512 d = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
    const __m512 e = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
    u[c] = _mm512_shuffle_f32x4(a, d, 0x88);
    u[4 + c] = _mm512_shuffle_f32x4(b, e, 0x88);
    u[8 + c] = _mm512_shuffle_f32x4(a, d, 0xdd);
    u[12 + c] = _mm512_shuffle_f32x4(b, e, 0xdd);
  }
  for (int i = 0; i < 16; ++i) r[i] = u[i];
}

// Transposes W[0:n, 0:k] into panel[kk][j] as float32 in 16 x 16 blocks, zero-padding columns
// n..kNr-1 so the micro-kernel never needs a column tail.
template <class WT>
void pack_t(const typename WT::T* W, int64_t ldw, int64_t n, int64_t k, float* panel) {
  for (int64_t jb = 0; jb < kNr; jb += 16) {
    const int64_t rows = n - jb < 0 ? 0 : min64(16, n - jb);
    for (int64_t kk = 0; kk < k; kk += 16) {
      const int64_t cnt = min64(16, k - kk);
      const __mmask16 mask = low_mask(cnt);
      // Branch-free loads and constant trip counts keep r in registers. Rows past n load nothing
      // (empty mask) from the last real row.
      __m512 r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i)
        r[i] = WT::load(W + min64(jb + i, n - 1) * ldw + kk, i < rows ? mask : __mmask16(0));
      transpose16(r);
#pragma GCC unroll 16
      for (int c = 0; c < 16; ++c)
        if (c < cnt) _mm512_store_ps(panel + (kk + c) * kNr + jb, r[c]);
    }
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
  // The C tile was last touched a whole K block ago and has likely left L1/L2: fetch it during
  // the k loop rather than stalling on it in the epilogue.
  for (int r = 0; r < MR; ++r) {
    const char* c = reinterpret_cast<const char*>(C + r * ldc);
    _mm_prefetch(c, _MM_HINT_T0);
    _mm_prefetch(c + 64, _MM_HINT_T0);
    _mm_prefetch(c + 124, _MM_HINT_T0);  // the third line an unaligned row of 32 floats touches
  }
  // Loops over r are unrolled up front so that GCC keeps acc in registers (see gemm_avx2.cpp).
  __m512 acc[MR][2];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m512 p0 = _mm512_load_ps(panel + kk * kNr);
    const __m512 p1 = _mm512_load_ps(panel + kk * kNr + 16);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + kk]);
      acc[r][0] = _mm512_fmadd_ps(a, p0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, p1, acc[r][1]);
    }
  }
  const __mmask16 m0 = low_mask(n), m1 = low_mask(n > 16 ? n - 16 : 0);
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
  if (!accumulate && bias) {
    b0 = _mm512_maskz_loadu_ps(m0, bias);
    b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* c = C + r * ldc;
    if (accumulate) {
      b0 = _mm512_maskz_loadu_ps(m0, c);
      b1 = _mm512_maskz_loadu_ps(m1, c + 16);
    }
    _mm512_mask_storeu_ps(c, m0, _mm512_add_ps(acc[r][0], b0));
    _mm512_mask_storeu_ps(c + 16, m1, _mm512_add_ps(acc[r][1], b1));
  }
}

void tile(const float* A, int64_t lda, const float* panel, int64_t k, const float* bias, float* C,
          int64_t ldc, int64_t m, int64_t n, bool accumulate) {
  using TileFn = void (*)(const float*, int64_t, const float*, int64_t, const float*, float*,
                          int64_t, int64_t, bool);
  static constexpr TileFn kTiles[kMr] = {tile_t<1>, tile_t<2>, tile_t<3>, tile_t<4>,
                                         tile_t<5>, tile_t<6>, tile_t<7>, tile_t<8>};
  kTiles[m - 1](A, lda, panel, k, bias, C, ldc, n, accumulate);
}

}  // namespace

const GemmKernels kGemmAvx512{
    .name = "avx512", .mr = kMr, .nr = kNr, .gemv = gemv, .pack = pack, .tile = tile};

}  // namespace apus::detail
