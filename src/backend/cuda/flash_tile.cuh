// One warp's steps of tensor-core attention over a tile of keys, shared by flash_prefill.cu and
// flash_decode.cu: 16 query rows (the mma's m), NK keys, head_dim HD, 16-bit T. Fragments follow
// the PTX layout of mma.sync m16n8k16: lane (g, t) = (lane / 4, lane % 4) holds, of a C fragment
// c[n], rows g (e = 0, 1) and g + 8 (e = 2, 3) at columns n * 8 + 2t + e % 2.
#pragma once
#include "backend/cuda/device_util.cuh"

namespace apus::cuda {

// S = Q K^T: qf the A fragments of the 16 query rows, k_s the tile's keys in shared memory (row
// stride padded_row<HD>); s[n] is the C fragment of keys n * 8 .. n * 8 + 7.
template <typename T, int HD, int NK>
__device__ __forceinline__ void tile_scores(float (&s)[NK / 8][4], const uint32_t (&qf)[HD / 16][4], const T* k_s,
                                            int lane) {
  constexpr int LD = padded_row<HD>();
#pragma unroll
  for (int n = 0; n < NK / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
    for (int np = 0; np < NK / 16; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, k_s + (np * 16 + (lane / 16) * 8 + lane % 8) * LD + kk * 16 + ((lane / 8) % 2) * 8);
      mma<T>(s[2 * np], qf[kk], b[0], b[1]);
      mma<T>(s[2 * np + 1], qf[kk], b[2], b[3]);
    }
}

// The online softmax of each row over the tile: s holds scores already scaled to base 2 and
// masked (-inf), and becomes P = 2^(s - m); the running maximum m, sum l and output o of the
// thread's two rows are updated (l is this thread's part: sum it over the row's 4 threads at the end).
template <int NK, int HD>
__device__ __forceinline__ void tile_softmax(float (&s)[NK / 8][4], float (&m)[2], float (&l)[2],
                                             float (&o)[HD / 8][4]) {
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int n = 0; n < NK / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
  float alpha[2], rowsum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
    const float m_new = fmaxf(m[h], mx[h]);
    alpha[h] = m_new == -INFINITY ? 1.0f : exp2f(m[h] - m_new);
    m[h] = m_new;
  }
#pragma unroll
  for (int n = 0; n < NK / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h = e / 2;
      s[n][e] = m[h] == -INFINITY ? 0.0f : exp2f(s[n][e] - m[h]);
      rowsum[h] += s[n][e];
    }
#pragma unroll
  for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + rowsum[h];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) {
    o[n][0] *= alpha[0], o[n][1] *= alpha[0];
    o[n][2] *= alpha[1], o[n][3] *= alpha[1];
  }
}

// O += P V: P (the softmax's s, rounded to T as FlashAttention does) is already laid out as the A
// operand; v_s the tile's values in shared memory (row stride padded_row<HD>).
template <typename T, int HD, int NK>
__device__ __forceinline__ void tile_values(float (&o)[HD / 8][4], const float (&s)[NK / 8][4], const T* v_s,
                                            int lane) {
  constexpr int LD = padded_row<HD>();
#pragma unroll
  for (int kk = 0; kk < NK / 16; ++kk) {
    const uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                           pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
    for (int dp = 0; dp < HD / 16; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, v_s + (kk * 16 + ((lane / 8) % 2) * 8 + lane % 8) * LD + dp * 16 + (lane / 16) * 8);
      mma<T>(o[2 * dp], a, b[0], b[1]);
      mma<T>(o[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

}  // namespace apus::cuda
