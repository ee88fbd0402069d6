// A decoder-only model's hyper-parameters, read from a Hugging Face config.json.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace apus {

struct RopeScaling {
  std::string type = "default";  // default | linear | dynamic | llama3
  float factor = 1.0f;
  float low_freq_factor = 1.0f;   // llama3
  float high_freq_factor = 4.0f;  // llama3
  int original_max_position_embeddings = 0;  // llama3
};

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
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  std::string torch_dtype;  // as declared; informational

  int64_t q_size() const { return int64_t(num_heads) * head_dim; }
  int64_t kv_size() const { return int64_t(num_kv_heads) * head_dim; }
};

// Parses config.json content; `source` names the file in error messages. Architecture-specific
// fields are applied by the architecture table (src/model/arch/).
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& source);
ModelConfig load_model_config(const std::string& model_dir);

}  // namespace apus
