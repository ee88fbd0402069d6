// The small per-token kernels: embedding, row gather, RMSNorm (plain, per head, fused with the
// residual add), RoPE, the KV-cache store, SiLU*up, add, bias. Arithmetic is float32; results are
// rounded to the activation dtype once, where transformers rounds (see each kernel).
//
// These are straightforward one-pass kernels (a grid-stride loop or one block per row); they move
// a few MB per layer against hundreds of MB of weights, so they are not where decode time goes.
#include <algorithm>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

namespace apus::cuda {

namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return unsigned(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

#define GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__device__ void record_error(DeviceError* err, int code, int value) {
  if (atomicCAS(&err->code, kErrNone, code) == kErrNone) err->value = value;
}

template <typename T>
__global__ void embedding_kernel(const int32_t* ids, int64_t n, const int32_t* drawn, int64_t drawn_n, const T* table,
                                 int64_t first, int64_t rows, int64_t vocab, int64_t hidden, T* out, int64_t out_stride,
                                 DeviceError* err) {
  pdl_begin();
  GRID_STRIDE(i, n * hidden) {
    const int64_t t = i / hidden, c = i % hidden;
    int32_t id = ids[t];
    if (id < 0 && int64_t(-1) - id < drawn_n) id = drawn[-1 - id];
    if (id < 0 || id >= vocab) {
      if (c == 0) record_error(err, kErrTokenId, id);
      out[t * out_stride + c] = from_f<T>(0.0f);
    } else if (id < first || id >= first + rows) {  // another rank's part of the vocabulary
      out[t * out_stride + c] = from_f<T>(0.0f);
    } else {
      out[t * out_stride + c] = table[(int64_t(id) - first) * hidden + c];
    }
  }
}

template <typename T>
__global__ void gather_rows_kernel(const T* x, int64_t x_stride, const int32_t* rows, int64_t n, int64_t cols, T* out,
                                   int64_t out_stride) {
  pdl_begin();
  GRID_STRIDE(i, n * cols) {
    const int64_t r = i / cols, c = i % cols;
    out[r * out_stride + c] = x[int64_t(rows[r]) * x_stride + c];
  }
}

// One block per (row, group). transformers: weight * (x * rsqrt(mean(x^2) + eps)).to(dtype), the
// statistics in float32; the normalised value is rounded to the dtype before the weight multiplies.
template <typename T>
__global__ void rms_norm_kernel(const T* x, int64_t x_stride, const float* w, int64_t group, float eps, T* out,
                                int64_t out_stride) {
  pdl_begin();
  const T* xr = x + int64_t(blockIdx.x) * x_stride + int64_t(blockIdx.y) * group;
  T* orow = out + int64_t(blockIdx.x) * out_stride + int64_t(blockIdx.y) * group;
  float ss = 0.0f;
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < group; i += blockDim.x) {
    const float v = to_f(xr[i]);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / float(group) + eps);
  for (int64_t i = threadIdx.x; i < group; i += blockDim.x)
    orow[i] = from_f<T>(w[i] * to_f(from_f<T>(to_f(xr[i]) * inv)));
}

// residual += x (rounded to the dtype, as transformers adds two bf16 tensors), then the norm of it.
// The three never overlap (the decoder passes distinct buffers); saying so lets the loads of
// successive elements overlap instead of waiting for each store (a decode step runs this on one
// row, where latency is all there is).
template <typename T>
__global__ void add_rms_norm_kernel(T* __restrict__ residual, int64_t res_stride, const T* __restrict__ x,
                                    int64_t x_stride, const float* __restrict__ w, int64_t cols, float eps,
                                    T* __restrict__ out, int64_t out_stride) {
  pdl_begin();
  T* res = residual + int64_t(blockIdx.x) * res_stride;
  const T* xr = x + int64_t(blockIdx.x) * x_stride;
  T* orow = out + int64_t(blockIdx.x) * out_stride;
  float ss = 0.0f;
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const T sum = from_f<T>(to_f(res[i]) + to_f(xr[i]));
    res[i] = sum;
    const float v = to_f(sum);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / float(cols) + eps);
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)  // each thread rereads what it wrote
    orow[i] = from_f<T>(w[i] * to_f(from_f<T>(to_f(res[i]) * inv)));
}

