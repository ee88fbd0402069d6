// apus export --quant_bits (src/quant/quantize_model.h) on a tiny Qwen2-shaped checkpoint with a
// real tokenizer (Llama 2's: its 32,000-token vocabulary keeps the checkpoint small and the suite
// quick under the sanitizers): GPTQ's per-layer reconstruction error below RTN's on the same calibration
// tokens, the written GPTQ checkpoint (tensors, config, side files), the command line and its errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <regex>
#include <sstream>

#include "core/error.h"
#include "model/load.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "quant/awq.h"
#include "quant/calibration.h"
#include "quant/gptq_format.h"
#include "quant/quant_config.h"
#include "quant/quantize_model.h"
#include "sequence_runner.h"
#include "test_device.h"
#include "test_util.h"
#include "text/tokenizer/tokenizer.h"

namespace apus {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int64_t kVocab = 32000, kHidden = 128, kInter = 256, kHeads = 4, kKvHeads = 2, kHeadDim = 32;
constexpr int kLayers = 2;

const fs::path kTokenizer = fs::path(APUS_SOURCE_DIR) / "third_party/tokenizers/llama2";

// Embeddings with the structure real ones have: a few shared directions, a little noise, and
// features of very different scales (outlier channels); so the activations every linear layer sees
// are correlated, as in a trained model (with i.i.d. random embeddings H is nearly diagonal and
// GPTQ has little to compensate).
Tensor structured_embedding() {
  constexpr int64_t kRank = 8;
  const Tensor a = random_weight("mix.a", {kVocab, kRank}, DType::F32, 1);
  const Tensor b = random_weight("mix.b", {kRank, kHidden}, DType::F32, 1);
  const Tensor noise = random_weight("mix.noise", {kVocab, kHidden}, DType::F32, 1);
  std::vector<float> gain(kHidden);
  for (int64_t h = 0; h < kHidden; ++h) gain[size_t(h)] = std::exp(2.0f * b.ptr<float>()[h] * float(std::sqrt(kRank)));
  Tensor e = host_tensor(DType::BF16, {kVocab, kHidden});
  for (int64_t v = 0; v < kVocab; ++v)
    for (int64_t h = 0; h < kHidden; ++h) {
      float s = 0.02f * noise.ptr<float>()[v * kHidden + h];
      for (int64_t k = 0; k < kRank; ++k) s += a.ptr<float>()[v * kRank + k] * b.ptr<float>()[k * kHidden + h];
      e.ptr<uint16_t>()[v * kHidden + h] = f32_to_bf16(s * gain[size_t(h)]);
    }
  return e;
}

void write_model(const fs::path& dir, int64_t kv_heads = kKvHeads) {
  fs::create_directories(dir);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(kTokenizer / f, dir / f);
  test::write_json(dir / "config.json",
                   {{"architectures", {"Qwen2ForCausalLM"}}, {"model_type", "qwen2"}, {"hidden_size", kHidden},
                    {"intermediate_size", kInter}, {"num_hidden_layers", kLayers}, {"num_attention_heads", kHeads},
                    {"num_key_value_heads", kv_heads}, {"vocab_size", kVocab}, {"max_position_embeddings", 4096},
                    {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0}, {"hidden_act", "silu"},
                    {"tie_word_embeddings", true}, {"bos_token_id", 1}, {"eos_token_id", 2},
                    {"torch_dtype", "bfloat16"}});
  test::write_json(dir / "generation_config.json", {{"bos_token_id", 1}, {"eos_token_id", 2}});
  std::vector<test::NamedShape> shapes;
  for (int i = 0; i < kLayers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    shapes.push_back({p + "input_layernorm.weight", {kHidden}});
    for (const auto& [name, rows] : {std::pair<const char*, int64_t>{"q_proj", kHeads * kHeadDim},
                                     {"k_proj", kv_heads * kHeadDim}, {"v_proj", kv_heads * kHeadDim}}) {
      shapes.push_back({p + "self_attn." + name + ".weight", {rows, kHidden}});
      shapes.push_back({p + "self_attn." + name + ".bias", {rows}});
    }
    shapes.push_back({p + "self_attn.o_proj.weight", {kHidden, kHeads * kHeadDim}});
    shapes.push_back({p + "post_attention_layernorm.weight", {kHidden}});
    shapes.push_back({p + "mlp.gate_proj.weight", {kInter, kHidden}});
    shapes.push_back({p + "mlp.up_proj.weight", {kInter, kHidden}});
    shapes.push_back({p + "mlp.down_proj.weight", {kHidden, kInter}});
  }
  shapes.push_back({"model.norm.weight", {kHidden}});
  std::vector<Tensor> values;
  std::vector<TensorToWrite> tensors;
  values.push_back(structured_embedding());
  tensors.push_back({"model.embed_tokens.weight", DType::BF16, {kVocab, kHidden}, values.back().data});
  for (const auto& s : shapes) {
    values.push_back(random_weight(s.name, s.shape, DType::BF16, 5));
    tensors.push_back({s.name, DType::BF16, s.shape, values.back().data});
  }
  write_checkpoint(dir.string(), tensors, size_t(1) << 40);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class GptqExport : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(kTokenizer / "tokenizer.json")) return;
    dir_ = new test::TempDir();
    write_model(dir_->path() / "model");
    write_model(dir_->path() / "model_mha", kHeads);  // one KV head per head: AWQ scales o_proj too
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (dir_ == nullptr) GTEST_SKIP() << "no tokenizer files (scripts/fetch-tokenizers.sh)";
  }
  static std::string model() { return (dir_->path() / "model").string(); }
  static fs::path tmp() { return dir_->path(); }
  static QuantizeOptions options(const std::string& out) {
    QuantizeOptions o;
    o.model_dir = model();
    o.output_dir = (tmp() / out).string();
    o.grid.group_size = 32;
    o.seqlen = 256;
    o.n_samples = 2;
    o.num_threads = 2;
    return o;
  }
  static test::TempDir* dir_;
};
test::TempDir* GptqExport::dir_ = nullptr;

