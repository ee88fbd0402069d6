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

// 16-byte chunks whose loads a thread keeps in flight at once from each rank (kLoads over every
// rank): the kernels are bound by the latency of peer reads over NVLink, not by their bytes, so
// each thread issues several before it waits (with one chunk a thread and one row a block at a
// time, a 2,048-row fused sum took 97.7 us on 2 H200s, session 7).
constexpr int kLoads = 8;

// Chunks idx[0, n) of the sum over the ranks, in rank order, float32, rounded to T.
template <typename T, int W, int U>
__device__ __forceinline__ void sum_chunks(const P2pArgs& a, const Call& c, const int64_t (&idx)[U], int n,
                                           uint4 (&out)[U]) {
  constexpr int E = 16 / int(sizeof(T));
  float acc[U][E];
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int j = 0; j < E; ++j) acc[u][j] = 0.0f;
#pragma unroll
  for (int p = 0; p < W; ++p) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (u < n) v[u] = __ldcg(buffer(a, p, c) + idx[u]);
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (u < n) add16<T>(acc[u], v[u]);
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    T* o = reinterpret_cast<T*>(&out[u]);
#pragma unroll
    for (int j = 0; j < E; ++j) o[j] = from_f<T>(acc[u][j]);
  }
}

// Chunks idx[0, n) of src copied to dst, every load issued before the first store.
template <int U>
__device__ __forceinline__ void copy_chunks(uint4* dst, const uint4* src, const int64_t (&idx)[U], int n) {
  uint4 v[U];
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (u < n) v[u] = src[idx[u]];
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (u < n) dst[idx[u]] = v[u];
}

// Block b owns tiles b, b + gridDim.x, ... of kThreads * U chunks; in a tile, thread t takes chunks
// t, t + kThreads, ... (the same chunks on every rank, so block b's barrier covers them).
template <typename T, int W>
__global__ void __launch_bounds__(kThreads) p2p_all_reduce_kernel(uint4* x, int64_t nvec, P2pArgs a) {
  constexpr int U = kLoads / W;
  const Call c = begin_call(a);
  uint4* mine = const_cast<uint4*>(buffer(a, a.rank, c));
  const int64_t tile = int64_t(kThreads) * U;
  auto chunks = [&](int64_t t, int64_t (&idx)[U]) {
    int n = 0;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      idx[u] = t * tile + threadIdx.x + int64_t(u) * kThreads;
      n += idx[u] < nvec ? 1 : 0;
    }
    return n;
  };
  int64_t idx[U];
  for (int64_t t = blockIdx.x; t * tile < nvec; t += gridDim.x) copy_chunks<U>(mine, x, idx, chunks(t, idx));
  barrier<W>(a, c);
  for (int64_t t = blockIdx.x; t * tile < nvec; t += gridDim.x) {
    const int n = chunks(t, idx);
    uint4 s[U];
    sum_chunks<T, W, U>(a, c, idx, n, s);
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (u < n) x[idx[u]] = s[u];
  }
  if (threadIdx.x == 0) a.counter[blockIdx.x] = c.epoch;
}

