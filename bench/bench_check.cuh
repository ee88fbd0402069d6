// Error checks for the hand-built GPU benchmarks (quant_kernel_bench.cu, gemm_shapes_bench.cu,
// sm_split_bench.cu, attention_bench.cu): CK(call) prints the call, its place and the error, then
// exits; CUDA runtime and cuBLAS statuses here, a bench that calls other libraries adds a
// bench_check overload for theirs. Also the device's copy rate, which the benches compare with.
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

// The device-to-device copy rate in bytes/s (read + write) of `reps` copies of `bytes` from a to b.
inline double bench_copy_rate(void* a, void* b, size_t bytes, int reps) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(e0));
  for (int i = 0; i < reps; ++i) CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(e1));
  CK(cudaEventSynchronize(e1));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  return 2.0 * double(bytes) * reps / (ms * 1e-3);
}
