// LoRA adapters against PEFT (fixtures from tools/lora/make_lora_golden.py, peft on the GPU
// machine): adapter parsing and its errors, export --merge_lora against PEFT's merge_and_unload,
// unmerged serving against the PEFT model, and a batch mixing the base and two adapters against
// each alone. Built again as test_lora_gpu (label gpu) on the CUDA backend.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "engine/engine.h"
#include "lora/adapter.h"
#include "lora/merge.h"
#include "model/load.h"
#include "parallel/model_group.h"
#include "sample/sampler.h"
#include "sequence_runner.h"
#include "test_device.h"
#include "test_util.h"

namespace apus {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kDir = fs::path(APUS_SOURCE_DIR) / "tests/golden/lora";

// Log-probability tolerance: float32 on the CPU; the GPU computes this float32 model in float32 too.
constexpr double kTol = 2e-3;

// The base checkpoint of the fixtures, regenerated from its seed.
void write_base(const fs::path& dir, const json& patch = json::object()) {
  const json base = test::read_json(kDir / "base.json");
  std::vector<test::NamedShape> specs;
  for (const auto& t : base["tensors"]) specs.push_back({t["name"], t["shape"].get<std::vector<int64_t>>()});
  json config = base["config"];
  config.merge_patch(patch);
  fs::create_directories(dir);
  test::write_random_checkpoint(dir, config, specs, DType::F32, base["seed"].get<uint64_t>());
}

std::string adapter_dir(const std::string& name) { return (kDir / name).string(); }

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

double max_error(const std::vector<float>& logits, int64_t row, int64_t V, const json& ref) {
  std::vector<float> lp(static_cast<size_t>(V));
  log_softmax(logits.data() + row * V, V, lp.data());
  double e = 0;
  for (size_t i = 0; i < size_t(V); ++i) e = std::max(e, std::fabs(double(lp[i]) - ref[i].get<double>()));
  return e;
}

// Teacher-forced prompt and continuation of reference `ref` (unmerged or merged) through `model`
// with adapter `slot`; every position's log-softmax within kTol, greedy tokens where the margin is clear.
void expect_matches(DecoderModel& model, int slot, const json& ref, const std::string& what) {
  const json base = test::read_json(kDir / "base.json");
  const auto prompt = base["prompt"].get<std::vector<int32_t>>();
  const auto generated = ref["generated"].get<std::vector<int32_t>>();
  const int64_t V = model.config().vocab_size;
  test::SequenceRunner seq(model, int(prompt.size() + generated.size()));
  seq.set_lora_slot(slot);
  const std::vector<float>* logits = &seq.feed(prompt, true);
  double worst = 0;
  for (size_t p = 0; p < prompt.size(); ++p) worst = std::max(worst, max_error(*logits, int64_t(p), V, ref["prompt_logprobs"][p]));
  int64_t row = int64_t(prompt.size()) - 1;
  for (size_t s = 0; s < generated.size(); ++s) {
    worst = std::max(worst, max_error(*logits, row, V, ref["step_logprobs"][s]));
    if (ref["step_margins"][s].get<double>() > 0.01) {
      EXPECT_EQ(argmax(logits->data() + row * V, V), generated[s]) << what << " step " << s;
    }
    logits = &seq.feed({generated[s]}, false);
    row = 0;
  }
  EXPECT_LT(worst, kTol) << what;
  std::cout << fmt::format("{}: largest log-probability error {:.3g}\n", what, worst);
}

TEST(LoraAdapter, ReadsPeftFiles) {
  const LoraAdapter a1 = load_lora_adapter(adapter_dir("a1"));
  EXPECT_EQ(a1.modules.size(), 6u);  // 2 layers x q, v, down
  EXPECT_EQ(a1.max_rank, 8);
  EXPECT_FLOAT_EQ(a1.modules.at("model.layers.1.mlp.down_proj").scale, 2.0f);  // 16 / 8
  ASSERT_EQ(a1.saved.count("lm_head.weight"), 1u);
  const LoraAdapter a2 = load_lora_adapter(adapter_dir("a2"));
  EXPECT_EQ(a2.modules.size(), 8u);  // 2 layers x k, o, gate, up
  EXPECT_FLOAT_EQ(a2.modules.at("model.layers.0.self_attn.k_proj").scale, 4.0f);  // rsLoRA: 8 / sqrt(4)
  EXPECT_FLOAT_EQ(a2.modules.at("model.layers.0.mlp.up_proj").scale, 1.0f);      // alpha_pattern: 2 / sqrt(4)
  EXPECT_EQ(a2.target_regex, R"(.*\.(k_proj|o_proj|gate_proj|up_proj))");
}

TEST(LoraAdapter, ClearErrors) {
  test::TempDir tmp;
  const fs::path ad = tmp.path() / "ad";
  fs::create_directories(ad);
  fs::copy_file(kDir / "a2/adapter_model.safetensors", ad / "adapter_model.safetensors");
  json cfg = test::read_json(kDir / "a2/adapter_config.json");
  EXPECT_NE(error_of([&] { load_lora_adapter(ad.string()); }).find("no adapter_config.json"), std::string::npos);

  // A target no llama layer has.
  cfg["target_modules"] = json::array({"k_proj", "o_proj", "gate_proj", "up_proj", "c_attn"});
  test::write_json(ad / "adapter_config.json", cfg);
  const fs::path base = tmp.path() / "base";
  fs::create_directories(base);
  write_base(base);
  const ModelConfig mc = load_model_config(base.string());
  std::string e = error_of([&] { check_lora_adapter(load_lora_adapter(ad.string()), mc); });
  EXPECT_NE(e.find("\"c_attn\" is not a linear layer"), std::string::npos) << e;

  // Weights for a module outside target_modules.
  cfg["target_modules"] = json::array({"k_proj"});
  test::write_json(ad / "adapter_config.json", cfg);
  e = error_of([&] { load_lora_adapter(ad.string()); });
  EXPECT_NE(e.find("is not in target_modules"), std::string::npos) << e;

  // A rank that disagrees with r.
  cfg = test::read_json(kDir / "a2/adapter_config.json");
  cfg["r"] = 8;
  cfg["alpha_pattern"] = json::object();
  test::write_json(ad / "adapter_config.json", cfg);
  e = error_of([&] { load_lora_adapter(ad.string()); });
  EXPECT_NE(e.find("has rank 4, but adapter_config.json says r = 8"), std::string::npos) << e;

  // A base of other shapes: the error names the adapter file and the module.
  const fs::path wide = tmp.path() / "wide";
  fs::create_directories(wide);
  write_base(wide, {{"intermediate_size", 96}});
  e = error_of([&] { check_lora_adapter(load_lora_adapter(adapter_dir("a2")), load_model_config(wide.string())); });
  EXPECT_NE(e.find("a2/adapter_model.safetensors: LoRA for model.layers.0.mlp.gate_proj"), std::string::npos) << e;
  e = error_of([&] { merge_lora({adapter_dir("a2"), wide.string(), (tmp.path() / "out").string()}); });
  EXPECT_NE(e.find("different base model"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(tmp.path() / "out")) << "nothing may be written on error";
  // Without --model, the base is base_model_name_or_path (here a path of the machine that made the fixture).
  e = error_of([&] { merge_lora({adapter_dir("a1"), "", (tmp.path() / "out").string()}); });
  EXPECT_NE(e.find("is not a local directory: pass --model"), std::string::npos) << e;
}

class LoraGolden : public ::testing::TestWithParam<std::string> {};

// export --merge_lora == PEFT's merge_and_unload, and the merged checkpoint runs like PEFT's merged model.
TEST_P(LoraGolden, MergedMatchesPeft) {
  if (!test::device_available()) GTEST_SKIP() << "no CUDA GPU";
  const json fx = test::read_json(kDir / (GetParam() + ".json"));
  test::TempDir tmp;
  write_base(tmp.path() / "base");
  const fs::path out = tmp.path() / "merged";
  // Through the command line, as a user runs it (small shards: the index path too).
  const auto r = test::run_apus(fmt::format("export --ckpt_dir {} --model {} --merge_lora true --output_dir {} "
                                            "--max_shard_size_gib 0.0001",
                                            adapter_dir(GetParam()), (tmp.path() / "base").string(), out.string()));
  ASSERT_EQ(r.status, 0) << r.out;
  ASSERT_TRUE(fs::exists(out / "model.safetensors.index.json"));
  ASSERT_TRUE(fs::exists(out / "config.json"));
  const Checkpoint ck = Checkpoint::open(out.string());
  for (const auto& [name, want] : fx["merged_sums"].items()) {
    const TensorEntry* e = ck.find(name);
    ASSERT_TRUE(e) << name;
    double sum = 0;
    for (size_t i = 0; i < e->nbytes / 4; ++i) sum += double(static_cast<const float*>(e->data)[i]);
    EXPECT_NEAR(sum, want.get<double>(), 1e-4 * (1.0 + std::fabs(want.get<double>()))) << name;
  }
  auto backend = test::make_test_backend(2);
  LoadOptions opts;
  opts.model_dir = out.string();
  auto model = load_model(opts, *backend);
  expect_matches(*model, -1, fx["merged"], GetParam() + " merged");
}

// Unmerged (y = Wx + s B A x): the PEFT model's outputs.
TEST_P(LoraGolden, UnmergedMatchesPeft) {
  if (!test::device_available()) GTEST_SKIP() << "no CUDA GPU";
  const json fx = test::read_json(kDir / (GetParam() + ".json"));
  test::TempDir tmp;
  write_base(tmp.path());
  LoadOptions opts;
  opts.model_dir = tmp.str();
  // Whole, and split over 2 tensor-parallel ranks (each holds its part of A or B: lora_slots.h).
  for (int tp : {1, 2}) {
    if (tp > 1 && test::on_gpu() && gpu_count() < tp) continue;
    ParallelOptions par;
    par.tensor_parallel_size = tp;
    ModelGroup group(opts, APUS_TEST_DEVICE, 2, par);
    DecoderModel& model = group.model();
    model.enable_lora(3, 16);
    model.lora()->load(2, load_lora_adapter(adapter_dir(GetParam())));  // not slot 0: slots are independent
    expect_matches(model, 2, fx["unmerged"], GetParam() + " unmerged" + (tp > 1 ? " (tensor parallel 2)" : ""));
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LoraGolden, ::testing::Values("a1", "a2"));

// One batch mixing the base model and both adapters (several requests each, prefill and decode
// together) gives what each gives alone; prefix caching never shares blocks across adapters.
class LoraServing : public ::testing::TestWithParam<int> {};  // tensor-parallel size

TEST_P(LoraServing, MixedBatchEqualsAlone) {
  if (!test::device_available()) GTEST_SKIP() << "no CUDA GPU";
  if (test::on_gpu() && gpu_count() < GetParam()) GTEST_SKIP() << "fewer than " << GetParam() << " GPUs";
  test::TempDir tmp;
  write_base(tmp.path());
  LoadOptions opts;
  opts.model_dir = tmp.str();
  ParallelOptions par;
  par.tensor_parallel_size = GetParam();
  ModelGroup group(opts, APUS_TEST_DEVICE, 2, par);
  DecoderModel* model = &group.model();
  model->enable_lora(2, 8);
  model->lora()->load(0, load_lora_adapter(adapter_dir("a1")));
  model->lora()->load(1, load_lora_adapter(adapter_dir("a2")));
  const json base = test::read_json(kDir / "base.json");
  const auto prompt = base["prompt"].get<std::vector<int32_t>>();
  EngineConfig ec;
  ec.num_blocks = 128;
  ec.block_size = 4;
  ec.max_model_len = 128;
  auto request = [&](int slot, int variant) {
    Request r;
    r.prompt = prompt;
    r.prompt[0] = int32_t(3 + variant);
    r.params.temperature = 0.0f;
    r.params.max_tokens = 16;
    r.params.ignore_eos = true;
    r.params.logprobs = 0;
    r.lora = {slot, uint64_t(slot + 10), nullptr};
    return r;
  };
  // Alone: one request at a time, on a fresh engine each (no prefix cache between them).
  std::map<std::pair<int, int>, SeqOutput> alone;
  for (int slot : {-1, 0, 1})
    for (int variant : {0, 1}) {
      Engine e(*model, ec);
      alone[{slot, variant}] = run_to_completion(e, {request(slot, variant)})[0][0];
    }
  // Together, in one engine (the same prompts: the prefix cache is exercised across adapters).
  Engine e(*model, ec);
  std::vector<Request> all;
  std::vector<std::pair<int, int>> keys;
  for (int variant : {0, 1})
    for (int slot : {1, -1, 0}) all.push_back(request(slot, variant)), keys.push_back({slot, variant});
  const auto together = run_to_completion(e, all);
  for (size_t i = 0; i < keys.size(); ++i) {
    const SeqOutput& a = alone[keys[i]];
    const SeqOutput& t = together[i][0];
    EXPECT_EQ(t.new_tokens, a.new_tokens) << "slot " << keys[i].first << " variant " << keys[i].second;
    ASSERT_EQ(t.new_token_logprobs.size(), a.new_token_logprobs.size());
    for (size_t j = 0; j < a.new_token_logprobs.size(); ++j)
      EXPECT_NEAR(t.new_token_logprobs[j], a.new_token_logprobs[j], 1e-4) << "slot " << keys[i].first << " step " << j;
  }
  // The adapters' greedy continuations are PEFT's (variant 0 is the fixture prompt but for its first token,
  // so compare the base-prompt runs instead).
  for (const auto& [slot, name] : std::vector<std::pair<int, std::string>>{{0, "a1"}, {1, "a2"}}) {
    Engine one(*model, ec);
    Request r = request(slot, 0);
    r.prompt = prompt;
    const auto out = run_to_completion(one, {r})[0][0];
    const json fx = test::read_json(kDir / (name + ".json"));
    const auto want = fx["unmerged"]["generated"].get<std::vector<int32_t>>();
    for (size_t s = 0; s < want.size() && fx["unmerged"]["step_margins"][s].get<double>() > 0.01; ++s) {
      EXPECT_EQ(out.new_tokens[s], want[s]) << name << " step " << s;
    }
  }
  // Identical prompts under three adapters: no block of one is reused by another. Each prompt has
  // 2 full blocks (12 tokens, minus the last): 6 requests over 2 variants x 3 adapters hit nothing.
  EXPECT_EQ(e.stats().prefix_hit_blocks, 0u);
  // A second identical request under one adapter does hit.
  run_to_completion(e, {request(0, 0)});
  EXPECT_GT(e.stats().prefix_hit_blocks, 0u);
  // Unloading repeats on every rank too: slot 0 cleared serves the base model's tokens.
  model->lora()->clear(0);
  Engine after(*model, ec);
  const auto cleared = run_to_completion(after, {request(0, 0)})[0][0].new_tokens;
  EXPECT_EQ(cleared, (alone[{-1, 0}].new_tokens));
}

INSTANTIATE_TEST_SUITE_P(TensorParallel, LoraServing, ::testing::Values(1, 2));

}  // namespace
}  // namespace apus
