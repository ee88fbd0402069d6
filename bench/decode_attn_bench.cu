// Microbenchmark for decode attention (src/backend/cuda/flash_decode.cu through paged_attention):
// device time of one layer's call for N sequences of about C keys each, Qwen2.5-7B's heads (28 query,
// 4 kv, head_dim 128) or one rank's share at a tensor-parallel size, against the KV bytes at this
// GPU's copy rate. The blocks of the kernel run in waves (blocks an SM x SMs at a time); a step
// whose (sequence, kv head) count is just past a whole number of waves pays a whole block time for
// the last few. Built by hand on the GPU machine:
//
//   nvcc -std=c++17 -O3 -arch=sm_90a -Isrc -Iinclude bench/decode_attn_bench.cu \
//     src/backend/cuda/attention.cu src/backend/cuda/flash_decode.cu src/backend/cuda/flash_prefill.cu \
//     -o dabench && ./dabench [tp]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cuda/kernels.h"
#include "bench_check.cuh"

namespace {

using apus::cuda::AttentionParams;

__global__ void fill(__nv_bfloat16* p, int64_t n, uint32_t seed) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 13, h *= 0x5bd1e995u, h ^= h >> 15;
    p[i] = __float2bfloat16(float(int(h % 2001) - 1000) / 1000.0f);
  }
}

double copy_rate(void* a, void* b, size_t bytes) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(e0));
  for (int i = 0; i < 10; ++i) CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(e1));
  CK(cudaEventSynchronize(e1));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  return 2.0 * bytes * 10 / (ms * 1e-3);  // read + write
}

}  // namespace

int main(int argc, char** argv) {
  const int tp = argc > 1 ? std::atoi(argv[1]) : 1;
  const int heads = 28 / tp, kv_heads = std::max(1, 4 / tp), hd = 128, bs = 16;
  const int max_seqs = 1200, max_ctx = 800, max_blocks = (max_ctx + bs - 1) / bs;
  const int64_t num_blocks = int64_t(max_seqs) * max_blocks;
  const int64_t kv_elems = num_blocks * bs * kv_heads * hd;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  __nv_bfloat16 *k, *v, *q, *out;
  CK(cudaMalloc(&k, kv_elems * 2));
  CK(cudaMalloc(&v, kv_elems * 2));
  CK(cudaMalloc(&q, int64_t(max_seqs) * heads * hd * 2));
  CK(cudaMalloc(&out, int64_t(max_seqs) * heads * hd * 2));
  fill<<<1024, 256>>>(k, kv_elems, 1);
  fill<<<1024, 256>>>(v, kv_elems, 2);
  fill<<<1024, 256>>>(q, int64_t(max_seqs) * heads * hd, 3);
  const double rate = copy_rate(k, v, size_t(kv_elems) * 2 / 2);
  fill<<<1024, 256>>>(v, kv_elems, 2);
  float* partial;
  CK(cudaMalloc(&partial, size_t(max_seqs) * heads * apus::cuda::kMaxSplits * (hd + 2) * 4));

  // Every sequence's blocks scattered over the cache (a shuffled pool, as a long run leaves it).
  std::mt19937 rng(7);
  std::vector<int32_t> pool(num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> table(pool.begin(), pool.end()), q_start(max_seqs + 1);
  std::iota(q_start.begin(), q_start.end(), 0);
  int32_t *d_table, *d_qs, *d_ctx;
  CK(cudaMalloc(&d_table, table.size() * 4));
  CK(cudaMalloc(&d_qs, q_start.size() * 4));
  CK(cudaMalloc(&d_ctx, max_seqs * 4));
  CK(cudaMemcpy(d_table, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_qs, q_start.data(), q_start.size() * 4, cudaMemcpyHostToDevice));

  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::printf("%s, %d SMs, copy rate %.0f GB/s; heads %d, kv heads %d (TP=%d)\n", prop.name,
              prop.multiProcessorCount, rate / 1e9, heads, kv_heads, tp);
  std::printf("%6s %6s %8s %10s %10s %8s\n", "seqs", "ctx", "splits", "us/call", "ns/item", "of rate");
  for (const int ctx_mid : {640}) {
    for (int seqs = 880; seqs <= max_seqs; seqs += 20) {
      std::vector<int32_t> ctx(seqs);
      for (int i = 0; i < seqs; ++i) ctx[i] = ctx_mid - 16 + int(rng() % 33);  // 624..656: an offline run's spread
      CK(cudaMemcpy(d_ctx, ctx.data(), seqs * 4, cudaMemcpyHostToDevice));
      AttentionParams p{};
      p.dt = apus::DType::BF16;
      p.q = q, p.q_stride = int64_t(heads) * hd, p.out = out, p.out_stride = int64_t(heads) * hd;
      p.k_cache = k, p.v_cache = v, p.q_start = d_qs, p.ctx_len = d_ctx, p.block_table = d_table;
      p.tokens = seqs, p.num_seqs = seqs, p.max_blocks_per_seq = max_blocks, p.block_size = bs;
      p.heads = heads, p.kv_heads = kv_heads, p.head_dim = hd, p.scale = 0.0883883f;
      p.max_q_len = 1, p.max_ctx_len = *std::max_element(ctx.begin(), ctx.end());
      p.single_seqs = seqs, p.min_multi_q = 0;
      p.num_splits = apus::cuda::attention_splits(p, prop.multiProcessorCount);
      p.partial = partial;
      double kv_bytes = 0;
      for (int c : ctx) kv_bytes += 2.0 * c * kv_heads * hd * 2;
      for (int i = 0; i < 3; ++i) CK(apus::cuda::paged_attention(p, nullptr));
      const int iters = 20;
      CK(cudaEventRecord(e0));
      for (int i = 0; i < iters; ++i) CK(apus::cuda::paged_attention(p, nullptr));
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      const double us = ms * 1e3 / iters;
      std::printf("%6d %6d %8d %10.1f %10.1f %8.2f\n", seqs, ctx_mid, p.num_splits, us,
                  us * 1e3 / (double(seqs) * kv_heads), kv_bytes / (us * 1e-6) / rate);
    }
  }
  return 0;
}
