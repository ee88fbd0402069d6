// Decode attention on tensor cores: steps in which every sequence has one new token, 16-bit
// activations, head_dim 64 or 128, 2..16 query heads per kv head (flash_decode_applies).
//
// A block takes one sequence, one kv head and one split of its keys. The group's query heads are
// the rows of one 16-row mma tile (the rows past the group are zeros), shared by the block's 4
// warps, which take turns over 32-key tiles: a warp gathers its tile's keys and values from the
// cache's blocks into its own shared memory with cp.async (the values' copy overlaps the scores),
// computes S = Q K^T and O += P V with mma.sync m16n8k16 (float32 accumulation; P rounded to the
// activation dtype for P V, as in flash_prefill.cu) and keeps its own online softmax. The warps'
// (m, l, O) are merged through shared memory at the end; with several splits (few sequences, long
// contexts: attention_splits) the block writes them unnormalised for combine_splits_kernel, in the
// CUDA-core kernel's format. Each key is read once for the whole group, as there, but the
// arithmetic is on tensor cores: at 256 decodes of the Qwen2.5-7B shape the CUDA-core kernel took
// ~190 us per layer against ~110 us of KV bytes (bench/RESULTS.md).
#include <cuda_pipeline.h>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/flash_tile.cuh"
#include "backend/cuda/kernels.h"

namespace apus::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kKeys = 32;  // keys per warp tile
constexpr int kRows = 16;  // the group's query heads, padded to one mma row tile

// Shared memory: the queries [kRows][padded_row], then each warp's K tile, V tile ([kKeys][padded_row]
// each) and key slots; the final merge reuses the warps' area.
template <typename T, int HD>
__host__ __device__ constexpr size_t tile_bytes() { return size_t(kKeys) * padded_row<HD>() * sizeof(T); }
template <typename T, int HD>
__host__ __device__ constexpr size_t warp_bytes() { return 2 * tile_bytes<T, HD>() + kKeys * sizeof(int); }
// Row stride (floats) of the warps' outputs in the final merge: 8 past HD, so that the float2 stores of
// a C fragment's rows g = 0..3 (a half warp) fall in 32 different banks. With HD itself every row
// began in bank 0 and the 8 rows of a fragment conflicted 8 ways: ~1.2 of the 2.2 us a block spent
// merging its warps (H200, step tracer, bench/RESULTS.md session 23).
template <int HD>
__host__ __device__ constexpr int merge_row() { return HD + 8; }
template <typename T, int HD>
constexpr size_t decode_smem() {
  const size_t warps = kWarps * warp_bytes<T, HD>();
  const size_t merge = size_t(kWarps) * kRows * (merge_row<HD>() + 2) * sizeof(float);
  return size_t(kRows) * padded_row<HD>() * sizeof(T) + (warps > merge ? warps : merge);
}

