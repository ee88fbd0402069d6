#include "model/weights.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <set>

#include "core/error.h"
#include "core/random.h"
#include "core/thread_pool.h"
#include "model/safetensors.h"
#include "quant/gptq_format.h"

namespace apus {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

class CheckpointSource : public WeightSource {
 public:
  explicit CheckpointSource(const std::string& dir) : ckpt_(Checkpoint::open(dir)) {}
  Tensor get(const std::string& name, const std::vector<int64_t>&) override {
    const TensorEntry* e = ckpt_.find(name);
    return e ? ckpt_.tensor(*e) : Tensor{};
  }
  std::string where(const std::string& name) const override {
    const TensorEntry* e = ckpt_.find(name);
    return e ? e->file : ckpt_.dir();
  }
  std::vector<std::string> names() const override { return ckpt_.names(); }
  bool has(const std::string& name) const override { return ckpt_.find(name) != nullptr; }

 private:
  Checkpoint ckpt_;
};

// The standard deviation gain of a float matrix's initial values (random_weight).
double weight_gain(const std::string& name);

class DummySource : public WeightSource {
 public:
  DummySource(DType dtype, uint64_t seed, int threads, const std::optional<QuantConfig>& quant)
      : dtype_(dtype), seed_(seed), threads_(threads), quant_(quant) {}
  Tensor get(const std::string& name, const std::vector<int64_t>& shape) override {
    if (quant_ && name.ends_with(".qweight")) return random_words(name, shape);
    if (quant_ && name.ends_with(".qzeros")) return filled_words(shape, quant_->bits == 8 ? 0x80808080u : 0x88888888u);
    if (quant_ && name.ends_with(".g_idx")) {
      Tensor t = host_tensor(DType::I32, shape);
      const int64_t g = quant_->group_size == -1 ? shape[0] : quant_->group_size;
      for (int64_t i = 0; i < t.numel(); ++i) t.ptr<int32_t>()[i] = int32_t(i / g);
      return t;
    }
    if (quant_ && name.ends_with(".scales")) {
      // Codes uniform in [0, 2^bits) around the zero 2^(bits-1) have a standard deviation of
      // about 2^bits / sqrt(12); the float initialiser's is gain / sqrt(in).
      const int64_t in = quant_->group_size == -1 ? 4096 : shape[0] * quant_->group_size;
      const double code_std = double(1 << quant_->bits) / std::sqrt(12.0);
      const std::string weight = name.substr(0, name.size() - 7) + ".weight";
      const uint16_t s = f32_to_f16(float(weight_gain(weight) / std::sqrt(double(in)) / code_std));
      Tensor t = host_tensor(DType::F16, shape);
      std::fill(t.ptr<uint16_t>(), t.ptr<uint16_t>() + t.numel(), s);
      return t;
    }
    return random_weight(name, shape, dtype_, seed_, threads_);
  }
  Tensor get_block(const std::string& name, const std::vector<int64_t>& shape, int64_t r0, int64_t nr, int64_t c0,
                   int64_t nc) override {
    return random_weight_block(name, shape, r0, nr, c0, nc, dtype_, seed_, threads_);
  }
  std::string where(const std::string&) const override { return "dummy weights"; }
  std::vector<std::string> names() const override { return {}; }
  bool has(const std::string& name) const override {
    // The output layer stays 16-bit, as AutoGPTQ and AutoAWQ leave it (and quant_config refuses
    // GPTQ's lm_head: true).
    if (name.ends_with(".qweight"))
      return quant_.has_value() && !name.ends_with("lm_head.qweight") && !name.ends_with("output_layer.qweight");
    if (name.ends_with(".g_idx")) return quant_ && quant_->method == QuantMethod::kGptq;
    return true;
  }

 private:
  Tensor random_words(const std::string& name, const std::vector<int64_t>& shape) const {
    Tensor t = host_tensor(DType::I32, shape);
    const uint64_t key = fnv1a64(name) ^ (seed_ * kGoldenGamma);
    auto fill = [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) t.ptr<uint32_t>()[i] = uint32_t(splitmix64(key + uint64_t(i)));
    };
    if (threads_ > 1 && t.numel() > (1 << 20)) {
      ThreadPool pool(threads_);
      pool.parallel_for(t.numel(), 4096, fill);
    } else {
      fill(0, t.numel());
    }
    return t;
  }
  static Tensor filled_words(const std::vector<int64_t>& shape, uint32_t w) {
    Tensor t = host_tensor(DType::I32, shape);
    std::fill(t.ptr<uint32_t>(), t.ptr<uint32_t>() + t.numel(), w);
    return t;
  }

