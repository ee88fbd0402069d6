// Linear layers with GPTQ / AWQ weights (quant/quant_weight.h), repacked at load by the backend
// (see QuantArgs in kernels.h):
//
// Codes are tiled in 8-row tiles where rows are whole 64-byte pieces (kernels.h, QuantArgs): a
// column's piece p lies ColumnRows::stride bytes after piece p - 1.
// - qmv_kernel, 1..kQuantGemvMaxRows rows of 16-bit activations (decode): mma.sync m16n8k16 with
//   the weights as the A operand (16 output columns per warp) and the rows of x as B (the n-tile's
//   8 columns), so a single row wastes no dequantization. A block owns 16 output columns; its warps
//   split K, each taking two consecutive chunks at a time (a 128-byte line of each column), and
//   reduce through shared memory in a fixed order. Each lane streams 16 bytes of codes of each of its
//   two columns per chunk (32 4-bit or 16 8-bit codes, evict-first), issuing the loads of U chunks
//   before using any. When every warp chunk lies inside one quantization group (group size a
//   multiple of 128 at 4 bits, 64 at 8, or one group), the mma multiplies the exact integers
//   q - zero and the chunk's sums are scaled in float32 (FACTOR); else the fragments are
//   (q - zero) * scale rounded once to the activation dtype. Each chunk is summed into a fresh
//   accumulator (short dependent mma chains) and added in chunk order.
// - qmm_kernel, 9..kQuantMmaMaxRows rows (batched decode): the activations are the A operand (16-row
//   tiles), the dequantized weights B (four n-tiles of 8 columns), reused by every row tile; past
//   32 rows, slices of 32 rows in neighbouring blocks.
// The loops keep k offsets in 32 bits and find a k value's group with a shift: on an H100 the
// decode kernel had ~2.5x the instructions of its dequantization and mma, and was issue-bound at
// 0.57 of the copy rate (ncu: SM throughput 65 %, DRAM 52 %); without that overhead it runs at 0.77.
// Both assign the mma's k positions so that each lane's codes and activations are contiguous: lane
//   (g, t) of the PTX fragment layout holds the k positions 2t, 2t+1, 2t+8, 2t+9 of both A and B,
//   which we map to 4j..4j+3 of the lane's own 32 (16) k values for the j-th mma. 4-bit
//   dequantization is a shift, one LOP3 and one or two 16-bit pair operations per two weights: the
//   nibble is placed in the mantissa of 1024 (fp16) or 128 (bf16) and (base + zero) subtracted,
//   which leaves q - zero exact; the load-time repack puts the nibbles of k, k+1 sixteen bits apart
//   in each 32-bit word (positions p and p+4 hold k = 2p, 2p+1). A row's result depends neither on
//   the rows beside it nor, within 1-8 and within 9-64 rows, on their number (graphs pad decode
//   batches to powers of two).
// - dequantize_kernel: the whole matrix in the activation dtype (prefill, F32 models), then cuBLAS.
// - gather_cols_kernel: x[:, perm] for act-order (desc_act) checkpoints, once per layer.
#include <type_traits>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

namespace apus::cuda {

namespace {

constexpr int kQWarps = 8;  // warps of a block, splitting K

template <typename T>
struct Half2;
template <>
struct Half2<__half> {
  using T2 = __half2;
  static constexpr uint32_t kMagic = 0x64006400u;  // 1024.0 in both halves
  static constexpr float kBase = 1024.0f;
  static __device__ __forceinline__ T2 splat(float v) { return __float2half2_rn(v); }
  static __device__ __forceinline__ T2 pair(float lo, float hi) { return __floats2half2_rn(lo, hi); }
};
template <>
struct Half2<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t kMagic = 0x43004300u;  // 128.0 in both halves
  static constexpr float kBase = 128.0f;
  static __device__ __forceinline__ T2 splat(float v) { return __float2bfloat162_rn(v); }
  static __device__ __forceinline__ T2 pair(float lo, float hi) { return __floats2bfloat162_rn(lo, hi); }
};

template <typename T2>
__device__ __forceinline__ uint32_t bits_of(T2 v) {
  return *reinterpret_cast<uint32_t*>(&v);
}

// The nibbles at bit positions sh and sh + 16 of `word` in the mantissas of a pair of `magic`:
// (w & mask) | magic as one LOP3 (the compiler emits an AND and an OR: a third of the decode
// kernel's dequantization instructions).
template <uint32_t MAGIC>
__device__ __forceinline__ uint32_t nibble_pair(uint32_t word, int sh) {
  uint32_t v;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(v) : "r"(word >> sh), "n"(0x000F000Fu), "n"(MAGIC));
  return v;
}

// Weights of the nibbles at bit positions sh and sh + 16 of `word`: ((base + q) - (base + zero)) * scale.
template <typename T>
__device__ __forceinline__ uint32_t dequant4(uint32_t word, int sh, typename Half2<T>::T2 base_zero,
                                             typename Half2<T>::T2 scale) {
  uint32_t v = nibble_pair<Half2<T>::kMagic>(word, sh);
  const typename Half2<T>::T2 q = *reinterpret_cast<typename Half2<T>::T2*>(&v);
  return bits_of(__hmul2(__hsub2(q, base_zero), scale));
}

