#include "model/decoder.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace apus {

// Activation buffers, grown to the largest step seen and reused (no allocation per step).
struct DecoderModel::Workspace {
  int64_t capacity = 0, logit_capacity = 0;
  Tensor x, h, qkv, attn, gate_up, act, tmp, final_h, logits;
  // The step's metadata in one host buffer of 4-byte words (token ids, rows, block tables, rope
  // tables), so that a GPU backend uploads it in one copy into `meta_device`.
  Tensor meta_host, meta_device;
};

namespace {

Tensor rows_of(const Tensor& t, int64_t n) { return t.rows_view(0, n); }

// Packs a step's metadata into consecutive 4-byte words; each part is later a view of the uploaded copy.
class MetaPacker {
 public:
  explicit MetaPacker(Tensor& buffer) : buf_(buffer) {}
  size_t add(const std::vector<int32_t>& v) {
    const size_t at = reserve(v.size());
    std::copy(v.begin(), v.end(), buf_.ptr<int32_t>() + at);
    return at;
  }
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

  // Host metadata, packed for one upload (the rope table is computed here, per token, from its
  // sequence's length).
  const int S = in.num_seqs();
  const int64_t half = rope_.half();
  MetaPacker pack(w.meta_host);
  const size_t tokens_at = pack.add(in.tokens), rows_at = pack.add(in.logit_rows);
  const size_t q_start_at = pack.add(in.q_start), ctx_at = pack.add(in.ctx_len);
  const size_t table_at = pack.add(in.block_table), slots_at = pack.add(in.slot_mapping);
  const size_t cos_at = pack.reserve(size_t(T * half)), sin_at = pack.reserve(size_t(T * half));
  int max_q_len = 0, max_ctx_len = 0;
  for (int s = 0; s < S; ++s) {
    const int q_len = in.q_start[size_t(s) + 1] - in.q_start[size_t(s)];
    max_q_len = std::max(max_q_len, q_len);
    max_ctx_len = std::max(max_ctx_len, in.ctx_len[size_t(s)]);
    for (int j = 0; j < q_len; ++j) {
      const int64_t t = in.q_start[size_t(s)] + j;
      const int pos = in.ctx_len[size_t(s)] - q_len + j;
      rope_.fill(pos, in.ctx_len[size_t(s)], pack.floats(cos_at + size_t(t * half)), pack.floats(sin_at + size_t(t * half)));
    }
  }
  const Tensor meta = backend_.upload_step(pack.packed(), w.meta_device);
  Tensor tokens = meta_view(meta, tokens_at, DType::I32, {T});
  Tensor logit_rows = meta_view(meta, rows_at, DType::I32, {R});
  Tensor cos = meta_view(meta, cos_at, DType::F32, {T, half});
  Tensor sin = meta_view(meta, sin_at, DType::F32, {T, half});
  AttentionBatch ab;
  ab.num_seqs = S;
  ab.max_blocks_per_seq = in.max_blocks;
  ab.block_size = cache.block_size;
  ab.sliding_window = c.sliding_window;
  ab.scale = 1.0f / std::sqrt(float(c.head_dim));
  ab.max_q_len = max_q_len;
  ab.max_ctx_len = max_ctx_len;
  ab.q_start = meta_view(meta, q_start_at, DType::I32, {S + 1});
  ab.ctx_len = meta_view(meta, ctx_at, DType::I32, {S});
  ab.block_table = meta_view(meta, table_at, DType::I32, {S, in.max_blocks});
  ab.slot_mapping = meta_view(meta, slots_at, DType::I32, {T});

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
