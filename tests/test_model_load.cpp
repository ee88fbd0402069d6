// Checkpoint and config problems are reported with the file, tensor or field at fault.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/error.h"
#include "model/arch/arch.h"
#include "model/load.h"
#include "model/presets.h"
#include "test_util.h"

namespace apus {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

nlohmann::json tiny_llama() {
  return {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 32},
          {"intermediate_size", 48}, {"num_hidden_layers", 1}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"vocab_size", 40}, {"rms_norm_eps", 1e-5}};
}

std::vector<test::NamedShape> tiny_llama_tensors() {
  return {{"model.embed_tokens.weight", {40, 32}},
          {"model.layers.0.input_layernorm.weight", {32}},
          {"model.layers.0.self_attn.q_proj.weight", {32, 32}},
          {"model.layers.0.self_attn.k_proj.weight", {16, 32}},
          {"model.layers.0.self_attn.v_proj.weight", {16, 32}},
          {"model.layers.0.self_attn.o_proj.weight", {32, 32}},
          {"model.layers.0.post_attention_layernorm.weight", {32}},
          {"model.layers.0.mlp.gate_proj.weight", {48, 32}},
          {"model.layers.0.mlp.up_proj.weight", {48, 32}},
          {"model.layers.0.mlp.down_proj.weight", {32, 48}},
          {"model.norm.weight", {32}},
          {"lm_head.weight", {40, 32}}};
}

