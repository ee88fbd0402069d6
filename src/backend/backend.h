// The ops a model needs, implemented once per device. Models are written against this interface
// only; the CPU backend is the reference every other backend is tested against.
//
// Conventions: activations are 2-D [tokens, features] tensors in the backend's activation dtype
// (F32 on CPU; the model's 16-bit dtype on CUDA) and may be column views (row_stride > cols).
// Weight matrices are in weight_dtype() of their stored dtype; norm weights and biases are F32.
// Integer metadata is I32. Tensors passed to a backend live on its device.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "quant/quant_weight.h"

namespace apus {

class ThreadPool;

// y[:, offset_p : offset_p + out_p] = x W_p^T + b_p for every part p. Several parts let q/k/v or
// gate/up run as one fused op without copying the checkpoint's separate matrices.
// A part of a quantized checkpoint (GPTQ / AWQ) has `quant` instead of `weight`: integer codes that
// stay packed on the device (quant/quant_weight.h; a backend may repack them in prepare_linear).
struct LinearPart {
  Tensor weight;      // [out_p, in]; empty when `quant` holds the weight
  Tensor bias;        // [out_p] F32, or empty
  QuantWeight quant{};  // a quantized weight [out_p, in], or empty

  int64_t out() const { return quant.empty() ? weight.shape[0] : quant.out(); }
  int64_t in() const { return quant.empty() ? weight.shape[1] : quant.in(); }
};
struct Linear {
  std::vector<LinearPart> parts;
  int64_t in_features = 0;
  int64_t out_features = 0;  // sum of the parts' rows
};

// One linear part's LoRA weights for every adapter slot (src/lora/lora_slots.h): A [slots, rank,
// in] and B [slots, n, rank] with the adapter's scale folded into B, both in the activation dtype;
// smaller ranks and empty slots are zero-padded. The part's output is columns [offset, offset + n).
struct LoraPart {
  Tensor a;
  Tensor b;
  int64_t offset = 0;
};

// One layer's paged cache: [num_blocks, block_size, num_kv_heads, head_dim] for K and for V.
struct KvLayer {
  Tensor k;
  Tensor v;
};

// Metadata for one forward step over a flat batch of tokens from several sequences. Sequence s owns
// query tokens [q_start[s], q_start[s+1]); they are the last (q_start[s+1]-q_start[s]) of its
// ctx_len[s] positions, so query j of s sits at position ctx_len[s] - q_len + j and sees keys at
// positions <= its own (and > its own - sliding_window when a window is set).
struct AttentionBatch {
  int num_seqs = 0;
  int max_blocks_per_seq = 0;
  int block_size = 0;
  int sliding_window = 0;  // 0: unlimited
  float scale = 1.0f;      // softmax scale, usually 1/sqrt(head_dim)
  int max_q_len = 0;       // max over sequences of q_start[s+1] - q_start[s] (sizes GPU grids)
  int max_ctx_len = 0;     // max over sequences of ctx_len[s]
  // Sequences [multi_first, multi_end) hold every sequence with more than one new token (prefill
  // chunks; empty: none), so that prefill kernels need no blocks for the decodes around them.
  int multi_first = 0, multi_end = 0;
  // Sequences with one new token (-1: not counted, taken as some) and the fewest new tokens of a
  // sequence with more than one (0: not known), so that a mixed step launches only the kernels it needs.
  int single_seqs = -1, min_multi_q = 0;
  Tensor q_start;          // I32 [num_seqs + 1]
  Tensor ctx_len;          // I32 [num_seqs]
  Tensor block_table;      // I32 [num_seqs, max_blocks_per_seq]
  Tensor slot_mapping;     // I32 [tokens]: block * block_size + offset where each new K/V goes;
                           // -1: a padding token whose K/V is not stored
};

// A row of logits to draw one token from on the device (the rules: sample/sampler.h).
struct SampleRow {
  int32_t row = 0;            // row of the logits tensor
  float temperature = 0.0f;   // <= 0: greedy
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float u = 0.0f;             // the draw's uniform number in [0, 1) (draw_uniform)
  bool greedy() const { return temperature <= 0.0f || top_k == 1; }  // the first maximum, no draw
};

// A tensor-parallel group's collective operations over one rank's backend (src/parallel/README.md).
// Every rank calls each of them in the same order with tensors of the same shape. The device ones
// are queued like the backend's ops (so CUDA graphs record them).
class Backend;

class Collectives {
 public:
  virtual ~Collectives() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // Sums x (contiguous, activation dtype) over the group, in place.
  virtual void all_reduce(Tensor& x) = 0;
  // out[R, world * n] = every rank's x[R, n] (contiguous) side by side, in rank order.
  virtual void all_gather_cols(const Tensor& x, Tensor& out) = 0;
  // Queues the work that writes rows [r0, r1) of a collective's input on the backend's current stream.
  using RowProducer = std::function<void(int64_t r0, int64_t r1)>;
  // all_reduce(x), then backend.add_rms_norm(residual, x, w, eps, out): the sum added into the
  // residual stream and normalized, in one pass where the collectives can (x is then left as it
  // was, not summed). With `produce`, x is not computed yet: the collective calls it for every row,
  // in order, before it reads them, and may send rows on their way while the next are produced.
  virtual void all_reduce_add_rms_norm(Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out,
                                       Backend& backend, const RowProducer* produce = nullptr);
  // Rank 0's `words` to every rank (replacing theirs); a host call that waits.
  virtual void broadcast_words(std::vector<int32_t>& words) = 0;
  // Stops this rank's part of the group (a rank died): later calls fail with `why`, and calls
  // already waiting for peers (queued device work too) are cut short.
  virtual void abort(const std::string& why) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;
  virtual DType activation_dtype() const = 0;
  // Called once by the weight loader before any upload, with the dtype of the model's matrices:
  // a GPU backend computes in that dtype (BF16, F16; F32 models run in F32). The CPU ignores it.
  virtual void set_model_dtype(DType) {}
  // The dtype a weight matrix stored as `stored` must have on this backend (the loader converts):
  // the CPU reads any float dtype; a GPU backend wants its activation dtype.
  virtual DType weight_dtype(DType stored) const { return stored; }

