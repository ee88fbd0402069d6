// Drawing tokens from rows of logits on the GPU, one thread block per row, so that only token ids
// come back to the host. The rules are sample/sampler.h's: greedy is the first maximum; otherwise
// the weights exp((l - max) / T) of the top-k set, min-p dropping weights below min_p (after the
// total is taken, as on the host), then the smallest most-likely-first prefix whose mass reaches
// top_p of that total. Ties at a top-k or top-p boundary are taken lowest id first, as the host
// does. The draw then walks the surviving tokens in id order (the host walks them most likely
// first), so a seeded draw is reproducible on the GPU and has the host's distribution, but it is
// not the host's token.
//
// The boundaries are found by radix selection over order-preserving 32-bit keys of the logits
// (4 passes of 8-bit digit histograms, counts for top-k, weight mass for top-p); ranks among tied
// tokens and the draw itself are block-wide prefix sums over the row in id order.
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <climits>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

namespace apus::cuda {

namespace {

constexpr int kThreads = 512;
constexpr int kItems = 8;  // consecutive elements per thread in an id-ordered tile
constexpr int kTile = kThreads * kItems;

// Larger float, larger key (negative values flip all bits, positive ones only the sign).
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

using IntScan = cub::BlockScan<int, kThreads>;
using FloatScan = cub::BlockScan<float, kThreads>;

struct Shared {
  union {
    typename IntScan::TempStorage int_scan;
    typename FloatScan::TempStorage float_scan;
  } scan;
  union {
    unsigned count[256];
    float mass[256];
  } hist;
  float red_val[kThreads / 32];
  int red_idx[kThreads / 32];
  uint32_t prefix;
  int remaining_count;
  float remaining_mass, mass_above;
  int pick, last;
};

// The first maximum of the row (value and index), in every thread. One block reads the whole row,
// so its loads are issued several at a time (16-byte loads where the row is aligned) rather than
// one memory latency per element.
__device__ void block_argmax(const float* x, int64_t n, Shared& sh, float* max_out, int* idx_out) {
  float best = -INFINITY;
  int idx = INT_MAX;
  auto take = [&](float v, int64_t i) {
    if (v > best || (v == best && int(i) < idx)) best = v, idx = int(i);
  };
  int64_t tail = 0;
  if ((reinterpret_cast<uintptr_t>(x) & 15u) == 0) {
    constexpr int kUnroll = 4;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const int64_t n4 = n / 4;
    for (int64_t b = threadIdx.x; b < n4; b += int64_t(kThreads) * kUnroll) {
      float4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = b + int64_t(u) * kThreads;
        if (j < n4) v[u] = x4[j];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = b + int64_t(u) * kThreads;
        if (j >= n4) break;
        take(v[u].x, 4 * j), take(v[u].y, 4 * j + 1), take(v[u].z, 4 * j + 2), take(v[u].w, 4 * j + 3);
      }
    }
    tail = 4 * n4;
  }
  for (int64_t i = tail + threadIdx.x; i < n; i += kThreads) take(x[i], i);
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (ov > best || (ov == best && oi < idx)) best = ov, idx = oi;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) sh.red_val[warp] = best, sh.red_idx[warp] = idx;
  __syncthreads();
  best = sh.red_val[0], idx = sh.red_idx[0];
  for (int w = 1; w < kThreads / 32; ++w)
    if (sh.red_val[w] > best || (sh.red_val[w] == best && sh.red_idx[w] < idx)) best = sh.red_val[w], idx = sh.red_idx[w];
  // An all-NaN or all -inf row: token 0 rather than an out-of-range id.
  *max_out = best;
  *idx_out = idx == INT_MAX ? 0 : idx;
}

