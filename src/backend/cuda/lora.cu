// Batched LoRA for a flat batch mixing adapters (Punica's BGMV): every token reads its adapter's
// A and B through the slot index in the step's metadata, so one graph serves any mix of adapters.
// Both kernels take a few tokens per block and walk the distinct slots among them (ascending), so
// an adapter's weights are read once per block and slot, not once per token.
//
// Shrink: v[t, p, :] = A_s x[t]. A block per (input slice of 256 words, part, 8 tokens): a thread
// owns one 32-bit word of the input (2 elements, 1 for F32), keeps the `rank` words of A at its
// columns in registers for the current slot, and for each token of that slot reduces its rank
// products over the warp by recursive halving (each step swaps half of the values, so a warp spends
// about `rank` shuffles, not 5 * rank), then over the block through shared memory; slices add their
// partial sums atomically into v, zeroed first (one stream-ordered memset, graph-safe).
// Expand: out[t, off_p + o] += B_s[o] . v[t, p]: a block per (256 output columns, part, 16 tokens),
// v of its tokens staged in shared memory while each thread loads its tokens' slots and outputs; a
// thread owns a column and loads its B rows of up to 4 slots at once (16-byte vectors when
// aligned), then adds to its tokens of those slots.
// Tokens of slot -1 (the base model, padding) are skipped by both.
//
// Where the time goes (decode at batch 32, Qwen2.5-7B shape: 4 LoRA'd linear layers per layer, 112
// per step): not bytes but fixed costs per call: memset, shrink and expand are three dependent
// graph nodes, each a chain of memory round trips. Backend::linear_lora therefore runs memset and
// shrink on a second stream beside the base GEMM (they read only x), leaving the expand alone on
// the critical path (cuda_backend.cpp). Traps met on the way (ptxas -v shows both): LoraArgs'
// arrays indexed by blockIdx.y copied the whole 120-byte struct to every thread's local memory
// (pick() reads them with constant indices), and the expand's reads of vs hoisted out of the slot
// loop held TB * R floats in registers and spilled.
#include <climits>
#include <cstring>
#include <type_traits>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

namespace apus::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kShrinkTokens = 8;   // tokens per shrink block
constexpr int kExpandTokens = 16;  // tokens per expand block

// One 32-bit word of consecutive elements (2 of BF16/F16, 1 of F32); those at or past `valid` read
// as 0. Vec: the word is aligned and whole whenever valid > 0.
template <typename T, bool Vec>
__device__ __forceinline__ uint32_t load_word(const T* p, int64_t valid) {
  constexpr int E = 4 / int(sizeof(T));
  if (valid <= 0) return 0u;
  if constexpr (Vec) {
    return *reinterpret_cast<const uint32_t*>(p);
  } else {
    T e[E];
#pragma unroll
    for (int j = 0; j < E; ++j) e[j] = j < valid ? p[j] : from_f<T>(0.0f);
    uint32_t w;
    memcpy(&w, e, 4);
    return w;
  }
}

template <typename T>
__device__ __forceinline__ void unpack(uint32_t w, float* out) {
  constexpr int E = 4 / int(sizeof(T));
  T e[E];
  memcpy(e, &w, 4);
#pragma unroll
  for (int j = 0; j < E; ++j) out[j] = to_f(e[j]);
}

// 16 bytes of consecutive elements as floats (Vec: aligned), else element by element.
template <typename T, bool Vec>
__device__ __forceinline__ void load16(const T* p, float* out) {
  constexpr int n = 16 / int(sizeof(T));
  if constexpr (Vec) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int j = 0; j < n; ++j) out[j] = to_f(e[j]);
  } else {
#pragma unroll
    for (int j = 0; j < n; ++j) out[j] = to_f(p[j]);
  }
}

constexpr int log2i(int v) { return v <= 1 ? 0 : 1 + log2i(v / 2); }

// Halving steps of the warp reduction of R values per lane, and the values each lane holds after.
template <int R>
constexpr int kSteps = log2i(R) < 5 ? log2i(R) : 5;
template <int R>
constexpr int kLeft = R >> kSteps<R>;

