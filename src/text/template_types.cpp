#include "text/template_types.h"

#include <algorithm>

#include "core/error.h"

namespace apus {

namespace {

// Reference: swift/llm/utils/template.py @ 5d13db79 (DEFAULT_SYSTEM, LLAMA_DEFAULT_SYSTEM).
constexpr const char* kDefaultSystem = "You are a helpful assistant.";
constexpr const char* kLlamaDefaultSystem =
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information.";
constexpr const char* kResponse = "{{RESPONSE}}";  // the reference's response placeholder

TemplatePart T(std::string s) { return {std::move(s), {}}; }
TemplatePart Ids(std::vector<TemplateToken> t) { return {"", std::move(t)}; }

TemplateSpec qwen_like(std::string name, std::optional<std::string> default_system, bool auto_add_bos,
                       std::string reference) {
  TemplateSpec s;
  s.name = std::move(name);
  s.prompt = {T("<|im_start|>user\n{{QUERY}}<|im_end|>\n<|im_start|>assistant\n")};
  s.chat_sep = TemplateParts{T("<|im_end|>\n")};
  s.suffix = {T("<|im_end|>")};
  s.default_system = std::move(default_system);
  s.system_prefix = TemplateParts{T("<|im_start|>system\n{{SYSTEM}}<|im_end|>\n")};
  s.auto_add_bos = auto_add_bos;
  s.reference = std::move(reference);
  return s;
}

std::vector<TemplateSpec> build_specs() {
  std::vector<TemplateSpec> v;
  {  // register_template(TemplateType.default, Template([], ['### Human:\n{{QUERY}}\n\n### Assistant:\n'],
     //   ['\n\n'], [['eos_token_id']], DEFAULT_SYSTEM, ['{{SYSTEM}}\n\n'], auto_add_bos=True))
    TemplateSpec s;
    s.name = "default";
    s.prompt = {T("### Human:\n{{QUERY}}\n\n### Assistant:\n")};
    s.chat_sep = TemplateParts{T("\n\n")};
    s.suffix = {Ids({{"eos_token_id"}})};
    s.default_system = kDefaultSystem;
    s.system_prefix = TemplateParts{T("{{SYSTEM}}\n\n")};
    s.auto_add_bos = true;
    s.reference = "template.py: register_template(TemplateType.default, ...)";
    v.push_back(std::move(s));
  }
  {  // DefaultGenerationTemplate: Template([], ['{{QUERY}}'], None, [['eos_token_id']], auto_add_bos=True)
    TemplateSpec s;
    s.name = "default-generation";
    s.prompt = {T("{{QUERY}}")};
    s.suffix = {Ids({{"eos_token_id"}})};
    s.auto_add_bos = true;
    s.reference = "template.py: class DefaultGenerationTemplate";
    v.push_back(std::move(s));
  }
  // QwenTemplate: [], ['<|im_start|>user\n{{QUERY}}<|im_end|>\n<|im_start|>assistant\n'], ['<|im_end|>\n'],
  // ['<|im_end|>'], DEFAULT_SYSTEM, ['<|im_start|>system\n{{SYSTEM}}<|im_end|>\n']; qwen: auto_add_bos=False,
  // chatml: QwenTemplate(auto_add_bos=True); yi: the same strings with no default system.
  v.push_back(qwen_like("qwen", kDefaultSystem, false, "template.py: class QwenTemplate; register_template(TemplateType.qwen, QwenTemplate())"));
  v.push_back(qwen_like("chatml", kDefaultSystem, true, "template.py: register_template(TemplateType.chatml, QwenTemplate(auto_add_bos=True))"));
  v.push_back(qwen_like("yi", std::nullopt, false, "template.py: register_template(TemplateType.yi, Template(...))"));
  {  // GLMTemplate([], ['<|user|>\n{{QUERY}}<|assistant|>\n'], [], ['<|user|>'], None, ['<|system|>\n{{SYSTEM}}']);
     // GLMTemplate._init_template inserts tokenizer.encode('') (ChatGLM3: [gMASK] sop = 64790, 64792) at
     // the front of prefix and system_prefix.
    TemplateSpec s;
    s.name = "chatglm3";
    const TemplatePart glm = Ids({{"[gMASK]", 64790}, {"sop", 64792}});
    s.prefix = {glm};
    s.prompt = {T("<|user|>\n{{QUERY}}<|assistant|>\n")};
    s.chat_sep = TemplateParts{};
    s.suffix = {T("<|user|>")};
    s.system_prefix = TemplateParts{glm, T("<|system|>\n{{SYSTEM}}")};
    s.special_text_tokens = {{"<|system|>", 64794}, {"<|user|>", 64795}, {"<|assistant|>", 64796}, {"<|observation|>", 64797}};
    s.reference = "template.py: class GLMTemplate; register_template(TemplateType.chatglm3, GLMTemplate(...))";
    v.push_back(std::move(s));
  }
  {  // Template(['<s>[INST] '], ['{{QUERY}} [/INST]'], ['</s><s>[INST] '], ['</s>'], LLAMA_DEFAULT_SYSTEM,
     //   ['<s>[INST] <<SYS>>\n{{SYSTEM}}\n<</SYS>>\n\n'])
    TemplateSpec s;
    s.name = "llama";
    s.prefix = {T("<s>[INST] ")};
    s.prompt = {T("{{QUERY}} [/INST]")};
    s.chat_sep = TemplateParts{T("</s><s>[INST] ")};
    s.suffix = {T("</s>")};
    s.default_system = kLlamaDefaultSystem;
    s.system_prefix = TemplateParts{T("<s>[INST] <<SYS>>\n{{SYSTEM}}\n<</SYS>>\n\n")};
    s.reference = "template.py: register_template(TemplateType.llama, ...)";
    v.push_back(std::move(s));
  }
  {  // Template(['<|begin_of_text|>'], ['<|start_header_id|>user<|end_header_id|>\n\n{{QUERY}}<|eot_id|>'
     //   '<|start_header_id|>assistant<|end_header_id|>\n\n'], ['<|eot_id|>'], ['<|eot_id|>'], None,
     //   ['<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{{SYSTEM}}<|eot_id|>'])
    TemplateSpec s;
    s.name = "llama3";
    s.prefix = {T("<|begin_of_text|>")};
    s.prompt = {T("<|start_header_id|>user<|end_header_id|>\n\n{{QUERY}}<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n")};
    s.chat_sep = TemplateParts{T("<|eot_id|>")};
    s.suffix = {T("<|eot_id|>")};
    s.system_prefix = TemplateParts{T("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{{SYSTEM}}<|eot_id|>")};
    s.reference = "template.py: register_template(TemplateType.llama3, ...)";
    v.push_back(std::move(s));
  }
  return v;
}

bool has_system_placeholder(const TemplatePart& p) { return !p.is_ids() && p.text.find("{{SYSTEM}}") != std::string::npos; }

// Python's str.replace: every non-overlapping occurrence, left to right.
void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size()))
    s.replace(pos, from.size(), to);
}

