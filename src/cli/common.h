// Options shared by the subcommands that load a model.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "model/load.h"

namespace apus::cli {

// "--max-tokens,--max_tokens": users of vLLM type dashes, users of ms-swift underscores.
std::string opt(const std::string& dashed);

struct ModelOptions {
  LoadOptions load;
  std::string dtype = "bfloat16";  // dummy weights only
  int threads = 0;                 // 0: all cores
  void add_to(CLI::App& app);
  LoadOptions resolved() const;    // threads and dtype applied
  int num_threads() const;
};

}  // namespace apus::cli
