// Error checks for the hand-built GPU benchmarks (quant_kernel_bench.cu, gemm_shapes_bench.cu,
// sm_split_bench.cu, attention_bench.cu): CK(call) prints the call, its place and the error, then
// exits; CUDA runtime and cuBLAS statuses here, a bench that calls other libraries adds a
// bench_check overload for theirs. Also the benches' event timing and the device's copy rate.
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

// Mean device time in microseconds of fn(i) for i = 0 .. iters - 1, queued back to back between two
// events, after fn(i) for i = 0 .. warmups - 1.
template <typename F>
double bench_mean_us(int iters, F&& fn, int warmups = 3) {
  for (int i = 0; i < warmups; ++i) fn(i);
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  CK(cudaEventRecord(e0));
  for (int i = 0; i < iters; ++i) fn(i);
  CK(cudaEventRecord(e1));
  CK(cudaEventSynchronize(e1));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  return double(ms) * 1e3 / iters;
}

// The device-to-device copy rate in bytes/s (read + write) of `reps` copies of `bytes` from a to b.
inline double bench_copy_rate(void* a, void* b, size_t bytes, int reps) {
  const double us = bench_mean_us(
      reps, [&](int) { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 1);
  return 2.0 * double(bytes) / (us * 1e-6);
}
