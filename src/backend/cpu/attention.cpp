#include "backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"

namespace apus {

namespace {

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define APUS_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define APUS_VECTOR_CLONES
#endif

struct Geometry {
  int heads, kv_heads, head_dim, block_size;
  int64_t kv_row;  // floats per cache slot: kv_heads * head_dim
};

// One query token against the keys at positions [lo, hi] of its sequence, for the `group` query
// heads that share kv head `g`. `scores` holds group * (hi - lo + 1) floats.
APUS_VECTOR_CLONES
void attend_one(const float* q, float* out, const float* kcache, const float* vcache,
                const int32_t* blocks, int lo, int hi, int g, int group, float scale,
                const Geometry& geo, float* scores) {
  const int n = hi - lo + 1;
  const int d = geo.head_dim;
  for (int j = 0; j < n; ++j) {
    int pos = lo + j;
    const float* k = kcache + (int64_t(blocks[pos / geo.block_size]) * geo.block_size +
                               pos % geo.block_size) * geo.kv_row + int64_t(g) * d;
    for (int h = 0; h < group; ++h) {
      const float* qh = q + int64_t(h) * d;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int i = 0; i < d; ++i) acc += qh[i] * k[i];
      scores[int64_t(h) * n + j] = acc * scale;
    }
  }
  for (int h = 0; h < group; ++h) {
    float* s = scores + int64_t(h) * n;
    float mx = -INFINITY;
    for (int j = 0; j < n; ++j) mx = std::max(mx, s[j]);
    float sum = 0.0f;
    for (int j = 0; j < n; ++j) {
      s[j] = std::exp(s[j] - mx);
      sum += s[j];
    }
    const float inv = 1.0f / sum;
    for (int j = 0; j < n; ++j) s[j] *= inv;
    float* oh = out + int64_t(h) * d;
    std::fill(oh, oh + d, 0.0f);
  }
  for (int j = 0; j < n; ++j) {
    int pos = lo + j;
    const float* v = vcache + (int64_t(blocks[pos / geo.block_size]) * geo.block_size +
                               pos % geo.block_size) * geo.kv_row + int64_t(g) * d;
    for (int h = 0; h < group; ++h) {
      const float p = scores[int64_t(h) * n + j];
      float* oh = out + int64_t(h) * d;
#pragma omp simd
      for (int i = 0; i < d; ++i) oh[i] += p * v[i];
    }
  }
}

}  // namespace

void cpu_paged_attention(const Tensor& q, const KvLayer& cache, const AttentionBatch& b,
                         Tensor& out, ThreadPool& pool) {
  APUS_CHECK(q.dtype == DType::F32 && cache.k.dtype == DType::F32,
             "cpu attention expects F32 activations and cache");
  Geometry geo;
  geo.kv_heads = int(cache.k.shape[2]);
  geo.head_dim = int(cache.k.shape[3]);
  geo.block_size = int(cache.k.shape[1]);
  geo.heads = int(q.cols() / geo.head_dim);
  geo.kv_row = int64_t(geo.kv_heads) * geo.head_dim;
  const int group = geo.heads / geo.kv_heads;
  const int32_t* q_start = b.q_start.ptr<int32_t>();
  const int32_t* ctx_len = b.ctx_len.ptr<int32_t>();
  const int64_t tokens = q.rows();

  // Map each token to its sequence once; tasks are (token, kv head) pairs.
  std::vector<int32_t> seq_of(static_cast<size_t>(tokens));
  for (int s = 0; s < b.num_seqs; ++s)
    for (int t = q_start[s]; t < q_start[s + 1]; ++t) seq_of[size_t(t)] = s;

  const int64_t tasks = tokens * geo.kv_heads;
  pool.parallel_for(tasks, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / geo.kv_heads;
      const int g = int(task % geo.kv_heads);
      const int s = seq_of[size_t(t)];
      const int q_len = q_start[s + 1] - q_start[s];
      const int pos = ctx_len[s] - q_len + int(t - q_start[s]);
      const int lo = b.sliding_window > 0 ? std::max(0, pos - b.sliding_window + 1) : 0;
      scores.resize(size_t(group) * size_t(pos - lo + 1));
      const int32_t* blocks = b.block_table.ptr<int32_t>() + int64_t(s) * b.max_blocks_per_seq;
      attend_one(q.row<float>(t) + int64_t(g) * group * geo.head_dim,
                 out.row<float>(t) + int64_t(g) * group * geo.head_dim, cache.k.ptr<float>(),
                 cache.v.ptr<float>(), blocks, lo, pos, g, group, b.scale, geo, scores.data());
    }
  });
}

}  // namespace apus
