#include "cli/common.h"

#include <algorithm>

#include "core/error.h"
#include "core/thread_pool.h"

namespace apus::cli {

std::string opt(const std::string& dashed) {
  std::string under = dashed;
  std::replace(under.begin(), under.end(), '-', '_');
  return under == dashed ? "--" + dashed : "--" + dashed + ",--" + under;
}

void ModelOptions::add_to(CLI::App& app) {
  app.add_option(opt("model") + "," + opt("model-id-or-path"), load.model_dir, "Hugging Face model directory");
  app.add_option(opt("load-format"), load.load_format, "auto | safetensors | dummy (random weights of the config)");
  app.add_option(opt("config-preset"), load.config_preset, "with dummy weights and no --model: a known model's config");
  app.add_option(opt("dtype"), dtype, "dtype of dummy weights: bfloat16 | float16 | float32");
  app.add_option(opt("threads"), threads, "CPU threads (default: all cores, or APUS_NUM_THREADS)");
}

int ModelOptions::num_threads() const { return threads > 0 ? threads : ThreadPool::default_threads(); }

LoadOptions ModelOptions::resolved() const {
  LoadOptions o = load;
  o.num_threads = num_threads();
  if (dtype == "bfloat16" || dtype == "bf16") o.dummy_dtype = DType::BF16;
  else if (dtype == "float16" || dtype == "fp16" || dtype == "half") o.dummy_dtype = DType::F16;
  else if (dtype == "float32" || dtype == "fp32" || dtype == "float") o.dummy_dtype = DType::F32;
  else fail("unknown --dtype \"{}\" (bfloat16, float16, float32)", dtype);
  return o;
}

}  // namespace apus::cli