  DType dtype_;
  uint64_t seed_;
  int threads_;
  std::optional<QuantConfig> quant_;
};

// A copy of `t` (2-D, or 1-D: a bias) with row r taken from row order[r].
Tensor permute_rows(const Tensor& t, const std::vector<int64_t>& order) {
  Tensor out = host_tensor(t.dtype, t.shape);
  const size_t row_bytes = size_t(t.cols()) * dtype_size(t.dtype);
  for (size_t r = 0; r < order.size(); ++r)
    std::memcpy(static_cast<char*>(out.data) + r * row_bytes,
                static_cast<const char*>(t.data) + size_t(order[r] * t.row_stride) * dtype_size(t.dtype), row_bytes);
  return out;
}

// Rows or columns [begin, begin + n) of a matrix; n < 0: all of them.
struct Range {
  int64_t begin = 0, n = -1;
  Range or_all(int64_t size) const { return n < 0 ? Range{0, size} : *this; }
};

// Asks the source for each tensor of the architecture, checks it, and remembers what was used so
// that leftovers can be reported.
class Loader {
 public:
  Loader(WeightSource& source, Backend& backend, const std::optional<QuantConfig>& quant)
      : source_(source), backend_(backend), quant_(quant) {}

  // A fetched matrix in the dtype the backend wants (a GPU backend: its activation dtype).
  Tensor upload_matrix(const Tensor& t, size_t* bytes) {
    *bytes += t.nbytes();
    return backend_.upload(convert_float(contiguous(t), backend_.weight_dtype(t.dtype)));
  }
  Tensor vector(const std::string& name, int64_t n) { return upload_vector(fetch(name, {n})); }
  Tensor upload_vector(const Tensor& t) { return backend_.upload(convert_float(contiguous(t), DType::F32)); }
  // The linear layer `prefix` [out, in] (and its bias), or a rank's rows `rows` (column-parallel:
  // with their bias) or columns `cols` (row-parallel: the bias is added by one rank, `bias_here`).
  LinearPart part(const std::string& prefix, int64_t out, int64_t in, bool bias, size_t* bytes, Range rows = {},
                  Range cols = {}, bool bias_here = true) {
    rows = rows.or_all(out), cols = cols.or_all(in);
    LinearPart p;
    if (quantized(prefix)) {
      size_t whole = 0;
      p.quant = quant_part(quant_weight(prefix, out, in, &whole), rows, cols, prefix);
      *bytes += p.quant.nbytes();
    } else {
      p.weight = upload_matrix(fetch_block(prefix + ".weight", {out, in}, rows, cols), bytes);
    }
    if (bias && bias_here) p.bias = upload_vector(fetch(prefix + ".bias", {out}).rows_view(rows.begin, rows.n));
    if (bias && !bias_here) ignore(prefix + ".bias");
    return p;
  }
  // A quantized checkpoint's layer has `.qweight` (and qzeros, scales, g_idx); a layer it left in
  // float (AWQ's modules_to_not_convert) has `.weight`.
  bool quantized(const std::string& prefix) const { return quant_ && source_.has(prefix + ".qweight"); }
  QuantWeight quant_weight(const std::string& prefix, int64_t out, int64_t in, size_t* bytes) {
    const QuantConfig& q = *quant_;
    const int64_t p = 32 / q.bits, groups = q.group_size == -1 ? 1 : in / q.group_size;
    const bool awq = q.method == QuantMethod::kAwq;
    QuantTensors t;
    t.qweight = raw(prefix + ".qweight", awq ? std::vector<int64_t>{in, out / p} : std::vector<int64_t>{in / p, out});
    t.qzeros = raw(prefix + ".qzeros", {groups, out / p});
    t.scales = raw(prefix + ".scales", {groups, out});
    if (!awq && source_.has(prefix + ".g_idx")) t.g_idx = raw(prefix + ".g_idx", {in});
    QuantWeight w = load_quant_weight(t, q, out, in, prefix, source_.where(prefix + ".qweight"));
    *bytes += w.nbytes();
    return w;
  }
  // A rank's rows and input columns of a quantized matrix. Rows are views; columns must follow the
  // groups (or all be in the one group of group_size -1) and the stored column order.
  static QuantWeight quant_part(QuantWeight w, Range rows, Range cols, const std::string& prefix) {
    for (Tensor* t : {&w.qweight, &w.scales, &w.zeros}) *t = t->rows_view(rows.begin, rows.n);
    const int64_t in = w.in();
    if (cols.n == in) return w;
    APUS_CHECK(w.perm.empty(),
               "{}: an act-order (desc_act) checkpoint cannot be split by input columns for tensor parallelism yet",
               prefix);
    APUS_CHECK((cols.begin * w.bits) % 8 == 0, "{}: input columns {} do not start on a byte", prefix, cols.begin);
    w.qweight = contiguous(w.qweight.cols_view(cols.begin * w.bits / 8, cols.n * w.bits / 8));
    if (w.group_size == in) {  // one group per row: every column keeps its row's scale and zero
      w.group_size = cols.n;
    } else {
      APUS_CHECK(cols.begin % w.group_size == 0 && cols.n % w.group_size == 0,
                 "{}: tensor parallelism gives a rank input columns [{}, {}), not whole groups of {}", prefix,
                 cols.begin, cols.begin + cols.n, w.group_size);
      w.scales = contiguous(w.scales.cols_view(cols.begin / w.group_size, cols.n / w.group_size));
      w.zeros = contiguous(w.zeros.cols_view(cols.begin / w.group_size, cols.n / w.group_size));
    }
    return w;
  }
  // A tensor of a quantized layer, as stored (unpack_quant checks its shape and dtype).
  Tensor raw(const std::string& name, const std::vector<int64_t>& shape) {
    used_.insert(name);
    return source_.get(name, shape);
  }
  // A fused projection [sum(rows), in] (and its bias) cut into parts of `rows` rows each: row views
  // of the checkpoint's matrix, so nothing is copied unless `reorder` permutes the rows first.
  // `keep` (per part; default all) picks a rank's rows within each part.
  std::vector<LinearPart> fused(const std::string& prefix, const std::vector<int64_t>& rows, int64_t in, bool bias,
                                size_t* bytes, const std::vector<int64_t>* reorder = nullptr,
                                const std::vector<Range>& keep = {}) {
    int64_t total = 0;
    for (int64_t r : rows) total += r;
    QuantWeight qw;
    Tensor w, b;
    if (quantized(prefix)) qw = quant_weight(prefix, total, in, bytes);
    else w = fetch(prefix + ".weight", {total, in});
    if (bias) b = fetch(prefix + ".bias", {total});
    if (reorder) {
      if (qw.empty()) w = permute_rows(w, *reorder);
      for (Tensor* t : {&qw.qweight, &qw.scales, &qw.zeros})
        if (!qw.empty()) *t = permute_rows(*t, *reorder);
      if (bias) b = permute_rows(b, *reorder);
    }
    std::vector<LinearPart> parts;
    int64_t at = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      const Range k = (keep.empty() ? Range{} : keep[i]).or_all(rows[i]);
      LinearPart p;
      if (qw.empty()) {
        p.weight = upload_matrix(w.rows_view(at + k.begin, k.n), bytes);
      } else {
        p.quant = qw;
        for (Tensor* t : {&p.quant.qweight, &p.quant.scales, &p.quant.zeros}) *t = t->rows_view(at + k.begin, k.n);
      }
      if (bias) p.bias = upload_vector(b.rows_view(at + k.begin, k.n));
      parts.push_back(std::move(p));
      at += rows[i];
    }
    return parts;
  }
  void ignore(const std::string& name) { used_.insert(name); }

  void check_no_leftovers() const {
    std::vector<std::string> extra;
    for (const auto& n : source_.names())  // rotary tables some checkpoints store (not weights)
      if (!used_.count(n) && !n.ends_with(".rotary_emb.inv_freq") && !n.ends_with("rotary_pos_emb.inv_freq"))
        extra.push_back(n);
    if (extra.empty()) return;
    if (extra.size() > 8) extra.resize(8), extra.push_back("...");
    fail("{}: unexpected tensors {} (is the checkpoint for a different architecture or config?)",
         source_.where(extra[0]), fmt::join(extra, ", "));
  }

  // The host tensor `name`, checked against the shape the config implies.
  Tensor fetch(const std::string& name, const std::vector<int64_t>& shape) {
    return checked(name, shape, source_.get(name, shape), shape);
  }
  // Rows `rows` and columns `cols` of the 2-D tensor `name` of `shape`.
  Tensor fetch_block(const std::string& name, const std::vector<int64_t>& shape, Range rows, Range cols) {
    rows = rows.or_all(shape[0]), cols = cols.or_all(shape[1]);
    if (rows.n == shape[0] && cols.n == shape[1]) return fetch(name, shape);
    return checked(name, shape, source_.get_block(name, shape, rows.begin, rows.n, cols.begin, cols.n),
                   {rows.n, cols.n});
  }
  Tensor checked(const std::string& name, const std::vector<int64_t>& full, Tensor t, const std::vector<int64_t>& shape) {
    APUS_CHECK(!t.empty(), "{}: missing tensor {} (expected shape {})", source_.where(name), name,
               shape_str(full));
    APUS_CHECK(t.shape == shape, "{}: tensor {} has shape {}, expected {} from config.json",
               source_.where(name), name, shape_str(t.shape), shape_str(full));
    APUS_CHECK(is_float(t.dtype), "{}: tensor {} has dtype {}; weights must be F32, F16 or BF16",
               source_.where(name), name, dtype_name(t.dtype));
    used_.insert(name);
    return t;
  }

 private:
  WeightSource& source_;
  Backend& backend_;
  const std::optional<QuantConfig>& quant_;
  std::set<std::string> used_;
};

