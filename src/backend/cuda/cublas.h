// cuBLAS, opened with dlopen when the first CUDA backend is made: the apus binary neither needs
// libcublas to start nor pays for loading it (with libcublasLt, ~600 MB) on the CPU.
#pragma once
#include <cublas_v2.h>

namespace apus::cuda {

struct Cublas {
  decltype(&cublasCreate_v2) create;
  decltype(&cublasDestroy_v2) destroy;
  decltype(&cublasSetStream_v2) set_stream;
  decltype(&cublasSetWorkspace_v2) set_workspace;
  // The C API's signature (C++ also sees an overload taking cudaDataType as the compute type).
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t algo);
  decltype(&cublasGetStatusString) status_string;
  decltype(&cublasSetSmCountTarget) set_sm_count_target;
};

// The loaded library (once per process); throws apus::Error naming the paths tried.
const Cublas& cublas();

}  // namespace apus::cuda
