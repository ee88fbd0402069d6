// The reference tool's --model_type names (ms-swift 2.x, swift/llm/utils/model.py at commit
// 5d13db794534ae79d765fb4f6112c3d88e82a472: ModelType + register_model): which template type a
// model type uses, which Hugging Face architecture it loads as, and the eos token the reference
// forces on its tokenizer (which also becomes a stop word).
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace apus {

struct ModelTypeInfo {
  std::string_view name;           // e.g. "qwen-7b-chat"
  std::string_view template_type;  // register_model's template, e.g. "qwen"
  std::string_view architecture;   // config.json architectures[0] of the checkpoint
  std::string_view hf_model_id;    // the reference's hf_model_id
  std::string_view quantization;   // "", "gptq-int4", "gptq-int8", "awq"
  // The eos token the reference sets (register_model eos_token=..., or its get function, e.g.
  // tokenizer.eos_token_id = tokenizer.im_end_id); "" keeps the tokenizer's own.
  std::string_view eos_token;
  bool in_reference = true;  // false: not registered at the pinned commit (added here by analogy)
};

const std::vector<ModelTypeInfo>& model_types();
// Throws apus::Error listing the known names when `name` is unknown.
const ModelTypeInfo& find_model_type(std::string_view name);
std::string known_model_types();

}  // namespace apus
