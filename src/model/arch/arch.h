// The table of supported architectures. Each architecture is a small file that reads its own
// config fields and says which optional tensors it has; the tensor-name tables (weights.cpp, one per
// WeightLayout) and the forward pass (model/decoder.h) are shared.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace apus {

struct ModelConfig;

struct Architecture {
  std::string_view name;  // the `architectures[0]` of config.json
  // Reads the architecture's own fields from config.json (as written) into the parsed config.
  void (*configure)(const nlohmann::json& j, const std::string& source, ModelConfig& c);
  // For remote-code models with their own field names (Qwen v1, ChatGLM): config.json rewritten
  // into the llama-family fields the generic parser reads; null for the transformers models.
  nlohmann::json (*translate)(const nlohmann::json& j, const std::string& source) = nullptr;
};

// Throws an error listing the supported architectures when `name` is not one of them.
const Architecture& find_architecture(std::string_view name, const std::string& source);
std::vector<std::string_view> supported_architectures();

// The value of the first of `keys` that config.json sets (not null), for fields with several
// spellings (Qwen's n_embd / hidden_size); throws naming the first key when none is set.
const nlohmann::json& config_field(const nlohmann::json& j, std::initializer_list<const char*> keys,
                                   const std::string& source);

void configure_llama(const nlohmann::json& j, const std::string& source, ModelConfig& c);
void configure_qwen2(const nlohmann::json& j, const std::string& source, ModelConfig& c);
void configure_qwen3(const nlohmann::json& j, const std::string& source, ModelConfig& c);
void configure_mistral(const nlohmann::json& j, const std::string& source, ModelConfig& c);
void configure_qwen(const nlohmann::json& j, const std::string& source, ModelConfig& c);
nlohmann::json translate_qwen(const nlohmann::json& j, const std::string& source);
void configure_chatglm(const nlohmann::json& j, const std::string& source, ModelConfig& c);
nlohmann::json translate_chatglm(const nlohmann::json& j, const std::string& source);

}  // namespace apus
