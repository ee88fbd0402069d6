// Qwen3ForCausalLM: per-head RMSNorm of q and k (q_norm/k_norm over head_dim) before RoPE, and an
// explicit head_dim that need not equal hidden_size / num_heads.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/arch/arch.h"
#include "model/config.h"

namespace apus {

void configure_qwen3(const nlohmann::json& j, const std::string& source, ModelConfig& c) {
  c.qk_norm = true;
  c.qkv_bias = c.o_bias = j.value("attention_bias", false);
  APUS_CHECK(!j.value("use_sliding_window", false),
             "{}: Qwen3 with use_sliding_window=true is not supported yet", source);
}

}  // namespace apus
