// Quantized checkpoints end to end on the backend under test: a model whose linear layers are GPTQ
// (v1 and v2, 4 and 8 bits, act-order, one group per row) or AWQ tensors gives the logits of the
// same model stored in float32 with the dequantized weights, for a prompt and decode steps. Also
// the decode byte count, float layers in a quantized checkpoint, dummy quantized weights, and the
// error for a missing tensor. (Fidelity against transformers: GoldenQuant in test_golden.cpp.)
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "model/load.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "parallel/model_group.h"
#include "quant/gptq_format.h"
#include "sequence_runner.h"
#include "test_device.h"
#include "test_util.h"

namespace apus {
namespace {

using nlohmann::json;

json tiny_config() {
  return json{{"architectures", {"Qwen2ForCausalLM"}}, {"model_type", "qwen2"}, {"hidden_size", 128},
              {"intermediate_size", 256}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"vocab_size", 96}, {"max_position_embeddings", 64},
              {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0}, {"tie_word_embeddings", false},
              {"use_sliding_window", false}};
}

bool is_linear(const std::string& name) {
  for (const char* l : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    if (name.find(std::string(l) + ".weight") != std::string::npos) return true;
  return false;
}

std::vector<test::NamedShape> tensor_specs(const json& c) {
  const int64_t H = c["hidden_size"], I = c["intermediate_size"], V = c["vocab_size"];
  const int64_t hd = H / c["num_attention_heads"].get<int64_t>(), kv = hd * c["num_key_value_heads"].get<int64_t>();
  std::vector<test::NamedShape> s{{"model.embed_tokens.weight", {V, H}}, {"model.norm.weight", {H}},
                                  {"lm_head.weight", {V, H}}};
  for (int i = 0; i < c["num_hidden_layers"].get<int>(); ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    for (auto [n, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
             {"input_layernorm.weight", {H}}, {"post_attention_layernorm.weight", {H}},
             {"self_attn.q_proj.weight", {H, H}}, {"self_attn.q_proj.bias", {H}},
             {"self_attn.k_proj.weight", {kv, H}}, {"self_attn.k_proj.bias", {kv}},
             {"self_attn.v_proj.weight", {kv, H}}, {"self_attn.v_proj.bias", {kv}},
             {"self_attn.o_proj.weight", {H, H}}, {"mlp.gate_proj.weight", {I, H}},
             {"mlp.up_proj.weight", {I, H}}, {"mlp.down_proj.weight", {H, I}}})
      s.push_back({p + n, shape});
  }
  return s;
}

// Random codes and zeros; scales that give the float initialiser's spread.
QuantMatrix random_quant(int64_t out, int64_t in, const QuantConfig& q, std::mt19937& rng) {
  QuantMatrix m;
  m.out = out, m.in = in, m.bits = q.bits, m.group_size = q.group_size == -1 ? in : q.group_size;
  const int top = (1 << q.bits) - 1;
  std::uniform_int_distribution<int> code(0, top), zero(top / 2 - 2, top / 2 + 2);
  m.q.resize(size_t(out * in));
  for (auto& v : m.q) v = uint8_t(code(rng));
  m.zeros.resize(size_t(out * m.groups()));
  for (auto& v : m.zeros) v = uint8_t(q.sym ? (top + 1) / 2 : zero(rng));
  m.scales.resize(m.zeros.size());
  std::uniform_real_distribution<float> s(0.5f, 1.5f);
  const float base = 2.0f / std::sqrt(float(in)) / (float(top + 1) / 3.5f);
  for (auto& v : m.scales) v = f16_to_f32(f32_to_f16(base * s(rng)));
  m.g_idx.resize(size_t(in));
  for (int64_t i = 0; i < in; ++i) m.g_idx[size_t(i)] = int32_t(i / m.group_size);
  if (q.desc_act) std::shuffle(m.g_idx.begin(), m.g_idx.end(), rng);
  return m;
}

// Writes the quantized checkpoint to `qdir` and the float32 one with its dequantized weights to `fdir`.
void write_pair(const std::filesystem::path& qdir, const std::filesystem::path& fdir, const QuantConfig& q,
                const std::vector<std::string>& keep_float = {}) {
  const json config = tiny_config();
  std::mt19937 rng(17);
  std::vector<Tensor> hold;
  std::vector<TensorToWrite> qt, ft;
  for (const auto& s : tensor_specs(config)) {
    const bool keep = std::find(keep_float.begin(), keep_float.end(), s.name) != keep_float.end();
    if (!is_linear(s.name) || keep) {
      hold.push_back(random_weight(s.name, s.shape, DType::F32, 5));
      qt.push_back({s.name, DType::F32, s.shape, hold.back().data});
      ft.push_back(qt.back());
      continue;
    }
    const QuantMatrix m = random_quant(s.shape[0], s.shape[1], q, rng);
    const QuantTensors t = pack_quant(m, q);
    const std::string prefix = s.name.substr(0, s.name.size() - 7);
    for (auto [suffix, tensor] : {std::pair{".qweight", t.qweight}, {".qzeros", t.qzeros}, {".scales", t.scales},
                                  {".g_idx", t.g_idx}}) {
      if (tensor.empty()) continue;
      hold.push_back(tensor);
      qt.push_back({prefix + suffix, tensor.dtype, tensor.shape, tensor.data});
    }
    Tensor w = host_tensor(DType::F32, s.shape);
    const std::vector<float> d = m.dequantize();
    std::copy(d.begin(), d.end(), w.ptr<float>());
    hold.push_back(w);
    ft.push_back({s.name, DType::F32, s.shape, w.data});
  }
  json qc = config;
  qc["quantization_config"] = quant_config_json(q);
  test::write_json(qdir / "config.json", qc);
  write_checkpoint(qdir.string(), qt, size_t(1) << 40);
  test::write_json(fdir / "config.json", config);
  write_checkpoint(fdir.string(), ft, size_t(1) << 40);
}

QuantConfig make_config(QuantMethod method, int bits, int64_t group, bool sym, bool desc_act, bool v1) {
  QuantConfig q;
  q.method = method, q.bits = bits, q.group_size = group, q.sym = sym, q.desc_act = desc_act, q.zeros_minus_one = v1;
  return q;
}

class QuantModel : public ::testing::TestWithParam<QuantConfig> {};

TEST_P(QuantModel, MatchesFloatModelWithDequantizedWeights) {
  if (!test::device_available()) GTEST_SKIP() << "no CUDA GPU";
  const QuantConfig q = GetParam();
  test::TempDir qdir, fdir;
  write_pair(qdir.path(), fdir.path(), q);
  auto backend = test::make_test_backend(2);
  LoadOptions qo, fo;
  qo.model_dir = qdir.str();
  fo.model_dir = fdir.str();
  auto qm = load_model(qo, *backend);
  auto fm = load_model(fo, *backend);
  // Bytes a decode step streams: codes + fp16 scales + u8 zeros for the quantized layers.
  size_t want = 0;
  for (const auto& s : tensor_specs(tiny_config())) {
    if (s.shape.size() != 2 || s.name == "model.embed_tokens.weight") continue;
    if (!is_linear(s.name)) {
      want += size_t(s.shape[0] * s.shape[1]) * 4;
      continue;
    }
    const int64_t groups = q.group_size == -1 ? 1 : s.shape[1] / q.group_size;
    want += size_t(s.shape[0] * s.shape[1] * q.bits / 8 + s.shape[0] * groups * 3);
  }
  EXPECT_EQ(qm->weights().matrix_bytes, want);

  const std::vector<int32_t> prompt{5, 17, 33, 2, 80, 41, 9, 63, 12, 70, 3};
  test::SequenceRunner qs(*qm, 40), fs(*fm, 40);
  // GPU activations are 16-bit for a 16-bit model only; these are float32 checkpoints.
  auto compare = [&](const std::vector<float>& a, const std::vector<float>& b, const std::string& where) {
    ASSERT_EQ(a.size(), b.size());
    double worst = 0.0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::fabs(a[i] - b[i])));
    EXPECT_LT(worst, 2e-3) << where;
  };
  compare(qs.feed(prompt, true), fs.feed(prompt, true), "prompt");
  for (int32_t t : {7, 44, 90, 1, 56, 23}) compare(qs.feed({t}, false), fs.feed({t}, false), fmt::format("decode {}", t));
}