// A column's scale and zero for a chunk, in the forms the dequantization uses (made once a chunk:
// the conversions are not merged across calls by the compiler).
template <typename T>
struct ScaleZero {
  typename Half2<T>::T2 base_zero, scale;  // 4 bits
  float s, z;                              // 8 bits
};
template <typename T>
__device__ __forceinline__ ScaleZero<T> scale_zero(float s, float z) {
  return {Half2<T>::splat(Half2<T>::kBase + z), Half2<T>::splat(s), s, z};
}

// The B fragment pair (b0, b1) of the lane's mma j from its 16 bytes of codes: 4 bits, word j / 2
// at nibble pairs (p, p + 4) for p = 2 (j % 2) and p + 1; 8 bits, bytes 0-1 and 2-3 of word j.
template <typename T, int BITS>
__device__ __forceinline__ void b_frag(const uint4& wv, const ScaleZero<T>& sz, int j, uint32_t& b0, uint32_t& b1) {
  const uint32_t w[4] = {wv.x, wv.y, wv.z, wv.w};
  if constexpr (BITS == 4) {
    b0 = dequant4<T>(w[j / 2], (j % 2) * 8, sz.base_zero, sz.scale);
    b1 = dequant4<T>(w[j / 2], (j % 2) * 8 + 4, sz.base_zero, sz.scale);
  } else {
    const uint32_t x = w[j];
    const float s = sz.s, z = sz.z;
    b0 = bits_of(Half2<T>::pair((float(x & 0xffu) - z) * s, (float((x >> 8) & 0xffu) - z) * s));
    b1 = bits_of(Half2<T>::pair((float((x >> 16) & 0xffu) - z) * s, (float(x >> 24) - z) * s));
  }
}

// Where the codes, scales and zeros of a lane's N output columns n0 + 8i + g begin (a column past
// the end reads the last one's and is not stored); with half > 0 (a gate_up layer, N = 2), gate's
// column n0 + g and up's half + n0 + g. w[i] is the row's first 64-byte piece of codes: its piece p
// lies p * stride bytes further (kernels.h, QuantArgs: tiles of 8 rows, or rows one after another).
template <int N>
struct ColumnRows {
  const uint8_t* w[N];
  const uint16_t* s[N];
  const uint8_t* z[N];
  int stride;
  // tiles: a.tile_rows, passed as a constant where the caller knows it (the branch and the stride then
  // fold: a run-time stride made the decode kernel's 16-warp variant spill).
  __device__ __forceinline__ ColumnRows(const QuantArgs& a, int tiles, int64_t n0, int g, int64_t half = 0)
      : stride(64 * tiles) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const int64_t row = half > 0 ? (n0 + g < half ? n0 + g : half - 1) + i * half
                                   : (n0 + i * 8 + g < a.n ? n0 + i * 8 + g : a.n - 1);
      w[i] = tiles == 8 ? a.qweight + (row >> 3) * 8 * a.qw_stride + (row & 7) * 64 : a.qweight + row * a.qw_stride;
      s[i] = a.scales + row * a.groups;
      z[i] = a.zeros + row * a.groups;
    }
  }
  // Byte b of column i's codes.
  __device__ __forceinline__ const uint8_t* codes(int i, unsigned b) const { return w[i] + (b >> 6) * stride + (b & 63); }
};

// The quantization group of k value kk (0 <= kk < k < 2^31): a shift where the group size is a
// power of two (every layout we load; one group: 31), else a division (tens of instructions, per
// chunk and lane: measured in the decode kernel's instruction count).
struct GroupOf {
  int shift, size;  // shift < 0: divide
  __device__ __forceinline__ int operator()(int kk) const { return shift >= 0 ? kk >> shift : kk / size; }
};
__device__ __forceinline__ GroupOf group_of_args(const QuantArgs& a) {
  if (a.groups == 1) return {31, a.group_size};
  if ((a.group_size & (a.group_size - 1)) != 0) return {-1, a.group_size};
  return {__ffs(a.group_size) - 1, a.group_size};
}