// One element of the reference's res_context_list with its loss scale.
struct Piece {
  const TemplatePart* ids = nullptr;  // set for a token-id list
  std::string text;
  float loss = 0.0f;
};

// Template._concat_context_list: placeholders replaced (a value of None leaves its placeholder),
// empty text dropped, {{RESPONSE}} becomes the response with loss scale 1.
void concat_context(const TemplateParts& parts, std::vector<Piece>& out, const std::optional<std::string>& system,
                    const std::optional<std::string>& query, const std::optional<std::string>& response,
                    std::optional<int> round0) {
  for (const TemplatePart& p : parts) {
    if (p.is_ids()) {
      out.push_back({&p, "", 0.0f});
      continue;
    }
    if (p.text == kResponse) {
      out.push_back({nullptr, response.value_or(""), 1.0f});
      continue;
    }
    std::string s = p.text;
    if (system && s.find("{{SYSTEM}}") != std::string::npos) replace_all(s, "{{SYSTEM}}", *system);
    if (query && s.find("{{QUERY}}") != std::string::npos) replace_all(s, "{{QUERY}}", *query);
    if (round0) {
      replace_all(s, "{{ROUND0}}", std::to_string(*round0));
      replace_all(s, "{{ROUND1}}", std::to_string(*round0 + 1));
    }
    if (!s.empty()) out.push_back({nullptr, std::move(s), 0.0f});
  }
}

struct ResolvedToken {
  int32_t id;
  std::string text;
};

ResolvedToken resolve(const TemplateSpec& spec, const Tokenizer& tok, const TemplateToken& t) {
  if (t.ref == "bos_token_id" || t.ref == "eos_token_id") {
    const bool bos = t.ref == "bos_token_id";
    const auto id = bos ? tok.bos_id() : tok.eos_id();
    APUS_CHECK(id.has_value(), "template '{}' needs the tokenizer's {} token, which this tokenizer lacks", spec.name,
               bos ? "bos" : "eos");
    return {*id, bos ? tok.bos_token() : tok.eos_token()};
  }
  if (auto id = tok.token_to_id(t.ref)) return {*id, t.ref};
  APUS_CHECK(t.fallback >= 0, "template '{}': the tokenizer has no token \"{}\"", spec.name, t.ref);
  return {t.fallback, t.ref};
}

