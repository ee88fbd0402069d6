// The apus binary end to end: `generate --json` output shape and errors a user sees.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdio>

#include "engine/generate.h"
#include "model/load.h"
#include "test_util.h"

namespace apus {
namespace {


void write_fixture_model(const test::TempDir& dir) { test::write_fixture_model(dir.path(), "qwen2_tied_bf16"); }

TEST(Cli, GenerateJsonMatchesLibrary) {
  test::TempDir dir;
  write_fixture_model(dir);
  test::Exec r = test::run_apus("generate --model " + dir.str() +
                   " --prompt-ids 5,6,7,8 --max-tokens 6 --temperature 0 --logprobs 3 --json --threads 2");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["token_ids"].size(), 6u);
  EXPECT_EQ(j["finish_reason"], "length");
  ASSERT_EQ(j["logprobs"].size(), 6u);
  ASSERT_EQ(j["logprobs"][0].size(), 3u);
  EXPECT_EQ(j["logprobs"][0][0][0], j["token_ids"][0]);  // greedy picks the top logprob
  EXPECT_GE(double(j["logprobs"][0][0][1]), double(j["logprobs"][0][1][1]));

  auto backend = make_cpu_backend(1);
  LoadOptions o;
  o.model_dir = dir.str();
  auto model = load_model(o, *backend);
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_tokens = 6;
  EXPECT_EQ(j["token_ids"], nlohmann::json(generate(*model, {5, 6, 7, 8}, p).token_ids));
}

TEST(Cli, SeededSamplingIsReproducibleAndUnderscoresWork) {
  test::TempDir dir;
  write_fixture_model(dir);
  const std::string base = "generate --model " + dir.str() + " --prompt-ids 9,10 --max_tokens 8 --temperature 1.0 --json";
  test::Exec a = test::run_apus(base + " --seed 7"), b = test::run_apus(base + " --seed 7"), c = test::run_apus(base + " --seed 8");
  ASSERT_EQ(a.status, 0) << a.out;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
}

TEST(Cli, ErrorsAreClear) {
  test::TempDir dir;
  write_fixture_model(dir);
  test::Exec r = test::run_apus("generate --model " + dir.str() + " --prompt-ids 1,x");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.out, ::testing::HasSubstr("\"x\" is not a token id"));
  r = test::run_apus("generate --model " + dir.str() + " --prompt-ids 1,99999");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.out, ::testing::HasSubstr("outside the vocabulary"));
  r = test::run_apus("generate --model /nonexistent --prompt-ids 1");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.out, ::testing::HasSubstr("/nonexistent/config.json"));
  r = test::run_apus("generate --load-format dummy --config-preset nope --prompt-ids 1");
  EXPECT_THAT(r.out, ::testing::HasSubstr("qwen2.5-0.5b"));
}

}  // namespace
}  // namespace apus
