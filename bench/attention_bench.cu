// Microbenchmark for attention (src/backend/cuda/flash_decode.cu and flash_prefill.cu through
// paged_attention), Qwen2.5-7B's heads (28 query, 4 kv, head_dim 128) or one rank's share at a
// tensor-parallel size, the sequences' cache blocks scattered over the cache:
// - `decode [tp]`: one layer's decode attention for N sequences of about 640 keys each, against the
//   KV bytes at this GPU's copy rate. (The blocks run in waves, blocks an SM x SMs at a time; a step
//   whose (sequence, kv head) count is just past a whole number of waves would pay a whole block
//   time for the last few: session 18 found no such step.)
// - `prefill [tp] [seqs] [len]`: one layer's attention for a step of `seqs` new prompts of `len`
//   tokens (default 32 x 512, the offline bench's 16,384-token steps), in TFLOP/s of the causal
//   work (4 * head_dim flops per query, key and head).
// Built by hand on the GPU machine:
//
//   nvcc -std=c++17 -O3 -arch=sm_90a -Isrc -Iinclude bench/attention_bench.cu \
//     src/backend/cuda/attention.cu src/backend/cuda/flash_decode.cu src/backend/cuda/flash_prefill.cu \
//     -o abench && ./abench decode 1 && ./abench prefill
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

// Device time of one paged_attention call, averaged over `iters`.
double time_us(const AttentionParams& p, int iters) {
  return bench_mean_us(iters, [&](int) { CK(apus::cuda::paged_attention(p, nullptr)); });
}

}  // namespace

