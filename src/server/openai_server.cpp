#include "server/openai_server.h"

#include <chrono>
#include <cmath>
#include <fmt/format.h>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "model/config.h"
#include "server/openai_protocol.h"
#include "text/jinja/jinja.h"

namespace apus::server {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string apus_version() { return "0.1.0"; }

namespace {

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

HttpResponse json_response(const json& j, int status = 200) { return {status, "application/json", dump(j), {}}; }

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// JSON has no -inf; vLLM reports -9999.0 for impossible tokens.
double finite_logprob(float lp) { return std::isfinite(lp) ? double(lp) : -9999.0; }

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

json byte_list(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}

// body[key] as a boolean (`fallback` when absent or null).
bool flag(const json& body, const char* key, bool fallback) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw ApiError(400, fmt::format("'{}' must be a boolean", key), key);
  return it->get<bool>();
}

}  // namespace

HttpResponse error_response(const ApiError& e) { return {e.status, "application/json", e.body(), {}}; }

// One chat or completions request (one or more prompts, n choices each) on its way through the
// engine. Outputs arrive on the engine's loop thread; the client may leave on the HTTP thread.
struct OpenAIServer::Job {
  struct Prompt {
    std::vector<int32_t> ids;
    std::string text;  // for echo
    // The engine's stream owns the job (through its output callback), so the job only points back;
    // `stream` is used only from that callback, `id` (to abort) at any time.
    RequestStream* stream = nullptr;
    uint64_t id = 0;
    bool first_token_seen = false;
  };
  struct Choice {
    std::string text;
    int num_tokens = 0;
    json logprobs;  // chat: {"content": [...]}; completions: {"tokens": [...], ...}
    size_t text_offset = 0;
    std::string finish_reason, stop_reason;
    bool finished = false;
    Clock::time_point first_token;
  };

  bool chat = true, stream = false, include_usage = false, echo = false;
  std::optional<int> logprobs;
  int n = 1;
  std::string id, model;
  int64_t created = 0;
  std::shared_ptr<Exchange> ex;
  std::shared_ptr<ServerMetrics> metrics;
  const Tokenizer* tok = nullptr;
  AsyncEngine* engine = nullptr;
  Clock::time_point t0 = Clock::now();

  std::mutex mu;
  std::vector<Prompt> prompts;
  std::vector<Choice> choices;
  size_t open = 0;
  bool closed = false;  // answered, failed or cancelled

  std::string token_text(int32_t t) const { return tok->decode({t}, false); }

  json chat_logprob(int32_t t, float lp, const std::vector<std::pair<int, float>>& top) const {
    const std::string s = token_text(t);
    json alts = json::array();
    for (auto [alt, l] : top) {
      const std::string ts = token_text(alt);
      alts.push_back({{"token", ts}, {"logprob", finite_logprob(l)}, {"bytes", byte_list(ts)}});
    }
    return {{"token", s}, {"logprob", finite_logprob(lp)}, {"bytes", byte_list(s)}, {"top_logprobs", alts}};
  }

  // Completions' parallel arrays; a null logprob for the first prompt token (nothing precedes it).
  void completion_logprob(json& acc, Choice& ch, int32_t t, std::optional<float> lp,
                          const std::vector<std::pair<int, float>>* top) const {
    const std::string s = token_text(t);
    acc["tokens"].push_back(s);
    acc["token_logprobs"].push_back(lp ? json(finite_logprob(*lp)) : json());
    if (top) {
      json alts = json::object();
      for (auto [alt, l] : *top) alts[token_text(alt)] = finite_logprob(l);
      acc["top_logprobs"].push_back(alts);
    } else {
      acc["top_logprobs"].push_back(nullptr);
    }
    acc["text_offset"].push_back(ch.text_offset);
    ch.text_offset += code_points(s);
  }

  static json empty_logprobs(bool chat) {
    if (chat) return {{"content", json::array()}};
    return {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
            {"text_offset", json::array()}};
  }

  json chunk(json choices_json) const {
    return {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
            {"model", model}, {"choices", std::move(choices_json)}};
  }

