#include "text/tokenizer/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "text/tokenizer/chatglm_tokenizer.h"
#include "text/tokenizer/hf_tokenizer.h"
#include "text/tokenizer/json_field.h"
#include "text/tokenizer/sentencepiece_tokenizer.h"
#include "text/tokenizer/tiktoken_tokenizer.h"

namespace apus {
namespace {

namespace fs = std::filesystem;
using tok::json;
using tok::JsonField;

json read_json_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path.string());
  std::stringstream buf;
  buf << in.rdbuf();
  try {
    return json::parse(buf.str());
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", path.string(), e.what());
  }
}

// bos_token / eos_token: a string, or an AddedToken object {"content": ...}; null or absent = none.
std::string token_field(const JsonField& config, const char* key) {
  auto f = config.get(key);
  if (!f) return "";
  if (f->value().is_string()) return f->str();
  if (f->value().is_object()) return (*f)["content"].str();
  f->fail("expected a string or an object with \"content\"");
}

// chat_template: a string, or a list of {"name", "template"} of which "default" is the template.
std::optional<std::string> chat_template_field(const JsonField& config) {
  auto f = config.get("chat_template");
  if (!f) return std::nullopt;
  if (f->value().is_string()) return f->str();
  if (!f->value().is_array()) f->fail("expected a string or a list of {\"name\", \"template\"}");
  for (size_t i = 0; i < f->size(); ++i) {
    const JsonField e = f->at(i);
    if (e["name"].str() == "default") return e["template"].str();
  }
  return std::nullopt;
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& dir) {
  const fs::path base(dir);
  const fs::path json_file = base / "tokenizer.json", model_file = base / "tokenizer.model",
                 config_file = base / "tokenizer_config.json";
  json config = json::object();
  if (fs::exists(config_file)) config = read_json_file(config_file);
  const JsonField cfg(config, config_file.string());
  cfg.object();

  std::unique_ptr<Tokenizer> t;
  std::string bos = token_field(cfg, "bos_token"), eos = token_field(cfg, "eos_token");
  // Remote-code tokenizers (tokenizer_config.json's tokenizer_class) run their own Python class, not
  // tokenizer.json: Qwen v1's tiktoken file and ChatGLM's sentencepiece model with GLM specials.
  const std::string tokenizer_class = cfg.get("tokenizer_class") ? cfg.get("tokenizer_class")->str() : "";
  const fs::path tiktoken_file = base / "qwen.tiktoken";
  if (tokenizer_class == "QWenTokenizer" || (!fs::exists(json_file) && fs::exists(tiktoken_file))) {
    APUS_CHECK(fs::exists(tiktoken_file), "{}: QWenTokenizer needs qwen.tiktoken, which is missing", dir);
    t = std::make_unique<Tokenizer>(tok::make_qwen_tiktoken_tokenizer(tiktoken_file.string()));
  } else if (tokenizer_class == "ChatGLMTokenizer") {
    APUS_CHECK(fs::exists(model_file), "{}: ChatGLMTokenizer needs tokenizer.model, which is missing", dir);
    std::string model_eos;
    t = std::make_unique<Tokenizer>(tok::make_chatglm_tokenizer(model_file.string(), &model_eos));
    bos.clear();  // ChatGLMTokenizer has no bos_token; its prefix is [gMASK] sop
    if (!cfg.get("eos_token")) eos = model_eos;
  } else if (fs::exists(json_file)) {
    t = std::make_unique<Tokenizer>(tok::make_hf_tokenizer(read_json_file(json_file), json_file.string()));
  } else if (fs::exists(model_file)) {
    std::string model_bos, model_eos;
    t = std::make_unique<Tokenizer>(tok::make_sentencepiece_tokenizer(model_file.string(),
                                                                      cfg.bool_or("add_bos_token", true),
                                                                      cfg.bool_or("add_eos_token", false),
                                                                      &model_bos, &model_eos));
    // Without a config, a tokenizer.model's own control pieces are its BOS / EOS.
    if (!cfg.get("bos_token")) bos = model_bos;
    if (!cfg.get("eos_token")) eos = model_eos;
  } else {
    fail("{}: no tokenizer.json or tokenizer.model in this directory", dir);
  }

  t->bos_token_ = bos;
  t->eos_token_ = eos;
  t->chat_template_ = chat_template_field(cfg);
  t->tokenizer_class_ = tokenizer_class;
  if (!t->bos_token_.empty()) t->bos_id_ = t->token_to_id(t->bos_token_);
  if (!t->eos_token_.empty()) t->eos_id_ = t->token_to_id(t->eos_token_);
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return backend_->encode(text, add_special_tokens);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  return backend_->decode(ids, skip_special_tokens);
}

std::string Tokenizer::id_to_token(int32_t id) const { return backend_->id_to_token(id).value_or(""); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const { return backend_->token_to_id(token); }

bool Tokenizer::is_special(int32_t id) const { return backend_->is_special(id); }

int64_t Tokenizer::vocab_size() const { return backend_->vocab_size(); }

}  // namespace apus