int main(int argc, char** argv) {
  const bool prefill = argc > 1 && std::strcmp(argv[1], "prefill") == 0;
  const int tp = argc > 2 ? std::atoi(argv[2]) : 1;
  const int pf_seqs = argc > 3 ? std::atoi(argv[3]) : 32, pf_len = argc > 4 ? std::atoi(argv[4]) : 512;
  const int heads = 28 / tp, kv_heads = std::max(1, 4 / tp), hd = 128, bs = 16;
  // Sequences in the cache (each with max_ctx keys of room) and rows of q / out.
  const int seqs_max = prefill ? pf_seqs : 1200, max_ctx = prefill ? pf_len : 800;
  const int64_t rows_max = prefill ? int64_t(pf_seqs) * pf_len : 1200;
  const int max_blocks = (max_ctx + bs - 1) / bs;
  const int64_t num_blocks = int64_t(seqs_max) * max_blocks;
  const int64_t kv_elems = num_blocks * bs * kv_heads * hd;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  __nv_bfloat16 *k, *v, *q, *out;
  CK(cudaMalloc(&k, kv_elems * 2));
  CK(cudaMalloc(&v, kv_elems * 2));
  CK(cudaMalloc(&q, rows_max * heads * hd * 2));
  CK(cudaMalloc(&out, rows_max * heads * hd * 2));
  fill<<<1024, 256>>>(k, kv_elems, 1);
  fill<<<1024, 256>>>(v, kv_elems, 2);
  fill<<<1024, 256>>>(q, rows_max * heads * hd, 3);
  const double rate = bench_copy_rate(k, v, size_t(kv_elems) * 2 / 2, 10);
  fill<<<1024, 256>>>(v, kv_elems, 2);
  float* partial;
  CK(cudaMalloc(&partial, size_t(rows_max) * heads * apus::cuda::kMaxSplits * (hd + 2) * 4));

  // Every sequence's blocks scattered over the cache (a shuffled pool, as a long run leaves it).
  std::mt19937 rng(7);
  std::vector<int32_t> table(num_blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  int32_t *d_table, *d_qs, *d_ctx;
  CK(cudaMalloc(&d_table, table.size() * 4));
  CK(cudaMalloc(&d_qs, (seqs_max + 1) * 4));
  CK(cudaMalloc(&d_ctx, seqs_max * 4));
  CK(cudaMemcpy(d_table, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
  auto params = [&](const std::vector<int32_t>& q_start, const std::vector<int32_t>& ctx) {
    const int seqs = int(ctx.size());
    CK(cudaMemcpy(d_qs, q_start.data(), q_start.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_ctx, ctx.data(), ctx.size() * 4, cudaMemcpyHostToDevice));
    AttentionParams p{};
    p.dt = apus::DType::BF16;
    p.q = q, p.q_stride = int64_t(heads) * hd, p.out = out, p.out_stride = int64_t(heads) * hd;
    p.k_cache = k, p.v_cache = v, p.q_start = d_qs, p.ctx_len = d_ctx, p.block_table = d_table;
    p.tokens = q_start.back(), p.num_seqs = seqs, p.max_blocks_per_seq = max_blocks, p.block_size = bs;
    p.heads = heads, p.kv_heads = kv_heads, p.head_dim = hd, p.scale = 0.0883883f;
    p.max_ctx_len = *std::max_element(ctx.begin(), ctx.end());
    p.max_q_len = 0, p.min_multi_q = 1 << 30;
    for (int i = 0; i < seqs; ++i) {
      const int n = q_start[i + 1] - q_start[i];
      p.max_q_len = std::max(p.max_q_len, n);
      p.single_seqs += n == 1;
      if (n > 1) p.min_multi_q = std::min(p.min_multi_q, n);
    }
    if (p.min_multi_q == 1 << 30) p.min_multi_q = 0;
    p.num_splits = apus::cuda::attention_splits(p, prop.multiProcessorCount);
    p.partial = partial;
    return p;
  };
  std::printf("%s, %d SMs, copy rate %.0f GB/s; heads %d, kv heads %d (TP=%d)\n", prop.name,
              prop.multiProcessorCount, rate / 1e9, heads, kv_heads, tp);

  if (prefill) {
    std::vector<int32_t> q_start(pf_seqs + 1), ctx(pf_seqs, pf_len);
    for (int i = 0; i <= pf_seqs; ++i) q_start[i] = i * pf_len;
    const AttentionParams p = params(q_start, ctx);
    const double us = time_us(p, 20);
    const double flops = 4.0 * hd * heads * pf_seqs * (double(pf_len) * (pf_len + 1) / 2);
    // The output's hash (bit-for-bit comparisons between kernel variants) and its sum.
    std::vector<uint16_t> o(size_t(rows_max) * heads * hd);
    CK(cudaMemcpy(o.data(), out, o.size() * 2, cudaMemcpyDeviceToHost));
    uint64_t hash = 1469598103934665603ull;
    double sum = 0;
    for (const uint16_t b : o) {
      hash = (hash ^ b) * 1099511628211ull;
      uint32_t u = uint32_t(b) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      sum += f;
    }
    std::printf("prefill: %d sequences x %d tokens: %.1f us a call, %.1f TFLOP/s of causal attention; output hash "
                "%016llx, sum %.6g\n",
                pf_seqs, pf_len, us, flops / (us * 1e-6) / 1e12, static_cast<unsigned long long>(hash), sum);
    return 0;
  }
  std::printf("%6s %6s %8s %10s %10s %8s\n", "seqs", "ctx", "splits", "us/call", "ns/item", "of rate");
  for (int seqs = 880; seqs <= seqs_max; seqs += 20) {
    std::vector<int32_t> q_start(seqs + 1), ctx(seqs);
    std::iota(q_start.begin(), q_start.end(), 0);
    for (int i = 0; i < seqs; ++i) ctx[i] = 640 - 16 + int(rng() % 33);  // 624..656: an offline run's spread
    const AttentionParams p = params(q_start, ctx);
    double kv_bytes = 0;
    for (int c : ctx) kv_bytes += 2.0 * c * kv_heads * hd * 2;
    const double us = time_us(p, 20);
    std::printf("%6d %6d %8d %10.1f %10.1f %8.2f\n", seqs, 640, p.num_splits, us, us * 1e3 / (double(seqs) * kv_heads),
                kv_bytes / (us * 1e-6) / rate);
  }
  return 0;
}
