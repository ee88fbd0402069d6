#include "server/openai_protocol.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace apus::server {

using nlohmann::json;

ApiError::ApiError(int s, std::string message, std::string p, std::string c, std::string t)
    : std::runtime_error(std::move(message)), status(s), param(std::move(p)), code(std::move(c)), type(std::move(t)) {
  if (type.empty()) {
    type = s == 401 ? "authentication_error"
           : s == 404 ? "invalid_request_error"
           : s >= 500 ? "server_error"
                      : "invalid_request_error";
  }
}

std::string ApiError::body() const {
  json e = {{"message", what()}, {"type", type}, {"param", param.empty() ? json() : json(param)},
            {"code", code.empty() ? json() : json(code)}};
  return json{{"error", e}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

constexpr int kMaxDepth = 64;  // JSON nesting; deeper bodies are refused before they cost anything

ApiError bad(const std::string& param, const std::string& message) { return ApiError(400, message, param); }

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a number";
    default: return "an integer";
  }
}

// Reads body[key] when present and not null.
class Fields {
 public:
  explicit Fields(const json& body) : body_(body) {}
  const json* get(const char* key) const {
    auto it = body_.find(key);
    return it == body_.end() || it->is_null() ? nullptr : &*it;
  }
  bool boolean(const char* key, bool fallback) const {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_boolean()) throw bad(key, fmt_type(key, "a boolean", *v));
    return v->get<bool>();
  }
  std::optional<double> number(const char* key, double lo, double hi) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) throw bad(key, fmt_type(key, "a number", *v));
    const double d = v->get<double>();
    if (!(d >= lo && d <= hi))
      throw bad(key, "'" + std::string(key) + "' must be between " + num(lo) + " and " + num(hi) + ", got " + num(d));
    return d;
  }
  std::optional<int64_t> integer(const char* key, int64_t lo, int64_t hi) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    return checked_int(*v, key, lo, hi);
  }
  std::string string(const char* key) const {
    const json* v = get(key);
    if (!v) return {};
    if (!v->is_string()) throw bad(key, fmt_type(key, "a string", *v));
    return v->get<std::string>();
  }
  static int64_t checked_int(const json& v, const std::string& key, int64_t lo, int64_t hi) {
    // 2.0 is accepted as 2 (JavaScript clients cannot tell them apart); 2.5 is not.
    int64_t i;
    if (v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))) {
      i = v.get<int64_t>();
    } else if (v.is_number_float() && std::isfinite(v.get<double>()) && v.get<double>() == std::floor(v.get<double>()) &&
               std::fabs(v.get<double>()) < 9e15) {
      i = int64_t(v.get<double>());
    } else if (v.is_number_unsigned()) {
      throw bad(key, "'" + key + "' is out of range");
    } else {
      throw bad(key, fmt_type(key, "an integer", v));
    }
    if (i < lo || i > hi)
      throw bad(key, "'" + key + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " +
                         std::to_string(i));
    return i;
  }
  static std::string fmt_type(const std::string& key, const char* want, const json& v) {
    return "'" + key + "' must be " + want + ", not " + type_name(v);
  }
  static std::string num(double d) {
    std::string s = std::to_string(d);
    s.erase(s.find_last_not_of('0') + 1);
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  }

 private:
  const json& body_;
};

std::vector<int32_t> token_ids(const json& v, const std::string& key) {
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    ids.push_back(int32_t(Fields::checked_int(v[i], key + "[" + std::to_string(i) + "]", 0, INT32_MAX)));
  return ids;
}

std::vector<PromptInput> parse_prompts(const json& p) {
  auto text = [](std::string s) {
    PromptInput in;
    in.text = std::move(s);
    return in;
  };
  auto ids = [](std::vector<int32_t> v) {
    PromptInput in;
    in.ids = std::move(v);
    in.is_ids = true;
    return in;
  };
  std::vector<PromptInput> out;
  if (p.is_string()) {
    out.push_back(text(p.get<std::string>()));
  } else if (p.is_array() && !p.empty() && p[0].is_number()) {
    out.push_back(ids(token_ids(p, "prompt")));
  } else if (p.is_array() && !p.empty()) {
    for (size_t i = 0; i < p.size(); ++i) {
      const std::string key = "prompt[" + std::to_string(i) + "]";
      if (p[i].is_string()) out.push_back(text(p[i].get<std::string>()));
      else if (p[i].is_array() && !p[i].empty()) out.push_back(ids(token_ids(p[i], key)));
      else throw bad("prompt", "'" + key + "' must be a string or a non-empty array of token ids");
    }
  } else {
    throw bad("prompt", "'prompt' must be a string, an array of strings, an array of token ids or an array of "
                        "arrays of token ids, and not empty");
  }
  for (const auto& in : out)
    if (!in.is_ids && in.text.empty()) throw bad("prompt", "'prompt' must not be empty");
  return out;
}

}  // namespace