  json usage() const {
    int64_t prompt_tokens = 0, completion_tokens = 0;
    for (const auto& p : prompts) prompt_tokens += int64_t(p.ids.size());
    for (const auto& c : choices) completion_tokens += c.num_tokens;
    return {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens},
            {"total_tokens", prompt_tokens + completion_tokens}};
  }

  // Chat streams open each choice with the assistant's role, as OpenAI does.
  void start_stream() {
    ex->begin_stream(200, "text/event-stream");
    std::string out;
    if (chat) {
      for (size_t c = 0; c < choices.size(); ++c)
        out += sse(chunk(json::array({{{"index", c}, {"delta", {{"role", "assistant"}, {"content", ""}}},
                                       {"logprobs", nullptr}, {"finish_reason", nullptr}}})));
    } else if (echo) {
      for (size_t c = 0; c < choices.size(); ++c) {
        Choice& ch = choices[c];
        ch.text_offset = code_points(prompts[c / size_t(n)].text);
        out += sse(chunk(json::array({{{"index", c}, {"text", prompts[c / size_t(n)].text}, {"logprobs", nullptr},
                                       {"finish_reason", nullptr}}})));
      }
    }
    if (!out.empty()) ex->send(std::move(out));
  }

  // Called on the loop thread whenever prompt p's stream has news.
  void drain(size_t p) {
    std::lock_guard<std::mutex> lock(mu);
    if (closed) return;
    std::string out;
    SeqOutput o;
    while (prompts[p].stream->try_next(o)) take(p, o, out);
    if (!out.empty()) ex->send(std::move(out));
    const std::string error = prompts[p].stream->error();
    if (!error.empty() && !closed) return fail(error);
    if (open == 0) finish();
  }

  void take(size_t p, SeqOutput& o, std::string& out) {
    const size_t c = p * size_t(n) + size_t(o.index);
    Choice& ch = choices.at(c);
    if (!o.new_tokens.empty() && !prompts[p].first_token_seen) {
      prompts[p].first_token_seen = true;
      metrics->ttft.observe(seconds_since(t0));
    }
    if (!o.new_tokens.empty() && ch.num_tokens == 0) ch.first_token = Clock::now();
    json delta_lp;  // this output's logprobs, in the endpoint's shape
    if (logprobs) {
      delta_lp = empty_logprobs(chat);
      // echo + logprobs: the prompt's own tokens come first (the first one has no logprob).
      if (!chat && echo && ch.num_tokens == 0 && !o.new_tokens.empty()) {
        const auto& ids = prompts[p].ids;
        Choice scratch;  // prompt offsets start at 0
        completion_logprob(delta_lp, scratch, ids[0], std::nullopt, nullptr);
        for (size_t i = 0; i < o.prompt_logprobs.size(); ++i)
          completion_logprob(delta_lp, scratch, o.prompt_logprobs[i].token, o.prompt_logprobs[i].logprob,
                             &o.prompt_logprobs[i].top);
        if (!stream) ch.text_offset = scratch.text_offset;
      }
      for (size_t k = 0; k < o.new_tokens.size() && k < o.new_token_logprobs.size(); ++k) {
        if (chat) delta_lp["content"].push_back(chat_logprob(o.new_tokens[k], o.new_token_logprobs[k], o.logprobs[k]));
        else completion_logprob(delta_lp, ch, o.new_tokens[k], o.new_token_logprobs[k], &o.logprobs[k]);
      }
      if (ch.logprobs.is_null()) ch.logprobs = empty_logprobs(chat);
      for (auto& [key, arr] : delta_lp.items())
        for (auto& v : arr) ch.logprobs[key].push_back(v);
    }
    ch.num_tokens += int(o.new_tokens.size());
    ch.text += o.text;
    if (o.finished) {
      ch.finished = true;
      ch.finish_reason = o.finish_reason;
      ch.stop_reason = o.stop_reason;
      --open;
      (o.finish_reason == "length" ? metrics->finished_length : metrics->finished_stop)++;
      metrics->e2e.observe(seconds_since(t0));
      if (ch.num_tokens > 1)
        metrics->tpot.observe(std::chrono::duration<double>(Clock::now() - ch.first_token).count() / (ch.num_tokens - 1));
    }
    if (!stream) return;
    const bool has_lp = logprobs && !delta_lp.empty() && !(chat ? delta_lp["content"].empty() : delta_lp["tokens"].empty());
    if (o.text.empty() && !o.finished && !has_lp) return;
    json choice = {{"index", c}};
    if (chat) {
      choice["delta"] = o.text.empty() && o.finished ? json::object() : json{{"content", o.text}};
    } else {
      choice["text"] = o.text;
    }
    choice["logprobs"] = has_lp ? delta_lp : json();
    choice["finish_reason"] = o.finished ? json(o.finish_reason) : json();
    if (o.finished) choice["stop_reason"] = o.stop_reason.empty() ? json() : json(o.stop_reason);
    out += sse(chunk(json::array({choice})));
  }

  void finish() {
    closed = true;
    if (stream) {
      std::string out;
      if (include_usage) {
        json u = chunk(json::array());
        u["usage"] = usage();
        out += sse(u);
      }
      out += "data: [DONE]\n\n";
      ex->send(std::move(out));
      ex->end_stream();
      return;
    }
    json cs = json::array();
    for (size_t c = 0; c < choices.size(); ++c) {
      const Choice& ch = choices[c];
      json j = {{"index", c}};
      if (chat) j["message"] = {{"role", "assistant"}, {"content", ch.text}};
      else j["text"] = echo ? prompts[c / size_t(n)].text + ch.text : ch.text;
      j["logprobs"] = logprobs ? (ch.logprobs.is_null() ? empty_logprobs(chat) : ch.logprobs) : json();
      j["finish_reason"] = ch.finish_reason;
      j["stop_reason"] = ch.stop_reason.empty() ? json() : json(ch.stop_reason);
      cs.push_back(std::move(j));
    }
    json r = {{"id", id}, {"object", chat ? "chat.completion" : "text_completion"}, {"created", created},
              {"model", model}, {"choices", cs}, {"usage", usage()}};
    ex->respond(json_response(r));
  }

  void fail(const std::string& message) {
    closed = true;
    for (auto& p : prompts)
      if (p.id) engine->abort(p.id);
    const ApiError e(500, message, "", "internal_error");
    if (stream) {
      ex->send("data: " + e.body() + "\n\ndata: [DONE]\n\n");
      ex->end_stream();
    } else {
      ex->respond(error_response(e));
    }
  }

  // The client went away: stop generating for it.
  void cancel() {
    std::lock_guard<std::mutex> lock(mu);
    if (closed) return;
    closed = true;
    metrics->aborted++;
    for (auto& p : prompts)
      if (p.id) engine->abort(p.id);
  }
};