INSTANTIATE_TEST_SUITE_P(
    Formats, QuantModel,
    ::testing::Values(make_config(QuantMethod::kGptq, 4, 32, true, false, true),
                      make_config(QuantMethod::kGptq, 4, 64, false, true, false),
                      make_config(QuantMethod::kGptq, 4, -1, false, false, true),
                      make_config(QuantMethod::kGptq, 8, 32, true, true, true),
                      make_config(QuantMethod::kGptq, 8, 128, false, false, false),
                      make_config(QuantMethod::kAwq, 4, 32, false, false, false)),
    [](const ::testing::TestParamInfo<QuantConfig>& p) {
      const QuantConfig& q = p.param;
      return fmt::format("{}{}_g{}{}{}{}", q.method == QuantMethod::kGptq ? "gptq" : "awq", q.bits,
                         q.group_size == -1 ? std::string("all") : std::to_string(q.group_size), q.sym ? "" : "_asym",
                         q.desc_act ? "_actorder" : "", q.method == QuantMethod::kGptq ? (q.zeros_minus_one ? "_v1" : "_v2") : "");
    });

TEST(QuantModelLoad, FloatLayerInQuantizedCheckpoint) {
  if (!test::device_available()) GTEST_SKIP() << "no CUDA GPU";
  // AWQ's modules_to_not_convert: a layer stored as .weight stays float.
  const QuantConfig q = make_config(QuantMethod::kAwq, 4, 32, false, false, false);
  test::TempDir qdir, fdir;
  write_pair(qdir.path(), fdir.path(), q, {"model.layers.1.mlp.down_proj.weight"});
  auto backend = test::make_test_backend(1);
  LoadOptions qo, fo;
  qo.model_dir = qdir.str();
  fo.model_dir = fdir.str();
  auto qm = load_model(qo, *backend);
  auto fm = load_model(fo, *backend);
  EXPECT_TRUE(qm->weights().layers[1].down.parts[0].quant.empty());
  EXPECT_FALSE(qm->weights().layers[0].down.parts[0].quant.empty());
  test::SequenceRunner qs(*qm, 20), fs(*fm, 20);
  const auto& a = qs.feed({4, 8, 15, 16, 23, 42}, true);
  const auto& b = fs.feed({4, 8, 15, 16, 23, 42}, true);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 2e-3) << i;
}

