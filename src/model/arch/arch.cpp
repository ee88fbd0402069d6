#include "model/arch/arch.h"

#include <array>

#include "core/error.h"

namespace apus {

namespace {
constexpr std::array<Architecture, 4> kArchitectures{{
    {"LlamaForCausalLM", configure_llama},
    {"Qwen2ForCausalLM", configure_qwen2},
    {"Qwen3ForCausalLM", configure_qwen3},
    {"MistralForCausalLM", configure_mistral},
}};
}  // namespace

const Architecture& find_architecture(std::string_view name, const std::string& source) {
  for (const auto& a : kArchitectures)
    if (a.name == name) return a;
  fail("{}: architecture \"{}\" is not supported (supported: {})", source, name,
       fmt::join(supported_architectures(), ", "));
}

std::vector<std::string_view> supported_architectures() {
  std::vector<std::string_view> names;
  for (const auto& a : kArchitectures) names.push_back(a.name);
  return names;
}

}  // namespace apus
