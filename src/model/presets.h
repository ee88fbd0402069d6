// config.json contents of well-known models, for --load-format dummy without a checkpoint.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace apus {

// Throws listing the known presets when `name` is not one of them.
nlohmann::json config_preset(const std::string& name);
std::vector<std::string> config_preset_names();

}  // namespace apus