  // Memory. `alloc` returns zero-filled memory on the device. `upload` makes a host tensor usable
  // by the backend (the CPU backend returns the same view: weights stay memory-mapped).
  virtual Tensor alloc(DType dtype, std::vector<int64_t> shape) = 0;
  virtual Tensor upload(const Tensor& host) = 0;
  // Per-step host data (token ids, block tables, rope tables) for the ops that follow. The CPU
  // returns `host` itself; a GPU backend copies it into `staging` (device memory the caller keeps
  // between steps, replaced only when too small, so steady-state steps allocate nothing) and
  // returns a view of it. The copy is taken during the call: `host` may be reused at once.
  virtual Tensor upload_step(const Tensor& host, Tensor& staging) = 0;
  // Contiguous copy of `src` (rows may be strided) into host memory; waits for the device.
  virtual void copy_to_host(const Tensor& src, void* dst) = 0;
  // Copies host bytes (dst.nbytes() of them, dst's dtype) into existing memory `dst` (contiguous)
  // and waits: an adapter loaded into its LoRA slot. Safe to call while steps run on another
  // thread, for memory no step reads.
  virtual void copy_from_host(const void* src, Tensor& dst) = 0;
  // Lets a backend rearrange a loaded linear layer once (the CUDA backend concatenates the parts
  // into one matrix, so q/k/v run as one GEMM; the CPU keeps them pointing into the checkpoint).
  virtual Linear prepare_linear(Linear l) { return l; }
  // Device memory in bytes, free and total; false where memory is the host's (CPU).
  virtual bool memory_info(size_t* free_bytes, size_t* total_bytes) { return false; }