std::string load_error(const test::TempDir& dir) {
  auto backend = make_cpu_backend(1);
  LoadOptions o;
  o.model_dir = dir.str();
  try {
    load_model(o, *backend);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ModelLoad, ValidCheckpointLoadsAndRuns) {
  test::TempDir dir;
  test::write_random_checkpoint(dir.path(), tiny_llama(), tiny_llama_tensors(), DType::BF16, 1);
  auto backend = make_cpu_backend(1);
  LoadOptions o;
  o.model_dir = dir.str();
  auto m = load_model(o, *backend);
  EXPECT_EQ(m->config().num_kv_heads, 2);
  EXPECT_EQ(m->weights().layers.size(), 1u);
}

TEST(ModelLoad, MissingTensorNamed) {
  test::TempDir dir;
  auto t = tiny_llama_tensors();
  t.erase(t.begin() + 3);  // k_proj
  test::write_random_checkpoint(dir.path(), tiny_llama(), t, DType::BF16, 1);
  EXPECT_THAT(load_error(dir), AllOf(HasSubstr("missing tensor model.layers.0.self_attn.k_proj.weight"),
                                     HasSubstr("[16, 32]")));
}

TEST(ModelLoad, ExtraTensorNamed) {
  test::TempDir dir;
  auto t = tiny_llama_tensors();
  t.push_back({"model.layers.0.self_attn.q_proj.bias", {32}});
  test::write_random_checkpoint(dir.path(), tiny_llama(), t, DType::BF16, 1);
  EXPECT_THAT(load_error(dir), AllOf(HasSubstr("unexpected tensors model.layers.0.self_attn.q_proj.bias"),
                                     HasSubstr("model.safetensors")));
}

TEST(ModelLoad, WrongShapeNamesFileTensorAndShapes) {
  test::TempDir dir;
  auto t = tiny_llama_tensors();
  t[7].shape = {32, 48};  // gate_proj transposed
  test::write_random_checkpoint(dir.path(), tiny_llama(), t, DType::BF16, 1);
  EXPECT_THAT(load_error(dir), AllOf(HasSubstr("model.safetensors"), HasSubstr("mlp.gate_proj.weight"),
                                     HasSubstr("[32, 48]"), HasSubstr("expected [48, 32]")));
}

TEST(ModelLoad, NonFloatDtypeRefused) {
  test::TempDir dir;
  test::write_json(dir.path() / "config.json", tiny_llama());
  std::vector<Tensor> keep;
  std::vector<TensorToWrite> out;
  for (const auto& t : tiny_llama_tensors()) {
    DType d = t.name == "model.norm.weight" ? DType::I32 : DType::F32;
    keep.push_back(host_tensor(d, t.shape));
    out.push_back({t.name, d, t.shape, keep.back().data});
  }
  write_checkpoint(dir.str(), out, size_t(1) << 40);
  EXPECT_THAT(load_error(dir), AllOf(HasSubstr("model.norm.weight"), HasSubstr("I32")));
}

TEST(ModelLoad, TruncatedFileNamed) {
  test::TempDir dir;
  test::write_random_checkpoint(dir.path(), tiny_llama(), tiny_llama_tensors(), DType::BF16, 1);
  auto file = dir.path() / "model.safetensors";
  std::filesystem::resize_file(file, std::filesystem::file_size(file) - 100);
  EXPECT_THAT(load_error(dir), AllOf(HasSubstr("model.safetensors"), HasSubstr("truncated")));
}

TEST(ModelLoad, UnknownArchitectureListsSupported) {
  test::TempDir dir;
  auto cfg = tiny_llama();
  cfg["architectures"] = {"GPTNeoXForCausalLM"};
  test::write_json(dir.path() / "config.json", cfg);
  EXPECT_THAT(load_error(dir), AllOf(HasSubstr("GPTNeoXForCausalLM"), HasSubstr("LlamaForCausalLM"),
                                     HasSubstr("Qwen3ForCausalLM"), HasSubstr("config.json")));
}

TEST(ModelLoad, ConfigProblemsNamed) {
  test::TempDir dir;
  EXPECT_THAT(load_error(dir), HasSubstr("config.json"));  // no config at all
  auto cfg = tiny_llama();
  cfg.erase("hidden_size");
  test::write_json(dir.path() / "config.json", cfg);
  EXPECT_THAT(load_error(dir), HasSubstr("\"hidden_size\" is missing"));
  cfg = tiny_llama();
  cfg["num_key_value_heads"] = 3;
  test::write_json(dir.path() / "config.json", cfg);
  EXPECT_THAT(load_error(dir), HasSubstr("multiple of num_key_value_heads"));
  cfg = tiny_llama();
  cfg["rope_scaling"] = {{"rope_type", "su"}, {"factor", 2.0}};
  test::write_json(dir.path() / "config.json", cfg);
  EXPECT_THAT(load_error(dir), HasSubstr("\"su\" is not supported"));
  std::ofstream(dir.path() / "config.json") << "{\"architectures\": [";
  EXPECT_THAT(load_error(dir), HasSubstr("malformed JSON"));
}

TEST(ModelLoad, RopeParametersOfTransformers5Accepted) {
  auto cfg = tiny_llama();
  cfg["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 4.0}, {"rope_theta", 5000.0}};
  ModelConfig c = parse_model_config(cfg, "config.json");
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_FLOAT_EQ(c.rope_scaling.factor, 4.0f);
  EXPECT_FLOAT_EQ(c.rope_theta, 5000.0f);
}

TEST(ModelLoad, GenerationConfigEosIdsMerged) {
  test::TempDir dir;
  auto cfg = tiny_llama();
  cfg["eos_token_id"] = 2;
  test::write_json(dir.path() / "config.json", cfg);
  test::write_json(dir.path() / "generation_config.json", {{"eos_token_id", {2, 7}}});
  EXPECT_EQ(load_model_config(dir.str()).eos_token_ids, (std::vector<int>{2, 7}));
}

TEST(ModelLoad, EveryPresetParses) {
  for (const auto& name : config_preset_names()) {
    ModelConfig c = parse_model_config(config_preset(name), name);
    EXPECT_GT(c.num_layers, 0) << name;
  }
  EXPECT_THROW(config_preset("gpt-5"), Error);
}

TEST(ModelLoad, DummyWeightsAreDeterministic) {
  Tensor a = random_weight("x.weight", {8, 16}, DType::BF16, 3);
  Tensor b = random_weight("x.weight", {8, 16}, DType::BF16, 3, 4);
  Tensor c = random_weight("x.weight", {8, 16}, DType::BF16, 4);
  EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes()), 0);
  EXPECT_NE(std::memcmp(a.data, c.data, a.nbytes()), 0);
}

}  // namespace
}  // namespace apus
