// Paged attention for prefill and decode alike, on CUDA cores with float32 arithmetic.
//
// A block serves R consecutive "rows" of one sequence and one kv head, where a row is a (query
// token, query head) pair of that kv head's group, token-major: GQA reads each key once for all
// heads of the group, and a prefill block covers several tokens. Its 4 warps take turns over
// 32-key tiles of the sequence's keys (per-warp online softmax: lane j scores key j of the tile
// against every row, then each lane accumulates head_dim/32 output dims over the tile's values);
// the warps' partial results are merged in shared memory at the end. Shared memory does not grow
// with the context (one tile per warp), so any context length runs. Sequences with kFlashMinQ or
// more new tokens go to the tensor-core kernel (flash_prefill.cu) where it applies, and decode steps
// of GQA models to flash_decode.cu where that applies (APUS_CUDA_FLASH_DECODE=0 keeps them here).
//
// When a step has too few (sequence, kv head, row-tile) blocks to fill the GPU -- decode of a few
// sequences -- each sequence's keys are also split across `num_splits` blocks, which write
// unnormalised partial results that a second kernel merges (flash-decoding).
//
// Tiles come in with cp.async (all of a tile's copies in flight at once; V reuses the K buffer once
// the scores are done). Not yet done (issue 6): double buffering across tiles.
#include <cuda_pipeline.h>

#include <algorithm>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

namespace apus::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kTile = 32;  // keys per warp tile: one per lane

int dims_per_lane(int head_dim) {
  int d = 1;
  while (d * 32 < head_dim) d *= 2;
  return d;
}
int rows_per_block(int dpl) { return dpl >= 8 ? 8 : 16; }

// Row `r` of a block in bytes of padded K-tile rows: 16 bytes of padding keep the 16-byte lane
// reads of one tile row per lane free of bank conflicts.
template <typename T>
__host__ __device__ int k_row_elems(int head_dim) { return head_dim + 16 / int(sizeof(T)); }

struct SmemLayout {
  size_t q, p, k, combine, total;  // byte offsets (q at 0) and the total
};

template <typename T>
__host__ __device__ SmemLayout smem_layout(int head_dim, int rows) {
  SmemLayout s;
  const size_t q_bytes = size_t(rows) * head_dim * sizeof(float);
  const size_t p_bytes = size_t(kWarps) * rows * kTile * sizeof(float);
  const size_t k_bytes = size_t(kWarps) * kTile * k_row_elems<T>(head_dim) * sizeof(T) + kWarps * kTile * sizeof(int);
  const size_t c_bytes = size_t(kWarps) * rows * (head_dim + 2) * sizeof(float);
  s.q = 0;
  s.p = q_bytes;
  s.k = s.combine = q_bytes + p_bytes;  // the merge reuses the tile area once every warp is done
  s.total = s.k + (k_bytes > c_bytes ? k_bytes : c_bytes);
  return s;
}

template <typename T, int DPL>
struct alignas(sizeof(T) * DPL >= 16 ? 16 : sizeof(T) * DPL) VecT {
  T v[DPL];
};

