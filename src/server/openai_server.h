// The OpenAI-compatible API over an AsyncEngine: /v1/models, /v1/chat/completions,
// /v1/completions, /tokenize, /detokenize, /health, /metrics, /version.
//
// Requests are parsed and rendered on the HTTP thread; their outputs are turned into JSON / SSE
// chunks on the engine's loop thread as they are produced (a few microseconds each) and handed
// to the connection, which writes them on its own thread.
#pragma once
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/async_engine.h"
#include "lora/registry.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_protocol.h"
#include "text/chat_template.h"

namespace apus::server {

struct ServerConfig {
  std::vector<std::string> model_names;  // the first is the primary id; requests may name any
  std::string model_root;                // the checkpoint directory (shown in /v1/models)
  std::string model_description;         // e.g. that the demo model answers with random text
  std::string api_key;                   // non-empty: /v1/*, /tokenize and /detokenize need it
  size_t max_queued_requests = 0;        // 0: unlimited; more waiting requests get 503
  std::vector<std::string> chat_stop_words;  // the template's stop words (and --model_type's eos)
  std::optional<std::string> default_system;  // for conversations without a system message (--system)
  LoraRegistry* lora = nullptr;  // LoRA adapters served beside the base model (--lora_modules), or none
};

class OpenAIServer {
 public:
  // Everything passed in must outlive the server.
  OpenAIServer(AsyncEngine& engine, const Tokenizer& tokenizer, const ChatTemplate& chat_template, ServerConfig config);
  ~OpenAIServer();

  void handle(const HttpRequest& request, std::shared_ptr<Exchange> exchange);
  const ServerMetrics& metrics() const { return *metrics_; }

  struct Job;

 private:
  HttpResponse models() const;
  void completions(const HttpRequest& request, std::shared_ptr<Exchange> exchange, bool chat);
  // An OpenAI messages array as the model's prompt, with --system in front when it has none.
  RenderedPrompt render_chat(const nlohmann::json& messages, bool add_generation_prompt,
                             const nlohmann::json& template_kwargs = nlohmann::json::object()) const;
  HttpResponse tokenize(const HttpRequest& request) const;
  HttpResponse detokenize(const HttpRequest& request) const;
  void check_model(const std::string& name) const { (void)resolve_model(name); }
  // The adapter a request's `model` picks (slot -1: the base model); 404 for an unknown name.
  LoraRef resolve_model(const std::string& name) const;
  // POST /v1/load_lora_adapter {"lora_name", "lora_path"} and /v1/unload_lora_adapter {"lora_name"}.
  HttpResponse load_lora(const HttpRequest& request);
  HttpResponse unload_lora(const HttpRequest& request);

  AsyncEngine& engine_;
  const Tokenizer& tok_;
  const ChatTemplate& tmpl_;
  ServerConfig config_;
  std::shared_ptr<ServerMetrics> metrics_;  // shared with jobs that outlive a request handler
  std::vector<int32_t> chat_stop_ids_;
  std::atomic<uint64_t> next_id_{1};
  int64_t created_;
};

// Routes for the time before the model is loaded (/health answers 503, /version answers) and
// the one place that answers errors in OpenAI's shape.
HttpResponse error_response(const ApiError& e);
std::string apus_version();

}  // namespace apus::server
