// Building a prompt from a conversation: the checkpoint's own Jinja chat_template (rendered as
// transformers' apply_chat_template does), or a named template type of the reference tool
// (ms-swift 2.x; see template_types.h).
//
//   auto tok = Tokenizer::load(dir);
//   auto tmpl = select_template(*tok, /*template_type=*/"", /*fallback=*/"default");
//   RenderedPrompt p = tmpl->render({{"user", "你好!"}}, /*add_generation_prompt=*/true);
//   // p.text: the prompt as text; p.ids: what the model is fed; tmpl->stop_words(): stop strings
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "text/tokenizer/tokenizer.h"

namespace apus {

struct ChatMessage {
  std::string role;  // system, user, assistant (the Jinja templates accept whatever they handle)
  std::string content;
};

struct RenderedPrompt {
  std::string text;          // the prompt as text
  std::vector<int32_t> ids;  // the prompt as token ids (not always encode(text): see template_types.h)
};

// Implementations keep a reference to their Tokenizer, which must outlive them; render() is
// const and may be called from any number of threads.
class ChatTemplate {
 public:
  virtual ~ChatTemplate() = default;
  // Throws apus::Error when the conversation does not fit the template (roles, order) or the
  // template rejects it (raise_exception).
  virtual RenderedPrompt render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                const nlohmann::ordered_json& extra = {}) const = 0;
  // Stop strings for generation (each a text the reply ends at, excluded from the reply).
  virtual std::vector<std::string> stop_words() const = 0;
  // The system prompt used when the conversation has no system message (nullopt: none).
  virtual std::optional<std::string> default_system() const = 0;
  // "jinja" for the checkpoint's template, else the template type ("qwen", "llama3", ...).
  virtual std::string name() const = 0;
};

// The checkpoint's own Jinja chat_template, rendered exactly as transformers' apply_chat_template:
// variables messages, tools (null), documents (null), add_generation_prompt, the tokenizer's
// special tokens (bos_token, eos_token, unk_token, pad_token, ... as `special_tokens`, an object
// such as read_special_tokens_map() returns; null: bos_token and eos_token of `tok`), then every
// key of `extra` (e.g. enable_thinking, tools). ids = tok.encode(text, add_special_tokens=false).
// stop_words() is the eos token; default_system() is nullopt (the template has its own).
// Throws apus::Error "template:LINE:COL: ..." when the source does not parse.
std::unique_ptr<ChatTemplate> make_jinja_template(const Tokenizer& tok, std::string source,
                                                  nlohmann::ordered_json special_tokens = nullptr);

// A named template type of the reference tool: qwen, chatml, yi, llama, llama3, chatglm3, default,
// default-generation. Unknown names -> apus::Error listing the known ones.
std::unique_ptr<ChatTemplate> make_named_template(const Tokenizer& tok, std::string_view type);

// ChatGLM3's own prompt ids, as its tokenizer's build_chat_input builds them (chatglm3_chat_input.cpp).
std::unique_ptr<ChatTemplate> make_chatglm3_chat_input(const Tokenizer& tok);

// A non-empty `template_type` (other than "auto", the reference's AUTO) always wins; else the
// checkpoint's chat_template when the tokenizer has one; else the remote-code models' own format:
// ChatGLM's build_chat_input for a ChatGLMTokenizer, `qwen` (= Qwen v1's make_context) for a
// QWenTokenizer; else `fallback_type`.
std::unique_ptr<ChatTemplate> select_template(const Tokenizer& tok, std::string_view template_type,
                                              std::string_view fallback_type = "default",
                                              nlohmann::ordered_json special_tokens = nullptr);

// tokenizer_config.json's special tokens as transformers' special_tokens_map: bos_token,
// eos_token, unk_token, sep_token, pad_token, cls_token, mask_token (strings, or AddedToken
// objects' "content"; null ones left out) and additional_special_tokens. An empty object when
// `dir` has no tokenizer_config.json.
nlohmann::ordered_json read_special_tokens_map(const std::string& dir);

// An OpenAI-style messages array: [{"role": ..., "content": string | null | [{"type": "text",
// "text": ...}, ...]}]. Text parts are joined with "\n" (as vLLM does for string templates).
// Throws apus::Error naming the offending element.
std::vector<ChatMessage> parse_messages(const nlohmann::json& messages);

// The ids of those stop words that are a single special token. The detokenizer matches stop strings
// in text decoded without special tokens, where such words never appear, so they stop as ids.
std::vector<int32_t> special_stop_ids(const Tokenizer& tok, const std::vector<std::string>& words);

// `messages` with a system message in front carrying `system`, unless it starts with one.
std::vector<ChatMessage> with_default_system(std::vector<ChatMessage> messages, const std::string& system);

}  // namespace apus
