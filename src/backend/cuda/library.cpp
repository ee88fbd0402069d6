#include "backend/cuda/library.h"

namespace apus::cuda {

void* open_library(const std::vector<std::string>& paths, const std::string& failure) {
  std::string errors;
  for (const auto& p : paths) {
    if (void* lib = dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL)) return lib;
    errors += fmt::format("\n  {}: {}", p, dlerror());
  }
  fail("{}:{}", failure, errors);
}

}  // namespace apus::cuda
