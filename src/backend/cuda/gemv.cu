// Skinny GEMM for decode: Y[M, N] = X[M, K] W[N, K]^T (+ bias) for M <= 8 rows, float32
// accumulation. Decode is a pass over the weights: each warp streams one weight row with 16-byte
// loads (evict-first, so the few rows of X stay in L1/L2), four loads per lane in flight, and
// multiplies it by all M input rows at once, so the weights are read once whatever M is.
//
// Each output element is computed the same way whatever M (one lane per 16-byte column chunk, the
// same order of additions, the same warp reduction), so a row's result does not depend on how many
// rows ride along with it (batch invariance, and padded CUDA-graph batches equal the eager ones).
// Rounded once to the output dtype after the bias (as a GEMM with a fused bias epilogue does).
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

namespace apus::cuda {

namespace {

constexpr int kWarps = 8;   // one output column (weight row) per warp
constexpr int kUnroll = 4;  // 16-byte weight loads per lane in flight (8 measured no faster)

// sum over the 16-byte chunk of w[j] * x[j], added to acc.
__device__ __forceinline__ float dot16(const uint4& w, const uint4& x, float acc, const __nv_bfloat16*) {
  const uint32_t* a = reinterpret_cast<const uint32_t*>(&w);
  const uint32_t* b = reinterpret_cast<const uint32_t*>(&x);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    acc = fmaf(__uint_as_float(a[j] << 16), __uint_as_float(b[j] << 16), acc);
    acc = fmaf(__uint_as_float(a[j] & 0xffff0000u), __uint_as_float(b[j] & 0xffff0000u), acc);
  }
  return acc;
}
__device__ __forceinline__ float dot16(const uint4& w, const uint4& x, float acc, const __half*) {
  const __half2* a = reinterpret_cast<const __half2*>(&w);
  const __half2* b = reinterpret_cast<const __half2*>(&x);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 fa = __half22float2(a[j]), fb = __half22float2(b[j]);
    acc = fmaf(fa.x, fb.x, acc);
    acc = fmaf(fa.y, fb.y, acc);
  }
  return acc;
}
__device__ __forceinline__ float dot16(const uint4& w, const uint4& x, float acc, const float*) {
  acc = fmaf(__uint_as_float(w.x), __uint_as_float(x.x), acc);
  acc = fmaf(__uint_as_float(w.y), __uint_as_float(x.y), acc);
  acc = fmaf(__uint_as_float(w.z), __uint_as_float(x.z), acc);
  acc = fmaf(__uint_as_float(w.w), __uint_as_float(x.w), acc);
  return acc;
}

template <typename T>
__device__ __forceinline__ uint4 load_x(const T* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
template <typename T>
__device__ __forceinline__ uint4 load_w(const T* p) { return __ldcs(reinterpret_cast<const uint4*>(p)); }

// Vectorized: k, the strides and the base pointers are multiples of 16 bytes. Rows i >= m of a
// template size M re-read row m - 1 (an L1 hit) and are not written.
// silu_half > 0: w is gate_up (gate's silu_half rows, then up's); warps 0-3 take gate columns j..j+3
// and warps 4-7 the same up columns, each summed exactly as without it, and warps 0-3 write
// silu(gate) * up from both results rounded to OutT (= T), as linear + silu_mul would.
template <typename T, typename OutT, int M>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const T* __restrict__ w, int64_t w_stride,
                                                           const T* __restrict__ x, int64_t x_stride, int m,
                                                           const float* __restrict__ bias, OutT* __restrict__ y,
                                                           int64_t y_stride, int n, int k, int silu_half) {
  const unsigned long long t0 = trace_now();
  constexpr int E = 16 / int(sizeof(T));
  constexpr int kStep = 32 * E;
  constexpr int kHalf = kWarps / 2;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int j = blockIdx.x * kHalf + warp % kHalf;  // silu: the output column
  const bool in = silu_half > 0 ? j < silu_half : blockIdx.x * kWarps + warp < n;
  const int col = silu_half > 0 ? min(j, silu_half - 1) + (warp >= kHalf ? silu_half : 0)
                                : min(int(blockIdx.x) * kWarps + warp, n - 1);
  // The weight row's first lines go to L2 before waiting for the kernel before this one (weights
  // are not written during a step): with PDL their latency overlaps that kernel's tail.
  const T* wr = w + int64_t(col) * w_stride;
  if (lane * 128 < min(k, kUnroll * kStep) * int(sizeof(T))) prefetch_l2(reinterpret_cast<const char*>(wr) + lane * 128);
  pdl_begin();
  trace_mark(0, t0);
  if (silu_half == 0 && !in) return;
  const T* xr[M];
#pragma unroll
  for (int i = 0; i < M; ++i) xr[i] = x + int64_t(i < m ? i : m - 1) * x_stride;
  float acc[M];
#pragma unroll
  for (int i = 0; i < M; ++i) acc[i] = 0.0f;

  int kk = lane * E;
  for (; kk + (kUnroll - 1) * kStep < k; kk += kUnroll * kStep) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) wv[u] = load_w(wr + kk + u * kStep);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int i = 0; i < M; ++i) acc[i] = dot16(wv[u], load_x(xr[i] + kk + u * kStep), acc[i], x);
  }
  for (; kk < k; kk += kStep) {
    const uint4 wv = load_w(wr + kk);
#pragma unroll
    for (int i = 0; i < M; ++i) acc[i] = dot16(wv, load_x(xr[i] + kk), acc[i], x);
  }
  const float b = bias != nullptr ? bias[col] : 0.0f;
  if (silu_half == 0) {
#pragma unroll
    for (int i = 0; i < M; ++i) {
      const float s = warp_sum(acc[i]);
      if (lane == 0 && i < m) y[int64_t(i) * y_stride + col] = from_f<OutT>(s + b);
    }
    return;
  }
  __shared__ float up[kHalf][M];
