// Model outputs against the Hugging Face implementation (fixtures from tools/golden/make_golden.py):
// the log-softmax of every prompt position and of every greedy step within 2e-3, and greedy tokens
// equal wherever the reference's top-1 margin exceeds 0.05.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/generate.h"
#include "model/load.h"
#include "sequence_runner.h"
#include "test_util.h"

namespace apus {
namespace {

constexpr double kLogprobTolerance = 2e-3;
constexpr double kMarginForTokens = 0.05;

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(std::string(APUS_SOURCE_DIR) + "/tests/golden"))
    if (e.path().extension() == ".json") names.push_back(e.path().stem().string());
  std::sort(names.begin(), names.end());
  return names;
}

double max_abs_diff(const std::vector<float>& logits, int64_t row, int64_t V, const nlohmann::json& ref) {
  std::vector<float> lp(static_cast<size_t>(V));
  log_softmax(logits.data() + row * V, V, lp.data());
  double worst = 0.0;
  for (int64_t i = 0; i < V; ++i) worst = std::max(worst, std::fabs(double(lp[size_t(i)]) - ref[size_t(i)].get<double>()));
  return worst;
}

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, MatchesTransformers) {
  const auto fx = test::read_json(std::string(APUS_SOURCE_DIR) + "/tests/golden/" + GetParam() + ".json");
  DType dtype;
  ASSERT_TRUE(parse_dtype(fx["dtype"].get<std::string>(), &dtype));
  const uint64_t seed = fx["seed"].get<uint64_t>();

  // Regenerate the checkpoint; every other fixture is written in shards to cover the index path.
  test::TempDir dir;
  std::vector<test::NamedShape> specs;
  for (const auto& t : fx["tensors"]) specs.push_back({t["name"], t["shape"].get<std::vector<int64_t>>()});
  const bool sharded = std::hash<std::string>{}(GetParam()) % 2 == 0;
  auto values = test::write_random_checkpoint(dir.path(), fx["config"], specs, dtype, seed,
                                              sharded ? 64 * 1024 : size_t(1) << 40);
  for (size_t i = 0; i < values.size(); ++i) {
    double sum = 0.0;
    for (int64_t j = 0; j < values[i].numel(); ++j) {
      const uint16_t* h = values[i].ptr<uint16_t>();
      sum += dtype == DType::F32 ? double(values[i].ptr<float>()[j])
             : dtype == DType::BF16 ? double(bf16_to_f32(h[j]))
                                    : double(f16_to_f32(h[j]));
    }
    const double want = fx["tensors"][i]["sum"].get<double>();
    ASSERT_NEAR(sum, want, 1e-6 * (1.0 + std::fabs(want))) << "weights differ from tools/golden/weights.py: " << specs[i].name;
  }

  auto backend = make_cpu_backend(2);
  LoadOptions opts;
  opts.model_dir = dir.str();
  auto model = load_model(opts, *backend);
  const int64_t V = model->config().vocab_size;
  const auto prompt = fx["prompt"].get<std::vector<int32_t>>();
  const auto generated = fx["generated"].get<std::vector<int32_t>>();
  const auto& margins = fx["step_margins"];

  // Prompt positions, then teacher-forced steps along the reference continuation.
  {
    test::SequenceRunner seq(*model, int(prompt.size() + generated.size()));
    const auto& logits = seq.feed(prompt, true);
    for (size_t p = 0; p < prompt.size(); ++p)
      EXPECT_LT(max_abs_diff(logits, int64_t(p), V, fx["prompt_logprobs"][p]), kLogprobTolerance) << "prompt position " << p;
    const std::vector<float>* step = &logits;
    int64_t row = int64_t(prompt.size()) - 1;
    for (size_t s = 0; s < generated.size(); ++s) {
      EXPECT_LT(max_abs_diff(*step, row, V, fx["step_logprobs"][s]), kLogprobTolerance) << "step " << s;
      if (margins[s].get<double>() > kMarginForTokens) {
        EXPECT_EQ(argmax(step->data() + row * V, V), generated[s]) << "step " << s;
      }
      step = &seq.feed({generated[s]}, false);
      row = 0;
    }
  }

  // Free-running greedy generation (whole prompt, then chunked prefill) agrees until the reference
  // first becomes uncertain. Dynamic NTK rope depends on the step boundaries, so it is not chunked.
  size_t sure = 0;
  while (sure < generated.size() && margins[sure].get<double>() > kMarginForTokens) ++sure;
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  greedy.max_tokens = int(generated.size());
  greedy.ignore_eos = true;
  const bool dynamic = model->config().rope_scaling.type == "dynamic";
  for (int chunk : {0, 5}) {
    if (chunk && dynamic) continue;
    GenerateResult r = generate(*model, prompt, greedy, chunk);
    ASSERT_EQ(r.token_ids.size(), generated.size());
    for (size_t s = 0; s <= std::min(sure, generated.size() - 1); ++s)
      EXPECT_EQ(r.token_ids[s], generated[s]) << "chunk " << chunk << " step " << s;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Golden, ::testing::ValuesIn(fixture_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
}  // namespace apus
