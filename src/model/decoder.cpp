#include "model/decoder.h"

#include <cmath>

#include "core/error.h"

namespace apus {

// Activation buffers, grown to the largest step seen and reused (no allocation per step).
struct DecoderModel::Workspace {
  int64_t capacity = 0, logit_capacity = 0;
  Tensor x, h, qkv, attn, gate_up, act, tmp, cos, sin, final_h, logits;
};

namespace {

Tensor rows_of(const Tensor& t, int64_t n) { return t.rows_view(0, n); }

// A read-only view of host metadata (backends only read it, or upload a copy).
Tensor host_i32(const std::vector<int32_t>& v, std::vector<int64_t> shape) {
  return make_view(const_cast<int32_t*>(v.data()), DType::I32, std::move(shape));
}

}  // namespace

DecoderModel::DecoderModel(ModelConfig config, ModelWeights weights, Backend& backend)
    : config_(std::move(config)), weights_(std::move(weights)), backend_(backend), rope_(config_) {}

DecoderModel::~DecoderModel() = default;

DecoderModel::Workspace& DecoderModel::workspace(int64_t tokens, int64_t logit_rows) {
  if (!ws_) ws_ = std::make_unique<Workspace>();
  Workspace& w = *ws_;
  const ModelConfig& c = config_;
  const DType a = backend_.activation_dtype();
  if (tokens > w.capacity) {
    const int64_t T = std::max<int64_t>(tokens, 16);
    w.x = backend_.alloc(a, {T, c.hidden_size});
    w.h = backend_.alloc(a, {T, c.hidden_size});
    w.tmp = backend_.alloc(a, {T, c.hidden_size});
    w.qkv = backend_.alloc(a, {T, c.q_size() + 2 * c.kv_size()});
    w.attn = backend_.alloc(a, {T, c.q_size()});
    w.gate_up = backend_.alloc(a, {T, 2 * c.intermediate_size});
    w.act = backend_.alloc(a, {T, c.intermediate_size});
    w.cos = backend_.alloc(DType::F32, {T, rope_.half()});
    w.sin = backend_.alloc(DType::F32, {T, rope_.half()});
    w.capacity = T;
  }
  if (logit_rows > w.logit_capacity) {
    w.final_h = backend_.alloc(a, {logit_rows, c.hidden_size});
    w.logits = backend_.alloc(DType::F32, {logit_rows, c.vocab_size});
    w.logit_capacity = logit_rows;
  }
  return w;
}

void DecoderModel::forward(const StepBatch& in, KvCache& cache, std::vector<float>& logits) {
  const ModelConfig& c = config_;
  const int64_t T = int64_t(in.tokens.size());
  const int64_t R = int64_t(in.logit_rows.size());
  APUS_CHECK(T > 0 && int64_t(in.slot_mapping.size()) == T && int64_t(in.q_start.size()) == in.num_seqs() + 1,
             "malformed step batch");
  Workspace& w = workspace(T, R);

  // Host metadata (the rope table is computed here, per token, from its sequence's length).
  std::vector<float> cos_h(size_t(T * rope_.half())), sin_h(cos_h.size());
  for (int s = 0; s < in.num_seqs(); ++s) {
    const int q_len = in.q_start[size_t(s) + 1] - in.q_start[size_t(s)];
    for (int j = 0; j < q_len; ++j) {
      const int64_t t = in.q_start[size_t(s)] + j;
      const int pos = in.ctx_len[size_t(s)] - q_len + j;
      rope_.fill(pos, in.ctx_len[size_t(s)], &cos_h[size_t(t * rope_.half())], &sin_h[size_t(t * rope_.half())]);
    }
  }
  Tensor tokens = backend_.upload(host_i32(in.tokens, {T}));
  Tensor logit_rows = backend_.upload(host_i32(in.logit_rows, {R}));
  Tensor cos = backend_.upload(make_view(cos_h.data(), DType::F32, {T, rope_.half()}));
  Tensor sin = backend_.upload(make_view(sin_h.data(), DType::F32, {T, rope_.half()}));
  AttentionBatch ab;
  ab.num_seqs = in.num_seqs();
  ab.max_blocks_per_seq = in.max_blocks;
  ab.block_size = cache.block_size;
  ab.sliding_window = c.sliding_window;
  ab.scale = 1.0f / std::sqrt(float(c.head_dim));
  ab.q_start = backend_.upload(host_i32(in.q_start, {ab.num_seqs + 1}));
  ab.ctx_len = backend_.upload(host_i32(in.ctx_len, {ab.num_seqs}));
  ab.block_table = backend_.upload(host_i32(in.block_table, {ab.num_seqs, in.max_blocks}));
  ab.slot_mapping = backend_.upload(host_i32(in.slot_mapping, {T}));

  Tensor x = rows_of(w.x, T), h = rows_of(w.h, T), tmp = rows_of(w.tmp, T);
  Tensor qkv = rows_of(w.qkv, T), attn = rows_of(w.attn, T);
  Tensor gate_up = rows_of(w.gate_up, T), act = rows_of(w.act, T);
  Tensor q = qkv.cols_view(0, c.q_size());
  Tensor k = qkv.cols_view(c.q_size(), c.kv_size());
  Tensor v = qkv.cols_view(c.q_size() + c.kv_size(), c.kv_size());

  backend_.embedding(tokens, weights_.embed, x);
  for (int i = 0; i < c.num_layers; ++i) {
    const LayerWeights& L = weights_.layers[size_t(i)];
    if (i == 0) backend_.rms_norm(x, L.attn_norm, c.rms_norm_eps, h);
    else backend_.add_rms_norm(x, tmp, L.attn_norm, c.rms_norm_eps, h);  // x += previous MLP out
    backend_.linear(h, L.qkv, qkv);
    if (c.qk_norm) {
      backend_.rms_norm(q, L.q_norm, c.rms_norm_eps, q);
      backend_.rms_norm(k, L.k_norm, c.rms_norm_eps, k);
    }
    backend_.rope(q, cos, sin, c.head_dim);
    backend_.rope(k, cos, sin, c.head_dim);
    backend_.store_kv(k, v, ab.slot_mapping, cache.layers[size_t(i)]);
    backend_.attention(q, cache.layers[size_t(i)], ab, attn);
    backend_.linear(attn, L.o, tmp);
    backend_.add_rms_norm(x, tmp, L.mlp_norm, c.rms_norm_eps, h);
    backend_.linear(h, L.gate_up, gate_up);
    backend_.silu_mul(gate_up, act);
    backend_.linear(act, L.down, tmp);
  }
  backend_.add(x, tmp);
  if (R == 0) {
    logits.clear();
    return;
  }
  Tensor fh = rows_of(w.final_h, R), lg = rows_of(w.logits, R);
  backend_.gather_rows(x, logit_rows, fh);
  backend_.rms_norm(fh, weights_.final_norm, c.rms_norm_eps, fh);
  backend_.linear(fh, weights_.lm_head, lg);
  logits.resize(size_t(R * c.vocab_size));
  backend_.copy_to_host(lg, logits.data());
}

}  // namespace apus
