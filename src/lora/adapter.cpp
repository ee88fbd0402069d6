#include "lora/adapter.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "core/error.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace apus {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr std::string_view kPrefix = "base_model.model.";

std::string shape_str(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

// PEFT's get_pattern_key: the rank_pattern / alpha_pattern key that applies to `module`, if any
// (an exact name, else a regex matching the name's tail after a dot).
const json* pattern_value(const json* patterns, const std::string& module, const std::string& where) {
  if (!patterns || !patterns->is_object()) return nullptr;
  if (patterns->contains(module)) return &(*patterns)[module];
  for (auto it = patterns->begin(); it != patterns->end(); ++it) {
    const std::string& key = it.key();
    try {
      if (std::regex_match(module, std::regex("(.*\\.)?(" + key + ")"))) return &it.value();
    } catch (const std::regex_error& e) {
      fail("{}: pattern \"{}\" is not a regular expression: {}", where, key, e.what());
    }
  }
  return nullptr;
}

// PEFT's check_target_module_exists: a string is a regex matched against the whole name; a list
// matches a name equal to an entry or ending in "." + entry.
bool targets(const json& target_modules, const std::string& module) {
  if (target_modules.is_string()) return std::regex_match(module, std::regex(target_modules.get<std::string>()));
  for (const auto& t : target_modules) {
    const std::string s = t.get<std::string>();
    if (module == s || module.ends_with("." + s)) return true;
  }
  return false;
}

}  // namespace

const std::vector<std::string>& lora_target_names() {
  static const std::vector<std::string> names = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"};
  return names;
}

bool lora_module_shape(const ModelConfig& c, const std::string& name, int64_t* out, int64_t* in) {
  int layer = -1;
  char kind[32] = {0}, proj[32] = {0};
  if (std::sscanf(name.c_str(), "model.layers.%d.%31[a-z_].%31[a-z_]", &layer, kind, proj) != 3) return false;
  if (name != fmt::format("model.layers.{}.{}.{}", layer, kind, proj) || layer < 0 || layer >= c.num_layers) return false;
  const std::string k = kind, p = proj;
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  if (k == "self_attn") {
    if (p == "q_proj") *out = c.q_size(), *in = H;
    else if (p == "k_proj" || p == "v_proj") *out = c.kv_size(), *in = H;
    else if (p == "o_proj") *out = H, *in = c.q_size();
    else return false;
  } else if (k == "mlp") {
    if (p == "gate_proj" || p == "up_proj") *out = I, *in = H;
    else if (p == "down_proj") *out = H, *in = I;
    else return false;
  } else {
    return false;
  }
  return true;
}

