#include "model/decoder.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>

#include "core/error.h"

namespace apus {

// A recorded decode step: `bucket` sequences of one token, block tables `max_blocks` wide, over one
// KV cache (every layer's K and V buffers: a later cache may reuse some of the addresses, not
// necessarily all); its metadata lives in `staging` (same size every step, never reallocated).
struct DecoderModel::Graph {
  int bucket = 0, max_blocks = 0;
  bool lora = false;  // with the LoRA ops
  bool argmax_only = false;  // tensor parallelism: greedy candidates gathered instead of logits
  std::vector<const void*> cache;
  int64_t cache_blocks = 0;
  Tensor staging;
  int id = -1;
};

// Activation buffers, grown to the largest step seen and reused (no allocation per step).
struct DecoderModel::Workspace {
  int64_t capacity = 0, logit_capacity = 0;
  Tensor x, h, qkv, attn, gate_up, act, tmp, final_h, logits;
  Tensor norm_sums;  // norm folding (Backend::linear_add_prescale): F32 [kNormFoldRows, hidden / 16]
  Tensor gathered;  // tensor parallelism: every rank's logits side by side [rows, world * vocab_padded]
  Tensor best, candidates;  // and for argmax_only steps: this rank's [rows, 2], every rank's [rows, 2 * world]
  // The step's metadata in one host buffer of 4-byte words (token ids, rows, block tables, rope
  // tables), so that a GPU backend uploads it in one copy into `meta_device`.
  Tensor meta_host, meta_device;
  Tensor half_host[2], half_device[2];  // the same for the halves of a split step (run_layers_split)
  std::vector<Graph> graphs;
};

struct DecoderModel::StepViews {
  int64_t T = 0, R = 0;
  int64_t row0 = 0;  // the workspace rows its tokens use: [row0, row0 + T)
  Tensor rows(const Tensor& t) const { return t.rows_view(row0, T); }
  Tensor tokens, logit_rows, cos, sin;
  Tensor q_cos, q_sin;  // logn attention (Qwen v1): q's tables, scaled; empty otherwise
  AttentionBatch ab;
  Tensor lora_slots;  // I32 [T]; empty: no token uses an adapter
  bool argmax_only = false;
};

namespace {

Tensor rows_of(const Tensor& t, int64_t n) { return t.rows_view(0, n); }

// Packs a step's metadata into consecutive 4-byte words; each part is later a view of the uploaded copy.
class MetaPacker {
 public:
  explicit MetaPacker(Tensor& buffer) : buf_(buffer) {}
  // v, then `pad` more words of `fill`.
  size_t add(const std::vector<int32_t>& v, size_t pad = 0, int32_t fill = 0) {
    const size_t at = reserve(v.size() + pad);
    std::copy(v.begin(), v.end(), buf_.ptr<int32_t>() + at);
    std::fill_n(buf_.ptr<int32_t>() + at + v.size(), pad, fill);
    return at;
  }
  int32_t* words(size_t at) { return buf_.ptr<int32_t>() + at; }
  size_t reserve(size_t words) {
    const size_t at = used_;
    used_ += words;
    if (buf_.empty() || int64_t(used_) > buf_.numel()) {  // grow, keeping what is packed already
      Tensor bigger = host_tensor(DType::I32, {int64_t(used_ * 3 / 2 + 1024)});
      std::copy(buf_.ptr<int32_t>(), buf_.ptr<int32_t>() + at, bigger.ptr<int32_t>());
      buf_ = bigger;
    }
    return at;
  }
  float* floats(size_t at) { return reinterpret_cast<float*>(buf_.ptr<int32_t>() + at); }
  Tensor packed() const { return make_view(buf_.data, DType::I32, {int64_t(used_)}); }