TEST(QuantModelLoad, MissingTensorIsNamed) {
  const QuantConfig q = make_config(QuantMethod::kGptq, 4, 32, true, false, true);
  test::TempDir qdir, fdir;
  write_pair(qdir.path(), fdir.path(), q);
  // Rewrite the checkpoint without one layer's qzeros.
  Checkpoint ck = Checkpoint::open(qdir.str());
  std::vector<Tensor> hold;
  std::vector<TensorToWrite> keep;
  for (const auto& n : ck.names()) {
    if (n == "model.layers.1.mlp.up_proj.qzeros") continue;
    hold.push_back(ck.tensor(*ck.find(n)));
    keep.push_back({n, hold.back().dtype, hold.back().shape, hold.back().data});
  }
  test::TempDir broken;
  write_checkpoint(broken.str(), keep, size_t(1) << 40);
  std::filesystem::copy_file(qdir.path() / "config.json", broken.path() / "config.json");
  auto backend = make_cpu_backend(1);
  LoadOptions o;
  o.model_dir = broken.str();
  try {
    load_model(o, *backend);
    FAIL() << "loaded a checkpoint without qzeros";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor model.layers.1.mlp.up_proj.qzeros"), std::string::npos) << e.what();
  }
}

// Split over 2 ranks (each its rows or its whole groups of input columns; a row's single group is
// split too), a quantized model gives the whole model's logits; an act-order checkpoint is refused
// by name (as are groups that straddle two ranks, which this model's sizes cannot show).
TEST(QuantModelLoad, TensorParallelSplitsLikeTheWhole) {
  if (!test::device_available()) GTEST_SKIP() << "no CUDA GPU";
  if (test::on_gpu() && gpu_count() < 2) GTEST_SKIP() << "fewer than 2 GPUs";
  const std::vector<std::pair<QuantConfig, std::string>> cases{
      {make_config(QuantMethod::kGptq, 4, 32, true, false, true), ""},
      {make_config(QuantMethod::kGptq, 4, -1, false, false, true), ""},
      {make_config(QuantMethod::kAwq, 4, 32, false, false, false), ""},
      {make_config(QuantMethod::kGptq, 8, 128, false, false, false), ""},  // o_proj: one group, split
      {make_config(QuantMethod::kGptq, 4, 64, false, true, false), "act-order (desc_act)"}};
  for (const auto& [q, refusal] : cases) {
    SCOPED_TRACE(q.describe());
    test::TempDir qdir, fdir;
    write_pair(qdir.path(), fdir.path(), q);
    LoadOptions o;
    o.model_dir = qdir.str();
    ParallelOptions par;
    par.tensor_parallel_size = 2;
    if (!refusal.empty()) {
      try {
        ModelGroup group(o, APUS_TEST_DEVICE, 2, par);
        ADD_FAILURE() << "split over 2 ranks";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(refusal), std::string::npos) << e.what();
      }
      continue;
    }
    ModelGroup split(o, APUS_TEST_DEVICE, 2, par);
    par.tensor_parallel_size = 1;
    ModelGroup whole(o, APUS_TEST_DEVICE, 2, par);
    const std::vector<int32_t> prompt{5, 17, 33, 2, 80, 41, 9, 63, 12, 70, 3};
    test::SequenceRunner a(split.model(), 40), b(whole.model(), 40);
    const std::vector<float>& la = a.feed(prompt, true);
    const std::vector<float>& lb = b.feed(prompt, true);
    ASSERT_EQ(la.size(), lb.size());
    double worst = 0.0;
    for (size_t i = 0; i < la.size(); ++i) worst = std::max(worst, double(std::fabs(la[i] - lb[i])));
    EXPECT_LT(worst, 2e-3);
    // Each rank streams its share of the quantized bytes.
    EXPECT_LT(split.model().weights().matrix_bytes, whole.model().weights().matrix_bytes);
  }
}