OpenAIServer::OpenAIServer(AsyncEngine& engine, const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                           ServerConfig config)
    : engine_(engine),
      tok_(tokenizer),
      tmpl_(chat_template),
      config_(std::move(config)),
      metrics_(std::make_shared<ServerMetrics>()),
      created_(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count()) {
  APUS_CHECK(!config_.model_names.empty(), "the server needs a model name");
  chat_stop_ids_ = special_stop_ids(tok_, config_.chat_stop_words);
}

OpenAIServer::~OpenAIServer() = default;

LoraRef OpenAIServer::resolve_model(const std::string& name) const {
  if (name.empty()) return {};
  for (const auto& m : config_.model_names)
    if (m == name) return {};
  if (config_.lora)
    if (auto ref = config_.lora->find(name)) return *ref;
  throw ApiError(404, fmt::format("The model `{}` does not exist.", name), "model", "model_not_found");
}

HttpResponse OpenAIServer::load_lora(const HttpRequest& req) {
  if (!config_.lora) throw ApiError(400, "LoRA serving is off: start the server with --lora_modules or --max_loras");
  const json body = parse_json_object(req.body);
  if (!body.is_object() || !body.contains("lora_name") || !body["lora_name"].is_string() || !body.contains("lora_path") ||
      !body["lora_path"].is_string())
    throw ApiError(400, "expected {\"lora_name\": string, \"lora_path\": string}");
  const std::string name = body["lora_name"];
  for (const auto& m : config_.model_names)
    if (m == name) throw ApiError(400, fmt::format("`{}` is the base model's name", name), "lora_name");
  try {
    config_.lora->load(name, body["lora_path"]);
  } catch (const Error& e) {
    throw ApiError(400, e.what(), "lora_path");
  }
  return {200, "text/plain", fmt::format("Success: LoRA adapter '{}' added successfully.", name), {}};
}

