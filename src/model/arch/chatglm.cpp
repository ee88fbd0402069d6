// ChatGLMModel / ChatGLMForConditionalGeneration (ChatGLM2/3, remote code modeling_chatglm.py):
// multi-query attention (multi_query_group_num KV heads), fused query_key_value with bias
// (add_qkv_bias), fused dense_h_to_4h (SwiGLU: silu(first half) * second half), RMSNorm, and RoPE on
// the first half of each head over adjacent pairs with base 10000 * rope_ratio (chatglm3-6b-32k).
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/arch/arch.h"
#include "model/config.h"

namespace apus {

nlohmann::json translate_chatglm(const nlohmann::json& j, const std::string& source) {
  nlohmann::json t = nlohmann::json::object();
  try {
    t["architectures"] = j["architectures"];
    t["model_type"] = j.value("model_type", "chatglm");
    t["hidden_size"] = config_field(j, {"hidden_size"}, source);
    t["num_attention_heads"] = config_field(j, {"num_attention_heads"}, source);
    t["num_hidden_layers"] = config_field(j, {"num_layers"}, source);
    t["vocab_size"] = config_field(j, {"padded_vocab_size"}, source);
    t["intermediate_size"] = config_field(j, {"ffn_hidden_size"}, source);
    const int heads = t["num_attention_heads"].get<int>();
    if (j.contains("kv_channels") && !j["kv_channels"].is_null()) t["head_dim"] = j["kv_channels"];
    if (j.value("multi_query_attention", false)) t["num_key_value_heads"] = config_field(j, {"multi_query_group_num"}, source);
    else t["num_key_value_heads"] = heads;
    t["rms_norm_eps"] = j.value("layernorm_epsilon", 1e-5);
    t["rope_theta"] = 10000.0 * j.value("rope_ratio", 1.0);  // RotaryEmbedding: base = base * self.rope_ratio
    t["max_position_embeddings"] = j.value("seq_length", 2048);
    t["tie_word_embeddings"] = false;  // output_layer is its own matrix
    for (const char* k : {"bos_token_id", "eos_token_id", "torch_dtype"})
      if (j.contains(k)) t[k] = j[k];
  } catch (const nlohmann::json::exception& e) {
    fail("{}: a ChatGLM field has the wrong type: {}", source, e.what());
  }
  return t;
}

void configure_chatglm(const nlohmann::json& j, const std::string& source, ModelConfig& c) {
  c.layout = WeightLayout::kChatGlm;
  const bool bias_linear = j.value("add_bias_linear", false);
  c.qkv_bias = bias_linear || j.value("add_qkv_bias", false);
  c.o_bias = c.mlp_bias = bias_linear;
  APUS_CHECK(j.value("rmsnorm", true), "{}: ChatGLM with rmsnorm=false (LayerNorm) is not supported", source);
  APUS_CHECK(j.value("post_layer_norm", true), "{}: ChatGLM with post_layer_norm=false is not supported", source);
  APUS_CHECK(!j.value("apply_residual_connection_post_layernorm", false),
             "{}: ChatGLM with apply_residual_connection_post_layernorm=true is not supported", source);
  APUS_CHECK(!j.contains("pre_seq_len") || j["pre_seq_len"].is_null(),
             "{}: ChatGLM with a P-tuning prefix (pre_seq_len) is not supported", source);
  APUS_CHECK(j.value("quantization_bit", 0) == 0, "{}: ChatGLM's own int4/int8 quantization (quantization_bit) is not supported",
             source);
  // RotaryEmbedding(rotary_dim // 2) with rotary_dim = kv_channels: the first half of each head turns.
  APUS_CHECK(c.head_dim % 4 == 0, "{}: kv_channels must be a multiple of 4 for ChatGLM's half-head rotary, found {}",
             source, c.head_dim);
  c.rotary_dim = c.head_dim / 2;
  c.rope_interleaved = true;
}

}  // namespace apus