TEST_F(GptqExport, GptqBelowRtnPerLayer) {
  std::ostringstream log;
  const QuantizeResult r = quantize_model(options("gptq"), log);
  EXPECT_EQ(r.calibration_tokens, 512) << log.str();
  ASSERT_EQ(r.errors.size(), size_t(7 * kLayers));
  double g = 0.0, rt = 0.0;
  for (const LinearError& e : r.errors) {
    EXPECT_GT(e.quantized, 0.0) << e.layer << " " << e.module;
    EXPECT_LT(e.quantized, e.rtn) << e.layer << " " << e.module;
    g += e.quantized, rt += e.rtn;
  }
  EXPECT_LT(g, 0.7 * rt) << log.str();
  std::printf("%s", log.str().c_str());
}

// The checkpoint has the AutoGPTQ layout and unpacks to the matrices whose errors were measured.
TEST_F(GptqExport, WritesGptqCheckpoint) {
  std::ostringstream log;
  QuantizeOptions o = options("act");
  o.grid.desc_act = true;
  o.grid.sym = true;
  o.max_shard_bytes = 4 << 20;  // the embedding alone is 8 MB: two shards and an index
  quantize_model(o, log);
  const fs::path out = o.output_dir;
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors.index.json"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  const json cfg = test::read_json(out / "config.json");
  const json& q = cfg["quantization_config"];
  EXPECT_EQ(q["quant_method"], "gptq");
  EXPECT_EQ(q["bits"], 4);
  EXPECT_EQ(q["group_size"], 32);
  EXPECT_EQ(q["desc_act"], true);
  EXPECT_EQ(q["sym"], true);
  EXPECT_EQ(q["checkpoint_format"], "gptq");
  EXPECT_EQ(cfg["hidden_size"], kHidden);
  const std::optional<QuantConfig> qc = parse_quant_config(cfg, "config.json");
  ASSERT_TRUE(qc);
  const Checkpoint ck = Checkpoint::open(out.string());
  const Checkpoint base = Checkpoint::open(model());
  EXPECT_TRUE(ck.find("model.embed_tokens.weight"));
  EXPECT_TRUE(ck.find("model.layers.1.self_attn.k_proj.bias"));
  EXPECT_FALSE(ck.find("model.layers.0.self_attn.q_proj.weight"));
  const std::string p = "model.layers.1.mlp.down_proj";
  const TensorEntry* qw = ck.find(p + ".qweight");
  ASSERT_TRUE(qw);
  EXPECT_EQ(qw->dtype, DType::I32);
  EXPECT_EQ(qw->shape, std::vector<int64_t>({kInter / 8, kHidden}));
  EXPECT_EQ(ck.find(p + ".qzeros")->shape, std::vector<int64_t>({kInter / 32, kHidden / 8}));
  EXPECT_EQ(ck.find(p + ".scales")->dtype, DType::F16);
  EXPECT_EQ(ck.find(p + ".g_idx")->shape, std::vector<int64_t>({kInter}));
  const QuantTensors t{ck.tensor(*qw), ck.tensor(*ck.find(p + ".qzeros")), ck.tensor(*ck.find(p + ".scales")),
                       ck.tensor(*ck.find(p + ".g_idx"))};
  const QuantMatrix m = unpack_quant(t, *qc, kHidden, kInter, p, out.string());
  bool permuted = false;
  for (int64_t i = 0; i < kInter; ++i) permuted |= m.g_idx[size_t(i)] != int32_t(i / 32);
  EXPECT_TRUE(permuted);  // act-order
  for (uint8_t z : m.zeros) EXPECT_EQ(z, 8);  // symmetric 4-bit
  // Close to the float weights it came from (4 bits: within a step of each group's scale).
  const Tensor w = base.tensor(*base.find(p + ".weight"));
  double err = 0.0, norm = 0.0;
  for (int64_t o2 = 0; o2 < kHidden; ++o2)
    for (int64_t i = 0; i < kInter; ++i) {
      const double d = get_float(w, o2 * kInter + i) - m.weight(o2, i);
      err += d * d, norm += double(get_float(w, o2 * kInter + i)) * get_float(w, o2 * kInter + i);
    }
  EXPECT_LT(std::sqrt(err / norm), 0.2);
}

