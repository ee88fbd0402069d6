// `apus export --quant_bits 4`: a float checkpoint quantized into a standard GPTQ checkpoint
// (AutoGPTQ / optimum layout, checkpoint_format "gptq"), by GPTQ on calibration activations or by
// round to nearest (RTN). GPTQ runs the model layer by layer on the calibration tokens on the CPU:
// inputs of a layer's linear layers come from the already quantized layers before it (and, within a
// layer, from its already quantized q/k/v, o, gate/up: AutoGPTQ's true_sequential).
#pragma once
#include <cstddef>
#include <iosfwd>
#include <string>
#include <vector>

#include "quant/gptq_solver.h"

namespace apus {

struct QuantizeOptions {
  std::string model_dir;
  std::string output_dir;          // empty: <model_dir>-gptq-int<bits>
  std::string method = "gptq";     // gptq | rtn (awq: refused, not implemented)
  QuantGrid grid;
  std::string dataset;             // JSONL calibration texts; empty: the built-in text
  int n_samples = 128;
  int seqlen = 2048;
  size_t max_shard_bytes = size_t(5) << 30;
  int num_threads = 1;
};

// Relative reconstruction error ||W X - Ŵ X|| / ||W X|| of one linear layer on its calibration
// inputs X, for the exported GPTQ matrix and for RTN of the same W on the same X (-1: not measured,
// as with --quant_method rtn, which uses no calibration data).
struct LinearError {
  int layer = 0;
  std::string module;  // e.g. "self_attn.q_proj"
  int64_t out = 0, in = 0;
  double gptq = -1.0, rtn = -1.0;
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
