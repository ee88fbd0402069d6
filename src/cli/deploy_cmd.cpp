// apus deploy: the OpenAI-compatible server. It listens at once (GET /health answers 503 until
// the model is loaded), serves until SIGINT/SIGTERM, then drains: no new connections, requests in
// flight finish (up to --drain_timeout seconds), and it exits.
// apus app-ui: the same server with the web chat page at / (deploy --ui), on port 7860 by default.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fmt/format.h>
#include <iostream>
#include <thread>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "engine/async_engine.h"
#include "model/demo_model.h"
#include "server/http_server.h"
#include "server/openai_server.h"
#include "server/web_ui.h"

namespace apus::cli {

namespace fs = std::filesystem;
using server::ApiError;
using server::HttpRequest;
using server::HttpResponse;

namespace {

struct DeployArgs {
  ModelOptions model;
  LoraOptions lora;
  TemplateOptions tmpl;
  server::HttpOptions http;
  std::vector<std::string> served_model_names;
  std::string api_key;
  std::string infer_backend = "apus";
  int max_model_len = 0;
  int max_num_seqs = 256;
  int max_num_batched_tokens = 0;
  double kv_cache_gib = 1.0;
  size_t max_queued_requests = 0;
  double log_interval = 10.0;
  double drain_timeout = 30.0;
  bool ui = false;  // also serve the web chat page (server/web_ui.h) at /
};

// The directory holding the demo model, written on first use: $APUS_DEMO_DIR, else
// ~/.cache/apus/demo-qwen2 (or $XDG_CACHE_HOME/apus/demo-qwen2).
std::string demo_model_dir() {
  if (const char* d = std::getenv("APUS_DEMO_DIR")) return d;
  fs::path cache;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) cache = x;
  else if (const char* h = std::getenv("HOME"); h && *h) cache = fs::path(h) / ".cache";
  else cache = fs::temp_directory_path();
  return (cache / "apus" / "demo-qwen2").string();
}

// Qwen's tokenizer as scripts/fetch-tokenizers.sh leaves it: $APUS_DEMO_TOKENIZER, else
// third_party/tokenizers/qwen3 in the source tree this binary was built in (found by walking up
// from the executable), else under the current directory.
std::string demo_tokenizer_dir() {
  if (const char* d = std::getenv("APUS_DEMO_TOKENIZER")) return d;
  const fs::path rel = "third_party/tokenizers/qwen3";
  std::error_code ec;
  for (fs::path p = fs::canonical("/proc/self/exe", ec).parent_path(); !ec && !p.empty(); p = p.parent_path()) {
    if (fs::exists(p / rel / "tokenizer.json")) return (p / rel).string();
    if (p == p.root_path()) break;
  }
  return (fs::current_path() / rel).string();
}

// What answers before the model is loaded and around the OpenAI routes.
class Router {
 public:
  explicit Router(bool ui) : ui_(ui) {}
  void handle(const HttpRequest& req, std::shared_ptr<server::Exchange> ex) {
    // The page is served while the model loads too: it waits for /v1/models to answer.
    if (ui_)
      if (auto page = server::web_ui_response(req)) return ex->respond(std::move(*page));
    if (server::OpenAIServer* api = api_.load()) return api->handle(req, std::move(ex));
    if (req.path == "/version")
      return ex->respond({200, "application/json", fmt::format(R"({{"version": "{}"}})", server::apus_version()), {}});
    ex->respond(server::error_response(ApiError(503, "the model is still loading", "", "model_loading", "server_error")));
  }
  void set(server::OpenAIServer* api) { api_.store(api); }

