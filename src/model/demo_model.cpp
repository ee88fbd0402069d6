#include "model/demo_model.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace apus {

namespace fs = std::filesystem;

const char* const kDemoModelNote =
    "Apus demo model: a tiny Qwen2-architecture network with RANDOM weights and the real Qwen tokenizer; it answers "
    "with random text. Serve real weights with: apus deploy --model /path/to/Qwen2.5-7B-Instruct";

namespace {

void write_json(const fs::path& path, const nlohmann::ordered_json& j) {
  std::ofstream out(path);
  out << j.dump(2) << "\n";
  APUS_CHECK(out.good(), "{}: cannot write", path.string());
}

}  // namespace

void write_demo_model(const std::string& tokenizer_dir, const std::string& out_dir) {
  const fs::path src(tokenizer_dir), dst(out_dir);
  APUS_CHECK(fs::exists(src / "tokenizer.json"),
             "{}: no tokenizer.json for the demo model (run scripts/fetch-tokenizers.sh, or give --model DIR)", tokenizer_dir);
  fs::create_directories(dst);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    if (fs::exists(src / f)) fs::copy_file(src / f, dst / f, fs::copy_options::overwrite_existing);

  constexpr int64_t kVocab = 151936;  // Qwen's padded embedding size (the tokenizer has 151669 entries)
  constexpr int64_t kHidden = 32, kInter = 64, kHeads = 2, kKvHeads = 1, kHeadDim = kHidden / kHeads;
  const nlohmann::ordered_json config = {
      {"architectures", {"Qwen2ForCausalLM"}}, {"model_type", "qwen2"}, {"hidden_size", kHidden},
      {"intermediate_size", kInter}, {"num_hidden_layers", 1}, {"num_attention_heads", kHeads},
      {"num_key_value_heads", kKvHeads}, {"vocab_size", kVocab}, {"max_position_embeddings", 4096},
      {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0}, {"hidden_act", "silu"}, {"tie_word_embeddings", true},
      {"bos_token_id", 151643}, {"eos_token_id", 151645}, {"use_sliding_window", false}, {"torch_dtype", "bfloat16"}};
  write_json(dst / "config.json", config);
  write_json(dst / "generation_config.json", {{"bos_token_id", 151643}, {"eos_token_id", {151645, 151643}}});

  const std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"model.embed_tokens.weight", {kVocab, kHidden}},
      {"model.layers.0.input_layernorm.weight", {kHidden}},
      {"model.layers.0.self_attn.q_proj.weight", {kHeads * kHeadDim, kHidden}},
      {"model.layers.0.self_attn.q_proj.bias", {kHeads * kHeadDim}},
      {"model.layers.0.self_attn.k_proj.weight", {kKvHeads * kHeadDim, kHidden}},
      {"model.layers.0.self_attn.k_proj.bias", {kKvHeads * kHeadDim}},
      {"model.layers.0.self_attn.v_proj.weight", {kKvHeads * kHeadDim, kHidden}},
      {"model.layers.0.self_attn.v_proj.bias", {kKvHeads * kHeadDim}},
      {"model.layers.0.self_attn.o_proj.weight", {kHidden, kHeads * kHeadDim}},
      {"model.layers.0.post_attention_layernorm.weight", {kHidden}},
      {"model.layers.0.mlp.gate_proj.weight", {kInter, kHidden}},
      {"model.layers.0.mlp.up_proj.weight", {kInter, kHidden}},
      {"model.layers.0.mlp.down_proj.weight", {kHidden, kInter}},
      {"model.norm.weight", {kHidden}}};
  std::vector<Tensor> values;
  std::vector<TensorToWrite> tensors;
  values.reserve(shapes.size());
  for (const auto& [name, shape] : shapes) {
    values.push_back(random_weight(name, shape, DType::BF16, /*seed=*/77));
    tensors.push_back({name, DType::BF16, shape, values.back().data});
  }
  write_checkpoint(dst.string(), tensors, size_t(1) << 40);
}

}  // namespace apus