// The same two norms for rows of 16-byte chunks (the usual case): each thread loads its chunks of
// the row (and of the weight) at once and keeps them in registers, so a decode step's one-row norm
// costs one round trip to memory instead of one per element group. C: chunks per thread. Addends:
// 0 (rms_norm), 1 (add_rms_norm: residual += x), 2 (add2_rms_norm: residual += x + x2, that sum
// rounded first, as a two-rank all-reduce rounds it; x2 has x's stride).
template <typename T, int C, int Addends, bool EarlyNext>
__global__ void rms_norm_vec_kernel(T* residual, int64_t res_stride, const T* __restrict__ x,
                                    const T* __restrict__ x2, int64_t x_stride, const float* __restrict__ w, int cols,
                                    float eps, T* out, int64_t out_stride) {  // out may be residual (in-place norm)
  constexpr int E = 16 / int(sizeof(T));
  const int nchunks = cols / E;
  T* res = residual + int64_t(blockIdx.x) * res_stride;
  const T* xr = x + int64_t(blockIdx.x) * x_stride;
  T* orow = out + int64_t(blockIdx.x) * out_stride;
  uint4 v[C];
  float4 wv[C][E / 4];
  // The weight before the wait (no kernel writes it during a step): its loads, often from memory
  // rather than L2, overlap the kernel before this one under PDL.
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int ch = threadIdx.x + c * blockDim.x;
    if (ch >= nchunks) continue;
#pragma unroll
    for (int j = 0; j < E / 4; ++j) wv[c][j] = reinterpret_cast<const float4*>(w)[ch * (E / 4) + j];
  }
  pdl_begin<EarlyNext>();
  float ss = 0.0f;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int ch = threadIdx.x + c * blockDim.x;
    if (ch >= nchunks) continue;
    v[c] = reinterpret_cast<const uint4*>(res)[ch];
    T* e = reinterpret_cast<T*>(&v[c]);
    if (Addends > 0) {
      uint4 xv = reinterpret_cast<const uint4*>(xr)[ch];
      T* xe = reinterpret_cast<T*>(&xv);
      if (Addends == 2) {
        const uint4 x2v = reinterpret_cast<const uint4*>(x2 + int64_t(blockIdx.x) * x_stride)[ch];
        const T* x2e = reinterpret_cast<const T*>(&x2v);
#pragma unroll
        for (int j = 0; j < E; ++j) xe[j] = from_f<T>(to_f(xe[j]) + to_f(x2e[j]));
      }
#pragma unroll
      for (int j = 0; j < E; ++j) e[j] = from_f<T>(to_f(e[j]) + to_f(xe[j]));
      reinterpret_cast<uint4*>(res)[ch] = v[c];
    }
#pragma unroll
    for (int j = 0; j < E; ++j) ss += to_f(e[j]) * to_f(e[j]);
  }
  const float inv = rsqrtf(block_sum(ss) / float(cols) + eps);
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int ch = threadIdx.x + c * blockDim.x;
    if (ch >= nchunks) continue;
    uint4 o;
    T* oe = reinterpret_cast<T*>(&o);
    const T* e = reinterpret_cast<const T*>(&v[c]);
    const float* wf = reinterpret_cast<const float*>(&wv[c][0]);
#pragma unroll
    for (int j = 0; j < E; ++j) oe[j] = from_f<T>(wf[j] * to_f(from_f<T>(to_f(e[j]) * inv)));
    reinterpret_cast<uint4*>(orow)[ch] = o;
  }
}

// Launches the vectorized norm when the shapes allow it; false otherwise (the caller falls back).
template <typename T, int Addends>
bool launch_norm_vec(T* residual, int64_t res_stride, const T* x, const T* x2, int64_t x_stride, const float* w,
                     int64_t cols, float eps, T* out, int64_t out_stride, int64_t rows, bool early_next,
                     cudaStream_t stream) {
  constexpr int E = 16 / int(sizeof(T));
  if (cols % E != 0 || res_stride % E != 0 || out_stride % E != 0 || !aligned16(residual) || !aligned16(out) ||
      !aligned16(w))
    return false;
  if (Addends > 0 && (x_stride % E != 0 || !aligned16(x))) return false;
  if (Addends == 2 && !aligned16(x2)) return false;
  const int64_t nchunks = cols / E;
  const int C = int((nchunks + 1023) / 1024);
  if (C > 4) return false;
  const unsigned threads = unsigned((nchunks + C - 1) / C + 31) / 32 * 32;
  const int ic = int(cols);
  auto* kernel = C == 1   ? (early_next ? rms_norm_vec_kernel<T, 1, Addends, true>
                                       : rms_norm_vec_kernel<T, 1, Addends, false>)
                 : C == 2 ? rms_norm_vec_kernel<T, 2, Addends, false>
                 : C == 3 ? rms_norm_vec_kernel<T, 3, Addends, false>
                          : rms_norm_vec_kernel<T, 4, Addends, false>;
  launch_kernel(kernel, unsigned(rows), threads, 0, stream, residual, res_stride, x, x2, x_stride, w, ic, eps, out,
                out_stride);
  return true;
}

