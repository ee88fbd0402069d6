// ChatGLM3's own prompt format: tokenization_chatglm.py's build_chat_input, which a ChatGLM3
// checkpoint (no chat_template in tokenizer_config.json) uses in model.chat(). Per message the role
// token, then sentencepiece of metadata + "\n" and of the content as two separate encodings (so the
// content gets sentencepiece's own "▁" prefix), [gMASK] sop in front and <|assistant|> at the end.
// The `chatglm3` template type is ms-swift's GLMTemplate instead, whose ids differ (content
// encoded together with the "\n", and "\n" after <|assistant|>).
#include <algorithm>
#include <array>

#include "core/error.h"
#include "text/chat_template.h"
#include "text/tokenizer/tokenizer.h"

namespace apus {

namespace {

class Chatglm3ChatInput : public ChatTemplate {
 public:
  explicit Chatglm3ChatInput(const Tokenizer& tok) : tok_(tok) {}

  RenderedPrompt render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                        const nlohmann::ordered_json& extra) const override {
    APUS_CHECK(extra.is_null() || (extra.is_object() && extra.empty()),
               "ChatGLM3's build_chat_input takes no extra variables");
    APUS_CHECK(!messages.empty(), "ChatGLM3's build_chat_input: the conversation is empty");
    RenderedPrompt out;
    add_token(out, "[gMASK]");
    add_token(out, "sop");
    for (size_t i = 0; i < messages.size(); ++i) {
      const ChatMessage& m = messages[i];
      static constexpr std::array<const char*, 4> kRoles = {"system", "user", "assistant", "observation"};
      APUS_CHECK(std::find(kRoles.begin(), kRoles.end(), m.role) != kRoles.end(),
                 "ChatGLM3's build_chat_input: message {} has role '{}' (system, user, assistant or observation)", i,
                 m.role);
      add_token(out, "<|" + m.role + "|>");  // build_single_message(role, metadata="", content)
      add_text(out, "\n");
      add_text(out, m.content);
    }
    if (add_generation_prompt) add_token(out, "<|assistant|>");
    return out;
  }
  // model.chat(): eos_token_id = [eos, <|user|>, <|observation|>]
  std::vector<std::string> stop_words() const override {
    std::vector<std::string> w;
    if (!tok_.eos_token().empty()) w.push_back(tok_.eos_token());
    w.push_back("<|user|>");
    w.push_back("<|observation|>");
    return w;
  }
  std::optional<std::string> default_system() const override { return std::nullopt; }
  std::string name() const override { return "chatglm3-chat-input"; }

 private:
  void add_token(RenderedPrompt& out, const std::string& token) const {
    const auto id = tok_.token_to_id(token);
    APUS_CHECK(id.has_value(), "ChatGLM3's build_chat_input needs the token {}, which this tokenizer lacks", token);
    out.ids.push_back(*id);
    out.text += token;
  }
  // SPTokenizer.encode: the sentencepiece ids of `text` alone. (The tokenizer maps a piece spelled
  // "sop"/"eop" to the GLM special, as ChatGLMTokenizer does; SPTokenizer.encode would keep the
  // piece's own id. No piece of ordinary text was seen to be spelled so.)
  void add_text(RenderedPrompt& out, const std::string& text) const {
    const auto ids = tok_.encode(text, false);
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
    out.text += text;
  }

  const Tokenizer& tok_;
};

}  // namespace

std::unique_ptr<ChatTemplate> make_chatglm3_chat_input(const Tokenizer& tok) {
  return std::make_unique<Chatglm3ChatInput>(tok);
}

}  // namespace apus