// The float32 checkpoint of an exported checkpoint's dequantized weights, unpacked from its files by
// the format code (not the exporter's own matrices).
void write_dequantized(const fs::path& qdir, const fs::path& fdir) {
  json cfg = test::read_json(qdir / "config.json");
  const std::optional<QuantConfig> qc = parse_quant_config(cfg, "config.json");
  ASSERT_TRUE(qc);
  cfg.erase("quantization_config");
  fs::create_directories(fdir);
  test::write_json(fdir / "config.json", cfg);
  const Checkpoint ck = Checkpoint::open(qdir.string());
  std::vector<Tensor> hold;
  std::vector<TensorToWrite> out;
  for (const std::string& name : ck.names()) {
    const TensorEntry& e = *ck.find(name);
    if (name.ends_with(".qzeros") || name.ends_with(".scales") || name.ends_with(".g_idx")) continue;
    if (!name.ends_with(".qweight")) {
      out.push_back({name, e.dtype, e.shape, e.data});
      continue;
    }
    const std::string p = name.substr(0, name.size() - 8);
    const TensorEntry* g_idx = ck.find(p + ".g_idx");  // GPTQ only
    const QuantTensors t{ck.tensor(e), ck.tensor(*ck.find(p + ".qzeros")), ck.tensor(*ck.find(p + ".scales")),
                         g_idx ? ck.tensor(*g_idx) : Tensor()};
    const bool awq = qc->method == QuantMethod::kAwq;  // qweight [in, out / 8], else [in / 8, out]
    const int64_t rows = t.scales.shape[1], cols = awq ? t.qweight.shape[0] : t.g_idx.shape[0];
    const std::vector<float> w = unpack_quant(t, *qc, rows, cols, p, qdir.string()).dequantize();
    hold.push_back(host_tensor(DType::F32, {rows, cols}));
    std::copy(w.begin(), w.end(), hold.back().ptr<float>());
    out.push_back({p + ".weight", DType::F32, {rows, cols}, hold.back().data});
  }
  write_checkpoint(fdir.string(), out, size_t(1) << 40);
}

