// Launchers for the CUDA kernels (the .cu files beside this one). Plain pointers and sizes only, so
// that nvcc compiles nothing but kernels; the backend (cuda_backend.cpp) checks shapes and dtypes.
// `dt` is the activation dtype (F32, F16 or BF16); strides are in elements. Every launcher queues
// work on `stream` and returns cudaGetLastError().
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace apus::cuda {

// Fails (apus::Error) naming `what` when a CUDA runtime call did not succeed.
void check_cuda(cudaError_t e, const char* what);

#ifdef APUS_CUDA_TRACE
// The step tracer (trace.cu): true where this replay is the one to trace (then call
// trace_replay_end after queuing it).
bool trace_replay_begin(cudaStream_t stream);
void trace_replay_end(cudaStream_t stream);
#endif

// Kernels that validate indices record the first bad one here; the backend reports it as an
// apus::Error at its next synchronizing call (a kernel cannot throw).
struct DeviceError {
  int code;   // kErrNone, kErrTokenId, kErrSlot
  int value;  // the offending id or slot
};
enum : int { kErrNone = 0, kErrTokenId = 1, kErrSlot = 2 };

// table holds the rows of ids [first, first + rows); other ids in [0, vocab) give zero rows. An id
// -1 - j (j < drawn_n) is drawn[j] (Backend::embedding).
cudaError_t embedding(DType dt, const int32_t* ids, int64_t n, const int32_t* drawn, int64_t drawn_n, const void* table,
                      int64_t first, int64_t rows, int64_t vocab, int64_t hidden, void* out, int64_t out_stride,
                      DeviceError* err, cudaStream_t stream);
cudaError_t gather_rows(DType dt, const void* x, int64_t x_stride, const int32_t* rows, int64_t n, int64_t cols,
                        void* out, int64_t out_stride, cudaStream_t stream);
// RMSNorm of each `group`-column group of each row (groups per row = cols / group); out may alias x.
// early_next: where the vectorized kernel runs with one 16-byte chunk a thread (one group a row of
// at most 1,024 chunks, the decode rows measured), it lets the next kernel start before it waits for
// the one before it (pdl_begin<true>, device_util.cuh): for the next kernel's weight loads; that
// kernel may read nothing else before its own wait.
cudaError_t rms_norm(DType dt, const void* x, int64_t x_stride, const float* w, int64_t group, int64_t groups,
                     float eps, void* out, int64_t out_stride, int64_t rows, bool early_next, cudaStream_t stream);
// residual, x and out must not overlap.
cudaError_t add_rms_norm(DType dt, void* residual, int64_t res_stride, const void* x, int64_t x_stride,
                         const float* w, int64_t cols, float eps, void* out, int64_t out_stride, int64_t rows,
                         bool early_next, cudaStream_t stream);
// residual += x + x2 (that sum rounded to the dtype first, as a two-rank all-reduce rounds it),
// then add_rms_norm's norm; all contiguous [rows, cols] and 16-byte aligned rows of at most 4,096
// chunks (else cudaErrorInvalidValue, nothing launched).
cudaError_t add2_rms_norm(DType dt, void* residual, const void* x, const void* x2, const float* w, int64_t cols,
                          float eps, void* out, int64_t rows, cudaStream_t stream);
cudaError_t rope(DType dt, void* x, int64_t x_stride, int64_t rows, int heads, int head_dim, const float* cos,
                 const float* sin, int half, cudaStream_t stream);
// k, v rows of `row_elems` elements into the caches' slots ([num_slots, row_elems] each); slot -1
// (a padding token) is skipped.
cudaError_t store_kv(DType dt, const void* k, int64_t k_stride, const void* v, int64_t v_stride, const int32_t* slots,
                     int64_t rows, int64_t row_elems, void* k_cache, void* v_cache, int64_t num_slots, DeviceError* err,
                     cudaStream_t stream);
// rope() on qk's q_heads + kv_heads heads, then store_kv() of its last kv_heads heads (rotated) and
// v's into the caches' slots, in one kernel; the cache rows are kv_heads * head_dim elements.
cudaError_t rope_store_kv(DType dt, void* qk, int64_t qk_stride, int q_heads, int kv_heads, int head_dim,
                          const float* cos, const float* sin, int half, const void* v, int64_t v_stride,
                          const int32_t* slots, int64_t rows, void* k_cache, void* v_cache, int64_t num_slots,
                          DeviceError* err, cudaStream_t stream);
cudaError_t silu_mul(DType dt, const void* gate_up, int64_t gu_stride, void* out, int64_t out_stride, int64_t rows,
                     int64_t cols, cudaStream_t stream);
cudaError_t add(DType dt, void* x, int64_t x_stride, const void* y, int64_t y_stride, int64_t rows, int64_t cols,
                cudaStream_t stream);
// y[r, c] = bias[c] for `rows` rows; `dt` is y's dtype (F32 logits or the activation dtype).
cudaError_t bias_rows(DType dt, void* y, int64_t y_stride, const float* bias, int64_t rows, int64_t cols,
                     cudaStream_t stream);
// Decode-sized linear layer: y[m, n] = x[m, k] w[n, k]^T (+ bias[n] F32, or null) for m <= kGemvMaxRows,
// float32 accumulation; w and x in `dt`, y in `out_dt` (dt or F32). Strides in elements.
// silu: w is a gate_up matrix (gate's n / 2 rows, then up's) and y[m, n / 2] = silu(gate) * up in
// `dt`, bit for bit silu_mul of the unfused product; only where gemv_vectorized().
constexpr int kGemvMaxRows = 8;
cudaError_t gemv(DType dt, DType out_dt, const void* w, int64_t w_stride, const void* x, int64_t x_stride, int64_t m,
                 const float* bias, void* y, int64_t y_stride, int64_t n, int64_t k, cudaStream_t stream,
                 bool silu = false);
// Whether gemv() takes its vectorized kernel for these operands (16-byte rows and alignment).
bool gemv_vectorized(DType dt, const void* w, int64_t w_stride, const void* x, int64_t x_stride, int64_t k);
// Quantized linear layers (quant.cu). A GPTQ / AWQ weight as the backend keeps it on the device:
// qweight U8 [n, k * bits / 8] (row stride qw_stride bytes), columns in the order of the layer's
// perm, each 32-bit word holding 8 (4 bits) or 4 (8 bits) consecutive columns; for 4 bits the
// load-time repack (quant_repack.cpp) puts column 2p of the word at nibble p and column 2p + 1 at
// nibble p + 4. scales (fp16 bits) and zeros [n, groups], group_size a multiple of 32 dividing k.
// Where a row's codes are a whole number of 64-byte pieces (a decode warp's chunk of one column:
// k a multiple of 128 at 4 bits, 64 at 8), they are tiled (tile_rows 8): the pieces of 8 consecutive
// rows at the same k lie together, byte b of row r at (r / 8) * 8 * qw_stride + (b / 64) * 512 +
// (r % 8) * 64 + b % 64, and the buffer holds whole tiles (rows past n are zeros), so that each load
// instruction of the decode kernel reads 512 contiguous bytes instead of 8 rows' 64-byte pieces
// (H100, session 14: int4 single-stream decode 437 -> 446 tokens/s). Otherwise (tile_rows 1) rows
// follow each other, qw_stride bytes apart.
struct QuantArgs {
  const uint8_t* qweight;
  int64_t qw_stride;
  const uint16_t* scales;
  const uint8_t* zeros;
  int groups, group_size, bits;
  int64_t n, k;
  int tile_rows;
};
inline int quant_tile_rows(int64_t row_bytes) { return row_bytes % 64 == 0 ? 8 : 1; }
// y[m, n] = x[m, k] W^T (+ bias) on tensor cores for m <= kQuantMmaMaxRows; x in `dt` (BF16 or F16,
// 16-byte aligned rows, columns already in the weight's order), y in `dt` or F32. Up to
// kQuantGemvMaxRows rows take the decode kernel (weights as the mma's A operand), more the batch
// kernel (activations as A); a row's result depends on neither the rows beside it nor, within each
// of the two ranges, their number.
constexpr int kQuantMmaMaxRows = 64;
constexpr int kQuantGemvMaxRows = 8;
// Norm folding (Backend::linear_add_prescale / linear_rms_scaled) in the decode kernel: BF16, m <=
// kQuantGemvMaxRows, y in dt. A producer (residual set; not with silu): y = norm_w * residual after
// residual += the product (rounded), and sums[r][b] the squares of the new residual over block b's
// kNormFoldCols columns. A consumer (sums set, residual null): the product scaled per row by
// 1 / sqrt(sum of sums[r][0, parts) / cols + eps) before the bias (and the SiLU).
constexpr int kNormFoldCols = 16;  // Backend::kNormFoldCols: the decode kernel's columns a block
struct NormFold {
  void* residual = nullptr;
  int64_t res_stride = 0;
  const float* norm_w = nullptr;
  float* sums = nullptr;  // written by a producer, read by a consumer
  int64_t sums_stride = 0;
  int parts = 0;
  float cols = 0.0f, eps = 0.0f;
};
// silu (m <= kQuantGemvMaxRows, y in dt): w is a gate_up layer, y[m, n / 2] = silu(gate) * up as gemv's.
cudaError_t quant_matmul(DType dt, DType out_dt, const QuantArgs& w, const void* x, int64_t x_stride, int64_t m,
                         const float* bias, void* y, int64_t y_stride, cudaStream_t stream, bool silu = false,
                         const NormFold& fold = NormFold{});
// The whole weight as `dt` [n, k] (row stride out_stride), for a cuBLAS product (prefill, F32 models).
cudaError_t quant_dequantize(DType dt, const QuantArgs& w, void* out, int64_t out_stride, cudaStream_t stream);
// out[r, c] = x[r, perm[c]] (act-order layers' activations in the weight's column order).
cudaError_t gather_cols(DType dt, const void* x, int64_t x_stride, const int32_t* perm, int64_t rows, int64_t k,
                        void* out, int64_t out_stride, cudaStream_t stream);
// Keeps the GPU busy for about `ns` nanoseconds (the op profiler lets the host queue a step ahead).
cudaError_t spin(int64_t ns, cudaStream_t stream);
// Deterministic pseudo-random values in [-1, 1) (benchmark inputs: never time on zeros).
cudaError_t fill_random(DType dt, void* x, int64_t n, uint64_t seed, cudaStream_t stream);

// Token draws from rows of F32 logits [*, vocab] (row stride `stride`), one per SampleArgs, into
// out[i]; see sample.cu. `scratch` holds rows * vocab floats (null when every row is greedy).
struct SampleArgs {
  int32_t row, top_k;
  float temperature, top_p, min_p, u;
};
cudaError_t sample(const float* logits, int64_t stride, int64_t vocab, const SampleArgs* args, int rows,
                   float* scratch, int32_t* out, cudaStream_t stream);
// Rows that are all greedy, each row's slices in blocks of their own, then pick_greedy over the
// slices' bests: one block a row (sample) reads a 152k vocabulary in ~18 us on an H100, the slices
// of one row in a few. greedy_slices: how many (1: sample's one block a row is as good); candidates
// holds rows * 2 * slices floats.
constexpr int64_t kGreedySlice = 2048;  // columns a block takes at least
int greedy_slices(int64_t vocab, int rows, int multiprocessors);
cudaError_t greedy(const float* logits, int64_t stride, int64_t vocab, const SampleArgs* args, int rows, int slices,
                   float* candidates, int32_t* out, cudaStream_t stream);
// Backend::pick_greedy: out[r] = greedy_token of row r of candidates [rows, 2 * ranks] (contiguous).
cudaError_t pick_greedy(const float* candidates, int64_t rows, int ranks, int32_t* out, cudaStream_t stream);
// Backend::argmax_rows: out F32 [rows, 2] (contiguous) = each row's first maximum and its column + offset.
cudaError_t argmax_rows(const float* x, int64_t stride, int64_t rows, int64_t n, int64_t offset, float* out,
                        cudaStream_t stream);
// Batched LoRA (Backend::lora): up to kLoraMaxParts parts of one linear layer, A [num_slots, rank,
// in] and B [num_slots, n, rank] each, in `dt`; rank 8, 16, 32 or 64 (the slots' padded rank);
// `scratch` holds tokens * kLoraMaxParts * rank floats.
constexpr int kLoraMaxParts = 3;
struct LoraArgs {
  const void* a[kLoraMaxParts];
  const void* b[kLoraMaxParts];
  int64_t n[kLoraMaxParts];
  int64_t offset[kLoraMaxParts];
  int count;
  int rank;
  int num_slots;
  int64_t in;
};
cudaError_t lora(DType dt, const void* x, int64_t x_stride, int64_t tokens, const int32_t* slots, const LoraArgs& p,
                 float* scratch, void* out, int64_t out_stride, cudaStream_t stream);
// lora() in its two halves: the shrink (scratch = A x; reads x only, so it may run on another
// stream beside the base GEMM that writes `out`) and the expand (out += B scratch).
cudaError_t lora_shrink(DType dt, const void* x, int64_t x_stride, int64_t tokens, const int32_t* slots,
                        const LoraArgs& p, float* scratch, cudaStream_t stream);
cudaError_t lora_expand(DType dt, int64_t tokens, const int32_t* slots, const LoraArgs& p, const float* scratch,
                        void* out, int64_t out_stride, cudaStream_t stream);

// Paged attention over block tables (see AttentionBatch in backend/backend.h for the layout).
struct AttentionParams {
  DType dt;
  const void* q;        // [tokens, heads * head_dim], row stride q_stride
  int64_t q_stride;
  void* out;            // [tokens, heads * head_dim], row stride out_stride
  int64_t out_stride;
  const void* k_cache;  // [num_blocks, block_size, kv_heads, head_dim]
  const void* v_cache;
  const int32_t* q_start;      // [num_seqs + 1]
  const int32_t* ctx_len;      // [num_seqs]
  const int32_t* block_table;  // [num_seqs, max_blocks_per_seq]
  int64_t tokens;
  int num_seqs, max_blocks_per_seq, block_size, sliding_window;
  int heads, kv_heads, head_dim;
  float scale;
  int max_q_len, max_ctx_len;
  int num_splits;   // > 1: each sequence's keys are split over this many blocks (flash-decoding)
  float* partial;   // num_splits > 1: scratch of attention_scratch_floats() floats
  int flash_min_q;  // > 0: the CUDA-core kernel leaves sequences with this many new tokens or more
                    // to the tensor-core one (set by paged_attention)
  // Sequences [multi_first, multi_end) hold all with more than one new token (the prefill kernel's
  // grid covers only them); multi_end 0: take every sequence.
  int multi_first, multi_end;
  int single_seqs, min_multi_q;  // AttentionBatch's counts (-1 / 0: not known)
  bool multi_only;  // set by paged_attention: the CUDA-core kernel takes only [multi_first, multi_end)
                    // and none of one new token (flash_decode took them, or there are none)
};

// Sequences with at least this many new tokens run on tensor cores (flash_prefill.cu) wherever
// flash_prefill_applies(): 16-bit activations, head_dim 64 or 128, no key splits.
constexpr int kFlashMinQ = 16;
bool flash_prefill_applies(const AttentionParams& p);
cudaError_t flash_prefill(const AttentionParams& p, cudaStream_t stream);
// The sequences of one new token (a decode step's all, a mixed step's decodes) of 16-bit models with
// head_dim 64 or 128 and 2..16 query heads per kv head run on tensor cores (flash_decode.cu), splits
// included: flash_decode writes their output, or with num_splits > 1 the partial results that
// paged_attention then merges; its blocks for other sequences return at once. On by default
// (APUS_CUDA_FLASH_DECODE=0 sends them to the CUDA-core kernel of attention.cu).
bool flash_decode_applies(const AttentionParams& p);
cudaError_t flash_decode(const AttentionParams& p, cudaStream_t stream);

// The split count for a step (at most kMaxSplits): more blocks than the GPU has multiprocessors need none.
constexpr int kMaxSplits = 32;
int attention_splits(const AttentionParams& p, int multiprocessors);
size_t attention_scratch_floats(const AttentionParams& p);
// Shared memory one block needs (the launcher raises the kernel's limit when above 48 KiB).
size_t attention_smem_bytes(const AttentionParams& p);
cudaError_t paged_attention(const AttentionParams& p, cudaStream_t stream);

// One-shot all-reduce (sum) over peer-to-peer device memory for 2, 4 or 8 ranks of one process
// (p2p_all_reduce.cu). Every rank owns `data` (two halves of buffer_bytes, peer-readable), `signal`
// (kP2pMaxBlocks x kP2pMaxRanks uint32 slots, zeroed, peer-writable) and `counter`
// (kP2pMaxBlocks uint32, zeroed); `abort` points into host-mapped memory, non-zero once the group
// failed. x (16-byte aligned, bytes a multiple of 16, at most buffer_bytes) is summed in place.
constexpr int kP2pMaxRanks = 8, kP2pMaxBlocks = 64;
struct P2pArgs {
  void* data[kP2pMaxRanks];        // every rank's buffers (peer pointers), by rank
  uint32_t* signal[kP2pMaxRanks];  // every rank's signal slots, by rank
  uint32_t* counter;               // this rank's per-block call counters
  const volatile int* abort;
  unsigned long long spin_limit_ns;  // 0: wait for the peers however long; else print the wait and leave
  size_t buffer_bytes;
  int rank;
  int world;
};
cudaError_t p2p_all_reduce(DType dt, void* x, int64_t bytes, const P2pArgs& a, cudaStream_t stream);
// The same sum of x [rows, cols] (contiguous, like residual and out), then what add_rms_norm does
// with it: residual += sum; out = RMSNorm(residual) * w. x is left as it was.
cudaError_t p2p_add_rms_norm(DType dt, const void* x, void* residual, const float* w, float eps, void* out,
                             int64_t rows, int64_t cols, const P2pArgs& a, cudaStream_t stream);

}  // namespace apus::cuda