unsigned norm_threads(int64_t n) { return n >= 2048 ? 512 : n >= 512 ? 256 : n >= 128 ? 128 : 32; }

template <typename T>
__global__ void rope_kernel(T* x, int64_t x_stride, int64_t rows, int heads, int head_dim, const float* cos,
                            const float* sin, int half) {
  pdl_begin();
  GRID_STRIDE(i, rows * heads * half) {
    const int64_t t = i / (int64_t(heads) * half);
    const int h = int(i / half % heads), j = int(i % half);
    T* v = x + t * x_stride + int64_t(h) * head_dim;
    const float a = to_f(v[j]), b = to_f(v[j + half]);
    const float c = cos[t * half + j], s = sin[t * half + j];
    v[j] = from_f<T>(a * c - b * s);
    v[j + half] = from_f<T>(b * c + a * s);
  }
}

template <typename T>
__global__ void store_kv_kernel(const T* k, int64_t k_stride, const T* v, int64_t v_stride, const int32_t* slots,
                                int64_t rows, int64_t row_elems, T* k_cache, T* v_cache, int64_t num_slots,
                                DeviceError* err) {
  pdl_begin();
  GRID_STRIDE(i, rows * row_elems) {
    const int64_t t = i / row_elems, c = i % row_elems;
    const int32_t slot = slots[t];
    if (slot == -1) continue;  // padding
    if (slot < 0 || slot >= num_slots) {
      if (c == 0) record_error(err, kErrSlot, slot);
      continue;
    }
    k_cache[int64_t(slot) * row_elems + c] = k[t * k_stride + c];
    v_cache[int64_t(slot) * row_elems + c] = v[t * v_stride + c];
  }
}

// rope_kernel and store_kv_kernel in one pass: thread (token, head, pair j) of the q, k and v heads,
// j < head_dim / 2: token blockIdx.x, head blockIdx.y * blockDim.y + threadIdx.y, j threadIdx.x (no
// index division: the flat grid-stride version divided 64-bit indices three times per pair and
// took 303 us for a 16,384-token step). j < half rotates the pair (j, j + half) (q and k; k's
// rotated values are also stored); j >= half moves the two dims 2 half + 2 (j - half) and the next,
// which rope leaves as they are (partial rotary): stored for k, untouched for q. v's pairs are
// copied alike.
template <typename T>
__global__ void rope_store_kv_kernel(T* qk, int64_t qk_stride, int q_heads, int kv_heads, int head_dim,
                                     const float* cos, const float* sin, int half, const T* v, int64_t v_stride,
                                     const int32_t* slots, T* k_cache, T* v_cache, int64_t num_slots,
                                     DeviceError* err) {
  const unsigned long long t0 = trace_now();
  pdl_begin();
  trace_mark(0, t0);
  const int64_t kv_row = int64_t(kv_heads) * head_dim;
  const int64_t t = blockIdx.x;
  const int h = int(blockIdx.y * blockDim.y + threadIdx.y), j = int(threadIdx.x);
  if (h >= q_heads + 2 * kv_heads) return;
  const int d0 = j < half ? j : 2 * half + 2 * (j - half), d1 = j < half ? j + half : d0 + 1;
  T r0, r1;
  if (h < q_heads + kv_heads) {
    T* x = qk + t * qk_stride + int64_t(h) * head_dim;
    r0 = x[d0];
    r1 = x[d1];
    if (j < half) {
      const float a = to_f(r0), b = to_f(r1);
      const float c = cos[t * half + j], s = sin[t * half + j];
      r0 = from_f<T>(a * c - b * s);
      r1 = from_f<T>(b * c + a * s);
      x[d0] = r0;
      x[d1] = r1;
    }
    if (h < q_heads) return;
  } else {
    const T* x = v + t * v_stride + int64_t(h - q_heads - kv_heads) * head_dim;
    r0 = x[d0];
    r1 = x[d1];
  }
  const int32_t slot = slots[t];
  if (slot == -1) return;  // padding
  if (slot < 0 || slot >= num_slots) {
    if (h == q_heads && j == 0) record_error(err, kErrSlot, slot);
    return;
  }
  const int kvh = h < q_heads + kv_heads ? h - q_heads : h - q_heads - kv_heads;
  T* dst = (h < q_heads + kv_heads ? k_cache : v_cache) + int64_t(slot) * kv_row + int64_t(kvh) * head_dim;
  dst[d0] = r0;
  dst[d1] = r1;
}

