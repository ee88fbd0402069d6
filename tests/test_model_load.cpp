// Checkpoint and config problems are reported with the file, tensor or field at fault.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>

#include "core/error.h"
#include "model/arch/arch.h"
#include "model/load.h"
#include "model/presets.h"
#include "model/shard.h"
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

// Qwen v1 as the first release wrote config.json (n_embd, n_head, n_layer, ffn_hidden_size,
// padded_vocab_size) and as later ones do (hidden_size, ..., intermediate_size, vocab_size).
nlohmann::json tiny_qwen(bool old_spelling) {
  nlohmann::json j = {{"architectures", {"QWenLMHeadModel"}}, {"model_type", "qwen"}, {"kv_channels", 8},
                      {"layer_norm_epsilon", 1e-5}, {"rotary_emb_base", 10000}, {"rotary_pct", 1.0},
                      {"seq_length", 32}, {"use_dynamic_ntk", true}, {"use_logn_attn", true}, {"no_bias", true}};
  const char* names[][2] = {{"hidden_size", "n_embd"}, {"num_attention_heads", "n_head"},
                            {"num_hidden_layers", "n_layer"}, {"intermediate_size", "ffn_hidden_size"},
                            {"vocab_size", "padded_vocab_size"}};
  const int values[] = {32, 4, 1, 96, 40};
  for (int i = 0; i < 5; ++i) j[names[i][old_spelling ? 1 : 0]] = values[i];
  return j;
}

std::vector<test::NamedShape> tiny_qwen_tensors() {
  return {{"transformer.wte.weight", {40, 32}},
          {"transformer.h.0.ln_1.weight", {32}},
          {"transformer.h.0.attn.c_attn.weight", {96, 32}},
          {"transformer.h.0.attn.c_attn.bias", {96}},
          {"transformer.h.0.attn.c_proj.weight", {32, 32}},
          {"transformer.h.0.ln_2.weight", {32}},
          {"transformer.h.0.mlp.w1.weight", {48, 32}},
          {"transformer.h.0.mlp.w2.weight", {48, 32}},
          {"transformer.h.0.mlp.c_proj.weight", {32, 48}},
          {"transformer.ln_f.weight", {32}},
          {"lm_head.weight", {40, 32}}};
}

TEST(ModelLoad, QwenConfigBothSpellings) {
  for (bool old_spelling : {false, true}) {
    const ModelConfig c = parse_model_config(tiny_qwen(old_spelling), "config.json");
    EXPECT_EQ(c.hidden_size, 32);
    EXPECT_EQ(c.intermediate_size, 48) << "w1/w2 are half of the config's MLP width";
    EXPECT_EQ(c.num_heads, 4);
    EXPECT_EQ(c.num_kv_heads, 4);
    EXPECT_EQ(c.head_dim, 8);
    EXPECT_EQ(c.vocab_size, 40);
    EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
    EXPECT_EQ(c.rope_scaling.type, "qwen-ntk");
    EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 32);
    EXPECT_EQ(c.logn_length, 32);
    EXPECT_TRUE(c.qkv_bias);
    EXPECT_FALSE(c.o_bias);
    EXPECT_EQ(c.layout, WeightLayout::kQwen);
  }
  test::TempDir dir;
  test::write_random_checkpoint(dir.path(), tiny_qwen(true), tiny_qwen_tensors(), DType::BF16, 1);
  EXPECT_EQ(load_error(dir), "(no error)");
}