TEST(QuantModelLoad, DummyQuantizedWeights) {
  if (!test::device_available()) GTEST_SKIP() << "no CUDA GPU";
  test::TempDir dir;
  test::write_json(dir.path() / "config.json", tiny_config());
  auto backend = test::make_test_backend(2);
  for (const char* method : {"gptq", "awq"}) {
    LoadOptions o;
    o.model_dir = dir.str();
    o.load_format = "dummy";
    o.dummy_dtype = DType::F32;
    o.dummy_quantization = method;
    auto m = load_model(o, *backend);
    ASSERT_TRUE(m->config().quant.has_value());
    EXPECT_TRUE(m->config().quant->describe().starts_with(std::string(method) + " 4-bit, group 128"))
        << m->config().quant->describe();
    test::SequenceRunner s(*m, 10);
    const auto& logits = s.feed({1, 2, 3}, true);
    double spread = 0.0;
    for (float v : logits) {
      ASSERT_TRUE(std::isfinite(v));
      spread = std::max(spread, double(std::fabs(v)));
    }
    EXPECT_GT(spread, 0.1) << method;
  }
  // As in real GPTQ / AWQ checkpoints, the output layer stays 16-bit (benchmarks compare like with like).
  const auto src = make_dummy_source(DType::BF16, 0, 1, make_config(QuantMethod::kGptq, 4, 128, false, false, true));
  EXPECT_TRUE(src->has("model.layers.0.mlp.down_proj.qweight"));
  EXPECT_FALSE(src->has("lm_head.qweight"));
  EXPECT_FALSE(src->has("transformer.output_layer.qweight"));
  LoadOptions bad;
  bad.model_dir = dir.str();
  bad.dummy_quantization = "gptq";
  EXPECT_THROW(load_model(bad, *backend), Error);
}

}  // namespace
}  // namespace apus
