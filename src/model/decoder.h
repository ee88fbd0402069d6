// The llama-family decoder forward pass (Llama, Qwen2, Qwen3, Mistral, and Qwen v1 and ChatGLM3
// through their config flags), written once against the Backend interface over a flat batch of
// tokens from any number of sequences.
#pragma once
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "kv/kv_cache.h"
#include "model/config.h"
#include "model/rope.h"
#include "model/weights.h"
#include "lora/lora_slots.h"

namespace apus {

// One step's inputs, built on the host. Sequence s contributes tokens [q_start[s], q_start[s+1]),
// which are the last ones of its ctx_len[s] positions (see AttentionBatch).
struct StepBatch {
  std::vector<int32_t> tokens;        // [T]; -1 - j: id j of the last draw into DecoderModel::draws(),
                                      // still on the device (a step queued before its tokens are read)
  std::vector<int32_t> q_start;       // [S + 1]
  std::vector<int32_t> ctx_len;       // [S]
  std::vector<int32_t> block_table;   // [S * max_blocks]
  int max_blocks = 0;
  std::vector<int32_t> slot_mapping;  // [T]
  std::vector<int32_t> logit_rows;    // token rows whose next-token logits are wanted
  std::vector<int32_t> prompt_len;    // [S] or empty: each sequence's prompt length (Qwen's dynamic
                                      // NTK fixes its RoPE scaling at the prompt; empty: ctx_len)
  std::vector<int32_t> lora_slots;    // [T] each token's LoRA adapter slot (-1: the base model);
                                      // empty: every token is the base model's
  // Every logit row is wanted only for its first maximum (greedy draws, nothing read on the host,
  // no adapter's lm_head): with tensor parallelism forward() then returns each rank's greedy
  // candidates instead of gathering every logit (see greedy_token, sample/sampler.h), every rank
  // picking the tokens into its draws() too. Ignored without.
  bool argmax_only = false;
  int num_seqs() const { return int(ctx_len.size()); }
};

class DecoderModel {
 public:
  // `weights` may be a tensor-parallel rank's part (weights.shard): the model then runs that rank's
  // share of every step, joined to the other ranks' by `group`'s all-reduces (src/parallel/).
  DecoderModel(ModelConfig config, ModelWeights weights, Backend& backend, Collectives* group = nullptr);
  ~DecoderModel();
  // The config this rank runs: its own heads, KV heads (the KV cache's) and intermediate size; the
  // whole vocabulary (the logits are gathered from all ranks).
  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  Backend& backend() { return backend_; }