// Row order of a fused [q; k; v] projection that turns ChatGLM's interleaved RoPE pairs (2i, 2i+1)
// of the first rotary_dim dims of every q and k head into rotate-half pairs (i, i + rotary_dim/2):
// the backend's rope then computes exactly ChatGLM's rotation, and q.k is unchanged because q and k
// are permuted alike. v keeps its order. (The KV cache holds keys in this order.)
std::vector<int64_t> interleaved_rope_order(const ModelConfig& c) {
  const int64_t hd = c.head_dim, rot = c.rope_dim(), half = rot / 2;
  const int64_t qk_heads = c.num_heads + c.num_kv_heads, total = c.q_size() + 2 * c.kv_size();
  std::vector<int64_t> order(static_cast<size_t>(total));
  for (int64_t r = 0; r < total; ++r) order[size_t(r)] = r;
  for (int64_t h = 0; h < qk_heads; ++h)
    for (int64_t i = 0; i < half; ++i) {
      order[size_t(h * hd + i)] = h * hd + 2 * i;
      order[size_t(h * hd + half + i)] = h * hd + 2 * i + 1;
    }
  return order;
}

Linear make_linear(Backend& backend, std::vector<LinearPart> parts) {
  Linear l;
  l.in_features = parts[0].in();
  for (auto& p : parts) l.out_features += p.out();
  l.parts = std::move(parts);
  return backend.prepare_linear(std::move(l));
}