LoraAdapter load_lora_adapter(const std::string& dir) {
  const fs::path root(dir);
  const std::string cfg_path = (root / "adapter_config.json").string();
  APUS_CHECK(fs::is_directory(root), "{}: LoRA adapter directory not found", dir);
  APUS_CHECK(fs::exists(cfg_path), "{}: not a PEFT adapter (no adapter_config.json)", dir);
  const std::string st_path = (root / "adapter_model.safetensors").string();
  APUS_CHECK(fs::exists(st_path), "{}: no adapter_model.safetensors{}", dir,
             fs::exists(root / "adapter_model.bin") ? " (adapter_model.bin, a pickle, is not read: re-save with "
                                                      "safe_serialization=True)" : "");
  json cfg;
  {
    std::ifstream f(cfg_path);
    try {
      cfg = json::parse(f);
    } catch (const json::exception& e) {
      fail("{}: invalid JSON: {}", cfg_path, e.what());
    }
  }
  auto field = [&](const char* key) -> const json* {
    return cfg.contains(key) && !cfg[key].is_null() ? &cfg[key] : nullptr;
  };
  auto number = [&](const char* key, double fallback) {
    const json* v = field(key);
    if (!v) return fallback;
    APUS_CHECK(v->is_number(), "{}: \"{}\" must be a number", cfg_path, key);
    return v->get<double>();
  };
  auto flag = [&](const char* key) {
    const json* v = field(key);
    APUS_CHECK(!v || v->is_boolean(), "{}: \"{}\" must be true or false", cfg_path, key);
    return v && v->get<bool>();
  };
  const json* type = field("peft_type");
  APUS_CHECK(!type || *type == "LORA", "{}: peft_type {} is not LORA", cfg_path, type ? type->dump() : "");
  APUS_CHECK(!flag("use_dora"), "{}: use_dora (DoRA) adapters are not supported", cfg_path);
  const json* bias = field("bias");
  APUS_CHECK(!bias || *bias == "none", "{}: bias {} is not supported (only \"none\")", cfg_path, bias ? bias->dump() : "");
  const double r = number("r", 8), alpha = number("lora_alpha", 8);
  APUS_CHECK(r >= 1, "{}: r must be at least 1", cfg_path);
  const bool rslora = flag("use_rslora");
  // fan_in_fan_out describes Conv1D weights (GPT-2); for nn.Linear (every architecture here) PEFT
  // ignores it (it warns and sets it false), so the stored A/B have the nn.Linear layout either way.
  (void)flag("fan_in_fan_out");
  const json* tm = field("target_modules");
  APUS_CHECK(tm && (tm->is_string() || tm->is_array()), "{}: target_modules must be a list or a regex string", cfg_path);
  if (tm->is_array())
    for (const auto& t : *tm) APUS_CHECK(t.is_string(), "{}: target_modules entries must be strings", cfg_path);

  LoraAdapter ad;
  ad.dir = dir;
  if (tm->is_string()) ad.target_regex = tm->get<std::string>();
  else ad.target_list = tm->get<std::vector<std::string>>();
  if (const json* b = field("base_model_name_or_path"); b && b->is_string()) ad.base_model = b->get<std::string>();
  const json* rank_pattern = field("rank_pattern");
  const json* alpha_pattern = field("alpha_pattern");
  std::set<std::string> saved_modules;
  if (const json* m = field("modules_to_save")) {
    APUS_CHECK(m->is_array(), "{}: modules_to_save must be a list", cfg_path);
    for (const auto& s : *m) saved_modules.insert(s.get<std::string>());
  }

  auto file = SafetensorsFile::open(st_path);
  std::map<std::string, std::pair<const TensorEntry*, const TensorEntry*>> ab;  // module -> (A, B)
  auto view = [&](const TensorEntry& e) {
    APUS_CHECK(e.dtype == DType::F32 || e.dtype == DType::F16 || e.dtype == DType::BF16,
               "{}: tensor {} has dtype {}; expected F32, F16 or BF16", st_path, e.name, dtype_name(e.dtype));
    void* data = const_cast<void*>(e.data);
    return make_view(data, e.dtype, e.shape, Device::CPU, std::shared_ptr<void>(file, data));
  };
  for (const TensorEntry& e : file->entries()) {
    APUS_CHECK(e.name.starts_with(kPrefix), "{}: tensor {} is not named base_model.model.<module>...", st_path, e.name);
    const std::string rest = e.name.substr(kPrefix.size());
    for (const char* which : {".lora_A.weight", ".lora_B.weight"}) {
      if (rest.ends_with(which)) {
        const std::string module = rest.substr(0, rest.size() - std::string_view(which).size());
        (which[6] == 'A' ? ab[module].first : ab[module].second) = &e;
        goto next;
      }
    }
    APUS_CHECK(rest.find(".lora_") == std::string::npos,
               "{}: tensor {} is not supported (only lora_A/lora_B of linear layers: no embedding LoRA, DoRA "
               "or LoRA biases)", st_path, e.name);
    {  // a modules_to_save tensor: the whole replacement module's parameter
      const size_t dot = rest.rfind('.');
      const std::string module = dot == std::string::npos ? rest : rest.substr(0, dot);
      const std::string leaf = module.substr(module.rfind('.') + 1);
      APUS_CHECK(saved_modules.count(module) || saved_modules.count(leaf),
                 "{}: tensor {} is neither a LoRA matrix nor part of modules_to_save", st_path, e.name);
      ad.saved[rest] = view(e);
    }
  next:;
  }
  for (const auto& [module, pair] : ab) {
    APUS_CHECK(pair.first && pair.second, "{}: module {} has lora_{} but not lora_{}", st_path, module,
               pair.first ? "A" : "B", pair.first ? "B" : "A");
    const TensorEntry &A = *pair.first, &B = *pair.second;
    APUS_CHECK(A.shape.size() == 2 && B.shape.size() == 2 && A.shape[0] == B.shape[1],
               "{}: {} has shape {} and {} has shape {}; expected [r, in] and [out, r]", st_path, A.name,
               shape_str(A.shape), B.name, shape_str(B.shape));
    LoraModule m;
    m.name = module;
    m.a = view(A);
    m.b = view(B);
    m.rank = int(A.shape[0]);
    const json* pr = pattern_value(rank_pattern, module, cfg_path);
    const json* pa = pattern_value(alpha_pattern, module, cfg_path);
    const double mr = pr ? pr->get<double>() : r, ma = pa ? pa->get<double>() : alpha;
    APUS_CHECK(int(mr) == m.rank, "{}: {} has rank {}, but adapter_config.json says r = {} for {}", st_path, A.name,
               m.rank, mr, module);
    m.scale = float(rslora ? ma / std::sqrt(mr) : ma / mr);
    ad.max_rank = std::max(ad.max_rank, m.rank);
    ad.modules.emplace(module, std::move(m));
  }
  APUS_CHECK(!ad.modules.empty() || !ad.saved.empty(), "{}: the adapter holds no LoRA weights", st_path);
  // Targets that name nothing in the file are reported by check_lora_adapter (against the base).
  for (auto& [name, m] : ad.modules)
    APUS_CHECK(targets(*tm, name), "{}: module {} has LoRA weights but is not in target_modules {}", st_path, name,
               tm->dump());
  return ad;
}