// Batches of 9..kQuantMmaMaxRows rows: the activations are the A operand (MT tiles of 16 rows), the
// weights B. A block of kQWarps warps owns 8 NT output columns (NT mma n-tiles sharing every
// activation load); the warps split K. Per round a lane first issues all its loads (U chunks of
// codes for both n-tiles, their scales and zeros), then computes, so that a round costs one memory
// latency; the B fragments of each 16-byte piece of the lane's k values are dequantized once and
// serve every row tile.
template <typename T, typename OutT, int BITS, int MT, int U, int NT = 2>
__global__ void __launch_bounds__(kQWarps * 32, 2) qmm_kernel(QuantArgs w, const T* __restrict__ x, int64_t x_stride,
                                                           int m, const float* __restrict__ bias, OutT* __restrict__ y,
                                                           int64_t y_stride) {
  pdl_begin();
  constexpr int KL = 128 / BITS;  // k values per lane per chunk
  constexpr int KC = 4 * KL;      // k values per warp per chunk
  constexpr int XV = KL / 8;      // 16-byte activation loads per row per chunk
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t4 = lane % 4;
  // More than MT * 16 rows: slices of MT * 16 rows, in neighbouring blocks (the same columns: the
  // second slice finds the codes in L2).
  const int slices = (m + MT * 16 - 1) / (MT * 16), slice = int(blockIdx.x) % slices;
  x += int64_t(slice) * MT * 16 * x_stride;
  y += int64_t(slice) * MT * 16 * y_stride;
  m = min(m - slice * MT * 16, MT * 16);
  const int64_t n0 = int64_t(blockIdx.x / slices) * 8 * NT;
  const ColumnRows<NT> cr(w, w.tile_rows, n0, g);
  float acc[MT][NT][4];
#pragma unroll
  for (int t = 0; t < MT; ++t)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[t][nt][0] = acc[t][nt][1] = acc[t][nt][2] = acc[t][nt][3] = 0.0f;

  const int k = int(w.k);  // 32-bit k offsets (k < 2^31)
  const GroupOf group_of = group_of_args(w);
  const int chunks = (k + KC - 1) / KC;
  for (int c0 = warp; c0 < chunks; c0 += kQWarps * U) {
    uint4 wv[U][NT];
    float s[U][NT], z[U][NT];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kb = (c0 + u * kQWarps) * KC + t4 * KL;
      const bool ok = kb < k;  // k is a multiple of 32: a lane's chunk is all in or all out
      const int gi = ok ? group_of(kb) : 0;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        wv[u][nt] = ok ? __ldcs(reinterpret_cast<const uint4*>(cr.codes(nt, unsigned(kb) * BITS / 8))) : make_uint4(0, 0, 0, 0);
        s[u][nt] = ok ? __half2float(__ushort_as_half(__ldg(cr.s[nt] + gi))) : 0.0f;  // zero scale: adds nothing
        z[u][nt] = ok ? float(__ldg(cr.z[nt] + gi)) : 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (c0 + u * kQWarps >= chunks) break;  // the same for the whole warp
      const int kb = (c0 + u * kQWarps) * KC + t4 * KL;
      const bool ok = kb < k;
      ScaleZero<T> sz[NT];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) sz[nt] = scale_zero<T>(s[u][nt], z[u][nt]);
#pragma unroll
      for (int i = 0; i < XV; ++i) {  // 16 bytes of each row: the lane's k values 8i..8i+7, mmas 2i and 2i + 1
        uint32_t b[NT][2][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int jj = 0; jj < 2; ++jj) b_frag<T, BITS>(wv[u][nt], sz[nt], 2 * i + jj, b[nt][jj][0], b[nt][jj][1]);
#pragma unroll
        for (int t = 0; t < MT; ++t) {
          const int r0 = t * 16 + g, r1 = r0 + 8;
          const uint4 va = ok && r0 < m ? __ldg(reinterpret_cast<const uint4*>(x + r0 * x_stride + kb) + i) : make_uint4(0, 0, 0, 0);
          const uint4 vb = ok && r1 < m ? __ldg(reinterpret_cast<const uint4*>(x + r1 * x_stride + kb) + i) : make_uint4(0, 0, 0, 0);
          const uint32_t* xa = reinterpret_cast<const uint32_t*>(&va);
          const uint32_t* xb = reinterpret_cast<const uint32_t*>(&vb);
#pragma unroll
          for (int jj = 0; jj < 2; ++jj) {
            const uint32_t a[4] = {xa[2 * jj], xb[2 * jj], xa[2 * jj + 1], xb[2 * jj + 1]};
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mma<T>(acc[t][nt], a, b[nt][jj][0], b[nt][jj][1]);
          }
        }
      }
    }
  }

  __shared__ float red[kQWarps - 1][MT][NT][4][32];
  if (warp > 0)
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) red[warp - 1][t][nt][e][lane] = acc[t][nt][e];
  __syncthreads();
  if (warp > 0) return;
#pragma unroll
  for (int t = 0; t < MT; ++t)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = acc[t][nt][e];
#pragma unroll
        for (int q = 0; q < kQWarps - 1; ++q) v += red[q][t][nt][e][lane];
        // C fragment: element e of lane (g, t4) is row g (+8 for e >= 2), column 2 t4 + e % 2.
        const int r = t * 16 + g + (e >= 2 ? 8 : 0);
        const int64_t col = n0 + nt * 8 + 2 * t4 + (e % 2);
        if (r < m && col < w.n) y[int64_t(r) * y_stride + col] = from_f<OutT>(v + (bias ? bias[col] : 0.0f));
      }
}

