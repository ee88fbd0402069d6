// MistralForCausalLM: Llama without biases, plus sliding-window attention when `sliding_window`
// is set (Mistral-7B-v0.1: 4096; later versions: null).
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/arch/arch.h"
#include "model/config.h"

namespace apus {

void configure_mistral(const nlohmann::json& j, const std::string& source, ModelConfig& c) {
  auto it = j.find("sliding_window");
  if (it != j.end() && !it->is_null()) {
    APUS_CHECK(it->is_number_integer() && it->get<int>() > 0,
               "{}: sliding_window must be a positive integer or null, found {}", source, it->dump());
    c.sliding_window = it->get<int>();
  }
}

}  // namespace apus