// One warp copies a 32-key tile of K or V (rows `slot_s`, -1: zeros) into shared memory with
// asynchronous copies, all in flight at once, and waits for them.
template <typename T>
__device__ __forceinline__ void load_tile(T* tile, const T* cache, const int* slot_s, int64_t kv_row, int64_t head_off,
                                          int chunks, int kre, int lane) {
  constexpr int kEpc = 16 / int(sizeof(T));
  __syncwarp();  // every lane is done reading the previous contents
  for (int i = lane; i < kTile * chunks; i += 32) {
    const int j = i / chunks, c = i % chunks;
    const int slot = slot_s[j];
    T* dst = tile + j * kre + c * kEpc;
    if (slot >= 0) __pipeline_memcpy_async(dst, cache + int64_t(slot) * kv_row + head_off + c * kEpc, 16);
    else *reinterpret_cast<float4*>(dst) = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  __pipeline_commit();
  __pipeline_wait_prior(0);
  __syncwarp();
}

template <typename T, int DPL, int R>
__global__ void __launch_bounds__(kWarps * 32) paged_attention_kernel(AttentionParams p) {
  pdl_begin();
  extern __shared__ float4 smem_raw[];
  char* smem = reinterpret_cast<char*>(smem_raw);
  const int hd = p.head_dim;
  const SmemLayout lay = smem_layout<T>(hd, R);
  float* q_s = reinterpret_cast<float*>(smem + lay.q);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const int group = p.heads / p.kv_heads;
  const int seq = (p.multi_only ? p.multi_first : 0) + int(blockIdx.y);
  const int kvh = blockIdx.z / p.num_splits, split = blockIdx.z % p.num_splits;
  const int q0 = p.q_start[seq], q_len = p.q_start[seq + 1] - q0;
  if (p.flash_min_q > 0 && q_len >= p.flash_min_q) return;  // on tensor cores (flash_prefill.cu)
  if (p.multi_only && q_len == 1) return;                    // on tensor cores (flash_decode.cu)
  const int ctx = p.ctx_len[seq];
  const int row0 = blockIdx.x * R;
  const int nrows = min(R, q_len * group - row0);
  if (nrows <= 0) return;

  // Keys this block reads: the union of its rows' causal (and windowed) ranges, cut to its split.
  const int pos_first = ctx - q_len + row0 / group, pos_last = ctx - q_len + (row0 + nrows - 1) / group;
  int klo = p.sliding_window > 0 ? max(0, pos_first - p.sliding_window + 1) : 0;
  int khi = pos_last + 1;
  if (p.num_splits > 1) {
    const int chunk = (ctx + p.num_splits * kTile - 1) / (p.num_splits * kTile) * kTile;
    klo = max(klo, split * chunk);
    khi = min(khi, (split + 1) * chunk);
  }

  // The rows' queries, scaled, as float.
  for (int i = threadIdx.x; i < R * hd; i += blockDim.x) {
    const int r = i / hd, d = i % hd;
    float v = 0.0f;
    if (r < nrows) {
      const int row = row0 + r;
      const int64_t tok = q0 + row / group;
      const int head = kvh * group + row % group;
      v = to_f(static_cast<const T*>(p.q)[tok * p.q_stride + int64_t(head) * hd + d]) * p.scale;
    }
    q_s[i] = v;
  }
  __syncthreads();

  int pos[R], lo[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    pos[r] = r < nrows ? ctx - q_len + (row0 + r) / group : -1;  // -1: a padding row sees no key
    lo[r] = p.sliding_window > 0 ? pos[r] - p.sliding_window + 1 : 0;
  }

  float m[R], l[R], acc[R][DPL];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int e = 0; e < DPL; ++e) acc[r][e] = 0.0f;
  }

  const int kre = k_row_elems<T>(hd);
  T* k_s = reinterpret_cast<T*>(smem + lay.k) + size_t(warp) * kTile * kre;
  int* slot_s = reinterpret_cast<int*>(smem + lay.k + size_t(kWarps) * kTile * kre * sizeof(T)) + warp * kTile;
  float* p_s = reinterpret_cast<float*>(smem + lay.p) + size_t(warp) * R * kTile;
  const T* k_cache = static_cast<const T*>(p.k_cache);
  const T* v_cache = static_cast<const T*>(p.v_cache);
  const int32_t* table = p.block_table + int64_t(seq) * p.max_blocks_per_seq;
  const int64_t kv_row = int64_t(p.kv_heads) * hd;
  const int chunks = hd * int(sizeof(T)) / 16;  // 16-byte chunks per key row
  constexpr int kEpc = 16 / int(sizeof(T));     // elements per chunk
  const int d0 = lane * DPL;

  const int ntiles = khi > klo ? (khi - klo + kTile - 1) / kTile : 0;
  for (int tile = warp; tile < ntiles; tile += kWarps) {
    const int kbase = klo + tile * kTile;
    {
      const int kp = kbase + lane;
      slot_s[lane] = kp < khi ? table[kp / p.block_size] * p.block_size + kp % p.block_size : -1;
    }
    __syncwarp();
    load_tile(k_s, k_cache, slot_s, kv_row, int64_t(kvh) * hd, chunks, kre, lane);

    // Scores: lane j against key kbase + j.
    float s[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = 0.0f;
    const T* krow = k_s + lane * kre;
    for (int c = 0; c < chunks; ++c) {
      const float4 raw = *reinterpret_cast<const float4*>(krow + c * kEpc);
      const T* kv = reinterpret_cast<const T*>(&raw);
      float kf[kEpc];
#pragma unroll
      for (int e = 0; e < kEpc; ++e) kf[e] = to_f(kv[e]);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float4* qr = reinterpret_cast<const float4*>(q_s + r * hd + c * kEpc);
#pragma unroll
        for (int e4 = 0; e4 < kEpc / 4; ++e4) {
          const float4 q4 = qr[e4];
          s[r] += q4.x * kf[e4 * 4] + q4.y * kf[e4 * 4 + 1] + q4.z * kf[e4 * 4 + 2] + q4.w * kf[e4 * 4 + 3];
        }
      }
    }

    // Online softmax per row; p goes to shared memory for the value pass.
    const int kp = kbase + lane;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const bool ok = kp < khi && kp <= pos[r] && kp >= lo[r];
      const float sv = ok ? s[r] : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(sv));
      float pr = 0.0f, alpha = 1.0f;
      if (m_new != -INFINITY) {
        pr = ok ? __expf(sv - m_new) : 0.0f;
        alpha = m[r] == -INFINITY ? 0.0f : __expf(m[r] - m_new);
      }
      m[r] = m_new;
      l[r] = l[r] * alpha + pr;
