// QWenLMHeadModel (Qwen v1: Qwen-7B/14B/72B and their chat models, remote code modeling_qwen.py):
// fused c_attn with bias, MLP c_proj(w1(x) * silu(w2(x))) whose config width is twice the MLP's,
// RMSNorm, rotary on the first rotary_pct of each head, and for long inputs dynamic NTK
// (use_dynamic_ntk) and logn attention scaling (use_logn_attn) past seq_length.
// Both config spellings are read: the first release's n_embd / n_head / n_layer / ffn_hidden_size /
// padded_vocab_size and the later hidden_size / num_attention_heads / ... / intermediate_size.
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/arch/arch.h"
#include "model/config.h"

namespace apus {

namespace {

int kv_channels(const nlohmann::json& j, const std::string& source) {
  const int64_t hidden = config_field(j, {"hidden_size", "n_embd"}, source).get<int64_t>();
  const int heads = config_field(j, {"num_attention_heads", "n_head"}, source).get<int>();
  APUS_CHECK(heads > 0 && hidden % heads == 0, "{}: hidden_size ({}) must be a multiple of num_attention_heads ({})",
             source, hidden, heads);
  const int kv = j.value("kv_channels", int(hidden / heads));
  // modeling_qwen.py splits c_attn's output into hidden_size-wide q, k, v of head_dim = hidden/heads.
  APUS_CHECK(int64_t(kv) * heads == hidden, "{}: kv_channels ({}) * num_attention_heads ({}) must equal hidden_size ({})",
             source, kv, heads, hidden);
  return kv;
}

int seq_length(const nlohmann::json& j, const std::string& source) {
  const int n = config_field(j, {"seq_length"}, source).get<int>();
  APUS_CHECK(n > 1, "{}: seq_length must be greater than 1, found {}", source, n);
  return n;
}

}  // namespace

nlohmann::json translate_qwen(const nlohmann::json& j, const std::string& source) {
  nlohmann::json t = nlohmann::json::object();
  try {
    t["architectures"] = j["architectures"];
    t["model_type"] = j.value("model_type", "qwen");
    t["hidden_size"] = config_field(j, {"hidden_size", "n_embd"}, source);
    t["num_attention_heads"] = config_field(j, {"num_attention_heads", "n_head"}, source);
    t["num_hidden_layers"] = config_field(j, {"num_hidden_layers", "n_layer"}, source);
    t["vocab_size"] = config_field(j, {"vocab_size", "padded_vocab_size"}, source);
    const int64_t ffn = config_field(j, {"intermediate_size", "ffn_hidden_size"}, source).get<int64_t>();
    APUS_CHECK(ffn > 0 && ffn % 2 == 0, "{}: intermediate_size must be even (w1 and w2 are half of it), found {}",
               source, ffn);
    t["intermediate_size"] = ffn / 2;
    t["head_dim"] = kv_channels(j, source);
    t["rms_norm_eps"] = j.value("layer_norm_epsilon", 1e-6);
    t["rope_theta"] = j.value("rotary_emb_base", 10000.0);
    const int seq = j.contains("seq_length") ? seq_length(j, source) : 2048;
    t["max_position_embeddings"] = std::max(seq, j.value("max_position_embeddings", 0));
    t["tie_word_embeddings"] = j.value("tie_word_embeddings", false);
    for (const char* k : {"bos_token_id", "eos_token_id", "torch_dtype"})
      if (j.contains(k)) t[k] = j[k];
  } catch (const nlohmann::json::exception& e) {
    fail("{}: a Qwen field has the wrong type: {}", source, e.what());
  }
  return t;
}

void configure_qwen(const nlohmann::json& j, const std::string& source, ModelConfig& c) {
  c.layout = WeightLayout::kQwen;
  c.qkv_bias = true;  // c_attn always has a bias; no_bias covers c_proj, w1, w2 and mlp.c_proj
  c.o_bias = c.mlp_bias = !j.value("no_bias", true);
  const double pct = j.value("rotary_pct", 1.0);
  if (pct != 1.0) {
    APUS_CHECK(pct > 0.0 && pct < 1.0, "{}: rotary_pct must be in (0, 1], found {}", source, pct);
    c.rotary_dim = int(c.head_dim * pct);  // int(config.kv_channels * config.rotary_pct)
    APUS_CHECK(c.rotary_dim > 0 && c.rotary_dim % 2 == 0, "{}: rotary_pct {} gives an odd or empty rotary dim {}",
               source, pct, c.rotary_dim);
  }
  APUS_CHECK(!j.value("use_cache_quantization", false), "{}: use_cache_quantization (int8 KV cache) is not supported",
             source);
  if (j.value("use_dynamic_ntk", true)) {
    c.rope_scaling.type = "qwen-ntk";
    c.rope_scaling.original_max_position_embeddings = seq_length(j, source);
  }
  if (j.value("use_logn_attn", true)) {
    c.logn_length = seq_length(j, source);
    // The scale rides on q's rotary tables (decoder.cpp), so every dim must be rotated.
    APUS_CHECK(c.rotary_dim == 0, "{}: use_logn_attn with rotary_pct < 1 is not supported", source);
  }
}

}  // namespace apus
