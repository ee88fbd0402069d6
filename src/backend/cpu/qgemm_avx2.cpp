// AVX2 + FMA + F16C GEMV for quantized weights (qgemm.h). Compiled with -mavx2: self-contained, as
// gemm_avx2.cpp explains; only kQGemvAvx2 is visible outside.
#include <immintrin.h>

#include "backend/cpu/gemm.h"
#include "backend/cpu/qgemm.h"

namespace apus::detail {
namespace {

static_assert(kGemvMaxRows == 8, "rows_t is instantiated for 1..8 rows");

float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

__m256 to_float(__m128i bytes8) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes8)); }

// The 32 codes of one block as floats, in X's order (qgemm.h).
template <int BITS>
[[gnu::always_inline]] inline void decode(const uint8_t* w, __m256 (&f)[4]) {
  if constexpr (BITS == 4) {
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
    const __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
    f[0] = to_float(lo);
    f[1] = to_float(_mm_srli_si128(lo, 8));
    f[2] = to_float(hi);
    f[3] = to_float(_mm_srli_si128(hi, 8));
  } else {
    for (int i = 0; i < 4; ++i) f[i] = to_float(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + 8 * i)));
  }
}

// One weight row at a time against M rows of X; with few rows two accumulator sets per row give
// the FMA chains room.
template <int BITS, int M>
void rows_t(const float* X, const float* xsum, const uint8_t* q, int64_t ldq, const uint16_t* scales,
            const uint8_t* zeros, int64_t groups, int64_t gs, const float* bias, float* C, int64_t ldc, int64_t n,
            int64_t k) {
  constexpr int S = M <= 2 ? 2 : 1;
  constexpr int64_t kBlockBytes = 32 * BITS / 8;
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* w = q + j * ldq;
    __m256 tot[M];
    float corr[M];
    for (int r = 0; r < M; ++r) tot[r] = _mm256_setzero_ps(), corr[r] = 0.0f;
    for (int64_t g = 0; g < groups; ++g) {
      __m256 acc[S][M];
      for (int s = 0; s < S; ++s)
        for (int r = 0; r < M; ++r) acc[s][r] = _mm256_setzero_ps();
      for (int64_t kk = g * gs; kk < (g + 1) * gs; kk += 32) {
        __m256 f[4];
        decode<BITS>(w + kk / 32 * kBlockBytes, f);
        for (int r = 0; r < M; ++r) {
          const float* x = X + r * k + kk;
          acc[0][r] = _mm256_fmadd_ps(_mm256_loadu_ps(x), f[0], acc[0][r]);
          acc[S - 1][r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8), f[1], acc[S - 1][r]);
          acc[0][r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + 16), f[2], acc[0][r]);
          acc[S - 1][r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + 24), f[3], acc[S - 1][r]);
        }
      }
      const float s = _cvtsh_ss(scales[j * groups + g]);
      const float zs = s * float(zeros[j * groups + g]);
      const __m256 sv = _mm256_set1_ps(s);
      for (int r = 0; r < M; ++r) {
        const __m256 a = S == 2 ? _mm256_add_ps(acc[0][r], acc[1][r]) : acc[0][r];
        tot[r] = _mm256_fmadd_ps(a, sv, tot[r]);
        corr[r] += zs * xsum[r * groups + g];
      }
    }
    for (int r = 0; r < M; ++r) C[r * ldc + j] = hsum(tot[r]) - corr[r] + (bias ? bias[j] : 0.0f);
  }
}

template <int BITS>
void gemv_bits(const float* X, const float* xsum, const uint8_t* q, int64_t ldq, const uint16_t* scales,
               const uint8_t* zeros, int64_t groups, int64_t gs, const float* bias, float* C, int64_t ldc, int64_t m,
               int64_t n, int64_t k) {
  using Fn = void (*)(const float*, const float*, const uint8_t*, int64_t, const uint16_t*, const uint8_t*, int64_t,
                      int64_t, const float*, float*, int64_t, int64_t, int64_t);
  static constexpr Fn kRows[kGemvMaxRows] = {rows_t<BITS, 1>, rows_t<BITS, 2>, rows_t<BITS, 3>, rows_t<BITS, 4>,
                                             rows_t<BITS, 5>, rows_t<BITS, 6>, rows_t<BITS, 7>, rows_t<BITS, 8>};
  kRows[m - 1](X, xsum, q, ldq, scales, zeros, groups, gs, bias, C, ldc, n, k);
}

void gemv(const float* X, const float* xsum, const uint8_t* q, int64_t ldq, const uint16_t* scales,
          const uint8_t* zeros, int64_t groups, int64_t gs, int bits, const float* bias, float* C, int64_t ldc,
          int64_t m, int64_t n, int64_t k) {
  if (bits == 4) return gemv_bits<4>(X, xsum, q, ldq, scales, zeros, groups, gs, bias, C, ldc, m, n, k);
  gemv_bits<8>(X, xsum, q, ldq, scales, zeros, groups, gs, bias, C, ldc, m, n, k);
}

}  // namespace

const QGemvKernels kQGemvAvx2{.name = "avx2", .gemv = gemv};

}  // namespace apus::detail