 private:
  Tensor& buf_;
  size_t used_ = 0;
};

// Part of the uploaded metadata as a tensor of its own.
Tensor meta_view(const Tensor& meta, size_t at, DType dtype, std::vector<int64_t> shape) {
  return make_view(meta.ptr<int32_t>() + at, dtype, std::move(shape), meta.device, meta.owner);
}

}  // namespace

DecoderModel::DecoderModel(ModelConfig config, ModelWeights weights, Backend& backend, Collectives* group)
    : config_(weights.shard.local(config)), weights_(std::move(weights)), backend_(backend), rope_(config_),
      group_(group), whole_config_(std::move(config)) {
  APUS_CHECK(weights_.shard.world == (group_ ? group_->world() : 1),
             "a tensor-parallel part of {} ranks needs its group", weights_.shard.world);
  const char* env = std::getenv("APUS_CUDA_GRAPHS");
  if (const char* split = std::getenv("APUS_TP_OVERLAP_TOKENS")) split_tokens_ = std::atoll(split);
  pad_decode_ = backend_.graphs_supported();
  use_graphs_ = pad_decode_ && (env == nullptr || std::string(env) != "0");
}

DecoderModel::~DecoderModel() {
  if (ws_) drop_graphs();
}

void DecoderModel::set_use_graphs(bool on) {
  use_graphs_ = on && backend_.graphs_supported();
  if (!use_graphs_ && ws_) drop_graphs();
}

void DecoderModel::drop_graphs() {
  for (Graph& g : ws_->graphs)
    if (g.id >= 0) backend_.drop_graph(g.id);
  ws_->graphs.clear();
}

DecoderModel::Workspace& DecoderModel::workspace(int64_t tokens, int64_t logit_rows) {
  if (!ws_) ws_ = std::make_unique<Workspace>();
  Workspace& w = *ws_;
  const ModelConfig& c = config_;
  const DType a = backend_.activation_dtype();
  if ((tokens > w.capacity || logit_rows > w.logit_capacity) && !w.graphs.empty()) drop_graphs();  // they use the old buffers
  if (tokens > w.capacity) {
    const int64_t T = std::max<int64_t>(tokens, 16);
    w.x = backend_.alloc(a, {T, c.hidden_size});
    w.h = backend_.alloc(a, {T, c.hidden_size});
    w.tmp = backend_.alloc(a, {T, c.hidden_size});
    w.qkv = backend_.alloc(a, {T, c.q_size() + 2 * c.kv_size()});
    w.attn = backend_.alloc(a, {T, c.q_size()});
    w.gate_up = backend_.alloc(a, {T, 2 * c.intermediate_size});
    w.act = backend_.alloc(a, {T, c.intermediate_size});
    w.capacity = T;
  }
  if (w.norm_sums.empty()) {
    w.norm_sums = backend_.alloc(DType::F32, {kNormFoldRows, Backend::norm_fold_parts(c.hidden_size)});
  }
  if (logit_rows > w.logit_capacity) {
    w.final_h = backend_.alloc(a, {logit_rows, c.hidden_size});
    w.logits = backend_.alloc(DType::F32, {logit_rows, weights_.lm_head.out_features});
    if (group_) {
      w.gathered = backend_.alloc(DType::F32, {logit_rows, group_->world() * weights_.lm_head.out_features});
      w.best = backend_.alloc(DType::F32, {logit_rows, 2});
      w.candidates = backend_.alloc(DType::F32, {logit_rows, 2 * group_->world()});
    }
    w.logit_capacity = logit_rows;
  }
  return w;
}

std::pair<int64_t, int64_t> DecoderModel::reserved() const {
  return ws_ ? std::make_pair(ws_->capacity, ws_->logit_capacity) : std::make_pair(int64_t(0), int64_t(0));
}

DecoderModel::StepViews DecoderModel::upload_meta(const StepBatch& in, int64_t pad_tokens, int64_t pad_rows,
                                                  int max_blocks, int max_ctx_len, const KvCache& cache,
                                                  Tensor& host, Tensor& staging) {
  const ModelConfig& c = config_;
  const int64_t T = int64_t(in.tokens.size()), R = int64_t(in.logit_rows.size());
  const int S = in.num_seqs();
  const int64_t extra = pad_tokens - T;  // padding sequences, one token each
  const int Sp = S + int(extra);
  const int64_t half = rope_.half();
  MetaPacker pack(host);
  const size_t tokens_at = pack.add(in.tokens, size_t(extra), 0);
  const size_t rows_at = pack.add(in.logit_rows, size_t(pad_rows - R), 0);
  const size_t q_start_at = pack.add(in.q_start, size_t(extra), 0);
  for (int64_t e = 0; e < extra; ++e) pack.words(q_start_at)[S + 1 + e] = int32_t(T + e + 1);
  const size_t ctx_at = pack.add(in.ctx_len, size_t(extra), 1);
  size_t table_at = 0;
  if (max_blocks == in.max_blocks) {
    table_at = pack.add(in.block_table, size_t(extra) * size_t(max_blocks), 0);
  } else {  // wider rows: copy each sequence's row, zeros after
    table_at = pack.reserve(size_t(Sp) * size_t(max_blocks));
    int32_t* t = pack.words(table_at);
    std::fill_n(t, size_t(Sp) * size_t(max_blocks), 0);
    for (int s = 0; s < S; ++s)
      std::copy_n(in.block_table.begin() + ptrdiff_t(s) * in.max_blocks, in.max_blocks, t + size_t(s) * size_t(max_blocks));
  }
  const size_t slots_at = pack.add(in.slot_mapping, size_t(extra), -1);
  const bool lora = lora_ && std::any_of(in.lora_slots.begin(), in.lora_slots.end(), [](int32_t s) { return s >= 0; });
  const size_t lora_at = lora ? pack.add(in.lora_slots, size_t(extra), -1) : 0;
  const size_t cos_at = pack.reserve(size_t(pad_tokens * half)), sin_at = pack.reserve(size_t(pad_tokens * half));
  const bool logn = c.logn_length > 0;
  const size_t q_cos_at = logn ? pack.reserve(size_t(pad_tokens * half)) : 0;
  const size_t q_sin_at = logn ? pack.reserve(size_t(pad_tokens * half)) : 0;
  int max_q_len = 0, max_ctx = 0, multi_first = S, multi_end = 0, singles = Sp - S, min_multi_q = 0;
  for (int s = 0; s < S; ++s) {
    const int q_len = in.q_start[size_t(s) + 1] - in.q_start[size_t(s)];
    max_q_len = std::max(max_q_len, q_len);
    singles += q_len == 1;
    if (q_len > 1) {
      multi_first = std::min(multi_first, s), multi_end = s + 1;
      min_multi_q = min_multi_q == 0 ? q_len : std::min(min_multi_q, q_len);
    }
    max_ctx = std::max(max_ctx, in.ctx_len[size_t(s)]);
    const int rope_len =
        rope_.fixed_at_prompt() && !in.prompt_len.empty() ? in.prompt_len[size_t(s)] : in.ctx_len[size_t(s)];
    for (int j = 0; j < q_len; ++j) {
      const int64_t t = in.q_start[size_t(s)] + j;
      const int pos = in.ctx_len[size_t(s)] - q_len + j;
      rope_.fill(pos, rope_len, pack.floats(cos_at + size_t(t * half)), pack.floats(sin_at + size_t(t * half)));
    }
  }
  for (int64_t t = T; t < pad_tokens; ++t) {
    rope_.fill(0, 1, pack.floats(cos_at + size_t(t * half)), pack.floats(sin_at + size_t(t * half)));
    max_q_len = std::max(max_q_len, 1);
    max_ctx = std::max(max_ctx, 1);
  }
  if (logn) {  // modeling_qwen.py: query *= log(pos + 1) / log(seq_length) past seq_length, after RoPE
    for (int s = 0; s < Sp; ++s) {
      const int t0 = s < S ? in.q_start[size_t(s)] : int(T) + (s - S), t1 = s < S ? in.q_start[size_t(s) + 1] : t0 + 1;
      for (int t = t0; t < t1; ++t) {
        const int pos = s < S ? in.ctx_len[size_t(s)] - (t1 - t) : 0;
        const float scale =
            pos + 1 > c.logn_length ? float(std::log(double(pos + 1)) / std::log(double(c.logn_length))) : 1.0f;
        for (int64_t i = 0; i < half; ++i) {
          pack.floats(q_cos_at + size_t(t * half))[i] = pack.floats(cos_at + size_t(t * half))[i] * scale;
          pack.floats(q_sin_at + size_t(t * half))[i] = pack.floats(sin_at + size_t(t * half))[i] * scale;
        }
      }
    }
  }
  const Tensor meta = backend_.upload_step(pack.packed(), staging);
  StepViews v;
  v.T = pad_tokens;
  v.R = pad_rows;
  v.argmax_only = in.argmax_only && group_;
  v.tokens = meta_view(meta, tokens_at, DType::I32, {pad_tokens});
  v.logit_rows = meta_view(meta, rows_at, DType::I32, {pad_rows});
  if (lora) v.lora_slots = meta_view(meta, lora_at, DType::I32, {pad_tokens});
  v.cos = meta_view(meta, cos_at, DType::F32, {pad_tokens, half});
  v.sin = meta_view(meta, sin_at, DType::F32, {pad_tokens, half});
  if (logn) {
    v.q_cos = meta_view(meta, q_cos_at, DType::F32, {pad_tokens, half});
    v.q_sin = meta_view(meta, q_sin_at, DType::F32, {pad_tokens, half});
  }
  AttentionBatch& ab = v.ab;
  ab.num_seqs = Sp;
  ab.max_blocks_per_seq = max_blocks;
  ab.block_size = cache.block_size;
  ab.sliding_window = c.sliding_window;
  ab.scale = 1.0f / std::sqrt(float(c.head_dim));
  ab.max_q_len = max_q_len;
  ab.multi_first = multi_end > 0 ? multi_first : 0;
  ab.multi_end = multi_end;
  ab.single_seqs = singles;
  ab.min_multi_q = min_multi_q;
  ab.max_ctx_len = std::max(max_ctx, max_ctx_len);  // a graph sizes attention for its widest table
  ab.q_start = meta_view(meta, q_start_at, DType::I32, {Sp + 1});
  ab.ctx_len = meta_view(meta, ctx_at, DType::I32, {Sp});
  ab.block_table = meta_view(meta, table_at, DType::I32, {Sp, max_blocks});
  ab.slot_mapping = meta_view(meta, slots_at, DType::I32, {pad_tokens});
  return v;
}

// Decoder layer i on the residual stream x (whose pending MLP output from layer i - 1 is still in
// the workspace's tmp when `add_pending`); leaves this layer's MLP output in tmp, not yet added (nor,
// with tensor parallelism, summed over the ranks: add_mlp_output() does both) — unless the norm
// before layer i + 1 is folded (Folds::next): then down has added it and prescaled h.
// A tap that returns false stops the layer before that linear layer; returns whether it ran to the end.
bool DecoderModel::run_layer(int i, const StepViews& sv, KvCache& cache, Tensor& x, bool add_pending,
                             const LinearTap* tap, bool next_follows) {
  const auto& layers = weights_.layers;
  const size_t l = size_t(i);
  Folds f;
  f.input = add_pending && i > 0 && folds(sv, tap, layers[l - 1].down, layers[l].qkv);
  f.mlp = folds(sv, tap, layers[l].o, layers[l].gate_up);
  f.next = next_follows && l + 1 < layers.size() && folds(sv, tap, layers[l].down, layers[l + 1].qkv);
  if (!f.input) layer_input_norm(i, sv, x, add_pending);
  if (!layer_attention(i, sv, cache, tap, f, x)) return false;
  if (!f.mlp) layer_mlp_norm(i, sv, x);
  return layer_mlp(i, sv, tap, f, x);
}

// Whether the norm between `producer` and `consumer` is folded into them in this step (only where
// nothing else stands between them: no tensor parallelism, LoRA or tap).
bool DecoderModel::folds(const StepViews& sv, const LinearTap* tap, const Linear& producer,
                         const Linear& consumer) const {
  return !group_ && !splitting_ && tap == nullptr && sv.lora_slots.empty() && sv.T <= kNormFoldRows &&
         backend_.norm_fold_applies(producer, consumer, sv.T);
}

void DecoderModel::fold_norm(const Tensor& in, const Linear& w, Tensor& x, const Tensor& norm_w, Tensor& h,
                             int64_t rows) {
  Tensor sums = rows_of(ws_->norm_sums, rows);
  backend_.linear_add_prescale(in, w, x, norm_w, h, sums);
}

// The layer's phases; the norms take the sums over the ranks, the others only this rank's part.
// Each works on the workspace rows of its step (StepViews::row0), h in and tmp out.
void DecoderModel::layer_input_norm(int i, const StepViews& sv, Tensor& x, bool add_pending) {
  Workspace& w = *ws_;
  Tensor h = sv.rows(w.h), tmp = sv.rows(w.tmp);
  const LayerWeights& L = weights_.layers[size_t(i)];
  if (!add_pending) backend_.rms_norm(x, L.attn_norm, config_.rms_norm_eps, h);
  else add_rms_norm(x, tmp, L.attn_norm, h);  // x += previous MLP out
}

bool DecoderModel::layer_attention(int i, const StepViews& sv, KvCache& cache, const LinearTap* tap, const Folds& f,
                                   Tensor& x) {
  const ModelConfig& c = config_;
  Workspace& w = *ws_;
  const AttentionBatch& ab = sv.ab;
  Tensor h = sv.rows(w.h), tmp = sv.rows(w.tmp);
  Tensor qkv = sv.rows(w.qkv), attn = sv.rows(w.attn);
  Tensor q = qkv.cols_view(0, c.q_size());
  Tensor k = qkv.cols_view(c.q_size(), c.kv_size());
  Tensor v = qkv.cols_view(c.q_size() + c.kv_size(), c.kv_size());
  Tensor qk = qkv.cols_view(0, c.q_size() + c.kv_size());
  const LayerWeights& L = weights_.layers[size_t(i)];
  const LoraLayer* lo = sv.lora_slots.empty() ? nullptr : &lora_->layer(i);
  if (tap && !(*tap)(LinearSlot::kQkv, h)) return false;
  if (lo) backend_.linear_lora(h, L.qkv, sv.lora_slots, lo->qkv, qkv);
  else if (f.input) backend_.linear_rms_scaled(h, rows_of(w.norm_sums, sv.T), c.rms_norm_eps, L.qkv, qkv, false);
  else backend_.linear(h, L.qkv, qkv);
  if (c.qk_norm) {
    backend_.rms_norm(q, L.q_norm, c.rms_norm_eps, q);
    backend_.rms_norm(k, L.k_norm, c.rms_norm_eps, k);
  }
  if (sv.q_cos.empty()) {  // q's heads and k's, side by side in qkv, and the store: one launch
    backend_.rope_store_kv(qk, sv.cos, sv.sin, c.head_dim, v, ab.slot_mapping, cache.layers[size_t(i)]);
  } else {  // logn attention scales q through its own tables
    backend_.rope(q, sv.q_cos, sv.q_sin, c.head_dim);
    backend_.rope(k, sv.cos, sv.sin, c.head_dim);
    backend_.store_kv(k, v, ab.slot_mapping, cache.layers[size_t(i)]);
  }
  backend_.attention(q, cache.layers[size_t(i)], ab, attn);
  if (tap && !(*tap)(LinearSlot::kO, attn)) return false;
  if (lo) backend_.linear_lora(attn, L.o, sv.lora_slots, lo->o, tmp);
  else if (f.mlp) fold_norm(attn, L.o, x, L.mlp_norm, h, sv.T);
  else row_parallel(attn, L.o, tmp, tap == nullptr);
  return true;
}

void DecoderModel::layer_mlp_norm(int i, const StepViews& sv, Tensor& x) {
  Workspace& w = *ws_;
  Tensor h = sv.rows(w.h), tmp = sv.rows(w.tmp);
  add_rms_norm(x, tmp, weights_.layers[size_t(i)].mlp_norm, h);  // row-parallel: the sum of the ranks' heads
}

bool DecoderModel::layer_mlp(int i, const StepViews& sv, const LinearTap* tap, const Folds& f, Tensor& x) {
  Workspace& w = *ws_;
  Tensor h = sv.rows(w.h), tmp = sv.rows(w.tmp);
  Tensor gate_up = sv.rows(w.gate_up), act = sv.rows(w.act);
  const LayerWeights& L = weights_.layers[size_t(i)];
  const LoraLayer* lo = sv.lora_slots.empty() ? nullptr : &lora_->layer(i);
  if (tap && !(*tap)(LinearSlot::kGateUp, h)) return false;
  if (lo) {
    backend_.linear_lora(h, L.gate_up, sv.lora_slots, lo->gate_up, gate_up);
    backend_.silu_mul(gate_up, act);
  } else if (f.mlp) {
    backend_.linear_rms_scaled(h, rows_of(w.norm_sums, sv.T), config_.rms_norm_eps, L.gate_up, act, true);
  } else {
    backend_.linear_silu_mul(h, L.gate_up, gate_up, act);
  }
  if (tap && !(*tap)(LinearSlot::kDown, act)) return false;
  if (lo) backend_.linear_lora(act, L.down, sv.lora_slots, lo->down, tmp);
  else if (f.next) fold_norm(act, L.down, x, weights_.layers[size_t(i) + 1].attn_norm, h, sv.T);
  else row_parallel(act, L.down, tmp, tap == nullptr);
  return true;
}

// Every layer for a step's two halves (whole sequences each, disjoint workspace rows), ordered so
// that each half's sums over the ranks run on stream 1 while the other half's matrix products run
// on stream 0 (backends with one stream run the same order). Marks: 0 + p = half p's input norm
// done, 2 + p its attention, 4 + p its MLP norm, 6 + p its MLP (or, before layer 0, the embedding).
void DecoderModel::run_layers_split(const StepViews (&half)[2], KvCache& cache) {
  Workspace& w = *ws_;
  Tensor x[2] = {half[0].rows(w.x), half[1].rows(w.x)};
  const int sums = backend_.streams() > 1 ? 1 : 0;  // the sums' stream
  struct Back {  // stream 0 current again however this ends (a failed collective throws)
    Backend& b;
    bool& splitting;
    ~Back() {
      b.set_stream(0);
      splitting = false;
    }
  } back{backend_, splitting_};
  splitting_ = true;
  auto on = [&](int stream, int after) {  // the next phase: on `stream`, once mark `after` is reached
    backend_.set_stream(stream);
    backend_.wait_mark(after);
  };
  backend_.mark(6);
  backend_.mark(7);
  for (int i = 0; i < config_.num_layers; ++i) {
    for (int p = 0; p < 2; ++p) {
      on(sums, 6 + p);
      layer_input_norm(i, half[p], x[p], i > 0);
      backend_.mark(0 + p);
      on(0, 0 + p);
      layer_attention(i, half[p], cache, nullptr, Folds{}, x[p]);
      backend_.mark(2 + p);
    }
    for (int p = 0; p < 2; ++p) {
      on(sums, 2 + p);
      layer_mlp_norm(i, half[p], x[p]);
      backend_.mark(4 + p);
      on(0, 4 + p);
      layer_mlp(i, half[p], nullptr, Folds{}, x[p]);
      backend_.mark(6 + p);
    }
  }
  // Stream 0 is current and has waited for all of stream 1's work (the last MLP norm).
}

void DecoderModel::add_rms_norm(Tensor& x, Tensor& partial, const Tensor& w, Tensor& out) {
  if (!group_) {
    backend_.add_rms_norm(x, partial, w, config_.rms_norm_eps, out);
    return;
  }
  const Deferred d = std::exchange(deferred_, Deferred{});
  APUS_CHECK(!d.w || (d.out.data == partial.data && d.out.shape == partial.shape),
             "a deferred product is not this sum's input");
  const Collectives::RowProducer produce = [&](int64_t r0, int64_t r1) { d.run(backend_, r0, r1); };
  group_->all_reduce_add_rms_norm(partial, x, w, config_.rms_norm_eps, out, backend_, d.w ? &produce : nullptr);
}

void DecoderModel::add_mlp_output(Tensor& x, Tensor& partial) {
  run_deferred();
  if (group_) group_->all_reduce(partial);
  backend_.add(x, partial);
}

void DecoderModel::row_parallel(const Tensor& in, const Linear& w, Tensor& out, bool defer) {
  if (!group_ || !defer || splitting_) {
    backend_.linear(in, w, out);
    return;
  }
  APUS_CHECK(!deferred_.w, "a deferred product was never used");
  deferred_ = {in, out, &w};
}

void DecoderModel::run_deferred() {
  if (!deferred_.w) return;
  const Deferred d = std::exchange(deferred_, Deferred{});
  d.run(backend_, 0, d.out.rows());
}

void DecoderModel::run_layers(const StepViews& sv, KvCache& cache, const StepViews (*halves)[2]) {
  const ModelConfig& c = config_;
  Workspace& w = *ws_;
  const int64_t T = sv.T, R = sv.R;
  Tensor x = rows_of(w.x, T), tmp = rows_of(w.tmp, T);
  deferred_ = {};  // one left by a step that failed half-way is not this step's
  embed_tokens(sv.tokens, x);
  if (halves) {
    run_layers_split(*halves, cache);
  } else {
    for (int i = 0; i < c.num_layers; ++i) run_layer(i, sv, cache, x, i > 0, nullptr, true);
  }
  add_mlp_output(x, tmp);
  if (R == 0) return;
  Tensor fh = rows_of(w.final_h, R), lg = rows_of(w.logits, R);
  backend_.gather_rows(x, sv.logit_rows, fh);
  backend_.rms_norm(fh, weights_.final_norm, c.rms_norm_eps, fh);
  // The product at the backend's row bucket where the buffers hold it (the rows past R hold earlier
  // steps' values and are not read).
  const int64_t bucket = backend_.logit_rows_bucket(R), rows = bucket <= w.logit_capacity ? bucket : R;
  Tensor product = rows_of(w.logits, rows);
  backend_.linear(rows_of(w.final_h, rows), weights_.lm_head, product);
  if (!group_) return;
  if (sv.argmax_only) {  // this rank's best of its real vocabulary rows (not the padding's zeros)
    const int64_t first = weights_.shard.vocab0,
                  n = std::clamp<int64_t>(config_.vocab_size - first, 0, weights_.lm_head.out_features);
    Tensor best = rows_of(w.best, R), all = rows_of(w.candidates, R);
    backend_.argmax_rows(lg.cols_view(0, n), first, best);
    group_->all_gather_cols(best, all);
    // Every rank picks the tokens into its draws (where it has them: the engine's rank 0 and the
    // ranks that mirror it), so that the next step may take them on the device.
    if (!draws_.empty()) {
      APUS_CHECK(draws_.numel() >= R, "{} greedy rows do not fit the draws buffer ({})", R, draws_.numel());
      Tensor picked = draws_.rows_view(0, R);
      backend_.pick_greedy(all, picked);
    }
  } else {
    Tensor all = rows_of(w.gathered, R);
    group_->all_gather_cols(lg, all);
  }
}

void DecoderModel::embed(const StepBatch& in, Tensor& hidden) {
  const int64_t T = int64_t(in.tokens.size());
  APUS_CHECK(hidden.rows() == T && hidden.cols() == config_.hidden_size, "embed: hidden must be [{}, {}]", T,
             config_.hidden_size);
  Workspace& w = workspace(T, 0);
  KvCache none;
  none.block_size = 1;
  const StepViews sv = upload_meta(in, T, 0, in.max_blocks, 0, none, w.meta_host, w.meta_device);
  embed_tokens(sv.tokens, hidden);
}

Tensor& DecoderModel::draws(int64_t rows) {
  if (draws_.empty() || draws_.numel() < rows) {
    if (ws_) drop_graphs();  // they read the old buffer
    draws_ = backend_.alloc(DType::I32, {std::max<int64_t>(rows, 256)});
  }
  return draws_;
}

void DecoderModel::embed_tokens(const Tensor& tokens, Tensor& x) {
  backend_.embedding(tokens, weights_.embed, x, weights_.shard.vocab0, config_.vocab_size,
                     draws_.empty() ? nullptr : &draws_);
  if (group_) group_->all_reduce(x);  // each rank has its vocabulary's rows, zeros elsewhere
}

void DecoderModel::forward_layer(const StepBatch& in, KvCache& cache, int layer, Tensor& hidden,
                                 const LinearTap& tap) {
  const int64_t T = int64_t(in.tokens.size());
  APUS_CHECK(layer >= 0 && layer < config_.num_layers && hidden.rows() == T && hidden.cols() == config_.hidden_size,
             "forward_layer: layer {} of {}, hidden must be [{}, {}]", layer, config_.num_layers, T,
             config_.hidden_size);
  Workspace& w = workspace(T, 0);
  const StepViews sv = upload_meta(in, T, 0, in.max_blocks, 0, cache, w.meta_host, w.meta_device);
  deferred_ = {};
  if (!run_layer(layer, sv, cache, hidden, false, tap ? &tap : nullptr, false)) return;
  Tensor tmp = rows_of(w.tmp, T);
  add_mlp_output(hidden, tmp);
}

LayerWeights& DecoderModel::layer_weights(int layer) {
  if (ws_) drop_graphs();  // recorded graphs hold the old matrices
  return weights_.layers.at(size_t(layer));
}

namespace {

int graph_bucket(int64_t n) {
  int b = 1;
  while (b < n) b *= 2;
  return b;
}

// Block-table width of a decode step's graph: tables up to that wide share it.
int decode_width(int max_blocks) { return std::max(16, graph_bucket(std::max(1, max_blocks))); }

// One new token for each of at most kMaxGraphBatch sequences.
bool is_decode(const StepBatch& in) {
  const int S = in.num_seqs();
  if (S != int64_t(in.tokens.size()) || S > DecoderModel::kMaxGraphBatch) return false;
  for (int s = 0; s < S; ++s)
    if (in.q_start[size_t(s) + 1] - in.q_start[size_t(s)] != 1) return false;
  return true;
}

// The two halves of a step for run_layers_split: whole sequences each, cut at the sequence
// boundary nearest half the tokens; false when either half would hold under a quarter of them.
bool split_step(const StepBatch& in, StepBatch (&half)[2]) {
  const int S = in.num_seqs();
  const int32_t T = int32_t(in.tokens.size());
  int cut = 0;
  for (int s = 1; s < S; ++s)
    if (cut == 0 || std::abs(2 * in.q_start[size_t(s)] - T) < std::abs(2 * in.q_start[size_t(cut)] - T)) cut = s;
  if (cut == 0 || 4 * in.q_start[size_t(cut)] < T || 4 * (T - in.q_start[size_t(cut)]) < T) return false;
  const int bounds[3] = {0, cut, S};
  for (int p = 0; p < 2; ++p) {
    const size_t s0 = size_t(bounds[p]), s1 = size_t(bounds[p + 1]);
    const int32_t t0 = in.q_start[s0], t1 = in.q_start[s1];
    StepBatch& h = half[p];
    auto tokens_of = [&](const std::vector<int32_t>& v) {  // per token (empty stays empty)
      return v.empty() ? v : std::vector<int32_t>(v.begin() + t0, v.begin() + t1);
    };
    auto seqs_of = [&](const std::vector<int32_t>& v, size_t width) {  // per sequence
      return v.empty() ? v : std::vector<int32_t>(v.begin() + long(s0 * width), v.begin() + long(s1 * width));
    };
    h.tokens = tokens_of(in.tokens);
    h.slot_mapping = tokens_of(in.slot_mapping);
    h.lora_slots = tokens_of(in.lora_slots);
    h.ctx_len = seqs_of(in.ctx_len, 1);
    h.prompt_len = seqs_of(in.prompt_len, 1);
    h.block_table = seqs_of(in.block_table, size_t(in.max_blocks));
    h.max_blocks = in.max_blocks;
    h.q_start.clear();
    for (size_t s = s0; s <= s1; ++s) h.q_start.push_back(in.q_start[s] - t0);
  }
  return true;
}

}  // namespace

// Replays the recorded graph of this decode step's shape (`bucket` sequences, tables `width`
// blocks wide, this cache), or, the first time, runs the step op by op (which also sizes scratch
// buffers and loads library kernels) and records it for the next.
void DecoderModel::forward_graph(const StepBatch& in, KvCache& cache, int bucket, int width) {
  const bool lora = lora_ && std::any_of(in.lora_slots.begin(), in.lora_slots.end(), [](int32_t s) { return s >= 0; });
  Workspace& w = *ws_;
  std::vector<const void*> cache_ptrs;
  for (const KvLayer& l : cache.layers) {
    cache_ptrs.push_back(l.k.data);
    cache_ptrs.push_back(l.v.data);
  }
  const int64_t cache_blocks = cache.layers[0].k.shape[0];
  Graph* g = nullptr;
  for (Graph& cand : w.graphs)
    if (cand.bucket == bucket && cand.max_blocks == width && cand.lora == lora && cand.argmax_only == in.argmax_only &&
        cand.cache_blocks == cache_blocks && cand.cache == cache_ptrs)
      g = &cand;
  const int max_ctx_len = width * cache.block_size;
  if (g != nullptr) {
    upload_meta(in, bucket, bucket, width, max_ctx_len, cache, w.meta_host, g->staging);
    backend_.replay(g->id);
    return;
  }
  if (w.graphs.size() >= 64) drop_graphs();  // caches come and go (generate() makes one per call)
  w.graphs.push_back(Graph{bucket, width, lora, in.argmax_only, std::move(cache_ptrs), cache_blocks, Tensor(), -1});
  Graph& ng = w.graphs.back();
  const StepViews sv = upload_meta(in, bucket, bucket, width, max_ctx_len, cache, w.meta_host, ng.staging);
  run_layers(sv, cache);  // this step's result, op by op
  backend_.begin_capture();
  try {
    run_layers(sv, cache);
  } catch (...) {
    try {
      backend_.end_capture();
    } catch (...) {
    }
    w.graphs.pop_back();
    throw;
  }
  ng.id = backend_.end_capture();
}

Tensor DecoderModel::forward(const StepBatch& in, KvCache& cache) {
  if (!group_) return forward_step(in, cache);
  try {
    return forward_step(in, cache);
  } catch (const std::exception& e) {  // the other ranks cannot go on without this one
    group_->abort(fmt::format("rank {} failed: {}", group_->rank(), e.what()));
    throw;
  }
}

Tensor DecoderModel::forward_step(const StepBatch& in, KvCache& cache) {
  const int64_t T = int64_t(in.tokens.size());
  const int64_t R = int64_t(in.logit_rows.size());
  APUS_CHECK(T > 0 && int64_t(in.slot_mapping.size()) == T && int64_t(in.q_start.size()) == in.num_seqs() + 1,
             "malformed step batch");
  if (step_hook_) step_hook_(in, cache);
  if (pad_decode_ && is_decode(in) && R > 0 && R <= T && !cache.layers.empty()) {
    // A decode step runs padded to its bucket and table width whether replayed from a graph or
    // not, so that both give the same results bit for bit.
    const int bucket = graph_bucket(T), width = decode_width(in.max_blocks);
    Workspace& w = workspace(bucket, bucket);  // may drop graphs recorded on smaller buffers
    if (use_graphs_) {
      forward_graph(in, cache, bucket, width);
    } else {
      const StepViews sv = upload_meta(in, bucket, bucket, width, width * cache.block_size, cache, w.meta_host, w.meta_device);
      run_layers(sv, cache);
    }
  } else {
    Workspace& w = workspace(T, R);
    const StepViews sv = upload_meta(in, T, R, in.max_blocks, 0, cache, w.meta_host, w.meta_device);
    StepBatch parts[2];
    if (group_ && split_tokens_ > 0 && T >= split_tokens_ && split_step(in, parts)) {
      StepViews halves[2];
      for (int p = 0; p < 2; ++p) {
        halves[p] = upload_meta(parts[p], int64_t(parts[p].tokens.size()), 0, in.max_blocks, 0, cache, w.half_host[p],
                                w.half_device[p]);
        halves[p].row0 = p == 0 ? 0 : halves[0].T;
      }
      run_layers(sv, cache, &halves);
    } else {
      run_layers(sv, cache);
    }
  }
  if (R == 0) return Tensor();
  if (lora_ && !in.lora_slots.empty()) lora_lm_heads(in);
  if (group_ && in.argmax_only) return rows_of(ws_->candidates, R);
  if (group_) return rows_of(ws_->gathered, R).cols_view(0, config_.vocab_size);
  return rows_of(ws_->logits, R);
}

void DecoderModel::forward(const StepBatch& in, KvCache& cache, std::vector<float>& logits) {
  const Tensor dev = forward(in, cache);
  logits.resize(dev.empty() ? 0 : size_t(dev.numel()));
  if (!dev.empty()) backend_.copy_to_host(dev, logits.data());
}

void DecoderModel::enable_lora(int max_loras, int max_rank) {
  if (ws_) drop_graphs();
  lora_ = std::make_unique<LoraSlots>(whole_config_, weights_.shard, backend_, max_loras, max_rank);
  if (lora_listener_) lora_->set_listener(lora_listener_);
}

// Op by op after the step (also after a graph replay): the logit rows of tokens whose adapter
// brings its own lm_head are recomputed through it from their final hidden rows, in place.
void DecoderModel::lora_lm_heads(const StepBatch& in) {
  Workspace& w = *ws_;
  const int64_t R = int64_t(in.logit_rows.size());
  bool any = false;
  for (int64_t a = 0; a < R;) {  // runs of consecutive logit rows of one adapter
    const int slot = in.lora_slots[size_t(in.logit_rows[size_t(a)])];
    int64_t e = a + 1;
    while (e < R && in.lora_slots[size_t(in.logit_rows[size_t(e)])] == slot) ++e;
    // A slot no token uses may be being loaded by another thread: look at its lm_head only when used.
    const Linear* head = slot >= 0 ? lora_->lm_head(slot) : nullptr;
    if (head != nullptr) {
      APUS_CHECK(!(group_ && in.argmax_only), "an argmax_only step cannot use an adapter's own lm_head");
      Tensor out = w.logits.rows_view(a, e - a);
      backend_.linear(w.final_h.rows_view(a, e - a), *head, out);
      any = true;
    }
    a = e;
  }
  if (group_ && any) {  // every rank recomputed its vocabulary's part: gather them again
    Tensor all = rows_of(w.gathered, R);
    group_->all_gather_cols(rows_of(w.logits, R), all);
  }
}

}  // namespace apus