// Sums acc[r] over the warp for every r < R. After the call, acc[j] (j < kLeft<R>) holds the warp's
// total for r = j + kLeft<R> * ((lane >> (5 - kSteps<R>)) & ((1 << kSteps<R>) - 1)), the same in
// the 2^(5 - kSteps<R>) lanes that differ only in their low bits. Step k halves the array: the lane
// with bit (16 >> k) set keeps the upper half and sends the lower one to its partner.
template <int R>
__device__ __forceinline__ void warp_sum_many(float* acc, int lane) {
  constexpr int S = kSteps<R>;
#pragma unroll
  for (int k = 0; k < S; ++k) {
    const int o = 16 >> k;
    const int h = R >> (k + 1);
    const bool upper = (lane & o) != 0;
#pragma unroll
    for (int j = 0; j < h; ++j) {
      const float lo = acc[j], hi = acc[j + h];
      const float send = upper ? lo : hi;
      const float keep = upper ? hi : lo;
      acc[j] = keep + __shfl_xor_sync(0xffffffffu, send, o);
    }
  }
#pragma unroll
  for (int k = S; k < 5; ++k) acc[0] += __shfl_xor_sync(0xffffffffu, acc[0], 16 >> k);
}

// p.a[part] and the like, read from the kernel's parameters with constant indices: an array of
// the parameters indexed with a run-time value makes the compiler copy the whole LoraArgs into
// every thread's local memory first (a 120-byte stack frame, written and read by every thread).
template <typename V>
__device__ __forceinline__ V pick(const V (&v)[kLoraMaxParts], int part) {
  static_assert(kLoraMaxParts == 3, "one branch per part");
  return part == 0 ? v[0] : part == 1 ? v[1] : v[2];
}

// The smallest slot above `prev` among a block's tokens (-1: none), INT_MAX when there is none.
template <int TB>
__device__ __forceinline__ int next_slot(const int* sl, int prev) {
  int cur = INT_MAX;
#pragma unroll
  for (int k = 0; k < TB; ++k)
    if (sl[k] > prev && sl[k] < cur) cur = sl[k];
  return cur;
}

template <typename T, int R, bool Vec>
__global__ void __launch_bounds__(kThreads)
    lora_shrink_kernel(const T* x, int64_t x_stride, int64_t tokens, const int32_t* slots, LoraArgs p, bool atomic,
                       float* v) {
  pdl_begin();
  constexpr int E = 4 / int(sizeof(T)), TB = kShrinkTokens, S = kSteps<R>, L = kLeft<R>;
  const int part = blockIdx.y;
  const int64_t t0 = int64_t(blockIdx.z) * TB;
  const int64_t i = (int64_t(blockIdx.x) * kThreads + threadIdx.x) * E;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __shared__ float red[TB][kWarps][R];
  int sl[TB];
  uint32_t xw[TB];
#pragma unroll
  for (int k = 0; k < TB; ++k) {
    const int64_t t = t0 + k;
    const int s = t < tokens ? slots[t] : -1;
    sl[k] = s >= 0 && s < p.num_slots ? s : -1;
    xw[k] = sl[k] >= 0 ? load_word<T, Vec>(x + t * x_stride + i, p.in - i) : 0u;
  }
  const T* a = static_cast<const T*>(pick(p.a, part));
  for (int cur = next_slot<TB>(sl, -1); cur != INT_MAX; cur = next_slot<TB>(sl, cur)) {  // uniform
    const T* as = a + int64_t(cur) * R * p.in + i;
    uint32_t aw[R];
#pragma unroll
    for (int r = 0; r < R; ++r) aw[r] = load_word<T, Vec>(as + int64_t(r) * p.in, p.in - i);
#pragma unroll
    for (int k = 0; k < TB; ++k) {
      if (sl[k] != cur) continue;
      float xv[E];
      unpack<T>(xw[k], xv);
      float acc[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float av[E];
        unpack<T>(aw[r], av);
        acc[r] = 0.0f;
#pragma unroll
        for (int j = 0; j < E; ++j) acc[r] += xv[j] * av[j];
      }
      warp_sum_many<R>(acc, lane);
      if ((lane & ((1 << (5 - S)) - 1)) == 0) {
        const int r0 = L * ((lane >> (5 - S)) & ((1 << S) - 1));
#pragma unroll
        for (int j = 0; j < L; ++j) red[k][warp][r0 + j] = acc[j];
      }
    }
  }
  __syncthreads();
  for (int o = threadIdx.x; o < TB * R; o += kThreads) {
    const int k = o / R, r = o % R;
    const int64_t t = t0 + k;
    if (t >= tokens) break;
    const int s = slots[t];
    if (s < 0 || s >= p.num_slots) continue;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += red[k][w][r];
    float* dst = v + (t * kLoraMaxParts + part) * R + r;
    if (atomic) atomicAdd(dst, sum);
    else *dst = sum;
  }
}