template <typename T>
__global__ void silu_mul_kernel(const T* gate_up, int64_t gu_stride, T* out, int64_t out_stride, int64_t rows,
                                int64_t cols) {
  pdl_begin();
  GRID_STRIDE(i, rows * cols) {
    const int64_t r = i / cols, c = i % cols;
    const float g = to_f(gate_up[r * gu_stride + c]), u = to_f(gate_up[r * gu_stride + cols + c]);
    out[r * out_stride + c] = from_f<T>(silu_times(g, u));
  }
}

// silu_mul for rows of 16-byte chunks (the usual case): a thread per 16 bytes of a row's output, rows
// along y. The flat kernel above divided 64-bit indices per element and reached about half the copy
// rate on a 16,384-token prefill step (1.14 ms for 1.9 GB; H100, bench/RESULTS.md session 9).
template <typename T>
__global__ void silu_mul_vec_kernel(const T* __restrict__ gate_up, int64_t gu_stride, T* __restrict__ out,
                                    int64_t out_stride, int64_t rows, int cols) {
  pdl_begin();
  constexpr int E = 16 / int(sizeof(T));
  const int c = (int(blockIdx.x) * blockDim.x + threadIdx.x) * E;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const uint4 gv = *reinterpret_cast<const uint4*>(gate_up + r * gu_stride + c);
    const uint4 uv = *reinterpret_cast<const uint4*>(gate_up + r * gu_stride + cols + c);
    const T* g = reinterpret_cast<const T*>(&gv);
    const T* u = reinterpret_cast<const T*>(&uv);
    uint4 ov;
    T* o = reinterpret_cast<T*>(&ov);
#pragma unroll
    for (int j = 0; j < E; ++j) o[j] = from_f<T>(silu_times(to_f(g[j]), to_f(u[j])));
    *reinterpret_cast<uint4*>(out + r * out_stride + c) = ov;
  }
}

template <typename T>
__global__ void add_kernel(T* x, int64_t x_stride, const T* y, int64_t y_stride, int64_t rows, int64_t cols) {
  pdl_begin();
  GRID_STRIDE(i, rows * cols) {
    const int64_t r = i / cols, c = i % cols;
    x[r * x_stride + c] = from_f<T>(to_f(x[r * x_stride + c]) + to_f(y[r * y_stride + c]));
  }
}

// y[r, c] = bias[c], E columns a thread (16 bytes where rows allow), rows along y: the C that a GEMM
// with beta 1 adds to its float32 sums before their one rounding (cuda_backend.cpp, gemm).
template <typename T, int E>
__global__ void bias_rows_kernel(T* __restrict__ y, int64_t y_stride, const float* __restrict__ bias, int64_t rows,
                                 int cols) {
  pdl_begin();
  const int c = (int(blockIdx.x) * blockDim.x + threadIdx.x) * E;
  if (c >= cols) return;
  alignas(16) T v[E];
#pragma unroll
  for (int j = 0; j < E; ++j) v[j] = from_f<T>(bias[c + j]);
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    if constexpr (E * sizeof(T) == 16) {
      *reinterpret_cast<uint4*>(y + r * y_stride + c) = *reinterpret_cast<const uint4*>(v);
    } else {
#pragma unroll
      for (int j = 0; j < E; ++j) y[r * y_stride + c + j] = v[j];
    }
  }
}