HttpResponse OpenAIServer::unload_lora(const HttpRequest& req) {
  if (!config_.lora) throw ApiError(400, "LoRA serving is off: start the server with --lora_modules or --max_loras");
  const json body = parse_json_object(req.body);
  if (!body.is_object() || !body.contains("lora_name") || !body["lora_name"].is_string())
    throw ApiError(400, "expected {\"lora_name\": string}");
  const std::string name = body["lora_name"];
  // Waits (on this connection's thread) for the adapter's running requests to finish.
  if (!config_.lora->unload(name))
    throw ApiError(404, fmt::format("The LoRA adapter `{}` is not loaded.", name), "lora_name", "model_not_found");
  return {200, "text/plain", fmt::format("Success: LoRA adapter '{}' removed successfully.", name), {}};
}

HttpResponse OpenAIServer::models() const {
  json data = json::array();
  for (const auto& name : config_.model_names) {
    json m = {{"id", name}, {"object", "model"}, {"created", created_}, {"owned_by", "apus"},
              {"root", config_.model_root}, {"parent", nullptr}, {"max_model_len", engine_.max_model_len()}};
    if (!config_.model_description.empty()) m["description"] = config_.model_description;
    data.push_back(m);
  }
  if (config_.lora)
    for (const auto& a : config_.lora->list())
      data.push_back({{"id", a.name}, {"object", "model"}, {"created", created_}, {"owned_by", "apus"},
                      {"root", a.path}, {"parent", config_.model_names[0]}, {"max_model_len", engine_.max_model_len()}});
  return json_response({{"object", "list"}, {"data", data}});
}

void OpenAIServer::handle(const HttpRequest& req, std::shared_ptr<Exchange> ex) {
  try {
    const std::string& path = req.path;
    const bool protected_path = path.rfind("/v1/", 0) == 0 || path == "/tokenize" || path == "/detokenize";
    if (protected_path && !config_.api_key.empty() && req.header("Authorization") != "Bearer " + config_.api_key)
      throw ApiError(401, "Incorrect or missing API key: send it as 'Authorization: Bearer KEY'", "", "invalid_api_key",
                     "invalid_request_error");
    auto need = [&](const char* method) {
      if (req.method != method) throw ApiError(405, fmt::format("{} {} is not supported; use {}", req.method, path, method));
    };
    if (path == "/health") {
      need("GET");
      return ex->respond({200, "application/json", "", {}});
    }
    if (path == "/version") {
      need("GET");
      return ex->respond(json_response({{"version", apus_version()}}));
    }
    if (path == "/metrics") {
      need("GET");
      return ex->respond({200, "text/plain; version=0.0.4", metrics_->render(engine_.snapshot(), config_.model_names[0]), {}});
    }
    if (path == "/v1/models") {
      need("GET");
      return ex->respond(models());
    }
    if (path == "/v1/chat/completions" || path == "/v1/completions") {
      need("POST");
      return completions(req, ex, path == "/v1/chat/completions");
    }
    if (path == "/v1/load_lora_adapter") {
      need("POST");
      return ex->respond(load_lora(req));
    }
    if (path == "/v1/unload_lora_adapter") {
      need("POST");
      return ex->respond(unload_lora(req));
    }
    if (path == "/tokenize") {
      need("POST");
      return ex->respond(tokenize(req));
    }
    if (path == "/detokenize") {
      need("POST");
      return ex->respond(detokenize(req));
    }
    throw ApiError(404, fmt::format("no route for {} {}", req.method, path), "", "not_found");
  } catch (const ApiError& e) {
    metrics_->rejected++;
    ex->respond(error_response(e));
  } catch (const std::exception& e) {
    // A request that fails in the template or the tokenizer is the client's: say why.
    metrics_->rejected++;
    ex->respond(error_response(ApiError(400, e.what())));
  }
}