// out[j] = center + scale * (2u - 1) for u = uniform01(key, first + j); vectorised per ISA.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
void fill_uniform(uint64_t key, uint64_t first, int64_t n, float center, float scale, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    const float r = uniform01(key, first + uint64_t(j)) * 2.0f - 1.0f;
    out[j] = center + scale * r;
  }
}

}  // namespace

std::unique_ptr<WeightSource> open_checkpoint_source(const std::string& dir) {
  return std::make_unique<CheckpointSource>(dir);
}

std::unique_ptr<WeightSource> make_dummy_source(DType dtype, uint64_t seed, int num_threads,
                                                const std::optional<QuantConfig>& quant) {
  return std::make_unique<DummySource>(dtype, seed, num_threads, quant);
}

// Values: norms 1 +- 0.25, biases +- 0.5, embeddings +- 1, matrices uniform with standard
// deviation gain/sqrt(in): gain 2 for q/k/lm_head so that attention is sharp and greedy margins
// clear, 3 for o/down so that attention and MLP outweigh the token's own embedding in the residual
// (else a tied-embedding model just repeats its input and the golden tests prove little).
// Float32 arithmetic without contraction (ISO C++ mode), as numpy does it.
Tensor random_weight(const std::string& name, const std::vector<int64_t>& shape, DType dtype,
                     uint64_t seed, int num_threads) {
  const int64_t rows = shape.empty() ? 1 : shape[0], cols = rows == 0 ? 0 : numel_of(shape) / rows;
  Tensor t = random_weight_block(name, shape, 0, rows, 0, cols, dtype, seed, num_threads);
  t.shape = shape;  // the block is [rows, cols]
  return t;
}