void check_lora_adapter(const LoraAdapter& ad, const ModelConfig& base) {
  const std::string st = (fs::path(ad.dir) / "adapter_model.safetensors").string();
  for (const auto& [name, m] : ad.modules) {
    int64_t out = 0, in = 0;
    APUS_CHECK(lora_module_shape(base, name, &out, &in),
               "{}: LoRA target {} is not a linear layer of the base model ({} with {} layers; targets: {})", st, name,
               base.architecture, base.num_layers, fmt::join(lora_target_names(), ", "));
    APUS_CHECK(m.a.shape[1] == in && m.b.shape[0] == out,
               "{}: LoRA for {} is [{} x {}] (B x A), but the base's weight is [{}, {}] (is this adapter for a "
               "different base model?)", st, name, m.b.shape[0], m.a.shape[1], out, in);
  }
  const auto& known = lora_target_names();
  for (const std::string& t : ad.target_list) {
    const std::string leaf = t.substr(t.rfind('.') + 1);
    APUS_CHECK(std::find(known.begin(), known.end(), leaf) != known.end(),
               "{}: target_modules entry \"{}\" is not a linear layer of {} (targets: {})",
               (fs::path(ad.dir) / "adapter_config.json").string(), t, base.architecture, fmt::join(known, ", "));
  }
  for (const auto& [name, t] : ad.saved) {
    APUS_CHECK(name == "lm_head.weight" || name == "model.embed_tokens.weight", "{}: modules_to_save tensor {} is not supported (lm_head and embed_tokens are)", st, name);
    const std::vector<int64_t> want = {base.vocab_size, base.hidden_size};
    APUS_CHECK(t.shape == want, "{}: {} has shape {}, but the base model's is {}", st, name, shape_str(t.shape),
               shape_str(want));
    APUS_CHECK(name != "lm_head.weight" || !base.tie_word_embeddings,
               "{}: the adapter saves lm_head, but the base model ties it to the embeddings (tie_word_embeddings)", st);
  }
}

LoraAdapter random_lora_adapter(const ModelConfig& base, int rank, uint64_t seed) {
  LoraAdapter ad;
  ad.dir = fmt::format("random adapter (seed {})", seed);
  ad.max_rank = rank;
  for (int i = 0; i < base.num_layers; ++i)
    for (const std::string& t : lora_target_names()) {
      const std::string kind = t == "gate_proj" || t == "up_proj" || t == "down_proj" ? "mlp" : "self_attn";
      LoraModule m;
      m.name = fmt::format("model.layers.{}.{}.{}", i, kind, t);
      int64_t out = 0, in = 0;
      lora_module_shape(base, m.name, &out, &in);
      m.a = random_weight(m.name + ".lora_A.weight", {rank, in}, DType::F32, seed);
      m.b = random_weight(m.name + ".lora_B.weight", {out, rank}, DType::F32, seed);
      m.rank = rank;
      m.scale = 2.0f;
      ad.target_list.push_back(t);
      ad.modules.emplace(m.name, std::move(m));
    }
  return ad;
}

}  // namespace apus