  // Runs the step, writing K/V into `cache`; returns the logits F32 [logit_rows, vocab] on the
  // backend's device (a view of a buffer the next step overwrites; empty when there are none).
  // A tensor-parallel step with batch.argmax_only returns F32 [logit_rows, 2 * ranks] instead:
  // each rank's first maximum over its part of the vocabulary and its token id, in rank order.
  Tensor forward(const StepBatch& batch, KvCache& cache);
  // Whether forward() honours StepBatch::argmax_only (tensor parallelism: it saves gathering
  // [rows, vocab] logits from every rank each step).
  bool vocab_parallel() const { return group_ != nullptr; }
  // The same, with the logits copied to the host, row-major.
  void forward(const StepBatch& batch, KvCache& cache, std::vector<float>& logits);
  // The backend buffer (I32, at least `rows` ids) that token draws go into (Backend::sample) and
  // that the next step's embedding reads for tokens -1 - j. A larger size than before reallocates it
  // and drops recorded graphs: ask with nothing queued that reads it (the engine does at start).
  Tensor& draws(int64_t rows);
  int64_t draws_capacity() const { return draws_.empty() ? 0 : draws_.numel(); }
  // Allocates the activation buffers for steps of up to `tokens` tokens and `logit_rows` logit
  // rows now (they otherwise grow on demand), so that free device memory can be measured after.
  void reserve(int64_t tokens, int64_t logit_rows) { workspace(tokens, logit_rows); }
  // The tokens and logit rows the activation buffers hold now (0, 0 before the first step).
  std::pair<int64_t, int64_t> reserved() const;
  // Decode steps (one new token per sequence, at most kMaxGraphBatch sequences) replay a recorded
  // graph of the whole forward pass, one per padded batch size and block-table width, where the
  // backend supports it (CUDA, not under APUS_CUDA_PROFILE; APUS_CUDA_GRAPHS=0 turns them off).
  // Other steps run op by op. Where graphs exist, decode steps run padded to the graph's shape
  // with or without them, so that both give the same results bit for bit.
  void set_use_graphs(bool on);
  // Makes room for `max_loras` LoRA adapters of rank up to `max_rank` served unmerged (StepBatch::
  // lora_slots picks them per token); adapters are then written with lora()->load(slot, ...).
  void enable_lora(int max_loras, int max_rank);
  // Called with each step's inputs before the step runs (tensor parallelism: rank 0 sends them to
  // the other ranks, which then run the same step on their parts).
  void set_step_hook(std::function<void(const StepBatch&, const KvCache&)> hook) { step_hook_ = std::move(hook); }
  // Passed to the LoRA slots enable_lora() makes (LoraSlots::set_listener).
  void set_lora_listener(std::function<void(int, const std::string&)> f) { lora_listener_ = std::move(f); }
  LoraSlots* lora() { return lora_.get(); }
  bool use_graphs() const { return use_graphs_; }
  // Tensor parallelism: steps of at least this many tokens with several sequences (not replayed
  // graphs) run as two halves of whole sequences, each half's sums over the ranks beside the other
  // half's work on a second stream (run_layers_split); 0: never. APUS_TP_OVERLAP_TOKENS, default 0:
  // it measured no faster (src/parallel/README.md); the other ranks follow rank 0's.
  int64_t split_tokens() const { return split_tokens_; }
  void set_split_tokens(int64_t n) { split_tokens_ = n; }
  static constexpr int kMaxGraphBatch = 256;

  // The model one layer at a time, for calibration (apus export --quant_bits, src/quant/calibrate.h).
  enum class LinearSlot { kQkv, kO, kGateUp, kDown };
  // Sees a linear layer's input [T, in] (on the backend's device) just before the layer runs;
  // returning false stops the decoder layer there (`hidden` is then left half-updated).
  using LinearTap = std::function<bool(LinearSlot, const Tensor& input)>;
  // hidden [T, hidden_size] (activation dtype, on the device) = the embeddings of batch.tokens.
  void embed(const StepBatch& batch, Tensor& hidden);
  // Runs decoder layer `layer` alone on the residual stream `hidden` entering it, in place (the
  // stream leaving it), writing the layer's K/V into `cache`; `tap` (may be empty) sees each
  // linear layer's input. batch.logit_rows is ignored.
  void forward_layer(const StepBatch& batch, KvCache& cache, int layer, Tensor& hidden, const LinearTap& tap);
  // A layer's weights, to replace matrices between forward_layer calls (drops recorded graphs).
  LayerWeights& layer_weights(int layer);