// The sum added into the residual stream and its RMSNorm, as all_reduce + add_rms_norm compute
// them (the sum rounded to T, then residual + sum rounded, then w * (that * 1/rms) rounded). Block
// b owns rows b, b + gridDim.x, ...; it works on kThreads / group of them at once, each by a group
// of `group` threads (a power of two from 32 to kThreads: whole blocks for a decode step's few rows,
// warps for a prefill chunk's thousands), a thread taking U chunks of its row at a time.
template <typename T, int W>
__global__ void __launch_bounds__(kThreads) p2p_add_rms_norm_kernel(const uint4* x, T* residual, const float* w,
                                                                   float eps, T* out, int64_t rows, int nv,
                                                                   int group, P2pArgs a) {
  constexpr int E = 16 / int(sizeof(T)), U = kLoads / W;
  __shared__ float partial[kThreads / 32];
  const Call c = begin_call(a);
  uint4* mine = const_cast<uint4*>(buffer(a, a.rank, c));
  const int groups = kThreads / group, g = threadIdx.x / group, gt = threadIdx.x % group;
  const int warp = threadIdx.x / 32, warps = group / 32;
  // A round works on the block's rows r0 + g * gridDim.x, one for each group g (the rounds are the
  // same for every thread, so all reach each __syncthreads); a thread takes chunks gt, gt + group,
  // ... of its row, U at a time.
  const int64_t round = int64_t(groups) * gridDim.x, group_offset = int64_t(g) * gridDim.x;
  auto chunks = [&](int64_t r, int j0, int64_t (&idx)[U]) {
    int n = 0;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * group;
      idx[u] = r * nv + j;
      n += j < nv ? 1 : 0;
    }
    return n;
  };
  int64_t idx[U];
  for (int64_t r0 = blockIdx.x; r0 < rows; r0 += round) {
    const int64_t r = r0 + group_offset;
    if (r >= rows) continue;
    for (int j0 = gt; j0 < nv; j0 += group * U) copy_chunks<U>(mine, x, idx, chunks(r, j0, idx));
  }
  barrier<W>(a, c);
  uint4* res = reinterpret_cast<uint4*>(residual);
  uint4* o = reinterpret_cast<uint4*>(out);
  for (int64_t r0 = blockIdx.x; r0 < rows; r0 += round) {
    const int64_t r = r0 + group_offset;
    const bool live = r < rows;
    float ss = 0.0f;
    for (int j0 = gt; live && j0 < nv; j0 += group * U) {
      const int n = chunks(r, j0, idx);
      uint4 s[U], rv[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (u < n) rv[u] = res[idx[u]];
      sum_chunks<T, W, U>(a, c, idx, n, s);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u >= n) continue;
        const T* se = reinterpret_cast<const T*>(&s[u]);
        T* re = reinterpret_cast<T*>(&rv[u]);
#pragma unroll
        for (int e = 0; e < E; ++e) {
          re[e] = from_f<T>(to_f(re[e]) + to_f(se[e]));
          ss += to_f(re[e]) * to_f(re[e]);
        }
        res[idx[u]] = rv[u];
      }
    }
    ss = warp_sum(ss);
    if (threadIdx.x % 32 == 0) partial[warp] = ss;
    __syncthreads();
    ss = 0.0f;
    for (int i = 0; i < warps; ++i) ss += partial[g * warps + i];
    __syncthreads();  // `partial` is written again for the next row
    const float inv = rsqrtf(ss / float(nv * E) + eps);
    for (int j0 = gt; live && j0 < nv; j0 += group * U) {  // each thread rereads what it wrote
      const int n = chunks(r, j0, idx);
      uint4 rv[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (u < n) rv[u] = res[idx[u]];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u >= n) continue;
        const T* re = reinterpret_cast<const T*>(&rv[u]);
        const float* wr = w + int64_t(j0 + u * group) * E;
        uint4 o16;
        T* oe = reinterpret_cast<T*>(&o16);
#pragma unroll
        for (int e = 0; e < E; ++e) oe[e] = from_f<T>(wr[e] * to_f(from_f<T>(to_f(re[e]) * inv)));
        o[idx[u]] = o16;
      }
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
  // Threads per row: the block's share of the rows (rows / blocks) worked on at once, 32 at least.
  const int64_t per_block = (rows + kP2pMaxBlocks - 1) / kP2pMaxBlocks;
  int group = kThreads;
  while (group > 32 && int64_t(kThreads / group) * 2 <= per_block) group /= 2;
  APUS_DISPATCH_FLOAT(dt, T, APUS_P2P_WORLD(a.world, W, (p2p_add_rms_norm_kernel<T, W><<<kP2pMaxBlocks, kThreads, 0, stream>>>(static_cast<const uint4*>(x), static_cast<T*>(residual), w, eps, static_cast<T*>(out), rows, nv, group, a))));
  return cudaGetLastError();
}

}  // namespace apus::cuda
