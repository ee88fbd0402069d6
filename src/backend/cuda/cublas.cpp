#include "backend/cuda/cublas.h"

#include <dlfcn.h>

#include <mutex>
#include <string>
#include <vector>

#include "core/error.h"

namespace apus::cuda {

namespace {

template <typename F>
void bind(void* lib, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(dlsym(lib, name));
  APUS_CHECK(*fn != nullptr, "libcublas has no symbol {} (a cuBLAS older than CUDA 12?)", name);
}

Cublas load() {
  // The loader's search path first (LD_LIBRARY_PATH, ldconfig), then the toolkit this was built with.
  const std::vector<std::string> names = {"libcublas.so." APUS_CUBLAS_SOVERSION,
                                          APUS_CUDA_LIBRARY_DIR "/libcublas.so." APUS_CUBLAS_SOVERSION};
  void* lib = nullptr;
  std::string errors;
  for (const auto& n : names) {
    lib = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib) break;
    errors += fmt::format("\n  {}: {}", n, dlerror());
  }
  APUS_CHECK(lib != nullptr, "--device cuda needs cuBLAS (libcublas.so.{}) and could not load it:{}",
             APUS_CUBLAS_SOVERSION, errors);
  Cublas c;
  bind(lib, "cublasCreate_v2", &c.create);
  bind(lib, "cublasDestroy_v2", &c.destroy);
  bind(lib, "cublasSetStream_v2", &c.set_stream);
  bind(lib, "cublasSetWorkspace_v2", &c.set_workspace);
  bind(lib, "cublasGemmEx", &c.gemm_ex);
  bind(lib, "cublasGetStatusString", &c.status_string);
  return c;  // the library stays loaded for the life of the process
}

}  // namespace

const Cublas& cublas() {
  static std::once_flag once;
  static Cublas c;
  std::call_once(once, [] { c = load(); });
  return c;
}

}  // namespace apus::cuda