// The exported checkpoint reloads (int4 codes, the quantized kernels) and gives the logits of the
// same model with its dequantized weights in float32, for a prompt and decode steps.
TEST_F(GptqExport, ReloadsLikeDequantizedWeights) {
  struct Variant {
    const char* name;
    int bits, group;
    bool sym, act;
  };
  for (const Variant& v : {Variant{"g32_asym", 4, 32, false, false}, Variant{"g64_sym_act", 4, 64, true, true},
                           Variant{"int8_row", 8, -1, false, false}}) {
    QuantizeOptions o = options(std::string("reload_") + v.name);
    o.grid.bits = v.bits;
    o.grid.desc_act = v.act;
    o.grid.sym = v.sym;
    o.grid.group_size = v.group;
    std::ostringstream log;
    quantize_model(o, log);
    const fs::path fdir = tmp() / (std::string("reload_f32_") + v.name);
    write_dequantized(o.output_dir, fdir);
    auto backend = test::make_test_backend(2);
    LoadOptions qo, fo;
    qo.model_dir = o.output_dir;
    fo.model_dir = fdir.string();
    auto qm = load_model(qo, *backend);
    auto fm = load_model(fo, *backend);
    ASSERT_TRUE(qm->config().quant);
    ASSERT_FALSE(qm->weights().layers[0].qkv.parts[0].quant.empty());
    const auto tok = Tokenizer::load(o.output_dir);
    const std::vector<int32_t> prompt = tok->encode("杭州的西湖 is a lake; 1 + 2 = 3.", false);
    test::SequenceRunner qs(*qm, 64), fs2(*fm, 64);
    double worst = 0.0, scale = 0.0;
    auto compare = [&](const std::vector<float>& a, const std::vector<float>& b) {
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i) {
        worst = std::max(worst, double(std::fabs(a[i] - b[i])));
        scale = std::max(scale, double(std::fabs(b[i])));
      }
    };
    compare(qs.feed(prompt, true), fs2.feed(prompt, true));
    for (int32_t t : {2, 100, 9707, 31000}) compare(qs.feed({t}, false), fs2.feed({t}, false));
    std::printf("%s: max |logit difference| %.3g (logits up to %.3g)\n", v.name, worst, scale);
    EXPECT_LT(worst, 1e-4 * scale) << v.name;
  }
}

// Logits of a prompt and a few decode steps of the model in `dir`.
std::vector<float> logits_of(const std::string& dir) {
  auto backend = test::make_test_backend(2);
  LoadOptions lo;
  lo.model_dir = dir;
  auto m = load_model(lo, *backend);
  const auto tok = Tokenizer::load(kTokenizer.string());
  test::SequenceRunner r(*m, 64);
  std::vector<float> all = r.feed(tok->encode("杭州的西湖 is a lake; 1 + 2 = 3. The quick brown fox", false), true);
  for (int32_t t : {2, 100, 9707, 31000}) {
    const std::vector<float> l = r.feed({t}, false);
    all.insert(all.end(), l.begin(), l.end());
  }
  return all;
}

double distance(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0.0;
  for (size_t i = 0; i < a.size(); ++i) d += double(a[i] - b[i]) * double(a[i] - b[i]);
  return std::sqrt(d);
}

