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
// The epoch is each block's counter in device memory plus one (stored back at the end), so graph
// replays advance it. Two buffers by epoch parity make a second barrier unnecessary: a rank reuses
// a buffer two calls later, when every peer has passed the barrier of the call in between and so
// finished reading it. A peer may already be one call ahead: slots are compared as ">= epoch".
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

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

template <typename T>
__device__ __forceinline__ void add16(float* acc, const uint4& v) {
  constexpr int E = 16 / int(sizeof(T));
  const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int j = 0; j < E; ++j) acc[j] += to_f(e[j]);
}

template <typename T, int W>
__global__ void __launch_bounds__(kThreads) p2p_all_reduce_kernel(uint4* x, int64_t nvec, P2pArgs a) {
  constexpr int E = 16 / int(sizeof(T));
  const int b = blockIdx.x;
  const uint32_t epoch = a.counter[b] + 1;
  const size_t half = (epoch & 1u) ? a.buffer_bytes : 0;
  uint4* mine = reinterpret_cast<uint4*>(static_cast<char*>(a.data[a.rank]) + half);
  const int64_t step = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(b) * kThreads + threadIdx.x; i < nvec; i += step) mine[i] = x[i];
  __syncthreads();
  if (threadIdx.x < W) {
    store_release(a.signal[threadIdx.x] + b * kP2pMaxRanks + a.rank, epoch);
    const uint32_t* slot = a.signal[a.rank] + b * kP2pMaxRanks + threadIdx.x;
    for (uint32_t n = 1; int32_t(load_acquire(slot) - epoch) < 0; ++n)
      if ((n & 1023u) == 0 && *a.abort) break;  // the group failed: leave (x is garbage then)
  }
  __syncthreads();
  for (int64_t i = int64_t(b) * kThreads + threadIdx.x; i < nvec; i += step) {
    float acc[E];
#pragma unroll
    for (int j = 0; j < E; ++j) acc[j] = 0.0f;
#pragma unroll
    for (int p = 0; p < W; ++p)
      add16<T>(acc, __ldcg(reinterpret_cast<const uint4*>(static_cast<const char*>(a.data[p]) + half) + i));
    uint4 out;
    T* o = reinterpret_cast<T*>(&out);
#pragma unroll
    for (int j = 0; j < E; ++j) o[j] = from_f<T>(acc[j]);
    x[i] = out;
  }
  if (threadIdx.x == 0) a.counter[b] = epoch;
}

template <typename T>
cudaError_t launch(void* x, int64_t nvec, const P2pArgs& a, cudaStream_t stream) {
  const int blocks = int(std::min<int64_t>(kP2pMaxBlocks, std::max<int64_t>(1, (nvec + kThreads - 1) / kThreads)));
  uint4* xv = static_cast<uint4*>(x);
  switch (a.world) {
    case 2: p2p_all_reduce_kernel<T, 2><<<blocks, kThreads, 0, stream>>>(xv, nvec, a); break;
    case 4: p2p_all_reduce_kernel<T, 4><<<blocks, kThreads, 0, stream>>>(xv, nvec, a); break;
    case 8: p2p_all_reduce_kernel<T, 8><<<blocks, kThreads, 0, stream>>>(xv, nvec, a); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t p2p_all_reduce(DType dt, void* x, int64_t bytes, const P2pArgs& a, cudaStream_t stream) {
  if (bytes % 16 != 0 || size_t(bytes) > a.buffer_bytes || (reinterpret_cast<uintptr_t>(x) & 15u) != 0)
    return cudaErrorInvalidValue;
  APUS_DISPATCH_FLOAT(dt, T, return launch<T>(x, bytes / 16, a, stream));
  return cudaErrorInvalidValue;
}

}  // namespace apus::cuda
