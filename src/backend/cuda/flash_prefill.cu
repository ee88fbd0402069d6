// Prefill attention on tensor cores (FlashAttention-2 style) over the paged KV cache, for 16-bit
// activations and head_dim 64 or 128.
//
// A block of 4 warps takes 64 query tokens of one sequence and one query head; each warp owns 16
// of them. The block walks the sequence's keys (cached prefix and the new tokens alike, causal and
// windowed) in tiles of 64, gathered from the cache's blocks into shared memory with cp.async (the
// values' copy overlaps the score computation). Scores S = Q K^T and the output O += P V run as
// mma.sync m16n8k16 with float32 accumulation; the softmax is online, in registers: P is rounded
// to the activation dtype for the P V product, as FlashAttention does. Shared memory rows are
// padded by 16 bytes so that ldmatrix reads are free of bank conflicts.
//
// Sequences with fewer new tokens than kFlashMinQ (decodes, short chunks) are left to the CUDA-core
// kernel in attention.cu, which reads each key once for all heads of a GQA group.
#include <cuda_pipeline.h>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/flash_tile.cuh"
#include "backend/cuda/kernels.h"

namespace apus::cuda {

namespace {

constexpr int kRows = 64;  // query tokens per block (16 per warp)
constexpr int kKeys = 64;  // keys per tile

template <typename T, int HD>
constexpr size_t flash_smem() { return size_t(kRows + 2 * kKeys) * padded_row<HD>() * sizeof(T) + kKeys * sizeof(int); }

// Copies `rows` rows of HD elements into shared memory (row stride padded_row), 16 bytes per
// cp.async; rows whose source is null become zeros.
template <typename T, int HD, typename Src>
__device__ __forceinline__ void load_rows(T* dst, int rows, Src src) {
  constexpr int kChunks = HD * int(sizeof(T)) / 16, kEpc = 16 / int(sizeof(T));
  for (int i = threadIdx.x; i < rows * kChunks; i += 128) {
    const int r = i / kChunks, c = i % kChunks;
    T* d = dst + r * padded_row<HD>() + c * kEpc;
    const T* s = src(r);
    if (s != nullptr) __pipeline_memcpy_async(d, s + c * kEpc, 16);
    else *reinterpret_cast<float4*>(d) = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  __pipeline_commit();
}

template <typename T, int HD>
__global__ void __launch_bounds__(128) flash_prefill_kernel(AttentionParams p, int min_q) {
  pdl_begin();
  constexpr int LD = padded_row<HD>();
  extern __shared__ float4 smem_raw[];
  T* q_s = reinterpret_cast<T*>(smem_raw);
  T* k_s = q_s + kRows * LD;
  T* v_s = k_s + kKeys * LD;
  int* slot_s = reinterpret_cast<int*>(v_s + kKeys * LD);

  const int seq = p.multi_first + int(blockIdx.y), head = blockIdx.z;
  const int q0 = p.q_start[seq], q_len = p.q_start[seq + 1] - q0;
  const int row0 = blockIdx.x * kRows;
  if (q_len < min_q || row0 >= q_len) return;
  const int ctx = p.ctx_len[seq];
  const int nrows = min(kRows, q_len - row0);
  const int first_pos = ctx - q_len + row0;  // position of the block's first query
  const int kvh = head / (p.heads / p.kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

  const T* q = static_cast<const T*>(p.q);
  load_rows<T, HD>(q_s, kRows, [&](int r) -> const T* {
    return r < nrows ? q + int64_t(q0 + row0 + r) * p.q_stride + int64_t(head) * HD : nullptr;
  });

  const int khi = first_pos + nrows;  // keys [klo, khi) cover every query's causal range
  const int klo = p.sliding_window > 0 ? max(0, first_pos - p.sliding_window + 1) : 0;
  const int32_t* table = p.block_table + int64_t(seq) * p.max_blocks_per_seq;
  const int64_t kv_row = int64_t(p.kv_heads) * HD, head_off = int64_t(kvh) * HD;
  const T* k_cache = static_cast<const T*>(p.k_cache);
  const T* v_cache = static_cast<const T*>(p.v_cache);

  // This thread's two query rows (g and g + 8 of the warp's 16): positions and validity.
  int qpos[2];
  bool qok[2];
  for (int h = 0; h < 2; ++h) {
    const int r = warp * 16 + g + 8 * h;
    qpos[h] = first_pos + r;
    qok[h] = r < nrows;
  }
  const float scale_log2 = p.scale * 1.4426950408889634f;  // softmax in base 2

  uint32_t qf[HD / 16][4];
  float o[HD / 8][4];
  for (int n = 0; n < HD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  for (int kbase = klo; kbase < khi; kbase += kKeys) {
    __syncthreads();  // every warp is done with the previous tile
    if (threadIdx.x < kKeys) {
      const int kp = kbase + threadIdx.x;
      slot_s[threadIdx.x] = kp < khi ? table[kp / p.block_size] * p.block_size + kp % p.block_size : -1;
    }
    __syncthreads();
    load_rows<T, HD>(k_s, kKeys, [&](int r) -> const T* {
      return slot_s[r] >= 0 ? k_cache + int64_t(slot_s[r]) * kv_row + head_off : nullptr;
    });
    load_rows<T, HD>(v_s, kKeys, [&](int r) -> const T* {
      return slot_s[r] >= 0 ? v_cache + int64_t(slot_s[r]) * kv_row + head_off : nullptr;
    });
    __pipeline_wait_prior(1);  // the queries (first tile) and the keys are in; the values may not be
    __syncthreads();
    if (kbase == klo)
      for (int kk = 0; kk < HD / 16; ++kk) ldmatrix_x4(qf[kk], q_s + (warp * 16 + lane % 16) * LD + kk * 16 + (lane / 16) * 8);

    // S = Q K^T for the warp's 16 rows and the tile's 64 keys; mask (causal, window, past the
    // keys), then the online softmax of each row.
    float s[kKeys / 8][4];
    tile_scores<T, HD, kKeys>(s, qf, k_s, lane);
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e / 2, kp = kbase + n * 8 + 2 * t + (e % 2);
        const bool ok = qok[h] && kp <= qpos[h] && (p.sliding_window <= 0 || kp > qpos[h] - p.sliding_window);
        s[n][e] = ok ? s[n][e] * scale_log2 : -INFINITY;
      }
    tile_softmax<kKeys, HD>(s, m, l, o);

    // O += P V.
    __pipeline_wait_prior(0);
    __syncthreads();
    tile_values<T, HD, kKeys>(o, s, v_s, lane);
  }

  // Normalise (the row sums are spread over the 4 threads of a row) and store.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
  }
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (!qok[h]) continue;
    const float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
    T* row = out + int64_t(q0 + row0 + warp * 16 + g + 8 * h) * p.out_stride + int64_t(head) * HD;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
      *reinterpret_cast<uint32_t*>(row + n * 8 + 2 * t) = pack2<T>(o[n][2 * h] * inv, o[n][2 * h + 1] * inv);
  }
}

template <typename T, int HD>
cudaError_t launch_flash(const AttentionParams& p, cudaStream_t stream) {
  constexpr size_t smem = flash_smem<T, HD>();
  if (const cudaError_t e = allow_shared_memory<flash_prefill_kernel<T, HD>>(smem); e != cudaSuccess) return e;
  // Only the sequences that may have kFlashMinQ new tokens or more: a step's decodes get no blocks.
  const int seqs = p.multi_end - p.multi_first;  // paged_attention sets the range where none was given
  const dim3 grid(ceil_div(p.max_q_len, kRows), unsigned(seqs), unsigned(p.heads));
  launch_kernel(flash_prefill_kernel<T, HD>, grid, 128, smem, stream, p, kFlashMinQ);
  return cudaGetLastError();
}

}  // namespace

bool flash_prefill_applies(const AttentionParams& p) {
  const size_t es = p.dt == DType::F32 ? 4 : 2;
  return p.dt != DType::F32 && (p.head_dim == 64 || p.head_dim == 128) && p.max_q_len >= kFlashMinQ &&
         p.num_splits == 1 && (p.q_stride * es) % 16 == 0 && (p.out_stride * es) % 16 == 0;
}

cudaError_t flash_prefill(const AttentionParams& p, cudaStream_t stream) {
  if (p.dt == DType::BF16) {
    if (p.head_dim == 64) return launch_flash<__nv_bfloat16, 64>(p, stream);
    if (p.head_dim == 128) return launch_flash<__nv_bfloat16, 128>(p, stream);
  } else if (p.dt == DType::F16) {
    if (p.head_dim == 64) return launch_flash<__half, 64>(p, stream);
    if (p.head_dim == 128) return launch_flash<__half, 128>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace apus::cuda
