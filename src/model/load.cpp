#include "model/load.h"

#include "core/error.h"
#include "model/presets.h"

namespace apus {

ModelConfig load_config(const LoadOptions& opts) {
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

std::unique_ptr<WeightSource> open_weights(const LoadOptions& opts) {
  return opts.load_format == "dummy" ? make_dummy_source(opts.dummy_dtype, opts.dummy_seed, opts.num_threads)
                                     : open_checkpoint_source(opts.model_dir);
}

std::unique_ptr<DecoderModel> load_model(const LoadOptions& opts, Backend& backend) {
  ModelConfig config = load_config(opts);
  ModelWeights weights = load_weights(config, *open_weights(opts), backend);
  return std::make_unique<DecoderModel>(std::move(config), std::move(weights), backend);
}

}  // namespace apus