template <typename T, int R, bool Vec>
__global__ void __launch_bounds__(kThreads) lora_expand_kernel(int64_t tokens, const int32_t* slots, LoraArgs p,
                                                               const float* v, T* out, int64_t out_stride) {
  pdl_begin();
  constexpr int N = 16 / int(sizeof(T)), TB = kExpandTokens;
  static_assert(R % N == 0, "whole 16-byte vectors per row of B");
  const int part = blockIdx.y;
  const int64_t n = pick(p.n, part);
  if (int64_t(blockIdx.x) * kThreads >= n) return;  // the whole block: parts narrower than the widest
  const int64_t t0 = int64_t(blockIdx.z) * TB;
  const int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const bool col = c < n;
  // The tokens' slots (the same words for every thread) and outputs are loaded while v is staged.
  T* dst = out + pick(p.offset, part) + c;
  int sl[TB];
  float ov[TB];
#pragma unroll
  for (int k = 0; k < TB; ++k) {
    const int64_t t = t0 + k;
    const int s = t < tokens ? slots[t] : -1;
    sl[k] = s >= 0 && s < p.num_slots ? s : -1;
    ov[k] = col && t < tokens ? to_f(dst[t * out_stride]) : 0.0f;
  }
  __shared__ __align__(16) float vs[TB][R];
  for (int o = threadIdx.x; o < TB * R; o += kThreads) {
    const int64_t t = t0 + o / R;
    vs[o / R][o % R] = t < tokens ? v[(t * kLoraMaxParts + part) * R + o % R] : 0.0f;
  }
  __syncthreads();
  if (!col) return;
  // G slots at a time (the block's tokens may use several adapters): their rows of B load at once,
  // then their tokens are summed.
  constexpr int G = R <= 16 ? 4 : R <= 32 ? 2 : 1;
  const T* b = static_cast<const T*>(pick(p.b, part)) + c * R;
  for (int cur = next_slot<TB>(sl, -1); cur != INT_MAX;) {
    int cs[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      cs[g] = cur;
      if (cur != INT_MAX) cur = next_slot<TB>(sl, cur);
    }
    // Keeps the reads of vs inside the loop: hoisted out of it, TB * R of them held in registers
    // spilled to local memory (R >= 16).
    asm volatile("" ::: "memory");
    float bv[G][R];
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int r = 0; r < R; r += N)
        if (cs[g] != INT_MAX) load16<T, Vec>(b + int64_t(cs[g]) * n * R + r, bv[g] + r);
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int k = 0; k < TB; ++k) {
        if (sl[k] != cs[g] || cs[g] == INT_MAX) continue;
        const float4* vk = reinterpret_cast<const float4*>(vs[k]);
        float acc = 0.0f;
#pragma unroll
        for (int r = 0; r < R; r += 4) {
          const float4 w = vk[r / 4];
          acc += w.x * bv[g][r] + w.y * bv[g][r + 1] + w.z * bv[g][r + 2] + w.w * bv[g][r + 3];
        }
        ov[k] += acc;
      }
  }
#pragma unroll
  for (int k = 0; k < TB; ++k)
    if (sl[k] >= 0) dst[(t0 + k) * out_stride] = from_f<T>(ov[k]);
}

// Whether x, A and B allow whole-word (x, A) and 16-byte (B) loads.
inline bool words_ok(const void* x, int64_t x_stride, const LoraArgs& p, int e) {
  bool ok = p.in % e == 0 && x_stride % e == 0 && reinterpret_cast<uintptr_t>(x) % 4 == 0;
  for (int i = 0; i < p.count; ++i) ok = ok && reinterpret_cast<uintptr_t>(p.a[i]) % 4 == 0;
  return ok;
}