#pragma unroll
      for (int e = 0; e < DPL; ++e) acc[r][e] *= alpha;
      p_s[r * kTile + lane] = pr;
    }
    __syncwarp();

    // Values, into the tile buffer the keys are done with; lane owns output dims [d0, d0 + DPL).
    load_tile(k_s, v_cache, slot_s, kv_row, int64_t(kvh) * hd, chunks, kre, lane);
    const int nkeys = min(kTile, khi - kbase);
    if (d0 < hd) {
      for (int j = 0; j < nkeys; ++j) {
        const VecT<T, DPL> vv = *reinterpret_cast<const VecT<T, DPL>*>(k_s + j * kre + d0);
#pragma unroll
        for (int r = 0; r < R; ++r) {
              const float pj = p_s[r * kTile + j];
#pragma unroll
          for (int e = 0; e < DPL; ++e) acc[r][e] += pj * to_f(vv.v[e]);
        }
      }
    }
    __syncwarp();
  }

  // Merge the warps: (m, l, acc) per warp and row into shared memory, then combine.
#pragma unroll
  for (int r = 0; r < R; ++r) l[r] = warp_sum(l[r]);
  __syncthreads();  // every warp is done with its tile area
  float* c_m = reinterpret_cast<float*>(smem + lay.combine);
  float* c_l = c_m + kWarps * R;
  float* c_acc = c_l + kWarps * R;
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      c_m[warp * R + r] = m[r];
      c_l[warp * R + r] = l[r];
    }
  }
  if (d0 < hd) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int e = 0; e < DPL; ++e) c_acc[(warp * R + r) * hd + d0 + e] = acc[r][e];
  }
  __syncthreads();

  for (int i = threadIdx.x; i < nrows * hd; i += blockDim.x) {
    const int r = i / hd, d = i % hd;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, c_m[w * R + r]);
    float sum = 0.0f, a = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float mw = c_m[w * R + r];
        const float f = mw == -INFINITY ? 0.0f : __expf(mw - mx);
        sum += c_l[w * R + r] * f;
        a += c_acc[(w * R + r) * hd + d] * f;
      }
    }
    const int row = row0 + r;
    const int64_t tok = q0 + row / group;
    const int head = kvh * group + row % group;
    if (p.num_splits == 1) {
      static_cast<T*>(p.out)[tok * p.out_stride + int64_t(head) * hd + d] = from_f<T>(a / sum);
    } else {
      float* part = p.partial + ((tok * p.heads + head) * p.num_splits + split) * (hd + 2);
      part[d] = a;
      if (d == 0) {
        part[hd] = mx;
        part[hd + 1] = sum;
      }
    }
  }
}