// A fragment pair of weights as T: the 4-bit codes at nibble pairs (p, p + 4) of `word` for the
// shift sh = 4p, or the 8-bit codes in bytes (b, b + 1) for sh = 8b; (q - zero), times the scale
// unless the caller applies the scale to the product (FACTOR).
template <typename T, int BITS, bool FACTOR>
__device__ __forceinline__ uint32_t wpair(uint32_t word, int sh, typename Half2<T>::T2 base_zero,
                                          typename Half2<T>::T2 scale, float z, float s) {
  if constexpr (BITS == 4) {
    uint32_t v = nibble_pair<Half2<T>::kMagic>(word, sh);
    const typename Half2<T>::T2 d = __hsub2(*reinterpret_cast<typename Half2<T>::T2*>(&v), base_zero);  // exact
    return FACTOR ? bits_of(d) : bits_of(__hmul2(d, scale));
  } else {
    const float lo = float((word >> sh) & 0xffu) - z, hi = float((word >> (sh + 8)) & 0xffu) - z;
    return FACTOR ? bits_of(Half2<T>::pair(lo, hi)) : bits_of(Half2<T>::pair(lo * s, hi * s));
  }
}

// 16 bytes of codes, streamed (evict-first), with an L2 prefetch of the 256-byte block around them
// (the next warps' chunks of the same column): 5-10 % faster than without the hint on an H100 once
// the decode kernel's integer overhead was gone (bench/RESULTS.md, session 8).
__device__ __forceinline__ uint4 load_codes(const uint8_t* p) {
  uint4 v;
  asm volatile("ld.global.cs.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

constexpr int kQvGroup = 2;  // consecutive chunks a warp of qmv_kernel takes (one 128-byte line per column)

// Decode, 1..8 rows: y^T = W x^T on mma.sync m16n8k16 with the weights as the A operand (16 output
// columns) and the rows of x as B (8 columns of the n-tile), so a single row wastes no
// dequantization. A block of KS warps owns 16 output columns and splits K in chunks of KC = 4 * KL
// k values, kQvGroup consecutive chunks at a time: warp w takes chunks 2w, 2w + 1, 2(w + KS), ...;
// lane (g, t) the KL values t * KL.. of a chunk for columns g and g + 8 (16 bytes of codes each). A
// round first issues the loads of U chunks (codes, scales, zeros; evict-first), then computes each
// chunk into a fresh accumulator: FACTOR (every chunk inside one group) multiplies the exact
// integers (q - z) and applies the scale to the chunk's sums in float32, else the fragments are
// (q - z) * scale. Chunks are added in chunk order and the warps' sums in warp order, whatever the
// row count: a row's result does not depend on the rows beside it. silu_half > 0 (a gate_up layer:
// gate's silu_half columns, then up's): the block's 16 columns are gate's columns 8 blockIdx.x ..
// + 7 and the same 8 of up, each summed as without it, and y [m, silu_half] gets silu(gate) * up
// from both rounded to OutT (= T), as linear + silu_mul would.
enum Fold { kFoldNone, kFoldProduce, kFoldConsume };  // a NormFold's side, or none

template <typename T, typename OutT, int BITS, bool FACTOR, bool TILED, int KS, int U, int OCC, Fold FOLD = kFoldNone,
          bool PRELOAD = true>
__global__ void __launch_bounds__(KS * 32, OCC / KS)
    qmv_kernel(QuantArgs w, const T* __restrict__ x, int64_t x_stride, int m, const float* __restrict__ bias,
               OutT* __restrict__ y, int64_t y_stride, int silu_half, NormFold fold) {
  const unsigned long long t0 = trace_now();
  constexpr int KL = 128 / BITS;           // k values per lane per chunk
  constexpr int J = KL / 4;                // mmas per chunk
  constexpr int KC = 4 * KL;               // k values per warp per chunk
  constexpr int XV = KL * sizeof(T) / 16;  // 16-byte loads of x per chunk
  const int lane = threadIdx.x % 32, ks = threadIdx.x / 32;
  const int g = lane / 4, t4 = lane % 4;
  const int64_t n0 = int64_t(blockIdx.x) * (silu_half > 0 ? 8 : 16);
  const ColumnRows<2> cr(w, TILED ? 8 : 1, n0, g, silu_half);
  const T* xr = g < m ? x + int64_t(g) * x_stride : nullptr;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};

  const int chunks = int((w.k + KC - 1) / KC);
  // The warp's i-th chunk.
  auto chunk = [ks](int i) { return (i / kQvGroup) * (KS * kQvGroup) + ks * kQvGroup + i % kQvGroup; };
  // A round's loads: U chunks of codes, scales and zeros.
  struct Round {
    uint4 wv[U][2];
    uint16_t sb[U][2];
    uint8_t zb[U][2];
  };
  // k offsets are 32-bit (k < 2^31): 64-bit index arithmetic was a large part of the loop's instructions.
  const int k = int(w.k);
  const GroupOf group_of = group_of_args(w);
  auto x_of = [&](int kb, bool ok, uint4* xv) {
#pragma unroll
    for (int v = 0; v < XV; ++v)
      xv[v] = ok && xr != nullptr ? __ldg(reinterpret_cast<const uint4*>(xr + kb) + v) : make_uint4(0, 0, 0, 0);
  };
  auto load = [&](int i0, Round& r) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kc = chunk(i0 + u) * KC, kb = kc + t4 * KL;
      const bool in = kc < k, ok = kb < k;  // k is a multiple of 32: a lane's values are all in or all out
      // A lane past the end of a partial chunk holds zero codes and activations but its chunk's scale:
      // its part of the C fragment sums the other lanes' products.
      const int gi = in ? group_of(ok ? kb : kc) : 0;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        r.wv[u][h] = ok ? load_codes(cr.codes(h, unsigned(kb) * BITS / 8)) : make_uint4(0, 0, 0, 0);
        r.sb[u][h] = in ? __ldg(cr.s[h] + gi) : uint16_t(0);
        r.zb[u][h] = in ? __ldg(cr.z[h] + gi) : uint8_t(0);
      }
    }
  };
  auto compute = [&](int i0, const Round& r) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (chunk(i0 + u) >= chunks) break;  // the same for the whole warp
      const int kb = chunk(i0 + u) * KC + t4 * KL;
      uint4 xl[XV];
      x_of(kb, kb < k, xl);
      const uint32_t* xw = reinterpret_cast<const uint32_t*>(xl);
      float s[2], z[2];
      typename Half2<T>::T2 bz[2], sc[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        s[h] = __half2float(__ushort_as_half(r.sb[u][h]));
        z[h] = float(r.zb[u][h]);
        bz[h] = Half2<T>::splat(Half2<T>::kBase + z[h]);
        sc[h] = Half2<T>::splat(s[h]);
      }
      float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const uint32_t* w0 = reinterpret_cast<const uint32_t*>(&r.wv[u][0]);
      const uint32_t* w1 = reinterpret_cast<const uint32_t*>(&r.wv[u][1]);