void OpenAIServer::completions(const HttpRequest& http, std::shared_ptr<Exchange> ex, bool chat) {
  const OpenAIRequest r = parse_openai_request(chat ? Endpoint::Chat : Endpoint::Completion, http.body);
  const LoraRef lora = resolve_model(r.model);

  auto job = std::make_shared<Job>();
  job->chat = chat;
  job->stream = r.stream;
  job->include_usage = r.include_usage;
  job->echo = r.echo;
  job->logprobs = r.logprobs;
  job->n = r.n;
  job->model = r.model.empty() ? config_.model_names[0] : r.model;
  job->id = fmt::format("{}-{:016x}{:08x}", chat ? "chatcmpl" : "cmpl", next_id_++, std::random_device{}());
  job->created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  job->ex = ex;
  job->metrics = metrics_;
  job->tok = &tok_;
  job->engine = &engine_;

  const int64_t vocab = engine_.vocab_size();
  const int max_len = engine_.max_model_len();
  if (chat) {
    RenderedPrompt rp = render_chat(r.messages, r.add_generation_prompt, r.chat_template_kwargs);
    job->prompts.push_back({std::move(rp.ids), std::move(rp.text)});
  } else {
    for (const PromptInput& in : r.prompts) {
      if (in.is_ids) job->prompts.push_back({in.ids, r.echo ? tok_.decode(in.ids, false) : std::string()});
      else job->prompts.push_back({tok_.encode(in.text, true), in.text});
    }
  }

  constexpr size_t kMaxChoices = 4096;  // prompts x n in one request: beyond this, send several requests
  if (job->prompts.size() * size_t(r.n) > kMaxChoices)
    throw ApiError(400, fmt::format("{} prompts x n={} is more than {} choices in one request", job->prompts.size(), r.n, kMaxChoices),
                   "prompt");
  std::vector<Request> requests;
  uint64_t seed = r.seed ? uint64_t(*r.seed) : (uint64_t(std::random_device{}()) << 32 | std::random_device{}());
  for (const auto& p : job->prompts) {
    const int len = int(p.ids.size());
    const char* param = chat ? "messages" : "prompt";
    if (len == 0) throw ApiError(400, "the prompt is empty", param);
    for (int32_t t : p.ids)
      if (t < 0 || t >= vocab) throw ApiError(400, fmt::format("token id {} is outside the vocabulary (size {})", t, vocab), param);
    if (len >= max_len || (r.max_tokens && int64_t(len) + *r.max_tokens > max_len))
      throw ApiError(400,
                     fmt::format("This model's maximum context length is {} tokens. However, you requested {} tokens ({} in "
                                 "the {}, {} for the completion). Please reduce the length of the {} or completion.",
                                 max_len, int64_t(len) + r.max_tokens.value_or(0), len, param, r.max_tokens.value_or(0), param),
                     param, "context_length_exceeded");
    Request q;
    q.prompt = p.ids;
    q.n = r.n;
    SamplingParams& sp = q.params;
    sp.max_tokens = r.max_tokens.value_or(max_len - len);
    sp.temperature = r.temperature;
    sp.top_p = r.top_p;
    sp.top_k = r.top_k;
    sp.min_p = r.min_p;
    sp.seed = seed;
    sp.ignore_eos = r.ignore_eos;
    sp.logprobs = r.logprobs.value_or(-1);
    if (r.echo && r.logprobs) sp.prompt_logprobs = *r.logprobs;
    sp.min_tokens = r.min_tokens;
    sp.repetition_penalty = r.repetition_penalty;
    sp.presence_penalty = r.presence_penalty;
    sp.frequency_penalty = r.frequency_penalty;
    sp.logit_bias = r.logit_bias;
    for (int32_t t : r.stop_token_ids)
      if (t >= vocab) throw ApiError(400, fmt::format("stop_token_ids: {} is outside the vocabulary", t), "stop_token_ids");
    for (auto [t, b] : sp.logit_bias)
      if (t >= vocab) throw ApiError(400, fmt::format("logit_bias token id {} is outside the vocabulary", t), "logit_bias");
    q.stop = r.stop;
    q.stop_token_ids = r.stop_token_ids;
    if (chat) {
      q.stop.insert(q.stop.end(), config_.chat_stop_words.begin(), config_.chat_stop_words.end());
      q.stop_token_ids.insert(q.stop_token_ids.end(), chat_stop_ids_.begin(), chat_stop_ids_.end());
    }
    q.skip_special_tokens = r.skip_special_tokens;
    q.include_stop_str_in_output = r.include_stop_str_in_output;
    q.lora = lora;
    requests.push_back(std::move(q));
  }
  if (config_.max_queued_requests && engine_.num_queued() + requests.size() > config_.max_queued_requests)
    throw ApiError(503, fmt::format("the server is busy: {} requests are already waiting (--max_queued_requests); retry later",
                                    engine_.num_queued()),
                   "", "queue_full", "server_error");

  job->choices.resize(job->prompts.size() * size_t(r.n));
  job->open = job->choices.size();
  // Outputs may arrive as soon as a request is submitted; they wait on the job's lock until every
  // prompt is in and the stream has begun.
  std::lock_guard<std::mutex> lock(job->mu);
  ex->on_close([weak = std::weak_ptr<Job>(job)] {
    if (auto j = weak.lock()) j->cancel();
  });
  if (job->stream) job->start_stream();
  for (size_t p = 0; p < requests.size(); ++p) {
    try {
      auto stream = engine_.submit(std::move(requests[p]), [job, p] { job->drain(p); });
      job->prompts[p].stream = stream.get();
      job->prompts[p].id = stream->id();
    } catch (const Error& e) {
      for (size_t i = 0; i < p; ++i) engine_.abort(job->prompts[i].id);
      job->closed = true;
      if (job->stream) {
        ex->send("data: " + ApiError(400, e.what()).body() + "\n\ndata: [DONE]\n\n");
        ex->end_stream();
        return;
      }
      throw ApiError(400, e.what());
    }
  }
}