// Merges the splits of each (token, head): out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M).
// The splits' maxima and sums are read at once by one warp and every split's value of a dim at once
// (a chain of loads per split made this kernel ~2-3 us of a decode layer's attention).
static_assert(kMaxSplits <= 32, "combine_splits_kernel reads the splits' maxima and sums with one warp");
template <typename T, bool EarlyNext>
__global__ void combine_splits_kernel(AttentionParams p) {
  const unsigned long long t0 = trace_now();
  pdl_begin<EarlyNext>();
  trace_mark(0, t0);
  __shared__ float weight[kMaxSplits], total;
  const int64_t tok = blockIdx.x;
  const int head = blockIdx.y, hd = p.head_dim, S = p.num_splits;
  const float* part = p.partial + (tok * p.heads + head) * S * (hd + 2);
  // Every split's value of the thread's first dim, loaded beside the maxima and sums: one round trip
  // to L2 before the merge, not two (~0.7 of the 2.7 us this kernel took in a decode layer, H200,
  // step tracer: bench/RESULTS.md session 23).
  const int d0 = int(threadIdx.x);
  float first[kMaxSplits];
#pragma unroll
  for (int s = 0; s < kMaxSplits; ++s) first[s] = s < S && d0 < hd ? part[s * (hd + 2) + d0] : 0.0f;
  if (threadIdx.x < 32) {
    const int s = int(threadIdx.x);
    const float m = s < S ? part[s * (hd + 2) + hd] : -INFINITY, l = s < S ? part[s * (hd + 2) + hd + 1] : 0.0f;
    const float mx = warp_max(m), f = m == -INFINITY ? 0.0f : __expf(m - mx);
    const float sum = warp_sum(l * f);
    weight[s] = f;
    if (s == 0) total = sum;
  }
  __syncthreads();
  trace_mark(1);
  for (int d = d0; d < hd; d += blockDim.x) {
    float a = 0.0f;
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s)
      if (s < S) a += (d == d0 ? first[s] : part[s * (hd + 2) + d]) * weight[s];
    static_cast<T*>(p.out)[tok * p.out_stride + int64_t(head) * hd + d] = from_f<T>(a / total);
  }
  trace_mark(3);
}

// After a kernel that wrote num_splits > 1 partial results: the merge.
template <typename T>
cudaError_t combine_splits(const AttentionParams& p, cudaStream_t stream) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || p.num_splits == 1) return e;
  const unsigned threads = p.head_dim >= 128 ? 128 : (p.head_dim + 31) / 32 * 32;
  // APUS_CUDA_EARLY_MERGE=1 (session 23's pending experiment): the next kernel (o_proj) launches as
  // the merge starts, so that its blocks, whose launch takes ~2 us, are in place when the merge ends;
  // with APUS_CUDA_O_NO_PRELOAD=1 (quant.cu) they load nothing meanwhile (session 13's early merge
  // lost 8 % with o's codes loading during attention).
  static const bool early = env_switch("APUS_CUDA_EARLY_MERGE", false);
  launch_kernel(early ? combine_splits_kernel<T, true> : combine_splits_kernel<T, false>,
                dim3(unsigned(p.tokens), unsigned(p.heads)), threads, 0, stream, p);
  return cudaGetLastError();
}

template <typename T, int DPL, int R>
cudaError_t launch_rows(const AttentionParams& p, cudaStream_t stream) {
  const size_t smem = smem_layout<T>(p.head_dim, R).total;
  if (const cudaError_t e = allow_shared_memory<paged_attention_kernel<T, DPL, R>>(smem); e != cudaSuccess) return e;
  const int group = p.heads / p.kv_heads;
  // Beside the prefill kernel this one serves only sequences of fewer than flash_min_q new tokens:
  // blocks for more rows would all return at once (at a 16,384-token step with 1,000 decodes, ~0.4
  // million of them a layer).
  const int64_t q_len = p.flash_min_q > 0 ? std::min(p.max_q_len, p.flash_min_q - 1) : p.max_q_len;
  const int seqs = p.multi_only ? p.multi_end - p.multi_first : p.num_seqs;
  const dim3 grid(ceil_div(q_len * group, R), unsigned(seqs), unsigned(p.kv_heads * p.num_splits));
  launch_kernel(paged_attention_kernel<T, DPL, R>, grid, kWarps * 32, smem, stream, p);
  return combine_splits<T>(p, stream);
}

