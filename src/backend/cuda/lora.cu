// Batched LoRA for a flat batch mixing adapters (Punica's BGMV): every token reads its adapter's
// A and B through the slot index in the step's metadata, so one graph serves any mix of adapters.
//
// Shrink: v[t, p, :] = A_s x[t]. A block per (token, part, slice of the input): each thread reads
// 16-byte vectors of x once and multiplies them into all `rank` rows of A (rank accumulators in
// registers), then the block reduces; slices (enough blocks to fill the GPU when few tokens run)
// add their partial sums atomically into v, zeroed first. Expand: out[t, off_p + o] += B_s[o] .
// v[t, p]: a thread per output column, B's row read as 16-byte vectors, v in shared memory.
// Tokens of slot -1 (the base model, padding) return at once.
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

namespace apus::cuda {

namespace {

constexpr int kThreads = 256;

// 16 bytes of consecutive elements as floats; without Vec (unaligned or ragged rows) element by
// element, those at or past `valid` read as 0.
template <typename T, bool Vec>
__device__ __forceinline__ void load(const T* p, float* out, int64_t valid = 16) {
  constexpr int n = 16 / int(sizeof(T));
  if constexpr (Vec) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int j = 0; j < n; ++j) out[j] = to_f(e[j]);
  } else {
#pragma unroll
    for (int j = 0; j < n; ++j) out[j] = j < valid ? to_f(p[j]) : 0.0f;
  }
}

template <typename T, int R, bool Vec>
__global__ void __launch_bounds__(kThreads) lora_shrink_kernel(const T* x, int64_t x_stride, const int32_t* slots,
                                                               LoraArgs p, int64_t chunk, bool atomic, float* v) {
  constexpr int N = 16 / int(sizeof(T));
  const int64_t t = blockIdx.x;
  const int part = blockIdx.y;
  const int s = slots[t];
  if (s < 0 || s >= p.num_slots) return;
  const int64_t begin = int64_t(blockIdx.z) * chunk, end = min(p.in, begin + chunk);
  const T* xr = x + t * x_stride;
  const T* a = static_cast<const T*>(p.a[part]) + int64_t(s) * R * p.in;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;
  for (int64_t i = begin + int64_t(threadIdx.x) * N; i < end; i += int64_t(kThreads) * N) {
    float xv[N];
    load<T, Vec>(xr + i, xv, end - i);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float av[N];
      load<T, Vec>(a + int64_t(r) * p.in + i, av, end - i);
#pragma unroll
      for (int j = 0; j < N; ++j) acc[r] += xv[j] * av[j];
    }
  }
  __shared__ float red[kThreads / 32][R];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float w = warp_sum(acc[r]);
    if (lane == 0) red[warp][r] = w;
  }
  __syncthreads();
  if (threadIdx.x < R) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) sum += red[w][threadIdx.x];
    float* dst = v + (t * kLoraMaxParts + part) * R + threadIdx.x;
    if (atomic) atomicAdd(dst, sum);
    else *dst = sum;
  }
}

template <typename T, int R, bool Vec>
__global__ void __launch_bounds__(kThreads) lora_expand_kernel(const int32_t* slots, LoraArgs p, const float* v, T* out,
                                                               int64_t out_stride) {
  constexpr int N = 16 / int(sizeof(T));
  static_assert(R % N == 0 || !Vec, "vector loads need whole vectors per row");
  const int64_t t = blockIdx.x;
  const int part = blockIdx.y;
  const int s = slots[t];
  if (s < 0 || s >= p.num_slots) return;
  __shared__ float vs[R];
  if (threadIdx.x < R) vs[threadIdx.x] = v[(t * kLoraMaxParts + part) * R + threadIdx.x];
  __syncthreads();
  const int64_t n = p.n[part];
  const T* b = static_cast<const T*>(p.b[part]) + int64_t(s) * n * R;
  T* o = out + t * out_stride + p.offset[part];
  for (int64_t c = int64_t(blockIdx.z) * kThreads + threadIdx.x; c < n; c += int64_t(gridDim.z) * kThreads) {
    const T* br = b + c * R;
    float acc = 0.0f;
    if constexpr (Vec) {
#pragma unroll
      for (int r = 0; r < R; r += N) {
        float bv[N];
        load<T, true>(br + r, bv);
#pragma unroll
        for (int j = 0; j < N; ++j) acc += vs[r + j] * bv[j];
      }
    } else {
#pragma unroll
      for (int r = 0; r < R; ++r) acc += vs[r] * to_f(br[r]);
    }
    o[c] = from_f<T>(to_f(o[c]) + acc);
  }
}

