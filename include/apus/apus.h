// Apus offline inference API: the reference tool's Python API (get_vllm_engine, get_template,
// inference_vllm, inference_stream_vllm) in C++.
//
//   auto engine = apus::LlmEngine::load("/models/Qwen2.5-7B-Instruct");
//   auto tmpl = apus::get_template(*engine);                 // the checkpoint's own chat template
//   engine->generation_config.max_new_tokens = 256;
//   auto resp = apus::inference(*engine, *tmpl, {{"你好!"}, {"浙江的省会在哪?"}});
//   resp[1].history  // {{"浙江的省会在哪?", "浙江省会是杭州市。"}}
//   apus::inference(*engine, *tmpl, {{"这有什么好吃的", resp[1].history}});
//
// An LlmEngine batches all requests of one call (continuous batching, prefix caching). Calls on
// one LlmEngine must not overlap (use the server for concurrent callers).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace apus {

class ChatTemplate;
class Tokenizer;
struct ModelConfig;

using History = std::vector<std::pair<std::string, std::string>>;  // (query, response) turns

struct InferRequest {
  std::string query;
  History history = {};
  std::optional<std::string> system = std::nullopt;  // else the template's default system
  std::string lora_request = "";  // a LoRA adapter's name (EngineOptions::lora_modules); "": the base model
};

struct InferResponse {
  std::string response;
  History history;            // the request's history plus this turn
  std::string finish_reason;  // "stop" or "length"
};

struct GenerationConfig {
  int max_new_tokens = 2048;
  bool do_sample = false;     // false: greedy
  float temperature = 1.0f;
  float top_p = 1.0f;
  int top_k = 0;
  float repetition_penalty = 1.0f;
  uint64_t seed = 0;
  std::vector<std::string> stop;  // in addition to the template's stop words
};

struct EngineOptions {
  std::string model_type;          // the reference's --model_type (optional)
  std::string load_format = "auto";  // auto | safetensors | dummy
  int num_threads = 0;             // 0: all cores
  std::string device = "auto";     // cpu | cuda | auto (cuda when a GPU is present)
  size_t kv_cache_bytes = size_t(1) << 30;  // on the CPU
  double gpu_memory_utilization = 0.9;      // on a GPU: the share of its memory to use (KV cache: the rest)
  int max_num_seqs = 0;            // 0: 1,024 on GPUs of >= 70 GiB (not A100), else 256 (as vLLM)
  int max_model_len = 0;           // 0: the model's
  int tensor_parallel_size = 1;    // GPUs (or CPU thread groups) to split the model over
  bool verbose = true;             // report the KV cache size on stderr at load
  // LoRA adapters served unmerged beside the base ("name=path", or a bare path named
  // "default-lora"); InferRequest::lora_request picks one per request.
  std::vector<std::string> lora_modules = {};
  int max_loras = 0;               // adapter slots (0: one per lora_modules entry)
  int max_lora_rank = 0;           // 0: 16, or the largest rank among lora_modules
};

class LlmEngine {
 public:
  static std::unique_ptr<LlmEngine> load(const std::string& model_dir, const EngineOptions& options = {});
  ~LlmEngine();

  // Defaults come from the checkpoint's generation_config.json (sampling only when it sets do_sample).
  GenerationConfig generation_config;

  const Tokenizer& tokenizer() const;
  const ModelConfig& model_config() const;
  const std::string& model_dir() const;
  const std::string& model_type() const;  // "" when not given

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  explicit LlmEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The template a model type uses in the reference tool ("" for none given: see get_template).
std::string get_default_template_type(const std::string& model_type);
// `template_type` when given; else the model type's; else the checkpoint's chat_template, else "default".
std::shared_ptr<const ChatTemplate> get_template(const LlmEngine& engine, const std::string& template_type = "");

std::vector<InferResponse> inference(LlmEngine& engine, const ChatTemplate& tmpl,
                                     const std::vector<InferRequest>& requests);
// Calls `on_update` with every request's response so far each time any of them grows. An
// exception from `on_update` cancels the requests still running and propagates.
void inference_stream(LlmEngine& engine, const ChatTemplate& tmpl, const std::vector<InferRequest>& requests,
                      const std::function<void(const std::vector<InferResponse>&)>& on_update);

}  // namespace apus
