#include "model/load.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/presets.h"

namespace apus {

std::unique_ptr<DecoderModel> load_model(const LoadOptions& opts, Backend& backend) {
  const bool dummy = opts.load_format == "dummy";
  APUS_CHECK(dummy || opts.load_format == "auto" || opts.load_format == "safetensors",
             "unknown --load-format \"{}\" (auto, safetensors, dummy)", opts.load_format);
  ModelConfig config;
  if (!opts.config_preset.empty()) {
    APUS_CHECK(dummy, "--config-preset needs --load-format dummy");
    config = parse_model_config(config_preset(opts.config_preset), "preset " + opts.config_preset);
  } else {
    APUS_CHECK(!opts.model_dir.empty(), "no model given: pass --model DIR (or --load-format dummy --config-preset NAME)");
    config = load_model_config(opts.model_dir);
  }
  if (!opts.dummy_quantization.empty()) {
    APUS_CHECK(dummy, "--quantization needs --load-format dummy (a checkpoint's own config.json says how it is quantized)");
    const std::string& m = opts.dummy_quantization;
    APUS_CHECK(m == "gptq" || m == "awq", "unknown --quantization \"{}\" (gptq, awq)", m);
    nlohmann::json q = m == "gptq" ? nlohmann::json{{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 128},
                                                    {"sym", true}, {"desc_act", false}, {"checkpoint_format", "gptq_v2"}}
                                   : nlohmann::json{{"quant_method", "awq"}, {"bits", 4}, {"group_size", 128},
                                                    {"zero_point", true}, {"version", "gemm"}};
    config.quant = parse_quant_config(nlohmann::json{{"quantization_config", q}}, "--quantization " + m);
  }
  std::unique_ptr<WeightSource> source =
      dummy ? make_dummy_source(opts.dummy_dtype, opts.dummy_seed, opts.num_threads, config.quant)
            : open_checkpoint_source(opts.model_dir);
  ModelWeights weights = load_weights(config, *source, backend);
  return std::make_unique<DecoderModel>(std::move(config), std::move(weights), backend);
}

}  // namespace apus
