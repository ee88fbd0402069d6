// apus export: checkpoint conversions. --merge_lora folds a PEFT LoRA adapter into its base model
// (src/lora/merge.h); --quant_bits 4|8 writes a GPTQ checkpoint (src/quant/quantize_model.h).
#include <fmt/format.h>

#include <iostream>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "lora/merge.h"
#include "quant/quantize_model.h"

namespace apus::cli {

namespace {

struct ExportArgs {
  MergeOptions merge;
  bool merge_lora = false;
  QuantizeOptions quant;
  int quant_bits = 0;
  double max_shard_gib = 5.0;
  int threads = 0;
};

void run_quantize(const ExportArgs& a) {
  APUS_CHECK(!a.merge_lora, "--merge_lora and --quant_bits are separate exports: merge first, then quantize the result");
  APUS_CHECK(!a.merge.base_dir.empty() || !a.merge.adapter_dir.empty(), "--quant_bits needs --model DIR (a float checkpoint)");
  QuantizeOptions o = a.quant;
  o.model_dir = a.merge.base_dir.empty() ? a.merge.adapter_dir : a.merge.base_dir;
  o.output_dir = a.merge.output_dir;
  o.grid.bits = a.quant_bits;
  o.max_shard_bytes = size_t(a.max_shard_gib * double(size_t(1) << 30));
  o.num_threads = a.threads > 0 ? a.threads : ThreadPool::default_threads();
  const QuantizeResult r = quantize_model(o, std::cout);
  std::cout << fmt::format("quantized {} ({} {}-bit, group {}) into {}\n", o.model_dir, o.method, o.grid.bits,
                           o.grid.group_size, r.output_dir);
}

void run_export(const ExportArgs& a) {
  if (a.quant_bits != 0) return run_quantize(a);
  APUS_CHECK(a.merge_lora, "nothing to export: pass --merge_lora true (with --ckpt_dir ADAPTER_DIR) or --quant_bits 4");
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
  CLI::App* cmd = root.add_subcommand(
      "export", "Convert a checkpoint: merge a LoRA adapter into its base model, or quantize a model to GPTQ int4/int8");
  cmd->add_option(opt("ckpt-dir"), a->merge.adapter_dir, "the PEFT LoRA adapter directory (--merge_lora)");
  cmd->add_option(opt("model") + "," + opt("model-id-or-path"), a->merge.base_dir,
                  "the model to quantize, or the base model of --merge_lora (default: the adapter's "
                  "base_model_name_or_path)");
  cmd->add_option(opt("merge-lora"), a->merge_lora, "true: write the base model with the adapter merged in");
  cmd->add_option(opt("output-dir"), a->merge.output_dir,
                  "where to write (default: <ckpt_dir>-merged, or <model>-<gptq|awq>-int<bits>)");
  cmd->add_option(opt("max-shard-size-gib"), a->max_shard_gib, "largest safetensors shard (default 5 GiB)");
  cmd->add_option(opt("quant-bits"), a->quant_bits, "4 or 8: write a GPTQ checkpoint (checkpoint_format gptq), or with --quant_method awq an AWQ one (4)");
  cmd->add_option(opt("quant-method"), a->quant.method, "gptq (default), awq (AutoAWQ GEMM layout, 4 bits) or rtn (round to nearest, no calibration)");
  cmd->add_option(opt("group-size"), a->quant.grid.group_size, "inputs per scale/zero: -1 or a multiple of 32 (default 128)");
  cmd->add_option(opt("sym"), a->quant.grid.sym, "symmetric grid (zero fixed at 8 for 4 bits; default false)");
  cmd->add_option(opt("desc-act"), a->quant.grid.desc_act, "GPTQ act-order: columns by decreasing activation energy, "
                                                         "written with g_idx (default false)");
  cmd->add_option(opt("damp-percent"), a->quant.grid.damp_percent, "GPTQ damping, a fraction of the mean Hessian diagonal (default 0.01)");
  cmd->add_option(opt("dataset"), a->quant.dataset,
                  "calibration JSONL: a \"text\" per line, or \"query\"/\"response\" (default: built-in text)");
  cmd->add_option(opt("quant-n-samples"), a->quant.n_samples, "calibration samples (default 128)");
  cmd->add_option(opt("quant-seqlen"), a->quant.seqlen, "tokens per calibration sample (default 2048)");
  cmd->add_option(opt("threads"), a->threads, "CPU threads (default: all cores)");
  cmd->callback([a] { run_export(*a); });
}

}  // namespace apus::cli