// One run of text through the tokenizer with add_special_tokens=false, the template's special
// text tokens cut out first (leftmost match, longest on ties).
void encode_run(const TemplateSpec& spec, const Tokenizer& tok, std::string_view run, std::vector<int32_t>& ids) {
  while (!run.empty()) {
    size_t best = std::string_view::npos, best_len = 0;
    const TemplateToken* hit = nullptr;
    for (const TemplateToken& t : spec.special_text_tokens) {
      const size_t at = run.find(t.ref);
      if (at == std::string_view::npos) continue;
      if (at < best || (at == best && t.ref.size() > best_len)) best = at, best_len = t.ref.size(), hit = &t;
    }
    const std::string_view head = hit ? run.substr(0, best) : run;
    if (!head.empty()) {
      const auto enc = tok.encode(head, false);
      ids.insert(ids.end(), enc.begin(), enc.end());
    }
    if (!hit) break;
    ids.push_back(resolve(spec, tok, *hit).id);
    run.remove_prefix(best + best_len);
  }
}

}  // namespace

const std::vector<TemplateSpec>& template_specs() {
  static const std::vector<TemplateSpec> specs = build_specs();
  return specs;
}

const TemplateSpec* find_template_spec(std::string_view name) {
  for (const auto& s : template_specs())
    if (s.name == name) return &s;
  return nullptr;
}

std::string known_template_types() {
  std::string out;
  for (const auto& s : template_specs()) out += (out.empty() ? "" : ", ") + s.name;
  return out;
}

TemplateExample to_example(const TemplateSpec& spec, const std::vector<ChatMessage>& messages,
                           bool add_generation_prompt) {
  const std::string pattern = "a conversation is [system] (user, assistant)* user, or ends with an assistant reply";
  TemplateExample ex;
  size_t i = 0;
  bool has_system_message = false;
  if (!messages.empty() && messages[0].role == "system") {
    has_system_message = true;
    if (!messages[0].content.empty()) ex.system = messages[0].content;  // preprocess(): '' means no system
    i = 1;
  }
  APUS_CHECK(i < messages.size(), "template '{}': the conversation has no user message; {}", spec.name, pattern);
  std::vector<std::string> turns;
  for (size_t k = i; k < messages.size(); ++k) {
    const ChatMessage& m = messages[k];
    const char* want = (k - i) % 2 == 0 ? "user" : "assistant";
    if (m.role != want) {
      if (m.role == "system")
        fail("template '{}': message {} is a system message; only the first message may be one", spec.name, k);
      if (m.role != "user" && m.role != "assistant")
        fail("template '{}': message {} has role '{}'; this template takes system, user and assistant", spec.name, k,
             m.role);
      fail("template '{}': message {} has role '{}' where '{}' was expected; {}", spec.name, k, m.role, want, pattern);
    }
    turns.push_back(m.content);
  }
  const bool ends_with_reply = turns.size() % 2 == 0;
  if (ends_with_reply) {
    APUS_CHECK(!add_generation_prompt,
               "template '{}': the conversation ends with an assistant message, so there is nothing to generate "
               "(render it with add_generation_prompt=false to get the finished exchange)", spec.name);
    ex.response = turns.back();
    turns.pop_back();
  } else {
    APUS_CHECK(add_generation_prompt,
               "template '{}': a conversation ending with a user message always gets the generation prompt "
               "(add_generation_prompt=false needs a final assistant message)", spec.name);
  }
  for (size_t k = 0; k + 1 < turns.size(); k += 2) ex.history.emplace_back(turns[k], turns[k + 1]);
  ex.query = turns.back();

  const bool takes_system =
      spec.system_prefix.has_value() || std::any_of(spec.prompt.begin(), spec.prompt.end(), has_system_placeholder);
  if (!has_system_message) ex.system = spec.default_system;
  APUS_CHECK(!ex.system || takes_system, "template '{}' does not support a system message", spec.name);
  APUS_CHECK(ex.history.empty() || spec.chat_sep.has_value(),
             "template '{}' does not support multi-turn conversations (history)", spec.name);
  return ex;
}

