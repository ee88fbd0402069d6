#include "text/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "text/jinja/jinja.h"
#include "text/template_types.h"

namespace apus {

namespace {

using ojson = nlohmann::ordered_json;

class JinjaChatTemplate : public ChatTemplate {
 public:
  JinjaChatTemplate(const Tokenizer& tok, std::string source, ojson special)
      : tok_(tok), template_(jinja::Template::parse(source)), special_(std::move(special)) {
    if (special_.is_null()) {
      special_ = ojson::object();
      if (!tok.bos_token().empty()) special_["bos_token"] = tok.bos_token();
      if (!tok.eos_token().empty()) special_["eos_token"] = tok.eos_token();
    }
    APUS_CHECK(special_.is_object(), "chat template: the special tokens must be a JSON object");
  }

  RenderedPrompt render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                        const ojson& extra) const override {
    APUS_CHECK(extra.is_null() || extra.is_object(), "chat template: extra variables must be a JSON object, not {}",
               extra.type_name());
    // apply_chat_template: render(messages=..., tools=..., documents=..., add_generation_prompt=...,
    // **special_tokens_map, **kwargs)
    ojson ctx = ojson::object();
    ojson msgs = ojson::array();
    for (const ChatMessage& m : messages) msgs.push_back({{"role", m.role}, {"content", m.content}});
    ctx["messages"] = std::move(msgs);
    ctx["tools"] = nullptr;
    ctx["documents"] = nullptr;
    ctx["add_generation_prompt"] = add_generation_prompt;
    for (const auto& [k, v] : special_.items()) ctx[k] = v;
    if (extra.is_object())
      for (const auto& [k, v] : extra.items()) ctx[k] = v;
    RenderedPrompt out;
    out.text = template_.render(ctx);
    out.ids = tok_.encode(out.text, false);
    return out;
  }

  std::vector<std::string> stop_words() const override {
    if (tok_.eos_token().empty()) return {};
    return {tok_.eos_token()};
  }
  std::optional<std::string> default_system() const override { return std::nullopt; }
  std::string name() const override { return "jinja"; }

 private:
  const Tokenizer& tok_;
  jinja::Template template_;
  ojson special_;
};

class NamedChatTemplate : public ChatTemplate {
 public:
  NamedChatTemplate(const Tokenizer& tok, const TemplateSpec& spec) : tok_(tok), spec_(spec) {}

  RenderedPrompt render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                        const ojson& extra) const override {
    APUS_CHECK(extra.is_null() || (extra.is_object() && extra.empty()),
               "template '{}' takes no extra variables (only the checkpoint's Jinja chat_template does)", spec_.name);
    return encode_example(spec_, tok_, to_example(spec_, messages, add_generation_prompt));
  }
  std::vector<std::string> stop_words() const override { return template_stop_words(spec_, tok_); }
  std::optional<std::string> default_system() const override { return spec_.default_system; }
  std::string name() const override { return spec_.name; }

 private:
  const Tokenizer& tok_;
  const TemplateSpec& spec_;
};

// A special token value of tokenizer_config.json: a string, or an AddedToken object.
std::optional<std::string> token_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

std::unique_ptr<ChatTemplate> make_jinja_template(const Tokenizer& tok, std::string source, ojson special_tokens) {
  return std::make_unique<JinjaChatTemplate>(tok, std::move(source), std::move(special_tokens));
}

std::unique_ptr<ChatTemplate> make_named_template(const Tokenizer& tok, std::string_view type) {
  const TemplateSpec* spec = find_template_spec(type);
  APUS_CHECK(spec, "unknown template type \"{}\" (known: {})", type, known_template_types());
  return std::make_unique<NamedChatTemplate>(tok, *spec);
}

std::unique_ptr<ChatTemplate> select_template(const Tokenizer& tok, std::string_view template_type,
                                              std::string_view fallback_type, ojson special_tokens) {
  if (!template_type.empty() && template_type != "auto" && template_type != "AUTO")
    return make_named_template(tok, template_type);
  if (tok.chat_template()) return make_jinja_template(tok, *tok.chat_template(), std::move(special_tokens));
  if (tok.tokenizer_class() == "ChatGLMTokenizer") return make_chatglm3_chat_input(tok);
  // Qwen v1's chat() builds chatml with make_context, which is the `qwen` template's prompt.
  if (tok.tokenizer_class() == "QWenTokenizer") return make_named_template(tok, "qwen");
  return make_named_template(tok, fallback_type);
}

ojson read_special_tokens_map(const std::string& dir) {
  const std::filesystem::path file = std::filesystem::path(dir) / "tokenizer_config.json";
  ojson out = ojson::object();
  if (!std::filesystem::exists(file)) return out;
  std::ifstream in(file, std::ios::binary);
  APUS_CHECK(in, "{}: cannot open", file.string());
  std::stringstream buf;
  buf << in.rdbuf();
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(buf.str());
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid JSON: {}", file.string(), e.what());
  }
  APUS_CHECK(config.is_object(), "{}: expected a JSON object", file.string());
  // transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order.
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    auto it = config.find(key);
    if (it == config.end()) continue;
    if (auto t = token_text(*it); t && !t->empty()) out[key] = *t;
  }
  auto it = config.find("additional_special_tokens");
  if (it != config.end() && it->is_array() && !it->empty()) {
    ojson list = ojson::array();
    for (const auto& v : *it)
      if (auto t = token_text(v)) list.push_back(*t);
    out["additional_special_tokens"] = std::move(list);
  }
  return out;
}

std::vector<ChatMessage> parse_messages(const nlohmann::json& messages) {
  APUS_CHECK(messages.is_array(), "messages: expected a JSON array of {{\"role\", \"content\"}} objects, found {}",
             messages.type_name());
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    APUS_CHECK(m.is_object(), "messages[{}]: expected an object with \"role\" and \"content\", found {}", i, m.type_name());
    auto role = m.find("role");
    APUS_CHECK(role != m.end() && role->is_string(), "messages[{}]: \"role\" must be a string", i);
    ChatMessage msg{role->get<std::string>(), ""};
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      // no content (an assistant message with tool calls): empty text
    } else if (content->is_string()) {
      msg.content = content->get<std::string>();
    } else if (content->is_array()) {
      for (size_t k = 0; k < content->size(); ++k) {
        const auto& part = (*content)[k];
        const auto type = part.is_object() ? part.find("type") : part.end();
        APUS_CHECK(part.is_object() && type != part.end() && *type == "text" && part.contains("text") && part["text"].is_string(),
                   "messages[{}].content[{}]: only {{\"type\": \"text\", \"text\": ...}} parts are supported", i, k);
        if (k) msg.content += "\n";
        msg.content += part["text"].get<std::string>();
      }
    } else {
      fail("messages[{}]: \"content\" must be a string, null or a list of text parts, found {}", i, content->type_name());
    }
    out.push_back(std::move(msg));
  }
  return out;
}

std::vector<ChatMessage> with_default_system(std::vector<ChatMessage> messages, const std::string& system) {
  if (messages.empty() || messages[0].role != "system") messages.insert(messages.begin(), {"system", system});
  return messages;
}

std::vector<int32_t> special_stop_ids(const Tokenizer& tok, const std::vector<std::string>& words) {
  std::vector<int32_t> ids;
  for (const std::string& w : words) {
    auto id = tok.token_to_id(w);
    if (id && tok.is_special(*id) && tok.encode(w, false) == std::vector<int32_t>{*id}) ids.push_back(*id);
  }
  return ids;
}

}  // namespace apus
