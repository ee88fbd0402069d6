// LlamaForCausalLM (Llama 2/3.x, Yi, DeepSeek-LLM, ...): `attention_bias` puts biases on q, k, v
// and o; `mlp_bias` on gate, up and down. GQA/MQA come from num_key_value_heads.
#include <nlohmann/json.hpp>

#include "model/arch/arch.h"
#include "model/config.h"

namespace apus {

void configure_llama(const nlohmann::json& j, const std::string& source, ModelConfig& c) {
  c.qkv_bias = c.o_bias = j.value("attention_bias", false);
  c.mlp_bias = j.value("mlp_bias", false);
}

}  // namespace apus