#pragma unroll
      for (int j = 0; j < J; ++j) {
        // The lane's k values 4j..4j+3 stand for the mma's k 2t, 2t+1 (a0, a1, b0) and 2t+8, 2t+9
        // (a2, a3, b1); rows g (a0, a2) and g + 8 (a1, a3) of the A tile are the two columns.
        const int wi = BITS == 4 ? j / 2 : j;
        const int sh = BITS == 4 ? (j % 2) * 8 : 0, sh2 = BITS == 4 ? sh + 4 : 16;
        const uint32_t a[4] = {wpair<T, BITS, FACTOR>(w0[wi], sh, bz[0], sc[0], z[0], s[0]),
                               wpair<T, BITS, FACTOR>(w1[wi], sh, bz[1], sc[1], z[1], s[1]),
                               wpair<T, BITS, FACTOR>(w0[wi], sh2, bz[0], sc[0], z[0], s[0]),
                               wpair<T, BITS, FACTOR>(w1[wi], sh2, bz[1], sc[1], z[1], s[1])};
        mma<T>(part, a, xw[2 * j], xw[2 * j + 1]);
      }
      // C fragment: elements 0, 1 are column g, 2, 3 column g + 8.
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[e] = FACTOR ? fmaf(s[e / 2], part[e], acc[e]) : acc[e] + part[e];
    }
  };
  // The first round's codes are loaded before waiting for the kernel before this one (weights are
  // not written during a step): with PDL their latency overlaps that kernel's tail. !PRELOAD: after.
  Round r;
  if constexpr (PRELOAD) load(0, r);
  pdl_begin();
  trace_mark(0, t0);
  // Norm folding (NormFold, kernels.h). A consumer's 1 / rms per row, from the producer's partial
  // sums in a fixed order, by the last warp before its first round (where K does not split evenly
  // it has a round fewer; its first codes are on their way meanwhile).
  constexpr bool produce = FOLD == kFoldProduce, consume = FOLD == kFoldConsume;
  __shared__ float inv_s[kQuantGemvMaxRows];
  if (consume && ks == KS - 1)
    for (int row = 0; row < m; ++row) {
      const float* sr = fold.sums + int64_t(row) * fold.sums_stride;
      float t = 0.0f;
#pragma unroll 8
      for (int p = lane; p < fold.parts; p += 32) t += sr[p];
      t = warp_sum(t);
      if (lane == 0) inv_s[row] = rsqrtf(t / fold.cols + fold.eps);
    }
  for (int i0 = 0; chunk(i0) < chunks; i0 += U) {
    if (i0 > 0 || !PRELOAD) load(i0, r);
    compute(i0, r);
  }
  trace_mark(1);

  // C fragment: element e of lane (g, t4) is output column g (+8 for e >= 2), row 2 t4 + e % 2.
  auto row_of = [t4](int e) { return 2 * t4 + (e % 2); };
  auto col_of = [n0, g](int e) { return n0 + g + (e >= 2 ? 8 : 0); };
  // A producer's residual and norm weight, loaded while the other warps finish.
  T* res = static_cast<T*>(fold.residual);
  float rv[4] = {0.0f, 0.0f, 0.0f, 0.0f}, nw[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (produce && ks == 0)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (row_of(e) < m && col_of(e) < w.n) {
        rv[e] = to_f(res[int64_t(row_of(e)) * fold.res_stride + col_of(e)]);
        nw[e] = fold.norm_w[col_of(e)];
      }

  __shared__ float red[KS - 1][4][32];
  if (ks > 0)
#pragma unroll
    for (int e = 0; e < 4; ++e) red[ks - 1][e][lane] = acc[e];
  __syncthreads();
  trace_mark(2);
  if (ks > 0) return;
  float v[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    v[e] = acc[e];
#pragma unroll
    for (int q = 0; q < KS - 1; ++q) v[e] += red[q][e][lane];
    if (consume && row_of(e) < m) v[e] *= inv_s[row_of(e)];  // with silu too: gate and up of row 2 t4 + e % 2
  }
  if constexpr (produce) {
    // residual += y (rounded as linear() writes it), y = norm_w * residual; the squares of the new
    // residual summed over the block's columns per row: columns g and g + 8 in the lane, then g in
    // order over the lanes of the row (lane bits 2-4).
    float sq[2] = {0.0f, 0.0f};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = row_of(e);
      const int64_t col = col_of(e);
      if (r >= m || col >= w.n) continue;
      const float h = to_f(from_f<T>(rv[e] + to_f(from_f<T>(v[e] + (bias ? bias[col] : 0.0f)))));
      res[int64_t(r) * fold.res_stride + col] = from_f<T>(h);
      y[int64_t(r) * y_stride + col] = from_f<OutT>(nw[e] * h);
      sq[e % 2] += h * h;
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int o = 4; o < 32; o <<= 1) sq[i] += __shfl_xor_sync(0xffffffffu, sq[i], o);
    if (g == 0)
#pragma unroll
      for (int i = 0; i < 2; ++i)
        if (2 * t4 + i < m) fold.sums[int64_t(2 * t4 + i) * fold.sums_stride + blockIdx.x] = sq[i];
    return;
  }
  if (silu_half > 0) {  // elements e and e + 2: gate's and up's column n0 + g
    const int64_t col = n0 + g;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int r = 2 * t4 + e;
      if (r >= m || col >= silu_half) continue;
      const float gate = v[e] + (bias ? bias[col] : 0.0f), up = v[e + 2] + (bias ? bias[silu_half + col] : 0.0f);
      y[int64_t(r) * y_stride + col] = from_f<OutT>(silu_times(to_f(from_f<OutT>(gate)), to_f(from_f<OutT>(up))));
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int r = row_of(e);
    const int64_t col = col_of(e);
    if (r < m && col < w.n) y[int64_t(r) * y_stride + col] = from_f<OutT>(v[e] + (bias ? bias[col] : 0.0f));
  }
}

