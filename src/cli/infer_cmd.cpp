// `apus infer`: the reference tool's `swift infer` (ms-swift 2.x). Without --val_dataset it is an
// interactive chat that streams each answer and keeps the history; with it, the whole data set
// runs as one batch. Every exchange is appended to infer_result/<YYYYMMDD-HHMMSS>.jsonl under the
// current directory, with the fields the reference writes.
#include <signal.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/infer.h"
#include "core/error.h"
#include "text/chat_template.h"

namespace apus::cli {

void append_jsonl(const std::filesystem::path& path, const nlohmann::ordered_json& obj) {
  std::ofstream out(path, std::ios::app);
  out << obj.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  APUS_CHECK(out.flush().good(), "cannot write {}", path.string());
}

nlohmann::ordered_json result_line(const InferRequest& request, const std::string& response,
                                   const nlohmann::ordered_json* label) {
  nlohmann::ordered_json line;
  line["system"] = request.system ? nlohmann::ordered_json(*request.system) : nlohmann::ordered_json(nullptr);
  line["query"] = request.query;
  line["response"] = response;
  if (label) line["label"] = *label;
  nlohmann::ordered_json history = nlohmann::ordered_json::array();
  for (const auto& [query, answer] : request.history) history.push_back({query, answer});
  line["history"] = std::move(history);
  return line;
}

namespace {

// Generation options: each one given overrides the checkpoint's generation_config.json (which
// LlmEngine reads; greedy unless it sets do_sample).
struct GenerationOptions {
  GenerationConfig values;
  CLI::Option *max_new_tokens = nullptr, *do_sample = nullptr, *temperature = nullptr, *top_p = nullptr,
              *top_k = nullptr, *repetition_penalty = nullptr, *seed = nullptr, *stop_words = nullptr;

  void add_to(CLI::App& app) {
    max_new_tokens = app.add_option(opt("max-new-tokens") + "," + opt("max-tokens"), values.max_new_tokens,
                                    "tokens to generate per answer (default 2048)");
    do_sample = app.add_option(opt("do-sample"), values.do_sample, "true | false (false: greedy)");
    temperature = app.add_option(opt("temperature"), values.temperature, "0 = greedy; > 0 samples");
    top_p = app.add_option(opt("top-p"), values.top_p);
    top_k = app.add_option(opt("top-k"), values.top_k);
    repetition_penalty = app.add_option(opt("repetition-penalty"), values.repetition_penalty);
    seed = app.add_option(opt("seed"), values.seed);
    stop_words = app.add_option(opt("stop-words"), values.stop, "more stop strings");
  }

  void apply(GenerationConfig& g) const {
    if (max_new_tokens->count()) g.max_new_tokens = values.max_new_tokens;
    if (temperature->count()) {
      g.temperature = values.temperature;
      g.do_sample = values.temperature > 0.0f;  // as in `apus generate`, temperature 0 is greedy
    }
    if (do_sample->count()) g.do_sample = values.do_sample;
    if (top_p->count()) g.top_p = values.top_p;
    if (top_k->count()) g.top_k = values.top_k;
    if (repetition_penalty->count()) g.repetition_penalty = values.repetition_penalty;
    if (seed->count()) g.seed = values.seed;
    if (stop_words->count()) g.stop = values.stop;
  }
};

struct InferArgs {
  ModelOptions model;
  LoraOptions lora;
  std::string lora_request;
  TemplateOptions tmpl;
  GenerationOptions gen;
  std::string val_dataset;
  int max_model_len = 0;
  int max_num_seqs = 0;  // 0: apply_offline_batch_limits
};

// Blocks SIGINT in this thread while the engine starts its worker threads, which inherit the
// mask: a Ctrl-C then always reaches the main thread, whose read of the next input line it must
// interrupt (infer_repl.cpp).
class SigintBlocked {
 public:
  SigintBlocked() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  ~SigintBlocked() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