RenderedPrompt encode_example(const TemplateSpec& spec, const Tokenizer& tok, const TemplateExample& ex) {
  std::vector<Piece> pieces;
  static const TemplatePart kBos = Ids({{"bos_token_id"}});
  if (spec.auto_add_bos && tok.bos_id()) {
    const auto empty = tok.encode("", true);
    if (std::find(empty.begin(), empty.end(), *tok.bos_id()) != empty.end()) pieces.push_back({&kBos, "", 0.0f});
  }
  TemplateParts prompt;
  for (const TemplatePart& p : spec.prompt)
    if (ex.system || !has_system_placeholder(p)) prompt.push_back(p);
  const bool prefix_plain = !ex.system || std::any_of(prompt.begin(), prompt.end(), has_system_placeholder);
  APUS_CHECK(prefix_plain || spec.system_prefix, "template '{}' does not support a system message", spec.name);
  concat_context(prefix_plain ? spec.prefix : *spec.system_prefix, pieces, ex.system, std::nullopt, std::nullopt,
                 std::nullopt);

  std::vector<std::pair<std::string, std::optional<std::string>>> rounds(ex.history.begin(), ex.history.end());
  rounds.emplace_back(ex.query, ex.response);
  // The separators (or the suffix) take loss scale 1 when chat_sep starts with the suffix.
  bool efficient_eos = false;
  if (spec.chat_sep && !spec.chat_sep->empty() && !spec.suffix.empty()) {
    const TemplatePart &sep = spec.chat_sep->front(), &suf = spec.suffix.front();
    if (!sep.is_ids() && !suf.is_ids() && sep.text.rfind(suf.text, 0) == 0) efficient_eos = true;
    if (sep.is_ids() && suf.is_ids() && sep.tokens.size() == suf.tokens.size() &&
        std::equal(sep.tokens.begin(), sep.tokens.end(), suf.tokens.begin(),
                   [](const TemplateToken& a, const TemplateToken& b) { return a.ref == b.ref; }))
      efficient_eos = true;
  }
  static const TemplatePart kResponsePart = T(kResponse);
  for (size_t i = 0; i < rounds.size(); ++i) {
    const auto& [q, r] = rounds[i];
    TemplateParts ctx = prompt;
    const TemplateParts* extra = nullptr;
    if (i + 1 < rounds.size()) {
      std::erase_if(ctx, has_system_placeholder);
      ctx.push_back(kResponsePart);
      if (!rounds[i + 1].first.empty()) extra = &*spec.chat_sep;
    } else if (r) {
      ctx.push_back(kResponsePart);
      extra = &spec.suffix;
      efficient_eos = true;
    }
    if (q.empty() && (!r || r->empty())) continue;  // `if q or r:`
    concat_context(ctx, pieces, ex.system, q, r, int(i));
    if (extra)
      for (const TemplatePart& p : *extra) pieces.push_back({p.is_ids() ? &p : nullptr, p.text, efficient_eos ? 1.0f : 0.0f});
  }

  // _simplify_context_list: neighbouring texts of equal loss scale form one run.
  std::vector<Piece> runs;
  std::string pending;
  bool have_pending = false;
  float pending_loss = 0.0f;
  auto flush = [&] {
    if (have_pending) runs.push_back({nullptr, std::move(pending), pending_loss});
    pending.clear();
    have_pending = false;
  };
  for (Piece& p : pieces) {
    if (!p.ids && p.loss == pending_loss) {
      pending += p.text;
      have_pending = true;
      continue;
    }
    flush();
    if (p.ids) runs.push_back(p);
    else pending = std::move(p.text), have_pending = true;
    pending_loss = p.loss;
  }
  flush();

  RenderedPrompt out;
  for (const Piece& run : runs) {
    if (run.ids) {
      for (const TemplateToken& t : run.ids->tokens) {
        ResolvedToken rt = resolve(spec, tok, t);
        out.ids.push_back(rt.id);
        out.text += rt.text;
      }
    } else {
      encode_run(spec, tok, run.text, out.ids);
      out.text += run.text;
    }
  }
  return out;
}

std::vector<std::string> template_stop_words(const TemplateSpec& spec, const Tokenizer& tok) {
  std::vector<std::string> out;
  auto add = [&](const std::string& w) {
    if (!w.empty() && std::find(out.begin(), out.end(), w) == out.end()) out.push_back(w);
  };
  add(tok.eos_token());
  if (!spec.suffix.empty()) {
    const TemplatePart& last = spec.suffix.back();
    if (!last.is_ids()) {
      add(last.text);
    } else {  // tokenizer.decode(suffix[-1]): token texts
      std::string s;
      for (const TemplateToken& t : last.tokens) s += resolve(spec, tok, t).text;
      add(s);
    }
  }
  return out;
}

}  // namespace apus