Tensor random_weight_block(const std::string& name, const std::vector<int64_t>& shape, int64_t r0, int64_t nr,
                           int64_t c0, int64_t nc, DType dtype, uint64_t seed, int num_threads) {
  float center = 0.0f, scale = 1.0f;
  // Names of the three layouts (weights.h): Qwen v1's ln_1/ln_2/ln_f norms, wte embedding, fused
  // c_attn (q/k gain for all of it), c_proj outputs; ChatGLM's word_embeddings, query_key_value,
  // dense / dense_4h_to_h outputs and output_layer.
  auto ends = [&](std::initializer_list<const char*> suffixes) {
    for (const char* x : suffixes)
      if (name.ends_with(x)) return true;
    return false;
  };
  if (ends({"norm.weight", ".ln_1.weight", ".ln_2.weight", ".ln_f.weight"})) {
    center = 1.0f, scale = 0.25f;
  } else if (name.ends_with(".bias")) {
    scale = 0.5f;
  } else if (shape.size() == 2 && !ends({"embed_tokens.weight", ".wte.weight", ".word_embeddings.weight"})) {
    scale = float(weight_gain(name) * std::sqrt(3.0) / std::sqrt(double(shape[1])));
  }
  APUS_CHECK(is_float(dtype), "random weights: unsupported dtype {}", dtype_name(dtype));
  const int64_t rows = shape.empty() ? 1 : shape[0], cols = rows == 0 ? 0 : numel_of(shape) / rows;
  APUS_CHECK(r0 >= 0 && nr >= 0 && r0 + nr <= rows && c0 >= 0 && nc >= 0 && c0 + nc <= cols,
             "random weights: block [{}:{}, {}:{}] of {} {}", r0, r0 + nr, c0, c0 + nc, name, shape_str(shape));
  Tensor t = host_tensor(dtype, {nr, nc});
  const uint64_t key = fnv1a64(name) ^ (seed * kGoldenGamma);
  // Element (r, c) of the block is element (r0 + r) * cols + c0 + c of the whole tensor.
  auto fill = [&](int64_t begin, int64_t end) {
    float buf[1024];
    for (int64_t i = begin; i < end;) {
      const int64_t r = i / nc, c = i % nc;
      const int64_t n = std::min<int64_t>({1024, end - i, nc - c});
      fill_uniform(key, uint64_t((r0 + r) * cols + c0 + c), n, center, scale, buf);
      for (int64_t j = 0; j < n; ++j) {
        if (dtype == DType::F32) t.ptr<float>()[i + j] = buf[j];
        else if (dtype == DType::BF16) t.ptr<uint16_t>()[i + j] = f32_to_bf16(buf[j]);
        else t.ptr<uint16_t>()[i + j] = f32_to_f16(buf[j]);
      }
      i += n;
    }
  };
  if (num_threads > 1 && t.numel() > (1 << 20)) {
    ThreadPool pool(num_threads);
    pool.parallel_for(t.numel(), 4096, fill);
  } else {
    fill(0, t.numel());
  }
  return t;
}

Tensor WeightSource::get_block(const std::string& name, const std::vector<int64_t>& shape, int64_t r0, int64_t nr,
                               int64_t c0, int64_t nc) {
  const Tensor t = get(name, shape);
  if (t.empty() || t.shape != shape) return t;  // the caller reports it
  return t.rows_view(r0, nr).cols_view(c0, nc);
}

