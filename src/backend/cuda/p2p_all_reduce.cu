// One-shot all-reduce over peer-to-peer device memory (NVLink), for the ranks of a tensor-parallel
// group that are threads of one process (nccl.cpp decides when; src/parallel/README.md). Every
// rank's kernel, block b:
//   1. copies its slice of x into its own buffer (of two, by call parity);
//   2. meets block b of every peer at a flag barrier: it writes the call's epoch into each peer's
//      signal slot [b][rank] (st.release.sys, after the copy) and waits for its own slots [b][p]
//      to reach that epoch (ld.acquire.sys), polling an abort flag in host memory now and then so
//      that a dead peer does not hold the device forever;
//   3. sums the slice over every rank's buffer in rank order, in float32, into x: each rank reads
//      every peer's slice once (one NVLink transfer of the message per peer) and every rank gets
//      bit-identical results.
// all_reduce_add_rms_norm does steps 1-3 by whole rows and adds the sum into the residual stream
// and takes its RMSNorm in the same pass (one kernel instead of a sum and a norm).
// The epoch is each block's counter in device memory plus one (stored back at the end), so graph
// replays advance it. Every call runs all kP2pMaxBlocks blocks (those without work too), so every
// block's counter advances with every call and all of a call's blocks use the same buffer half,
// whatever the message's size or the kernel (elementwise or by rows): two halves by epoch parity
// then make a second barrier unnecessary. A rank writes a half again two calls later, when its
// block has met each peer's block at the barrier of the call in between, so each peer's kernel
// of the call before (every block of it) has ended. A peer may be one call ahead: slots are
// compared as ">= epoch".
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

#include <cstdio>

namespace apus::cuda {

namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ void store_release(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t load_acquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ unsigned long long now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}

template <typename T>
__device__ __forceinline__ void add16(float* acc, const uint4& v) {
  constexpr int E = 16 / int(sizeof(T));
  const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int j = 0; j < E; ++j) acc[j] += to_f(e[j]);
}

// This call's epoch and buffer half of block b (step 1's destination and step 3's sources).
struct Call {
  uint32_t epoch;
  size_t half;
};
__device__ __forceinline__ Call begin_call(const P2pArgs& a) {
  const uint32_t epoch = a.counter[blockIdx.x] + 1;
  return {epoch, (epoch & 1u) ? a.buffer_bytes : size_t(0)};
}
__device__ __forceinline__ const uint4* buffer(const P2pArgs& a, int rank, const Call& c) {
  return reinterpret_cast<const uint4*>(static_cast<const char*>(a.data[rank]) + c.half);
}

// Step 2: after this block's part is in its buffer, meet the same block of every peer.
template <int W>
__device__ __forceinline__ void barrier(const P2pArgs& a, const Call& c) {
  __syncthreads();
  if (threadIdx.x < W) {
    store_release(a.signal[threadIdx.x] + blockIdx.x * kP2pMaxRanks + a.rank, c.epoch);
    const uint32_t* slot = a.signal[a.rank] + blockIdx.x * kP2pMaxRanks + threadIdx.x;
    const unsigned long long start = a.spin_limit_ns ? now_ns() : 0;
    for (uint32_t n = 1; int32_t(load_acquire(slot) - c.epoch) < 0; ++n) {
      if ((n & 1023u) != 0) continue;
      if (*a.abort) break;  // the group failed: leave (the results are garbage then)
      if (a.spin_limit_ns && now_ns() - start > a.spin_limit_ns) {  // APUS_TP_P2P_SPIN_LIMIT: diagnosis
        printf("p2p: rank %d block %d call %u: rank %d is at call %u after %.1f s; leaving (results garbage)\n",
               a.rank, int(blockIdx.x), c.epoch, int(threadIdx.x), load_acquire(slot), double(now_ns() - start) * 1e-9);
        break;
      }
    }
  }
  __syncthreads();
}

// Element i (16 bytes) of the sum over the ranks, in rank order, float32, rounded to T.
template <typename T, int W>
__device__ __forceinline__ uint4 sum16(const P2pArgs& a, const Call& c, int64_t i) {
  constexpr int E = 16 / int(sizeof(T));
  float acc[E];
#pragma unroll
  for (int j = 0; j < E; ++j) acc[j] = 0.0f;
#pragma unroll
  for (int p = 0; p < W; ++p) add16<T>(acc, __ldcg(buffer(a, p, c) + i));
  uint4 out;
  T* o = reinterpret_cast<T*>(&out);
#pragma unroll
  for (int j = 0; j < E; ++j) o[j] = from_f<T>(acc[j]);
  return out;
}

template <typename T, int W>
__global__ void __launch_bounds__(kThreads) p2p_all_reduce_kernel(uint4* x, int64_t nvec, P2pArgs a) {
  const Call c = begin_call(a);
  uint4* mine = const_cast<uint4*>(buffer(a, a.rank, c));
  const int64_t step = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < nvec; i += step) mine[i] = x[i];
  barrier<W>(a, c);
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < nvec; i += step) x[i] = sum16<T, W>(a, c, i);
  if (threadIdx.x == 0) a.counter[blockIdx.x] = c.epoch;
}

