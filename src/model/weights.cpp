#include "model/weights.h"

#include <algorithm>
#include <set>

#include "core/error.h"
#include "core/random.h"
#include "core/thread_pool.h"
#include "model/safetensors.h"

namespace apus {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

// A float tensor converted to another float dtype (host memory; the same view when equal).
Tensor convert(const Tensor& t, DType to) {
  if (t.dtype == to) return t;
  Tensor out = host_tensor(to, t.shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float f = t.dtype == DType::F32    ? t.ptr<float>()[i]
                    : t.dtype == DType::BF16 ? bf16_to_f32(t.ptr<uint16_t>()[i])
                                             : f16_to_f32(t.ptr<uint16_t>()[i]);
    if (to == DType::F32) out.ptr<float>()[i] = f;
    else out.ptr<uint16_t>()[i] = to == DType::BF16 ? f32_to_bf16(f) : f32_to_f16(f);
  }
  return out;
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

 private:
  Checkpoint ckpt_;
};

class DummySource : public WeightSource {
 public:
  DummySource(DType dtype, uint64_t seed, int threads) : dtype_(dtype), seed_(seed), threads_(threads) {}
  Tensor get(const std::string& name, const std::vector<int64_t>& shape) override {
    return random_weight(name, shape, dtype_, seed_, threads_);
  }
  std::string where(const std::string&) const override { return "dummy weights"; }
  std::vector<std::string> names() const override { return {}; }

 private:
  DType dtype_;
  uint64_t seed_;
  int threads_;
};

// Asks the source for each tensor of the architecture, checks it, and remembers what was used so
// that leftovers can be reported.
class Loader {
 public:
  Loader(WeightSource& source, Backend& backend) : source_(source), backend_(backend) {}

  Tensor matrix(const std::string& name, std::vector<int64_t> shape, size_t* bytes) {
    return upload_matrix(fetch(name, shape), bytes);
  }
  // A fetched matrix in the dtype the backend wants (a GPU backend: its activation dtype).
  Tensor upload_matrix(const Tensor& t, size_t* bytes) {
    *bytes += t.nbytes();
    return backend_.upload(convert(t, backend_.weight_dtype(t.dtype)));
  }
  Tensor vector(const std::string& name, int64_t n) { return backend_.upload(convert(fetch(name, {n}), DType::F32)); }
  LinearPart part(const std::string& prefix, int64_t out, int64_t in, bool bias, size_t* bytes) {
    LinearPart p;
    p.weight = matrix(prefix + ".weight", {out, in}, bytes);
    if (bias) p.bias = vector(prefix + ".bias", out);
    return p;
  }
  void ignore(const std::string& name) { used_.insert(name); }

  void check_no_leftovers() const {
    std::vector<std::string> extra;
    for (const auto& n : source_.names())
      if (!used_.count(n) && !n.ends_with(".rotary_emb.inv_freq")) extra.push_back(n);
    if (extra.empty()) return;
    if (extra.size() > 8) extra.resize(8), extra.push_back("...");
    fail("{}: unexpected tensors {} (is the checkpoint for a different architecture or config?)",
         source_.where(extra[0]), fmt::join(extra, ", "));
  }

  // The host tensor `name`, checked against the shape the config implies.
  Tensor fetch(const std::string& name, const std::vector<int64_t>& shape) {
    Tensor t = source_.get(name, shape);
    APUS_CHECK(!t.empty(), "{}: missing tensor {} (expected shape {})", source_.where(name), name,
               shape_str(shape));
    APUS_CHECK(t.shape == shape, "{}: tensor {} has shape {}, expected {} from config.json",
               source_.where(name), name, shape_str(t.shape), shape_str(shape));
    APUS_CHECK(is_float(t.dtype), "{}: tensor {} has dtype {}; weights must be F32, F16 or BF16",
               source_.where(name), name, dtype_name(t.dtype));
    used_.insert(name);
    return t;
  }