namespace {

double weight_gain(const std::string& name) {
  auto ends = [&](std::initializer_list<const char*> suffixes) {
    for (const char* x : suffixes)
      if (name.ends_with(x)) return true;
    return false;
  };
  if (ends({"q_proj.weight", "k_proj.weight", "lm_head.weight", ".c_attn.weight", ".query_key_value.weight",
            ".output_layer.weight"}))
    return 2.0;
  if (ends({"o_proj.weight", "down_proj.weight", ".c_proj.weight", ".dense.weight", ".dense_4h_to_h.weight"}))
    return 3.0;
  return 1.0;
}

// A rank's rows of q, of k and v, and of the intermediate (MLP) dimension (all: the whole model).
struct ShardRanges {
  Range q, kv, inter;
  bool rank0 = true;  // row-parallel biases are added once, by rank 0
  ShardRanges(const ModelConfig& c, const Shard& s)
      : q{int64_t(s.head0) * c.head_dim, int64_t(s.heads) * c.head_dim},
        kv{int64_t(s.kv_head0) * c.head_dim, int64_t(s.kv_heads) * c.head_dim},
        inter{s.inter0, s.inter},
        rank0(s.rank == 0) {}
};

// Hugging Face's llama family: model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj, ...}.
LayerWeights llama_layer(Loader& ld, Backend& backend, const ModelConfig& c, const Shard& sh, int i, size_t* bytes) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const ShardRanges r(c, sh);
  const std::string p = fmt::format("model.layers.{}.", i);
  LayerWeights L;
  L.attn_norm = ld.vector(p + "input_layernorm.weight", H);
  L.qkv = make_linear(backend, {ld.part(p + "self_attn.q_proj", c.q_size(), H, c.qkv_bias, bytes, r.q),
                                ld.part(p + "self_attn.k_proj", c.kv_size(), H, c.qkv_bias, bytes, r.kv),
                                ld.part(p + "self_attn.v_proj", c.kv_size(), H, c.qkv_bias, bytes, r.kv)});
  L.o = make_linear(backend, {ld.part(p + "self_attn.o_proj", H, c.q_size(), c.o_bias, bytes, {}, r.q, r.rank0)});
  if (c.qk_norm) {
    L.q_norm = ld.vector(p + "self_attn.q_norm.weight", c.head_dim);
    L.k_norm = ld.vector(p + "self_attn.k_norm.weight", c.head_dim);
  }
  L.mlp_norm = ld.vector(p + "post_attention_layernorm.weight", H);
  L.gate_up = make_linear(backend, {ld.part(p + "mlp.gate_proj", I, H, c.mlp_bias, bytes, r.inter),
                                    ld.part(p + "mlp.up_proj", I, H, c.mlp_bias, bytes, r.inter)});
  L.down = make_linear(backend, {ld.part(p + "mlp.down_proj", H, I, c.mlp_bias, bytes, {}, r.inter, r.rank0)});
  return L;
}

// Qwen v1: transformer.h.N.{ln_1, attn.c_attn (fused q, k, v with bias), attn.c_proj, ln_2, mlp.w1,
// mlp.w2, mlp.c_proj}; the MLP is c_proj(w1(x) * silu(w2(x))), so w2 is the gate and w1 the up part.
LayerWeights qwen_layer(Loader& ld, Backend& backend, const ModelConfig& c, const Shard& sh, int i, size_t* bytes) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const ShardRanges r(c, sh);
  const std::string p = fmt::format("transformer.h.{}.", i);
  LayerWeights L;
  L.attn_norm = ld.vector(p + "ln_1.weight", H);
  L.qkv = make_linear(backend, ld.fused(p + "attn.c_attn", {c.q_size(), c.kv_size(), c.kv_size()}, H, c.qkv_bias,
                                        bytes, nullptr, {r.q, r.kv, r.kv}));
  L.o = make_linear(backend, {ld.part(p + "attn.c_proj", H, c.q_size(), c.o_bias, bytes, {}, r.q, r.rank0)});
  L.mlp_norm = ld.vector(p + "ln_2.weight", H);
  L.gate_up = make_linear(backend, {ld.part(p + "mlp.w2", I, H, c.mlp_bias, bytes, r.inter),
                                    ld.part(p + "mlp.w1", I, H, c.mlp_bias, bytes, r.inter)});
  L.down = make_linear(backend, {ld.part(p + "mlp.c_proj", H, I, c.mlp_bias, bytes, {}, r.inter, r.rank0)});
  return L;
}

