#include "model/config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/arch/arch.h"

namespace apus {

namespace {

using nlohmann::json;

template <typename T>
T get_or(const json& j, const char* key, T fallback, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    fail("{}: field \"{}\" has the wrong type ({})", source, key, it->dump());
  }
}

template <typename T>
T require(const json& j, const char* key, const std::string& source) {
  APUS_CHECK(j.contains(key) && !j[key].is_null(), "{}: required field \"{}\" is missing", source, key);
  return get_or<T>(j, key, T{}, source);
}

std::vector<int> id_list(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  if (it->is_number_integer()) return {it->get<int>()};
  std::vector<int> ids;
  if (it->is_array())
    for (const auto& v : *it)
      if (v.is_number_integer()) ids.push_back(v.get<int>());
  return ids;
}

// transformers 5 writes `rope_parameters` ({rope_type, rope_theta, factor, ...}); checkpoints on
// the hub mostly carry the older `rope_theta` + `rope_scaling` ({type | rope_type, factor, ...}).
void parse_rope(const json& j, const std::string& source, ModelConfig& c) {
  c.rope_theta = get_or<float>(j, "rope_theta", c.rope_theta, source);
  const json* scaling = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) scaling = &j["rope_parameters"];
  else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) scaling = &j["rope_scaling"];
  if (!scaling) return;
  const json& s = *scaling;
  c.rope_theta = get_or<float>(s, "rope_theta", c.rope_theta, source);
  std::string type = get_or<std::string>(s, "rope_type", get_or<std::string>(s, "type", "default", source), source);
  RopeScaling& r = c.rope_scaling;
  r.type = type;
  r.factor = get_or<float>(s, "factor", 1.0f, source);
  if (type == "default") return;
  if (type == "linear" || type == "dynamic") {
    APUS_CHECK(r.factor > 0, "{}: rope scaling factor must be positive, found {}", source, r.factor);
    return;
  }
  if (type == "llama3") {
    r.low_freq_factor = require<float>(s, "low_freq_factor", source);
    r.high_freq_factor = require<float>(s, "high_freq_factor", source);
    r.original_max_position_embeddings = require<int>(s, "original_max_position_embeddings", source);
    APUS_CHECK(r.high_freq_factor != r.low_freq_factor,
               "{}: llama3 rope scaling needs high_freq_factor != low_freq_factor", source);
    return;
  }
  fail("{}: rope scaling type \"{}\" is not supported (supported: default, linear, dynamic, llama3)",
       source, type);
}

}  // namespace

ModelConfig parse_model_config(const json& raw, const std::string& source) {
  APUS_CHECK(raw.is_object(), "{}: expected a JSON object", source);
  ModelConfig c;
  auto archs = raw.find("architectures");
  APUS_CHECK(archs != raw.end() && archs->is_array() && !archs->empty() && (*archs)[0].is_string(),
             "{}: \"architectures\" must list the model class (e.g. [\"LlamaForCausalLM\"])", source);
  c.architecture = (*archs)[0].get<std::string>();
  const Architecture& arch = find_architecture(c.architecture, source);
  const json j = arch.translate ? arch.translate(raw, source) : raw;
  c.model_type = get_or<std::string>(j, "model_type", "", source);
  c.vocab_size = require<int64_t>(j, "vocab_size", source);
  c.hidden_size = require<int64_t>(j, "hidden_size", source);
  c.intermediate_size = require<int64_t>(j, "intermediate_size", source);
  c.num_layers = require<int>(j, "num_hidden_layers", source);
  c.num_heads = require<int>(j, "num_attention_heads", source);
  c.num_kv_heads = get_or<int>(j, "num_key_value_heads", c.num_heads, source);
  APUS_CHECK(c.num_heads > 0 && c.hidden_size > 0 && c.vocab_size > 0 && c.num_layers > 0 &&
                 c.intermediate_size > 0,
             "{}: sizes must be positive", source);
  APUS_CHECK(c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0,
             "{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", source,
             c.num_heads, c.num_kv_heads);
  c.head_dim = get_or<int>(j, "head_dim", int(c.hidden_size / c.num_heads), source);
  APUS_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0, "{}: head_dim must be even and positive, found {}",
             source, c.head_dim);
  c.rms_norm_eps = get_or<float>(j, "rms_norm_eps", c.rms_norm_eps, source);
  c.max_position_embeddings = get_or<int>(j, "max_position_embeddings", c.max_position_embeddings, source);
  c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false, source);
  c.bos_token_id = get_or<int>(j, "bos_token_id", -1, source);
  c.eos_token_ids = id_list(j, "eos_token_id");
  c.torch_dtype = get_or<std::string>(j, "torch_dtype", get_or<std::string>(j, "dtype", "", source), source);
  std::string act = get_or<std::string>(j, "hidden_act", "silu", source);
  APUS_CHECK(act == "silu", "{}: hidden_act \"{}\" is not supported (supported: silu)", source, act);
  parse_rope(j, source, c);
  c.quant = parse_quant_config(raw, source);
  arch.configure(raw, source, c);
  return c;
}

ModelConfig load_model_config(const std::string& model_dir) {
  std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  std::ifstream in(path);
  APUS_CHECK(in.good(), "cannot open {}: is {} a Hugging Face model directory?", path, model_dir);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: malformed JSON: {}", path, e.what());
  }
  ModelConfig c = parse_model_config(j, path);
  // generation_config.json often lists more stop ids than config.json (e.g. <|endoftext|> and
  // <|im_end|> for Qwen2.5-Instruct); generation stops at any of them, as transformers does.
  std::ifstream gen_in(std::filesystem::path(model_dir) / "generation_config.json");
  if (gen_in.good()) {
    json g = json::parse(gen_in, nullptr, /*allow_exceptions=*/false);
    for (int id : id_list(g, "eos_token_id"))
      if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end())
        c.eos_token_ids.push_back(id);
  }
  return c;
}

}  // namespace apus