 private:
  const bool ui_;
  std::atomic<server::OpenAIServer*> api_{nullptr};
};

void log_stats(const AsyncEngine& engine, EngineStats& last, std::chrono::steady_clock::time_point& last_t) {
  const auto snap = engine.snapshot();
  const auto now = std::chrono::steady_clock::now();
  const double dt = std::chrono::duration<double>(now - last_t).count();
  const EngineStats& s = snap.stats;
  if (s.prompt_tokens == last.prompt_tokens && s.generated_tokens == last.generated_tokens && snap.running == 0 &&
      snap.waiting == 0)
    return;  // idle: say nothing
  std::cerr << fmt::format(
      "apus: prompt throughput {:.1f} tokens/s, generation throughput {:.1f} tokens/s, running {} reqs, waiting {} "
      "reqs, KV cache usage {:.1f}%, prefix cache hit rate {:.1f}%\n",
      double(s.prompt_tokens - last.prompt_tokens) / dt, double(s.generated_tokens - last.generated_tokens) / dt,
      snap.running, snap.waiting, 100.0 * snap.kv_usage(), 100.0 * snap.prefix_hit_rate());
  last = s;
  last_t = now;
}

void run_deploy(DeployArgs& a) {
  const auto t_start = std::chrono::steady_clock::now();
  // Signals are taken by sigwait below; every thread started from here on has them blocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::string description;
  LoadOptions load = a.model.resolved();
  if (load.model_dir.empty() && load.load_format != "dummy") {
    load.model_dir = demo_model_dir();
    if (!fs::exists(fs::path(load.model_dir) / "config.json")) write_demo_model(demo_tokenizer_dir(), load.model_dir);
    description = kDemoModelNote;
    if (a.served_model_names.empty()) a.served_model_names.push_back("apus-demo");
    std::cerr << "apus: no --model given: serving the built-in demo model (" << load.model_dir << ").\n"
              << "apus: " << kDemoModelNote << "\n";
  }
  if (a.model.parallel.node_rank > 0) {  // another node of a tensor-parallel group: no server here
    a.model.load_group(load);
    return;
  }
  require_tokenizer(load.model_dir, "apus deploy");
  if (a.infer_backend != "apus")
    std::cerr << "apus: --infer_backend " << a.infer_backend << " is accepted for compatibility; Apus is its own backend\n";
  if (a.served_model_names.empty())
    a.served_model_names.push_back(!a.tmpl.model_type.empty() ? a.tmpl.model_type
                                                              : fs::path(load.model_dir).lexically_normal().filename().string());
  if (a.served_model_names[0].empty()) a.served_model_names[0] = fs::absolute(load.model_dir).filename().string();

  Router router(a.ui);
  server::HttpServer http(a.http, [&router](const HttpRequest& r, std::shared_ptr<server::Exchange> ex) {
    router.handle(r, std::move(ex));
  });
  std::thread http_thread([&http] { http.run(); });
  const std::string scheme = a.http.ssl_certfile.empty() ? "http" : "https";
  std::cerr << fmt::format("apus: listening on {}://{}:{} (loading the model)\n", scheme, a.http.host, http.port());

  std::unique_ptr<AsyncEngine> engine;
  std::unique_ptr<server::OpenAIServer> api;
  std::unique_ptr<ModelGroup> group;  // the model (rank 0's part of it with tensor parallelism)
  std::unique_ptr<LoraRegistry> lora;  // after the model: it goes first
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<ChatTemplate> tmpl;
  auto shutdown = [&] {
    router.set(nullptr);
    api.reset();
    engine.reset();  // cancels what still runs; its streams hold connections, so before `http`
    http.stop();
    http_thread.join();
  };
  try {
    group = a.model.load_group(load);
    DecoderModel* model = &group->model();
    lora = a.lora.apply(*model);
    tok = Tokenizer::load(load.model_dir);
    tmpl = a.tmpl.make(*tok, load.model_dir);
    EngineConfig ec;
    ec.kv_cache_bytes = size_t(a.kv_cache_gib * double(size_t(1) << 30));  // CPU
    ec.gpu_memory_utilization = a.model.gpu_memory_utilization;
    ec.max_model_len = a.max_model_len;
    ec.scheduler.max_num_seqs = a.max_num_seqs;
    if (a.max_num_batched_tokens > 0) ec.scheduler.max_num_batched_tokens = a.max_num_batched_tokens;
    engine = std::make_unique<AsyncEngine>(*model, ec, tok.get());
    server::ServerConfig sc;
    sc.model_names = a.served_model_names;
    sc.model_root = load.model_dir;
    sc.model_description = description;
    sc.api_key = a.api_key;
    sc.max_queued_requests = a.max_queued_requests;
    sc.chat_stop_words = a.tmpl.stop_words(*tmpl);
    sc.default_system = a.tmpl.given_system(*tmpl);
    sc.lora = lora.get();
    api = std::make_unique<server::OpenAIServer>(*engine, *tok, *tmpl, sc);
  } catch (...) {
    shutdown();
    throw;
  }
  router.set(api.get());
  const double ready_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  std::cerr << "apus: " << engine->describe_cache() << "\n";
  std::cerr << fmt::format("apus: serving \"{}\" at {}://{}:{}/v1 (ready in {:.2f} s; chat template: {})\n",
                           a.served_model_names[0], scheme, a.http.host, http.port(), ready_s, tmpl->name());
  if (a.ui) std::cerr << fmt::format("apus: web chat at {}://{}:{}/\n", scheme, a.http.host, http.port());

  EngineStats last{};
  auto last_t = std::chrono::steady_clock::now();
  const auto interval = std::chrono::milliseconds(int64_t(std::max(0.1, a.log_interval) * 1000));
  int sig = 0;
  for (;;) {
    timespec ts{time_t(interval.count() / 1000), long(interval.count() % 1000) * 1000000L};
    sig = sigtimedwait(&signals, nullptr, &ts);
    if (sig > 0) break;
    if (a.log_interval > 0) log_stats(*engine, last, last_t);
  }
  std::cerr << fmt::format("apus: {} received: draining ({} requests in flight, up to {:.0f} s)\n", strsignal(sig),
                           http.in_flight(), a.drain_timeout);
  http.stop_accepting();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(int64_t(a.drain_timeout * 1000));
  while (http.in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    timespec ts{0, 50 * 1000000L};
    if (sigtimedwait(&signals, nullptr, &ts) > 0) break;  // a second signal: stop now
  }
  shutdown();
  std::cerr << "apus: stopped\n";
}

// The options of both commands (their defaults are the ones already in `a`).
void add_server_options(CLI::App* app, DeployArgs* a) {
  a->model.add_to(*app);
  a->lora.add_to(*app);
  a->tmpl.add_to(*app);
  app->add_option(opt("host"), a->http.host, "address to bind (0.0.0.0 for every interface)");
  app->add_option(opt("port"), a->http.port, "TCP port (0: any free port)");
  app->add_option(opt("api-key"), a->api_key, "require 'Authorization: Bearer KEY' on /v1/*, /tokenize, /detokenize");
  app->add_option(opt("served-model-name"), a->served_model_names, "model name(s) clients use (default: --model_type, else the directory name)");
  app->add_option(opt("max-model-len"), a->max_model_len, "longest prompt + reply in tokens (default: the model's)");
  app->add_option(opt("max-num-seqs"), a->max_num_seqs, "sequences per batch");
  app->add_option(opt("max-num-batched-tokens"), a->max_num_batched_tokens,
                  fmt::format("tokens per step at most (chunked prefill; default {})",
                              SchedulerConfig{}.max_num_batched_tokens));
  app->add_option(opt("kv-cache-gib"), a->kv_cache_gib, "KV cache memory budget");
  app->add_option(opt("max-queued-requests"), a->max_queued_requests, "refuse (503) beyond this many waiting requests; 0: no limit");
  app->add_option(opt("ssl-certfile"), a->http.ssl_certfile, "PEM certificate chain (HTTPS)");
  app->add_option(opt("ssl-keyfile"), a->http.ssl_keyfile, "PEM private key (HTTPS)");
  app->add_option(opt("log-interval"), a->log_interval, "seconds between throughput log lines (0: off)");
  app->add_option(opt("drain-timeout"), a->drain_timeout, "seconds SIGTERM waits for requests in flight");
  app->add_option(opt("http-threads"), a->http.threads, "threads serving connections");
  app->add_option(opt("max-body-bytes"), a->http.max_body_bytes, "larger request bodies get 413");
  app->add_option(opt("infer-backend"), a->infer_backend, "accepted for the reference tool's scripts (vllm, pt): Apus is its own backend");
}

}  // namespace

void add_deploy(CLI::App& root) {
  auto a = std::make_shared<DeployArgs>();
  CLI::App* app = root.add_subcommand("deploy", "OpenAI-compatible HTTP server (the demo model when no --model is given)");
  add_server_options(app, a.get());
  app->add_flag("--ui", a->ui, "also serve the web chat page at / (what apus app-ui serves)");
  app->callback([a] { run_deploy(*a); });
}

void add_app_ui(CLI::App& root) {
  auto a = std::make_shared<DeployArgs>();
  a->ui = true;
  a->http.port = 7860;
  CLI::App* app = root.add_subcommand(
      "app-ui", "web chat page in the browser, served with the OpenAI API it uses (apus deploy --ui on port 7860)");
  add_server_options(app, a.get());
  // The reference tool's app-ui names them so.
  app->add_option("--server-name,--server_name", a->http.host, "the same as --host");
  app->add_option("--server-port,--server_port", a->http.port, "the same as --port");
  app->callback([a] { run_deploy(*a); });
}

}  // namespace apus::cli
