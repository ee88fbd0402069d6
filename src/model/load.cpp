#include "model/load.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/presets.h"

namespace apus {

namespace {

// --quantization of dummy weights: as if config.json had this quantization_config.
std::optional<QuantConfig> dummy_quantization(const LoadOptions& opts) {
  if (opts.dummy_quantization.empty()) return std::nullopt;
  APUS_CHECK(opts.load_format == "dummy",
             "--quantization needs --load-format dummy (a checkpoint's own config.json says how it is quantized)");
  const std::string& m = opts.dummy_quantization;
  APUS_CHECK(m == "gptq" || m == "awq", "unknown --quantization \"{}\" (gptq, awq)", m);
  nlohmann::json q = m == "gptq" ? nlohmann::json{{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 128},
                                                  {"sym", true}, {"desc_act", false}, {"checkpoint_format", "gptq_v2"}}
                                 : nlohmann::json{{"quant_method", "awq"}, {"bits", 4}, {"group_size", 128},
                                                  {"zero_point", true}, {"version", "gemm"}};
  return parse_quant_config(nlohmann::json{{"quantization_config", q}}, "--quantization " + m);
}

ModelConfig read_config(const LoadOptions& opts) {
  const bool dummy = opts.load_format == "dummy";
  APUS_CHECK(dummy || opts.load_format == "auto" || opts.load_format == "safetensors",
             "unknown --load-format \"{}\" (auto, safetensors, dummy)", opts.load_format);
  if (!opts.config_preset.empty()) {
    APUS_CHECK(dummy, "--config-preset needs --load-format dummy");
    return parse_model_config(config_preset(opts.config_preset), "preset " + opts.config_preset);
  }
  APUS_CHECK(!opts.model_dir.empty(), "no model given: pass --model DIR (or --load-format dummy --config-preset NAME)");
  return load_model_config(opts.model_dir);
}

}  // namespace

ModelConfig load_config(const LoadOptions& opts) {
  ModelConfig config = read_config(opts);
  if (auto q = dummy_quantization(opts)) config.quant = q;
  return config;
}

std::unique_ptr<WeightSource> open_weights(const LoadOptions& opts) {
  if (opts.load_format != "dummy") return open_checkpoint_source(opts.model_dir);
  // Quantized dummy layers for --quantization, or for a model directory whose config has one.
  std::optional<QuantConfig> quant = dummy_quantization(opts);
  if (!quant && opts.config_preset.empty() && !opts.model_dir.empty()) quant = load_model_config(opts.model_dir).quant;
  return make_dummy_source(opts.dummy_dtype, opts.dummy_seed, opts.num_threads, quant);
}

std::unique_ptr<DecoderModel> load_model(const LoadOptions& opts, Backend& backend) {
  ModelConfig config = load_config(opts);
  ModelWeights weights = load_weights(config, *open_weights(opts), backend);
  return std::make_unique<DecoderModel>(std::move(config), std::move(weights), backend);
}

}  // namespace apus
