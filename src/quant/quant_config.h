// The `quantization_config` of a Hugging Face config.json: which weight-only integer format the
// linear layers of a checkpoint use (GPTQ or AWQ; layouts in gptq_format.h and
// ../../../shared/FORMATS.md "GPTQ"). Variants we do not load are refused by name.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>

namespace apus {

enum class QuantMethod { kGptq, kAwq };

struct QuantConfig {
  QuantMethod method = QuantMethod::kGptq;
  int bits = 4;                 // 4 or 8 (AWQ: 4)
  int64_t group_size = 128;     // columns per scale/zero group; -1: one group over all inputs
  bool sym = true;              // informational: the zeros are read from qzeros either way
  bool desc_act = false;        // GPTQ act-order: g_idx is not i / group_size
  bool zeros_minus_one = true;  // GPTQ checkpoint_format "gptq" (v1) stores zero - 1; gptq_v2 and AWQ do not

  std::string describe() const;  // "gptq 4-bit, group 128, desc_act"
};

// The checkpoint's quantization, or nothing for a float checkpoint (no quantization_config, or one
// of a method that quantizes nothing at load). `source` names config.json in error messages.
std::optional<QuantConfig> parse_quant_config(const nlohmann::json& config, const std::string& source);

// The quantization_config object a checkpoint in this format carries (what the exporter writes).
nlohmann::json quant_config_json(const QuantConfig& q);

}  // namespace apus
