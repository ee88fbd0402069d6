// Options shared by the subcommands that load a model or build prompts.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lora/registry.h"
#include "model/load.h"
#include "parallel/model_group.h"
#include "text/chat_template.h"
#include "text/tokenizer/tokenizer.h"

namespace apus::cli {

// "--max-tokens,--max_tokens": users of vLLM type dashes, users of ms-swift underscores.
std::string opt(const std::string& dashed);

struct ModelOptions {
  LoadOptions load;
  std::string dtype = "bfloat16";  // dummy weights only
  int threads = 0;                 // 0: all cores
  std::string device = "auto";     // cpu | cuda | auto (cuda when a GPU is present)
  double gpu_memory_utilization = 0.9;  // GPU only: see EngineConfig
  ParallelOptions parallel;        // --tensor_parallel_size, --nnodes, --node_rank, --master_addr/port
  // `multi_node`: also the options of a group spanning several processes (deploy, bench).
  void add_to(CLI::App& app, bool multi_node = true);
  LoadOptions resolved() const;    // threads and dtype applied
  int num_threads() const;
  // The model for --device, whole or split per --tensor_parallel_size. In the process of another
  // node (--node_rank > 0) it serves that node's ranks until node 0 stops them, then returns null:
  // the command has nothing else to do.
  std::unique_ptr<ModelGroup> load_group() const { return load_group(resolved()); }
  std::unique_ptr<ModelGroup> load_group(const LoadOptions& lo) const;
};

// --lora_modules / --max_loras / --max_lora_rank: LoRA adapters served unmerged beside the base.
struct LoraOptions {
  std::vector<std::string> modules;  // name=path, or a bare path (named default-lora)
  int max_loras = 0;                 // adapter slots; 0: one per --lora_modules entry
  int max_lora_rank = 0;             // 0: 16, or the largest rank among --lora_modules
  void add_to(CLI::App& app);
  bool enabled() const { return !modules.empty() || max_loras > 0; }
  // Enables LoRA on `model` and loads --lora_modules; nullptr when LoRA is off.
  std::unique_ptr<LoraRegistry> apply(DecoderModel& model) const;
};

// The tokenizer files in `dir`; `why` says which option needs them when they are missing.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir, const std::string& why);
void require_tokenizer(const std::string& dir, const std::string& why);  // the same check, loading nothing
bool has_tokenizer(const std::string& dir);

// --template_type / --model_type / --system: how a conversation becomes a prompt.
struct TemplateOptions {
  std::string template_type;  // a named template type; empty: the checkpoint's chat_template
  std::string model_type;     // the reference's --model_type: its template type and eos token
  std::string system;
  CLI::Option* system_opt = nullptr;
  void add_to(CLI::App& app);
  // --template_type, else --model_type's template type, else the checkpoint's chat_template,
  // else "default" (select_template); the special tokens come from `tokenizer_dir`.
  std::unique_ptr<ChatTemplate> make(const Tokenizer& tok, const std::string& tokenizer_dir) const;
  // A --chat JSON messages array, with --system in front when the conversation has no system
  // message (for a Jinja template only when --system is non-empty).
  std::vector<ChatMessage> conversation(const std::string& json_text, const ChatTemplate& tmpl) const;
  // --system when given (for a Jinja template only when non-empty: "" there means none), else nullopt.
  std::optional<std::string> given_system(const ChatTemplate& tmpl) const;
  // The template's stop words plus --model_type's eos token.
  std::vector<std::string> stop_words(const ChatTemplate& tmpl) const;
};

}  // namespace apus::cli
