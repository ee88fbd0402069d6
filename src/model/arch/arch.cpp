#include "model/arch/arch.h"

#include <array>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace apus {

namespace {
constexpr std::array<Architecture, 7> kArchitectures{{
    {"LlamaForCausalLM", configure_llama},
    {"Qwen2ForCausalLM", configure_qwen2},
    {"Qwen3ForCausalLM", configure_qwen3},
    {"MistralForCausalLM", configure_mistral},
    {"QWenLMHeadModel", configure_qwen, translate_qwen},
    {"ChatGLMModel", configure_chatglm, translate_chatglm},
    {"ChatGLMForConditionalGeneration", configure_chatglm, translate_chatglm},
}};
}  // namespace

const Architecture& find_architecture(std::string_view name, const std::string& source) {
  for (const auto& a : kArchitectures)
    if (a.name == name) return a;
  fail("{}: architecture \"{}\" is not supported (supported: {})", source, name,
       fmt::join(supported_architectures(), ", "));
}

const nlohmann::json& config_field(const nlohmann::json& j, std::initializer_list<const char*> keys,
                                   const std::string& source) {
  for (const char* k : keys) {
    auto it = j.find(k);
    if (it != j.end() && !it->is_null()) return *it;
  }
  fail("{}: required field \"{}\" is missing", source, *keys.begin());
}

std::vector<std::string_view> supported_architectures() {
  std::vector<std::string_view> names;
  for (const auto& a : kArchitectures) names.push_back(a.name);
  return names;
}

}  // namespace apus