#pragma unroll
  for (int i = 0; i < M; ++i) {
    acc[i] = warp_sum(acc[i]) + b;
    if (lane == 0 && warp >= kHalf) up[warp - kHalf][i] = acc[i];
  }
  __syncthreads();
  if (lane != 0 || warp >= kHalf || !in) return;
#pragma unroll
  for (int i = 0; i < M; ++i)
    if (i < m)
      y[int64_t(i) * y_stride + j] =
          from_f<OutT>(silu_times(to_f(from_f<OutT>(acc[i])), to_f(from_f<OutT>(up[warp][i]))));
}

// Any shape and alignment (odd k, unaligned views): one element per lane at a time.
template <typename T, typename OutT>
__global__ void __launch_bounds__(kWarps * 32) gemv_scalar_kernel(const T* __restrict__ w, int64_t w_stride,
                                                                  const T* __restrict__ x, int64_t x_stride, int m,
                                                                  const float* __restrict__ bias,
                                                                  OutT* __restrict__ y, int64_t y_stride, int n,
                                                                  int k) {
  pdl_begin();
  constexpr int M = kGemvMaxRows;
  const int lane = threadIdx.x % 32;
  const int col = blockIdx.x * kWarps + threadIdx.x / 32;
  if (col >= n) return;
  const T* wr = w + int64_t(col) * w_stride;
  float acc[M];
#pragma unroll
  for (int i = 0; i < M; ++i) acc[i] = 0.0f;
  for (int kk = lane; kk < k; kk += 32) {
    const float wv = to_f(wr[kk]);
#pragma unroll
    for (int i = 0; i < M; ++i)
      if (i < m) acc[i] = fmaf(wv, to_f(x[int64_t(i) * x_stride + kk]), acc[i]);
  }
  const float b = bias != nullptr ? bias[col] : 0.0f;
#pragma unroll
  for (int i = 0; i < M; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0 && i < m) y[int64_t(i) * y_stride + col] = from_f<OutT>(s + b);
  }
}

bool vectorized(size_t esize, const void* w, int64_t w_stride, const void* x, int64_t x_stride, int64_t k) {
  const int64_t e = int64_t(16 / esize);
  return k % e == 0 && w_stride % e == 0 && x_stride % e == 0 && aligned16(w) && aligned16(x);
}

template <typename T, typename OutT>
cudaError_t launch(const void* w, int64_t w_stride, const void* x, int64_t x_stride, int64_t m, const float* bias,
                   void* y, int64_t y_stride, int64_t n, int64_t k, bool silu, cudaStream_t stream) {
  const T* wt = static_cast<const T*>(w);
  const T* xt = static_cast<const T*>(x);
  OutT* yt = static_cast<OutT*>(y);
  const bool vec = vectorized(sizeof(T), w, w_stride, x, x_stride, k);
  const int mi = int(m), ni = int(n), ki = int(k), half = silu ? int(n / 2) : 0;
  if (silu && (!vec || n % 2 != 0)) return cudaErrorInvalidValue;
  const dim3 grid(silu ? ceil_div(half, kWarps / 2) : ceil_div(n, kWarps));
  if (!vec) {
    launch_kernel(gemv_scalar_kernel<T, OutT>, grid, kWarps * 32, 0, stream, wt, w_stride, xt, x_stride, mi, bias, yt,
                  y_stride, ni, ki);
  } else {
    auto* kernel = m <= 1   ? gemv_kernel<T, OutT, 1>
                   : m <= 2 ? gemv_kernel<T, OutT, 2>
                   : m <= 4 ? gemv_kernel<T, OutT, 4>
                            : gemv_kernel<T, OutT, 8>;
    launch_kernel(kernel, grid, kWarps * 32, 0, stream, wt, w_stride, xt, x_stride, mi, bias, yt, y_stride, ni, ki,
                  half);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t gemv(DType dt, DType out_dt, const void* w, int64_t w_stride, const void* x, int64_t x_stride, int64_t m,
                 const float* bias, void* y, int64_t y_stride, int64_t n, int64_t k, cudaStream_t stream, bool silu) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  if (m > kGemvMaxRows) return cudaErrorInvalidValue;
  if (out_dt == DType::F32 && !silu) {
    APUS_DISPATCH_FLOAT(dt, T,
                        return (launch<T, float>(w, w_stride, x, x_stride, m, bias, y, y_stride, n, k, false, stream)));
  }
  if (out_dt != dt) return cudaErrorInvalidValue;
  APUS_DISPATCH_FLOAT(dt, T, return (launch<T, T>(w, w_stride, x, x_stride, m, bias, y, y_stride, n, k, silu, stream)));
  return cudaErrorInvalidValue;
}

bool gemv_vectorized(DType dt, const void* w, int64_t w_stride, const void* x, int64_t x_stride, int64_t k) {
  return vectorized(dt == DType::F32 ? 4 : 2, w, w_stride, x, x_stride, k);
}

}  // namespace apus::cuda
