// Builds a ready-to-run model from a directory or from dummy weights.
#pragma once
#include <memory>
#include <string>

#include "model/decoder.h"

namespace apus {

struct LoadOptions {
  std::string model_dir;      // a Hugging Face model directory (may be empty with a preset)
  std::string load_format = "auto";  // auto | safetensors | dummy
  std::string config_preset;  // dummy only, when model_dir has no config.json
  DType dummy_dtype = DType::BF16;
  // dummy only: "gptq" or "awq" makes the linear layers 4-bit, group 128 (gptq_v2 zeros / AWQ
  // gemm), as if config.json had that quantization_config; "" keeps the config's own.
  std::string dummy_quantization;
  uint64_t dummy_seed = 0;
  int num_threads = 1;        // for generating dummy weights
};

std::unique_ptr<DecoderModel> load_model(const LoadOptions& opts, Backend& backend);

}  // namespace apus
