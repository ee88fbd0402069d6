// Qwen2ForCausalLM (Qwen1.5, Qwen2, Qwen2.5): biases on q, k, v only; small models tie the
// embedding and lm_head.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/arch/arch.h"
#include "model/config.h"

namespace apus {

void configure_qwen2(const nlohmann::json& j, const std::string& source, ModelConfig& c) {
  c.qkv_bias = true;
  APUS_CHECK(!j.value("use_sliding_window", false),
             "{}: Qwen2 with use_sliding_window=true is not supported yet", source);
}

}  // namespace apus
