#include "model/load.h"

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
  std::unique_ptr<WeightSource> source =
      dummy ? make_dummy_source(opts.dummy_dtype, opts.dummy_seed, opts.num_threads)
            : open_checkpoint_source(opts.model_dir);
  ModelWeights weights = load_weights(config, *source, backend);
  return std::make_unique<DecoderModel>(std::move(config), std::move(weights), backend);
}

}  // namespace apus
