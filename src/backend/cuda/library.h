// Libraries the CUDA backend opens with dlopen when first needed (cuBLAS, NCCL), so that the apus
// binary starts without them.
#pragma once
#include <dlfcn.h>

#include <string>
#include <vector>

#include "core/error.h"

namespace apus::cuda {

// The first of `paths` that loads (kept loaded for the life of the process); fails with `failure`
// followed by every path tried and why it did not load.
void* open_library(const std::vector<std::string>& paths, const std::string& failure);

// *fn = the symbol `name` of `lib`; fails naming the library `lib_name` when it lacks it.
template <typename F>
void bind_symbol(void* lib, const char* lib_name, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(dlsym(lib, name));
  APUS_CHECK(*fn != nullptr, "{} has no symbol {} (too old a version?)", lib_name, name);
}

}  // namespace apus::cuda
