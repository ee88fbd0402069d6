// A decoder-only model's hyper-parameters, read from a Hugging Face config.json.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "quant/quant_config.h"

namespace apus {

struct RopeScaling {
  // default | linear | dynamic | llama3 | qwen-ntk (Qwen v1's use_dynamic_ntk: see rope.h)
  std::string type = "default";
  float factor = 1.0f;
  float low_freq_factor = 1.0f;   // llama3
  float high_freq_factor = 4.0f;  // llama3
  int original_max_position_embeddings = 0;  // llama3; qwen-ntk: the config's seq_length
};

// Where the weights live and how they are named: Hugging Face's llama family (model.layers.N...),
// Qwen v1 (transformer.h.N..., fused c_attn) or ChatGLM (transformer.encoder.layers.N..., fused
// query_key_value and dense_h_to_4h). See weights.cpp.
enum class WeightLayout { kLlama, kQwen, kChatGlm };

struct ModelConfig {
  std::string architecture;  // e.g. "Qwen2ForCausalLM"
  std::string model_type;    // e.g. "qwen2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  int max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  // Which optional tensors the architecture has (set by the architecture from its own fields).
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  bool qk_norm = false;
  int sliding_window = 0;  // 0: full attention
  WeightLayout layout = WeightLayout::kLlama;
  int rotary_dim = 0;  // dims of each head that RoPE rotates (the first ones); 0: all of head_dim
  // RoPE on adjacent pairs (2i, 2i+1) as ChatGLM does, instead of (i, i + rotary_dim/2). Run as
  // rotate-half over q/k weight rows permuted at load (weights.cpp), which leaves q.k unchanged.
  bool rope_interleaved = false;
  // Qwen v1's use_logn_attn: a query at position p >= logn_length (the config's seq_length) is
  // multiplied by log(p + 1) / log(logn_length) after RoPE. 0: off.
  int logn_length = 0;
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  std::string torch_dtype;  // as declared; informational
  // The checkpoint's quantization_config (GPTQ / AWQ linear layers), or none: a float checkpoint.
  std::optional<QuantConfig> quant;

  int64_t q_size() const { return int64_t(num_heads) * head_dim; }
  int64_t kv_size() const { return int64_t(num_kv_heads) * head_dim; }
  int rope_dim() const { return rotary_dim > 0 ? rotary_dim : head_dim; }
};

// Parses config.json content (an architecture with its own field names first rewrites them into the
// llama-family ones, see arch.h); `source` names the file in error messages. Architecture-specific
// fields are applied by the architecture table (src/model/arch/).
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& source);
ModelConfig load_model_config(const std::string& model_dir);

}  // namespace apus