template <typename T, int R>
cudaError_t launch(const T* x, int64_t x_stride, int64_t tokens, const int32_t* slots, const LoraArgs& p, float* scratch,
                   T* out, int64_t out_stride, int multiprocessors, cudaStream_t stream) {
  constexpr int N = 16 / int(sizeof(T));
  const bool vec = p.in % N == 0 && x_stride % N == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  bool vec_b = R % N == 0;
  for (int i = 0; i < p.count; ++i) {
    vec_b = vec_b && reinterpret_cast<uintptr_t>(p.b[i]) % 16 == 0;
    if (vec) {
      if (reinterpret_cast<uintptr_t>(p.a[i]) % 16 != 0) return cudaErrorMisalignedAddress;  // never: cudaMalloc'd
    }
  }
  // Slices of the input: about two blocks per multiprocessor, whole vectors per thread per slice.
  const int64_t blocks = tokens * p.count;
  int64_t splits = std::max<int64_t>(1, (2 * int64_t(multiprocessors) + blocks - 1) / blocks);
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, p.in / (int64_t(kThreads) * N)));
  int64_t chunk = (p.in + splits - 1) / splits;
  chunk = (chunk + N - 1) / N * N;
  splits = (p.in + chunk - 1) / chunk;
  if (splits > 1) {
    const cudaError_t e = cudaMemsetAsync(scratch, 0, size_t(tokens) * kLoraMaxParts * R * sizeof(float), stream);
    if (e != cudaSuccess) return e;
  }
  const dim3 grid_s(unsigned(tokens), unsigned(p.count), unsigned(splits));
  if (vec) lora_shrink_kernel<T, R, true><<<grid_s, kThreads, 0, stream>>>(x, x_stride, slots, p, chunk, splits > 1, scratch);
  else lora_shrink_kernel<T, R, false><<<grid_s, kThreads, 0, stream>>>(x, x_stride, slots, p, chunk, splits > 1, scratch);
  int64_t max_n = 0;
  for (int i = 0; i < p.count; ++i) max_n = std::max(max_n, p.n[i]);
  const dim3 grid_e(unsigned(tokens), unsigned(p.count), std::min(ceil_div(max_n, kThreads), 16u));
  if (vec_b) lora_expand_kernel<T, R, true><<<grid_e, kThreads, 0, stream>>>(slots, p, scratch, out, out_stride);
  else lora_expand_kernel<T, R, false><<<grid_e, kThreads, 0, stream>>>(slots, p, scratch, out, out_stride);
  return cudaGetLastError();
}

}  // namespace

cudaError_t lora(DType dt, const void* x, int64_t x_stride, int64_t tokens, const int32_t* slots, const LoraArgs& p,
                 float* scratch, void* out, int64_t out_stride, int multiprocessors, cudaStream_t stream) {
  if (tokens == 0 || p.count == 0) return cudaSuccess;
  APUS_DISPATCH_FLOAT(dt, T, {
    const T* xt = static_cast<const T*>(x);
    T* ot = static_cast<T*>(out);
    switch (p.rank) {
      case 8: return launch<T, 8>(xt, x_stride, tokens, slots, p, scratch, ot, out_stride, multiprocessors, stream);
      case 16: return launch<T, 16>(xt, x_stride, tokens, slots, p, scratch, ot, out_stride, multiprocessors, stream);
      case 32: return launch<T, 32>(xt, x_stride, tokens, slots, p, scratch, ot, out_stride, multiprocessors, stream);
      case 64: return launch<T, 64>(xt, x_stride, tokens, slots, p, scratch, ot, out_stride, multiprocessors, stream);
      default: return cudaErrorInvalidValue;
    }
  });
  return cudaSuccess;
}

}  // namespace apus::cuda
