// apus export: checkpoint conversions. --merge_lora folds a PEFT LoRA adapter into its base model
// (src/lora/merge.h); other conversions (--quant_bits) are not implemented yet.
#include <fmt/format.h>

#include <iostream>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "lora/merge.h"

namespace apus::cli {

namespace {

struct ExportArgs {
  MergeOptions merge;
  bool merge_lora = false;
  int quant_bits = 0;
  double max_shard_gib = 5.0;
  int threads = 0;
};

void run_export(const ExportArgs& a) {
  APUS_CHECK(a.quant_bits == 0, "export --quant_bits is not implemented");
  APUS_CHECK(a.merge_lora, "nothing to export: pass --merge_lora true (with --ckpt_dir ADAPTER_DIR)");
  APUS_CHECK(!a.merge.adapter_dir.empty(), "--merge_lora needs --ckpt_dir ADAPTER_DIR (a PEFT LoRA adapter)");
  MergeOptions o = a.merge;
  o.max_shard_bytes = size_t(a.max_shard_gib * double(size_t(1) << 30));
  o.num_threads = a.threads > 0 ? a.threads : ThreadPool::default_threads();
  const std::string out = merge_lora(o);
  std::cout << fmt::format("merged {} into {}: {}\n", a.merge.adapter_dir, o.base_dir.empty() ? "its base" : o.base_dir,
                           out);
}

}  // namespace

void add_export(CLI::App& root) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* cmd = root.add_subcommand("export", "Convert a checkpoint: merge a LoRA adapter into its base model");
  cmd->add_option(opt("ckpt-dir"), a->merge.adapter_dir, "the PEFT LoRA adapter directory")->required();
  cmd->add_option(opt("model") + "," + opt("model-id-or-path"), a->merge.base_dir,
                  "the base model directory (default: the adapter's base_model_name_or_path)");
  cmd->add_option(opt("merge-lora"), a->merge_lora, "true: write the base model with the adapter merged in");
  cmd->add_option(opt("output-dir"), a->merge.output_dir, "where to write (default: <ckpt_dir>-merged)");
  cmd->add_option(opt("max-shard-size-gib"), a->max_shard_gib, "largest safetensors shard (default 5 GiB)");
  cmd->add_option(opt("quant-bits"), a->quant_bits, "not implemented");
  cmd->add_option(opt("threads"), a->threads, "CPU threads (default: all cores)");
  cmd->callback([a] { run_export(*a); });
}

}  // namespace apus::cli
