#include "model/presets.h"

#include "core/error.h"

namespace apus {

namespace {

struct Preset {
  const char* name;
  const char* config;  // as published with the model (Hugging Face config.json fields)
};

const Preset kPresets[] = {
    {"qwen2.5-0.5b", R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
      "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
      "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
      "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
      "tie_word_embeddings": true, "bos_token_id": 151643, "eos_token_id": 151645,
      "hidden_act": "silu", "torch_dtype": "bfloat16", "use_sliding_window": false})"},
    {"qwen2.5-7b", R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
      "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
      "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
      "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
      "tie_word_embeddings": false, "bos_token_id": 151643, "eos_token_id": 151645,
      "hidden_act": "silu", "torch_dtype": "bfloat16", "use_sliding_window": false})"},
    {"qwen3-0.6b", R"({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
      "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
      "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
      "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "rope_theta": 1000000,
      "tie_word_embeddings": true, "bos_token_id": 151643, "eos_token_id": 151645,
      "attention_bias": false, "hidden_act": "silu", "torch_dtype": "bfloat16"})"},
    {"llama-3-8b", R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
      "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
      "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
      "tie_word_embeddings": false, "bos_token_id": 128000, "eos_token_id": 128009,
      "hidden_act": "silu", "torch_dtype": "bfloat16"})"},
    {"llama-3-70b", R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
      "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
      "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
      "tie_word_embeddings": false, "bos_token_id": 128000, "eos_token_id": 128009,
      "hidden_act": "silu", "torch_dtype": "bfloat16"})"},
    {"mistral-7b", R"({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
      "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
      "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
      "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
      "sliding_window": 4096, "tie_word_embeddings": false, "bos_token_id": 1,
      "eos_token_id": 2, "hidden_act": "silu", "torch_dtype": "bfloat16"})"},
    // The article's remote-code models: config.json of Qwen/Qwen-7B-Chat v1.1 and of THUDM/chatglm3-6b
    // (as in the public mirror czk1997/chatglm3-copy).
    {"qwen-7b", R"({"architectures": ["QWenLMHeadModel"], "model_type": "qwen",
      "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
      "num_attention_heads": 32, "kv_channels": 128, "vocab_size": 151936,
      "max_position_embeddings": 8192, "seq_length": 8192, "layer_norm_epsilon": 1e-06,
      "rotary_emb_base": 10000, "rotary_pct": 1.0, "use_dynamic_ntk": true, "use_logn_attn": true,
      "no_bias": true, "tie_word_embeddings": false, "bf16": false, "fp16": false, "fp32": false,
      "tokenizer_class": "QWenTokenizer"})"},
    {"chatglm3-6b", R"({"architectures": ["ChatGLMModel"], "model_type": "chatglm",
      "num_layers": 28, "hidden_size": 4096, "ffn_hidden_size": 13696, "kv_channels": 128,
      "num_attention_heads": 32, "multi_query_attention": true, "multi_query_group_num": 2,
      "padded_vocab_size": 65024, "seq_length": 32768, "layernorm_epsilon": 1e-05, "rmsnorm": true,
      "post_layer_norm": true, "apply_residual_connection_post_layernorm": false,
      "add_bias_linear": false, "add_qkv_bias": true, "original_rope": true,
      "tie_word_embeddings": false, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "float16"})"},
    // A tiny Qwen2-shaped model for demos and smoke tests (random weights answer with noise).
    {"tiny", R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
      "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 151936,
      "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
      "tie_word_embeddings": true, "bos_token_id": 151643, "eos_token_id": 151645,
      "hidden_act": "silu", "torch_dtype": "bfloat16"})"},
};

}  // namespace

nlohmann::json config_preset(const std::string& name) {
  for (const auto& p : kPresets)
    if (name == p.name) return nlohmann::json::parse(p.config);
  fail("unknown config preset \"{}\" (known: {})", name, fmt::join(config_preset_names(), ", "));
}

std::vector<std::string> config_preset_names() {
  std::vector<std::string> names;
  for (const auto& p : kPresets) names.emplace_back(p.name);
  return names;
}

}  // namespace apus