// KS: warps splitting K, U: chunks in flight per round, OCC: warps per multiprocessor the registers
// must allow.
template <typename T, typename OutT, int BITS, bool FACTOR, bool TILED, int KS, int U, int OCC, Fold FOLD = kFoldNone,
          bool PRELOAD = true>
cudaError_t launch_qmv(const QuantArgs& w, const void* x, int64_t x_stride, int64_t m, const float* bias, void* y,
                       int64_t y_stride, cudaStream_t stream, bool silu, const NormFold& fold) {
  const int half = silu ? int(w.n / 2) : 0;
  if (TILED != (w.tile_rows == 8)) return cudaErrorInvalidValue;
  launch_kernel(qmv_kernel<T, OutT, BITS, FACTOR, TILED, KS, U, OCC, FOLD, PRELOAD>,
                silu ? ceil_div(half, 8) : ceil_div(w.n, 16), KS * 32, 0, stream, w, static_cast<const T*>(x), x_stride,
                int(m), bias, static_cast<OutT*>(y), y_stride, half, fold);
  return cudaGetLastError();
}

template <typename T, typename OutT, int BITS, Fold FOLD = kFoldNone>
cudaError_t launch_qmm(const QuantArgs& w, const void* x, int64_t x_stride, int64_t m, const float* bias, void* y,
                       int64_t y_stride, cudaStream_t stream, bool silu, const NormFold& fold) {
  if (silu && (m > kQuantGemvMaxRows || w.n % 2 != 0)) return cudaErrorInvalidValue;
  if (FOLD != kFoldNone && (m > kQuantGemvMaxRows || (FOLD == kFoldProduce && silu))) return cudaErrorInvalidValue;
  if (m <= kQuantGemvMaxRows) {
    auto qmv = [&](auto launch) { return launch(w, x, x_stride, m, bias, y, y_stride, stream, silu, fold); };
    // FACTOR when every warp chunk (128 k values at 4 bits, 64 at 8) lies inside one group. Where
    // the blocks (16 columns each, also with silu) fit in one wave at two an SM, blocks of 16 warps:
    // twice the codes in flight per column (H100, kernel bench: down 22.1 -> 15.5 us, o 5.7 -> 4.7;
    // qkv's 288 blocks and gate_up's 2,368 run faster with 8). Not without FACTOR: at 64 registers
    // a thread its per-fragment scaling spills. The choice depends on the shape only, not on m.
    constexpr int kChunk = 4 * 128 / BITS;  // k values of a warp's chunk (qmv_kernel's KC)
    const bool factor = w.groups == 1 || w.group_size % kChunk == 0;
    const bool one_wave = ceil_div(w.n, 16) <= 2u * unsigned(device_attribute<cudaDevAttrMultiProcessorCount>());
    // Tiled codes (kernels.h) are the common case (k a multiple of 128 at 4 bits); rows one after
    // another only for smaller layers, and then only the general variant.
    if (w.tile_rows == 8) {
      // One-wave layers whose k is a multiple of 14 warps' chunk pairs (o at k 3,584): 14 warps, each
      // the same number of rounds (4.2 against 4.5 us with 16, two of which had nothing to do).
      // APUS_CUDA_O_NO_PRELOAD=1 (session 23's pending experiment, with APUS_CUDA_EARLY_MERGE=1 in
      // attention.cu): no codes loaded before the wait, so that blocks launched early only sit resident.
      static const bool no_preload = env_switch("APUS_CUDA_O_NO_PRELOAD", false);
      if (BITS == 4 && factor && one_wave && w.k % (14 * kQvGroup * kChunk) == 0)
        return no_preload ? qmv(launch_qmv<T, OutT, BITS, true, true, 14, 2, 28, FOLD, false>)
                          : qmv(launch_qmv<T, OutT, BITS, true, true, 14, 2, 28, FOLD>);
      if (factor && one_wave) return qmv(launch_qmv<T, OutT, BITS, true, true, 16, 2, 32, FOLD>);
      // gate_up + SiLU at 64 registers a thread (4 blocks an SM): 29.0 against 30.0 us (qkv is slower
      // so: 6.5 against 5.7). The same sums as at 24 warps an SM: only the register budget differs.
      if (BITS == 4 && factor && silu) return qmv(launch_qmv<T, OutT, BITS, true, true, 8, 2, 32, FOLD>);
      if (factor) return qmv(launch_qmv<T, OutT, BITS, true, true, 8, 2, 24, FOLD>);
      return qmv(launch_qmv<T, OutT, BITS, false, true, 8, 2, 24, FOLD>);
    }
    if (factor) return qmv(launch_qmv<T, OutT, BITS, true, false, 8, 2, 24, FOLD>);
    return qmv(launch_qmv<T, OutT, BITS, false, false, 8, 2, 24, FOLD>);
  }
  // 32 columns a block (NT 4: each activation load serves twice the weights), one chunk in flight;
  // 9-16 rows one row tile, more two, in slices of 32 rows (neighbouring blocks).
  // Measured on an H100: bench/quant_kernel_bench.cu, bench/RESULTS.md. Every choice sums a row in
  // the same order.
  const dim3 block(kQWarps * 32);
  const T* xt = static_cast<const T*>(x);
  OutT* yt = static_cast<OutT*>(y);
  const int mi = int(m);
  const unsigned cols = unsigned(ceil_div(w.n, 32));
  if (m <= 16) launch_kernel(qmm_kernel<T, OutT, BITS, 1, 1, 4>, cols, block, 0, stream, w, xt, x_stride, mi, bias, yt,
                             y_stride);
  else
    launch_kernel(qmm_kernel<T, OutT, BITS, 2, 1, 4>, cols * unsigned(ceil_div(m, int64_t(32))), block, 0, stream, w, xt,
                  x_stride, mi, bias, yt, y_stride);
  return cudaGetLastError();
}