// ChatGLM: transformer.encoder.layers.N.{input_layernorm, self_attention.query_key_value (fused q,
// k, v), self_attention.dense, post_attention_layernorm, mlp.dense_h_to_4h (gate rows, then up rows:
// swiglu is silu(chunk 0) * chunk 1), mlp.dense_4h_to_h}.
LayerWeights chatglm_layer(Loader& ld, Backend& backend, const ModelConfig& c, const Shard& sh, int i, size_t* bytes) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const ShardRanges r(c, sh);
  const std::string p = fmt::format("transformer.encoder.layers.{}.", i);
  const std::vector<int64_t> order = interleaved_rope_order(c);
  LayerWeights L;
  L.attn_norm = ld.vector(p + "input_layernorm.weight", H);
  L.qkv = make_linear(backend, ld.fused(p + "self_attention.query_key_value", {c.q_size(), c.kv_size(), c.kv_size()}, H,
                                        c.qkv_bias, bytes, c.rope_interleaved ? &order : nullptr, {r.q, r.kv, r.kv}));
  L.o = make_linear(backend, {ld.part(p + "self_attention.dense", H, c.q_size(), c.o_bias, bytes, {}, r.q, r.rank0)});
  L.mlp_norm = ld.vector(p + "post_attention_layernorm.weight", H);
  L.gate_up = make_linear(backend, ld.fused(p + "mlp.dense_h_to_4h", {I, I}, H, c.mlp_bias, bytes, nullptr,
                                            {r.inter, r.inter}));
  L.down = make_linear(backend, {ld.part(p + "mlp.dense_4h_to_h", H, I, c.mlp_bias, bytes, {}, r.inter, r.rank0)});
  return L;
}

struct LayoutNames {
  const char* embed;
  const char* final_norm;
  const char* lm_head;  // without ".weight"
  LayerWeights (*layer)(Loader&, Backend&, const ModelConfig&, const Shard&, int, size_t*);
};

LayoutNames names_of(WeightLayout layout) {
  switch (layout) {
    case WeightLayout::kQwen: return {"transformer.wte.weight", "transformer.ln_f.weight", "lm_head", qwen_layer};
    case WeightLayout::kChatGlm:
      return {"transformer.embedding.word_embeddings.weight", "transformer.encoder.final_layernorm.weight",
              "transformer.output_layer", chatglm_layer};
    case WeightLayout::kLlama: break;
  }
  return {"model.embed_tokens.weight", "model.norm.weight", "lm_head", llama_layer};
}

}  // namespace

ModelWeights load_weights(const ModelConfig& c, WeightSource& source, Backend& backend) {
  return load_weights(c, source, backend, Shard::of(c, 0, 1));
}

ModelWeights load_weights(const ModelConfig& c, WeightSource& source, Backend& backend, const Shard& shard) {
  Loader ld(source, backend, c.quant);
  ModelWeights w;
  w.shard = shard;
  const LayoutNames names = names_of(c.layout);
  const int64_t H = c.hidden_size;
  size_t embed_bytes = 0;  // a step reads one embedding row per token, not the matrix
  const Range vocab{shard.vocab0, shard.vocab};
  const Tensor embed = ld.fetch_block(names.embed, {c.vocab_size, H}, vocab, {});
  backend.set_model_dtype(embed.dtype);  // the model's dtype: the one of its embedding matrix
  w.embed = ld.upload_matrix(embed, &embed_bytes);
  for (int i = 0; i < c.num_layers; ++i)
    w.layers.push_back(names.layer(ld, backend, c, shard, i, &w.matrix_bytes));
  w.final_norm = ld.vector(names.final_norm, H);
  const std::string lm_head = names.lm_head;
  // A rank's lm_head has vocab_padded rows, zeros past the vocabulary (so that all ranks' logits
  // are alike in shape); the whole model's is the matrix itself.
  const bool pad = shard.vocab < shard.vocab_padded;
  auto padded = [&](const Tensor& rows) {
    Tensor t = host_tensor(rows.dtype, {shard.vocab_padded, H});
    std::memcpy(t.data, contiguous(rows).data, rows.nbytes());
    return t;
  };
  if (c.tie_word_embeddings) {
    // transformers ignores a stored lm_head.weight when the embeddings are tied; so do we.
    ld.ignore(lm_head + ".weight");
    w.lm_head = make_linear(backend, {LinearPart{pad ? ld.upload_matrix(padded(embed), &embed_bytes) : w.embed, {}}});
    w.matrix_bytes += w.lm_head.parts[0].weight.nbytes();
  } else if (pad) {
    w.lm_head = make_linear(
        backend, {LinearPart{ld.upload_matrix(padded(ld.fetch_block(lm_head + ".weight", {c.vocab_size, H}, vocab, {})),
                                              &w.matrix_bytes),
                             {}}});
  } else {
    w.lm_head = make_linear(backend, {ld.part(lm_head, c.vocab_size, H, false, &w.matrix_bytes, vocab)});
  }
  ld.check_no_leftovers();
  return w;
}

}  // namespace apus