// The key of the k-th largest logit, and how many of the tokens with that key belong to the top k.
__device__ void kth_largest(const float* x, int64_t n, int k, Shared& sh, uint32_t* key, int* ties_in) {
  uint32_t prefix = 0, mask = 0;
  int remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) sh.hist.count[b] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const uint32_t kk = order_key(x[i]);
      if ((kk & mask) == prefix) atomicAdd(&sh.hist.count[(kk >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int above = 0, b = 255;
      for (; b > 0; --b) {
        if (above + int(sh.hist.count[b]) >= remaining) break;
        above += int(sh.hist.count[b]);
      }
      sh.prefix = prefix | (uint32_t(b) << shift);
      sh.remaining_count = remaining - above;
    }
    __syncthreads();
    prefix = sh.prefix;
    remaining = sh.remaining_count;
    mask |= 255u << shift;
  }
  *key = prefix;
  *ties_in = remaining;
}

// Among tokens of weight > 0: the key t where mass(key > t) < target <= mass(key >= t), and the
// mass still wanted from the tokens with key t (all of the same weight). If rounding leaves the
// target out of reach, every token stays.
__device__ void mass_boundary(const float* x, const float* w, int64_t n, float target, Shared& sh, uint32_t* key,
                              float* wanted) {
  uint32_t prefix = 0, mask = 0;
  float remaining = target;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) sh.hist.mass[b] = 0.0f;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      if (!(w[i] > 0.0f)) continue;
      const uint32_t kk = order_key(x[i]);
      if ((kk & mask) == prefix) atomicAdd(&sh.hist.mass[(kk >> shift) & 255u], w[i]);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float above = 0.0f;
      int b = 255, lowest = -1;
      for (int c = 255; c >= 0; --c)
        if (sh.hist.mass[c] > 0.0f) lowest = c;
      for (; b >= 0; --b) {
        if (sh.hist.mass[b] > 0.0f && above + sh.hist.mass[b] >= remaining) break;
        if (b == lowest) break;  // out of reach: the lowest bin, with everything above it
        above += sh.hist.mass[b];
      }
      if (b < 0) b = 0;
      sh.prefix = prefix | (uint32_t(b) << shift);
      sh.remaining_mass = remaining - above;
    }
    __syncthreads();
    prefix = sh.prefix;
    remaining = sh.remaining_mass;
    mask |= 255u << shift;
  }
  *key = prefix;
  *wanted = remaining;
}

