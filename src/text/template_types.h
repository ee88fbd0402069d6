// The named template types of the reference tool: ms-swift 2.x, swift/llm/utils/template.py at
// commit 5d13db794534ae79d765fb4f6112c3d88e82a472 (TemplateType, Template, register_template).
//
// A template is prefix / prompt / chat_sep / suffix / system_prefix lists whose elements are text
// (with {{SYSTEM}}, {{QUERY}}, {{ROUND0}}, {{ROUND1}} placeholders) or token-id lists such as
// [['bos_token_id']]. A conversation is the reference's (system, history, query[, response]);
// Template._concat_and_tokenize lays the pieces out, _simplify_context_list joins neighbouring
// text pieces of equal loss scale (history responses and, with an "efficient eos", the chat
// separators have scale 1, the rest 0) and every joined run is tokenized on its own with
// add_special_tokens=False. So ids are the concatenation of per-run encodings, which can differ
// from encoding the whole text (e.g. Llama's "▁" before a run), exactly as in the reference.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "text/chat_template.h"

namespace apus {

// One id of a token-id part.
struct TemplateToken {
  std::string ref;        // "bos_token_id" / "eos_token_id" (the tokenizer's), or a token's text
  int32_t fallback = -1;  // the reference's literal id, used when the tokenizer lacks `ref`
};

// A text piece (when `tokens` is empty) or a token-id list.
struct TemplatePart {
  std::string text;
  std::vector<TemplateToken> tokens;
  bool is_ids() const { return !tokens.empty(); }
};
using TemplateParts = std::vector<TemplatePart>;

struct TemplateSpec {
  std::string name;
  TemplateParts prefix, prompt;
  std::optional<TemplateParts> chat_sep;  // nullopt: single turn only (no history)
  TemplateParts suffix;                   // ends a response that is part of the input
  std::optional<std::string> default_system;
  std::optional<TemplateParts> system_prefix;  // nullopt: the template takes no system
  bool auto_add_bos = false;  // prepend bos when tokenizer.encode('') contains it
  // Tokens cut out of text runs and given their ids before the rest is encoded (chatglm3's role
  // tokens, which ChatGLM's tokenizer treats as added tokens).
  std::vector<TemplateToken> special_text_tokens;
  std::string reference;  // where the reference defines it
};

const std::vector<TemplateSpec>& template_specs();
const TemplateSpec* find_template_spec(std::string_view name);  // nullptr when unknown
std::string known_template_types();                              // "default, default-generation, ..."

// A conversation in the reference's terms.
struct TemplateExample {
  std::optional<std::string> system;  // already resolved (default system applied, "" = none)
  std::vector<std::pair<std::string, std::string>> history;  // (query, response)
  std::string query;
  std::optional<std::string> response;  // set: a finished exchange (ends with the suffix)
};

// Maps messages [system?] (user, assistant)* user [assistant] onto an example, applying the
// template's default system when there is no system message and reading "" as no system.
// Throws apus::Error naming the message that breaks the pattern or what the template lacks.
TemplateExample to_example(const TemplateSpec& spec, const std::vector<ChatMessage>& messages,
                           bool add_generation_prompt);

// Template._concat_and_tokenize for `ex`: text joined, ids per run (see above).
RenderedPrompt encode_example(const TemplateSpec& spec, const Tokenizer& tok, const TemplateExample& ex);

// The reference's stop words for vLLM inference: the tokenizer's eos token, then suffix[-1] (its
// text, or the decoded ids), duplicates and empty strings dropped.
std::vector<std::string> template_stop_words(const TemplateSpec& spec, const Tokenizer& tok);

}  // namespace apus