// AWQ (scales folded into the norms and the previous layers' rows, clipping, RTN): its matrices
// reproduce their outputs better than RTN on the same tokens, the AutoAWQ GEMM checkpoint reloads
// like its dequantized weights, and the whole model stays closer to the float model than RTN's
// does (which a wrong fold of the scales would ruin). With GQA (o_proj not scaled) and without.
TEST_F(GptqExport, AwqBelowRtnAndReloads) {
  for (const char* variant : {"model", "model_mha"}) {
    QuantizeOptions o = options(std::string("awq_") + variant);
    o.model_dir = (tmp() / variant).string();
    o.method = "awq";
    std::ostringstream log;
    const QuantizeResult r = quantize_model(o, log);
    ASSERT_EQ(r.errors.size(), size_t(7 * kLayers));
    double a = 0.0, rt = 0.0;
    for (const LinearError& e : r.errors) {
      EXPECT_GT(e.quantized, 0.0) << e.layer << " " << e.module;
      EXPECT_LE(e.quantized, 1.02 * e.rtn) << e.layer << " " << e.module << "\n" << log.str();
      a += e.quantized, rt += e.rtn;
    }
    EXPECT_LT(a, 0.95 * rt) << log.str();
    std::printf("%s: %s", variant, log.str().c_str());
    if (std::string(variant) == "model_mha")
      EXPECT_NE(log.str().find("self_attn.o_proj   scales"), std::string::npos) << log.str();
    else
      EXPECT_EQ(log.str().find("self_attn.o_proj   scales"), std::string::npos) << log.str();

    const fs::path out = o.output_dir;
    const json cfg = test::read_json(out / "config.json");
    const json& q = cfg["quantization_config"];
    EXPECT_EQ(q["quant_method"], "awq");
    EXPECT_EQ(q["version"], "gemm");
    EXPECT_EQ(q["zero_point"], true);
    EXPECT_EQ(q["group_size"], 32);
    const Checkpoint ck = Checkpoint::open(out.string());
    const std::string p = "model.layers.1.mlp.down_proj";
    ASSERT_TRUE(ck.find(p + ".qweight"));
    EXPECT_EQ(ck.find(p + ".qweight")->shape, std::vector<int64_t>({kInter, kHidden / 8}));
    EXPECT_EQ(ck.find(p + ".qzeros")->shape, std::vector<int64_t>({kInter / 32, kHidden / 8}));
    EXPECT_EQ(ck.find(p + ".scales")->shape, std::vector<int64_t>({kInter / 32, kHidden}));
    EXPECT_FALSE(ck.find(p + ".g_idx"));
    const Checkpoint base = Checkpoint::open(o.model_dir);
    int folded = 0;  // norms that took scales (where some alpha beat s = 1)
    for (int i = 0; i < kLayers; ++i)
      for (const char* n : {"input_layernorm.weight", "post_attention_layernorm.weight"}) {
        const std::string norm = fmt::format("model.layers.{}.{}", i, n);
        EXPECT_EQ(ck.find(norm)->dtype, DType::BF16);
        folded += std::memcmp(ck.find(norm)->data, base.find(norm)->data, size_t(kHidden) * 2) != 0;
      }
    EXPECT_GT(folded, 0);

    const fs::path fdir = tmp() / (std::string("awq_f32_") + variant);
    write_dequantized(out, fdir);
    const std::vector<float> ql = logits_of(out.string()), fl = logits_of(fdir.string());
    double worst = 0.0, scale = 0.0;
    for (size_t i = 0; i < ql.size(); ++i)
      worst = std::max(worst, double(std::fabs(ql[i] - fl[i]))), scale = std::max(scale, double(std::fabs(fl[i])));
    EXPECT_LT(worst, 1e-4 * scale) << variant;

    QuantizeOptions ro = options(std::string("rtn_") + variant);
    ro.model_dir = o.model_dir;
    ro.method = "rtn";
    quantize_model(ro, log);
    const std::vector<float> orig = logits_of(o.model_dir);
    const double d_awq = distance(ql, orig), d_rtn = distance(logits_of(ro.output_dir), orig);
    std::printf("%s: logits' distance to the float model: awq %.4g, rtn %.4g\n", variant, d_awq, d_rtn);
    EXPECT_LT(d_awq, 1.25 * d_rtn) << variant;  // on a random model: comparable (the fold test above is the exact check)
  }
}

