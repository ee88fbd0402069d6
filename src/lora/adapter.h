// PEFT LoRA adapters (../../../shared/FORMATS.md, "PEFT LoRA adapters"): adapter_config.json plus
// adapter_model.safetensors, read and checked against the base model's config.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace apus {

// One adapted linear layer: y = W x + scale * B (A x).
struct LoraModule {
  std::string name;  // the base module, e.g. "model.layers.0.self_attn.q_proj"
  Tensor a;          // [rank, in], a host view into the mapped file (F32, F16 or BF16)
  Tensor b;          // [out, rank]
  int rank = 0;
  float scale = 1.0f;  // lora_alpha / rank, or lora_alpha / sqrt(rank) with use_rslora
};

struct LoraAdapter {
  std::string dir;
  std::string base_model;  // base_model_name_or_path, as written
  int max_rank = 0;        // the largest module rank
  std::map<std::string, LoraModule> modules;  // by base module name
  // modules_to_save: whole replacement tensors by base tensor name ("lm_head.weight",
  // "model.embed_tokens.weight").
  std::map<std::string, Tensor> saved;
  // target_modules: a list of names, or (when `target_regex` is set) one regular expression.
  std::vector<std::string> target_list;
  std::string target_regex;
};

// Reads `dir` (adapter_config.json + adapter_model.safetensors, or adapter_model.bin: refused with
// a message). Errors name the file and field or tensor at fault.
LoraAdapter load_lora_adapter(const std::string& dir);

// Checks the adapter against a base model: every module is one of its linear layers (by name and
// shape), every saved tensor one of its tensors, every target in target_modules names something.
void check_lora_adapter(const LoraAdapter& adapter, const ModelConfig& base);

// An adapter of rank `rank` on every linear layer of the base, with deterministic random values
// (lora_alpha = 2 * rank): benchmarks (apus bench throughput --num-loras).
LoraAdapter random_lora_adapter(const ModelConfig& base, int rank, uint64_t seed);

// The linear layers of a llama-family decoder layer that LoRA may target (PEFT's short names).
const std::vector<std::string>& lora_target_names();
// [out, in] of the base's module `name` ("model.layers.3.mlp.up_proj"), or false when the base has
// no such linear layer.
bool lora_module_shape(const ModelConfig& base, const std::string& name, int64_t* out, int64_t* in);

}  // namespace apus