template <typename T, int R>
cudaError_t launch_shrink(const T* x, int64_t x_stride, int64_t tokens, const int32_t* slots, const LoraArgs& p,
                          float* scratch, cudaStream_t stream) {
  constexpr int E = 4 / int(sizeof(T));
  const int64_t slices = (p.in + int64_t(kThreads) * E - 1) / (int64_t(kThreads) * E);
  if (slices > 1) {
    const cudaError_t e = cudaMemsetAsync(scratch, 0, size_t(tokens) * kLoraMaxParts * R * sizeof(float), stream);
    if (e != cudaSuccess) return e;
  }
  const dim3 grid(unsigned(slices), unsigned(p.count), unsigned((tokens + kShrinkTokens - 1) / kShrinkTokens));
  if (words_ok(x, x_stride, p, E))
    launch_kernel(lora_shrink_kernel<T, R, true>, grid, kThreads, 0, stream, x, x_stride, tokens, slots, p,
                  slices > 1, scratch);
  else
    launch_kernel(lora_shrink_kernel<T, R, false>, grid, kThreads, 0, stream, x, x_stride, tokens, slots, p,
                  slices > 1, scratch);
  return cudaGetLastError();
}

template <typename T, int R>
cudaError_t launch_expand(int64_t tokens, const int32_t* slots, const LoraArgs& p, const float* scratch, T* out,
                          int64_t out_stride, cudaStream_t stream) {
  bool vec_b = true;
  int64_t max_n = 0;
  for (int i = 0; i < p.count; ++i) {
    vec_b = vec_b && reinterpret_cast<uintptr_t>(p.b[i]) % 16 == 0;
    max_n = std::max(max_n, p.n[i]);
  }
  const dim3 grid(unsigned((max_n + kThreads - 1) / kThreads), unsigned(p.count),
                  unsigned((tokens + kExpandTokens - 1) / kExpandTokens));
  if (vec_b) launch_kernel(lora_expand_kernel<T, R, true>, grid, kThreads, 0, stream, tokens, slots, p, scratch, out,
                           out_stride);
  else launch_kernel(lora_expand_kernel<T, R, false>, grid, kThreads, 0, stream, tokens, slots, p, scratch, out,
                     out_stride);
  return cudaGetLastError();
}

// Calls f(std::integral_constant<int, R>) for the slots' rank R (8, 16, 32 or 64).
template <typename F>
cudaError_t with_rank(int rank, F&& f) {
  switch (rank) {
    case 8: return f(std::integral_constant<int, 8>());
    case 16: return f(std::integral_constant<int, 16>());
    case 32: return f(std::integral_constant<int, 32>());
    case 64: return f(std::integral_constant<int, 64>());
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t lora_shrink(DType dt, const void* x, int64_t x_stride, int64_t tokens, const int32_t* slots,
                        const LoraArgs& p, float* scratch, cudaStream_t stream) {
  if (tokens == 0 || p.count == 0) return cudaSuccess;
  APUS_DISPATCH_FLOAT(dt, T, {
    return with_rank(p.rank, [&](auto r) {
      return launch_shrink<T, decltype(r)::value>(static_cast<const T*>(x), x_stride, tokens, slots, p, scratch,
                                                  stream);
    });
  });
  return cudaSuccess;
}

cudaError_t lora_expand(DType dt, int64_t tokens, const int32_t* slots, const LoraArgs& p, const float* scratch,
                        void* out, int64_t out_stride, cudaStream_t stream) {
  if (tokens == 0 || p.count == 0) return cudaSuccess;
  APUS_DISPATCH_FLOAT(dt, T, {
    return with_rank(p.rank, [&](auto r) {
      return launch_expand<T, decltype(r)::value>(tokens, slots, p, scratch, static_cast<T*>(out), out_stride,
                                                  stream);
    });
  });
  return cudaSuccess;
}

cudaError_t lora(DType dt, const void* x, int64_t x_stride, int64_t tokens, const int32_t* slots, const LoraArgs& p,
                 float* scratch, void* out, int64_t out_stride, cudaStream_t stream) {
  const cudaError_t e = lora_shrink(dt, x, x_stride, tokens, slots, p, scratch, stream);
  return e != cudaSuccess ? e : lora_expand(dt, tokens, slots, p, scratch, out, out_stride, stream);
}

}  // namespace apus::cuda
