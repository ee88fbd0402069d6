// `apus export --quant_bits 4`: a float checkpoint quantized into a standard GPTQ checkpoint
// (AutoGPTQ / optimum layout, checkpoint_format "gptq"), by GPTQ on calibration activations or by
// round to nearest (RTN), or into an AWQ checkpoint (AutoAWQ's GEMM layout) by AWQ's scale and clip
// searches (awq.h) then RTN. GPTQ and AWQ run the model layer by layer on the calibration tokens on
// the CPU: inputs of a layer's linear layers come from the already quantized layers before it (GPTQ
// also within a layer, from its already quantized q/k/v, o, gate/up: AutoGPTQ's true_sequential).
#pragma once
#include <cstddef>
#include <iosfwd>
#include <string>
#include <vector>

#include "quant/gptq_solver.h"

namespace apus {

struct QuantizeOptions {
  std::string model_dir;
  std::string output_dir;          // empty: <model_dir>-<method>-int<bits>
  std::string method = "gptq";     // gptq | awq | rtn
  QuantGrid grid;
  std::string dataset;             // JSONL calibration texts; empty: the built-in text
  int n_samples = 128;
  int seqlen = 2048;
  size_t max_shard_bytes = size_t(5) << 30;
  int num_threads = 1;
};

// Relative reconstruction error ||W X - Ŵ X|| / ||W X|| of one linear layer on its calibration
// inputs X, for the exported matrix and for RTN of the same W on the same X (-1: not measured, as
// with --quant_method rtn, which uses no calibration data). GPTQ: over every calibration token
// (from the Hessian); AWQ: on the sampled tokens its searches use, in the scaled coordinates (W
// diag(s) on X diag(s)^-1, and rows divided by the next layer's scales where it folds them in).
struct LinearError {
  int layer = 0;
  std::string module;  // e.g. "self_attn.q_proj"
  int64_t out = 0, in = 0;
  double quantized = -1.0, rtn = -1.0;
};

struct QuantizeResult {
  std::string output_dir;
  int64_t calibration_tokens = 0;
  int calibration_samples = 0;
  std::vector<LinearError> errors;
};

// Checks the model and options before writing anything; progress and the per-layer error table
// go to `log`.
QuantizeResult quantize_model(const QuantizeOptions& options, std::ostream& log);

}  // namespace apus
