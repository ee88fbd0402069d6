// Error checks for the hand-built GPU benchmarks (quant_kernel_bench.cu, gemm_shapes_bench.cu,
// sm_split_bench.cu, attention_bench.cu): CK(call) prints the call, its place and the error, then
// exits; CUDA runtime and cuBLAS statuses here, a bench that calls other libraries adds a
// bench_check overload for theirs.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

inline void bench_check(cudaError_t e, const char* what, const char* file, int line) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "%s:%d %s: %s\n", file, line, what, cudaGetErrorString(e));
  std::exit(1);
}

inline void bench_check(cublasStatus_t s, const char* what, const char* file, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  std::fprintf(stderr, "%s:%d %s: cuBLAS status %d\n", file, line, what, int(s));
  std::exit(1);
}

#define CK(x) bench_check((x), #x, __FILE__, __LINE__)