RenderedPrompt OpenAIServer::render_chat(const json& messages_json, bool add_generation_prompt, const json& kwargs) const {
  std::vector<ChatMessage> messages = parse_messages(messages_json);
  if (config_.default_system) messages = with_default_system(std::move(messages), *config_.default_system);
  try {
    return tmpl_.render(messages, add_generation_prompt, nlohmann::ordered_json(kwargs));
  } catch (const jinja::TemplateRaised& e) {
    throw ApiError(400, e.what(), "messages");
  }
}

HttpResponse OpenAIServer::tokenize(const HttpRequest& req) const {
  const json body = parse_json_object(req.body);
  if (body.contains("model") && body["model"].is_string()) check_model(body["model"].get<std::string>());
  std::vector<int32_t> ids;
  if (body.contains("messages")) {
    ids = render_chat(body["messages"], flag(body, "add_generation_prompt", true)).ids;
  } else if (body.contains("prompt") && body["prompt"].is_string()) {
    ids = tok_.encode(body["prompt"].get<std::string>(), flag(body, "add_special_tokens", true));
  } else {
    throw ApiError(400, "give 'prompt' (a string) or 'messages'", "prompt");
  }
  json out = {{"count", ids.size()}, {"max_model_len", engine_.max_model_len()}, {"tokens", ids}, {"token_strs", nullptr}};
  if (flag(body, "return_token_strs", false)) {
    json strs = json::array();
    for (int32_t t : ids) strs.push_back(tok_.id_to_token(t));
    out["token_strs"] = strs;
  }
  return json_response(out);
}

HttpResponse OpenAIServer::detokenize(const HttpRequest& req) const {
  const json body = parse_json_object(req.body);
  if (body.contains("model") && body["model"].is_string()) check_model(body["model"].get<std::string>());
  const auto it = body.find("tokens");
  if (it == body.end() || !it->is_array()) throw ApiError(400, "'tokens' must be an array of token ids", "tokens");
  std::vector<int32_t> ids;
  const int64_t vocab = engine_.vocab_size();
  for (const auto& t : *it) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= vocab)
      throw ApiError(400, fmt::format("'tokens' must hold token ids from 0 to {}", vocab - 1), "tokens");
    ids.push_back(int32_t(t.get<int64_t>()));
  }
  return json_response({{"prompt", tok_.decode(ids, false)}});
}

}  // namespace apus::server