// The sum added into the residual stream and its RMSNorm, as all_reduce + add_rms_norm compute
// them (the sum rounded to T, then residual + sum rounded, then w * (that * 1/rms) rounded): a block
// owns whole rows (nv 16-byte chunks each), so that it can take each row's norm.
template <typename T, int W>
__global__ void __launch_bounds__(kThreads) p2p_add_rms_norm_kernel(const uint4* x, T* residual, const float* w,
                                                                   float eps, T* out, int64_t rows, int nv,
                                                                   P2pArgs a) {
  constexpr int E = 16 / int(sizeof(T));
  const Call c = begin_call(a);
  uint4* mine = const_cast<uint4*>(buffer(a, a.rank, c));
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x)
    for (int j = threadIdx.x; j < nv; j += kThreads) mine[r * nv + j] = x[r * nv + j];
  barrier<W>(a, c);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    uint4* res = reinterpret_cast<uint4*>(residual + r * nv * E);
    float ss = 0.0f;
    for (int j = threadIdx.x; j < nv; j += kThreads) {
      const uint4 s = sum16<T, W>(a, c, r * nv + j), rv = res[j];
      const T* se = reinterpret_cast<const T*>(&s);
      const T* re = reinterpret_cast<const T*>(&rv);
      uint4 nv16;
      T* ne = reinterpret_cast<T*>(&nv16);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        ne[e] = from_f<T>(to_f(re[e]) + to_f(se[e]));
        ss += to_f(ne[e]) * to_f(ne[e]);
      }
      res[j] = nv16;
    }
    const float inv = rsqrtf(block_sum(ss) / float(nv * E) + eps);
    uint4* orow = reinterpret_cast<uint4*>(out + r * nv * E);
    for (int j = threadIdx.x; j < nv; j += kThreads) {  // each thread rereads what it wrote
      const uint4 rv = res[j];
      const T* re = reinterpret_cast<const T*>(&rv);
      uint4 o16;
      T* oe = reinterpret_cast<T*>(&o16);
#pragma unroll
      for (int e = 0; e < E; ++e) oe[e] = from_f<T>(w[j * E + e] * to_f(from_f<T>(to_f(re[e]) * inv)));
      orow[j] = o16;
    }
  }
  if (threadIdx.x == 0) a.counter[blockIdx.x] = c.epoch;
}

#define APUS_P2P_WORLD(world, W, ...)      \
  switch (world) {                         \
    case 2: {                              \
      constexpr int W = 2;                 \
      __VA_ARGS__;                         \
      break;                               \
    }                                      \
    case 4: {                              \
      constexpr int W = 4;                 \
      __VA_ARGS__;                         \
      break;                               \
    }                                      \
    case 8: {                              \
      constexpr int W = 8;                 \
      __VA_ARGS__;                         \
      break;                               \
    }                                      \
    default: return cudaErrorInvalidValue; \
  }

bool usable(const void* p, int64_t bytes, const P2pArgs& a) {
  return bytes % 16 == 0 && size_t(bytes) <= a.buffer_bytes && (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

}  // namespace

cudaError_t p2p_all_reduce(DType dt, void* x, int64_t bytes, const P2pArgs& a, cudaStream_t stream) {
  if (!usable(x, bytes, a)) return cudaErrorInvalidValue;
  const int64_t nvec = bytes / 16;
  APUS_DISPATCH_FLOAT(dt, T, APUS_P2P_WORLD(a.world, W, (p2p_all_reduce_kernel<T, W><<<kP2pMaxBlocks, kThreads, 0, stream>>>(static_cast<uint4*>(x), nvec, a))));
  return cudaGetLastError();
}

cudaError_t p2p_add_rms_norm(DType dt, const void* x, void* residual, const float* w, float eps, void* out,
                             int64_t rows, int64_t cols, const P2pArgs& a, cudaStream_t stream) {
  const int64_t row_bytes = cols * (dt == DType::F32 ? 4 : 2), bytes = rows * row_bytes;
  if (!usable(x, bytes, a) || !usable(residual, bytes, a) || !usable(out, bytes, a) || row_bytes % 16 != 0)
    return cudaErrorInvalidValue;
  const int nv = int(row_bytes / 16);
  APUS_DISPATCH_FLOAT(dt, T, APUS_P2P_WORLD(a.world, W, (p2p_add_rms_norm_kernel<T, W><<<kP2pMaxBlocks, kThreads, 0, stream>>>(static_cast<const uint4*>(x), static_cast<T*>(residual), w, eps, static_cast<T*>(out), rows, nv, a))));
  return cudaGetLastError();
}

}  // namespace apus::cuda