TEST(ModelLoad, QwenProblemsNamed) {
  auto err = [](nlohmann::json j) {
    try {
      parse_model_config(j, "config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  auto j = tiny_qwen(false);
  j["kv_channels"] = 16;
  EXPECT_THAT(err(j), HasSubstr("kv_channels (16) * num_attention_heads (4) must equal hidden_size (32)"));
  j = tiny_qwen(false);
  j.erase("seq_length");
  EXPECT_THAT(err(j), HasSubstr("\"seq_length\" is missing"));
  j = tiny_qwen(false);
  j["rotary_pct"] = 0.5;
  EXPECT_THAT(err(j), HasSubstr("use_logn_attn with rotary_pct < 1 is not supported"));
  j["use_logn_attn"] = false;
  EXPECT_EQ(parse_model_config(j, "config.json").rotary_dim, 4);
  j = tiny_qwen(false);
  j["use_cache_quantization"] = true;
  EXPECT_THAT(err(j), HasSubstr("use_cache_quantization"));
  j = tiny_qwen(false);
  j.erase("hidden_size");
  EXPECT_THAT(err(j), HasSubstr("\"hidden_size\" is missing"));

  // The fused c_attn is checked whole, by name and shape.
  test::TempDir dir;
  auto t = tiny_qwen_tensors();
  t[2].shape = {64, 32};
  test::write_random_checkpoint(dir.path(), tiny_qwen(false), t, DType::BF16, 1);
  EXPECT_THAT(load_error(dir), AllOf(HasSubstr("transformer.h.0.attn.c_attn.weight has shape [64, 32], expected [96, 32]")));
}

nlohmann::json tiny_chatglm() {
  return {{"architectures", {"ChatGLMModel"}}, {"model_type", "chatglm"}, {"num_layers", 1}, {"hidden_size", 32},
          {"num_attention_heads", 4}, {"kv_channels", 8}, {"ffn_hidden_size", 40}, {"padded_vocab_size", 40},
          {"seq_length", 64}, {"multi_query_attention", true}, {"multi_query_group_num", 2},
          {"add_qkv_bias", true}, {"add_bias_linear", false}, {"rmsnorm", true}, {"post_layer_norm", true},
          {"apply_residual_connection_post_layernorm", false}, {"layernorm_epsilon", 1e-5}};
}

TEST(ModelLoad, ChatGlmConfigAndRefusals) {
  const ModelConfig c = parse_model_config(tiny_chatglm(), "config.json");
  EXPECT_EQ(c.num_layers, 1);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.rotary_dim, 4);
  EXPECT_TRUE(c.rope_interleaved);
  EXPECT_EQ(c.intermediate_size, 40);
  EXPECT_EQ(c.max_position_embeddings, 64);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  auto j = tiny_chatglm();
  j["rope_ratio"] = 50;
  EXPECT_FLOAT_EQ(parse_model_config(j, "config.json").rope_theta, 500000.0f);
  for (const char* field : {"rmsnorm", "post_layer_norm", "apply_residual_connection_post_layernorm", "quantization_bit",
                            "pre_seq_len"}) {
    j = tiny_chatglm();
    if (std::string(field) == "quantization_bit") j[field] = 4;
    else if (std::string(field) == "pre_seq_len") j[field] = 128;
    else j[field] = !j[field].get<bool>();
    try {
      parse_model_config(j, "config.json");
      ADD_FAILURE() << field << " accepted";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), AllOf(HasSubstr(field), HasSubstr("not supported"))) << field;
    }
  }
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

// A tensor-parallel rank's dummy block is exactly that block of the whole tensor (sharded models
// get the whole model's weights), with many threads as with one.
TEST(ModelLoad, DummyBlocksAreBlocksOfTheWholeTensor) {
  const std::vector<int64_t> shape{96, 2048};
  const Tensor whole = random_weight("model.layers.0.mlp.down_proj.weight", shape, DType::F32, 7);
  for (auto [r0, nr, c0, nc] : std::vector<std::array<int64_t, 4>>{{0, 96, 1024, 1024}, {48, 48, 0, 2048}, {5, 7, 3, 1500}}) {
    const Tensor block =
        random_weight_block("model.layers.0.mlp.down_proj.weight", shape, r0, nr, c0, nc, DType::F32, 7, 3);
    ASSERT_EQ(block.shape, (std::vector<int64_t>{nr, nc}));
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t c = 0; c < nc; ++c)
        ASSERT_EQ(block.ptr<float>()[r * nc + c], whole.ptr<float>()[(r0 + r) * shape[1] + c0 + c]) << r << "," << c;
  }
  EXPECT_THROW(random_weight_block("x.weight", shape, 90, 10, 0, 4, DType::F32, 7), Error);
}

// Which heads, KV heads, intermediate columns and vocabulary rows each rank holds.
TEST(ModelLoad, ShardsSplitHeadsAndReplicateFewKvHeads) {
  ModelConfig c = parse_model_config(config_preset("qwen2.5-7b"), "preset");  // 28 heads, 4 KV heads
  const Shard two = Shard::of(c, 1, 2);
  EXPECT_EQ(two.heads, 14);
  EXPECT_EQ(two.head0, 14);
  EXPECT_EQ(two.kv_heads, 2);
  EXPECT_EQ(two.kv_head0, 2);
  EXPECT_EQ(two.inter, c.intermediate_size / 2);
  EXPECT_EQ(two.local(c).num_kv_heads, 2);
  EXPECT_EQ(two.local(c).vocab_size, c.vocab_size);  // logits are gathered whole
  c.num_kv_heads = 2;  // fewer KV heads than 4 ranks: each rank keeps the one its queries read
  for (int r = 0; r < 4; ++r) {
    const Shard s = Shard::of(c, r, 4);
    EXPECT_EQ(s.kv_heads, 1);
    EXPECT_EQ(s.kv_head0, s.head0 / 14) << r;  // 28 heads / 2 KV heads: groups of 14
  }
  c.vocab_size = 10;  // the last rank's share is short: padded rows
  const Shard last = Shard::of(c, 3, 4);
  EXPECT_EQ(last.vocab_padded, 3);
  EXPECT_EQ(last.vocab0, 9);
  EXPECT_EQ(last.vocab, 1);
  c.num_heads = 30;
  EXPECT_THROW(Shard::of(c, 0, 4), Error);
}

}  // namespace
}  // namespace apus