template <typename T, int HD>
__global__ void __launch_bounds__(kWarps * 32) flash_decode_kernel(AttentionParams p) {
  const unsigned long long t0 = trace_now();
  constexpr int LD = padded_row<HD>();
  constexpr int kChunks = HD * int(sizeof(T)) / 16, kEpc = 16 / int(sizeof(T));  // 16-byte chunks of a row
  extern __shared__ float4 smem_raw[];
  char* smem = reinterpret_cast<char*>(smem_raw);
  T* q_s = reinterpret_cast<T*>(smem);
  char* area = smem + size_t(kRows) * LD * sizeof(T);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  T* k_s = reinterpret_cast<T*>(area + size_t(warp) * warp_bytes<T, HD>());
  T* v_s = k_s + kKeys * LD;
  int* slot_s = reinterpret_cast<int*>(v_s + kKeys * LD);

  // Until pdl_begin() only what was written before the kernel before this one started: the step's
  // tables (uploaded before its first kernel) and the keys and values of earlier steps. The query
  // and the new position's key and value come from the kernel before (RoPE and the K/V store).
  const int group = p.heads / p.kv_heads;
  const int seq = blockIdx.x;
  const int kvh = int(blockIdx.y) / p.num_splits, split = int(blockIdx.y) % p.num_splits;
  const int64_t tok = p.q_start[seq];
  if (p.q_start[seq + 1] - tok != 1) {  // a mixed step's prefill chunk (or a sequence with no token)
    pdl_begin();  // completion stays ordered along the stream
    return;
  }
  const int ctx = p.ctx_len[seq], pos = ctx - 1;
  int klo = p.sliding_window > 0 ? max(0, pos - p.sliding_window + 1) : 0, khi = ctx;
  if (p.num_splits > 1) {
    const int chunk = (ctx + p.num_splits * kKeys - 1) / (p.num_splits * kKeys) * kKeys;
    klo = max(klo, split * chunk);
    khi = min(khi, (split + 1) * chunk);
  }
  const int32_t* table = p.block_table + int64_t(seq) * p.max_blocks_per_seq;
  const int64_t kv_row = int64_t(p.kv_heads) * HD, head_off = int64_t(kvh) * HD;
  const T* k_cache = static_cast<const T*>(p.k_cache);
  const T* v_cache = static_cast<const T*>(p.v_cache);
  const int ntiles = khi > klo ? (khi - klo + kKeys - 1) / kKeys : 0;
  // 16-byte chunk c of key row j (its slot in slot_s) from `cache` into the tile `dst`.
  auto copy_chunk = [&](T* dst, const T* cache, int j, int c) {
    __pipeline_memcpy_async(dst + j * LD + c * kEpc, cache + int64_t(slot_s[j]) * kv_row + head_off + c * kEpc, 16);
  };
  // The warp's copy of a tile's keys and values into shared memory (two commit groups: keys, then
  // values); keys past the split's end are zeros. Row `skip` (the new position, -1 for none) is left
  // for later.
  auto issue = [&](int kbase, int skip) {
    __syncwarp();  // every lane is done reading the previous tile
    {
      const int kp = kbase + lane;
      slot_s[lane] = kp < khi ? table[kp / p.block_size] * p.block_size + kp % p.block_size : -1;
    }
    __syncwarp();
    for (int half = 0; half < 2; ++half) {
      const T* cache = half == 0 ? k_cache : v_cache;
      T* dst = half == 0 ? k_s : v_s;
      for (int i = lane; i < kKeys * kChunks; i += 32) {
        const int j = i / kChunks, c = i % kChunks;
        if (kbase + j == skip) continue;
        if (slot_s[j] >= 0) copy_chunk(dst, cache, j, c);
        else *reinterpret_cast<float4*>(dst + j * LD + c * kEpc) = make_float4(0.f, 0.f, 0.f, 0.f);
      }
      __pipeline_commit();
    }
  };
  // The warp's first tile before the wait (most of a short split's keys): its copy overlaps the
  // kernels before this one. The new position is left for after the wait where this split holds it
  // (with a sliding window a split's tiles need not end at its end: a tile past khi has no slot
  // there, and copying row `pos` anyway read before the cache; compute-sanitizer, session 15).
  const int fresh = pos < khi ? pos : -1;
  if (warp < ntiles) issue(klo + warp * kKeys, fresh);
  pdl_begin();
  trace_mark(0, t0);

  // The group's queries (rows past it are zeros), as the mma's A fragments; the new position's key
  // and value where the first tile holds it.
  const T* q = static_cast<const T*>(p.q);
  for (int i = threadIdx.x; i < kRows * kChunks; i += kWarps * 32) {
    const int r = i / kChunks, c = i % kChunks;
    T* d = q_s + r * LD + c * kEpc;
    if (r < group) __pipeline_memcpy_async(d, q + tok * p.q_stride + int64_t(kvh * group + r) * HD + c * kEpc, 16);
    else *reinterpret_cast<float4*>(d) = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  if (const int j = fresh - (klo + warp * kKeys); warp < ntiles && fresh >= 0 && j >= 0 && j < kKeys) {
    for (int i = lane; i < 2 * kChunks; i += 32)
      copy_chunk(i < kChunks ? k_s : v_s, i < kChunks ? k_cache : v_cache, j, i % kChunks);
  }
  __pipeline_commit();
  __pipeline_wait_prior(0);  // the queries, and the whole first tile
  __syncthreads();
  trace_mark(1);
  uint32_t qf[HD / 16][4];
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) ldmatrix_x4(qf[kk], q_s + (lane % 16) * LD + kk * 16 + (lane / 16) * 8);
  const bool qok[2] = {g < group, g + 8 < group};  // this thread's rows g and g + 8
  const float scale_log2 = p.scale * 1.4426950408889634f;  // softmax in base 2

  float o[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  for (int tile = warp; tile < ntiles; tile += kWarps) {
    const int kbase = klo + tile * kKeys;
    if (tile != warp) issue(kbase, -1);
    __pipeline_wait_prior(1);  // the keys are in; the values may not be
    __syncwarp();

    // S = Q K^T for the 16 rows and the tile's 32 keys; mask (padding rows, keys past the split's
    // end), then the online softmax of each row.
    float s[kKeys / 8][4];
    tile_scores<T, HD, kKeys>(s, qf, k_s, lane);
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e / 2, kp = kbase + n * 8 + 2 * t + (e % 2);
        s[n][e] = qok[h] && kp < khi ? s[n][e] * scale_log2 : -INFINITY;
      }
    tile_softmax<kKeys, HD>(s, m, l, o);

    // O += P V.
    __pipeline_wait_prior(0);
    __syncwarp();
    tile_values<T, HD, kKeys>(o, s, v_s, lane);
  }

  // The row sums are spread over the 4 threads of a row; then the warps' results are merged.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
  }
  __syncthreads();  // every warp is done with its tiles
  trace_mark(2);
  float* c_m = reinterpret_cast<float*>(area);  // [warp][row]
  float* c_l = c_m + kWarps * kRows;
  float* c_o = c_l + kWarps * kRows;  // [warp][row][merge_row<HD>()]
  constexpr int LO = merge_row<HD>();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp * kRows + g + 8 * h;
    if (t == 0) c_m[r] = m[h], c_l[r] = l[h];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
      *reinterpret_cast<float2*>(c_o + r * LO + n * 8 + 2 * t) = make_float2(o[n][2 * h], o[n][2 * h + 1]);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < group * HD; i += kWarps * 32) {
    const int r = i / HD, d = i % HD, head = kvh * group + r;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, c_m[w * kRows + r]);
    float sum = 0.0f, a = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float mw = c_m[w * kRows + r];
        const float f = mw == -INFINITY ? 0.0f : exp2f(mw - mx);
        sum += c_l[w * kRows + r] * f;
        a += c_o[(w * kRows + r) * LO + d] * f;
      }
    }
    if (p.num_splits == 1) {
      static_cast<T*>(p.out)[tok * p.out_stride + int64_t(head) * HD + d] = from_f<T>(sum > 0.0f ? a / sum : 0.0f);
    } else {  // unnormalised, the maximum in natural-log units (combine_splits_kernel's format)
      float* part = p.partial + ((tok * p.heads + head) * p.num_splits + split) * (HD + 2);
      part[d] = a;
      if (d == 0) {
        part[HD] = mx == -INFINITY ? -INFINITY : mx * 0.6931471805599453f;
        part[HD + 1] = sum;
      }
    }
  }
  trace_mark(3);
}