// 16 rows per block (8 for head_dim > 128); 8 where every sequence's rows fit in 8 (decode steps
// with up to 8 query heads per kv head): a block's score and value work is per row, used or not,
// so a decode block of Qwen2.5-7B (7 heads per kv head) did 16/7 of the work it needs.
template <typename T, int DPL>
cudaError_t launch(const AttentionParams& p, cudaStream_t stream) {
  constexpr int R = DPL >= 8 ? 8 : 16;
  if (R > 8 && int64_t(p.max_q_len) * (p.heads / p.kv_heads) <= 8) return launch_rows<T, DPL, 8>(p, stream);
  return launch_rows<T, DPL, R>(p, stream);
}

}  // namespace

int attention_splits(const AttentionParams& p, int multiprocessors) {
  const int group = p.heads / p.kv_heads;
  const int rows = rows_per_block(dims_per_lane(p.head_dim));
  const int64_t blocks = int64_t(p.num_seqs) * ceil_div(int64_t(p.max_q_len) * group, rows) * p.kv_heads;
  if (blocks >= multiprocessors || p.max_ctx_len < 4 * kTile) return 1;
  // Enough blocks for about two waves, each split at least 128 keys long.
  const int64_t want = std::min<int64_t>(ceil_div(2 * multiprocessors, blocks), ceil_div(p.max_ctx_len, 4 * kTile));
  return int(std::clamp<int64_t>(want, 1, kMaxSplits));
}

size_t attention_scratch_floats(const AttentionParams& p) {
  return p.num_splits > 1 ? size_t(p.tokens) * p.heads * p.num_splits * (p.head_dim + 2) : 0;
}

size_t attention_smem_bytes(const AttentionParams& p) {
  const int dpl = dims_per_lane(p.head_dim), rows = rows_per_block(dpl);
  switch (p.dt) {
    case DType::F32: return smem_layout<float>(p.head_dim, rows).total;
    case DType::F16: return smem_layout<__half>(p.head_dim, rows).total;
    default: return smem_layout<__nv_bfloat16>(p.head_dim, rows).total;
  }
}

// Up to three kernels by the sequences' new tokens: one (flash_decode.cu), kFlashMinQ or more
// (flash_prefill.cu), the rest and whatever those two do not apply to (the CUDA-core kernel above);
// then the merge of the splits, if any. A mixed step's decodes used to go to the CUDA-core kernel:
// the offline run's 16,384-token steps (prefill chunks beside up to ~1,000 decodes) spent 1.21 ms a
// layer in attention, 0.95 ms with them on tensor cores (H100, bench/RESULTS.md session 15).
cudaError_t paged_attention(const AttentionParams& params, cudaStream_t stream) {
  if (params.tokens == 0) return cudaSuccess;
  AttentionParams p = params;
  p.flash_min_q = 0;
  p.multi_only = false;
  if (p.multi_end == 0 && p.max_q_len > 1) p.multi_first = 0, p.multi_end = p.num_seqs;  // range not given
  if (flash_decode_applies(p)) {
    if (const cudaError_t e = flash_decode(p, stream); e != cudaSuccess) return e;
    p.multi_only = true;
  }
  p.multi_only = p.multi_only || (p.single_seqs == 0 && p.max_q_len > 1);
  if (flash_prefill_applies(p)) {
    if (const cudaError_t e = flash_prefill(p, stream); e != cudaSuccess) return e;
    p.flash_min_q = kFlashMinQ;  // the rest (short chunks, decodes unless flash_decode took them) below
  }
  // Nothing left for the CUDA-core kernel: a decode step on tensor cores, or a step whose
  // multi-token sequences all went to flash_prefill and its decodes (if any) to flash_decode.
  if (p.multi_only && (p.max_q_len == 1 || (p.flash_min_q > 0 && p.min_multi_q >= p.flash_min_q))) {
    APUS_DISPATCH_FLOAT(p.dt, T, { return combine_splits<T>(p, stream); });
    return cudaErrorInvalidValue;
  }
  APUS_DISPATCH_FLOAT(p.dt, T, {
    switch (dims_per_lane(p.head_dim)) {
      case 1: return launch<T, 1>(p, stream);
      case 2: return launch<T, 2>(p, stream);
      case 4: return launch<T, 4>(p, stream);
      case 8: return launch<T, 8>(p, stream);
      default: return cudaErrorInvalidValue;
    }
  });
  return cudaErrorInvalidValue;
}

}  // namespace apus::cuda