template <typename T>
__global__ void fill_random_kernel(T* x, int64_t n, uint64_t seed) {
  pdl_begin();
  GRID_STRIDE(i, n) {
    uint64_t z = seed + uint64_t(i) * 0x9e3779b97f4a7c15ull;  // splitmix64
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    x[i] = from_f<T>(float(z >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
}

}  // namespace

cudaError_t embedding(DType dt, const int32_t* ids, int64_t n, const int32_t* drawn, int64_t drawn_n, const void* table,
                      int64_t first, int64_t rows, int64_t vocab, int64_t hidden, void* out, int64_t out_stride,
                      DeviceError* err, cudaStream_t stream) {
  APUS_DISPATCH_FLOAT(dt, T,
                      launch_kernel(embedding_kernel<T>, grid_for(n * hidden), kThreads, 0, stream, ids, n, drawn,
                                    drawn_n, static_cast<const T*>(table), first, rows, vocab, hidden,
                                    static_cast<T*>(out), out_stride, err));
  return cudaGetLastError();
}

cudaError_t gather_rows(DType dt, const void* x, int64_t x_stride, const int32_t* rows, int64_t n, int64_t cols,
                        void* out, int64_t out_stride, cudaStream_t stream) {
  APUS_DISPATCH_FLOAT(dt, T,
                      launch_kernel(gather_rows_kernel<T>, grid_for(n * cols), kThreads, 0, stream,
                                    static_cast<const T*>(x), x_stride, rows, n, cols, static_cast<T*>(out),
                                    out_stride));
  return cudaGetLastError();
}

cudaError_t rms_norm(DType dt, const void* x, int64_t x_stride, const float* w, int64_t group, int64_t groups,
                     float eps, void* out, int64_t out_stride, int64_t rows, bool early_next, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(groups));
  if (groups == 1) {
    APUS_DISPATCH_FLOAT(dt, T, {
      if (launch_norm_vec<T, 0>(const_cast<T*>(static_cast<const T*>(x)), x_stride, nullptr, nullptr, 0, w, group,
                                eps, static_cast<T*>(out), out_stride, rows, early_next, stream))
        return cudaGetLastError();
    });
  }
  APUS_DISPATCH_FLOAT(dt, T,
                      launch_kernel(rms_norm_kernel<T>, grid, norm_threads(group), 0, stream, static_cast<const T*>(x),
                                    x_stride, w, group, eps, static_cast<T*>(out), out_stride));
  return cudaGetLastError();
}

cudaError_t add_rms_norm(DType dt, void* residual, int64_t res_stride, const void* x, int64_t x_stride,
                         const float* w, int64_t cols, float eps, void* out, int64_t out_stride, int64_t rows,
                         bool early_next, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  APUS_DISPATCH_FLOAT(dt, T, {
    if (launch_norm_vec<T, 1>(static_cast<T*>(residual), res_stride, static_cast<const T*>(x), nullptr, x_stride, w,
                              cols, eps, static_cast<T*>(out), out_stride, rows, early_next, stream))
      return cudaGetLastError();
  });
  APUS_DISPATCH_FLOAT(dt, T,
                      launch_kernel(add_rms_norm_kernel<T>, unsigned(rows), norm_threads(cols), 0, stream,
                                    static_cast<T*>(residual), res_stride, static_cast<const T*>(x), x_stride, w, cols,
                                    eps, static_cast<T*>(out), out_stride));
  return cudaGetLastError();
}

cudaError_t add2_rms_norm(DType dt, void* residual, const void* x, const void* x2, const float* w, int64_t cols,
                          float eps, void* out, int64_t rows, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  APUS_DISPATCH_FLOAT(dt, T, {
    if (launch_norm_vec<T, 2>(static_cast<T*>(residual), cols, static_cast<const T*>(x), static_cast<const T*>(x2),
                              cols, w, cols, eps, static_cast<T*>(out), cols, rows, false, stream))
      return cudaGetLastError();
  });
  return cudaErrorInvalidValue;
}

cudaError_t rope(DType dt, void* x, int64_t x_stride, int64_t rows, int heads, int head_dim, const float* cos,
                 const float* sin, int half, cudaStream_t stream) {
  APUS_DISPATCH_FLOAT(dt, T,
                      launch_kernel(rope_kernel<T>, grid_for(rows * heads * half), kThreads, 0, stream,
                                    static_cast<T*>(x), x_stride, rows, heads, head_dim, cos, sin, half));
  return cudaGetLastError();
}

cudaError_t store_kv(DType dt, const void* k, int64_t k_stride, const void* v, int64_t v_stride, const int32_t* slots,
                     int64_t rows, int64_t row_elems, void* k_cache, void* v_cache, int64_t num_slots, DeviceError* err,
                     cudaStream_t stream) {
  APUS_DISPATCH_FLOAT(dt, T,
                      launch_kernel(store_kv_kernel<T>, grid_for(rows * row_elems), kThreads, 0, stream,
                                    static_cast<const T*>(k), k_stride, static_cast<const T*>(v), v_stride, slots, rows,
                                    row_elems, static_cast<T*>(k_cache), static_cast<T*>(v_cache), num_slots, err));
  return cudaGetLastError();
}

cudaError_t rope_store_kv(DType dt, void* qk, int64_t qk_stride, int q_heads, int kv_heads, int head_dim,
                          const float* cos, const float* sin, int half, const void* v, int64_t v_stride,
                          const int32_t* slots, int64_t rows, void* k_cache, void* v_cache, int64_t num_slots,
                          DeviceError* err, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int pairs = head_dim / 2, per_block = std::max(1, kThreads / pairs);  // heads a block
  const dim3 block{unsigned(pairs), unsigned(per_block)};
  const dim3 grid(unsigned(rows), ceil_div(q_heads + 2 * kv_heads, per_block));
  APUS_DISPATCH_FLOAT(dt, T,
                      launch_kernel(rope_store_kv_kernel<T>, grid, block, 0, stream, static_cast<T*>(qk), qk_stride,
                                    q_heads, kv_heads, head_dim, cos, sin, half, static_cast<const T*>(v), v_stride,
                                    slots, static_cast<T*>(k_cache), static_cast<T*>(v_cache), num_slots, err));
  return cudaGetLastError();
}

cudaError_t silu_mul(DType dt, const void* gate_up, int64_t gu_stride, void* out, int64_t out_stride, int64_t rows,
                     int64_t cols, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int64_t e = dt == DType::F32 ? 4 : 8;
  if (cols % e == 0 && gu_stride % e == 0 && out_stride % e == 0 && aligned16(gate_up) && aligned16(out) &&
      cols < (int64_t(1) << 30)) {
    const dim3 grid(ceil_div(cols / e, kThreads), unsigned(std::min<int64_t>(rows, 65535)));
    APUS_DISPATCH_FLOAT(dt, T,
                        launch_kernel(silu_mul_vec_kernel<T>, grid, kThreads, 0, stream, static_cast<const T*>(gate_up),
                                      gu_stride, static_cast<T*>(out), out_stride, rows, int(cols)));
    return cudaGetLastError();
  }
  APUS_DISPATCH_FLOAT(dt, T,
                      launch_kernel(silu_mul_kernel<T>, grid_for(rows * cols), kThreads, 0, stream,
                                    static_cast<const T*>(gate_up), gu_stride, static_cast<T*>(out), out_stride, rows,
                                    cols));
  return cudaGetLastError();
}

cudaError_t add(DType dt, void* x, int64_t x_stride, const void* y, int64_t y_stride, int64_t rows, int64_t cols,
                cudaStream_t stream) {
  APUS_DISPATCH_FLOAT(dt, T,
                      launch_kernel(add_kernel<T>, grid_for(rows * cols), kThreads, 0, stream, static_cast<T*>(x),
                                    x_stride, static_cast<const T*>(y), y_stride, rows, cols));
  return cudaGetLastError();
}

cudaError_t bias_rows(DType dt, void* y, int64_t y_stride, const float* bias, int64_t rows, int64_t cols,
                      cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int64_t e = dt == DType::F32 ? 4 : 8;
  const bool vec = cols % e == 0 && y_stride % e == 0 && aligned16(y);
  const dim3 grid(ceil_div(vec ? cols / e : cols, kThreads), unsigned(std::min<int64_t>(rows, 65535)));
  APUS_DISPATCH_FLOAT(dt, T, {
    constexpr int E = 16 / int(sizeof(T));
    T* yt = static_cast<T*>(y);
    if (vec) launch_kernel(bias_rows_kernel<T, E>, grid, kThreads, 0, stream, yt, y_stride, bias, rows, int(cols));
    else launch_kernel(bias_rows_kernel<T, 1>, grid, kThreads, 0, stream, yt, y_stride, bias, rows, int(cols));
  });
  return cudaGetLastError();
}

namespace {
__global__ void spin_kernel(int64_t ns) {
  const long long t0 = clock64();
  // clock64 counts SM cycles: ~1.5-2 GHz; a rough wait is all this is for.
  while (clock64() - t0 < ns * 2) {
  }
}
}  // namespace

cudaError_t spin(int64_t ns, cudaStream_t stream) {
  spin_kernel<<<1, 1, 0, stream>>>(ns);
  return cudaGetLastError();
}

cudaError_t fill_random(DType dt, void* x, int64_t n, uint64_t seed, cudaStream_t stream) {
  APUS_DISPATCH_FLOAT(dt, T,
                      launch_kernel(fill_random_kernel<T>, grid_for(n), kThreads, 0, stream, static_cast<T*>(x), n,
                                    seed));
  return cudaGetLastError();
}

}  // namespace apus::cuda
