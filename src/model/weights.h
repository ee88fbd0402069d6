// Loading a model's weights by their Hugging Face names (the llama family's, or Qwen v1's and
// ChatGLM's: ModelConfig::layout), from a checkpoint directory or from deterministic random values
// (--load-format dummy), with every tensor's presence, shape and dtype checked against the config.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"
#include "model/config.h"

namespace apus {

// Named host tensors. The loader asks for each tensor with the shape the config implies.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // The tensor called `name` (a host view), or an empty Tensor when the source lacks it.
  virtual Tensor get(const std::string& name, const std::vector<int64_t>& shape) = 0;
  // Where `name` lives, for error messages (a file path, or "dummy weights").
  virtual std::string where(const std::string& name) const = 0;
  // Every tensor the source holds (empty for sources that create tensors on request).
  virtual std::vector<std::string> names() const = 0;
  // Whether get(name, ...) would return a tensor (a quantized layer has `.qweight`, a float one not).
  virtual bool has(const std::string& name) const = 0;
};

// A checkpoint directory (model.safetensors or sharded with model.safetensors.index.json), mmap'd.
std::unique_ptr<WeightSource> open_checkpoint_source(const std::string& dir);
// Deterministic random weights (see core/random.h and tools/golden/weights.py). With `quant`, linear
// layers come as that format's tensors instead: random codes, zero point 8 (0x8 in every qzeros
// field), scales that give the float initialiser's standard deviation (weights.cpp, DummySource).
std::unique_ptr<WeightSource> make_dummy_source(DType dtype, uint64_t seed, int num_threads,
                                                const std::optional<QuantConfig>& quant = std::nullopt);

// The value the deterministic initialiser gives to tensor `name` of `shape`, converted to `dtype`.
// Shared by dummy loading, tests and the golden fixtures (which recompute it in Python).
Tensor random_weight(const std::string& name, const std::vector<int64_t>& shape, DType dtype,
                     uint64_t seed, int num_threads = 1);

struct LayerWeights {
  Tensor attn_norm;  // F32 [hidden]
  Tensor q_norm;     // F32 [head_dim] (qk_norm only)
  Tensor k_norm;     // F32 [head_dim] (qk_norm only)
  Linear qkv;        // parts q [heads*hd, hidden], k [kv_heads*hd, hidden], v [kv_heads*hd, hidden]
  Linear o;          // [hidden, heads*hd]
  Tensor mlp_norm;   // F32 [hidden]
  Linear gate_up;    // parts gate [inter, hidden], up [inter, hidden] (fused checkpoints: row views)
  Linear down;       // [hidden, inter]
};

struct ModelWeights {
  Tensor embed;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  Tensor final_norm;  // F32 [hidden]
  Linear lm_head;     // [vocab, hidden]; the embedding matrix when tie_word_embeddings
  // Bytes of the matrices a decode step streams (all but the embedding); a quantized layer counts
  // its codes, scales and zeros (QuantWeight::nbytes).
  size_t matrix_bytes = 0;
};

ModelWeights load_weights(const ModelConfig& config, WeightSource& source, Backend& backend);

}  // namespace apus
