// Chat prompts of the remote-code models against their original code (fixture from
// tools/golden/make_remote_golden.py): Qwen v1's make_context (chatml) must give the ids the `qwen`
// template gives for the same multi-turn conversation, with Qwen's own tokenizer (qwen.tiktoken);
// a ChatGLM3 tokenizer directory without a chat_template gets build_chat_input's ids.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "test_util.h"
#include "text/chat_template.h"
#include "text/tokenizer/tokenizer.h"

namespace apus {
namespace {

namespace fs = std::filesystem;

const fs::path kSource = APUS_SOURCE_DIR;

std::vector<ChatMessage> messages_of(const nlohmann::json& c, bool with_system) {
  std::vector<ChatMessage> m;
  if (with_system && !c["system"].is_null()) m.push_back({"system", c["system"].get<std::string>()});
  for (const auto& h : c["history"]) {
    m.push_back({"user", h[0].get<std::string>()});
    m.push_back({"assistant", h[1].get<std::string>()});
  }
  m.push_back({"user", c["query"].get<std::string>()});
  return m;
}

TEST(RemoteChat, QwenTemplateMatchesMakeContext) {
  const fs::path dir = kSource / "third_party/tokenizers/qwen";
  if (!fs::exists(dir)) GTEST_SKIP() << dir << " is absent (run scripts/fetch-tokenizers.sh)";
  const auto tok = Tokenizer::load(dir.string());
  const auto tmpl = select_template(*tok, "");  // no template type, no chat_template: the model's own
  EXPECT_EQ(tmpl->name(), "qwen");
  const auto fx = test::read_json(kSource / "tests/data/templates/original_chat_ids.json");
  ASSERT_FALSE(fx["conversations"].empty());
  for (const auto& c : fx["conversations"]) {
    // make_context's system defaults to chat()'s "You are a helpful assistant.", as the template's does.
    const RenderedPrompt p = tmpl->render(messages_of(c, true), true);
    EXPECT_EQ(p.ids, c["qwen_ids"].get<std::vector<int32_t>>()) << c["query"];
    EXPECT_EQ(p.text, c["qwen_text"].get<std::string>()) << c["query"];
  }
}

TEST(RemoteChat, Chatglm3ChatInputMatchesBuildChatInput) {
  const fs::path dir = kSource / "third_party/tokenizers/chatglm3";
  if (!fs::exists(dir)) GTEST_SKIP() << dir << " is absent (run scripts/fetch-tokenizers.sh)";
  const auto tok = Tokenizer::load(dir.string());
  const auto tmpl = select_template(*tok, "");  // no template type, no chat_template: the model's own
  EXPECT_EQ(tmpl->name(), "chatglm3-chat-input");
  EXPECT_EQ(tmpl->stop_words(), (std::vector<std::string>{"</s>", "<|user|>", "<|observation|>"}));
  const auto fx = test::read_json(kSource / "tests/data/templates/original_chat_ids.json");
  for (const auto& c : fx["conversations"]) {
    const RenderedPrompt p = tmpl->render(messages_of(c, true), true);
    EXPECT_EQ(p.ids, c["chatglm3_ids"].get<std::vector<int32_t>>()) << c["query"];
  }
  // An explicit --template_type chatglm3 is ms-swift's GLMTemplate, whose ids differ.
  const auto swift = select_template(*tok, "chatglm3");
  EXPECT_NE(swift->render(messages_of(fx["conversations"][0], true), true).ids,
            fx["conversations"][0]["chatglm3_ids"].get<std::vector<int32_t>>());
  EXPECT_THROW(tmpl->render({{"tool", "x"}}, true), Error);
}

}  // namespace
}  // namespace apus