// Folding AWQ scales (here random, from 0.5 to 2) into a float layer leaves what the model computes
// unchanged: norms, v_proj's and up_proj's rows and biases take 1/s where their consumers' columns
// take s. With GQA (o_proj not folded) and without.
TEST_F(GptqExport, AwqScalesFoldWithoutChangingTheModel) {
  using Slot = DecoderModel::LinearSlot;
  for (const char* variant : {"model", "model_mha"}) {
    auto backend = make_cpu_backend(2);
    LoadOptions lo;
    lo.model_dir = (tmp() / variant).string();
    auto m = load_model(lo, *backend);
    const bool mha = m->config().q_size() == m->config().kv_size();
    const auto tok = Tokenizer::load(kTokenizer.string());
    const std::vector<int32_t> prompt = tok->encode("杭州的西湖 is a lake; 1 + 2 = 3.", false);
    const std::vector<float> before = test::SequenceRunner(*m, 64).feed(prompt, true);
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> log2s(-1.0f, 1.0f);
    for (int i = 0; i < kLayers; ++i) {
      LayerWeights& L = m->layer_weights(i);
      const std::pair<Slot, Linear*> lins[] = {{Slot::kQkv, &L.qkv}, {Slot::kO, &L.o}, {Slot::kGateUp, &L.gate_up},
                                               {Slot::kDown, &L.down}};
      LayerFloats w;
      for (const auto& [slot, lin] : lins)
        for (const LinearPart& part : lin->parts) {
          std::vector<float> f(size_t(part.weight.numel()));
          for (size_t k = 0; k < f.size(); ++k) f[k] = get_float(part.weight, int64_t(k));
          w[slot].push_back(std::move(f));
        }
      bool bias = false;
      for (const auto& [slot, lin] : lins) {
        if (slot == Slot::kO && !mha) continue;
        std::vector<float> s(size_t(lin->in_features));
        for (float& v : s) v = std::exp2(log2s(rng));
        bias |= fold_awq_scales(L, slot, s, w) && (slot == Slot::kO);
      }
      EXPECT_EQ(bias, mha);  // Qwen2's v_proj has a bias: folded only where o_proj is
      for (const auto& [slot, lin] : lins) {
        for (size_t p = 0; p < lin->parts.size(); ++p) {
          Tensor& t = lin->parts[p].weight;
          Tensor f = host_tensor(DType::F32, t.shape);
          std::copy(w[slot][p].begin(), w[slot][p].end(), f.ptr<float>());
          t = f;
        }
        *lin = backend->prepare_linear(std::move(*lin));
      }
    }
    const std::vector<float> after = test::SequenceRunner(*m, 64).feed(prompt, true);
    double worst = 0.0, scale = 0.0;
    for (size_t k = 0; k < after.size(); ++k)
      worst = std::max(worst, double(std::fabs(after[k] - before[k]))), scale = std::max(scale, double(std::fabs(before[k])));
    std::printf("%s: max |logit difference| after folding %.3g (logits up to %.3g)\n", variant, worst, scale);
    EXPECT_LT(worst, 1e-4 * scale) << variant;
  }
}

