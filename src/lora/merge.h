// `apus export --merge_lora`: a PEFT LoRA adapter folded into its base model, written as a complete
// Hugging Face checkpoint (W' = W + scale * B A, computed in float32 and rounded once to W's dtype).
#pragma once
#include <cstddef>
#include <string>

namespace apus {

struct MergeOptions {
  std::string adapter_dir;
  std::string base_dir;    // empty: the adapter's base_model_name_or_path, when a local directory
  std::string output_dir;  // empty: <adapter_dir>-merged
  size_t max_shard_bytes = size_t(5) << 30;
  int num_threads = 1;
};

// Checks everything (adapter, base, shapes, output directory) before writing anything, then streams
// the base tensor by tensor (one merged matrix in memory at a time). Returns the output directory.
std::string merge_lora(const MergeOptions& options);

}  // namespace apus