 private:
  struct Workspace;
  struct Graph;
  struct StepViews;
  Workspace& workspace(int64_t tokens, int64_t logit_rows);
  // Packs the step's metadata padded to `pad_tokens` tokens (each extra one a sequence of its own,
  // at position 0, not stored), `pad_rows` logit rows and block tables `max_blocks` wide, packs it
  // in `host`, uploads it into `staging` and returns the views the ops take (on a CPU backend views
  // of `host` itself: each set of views in use needs its own pair).
  StepViews upload_meta(const StepBatch& in, int64_t pad_tokens, int64_t pad_rows, int max_blocks, int max_ctx_len,
                        const KvCache& cache, Tensor& host, Tensor& staging);
  Tensor forward_step(const StepBatch& in, KvCache& cache);
  void embed_tokens(const Tensor& tokens, Tensor& x);  // the (vocab-parallel) embedding of tokens into x
  // `halves` (tensor parallelism, large steps): the step's two halves, run by run_layers_split.
  void run_layers(const StepViews& v, KvCache& cache, const StepViews (*halves)[2] = nullptr);
  void run_layers_split(const StepViews (&half)[2], KvCache& cache);
  // next_follows: layer i + 1 runs next on x (the norm before it may be folded into this one's down).
  bool run_layer(int i, const StepViews& v, KvCache& cache, Tensor& x, bool add_pending, const LinearTap* tap,
                 bool next_follows);
  // Norm folding (Backend::norm_fold_applies; src/backend/cuda/README.md): which of a layer's norms its
  // projections take on. input: the input norm (the previous layer's down added x and prescaled h);
  // mlp: the MLP norm (o does, gate_up scales); next: the next layer's input norm (down does).
  struct Folds {
    bool input = false, mlp = false, next = false;
  };
  static constexpr int64_t kNormFoldRows = 16;  // rows of the workspace's partial sums
  bool folds(const StepViews& v, const LinearTap* tap, const Linear& producer, const Linear& consumer) const;
  // The producer's side: x += in W^T, h = norm_w * x (prescaled), the partial sums in the workspace.
  void fold_norm(const Tensor& in, const Linear& w, Tensor& x, const Tensor& norm_w, Tensor& h, int64_t rows);
  void layer_input_norm(int i, const StepViews& v, Tensor& x, bool add_pending);
  bool layer_attention(int i, const StepViews& v, KvCache& cache, const LinearTap* tap, const Folds& f, Tensor& x);
  void layer_mlp_norm(int i, const StepViews& v, Tensor& x);
  bool layer_mlp(int i, const StepViews& v, const LinearTap* tap, const Folds& f, Tensor& x);
  // x += partial (summed over the ranks first), then out = RMSNorm(x) * w; or without the norm.
  void add_rms_norm(Tensor& x, Tensor& partial, const Tensor& w, Tensor& out);
  void add_mlp_output(Tensor& x, Tensor& partial);
  // out = in W^T for a row-parallel layer (o, down) whose sum over the ranks comes next. With tensor
  // parallelism and `defer`, the product is left to that sum (add_rms_norm), which makes it in row
  // chunks and may send each on its way while the next is made (Collectives::RowProducer).
  void row_parallel(const Tensor& in, const Linear& w, Tensor& out, bool defer);
  void run_deferred();  // queues a deferred product whole, if any
  // Logit rows of adapters that replace lm_head (modules_to_save), recomputed with theirs.
  void lora_lm_heads(const StepBatch& in);
  void forward_graph(const StepBatch& in, KvCache& cache, int bucket, int width);
  void drop_graphs();

  ModelConfig config_;
  ModelWeights weights_;
  Backend& backend_;
  Rope rope_;
  std::unique_ptr<Workspace> ws_;
  Tensor draws_;  // draws()
  std::unique_ptr<LoraSlots> lora_;
  Collectives* group_ = nullptr;  // tensor parallelism: the other ranks (null: the whole model here)
  std::function<void(const StepBatch&, const KvCache&)> step_hook_;
  std::function<void(int, const std::string&)> lora_listener_;
  ModelConfig whole_config_;  // the whole model's (config_ is this rank's part of it)
  bool pad_decode_ = false;  // decode steps padded to their graph's shape (where graphs exist)
  bool use_graphs_ = false;
  int64_t split_tokens_ = 0;  // split_tokens()
  struct Deferred {
    Tensor in, out;
    const Linear* w = nullptr;
    void run(Backend& b, int64_t r0, int64_t r1) const {  // rows [r0, r1) of the product
      Tensor rows = out.rows_view(r0, r1 - r0);
      b.linear(in.rows_view(r0, r1 - r0), *w, rows);
    }
  } deferred_;              // row_parallel()
  bool splitting_ = false;  // inside run_layers_split: products are not deferred (the sums are on stream 1)
};

}  // namespace apus
