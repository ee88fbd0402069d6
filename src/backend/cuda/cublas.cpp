#include "backend/cuda/cublas.h"

#include <mutex>

#include "backend/cuda/library.h"

namespace apus::cuda {

namespace {

Cublas load() {
  // The loader's search path first (LD_LIBRARY_PATH, ldconfig), then the toolkit this was built with.
  void* lib = open_library({"libcublas.so." APUS_CUBLAS_SOVERSION, APUS_CUDA_LIBRARY_DIR "/libcublas.so." APUS_CUBLAS_SOVERSION},
                           "--device cuda needs cuBLAS (libcublas.so." APUS_CUBLAS_SOVERSION ") and could not load it");
  Cublas c;
  const char* name = "libcublas (a cuBLAS older than CUDA 12?)";
  bind_symbol(lib, name, "cublasCreate_v2", &c.create);
  bind_symbol(lib, name, "cublasDestroy_v2", &c.destroy);
  bind_symbol(lib, name, "cublasSetStream_v2", &c.set_stream);
  bind_symbol(lib, name, "cublasSetWorkspace_v2", &c.set_workspace);
  bind_symbol(lib, name, "cublasGemmEx", &c.gemm_ex);
  bind_symbol(lib, name, "cublasGetStatusString", &c.status_string);
  bind_symbol(lib, name, "cublasSetSmCountTarget", &c.set_sm_count_target);
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
