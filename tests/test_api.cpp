// The offline API as the reference article uses it: batched chat requests, history carried into
// the next turn, streaming, and batch-independence of each answer.
#include <apus/apus.h>
#include <gtest/gtest.h>

#include "text/chat_template.h"
#include "test_util.h"

namespace apus {
namespace {

class ApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::write_tiny_chat_model(dir_.path())) GTEST_SKIP() << "run scripts/fetch-tokenizers.sh";
    EngineOptions o;
    o.num_threads = 2;
    o.kv_cache_bytes = 64 << 20;
    engine_ = LlmEngine::load(dir_.str(), o);
    engine_->generation_config.max_new_tokens = 12;
  }
  test::TempDir dir_;
  std::unique_ptr<LlmEngine> engine_;
};

TEST_F(ApiTest, ArticleFlowWithHistory) {
  auto tmpl = get_template(*engine_);
  EXPECT_EQ(tmpl->name(), "jinja");  // the checkpoint's own chat template
  auto resp = inference(*engine_, *tmpl, {{"你好!"}, {"浙江的省会在哪?"}});
  ASSERT_EQ(resp.size(), 2u);
  for (const auto& r : resp) {
    ASSERT_EQ(r.history.size(), 1u);
    EXPECT_EQ(r.history[0].second, r.response);
    EXPECT_TRUE(r.finish_reason == "stop" || r.finish_reason == "length");
  }
  EXPECT_EQ(resp[1].history[0].first, "浙江的省会在哪?");

  // The next turn continues from the history; streaming and batch calls agree.
  InferRequest next{"这有什么好吃的", resp[1].history};
  auto batch = inference(*engine_, *tmpl, {next});
  std::vector<std::string> seen;
  inference_stream(*engine_, *tmpl, {next}, [&](const std::vector<InferResponse>& r) { seen.push_back(r[0].response); });
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back(), batch[0].response);
  for (size_t i = 1; i < seen.size(); ++i) EXPECT_EQ(seen[i].rfind(seen[i - 1], 0), 0u) << "stream only grows";
  ASSERT_EQ(batch[0].history.size(), 2u);
  EXPECT_EQ(batch[0].history[0], resp[1].history[0]);

  // Each answer is the same alone as in the batch (greedy).
  EXPECT_EQ(inference(*engine_, *tmpl, {{"你好!"}})[0].response, resp[0].response);
}

TEST_F(ApiTest, ModelTypeSelectsNamedTemplate) {
  auto tmpl = get_template(*engine_, "qwen");
  EXPECT_EQ(tmpl->name(), "qwen");
  EXPECT_EQ(get_default_template_type("qwen-7b-chat"), "qwen");
  auto resp = inference(*engine_, *tmpl, {{"hi", {}, std::string("You are terse.")}});
  ASSERT_EQ(resp.size(), 1u);
  EXPECT_THROW(get_default_template_type("no-such-model"), std::exception);
}

}  // namespace
}  // namespace apus
