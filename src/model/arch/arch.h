// The table of supported architectures. Each architecture is a small file that reads its own
// config fields and says which optional tensors it has; the llama-family tensor-name table and
// forward pass are shared (llama_family.h, model/decoder.h).
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace apus {

struct ModelConfig;

struct Architecture {
  std::string_view name;  // the `architectures[0]` of config.json
  void (*configure)(const nlohmann::json& j, const std::string& source, ModelConfig& c);
};

// Throws an error listing the supported architectures when `name` is not one of them.
const Architecture& find_architecture(std::string_view name, const std::string& source);
std::vector<std::string_view> supported_architectures();

void configure_llama(const nlohmann::json& j, const std::string& source, ModelConfig& c);
void configure_qwen2(const nlohmann::json& j, const std::string& source, ModelConfig& c);
void configure_qwen3(const nlohmann::json& j, const std::string& source, ModelConfig& c);
void configure_mistral(const nlohmann::json& j, const std::string& source, ModelConfig& c);

}  // namespace apus