template <typename T, typename OutT>
cudaError_t launch_qmm_bits(const QuantArgs& w, const void* x, int64_t x_stride, int64_t m, const float* bias, void* y,
                            int64_t y_stride, cudaStream_t stream, bool silu, const NormFold& fold) {
  // Norm folding: its own kernels (BF16 only), so that the others keep their registers.
  if constexpr (std::is_same_v<T, __nv_bfloat16> && std::is_same_v<OutT, T>) {
    if (fold.residual != nullptr)
      return w.bits == 4 ? launch_qmm<T, OutT, 4, kFoldProduce>(w, x, x_stride, m, bias, y, y_stride, stream, silu, fold)
                         : launch_qmm<T, OutT, 8, kFoldProduce>(w, x, x_stride, m, bias, y, y_stride, stream, silu, fold);
    if (fold.sums != nullptr)
      return w.bits == 4 ? launch_qmm<T, OutT, 4, kFoldConsume>(w, x, x_stride, m, bias, y, y_stride, stream, silu, fold)
                         : launch_qmm<T, OutT, 8, kFoldConsume>(w, x, x_stride, m, bias, y, y_stride, stream, silu, fold);
  }
  if (w.bits == 4) return launch_qmm<T, OutT, 4>(w, x, x_stride, m, bias, y, y_stride, stream, silu, fold);
  return launch_qmm<T, OutT, 8>(w, x, x_stride, m, bias, y, y_stride, stream, silu, fold);
}