TEST_F(GptqExport, CommandLine) {
  const fs::path out = tmp() / "cli";
  const auto r = test::run_apus(fmt::format("export --model {} --quant_bits 4 --group_size 64 --quant_method rtn "
                                            "--output_dir {} --threads 2",
                                            model(), out.string()));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("quantized"), std::string::npos) << r.out;
  EXPECT_EQ(test::read_json(out / "config.json")["quantization_config"]["group_size"], 64);
  // A calibration file, GPTQ, the error table.
  const fs::path data = tmp() / "calib.jsonl";
  std::ofstream(data) << R"({"text": "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。"})" << "\n\n"
                      << R"({"query": "What is 2 + 2?", "response": "4", "history": [["hi", "hello"]]})" << "\n";
  const auto g = test::run_apus(fmt::format("export --model {} --quant_bits 4 --group_size 32 --dataset {} "
                                            "--output_dir {} --threads 2",
                                            model(), data.string(), (tmp() / "cli2").string()));
  ASSERT_EQ(g.status, 0) << g.out;
  EXPECT_TRUE(std::regex_search(g.out, std::regex(R"(layer +1 mlp.down_proj .* gptq [0-9.]+ +rtn [0-9.]+)"))) << g.out;
  EXPECT_NE(g.out.find("calibration: 1 samples"), std::string::npos) << g.out;
  // AWQ, into the default directory <model>-awq-int4.
  const auto a = test::run_apus(fmt::format("export --model {} --quant_bits 4 --quant_method awq --group_size 32 "
                                            "--dataset {} --threads 2",
                                            model(), data.string()));
  ASSERT_EQ(a.status, 0) << a.out;
  EXPECT_TRUE(std::regex_search(a.out, std::regex(R"(layer +1 mlp.down_proj .* awq [0-9.]+ +rtn [0-9.]+)"))) << a.out;
  EXPECT_EQ(test::read_json(fs::path(model() + "-awq-int4") / "config.json")["quantization_config"]["quant_method"],
            "awq");
}

TEST_F(GptqExport, ClearErrors) {
  QuantizeOptions o = options("bad");
  std::ostringstream log;
  o.method = "awq";
  o.grid.bits = 8;
  EXPECT_NE(error_of([&] { quantize_model(o, log); }).find("awq writes AutoAWQ's GEMM layout: 4 bits"), std::string::npos);
  o.grid.bits = 4;
  o.grid.desc_act = true;
  EXPECT_NE(error_of([&] { quantize_model(o, log); }).find("--desc_act needs --quant_method gptq"), std::string::npos);
  o = options("bad");
  o.method = "spqr";
  EXPECT_NE(error_of([&] { quantize_model(o, log); }).find("supported: gptq, awq, rtn"), std::string::npos);
  o = options("bad");
  o.grid.group_size = 48;
  EXPECT_NE(error_of([&] { quantize_model(o, log); }).find("group_size 48"), std::string::npos);
  o = options("bad");
  o.grid.group_size = 512;  // larger than the 128 inputs of q_proj
  EXPECT_NE(error_of([&] { quantize_model(o, log); }).find("does not fit group_size 512"), std::string::npos);
  o = options("bad");
  o.output_dir = model();
  EXPECT_NE(error_of([&] { quantize_model(o, log); }).find("is the input directory"), std::string::npos);
  o = options("bad");
  o.dataset = (tmp() / "missing.jsonl").string();
  EXPECT_NE(error_of([&] { quantize_model(o, log); }).find("cannot open"), std::string::npos);
  const fs::path bad = tmp() / "bad.jsonl";
  std::ofstream(bad) << R"({"answer": 1})" << "\n";
  EXPECT_NE(error_of([&] { read_calibration_jsonl(bad.string()); }).find("bad.jsonl:1: a calibration sample needs"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(tmp() / "bad"));  // nothing written
  const auto r = test::run_apus(fmt::format("export --model {} --quant_bits 3 --output_dir {}", model(),
                                            (tmp() / "bad").string()));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("--quant_bits 3 is not supported"), std::string::npos) << r.out;
}

TEST_F(GptqExport, CalibrationWindows) {
  const auto tok = Tokenizer::load(model());
  const std::vector<std::string> texts = builtin_calibration_texts();
  const auto few = calibration_samples(*tok, texts, 4, 100);
  ASSERT_EQ(few.size(), 4u);  // enough text: random windows of exactly seqlen
  for (const auto& s : few) EXPECT_EQ(s.size(), 100u);
  EXPECT_NE(few[0], few[1]);
  EXPECT_EQ(calibration_samples(*tok, texts, 4, 100), few);  // deterministic
  const auto all = calibration_samples(*tok, texts, 1000, 512);  // too little: consecutive windows
  size_t total = 0;
  for (const auto& s : all) total += s.size();
  EXPECT_GT(all.size(), 1u);
  EXPECT_GT(total, 1000u);
  EXPECT_EQ(all[0].size(), 512u);
}

}  // namespace
}  // namespace apus