  // out[t] = table[ids[t] - first]; ids I32 [T], table [rows, H] any float dtype, out [T, H]. A
  // vocab-parallel shard holds ids [first, first + rows) of a `vocab`-id vocabulary (0: rows) and
  // gives zero rows for the other ids; ids outside [0, vocab) are an error. With `drawn` (I32, this
  // backend's), an id -1 - j stands for drawn[j]: a token sample() drew that the host has not seen.
  virtual void embedding(const Tensor& ids, const Tensor& table, Tensor& out, int64_t first = 0, int64_t vocab = 0,
                         const Tensor* drawn = nullptr) = 0;
  // out[r, c] = table row rows[r] (gather of activation rows); rows I32 [R].
  virtual void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) = 0;
  // out F32 [R, 2] = each row of x (F32 [R, n], rows may be strided) as its first maximum and that
  // column + offset (as a float: exact for ids below 2^24); NaN is never a maximum; a row without
  // one (n == 0, all NaN) gives (-inf, offset). A vocabulary-parallel rank's greedy candidates.
  virtual void argmax_rows(const Tensor& x, int64_t offset, Tensor& out) = 0;
  // RMSNorm over groups of w.numel() columns (w.numel() == cols for a plain norm; == head_dim
  // for Qwen3's per-head q/k norm): out = w * x / sqrt(mean(x^2) + eps). `out` may alias `x`.
  virtual void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) = 0;
  // residual += x; out = rms_norm(residual).
  virtual void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& w, float eps,
                            Tensor& out) = 0;
  virtual void linear(const Tensor& x, const Linear& w, Tensor& out) = 0;
  // Batched LoRA over a flat batch (Punica's BGMV): for every part p and token t whose adapter
  // slot s = slots[t] (I32 [T]) is >= 0, out[t, p.offset : p.offset + n] += B_s (A_s x[t]).
  // Tokens with slot -1 (the base model, padding) are left alone.
  virtual void lora(const Tensor& x, const Tensor& slots, const std::vector<LoraPart>& parts, Tensor& out) = 0;
  // linear(x, w, out) and then lora(x, slots, parts, out), as one op so that a backend may overlap
  // them (CUDA runs the LoRA shrink, which reads only x, beside the base GEMM).
  virtual void linear_lora(const Tensor& x, const Linear& w, const Tensor& slots, const std::vector<LoraPart>& parts,
                           Tensor& out) {
    linear(x, w, out);
    lora(x, slots, parts, out);
  }
  // Rotate-half RoPE in place on x [T, heads * head_dim]: within each head, dim i < rot/2 pairs with
  // i + rot/2, where rot = 2 * cos.cols(); cos/sin F32 [T, rot/2].
  virtual void rope(Tensor& x, const Tensor& cos, const Tensor& sin, int head_dim) = 0;
  // rope() on qk [T, (heads + kv_heads) * head_dim] (q's heads, then k's: side by side in qkv),
  // then store_kv() of its k part and v: one op where the backend fuses them (CUDA), else the two.
  virtual void rope_store_kv(Tensor& qk, const Tensor& cos, const Tensor& sin, int head_dim, const Tensor& v,
                             const Tensor& slot_mapping, KvLayer& cache);
  // k, v [T, kv_heads * head_dim] written to cache slots.
  virtual void store_kv(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                        KvLayer& cache) = 0;
  // q [T, heads * head_dim] -> out [T, heads * head_dim], keys/values from the paged cache
  // (the step's own K/V must already be stored). GQA: head h reads kv head h / (heads / kv_heads).
  virtual void attention(const Tensor& q, const KvLayer& cache, const AttentionBatch& batch,
                         Tensor& out) = 0;
  // gate_up [T, 2I] (gate first) -> out [T, I] = silu(gate) * up.
  virtual void silu_mul(const Tensor& gate_up, Tensor& out) = 0;
  // linear(x, w, gate_up) then silu_mul(gate_up, out), w's columns being gate's then up's: one op
  // where the backend fuses them (CUDA, decode-sized batches: gate_up is then not written).
  virtual void linear_silu_mul(const Tensor& x, const Linear& w, Tensor& gate_up, Tensor& out) {
    linear(x, w, gate_up);
    silu_mul(gate_up, out);
  }
  // Norm folding: the RMSNorm between a producer (o, down) and the consumer after it (qkv, gate_up)
  // without a kernel of its own (src/backend/cuda/README.md, "Norm folding"). The producer adds its
  // product (rounded as linear() writes it) into the residual stream, writes prescaled = norm_w *
  // residual (rounded) and, per row, the sums of squares of the new residual over each
  // kNormFoldCols columns: sums F32 [rows, >= ceil(n / kNormFoldCols)]. The consumer multiplies its
  // product's sums by each row's 1 / sqrt(mean + eps) from those before the bias. The result is
  // add_rms_norm then the product's up to rounding (x / rms is not rounded before the weight). Where
  // a backend folds (norm_fold_applies: these two layers at this many rows) it implements both ops.
  static constexpr int64_t kNormFoldCols = 16;
  // Columns of `sums` for a layer of `cols` outputs (producer) or inputs (consumer).
  static constexpr int64_t norm_fold_parts(int64_t cols) { return (cols + kNormFoldCols - 1) / kNormFoldCols; }
  virtual bool norm_fold_applies(const Linear& /*producer*/, const Linear& /*consumer*/, int64_t /*rows*/) const {
    return false;
  }
  virtual void linear_add_prescale(const Tensor& x, const Linear& w, Tensor& residual, const Tensor& norm_w,
                                   Tensor& prescaled, Tensor& sums);
  // out = prescaled W^T scaled per row (+ bias); with silu_mul, w is a gate_up layer (gate's columns,
  // then up's) and out = silu(gate) * up, as linear_silu_mul writes it.
  virtual void linear_rms_scaled(const Tensor& prescaled, const Tensor& sums, float eps, const Linear& w, Tensor& out,
                                 bool silu_mul);
  // x += y
  virtual void add(Tensor& x, const Tensor& y) = 0;
  // Makes the device finish queued work (a no-op on CPU).
  virtual void synchronize() {}
  // Streams: ops (and a tensor-parallel group's collectives) queue on the current stream, 0 unless
  // set_stream() picked another of streams(). mark(m) notes how far the current stream has got
  // (m < kMarks); wait_mark(m) makes the current stream wait for that point. Work on different
  // streams may run at once (the CPU has one stream and runs every op in order). Leave stream 0
  // current, having waited for the others' work, before anything that waits for the device,
  // uploads a step or records a graph.
  static constexpr int kMarks = 8;
  virtual int streams() const { return 1; }
  virtual void set_stream(int /*s*/) {}
  virtual void mark(int /*m*/) {}
  virtual void wait_mark(int /*m*/) {}
  // Queues a draw of one token for each of `rows` from logits F32 [R, vocab] into drawn[i] (I32,
  // this backend's, at least rows.size() long) and returns without waiting: a step queued after it
  // may take them as its tokens (embedding's `drawn`) before the host has them. fetch_draws(ids, n)
  // then waits for this draw alone (not for work queued after it) and copies its first n ids to
  // the host. Only ids come back. False where the backend has no sampler of its own: the caller
  // then copies the logits to the host and samples there.
  virtual bool sample(const Tensor& /*logits*/, const std::vector<SampleRow>& /*rows*/, Tensor& /*drawn*/) {
    return false;
  }
  virtual void fetch_draws(int32_t* /*ids*/, int /*n*/) {}
  // drawn I32 [R] = the token of each row of tensor-parallel greedy candidates F32 [R, 2 * ranks]
  // (greedy_token, sample/sampler.h): every rank picks the same tokens on its own device.
  virtual void pick_greedy(const Tensor& candidates, Tensor& drawn) = 0;
  // Queues the copy of drawn[0, n) that fetch_draws() then waits for (ids an op wrote: pick_greedy).
  virtual void queue_fetch_draws(const Tensor& drawn, int n) = 0;
  // sample() and fetch_draws() at once (tests).
  bool sample_to_host(const Tensor& logits, const std::vector<SampleRow>& rows, int32_t* ids);

  // The rows to run a step's lm_head at for m rows of logits (a product whose row count changes
  // from step to step; rows past m are computed and not read): a GPU backend rounds up to one of a
  // few sizes, because cuBLAS's first product of each new shape waits for the whole device. The
  // CPU returns m.
  virtual int64_t logit_rows_bucket(int64_t m) const { return m; }

  // Recorded op sequences (CUDA graphs). Between begin_capture() and end_capture() the ops are
  // recorded, not run (no upload_step, copy_to_host or synchronize in between, and nothing may be
  // allocated); replay(g) runs them again on the same buffers, whose contents may have changed.
  // A backend without them returns false from graphs_supported() and is never asked.
  virtual bool graphs_supported() const { return false; }
  virtual void begin_capture() {}
  virtual int end_capture() { return -1; }
  virtual void replay(int /*graph*/) {}
  // Destroys a recorded graph (before the buffers it uses go).
  virtual void drop_graph(int /*graph*/) {}

  // Ceilings for benchmarks, measured now on the device (0 where the caller measures the host's):
  // copy bandwidth counting bytes read plus written, and the dense bf16 matrix-product rate.
  virtual double measure_copy_bandwidth() { return 0.0; }
  virtual double measure_matmul_flops() { return 0.0; }
};

std::unique_ptr<Backend> make_cpu_backend(int num_threads);
// "cpu", "cuda" or "auto" (CUDA when this build has it and a GPU is present, else the CPU).
std::unique_ptr<Backend> make_backend(const std::string& device, int num_threads);
// Whether this build has the CUDA backend and a usable GPU is present (no driver: false).
bool cuda_available();
// The GPUs this build can use (0 without the CUDA backend, a driver or a device).
int gpu_count();

}  // namespace apus