 private:
  sigset_t old_;
};

std::filesystem::path new_result_path() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char name[32];
  std::strftime(name, sizeof name, "%Y%m%d-%H%M%S.jsonl", &local);
  const std::filesystem::path dir = "infer_result";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  APUS_CHECK(!ec, "cannot create {}: {}", std::filesystem::absolute(dir).string(), ec.message());
  return dir / name;
}

void run_infer(const InferArgs& a) {
  const std::string& dir = a.model.load.model_dir;
  require_tokenizer(dir, "infer");
  // LlmEngine loads from the directory; a preset config or a non-default dummy dtype would be ignored.
  APUS_CHECK(a.model.load.config_preset.empty(), "infer takes its config from --model DIR; --config-preset is for generate and bench");
  APUS_CHECK(a.model.dtype == "bfloat16" || a.model.dtype == "bf16", "infer loads dummy weights as bfloat16 only (--dtype)");
  std::vector<DatasetSample> samples;
  if (!a.val_dataset.empty()) samples = read_dataset(a.val_dataset);

  EngineOptions eo;
  eo.model_type = a.tmpl.model_type;
  eo.load_format = a.model.load.load_format;
  eo.num_threads = a.model.num_threads();
  eo.device = a.model.device;
  eo.gpu_memory_utilization = a.model.gpu_memory_utilization;
  eo.max_model_len = a.max_model_len;
  eo.tensor_parallel_size = a.model.parallel.tensor_parallel_size;
  eo.max_num_seqs = a.max_num_seqs;
  eo.lora_modules = a.lora.modules;
  eo.max_loras = a.lora.max_loras;
  eo.max_lora_rank = a.lora.max_lora_rank;
  std::unique_ptr<LlmEngine> engine;
  {
    SigintBlocked blocked;
    engine = LlmEngine::load(dir, eo);
  }
  a.gen.apply(engine->generation_config);
  auto tmpl = a.tmpl.make(engine->tokenizer(), dir);
  // The template's own stop words apply anyway; --model_type may add its eos token.
  const std::vector<std::string> own = tmpl->stop_words();
  for (const std::string& w : a.tmpl.stop_words(*tmpl))
    if (std::find(own.begin(), own.end(), w) == own.end()) engine->generation_config.stop.push_back(w);

  InferSession session{*engine, *tmpl, a.tmpl.given_system(*tmpl), new_result_path(), ""};
  if (!session.default_system) session.default_system = tmpl->default_system();
  // Requests run with --lora_request, else the first of --lora_modules (as the reference's infer).
  session.lora_request = a.lora_request;
  if (session.lora_request.empty() && !a.lora.modules.empty())
    session.lora_request = LoraRegistry::parse_module(a.lora.modules[0]).first;
  std::cerr << "save_result_path: " << session.result_path.string() << "\n";
  if (a.val_dataset.empty()) run_repl(session);
  else run_dataset(session, std::move(samples));
}

}  // namespace

void add_infer(CLI::App& root) {
  auto* app = root.add_subcommand("infer", "Chat interactively (streaming, with history), or run a --val_dataset");
  auto a = std::make_shared<InferArgs>();
  a->model.add_to(*app, false);
  a->lora.add_to(*app);
  app->add_option(opt("lora-request"), a->lora_request, "the --lora_modules adapter to answer with (default: the first)");
  a->tmpl.add_to(*app);
  a->gen.add_to(*app);
  app->add_option(opt("val-dataset"), a->val_dataset,
                  "a jsonl file of {\"query\", \"response\" (the label), \"history\", \"system\"}: run it all, batched");
  app->add_option(opt("max-model-len"), a->max_model_len, "longest prompt plus answer (default: the model's)");
  app->add_option(opt("max-num-seqs"), a->max_num_seqs, "sequences batched per step (default: 1024 on GPUs of >= 70 GiB, not A100; else 256)");
  app->callback([a] { run_infer(*a); });
}

}  // namespace apus::cli
