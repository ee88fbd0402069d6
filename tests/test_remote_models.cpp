// The article's remote-code models end to end through the offline API: a Qwen v1 and a ChatGLM3
// checkpoint directory (config.json and tokenizer files as the originals ship them, tiny random
// weights) load, pick their template and stop words from --model_type or their own files, and chat.
#include <apus/apus.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "test_util.h"
#include "text/chat_template.h"
#include "text/tokenizer/tokenizer.h"

namespace apus {
namespace {

namespace fs = std::filesystem;

const fs::path kTokenizers = fs::path(APUS_SOURCE_DIR) / "third_party/tokenizers";

// The golden fixture's config and tensor names, resized to the real tokenizer's vocabulary.
bool write_model(const fs::path& dir, const std::string& fixture, const std::string& tokenizer, int64_t vocab) {
  const fs::path tok = kTokenizers / tokenizer;
  if (!fs::exists(tok)) return false;
  auto fx = test::read_json(fs::path(APUS_SOURCE_DIR) / "tests/golden" / (fixture + ".json"));
  nlohmann::json config = fx["config"];
  config[config.contains("padded_vocab_size") ? "padded_vocab_size" : "vocab_size"] = vocab;
  std::vector<test::NamedShape> specs;
  for (const auto& t : fx["tensors"]) {
    auto shape = t["shape"].get<std::vector<int64_t>>();
    if (!shape.empty() && shape[0] == fx["config"].value("vocab_size", fx["config"].value("padded_vocab_size", 0)))
      shape[0] = vocab;  // embedding and lm_head rows
    specs.push_back({t["name"].get<std::string>(), shape});
  }
  test::write_random_checkpoint(dir, config, specs, DType::BF16, 7);
  for (const auto& e : fs::directory_iterator(tok)) fs::copy_file(e.path(), dir / e.path().filename());
  return true;
}

std::unique_ptr<LlmEngine> load(const test::TempDir& dir, const std::string& model_type) {
  EngineOptions o;
  o.model_type = model_type;
  o.num_threads = 2;
  o.kv_cache_bytes = 16 << 20;
  o.device = "cpu";
  o.verbose = false;
  auto e = LlmEngine::load(dir.str(), o);
  e->generation_config.max_new_tokens = 8;
  return e;
}

TEST(RemoteModels, QwenChatByModelType) {
  test::TempDir dir;
  if (!write_model(dir.path(), "qwen_ntk_logn_bf16", "qwen", 151936)) GTEST_SKIP() << "run scripts/fetch-tokenizers.sh";
  auto engine = load(dir, "qwen-7b-chat");
  EXPECT_EQ(engine->model_config().architecture, "QWenLMHeadModel");
  auto tmpl = get_template(*engine);
  EXPECT_EQ(tmpl->name(), "qwen");
  EXPECT_EQ(tmpl->default_system(), "You are a helpful assistant.");
  auto resp = inference(*engine, *tmpl, {{"你好!"}, {"浙江的省会在哪?", {{"你好!", "你好！"}}}});
  ASSERT_EQ(resp.size(), 2u);
  for (const auto& r : resp) EXPECT_TRUE(r.finish_reason == "stop" || r.finish_reason == "length");
  EXPECT_EQ(resp[1].history.size(), 2u);
}

TEST(RemoteModels, ChatGlm3OwnPromptOrModelType) {
  test::TempDir dir;
  if (!write_model(dir.path(), "chatglm3_mqa_bf16", "chatglm3", 32016)) GTEST_SKIP() << "run scripts/fetch-tokenizers.sh";
  auto engine = load(dir, "");
  EXPECT_EQ(engine->model_config().architecture, "ChatGLMModel");
  auto own = get_template(*engine);
  EXPECT_EQ(own->name(), "chatglm3-chat-input");
  const auto p = own->render({{"user", "你好"}}, true);
  EXPECT_EQ(std::vector<int32_t>(p.ids.begin(), p.ids.begin() + 3),
            (std::vector<int32_t>{*engine->tokenizer().token_to_id("[gMASK]"), *engine->tokenizer().token_to_id("sop"),
                                  *engine->tokenizer().token_to_id("<|user|>")}));
  auto resp = inference(*engine, *own, {{"你好"}});
  ASSERT_EQ(resp.size(), 1u);
  EXPECT_TRUE(resp[0].finish_reason == "stop" || resp[0].finish_reason == "length");

  auto typed = load(dir, "chatglm3-6b");
  EXPECT_EQ(get_template(*typed)->name(), "chatglm3");
}

}  // namespace
}  // namespace apus