template <typename T, int HD>
cudaError_t launch_decode(const AttentionParams& p, cudaStream_t stream) {
  constexpr size_t smem = decode_smem<T, HD>();
  if (const cudaError_t e = allow_shared_memory<flash_decode_kernel<T, HD>>(smem); e != cudaSuccess) return e;
  const dim3 grid(unsigned(p.num_seqs), unsigned(p.kv_heads * p.num_splits));
  launch_kernel(flash_decode_kernel<T, HD>, grid, kWarps * 32, smem, stream, p);
  return cudaGetLastError();
}

}  // namespace

bool flash_decode_applies(const AttentionParams& p) {
  const size_t es = p.dt == DType::F32 ? 4 : 2;
  const int group = p.heads / p.kv_heads;
  // APUS_CUDA_FLASH_DECODE=0: the CUDA-core kernel instead (for comparison)
  static const bool on = env_switch("APUS_CUDA_FLASH_DECODE", true);
  return on && p.dt != DType::F32 && (p.head_dim == 64 || p.head_dim == 128) && p.single_seqs != 0 && group >= 2 &&
         group <= kRows && (p.q_stride * es) % 16 == 0;
}

cudaError_t flash_decode(const AttentionParams& p, cudaStream_t stream) {
  if (p.dt == DType::BF16) {
    if (p.head_dim == 64) return launch_decode<__nv_bfloat16, 64>(p, stream);
    if (p.head_dim == 128) return launch_decode<__nv_bfloat16, 128>(p, stream);
  } else if (p.dt == DType::F16) {
    if (p.head_dim == 64) return launch_decode<__half, 64>(p, stream);
    if (p.head_dim == 128) return launch_decode<__half, 128>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace apus::cuda