nlohmann::json parse_json_object(std::string_view body_text) {
  json body;
  try {
    body = json::parse(body_text, [](int depth, json::parse_event_t, json&) {
      if (depth > kMaxDepth) throw ApiError(400, "the request body nests deeper than " + std::to_string(kMaxDepth) + " levels");
      return true;
    });
  } catch (const json::exception& e) {
    throw ApiError(400, std::string("the request body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) throw ApiError(400, std::string("the request body must be a JSON object, not ") + type_name(body));
  return body;
}

OpenAIRequest parse_openai_request(Endpoint endpoint, std::string_view body_text) {
  const json body = parse_json_object(body_text);
  const Fields f(body);
  OpenAIRequest r;
  r.endpoint = endpoint;
  r.model = f.string("model");
  if (endpoint == Endpoint::Chat) {
    const json* m = f.get("messages");
    if (!m) throw bad("messages", "'messages' is required");
    if (!m->is_array() || m->empty()) throw bad("messages", "'messages' must be a non-empty array");
    r.messages = *m;
  } else {
    const json* p = f.get("prompt");
    if (!p) throw bad("prompt", "'prompt' is required");
    r.prompts = parse_prompts(*p);
  }
  // OpenAI's newer name wins when both are given, as in vLLM.
  const auto max_tokens = f.integer("max_tokens", 1, INT32_MAX);
  const auto max_completion = f.integer("max_completion_tokens", 1, INT32_MAX);
  if (max_completion) r.max_tokens = int(*max_completion);
  else if (max_tokens) r.max_tokens = int(*max_tokens);
  r.temperature = float(f.number("temperature", 0.0, 2.0).value_or(1.0));
  r.top_p = float(f.number("top_p", 0.0, 1.0).value_or(1.0));
  if (r.top_p <= 0.0f) throw bad("top_p", "'top_p' must be greater than 0");
  r.top_k = int(f.integer("top_k", -1, INT32_MAX).value_or(0));
  r.min_p = float(f.number("min_p", 0.0, 1.0).value_or(0.0));
  r.n = int(f.integer("n", 1, kMaxN).value_or(1));
  r.stream = f.boolean("stream", false);
  if (const json* so = f.get("stream_options")) {
    if (!so->is_object()) throw bad("stream_options", Fields::fmt_type("stream_options", "an object", *so));
    if (!r.stream) throw bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    r.include_usage = Fields(*so).boolean("include_usage", false);
  }
  if (const json* s = f.get("stop")) {
    if (s->is_string()) {
      r.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      for (const auto& w : *s) {
        if (!w.is_string()) throw bad("stop", "'stop' must be a string or an array of strings");
        r.stop.push_back(w.get<std::string>());
      }
    } else {
      throw bad("stop", "'stop' must be a string or an array of strings");
    }
    for (const auto& w : r.stop)
      if (w.empty()) throw bad("stop", "'stop' strings must not be empty");
  }
  if (const json* s = f.get("stop_token_ids")) {
    if (!s->is_array()) throw bad("stop_token_ids", Fields::fmt_type("stop_token_ids", "an array", *s));
    r.stop_token_ids = token_ids(*s, "stop_token_ids");
  }
  if (const json* s = f.get("seed")) r.seed = Fields::checked_int(*s, "seed", INT64_MIN, INT64_MAX);
  r.presence_penalty = float(f.number("presence_penalty", -2.0, 2.0).value_or(0.0));
  r.frequency_penalty = float(f.number("frequency_penalty", -2.0, 2.0).value_or(0.0));
  r.repetition_penalty = float(f.number("repetition_penalty", 0.0, 100.0).value_or(1.0));
  if (r.repetition_penalty <= 0.0f) throw bad("repetition_penalty", "'repetition_penalty' must be greater than 0");
  if (endpoint == Endpoint::Chat) {
    const bool logprobs = f.boolean("logprobs", false);
    const auto top = f.integer("top_logprobs", 0, kMaxLogprobs);
    if (top && *top > 0 && !logprobs) throw bad("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
    if (logprobs) r.logprobs = int(top.value_or(0));
    r.add_generation_prompt = f.boolean("add_generation_prompt", true);
    if (const json* k = f.get("chat_template_kwargs")) {
      if (!k->is_object()) throw bad("chat_template_kwargs", Fields::fmt_type("chat_template_kwargs", "an object", *k));
      r.chat_template_kwargs = *k;
    }
  } else {
    if (auto lp = f.integer("logprobs", 0, kMaxLogprobs)) r.logprobs = int(*lp);
    r.echo = f.boolean("echo", false);
  }
  r.ignore_eos = f.boolean("ignore_eos", false);
  r.min_tokens = int(f.integer("min_tokens", 0, INT32_MAX).value_or(0));
  if (r.max_tokens && r.min_tokens > *r.max_tokens)
    throw bad("min_tokens", "'min_tokens' must not be greater than 'max_tokens'");
  r.skip_special_tokens = f.boolean("skip_special_tokens", true);
  r.include_stop_str_in_output = f.boolean("include_stop_str_in_output", false);
  if (const json* b = f.get("logit_bias")) {
    if (!b->is_object()) throw bad("logit_bias", Fields::fmt_type("logit_bias", "an object", *b));
    for (const auto& [k, v] : b->items()) {
      char* end = nullptr;
      errno = 0;
      const long id = std::strtol(k.c_str(), &end, 10);
      if (k.empty() || !std::isdigit(static_cast<unsigned char>(k[0])) || *end != '\0' || errno != 0 || id > INT32_MAX)
        throw bad("logit_bias", "'logit_bias' keys must be token ids, not \"" + k + "\"");
      if (!v.is_number() || !(v.get<double>() >= -100.0 && v.get<double>() <= 100.0))
        throw bad("logit_bias", "'logit_bias' values must be numbers between -100 and 100");
      r.logit_bias.emplace_back(int32_t(id), v.get<float>());
    }
  }
  r.user = f.string("user");
  return r;
}

}  // namespace apus::server