// One thread per 32-bit word of codes (8 4-bit or 4 8-bit weights), in the layer's column order,
// written with one or two 16-byte stores (rows of k elements are 16-byte aligned: k % 32 == 0).
template <typename T, int BITS>
__global__ void dequantize_kernel(QuantArgs w, T* __restrict__ out, int64_t out_stride) {
  pdl_begin();
  constexpr int kPer = 32 / BITS;
  const int64_t words_per_row = w.k / kPer;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= w.n * words_per_row) return;
  const int64_t row = i / words_per_row, wi = i % words_per_row;
  const ColumnRows<1> cr(w, w.tile_rows, row, 0);
  const uint32_t word = *reinterpret_cast<const uint32_t*>(cr.codes(0, unsigned(wi) * 4));
  const int64_t k0 = wi * kPer;
  const int gi = int(k0 / w.group_size);
  const float s = __half2float(__ushort_as_half(w.scales[row * w.groups + gi]));
  const float z = float(w.zeros[row * w.groups + gi]);
  alignas(16) T v[kPer];
#pragma unroll
  for (int p = 0; p < kPer; ++p) {
    // 4 bits: nibble p holds column 2p (p < 4) or 2(p - 4) + 1 (the load-time repack).
    const float q = BITS == 4 ? float((word >> (4 * p)) & 15u) : float((word >> (8 * p)) & 255u);
    v[BITS == 4 ? (p < 4 ? 2 * p : 2 * (p - 4) + 1) : p] = from_f<T>((q - z) * s);
  }
  uint4* o = reinterpret_cast<uint4*>(out + row * out_stride + k0);
  const uint4* src = reinterpret_cast<const uint4*>(v);
#pragma unroll
  for (int b = 0; b < int(sizeof(v) / 16); ++b) o[b] = src[b];
  if constexpr (sizeof(v) % 16 == 8) *reinterpret_cast<uint2*>(o) = *reinterpret_cast<const uint2*>(v);
}

template <typename T>
__global__ void gather_cols_kernel(const T* __restrict__ x, int64_t x_stride, const int32_t* __restrict__ perm,
                                   int64_t k, T* __restrict__ out, int64_t out_stride) {
  pdl_begin();
  const int64_t r = blockIdx.y;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < k; c += int64_t(gridDim.x) * blockDim.x)
    out[r * out_stride + c] = x[r * x_stride + perm[c]];
}

}  // namespace

cudaError_t quant_matmul(DType dt, DType out_dt, const QuantArgs& w, const void* x, int64_t x_stride, int64_t m,
                         const float* bias, void* y, int64_t y_stride, cudaStream_t stream, bool silu,
                         const NormFold& fold) {
  if (m <= 0 || w.n <= 0) return cudaSuccess;
  if (m > kQuantMmaMaxRows || (w.bits != 4 && w.bits != 8) || w.k % 32 != 0) return cudaErrorInvalidValue;
  if (silu && out_dt != dt) return cudaErrorInvalidValue;
  if ((fold.residual != nullptr || fold.sums != nullptr) && (dt != DType::BF16 || out_dt != dt))
    return cudaErrorInvalidValue;
  if (dt == DType::BF16) {
    if (out_dt == DType::F32)
      return launch_qmm_bits<__nv_bfloat16, float>(w, x, x_stride, m, bias, y, y_stride, stream, silu, fold);
    if (out_dt == DType::BF16)
      return launch_qmm_bits<__nv_bfloat16, __nv_bfloat16>(w, x, x_stride, m, bias, y, y_stride, stream, silu, fold);
  } else if (dt == DType::F16) {
    if (out_dt == DType::F32) return launch_qmm_bits<__half, float>(w, x, x_stride, m, bias, y, y_stride, stream, silu, fold);
    if (out_dt == DType::F16) return launch_qmm_bits<__half, __half>(w, x, x_stride, m, bias, y, y_stride, stream, silu, fold);
  }
  return cudaErrorInvalidValue;
}

cudaError_t quant_dequantize(DType dt, const QuantArgs& w, void* out, int64_t out_stride, cudaStream_t stream) {
  const int64_t words = w.n * w.k * w.bits / 32;
  if (words == 0) return cudaSuccess;
  if (w.bits == 4) {
    APUS_DISPATCH_FLOAT(dt, T, launch_kernel(dequantize_kernel<T, 4>, ceil_div(words, 256), 256, 0, stream, w,
                                             static_cast<T*>(out), out_stride));
  } else {
    APUS_DISPATCH_FLOAT(dt, T, launch_kernel(dequantize_kernel<T, 8>, ceil_div(words, 256), 256, 0, stream, w,
                                             static_cast<T*>(out), out_stride));
  }
  return cudaGetLastError();
}

cudaError_t gather_cols(DType dt, const void* x, int64_t x_stride, const int32_t* perm, int64_t rows, int64_t k,
                        void* out, int64_t out_stride, cudaStream_t stream) {
  if (rows == 0 || k == 0) return cudaSuccess;
  const dim3 grid(ceil_div(k, 256), unsigned(rows));
  APUS_DISPATCH_FLOAT(dt, T,
                      launch_kernel(gather_cols_kernel<T>, grid, 256, 0, stream, static_cast<const T*>(x), x_stride,
                                    perm, k, static_cast<T*>(out), out_stride));
  return cudaGetLastError();
}

}  // namespace apus::cuda