// Keeps the tokens of weight > 0 whose key is above `key`, and the first `ties` (lowest ids) of
// those equal to it; zeroes the others in w. Returns the kept mass (every thread).
__device__ float keep_above(const float* x, float* w, int64_t n, uint32_t key, int ties, Shared& sh) {
  int carry = 0;
  float kept = 0.0f;
  for (int64_t base = 0; base < n; base += kTile) {
    const int64_t i0 = base + int64_t(threadIdx.x) * kItems;
    int mine = 0;
    for (int j = 0; j < kItems; ++j)
      if (i0 + j < n && w[i0 + j] > 0.0f && order_key(x[i0 + j]) == key) ++mine;
    int rank = 0, tile_ties = 0;
    IntScan(sh.scan.int_scan).ExclusiveSum(mine, rank, tile_ties);
    rank += carry;
    for (int j = 0; j < kItems; ++j) {
      const int64_t i = i0 + j;
      if (i >= n || !(w[i] > 0.0f)) continue;
      const uint32_t kk = order_key(x[i]);
      const bool keep = kk > key || (kk == key && rank++ < ties);
      if (keep) kept += w[i];
      else w[i] = 0.0f;
    }
    carry += tile_ties;
    __syncthreads();  // the scan's storage is reused by the next tile
  }
  return block_sum(kept);
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* logits, int64_t stride, int64_t vocab,
                                                           const SampleArgs* args, float* scratch, int32_t* out) {
  pdl_begin();
  __shared__ Shared sh;
  const SampleArgs a = args[blockIdx.x];
  const float* x = logits + int64_t(a.row) * stride;
  float mx;
  int best;
  block_argmax(x, vocab, sh, &mx, &best);
  if (a.temperature <= 0.0f || a.top_k == 1 || !(mx > -INFINITY)) {
    if (threadIdx.x == 0) out[blockIdx.x] = best;
    return;
  }
  float* w = scratch + int64_t(blockIdx.x) * vocab;
  const float inv_t = 1.0f / a.temperature;

  // Weights of the top-k set; min-p zeroes small ones after the total is taken.
  const bool use_k = a.top_k > 0 && a.top_k < vocab;
  uint32_t k_key = 0;
  int k_ties = 0;
  if (use_k) kth_largest(x, vocab, a.top_k, sh, &k_key, &k_ties);
  int carry = 0;
  float total = 0.0f, kept = 0.0f;
  for (int64_t base = 0; base < vocab; base += kTile) {
    const int64_t i0 = base + int64_t(threadIdx.x) * kItems;
    int mine = 0;
    if (use_k)
      for (int j = 0; j < kItems; ++j)
        if (i0 + j < vocab && order_key(x[i0 + j]) == k_key) ++mine;
    int rank = 0, tile_ties = 0;
    IntScan(sh.scan.int_scan).ExclusiveSum(mine, rank, tile_ties);
    rank += carry;
    for (int j = 0; j < kItems; ++j) {
      const int64_t i = i0 + j;
      if (i >= vocab) break;
      const float l = x[i];
      bool in = true;
      if (use_k) {
        const uint32_t kk = order_key(l);
        in = kk > k_key || (kk == k_key && rank++ < k_ties);
      }
      float wi = in ? expf((l - mx) * inv_t) : 0.0f;
      total += wi;
      if (wi < a.min_p && i != best) wi = 0.0f;
      kept += wi;
      w[i] = wi;
    }
    carry += tile_ties;
    __syncthreads();
  }
  total = block_sum(total);
  kept = block_sum(kept);

  if (a.top_p < 1.0f) {
    uint32_t p_key = 0;
    float wanted = 0.0f;
    mass_boundary(x, w, vocab, a.top_p * total, sh, &p_key, &wanted);
    const float wt = expf((key_value(p_key) - mx) * inv_t);
    const float q = wt > 0.0f ? ceilf(wanted / wt) : 2e9f;  // tied tokens wanted (all of them if out of reach)
    const int ties = q >= 2e9f ? INT_MAX : max(1, int(q));
    kept = keep_above(x, w, vocab, p_key, ties, sh);
  }

  // The draw: the first token (in id order) where the running mass passes u * kept.
  const float target = a.u * kept;
  if (threadIdx.x == 0) sh.pick = INT_MAX, sh.last = best;
  __syncthreads();
  float run = 0.0f;
  int last = -1;
  for (int64_t base = 0; base < vocab; base += kTile) {
    const int64_t i0 = base + int64_t(threadIdx.x) * kItems;
    float mine = 0.0f;
    for (int j = 0; j < kItems; ++j)
      if (i0 + j < vocab) {
        mine += w[i0 + j];
        if (w[i0 + j] > 0.0f) last = int(i0 + j);
      }
    float before = 0.0f, tile_mass = 0.0f;
    FloatScan(sh.scan.float_scan).ExclusiveSum(mine, before, tile_mass);
    float acc = run + before;
    if (acc + mine > target && acc <= target) {
      for (int j = 0; j < kItems && i0 + j < vocab; ++j) {
        acc += w[i0 + j];
        if (w[i0 + j] > 0.0f && acc > target) {
          atomicMin(&sh.pick, int(i0 + j));
          break;
        }
      }
    }
    run += tile_mass;
    __syncthreads();
    if (sh.pick != INT_MAX) break;
  }
  if (last >= 0) atomicMax(&sh.last, last);
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = sh.pick != INT_MAX ? sh.pick : sh.last;
}

