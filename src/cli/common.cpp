#include "cli/common.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/thread_pool.h"
#include "text/model_types.h"

namespace apus::cli {

std::string opt(const std::string& dashed) {
  std::string under = dashed;
  std::replace(under.begin(), under.end(), '-', '_');
  return under == dashed ? "--" + dashed : "--" + dashed + ",--" + under;
}

void ModelOptions::add_to(CLI::App& app) {
  app.add_option(opt("model") + "," + opt("model-id-or-path") + "," + opt("ckpt-dir"), load.model_dir,
                 "Hugging Face model directory");
  app.add_option(opt("load-format"), load.load_format, "auto | safetensors | dummy (random weights of the config)");
  app.add_option(opt("config-preset"), load.config_preset, "with dummy weights and no --model: a known model's config");
  app.add_option(opt("dtype"), dtype, "dtype of dummy weights: bfloat16 | float16 | float32");
  app.add_option(opt("quantization"), load.dummy_quantization,
                 "dummy weights only: gptq | awq (4-bit, group 128 linear layers)");
  app.add_option(opt("threads"), threads, "CPU threads (default: all cores, or APUS_NUM_THREADS)");
  app.add_option(opt("device"), device, "cpu | cuda | auto (default: cuda when a GPU is present)");
  app.add_option(opt("gpu-memory-utilization"), gpu_memory_utilization,
                 "share of the GPU's memory for weights, activations and the KV cache (default 0.9)");
}

int ModelOptions::num_threads() const { return threads > 0 ? threads : ThreadPool::default_threads(); }

std::unique_ptr<Backend> ModelOptions::make_backend() const { return apus::make_backend(device, num_threads()); }

LoadOptions ModelOptions::resolved() const {
  LoadOptions o = load;
  o.num_threads = num_threads();
  if (dtype == "bfloat16" || dtype == "bf16") o.dummy_dtype = DType::BF16;
  else if (dtype == "float16" || dtype == "fp16" || dtype == "half") o.dummy_dtype = DType::F16;
  else if (dtype == "float32" || dtype == "fp32" || dtype == "float") o.dummy_dtype = DType::F32;
  else fail("unknown --dtype \"{}\" (bfloat16, float16, float32)", dtype);
  return o;
}

void LoraOptions::add_to(CLI::App& app) {
  app.add_option(opt("lora-modules"), modules, "LoRA adapters to serve: name=path (or a bare path: default-lora)");
  app.add_option(opt("max-loras"), max_loras, "adapters resident at once (default: one per --lora_modules)");
  app.add_option(opt("max-lora-rank"), max_lora_rank, "largest adapter rank (default: 16, or the largest given)");
}

std::unique_ptr<LoraRegistry> LoraOptions::apply(DecoderModel& model) const {
  return enabled() ? LoraRegistry::create(model, modules, max_loras, max_lora_rank) : nullptr;
}

bool has_tokenizer(const std::string& dir) {
  namespace fs = std::filesystem;
  return !dir.empty() && (fs::exists(fs::path(dir) / "tokenizer.json") || fs::exists(fs::path(dir) / "tokenizer.model"));
}

void require_tokenizer(const std::string& dir, const std::string& why) {
  APUS_CHECK(!dir.empty(), "{} needs a tokenizer: give --model DIR holding tokenizer.json or tokenizer.model", why);
  APUS_CHECK(has_tokenizer(dir), "{} needs a tokenizer, and {} has no tokenizer.json or tokenizer.model", why, dir);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir, const std::string& why) {
  require_tokenizer(dir, why);
  return Tokenizer::load(dir);
}

void TemplateOptions::add_to(CLI::App& app) {
  app.add_option(opt("template-type"), template_type,
                 "named template type (qwen, chatml, yi, llama, llama3, chatglm3, default, default-generation); "
                 "default: the model type's, else the checkpoint's chat_template, else default");
  app.add_option(opt("model-type"), model_type, "the reference tool's model type, e.g. qwen-7b-chat");
  system_opt = app.add_option(opt("system"), system, "system prompt for conversations that have none");
}

std::unique_ptr<ChatTemplate> TemplateOptions::make(const Tokenizer& tok, const std::string& tokenizer_dir) const {
  std::string type = template_type;
  if ((type.empty() || type == "auto" || type == "AUTO") && !model_type.empty())
    type = std::string(find_model_type(model_type).template_type);
  else if (!model_type.empty())
    find_model_type(model_type);  // still reject unknown names
  return select_template(tok, type, "default", read_special_tokens_map(tokenizer_dir));
}

std::vector<ChatMessage> TemplateOptions::conversation(const std::string& json_text, const ChatTemplate& tmpl) const {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    fail("--chat: invalid JSON ({}); expected a messages array like [{{\"role\": \"user\", \"content\": \"hi\"}}]",
         e.what());
  }
  std::vector<ChatMessage> messages = parse_messages(j);
  if (auto s = given_system(tmpl)) messages = with_default_system(std::move(messages), *s);
  return messages;
}

std::optional<std::string> TemplateOptions::given_system(const ChatTemplate& tmpl) const {
  if (system_opt && system_opt->count() > 0 && (tmpl.name() != "jinja" || !system.empty())) return system;
  return std::nullopt;
}

std::vector<std::string> TemplateOptions::stop_words(const ChatTemplate& tmpl) const {
  std::vector<std::string> words = tmpl.stop_words();
  if (!model_type.empty()) {
    const std::string eos(find_model_type(model_type).eos_token);
    if (!eos.empty() && std::find(words.begin(), words.end(), eos) == words.end()) words.push_back(eos);
  }
  return words;
}

}  // namespace apus::cli
