// The offline inference API (include/apus/apus.h) over the engine.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "apus/apus.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/engine.h"
#include "lora/registry.h"
#include "model/load.h"
#include "parallel/model_group.h"
#include "text/chat_template.h"
#include "text/model_types.h"

namespace apus {

struct LlmEngine::Impl {
  std::string dir, model_type;
  std::unique_ptr<ModelGroup> group;  // the model, whole or over a tensor-parallel group
  DecoderModel* model = nullptr;      // the group's (rank 0's)
  std::unique_ptr<LoraRegistry> lora;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Engine> engine;
};

namespace {

GenerationConfig read_generation_config(const std::string& dir) {
  GenerationConfig g;
  std::ifstream in(std::filesystem::path(dir) / "generation_config.json");
  if (!in.good()) return g;
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (!j.is_object()) return g;
  g.do_sample = j.value("do_sample", false);
  g.temperature = j.value("temperature", g.temperature);
  g.top_p = j.value("top_p", g.top_p);
  g.top_k = j.value("top_k", g.top_k);
  g.repetition_penalty = j.value("repetition_penalty", g.repetition_penalty);
  return g;
}

Request make_request(LlmEngine& e, const ChatTemplate& tmpl, const InferRequest& r) {
  std::vector<ChatMessage> messages;
  if (r.system) messages.push_back({"system", *r.system});
  for (const auto& [q, a] : r.history) {
    messages.push_back({"user", q});
    messages.push_back({"assistant", a});
  }
  messages.push_back({"user", r.query});
  const GenerationConfig& g = e.generation_config;
  Request req;
  req.prompt = tmpl.render(messages, true).ids;
  req.params.max_tokens = g.max_new_tokens;
  req.params.temperature = g.do_sample ? g.temperature : 0.0f;
  req.params.top_p = g.top_p;
  req.params.top_k = g.top_k;
  req.params.repetition_penalty = g.repetition_penalty;
  req.params.seed = g.seed;
  if (!r.lora_request.empty()) {
    const LoraRegistry* reg = e.impl().lora.get();
    const auto ref = reg ? reg->find(r.lora_request) : std::nullopt;
    APUS_CHECK(ref, "unknown LoRA adapter \"{}\" (EngineOptions::lora_modules)", r.lora_request);
    req.lora = *ref;
  }
  req.stop = tmpl.stop_words();
  req.stop.insert(req.stop.end(), g.stop.begin(), g.stop.end());
  req.stop_token_ids = special_stop_ids(e.tokenizer(), req.stop);
  return req;
}

}  // namespace

LlmEngine::LlmEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LlmEngine::~LlmEngine() = default;

std::unique_ptr<LlmEngine> LlmEngine::load(const std::string& model_dir, const EngineOptions& o) {
  auto impl = std::make_unique<Impl>();
  impl->dir = model_dir;
  impl->model_type = o.model_type;
  if (!o.model_type.empty()) find_model_type(o.model_type);  // unknown names fail early, listing the known ones
  const int threads = o.num_threads > 0 ? o.num_threads : ThreadPool::default_threads();
  LoadOptions lo;
  lo.model_dir = model_dir;
  lo.load_format = o.load_format;
  lo.num_threads = threads;
  ParallelOptions par;
  par.tensor_parallel_size = o.tensor_parallel_size;
  impl->group = std::make_unique<ModelGroup>(lo, o.device, threads, par);
  impl->model = &impl->group->model();
  if (!o.lora_modules.empty() || o.max_loras > 0)
    impl->lora = LoraRegistry::create(*impl->model, o.lora_modules, o.max_loras, o.max_lora_rank);
  impl->tokenizer = Tokenizer::load(model_dir);
  EngineConfig ec;
  ec.kv_cache_bytes = o.kv_cache_bytes;
  ec.gpu_memory_utilization = o.gpu_memory_utilization;
  ec.max_model_len = o.max_model_len;
  ec.scheduler.max_num_seqs = o.max_num_seqs;
  ec.scheduler.max_num_batched_tokens = 0;
  apply_offline_batch_limits(ec.scheduler, impl->model->backend());
  impl->engine = std::make_unique<Engine>(*impl->model, ec, impl->tokenizer.get());
  if (o.verbose) std::cerr << impl->engine->describe_cache() << "\n";
  std::unique_ptr<LlmEngine> e(new LlmEngine(std::move(impl)));
  e->generation_config = read_generation_config(model_dir);
  return e;
}

const Tokenizer& LlmEngine::tokenizer() const { return *impl_->tokenizer; }
const ModelConfig& LlmEngine::model_config() const { return impl_->model->config(); }
const std::string& LlmEngine::model_dir() const { return impl_->dir; }
const std::string& LlmEngine::model_type() const { return impl_->model_type; }

std::string get_default_template_type(const std::string& model_type) {
  return model_type.empty() ? std::string() : std::string(find_model_type(model_type).template_type);
}

std::shared_ptr<const ChatTemplate> get_template(const LlmEngine& engine, const std::string& template_type) {
  const std::string type = template_type.empty() ? get_default_template_type(engine.model_type()) : template_type;
  return select_template(engine.tokenizer(), type, "default", read_special_tokens_map(engine.model_dir()));
}

void inference_stream(LlmEngine& engine, const ChatTemplate& tmpl, const std::vector<InferRequest>& requests,
                      const std::function<void(const std::vector<InferResponse>&)>& on_update) {
  Engine& core = *engine.impl().engine;
  std::vector<uint64_t> ids;
  std::vector<InferResponse> out(requests.size());
  try {
    for (const auto& r : requests) ids.push_back(core.add_request(make_request(engine, tmpl, r)));
  } catch (...) {
    for (uint64_t id : ids) core.abort(id);  // all or nothing
    throw;
  }
  size_t open = requests.size();
  try {
    while (open > 0) {
      bool grew = false;
      for (const SeqOutput& o : core.step()) {
        const size_t i = size_t(std::find(ids.begin(), ids.end(), o.request_id) - ids.begin());
        if (i == ids.size()) continue;
        out[i].response += o.text;
        out[i].history = requests[i].history;
        out[i].history.emplace_back(requests[i].query, out[i].response);
        grew = grew || !o.text.empty() || o.finished;
        if (o.finished) {
          out[i].finish_reason = o.finish_reason;
          --open;
        }
      }
      if (grew && on_update) on_update(out);
    }
  } catch (...) {
    // A failed step, or an on_update that throws to stop early (`apus infer` on Ctrl-C): the
    // unfinished requests must not keep running (and holding KV blocks) into the next call.
    for (uint64_t id : ids) core.abort(id);
    throw;
  }
}

std::vector<InferResponse> inference(LlmEngine& engine, const ChatTemplate& tmpl, const std::vector<InferRequest>& requests) {
  std::vector<InferResponse> result;
  inference_stream(engine, tmpl, requests, [&](const std::vector<InferResponse>& r) { result = r; });
  return result;
}

}  // namespace apus