// Backend::argmax_rows: a block per row.
__global__ void __launch_bounds__(kThreads) argmax_rows_kernel(const float* x, int64_t stride, int64_t n,
                                                               int64_t offset, float* out) {
  pdl_begin();
  __shared__ Shared sh;
  float mx;
  int best;
  block_argmax(x + int64_t(blockIdx.x) * stride, n, sh, &mx, &best);
  if (threadIdx.x == 0) {
    out[2 * int64_t(blockIdx.x)] = mx;
    out[2 * int64_t(blockIdx.x) + 1] = float(best + offset);
  }
}

// Greedy rows, `gridDim.x` blocks a row: each block's slice of the row (slices of `slice` columns,
// the last shorter) to its first maximum and its column, out [rows, 2 * slices] as argmax_rows
// writes them; pick_greedy's first largest of those is the row's first maximum (a slice with no
// value above -inf offers its first column at -inf, which only an all -inf or NaN row picks: column 0,
// as block_argmax gives).
__global__ void __launch_bounds__(kThreads) argmax_slices_kernel(const float* logits, int64_t stride, int64_t vocab,
                                                                 const SampleArgs* args, int64_t slice, float* out) {
  pdl_begin();
  __shared__ Shared sh;
  const int64_t lo = int64_t(blockIdx.x) * slice;
  float mx;
  int best;
  block_argmax(logits + int64_t(args[blockIdx.y].row) * stride + lo, min(slice, vocab - lo), sh, &mx, &best);
  if (threadIdx.x == 0) {
    float* o = out + 2 * (int64_t(blockIdx.y) * gridDim.x + blockIdx.x);
    o[0] = mx;
    o[1] = float(best + lo);
  }
}

// Backend::pick_greedy: a thread per row, greedy_token's rule (sample/sampler.cpp).
__global__ void pick_greedy_kernel(const float* c, int64_t rows, int ranks, int32_t* out) {
  pdl_begin();
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const float* row = c + r * 2 * ranks;
  int q = 0;
  for (int p = 1; p < ranks; ++p)
    if (row[2 * p] > row[2 * q]) q = p;
  out[r] = int32_t(row[2 * q + 1]);
}

}  // namespace

cudaError_t pick_greedy(const float* candidates, int64_t rows, int ranks, int32_t* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  launch_kernel(pick_greedy_kernel, unsigned((rows + 127) / 128), 128, 0, stream, candidates, rows, ranks, out);
  return cudaGetLastError();
}

cudaError_t argmax_rows(const float* x, int64_t stride, int64_t rows, int64_t n, int64_t offset, float* out,
                        cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  launch_kernel(argmax_rows_kernel, unsigned(rows), kThreads, 0, stream, x, stride, n, offset, out);
  return cudaGetLastError();
}

int greedy_slices(int64_t vocab, int rows, int multiprocessors) {
  const int64_t want = (2 * int64_t(multiprocessors) + rows - 1) / rows;  // about two blocks an SM
  return int(std::clamp<int64_t>(std::min(want, (vocab + kGreedySlice - 1) / kGreedySlice), 1, 1024));
}

cudaError_t greedy(const float* logits, int64_t stride, int64_t vocab, const SampleArgs* args, int rows, int slices,
                   float* candidates, int32_t* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  // 16-byte aligned slices (a multiple of 4 columns), none of them empty.
  const int64_t slice = ((vocab + slices - 1) / slices + 3) / 4 * 4;
  const int used = int((vocab + slice - 1) / slice);
  launch_kernel(argmax_slices_kernel, dim3(unsigned(used), unsigned(rows)), kThreads, 0, stream, logits, stride, vocab,
                args, slice, candidates);
  launch_kernel(pick_greedy_kernel, unsigned((rows + 127) / 128), 128, 0, stream, candidates, int64_t(rows), used, out);
  return cudaGetLastError();
}

cudaError_t sample(const float* logits, int64_t stride, int64_t vocab, const SampleArgs* args, int rows,
                   float* scratch, int32_t* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  launch_kernel(sample_kernel, rows, kThreads, 0, stream, logits, stride, vocab, args, scratch, out);
  return cudaGetLastError();
}

}  // namespace apus::cuda