 private:
  WeightSource& source_;
  Backend& backend_;
  std::set<std::string> used_;
};

Linear make_linear(Backend& backend, std::vector<LinearPart> parts) {
  Linear l;
  l.in_features = parts[0].weight.shape[1];
  for (auto& p : parts) l.out_features += p.weight.shape[0];
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

std::unique_ptr<WeightSource> make_dummy_source(DType dtype, uint64_t seed, int num_threads) {
  return std::make_unique<DummySource>(dtype, seed, num_threads);
}

// Values: norms 1 +- 0.25, biases +- 0.5, embeddings +- 1, matrices uniform with standard
// deviation gain/sqrt(in): gain 2 for q/k/lm_head so that attention is sharp and greedy margins
// clear, 3 for o/down so that attention and MLP outweigh the token's own embedding in the residual
// (else a tied-embedding model just repeats its input and the golden tests prove little).
// Float32 arithmetic without contraction (ISO C++ mode), as numpy does it.
Tensor random_weight(const std::string& name, const std::vector<int64_t>& shape, DType dtype,
                     uint64_t seed, int num_threads) {
  float center = 0.0f, scale = 1.0f;
  if (name.ends_with("norm.weight")) {
    center = 1.0f, scale = 0.25f;
  } else if (name.ends_with(".bias")) {
    scale = 0.5f;
  } else if (shape.size() == 2 && !name.ends_with("embed_tokens.weight")) {
    double gain = 1.0;
    if (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") || name.ends_with("lm_head.weight"))
      gain = 2.0;
    else if (name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight"))
      gain = 3.0;
    scale = float(gain * std::sqrt(3.0) / std::sqrt(double(shape[1])));
  }
  Tensor t = host_tensor(dtype, shape);
  const uint64_t key = fnv1a64(name) ^ (seed * kGoldenGamma);
  auto fill = [&](int64_t begin, int64_t end) {
    float buf[1024];
    for (int64_t i = begin; i < end; i += 1024) {
      const int64_t n = std::min<int64_t>(1024, end - i);
      fill_uniform(key, uint64_t(i), n, center, scale, buf);
      for (int64_t j = 0; j < n; ++j) {
        if (dtype == DType::F32) t.ptr<float>()[i + j] = buf[j];
        else if (dtype == DType::BF16) t.ptr<uint16_t>()[i + j] = f32_to_bf16(buf[j]);
        else t.ptr<uint16_t>()[i + j] = f32_to_f16(buf[j]);
      }
    }
  };
  APUS_CHECK(is_float(dtype), "random weights: unsupported dtype {}", dtype_name(dtype));
  if (num_threads > 1 && t.numel() > (1 << 20)) {
    ThreadPool pool(num_threads);
    pool.parallel_for(t.numel(), 4096, fill);
  } else {
    fill(0, t.numel());
  }
  return t;
}

ModelWeights load_weights(const ModelConfig& c, WeightSource& source, Backend& backend) {
  Loader ld(source, backend);
  ModelWeights w;
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  size_t embed_bytes = 0;  // a step reads one embedding row per token, not the matrix
  const Tensor embed = ld.fetch("model.embed_tokens.weight", {c.vocab_size, H});
  backend.set_model_dtype(embed.dtype);  // the model's dtype: the one of its embedding matrix
  w.embed = ld.upload_matrix(embed, &embed_bytes);
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    LayerWeights L;
    L.attn_norm = ld.vector(p + "input_layernorm.weight", H);
    L.qkv = make_linear(backend, {ld.part(p + "self_attn.q_proj", c.q_size(), H, c.qkv_bias, &w.matrix_bytes),
                                  ld.part(p + "self_attn.k_proj", c.kv_size(), H, c.qkv_bias, &w.matrix_bytes),
                                  ld.part(p + "self_attn.v_proj", c.kv_size(), H, c.qkv_bias, &w.matrix_bytes)});
    L.o = make_linear(backend, {ld.part(p + "self_attn.o_proj", H, c.q_size(), c.o_bias, &w.matrix_bytes)});
    if (c.qk_norm) {
      L.q_norm = ld.vector(p + "self_attn.q_norm.weight", c.head_dim);
      L.k_norm = ld.vector(p + "self_attn.k_norm.weight", c.head_dim);
    }
    L.mlp_norm = ld.vector(p + "post_attention_layernorm.weight", H);
    L.gate_up = make_linear(backend, {ld.part(p + "mlp.gate_proj", I, H, c.mlp_bias, &w.matrix_bytes),
                                      ld.part(p + "mlp.up_proj", I, H, c.mlp_bias, &w.matrix_bytes)});
    L.down = make_linear(backend, {ld.part(p + "mlp.down_proj", H, I, c.mlp_bias, &w.matrix_bytes)});
    w.layers.push_back(std::move(L));
  }
  w.final_norm = ld.vector("model.norm.weight", H);
  if (c.tie_word_embeddings) {
    // transformers ignores a stored lm_head.weight when the embeddings are tied; so do we.
    ld.ignore("lm_head.weight");
    w.lm_head = make_linear(backend, {LinearPart{w.embed, {}}});
    w.matrix_bytes += w.embed.nbytes();
  } else {
    w.lm_head = make_linear(backend, {ld.part("lm_head", c.vocab_size, H, false, &w.matrix_bytes)});
  }
  ld.check_no_leftovers();
  return w;
}

}  // namespace apus
