// Microbenchmark for the 16-bit linear layers that cuBLAS runs (prefill and large batches) on the
// Qwen2.5-7B shape: y[m, n] = x[m, k] w[n, k]^T in bf16 with float32 accumulation, at the row counts
// of the offline run's steps (1,000 decodes, 2,048- and 16,384-token prefill steps). For each shape:
// cublasGemmEx as the backend calls it (beta 0, and beta 1 as for a layer with a bias), then every
// algorithm cuBLASLt's heuristic offers (up to 16) timed one by one, the fastest reported, and the
// same with the bias in cuBLASLt's epilogue; last, GemmEx and the best algorithm "cold" (each call
// right after a kernel that writes 256 MB: other data in L2 and the GPU busy, as inside a step).
// It answers whether choosing the algorithm ourselves (qkv runs at ~470-510 TFLOP/s where the other
// layers reach ~700-790: bench/RESULTS.md session 15) would pay. With an argument N (tensor
// parallelism), one rank's part of each layer: qkv, gate_up and lm_head with n / N columns, o and
// down with k / N (bench/RESULTS.md session 17). Built by hand on the GPU machine:
//
//   nvcc -std=c++17 -O3 -arch=sm_90a bench/gemm_shapes_bench.cu -lcublasLt -lcublas -o gbench && ./gbench [N]
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_check.cuh"

namespace {

__global__ void fill(__nv_bfloat16* p, size_t n, unsigned seed) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned h = unsigned(i) * 2654435761u ^ seed;
    h ^= h >> 13, h *= 0x5bd1e995u, h ^= h >> 15;
    p[i] = __float2bfloat16(float(h % 2001) / 1000.0f - 1.0f);
  }
}

// Writes a buffer far larger than L2 (the "cold" timings: each call starts with other data in L2 and
// the GPU busy, as a layer does inside a step, instead of after the same call).
__global__ void flush_kernel(uint4* p, size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = make_uint4(unsigned(i), 0, 0, 0);
}
struct Flush {
  uint4* buf = nullptr;
  size_t n = (size_t(256) << 20) / sizeof(uint4);
  void operator()() const { flush_kernel<<<1024, 512>>>(buf, n); }
};
// Median device time of fn() in microseconds (events around each of `iters` calls after 3 warm-ups),
// each timed call right after `flush` where one is given.
template <typename F>
float median_us(F fn, const Flush* flush = nullptr, int iters = 15) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> t;
  for (int i = 0; i < iters; ++i) {
    if (flush) (*flush)();
    CK(cudaEventRecord(a));
    fn();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(1000.0f * ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Lt {
  cublasLtHandle_t h;
  void* ws;
  size_t ws_bytes = size_t(32) << 20;
};

// Every algorithm the heuristic offers for y = x w^T (+ bias in the epilogue), timed; the fastest.
float best_lt(Lt& lt, int m, int n, int k, const void* w, const void* x, void* y, const void* bias, int* tried,
              const Flush* cold = nullptr, float* best_cold = nullptr) {
  cublasLtMatmulDesc_t desc;
  CK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
  CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof(opT)));
  CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof(opN)));
  if (bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  // Column-major: y^T [n, m] = (w [k, n] stored, transposed) x^T [k, m].
  cublasLtMatrixLayout_t A, B, C;
  CK(cublasLtMatrixLayoutCreate(&A, CUDA_R_16BF, k, n, k));
  CK(cublasLtMatrixLayoutCreate(&B, CUDA_R_16BF, k, m, k));
  CK(cublasLtMatrixLayoutCreate(&C, CUDA_R_16BF, n, m, n));
  cublasLtMatmulPreference_t pref;
  CK(cublasLtMatmulPreferenceCreate(&pref));
  CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &lt.ws_bytes,
                                          sizeof(lt.ws_bytes)));
  cublasLtMatmulHeuristicResult_t res[16];
  int got = 0;
  CK(cublasLtMatmulAlgoGetHeuristic(lt.h, desc, A, B, C, C, pref, 16, res, &got));
  const float alpha = 1.0f, beta = 0.0f;
  float best = 1e30f;
  *tried = 0;
  for (int i = 0; i < got; ++i) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
    ++*tried;
    auto run = [&] {
      CK(cublasLtMatmul(lt.h, desc, &alpha, w, A, x, B, &beta, y, C, y, C, &res[i].algo, lt.ws, lt.ws_bytes, 0));
    };
    best = std::min(best, median_us(run));
    if (cold) *best_cold = std::min(*best_cold, median_us(run, cold));
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(A);
  cublasLtMatrixLayoutDestroy(B);
  cublasLtMatrixLayoutDestroy(C);
  cublasLtMatmulDescDestroy(desc);
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int tp = argc > 1 ? std::max(1, std::atoi(argv[1])) : 1;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs; one rank's layers at tensor parallel size %d\n", prop.name, prop.multiProcessorCount, tp);
  struct Shape {
    const char* name;
    int n, k;
  };
  const Shape shapes[] = {{"qkv", 4608 / tp, 3584}, {"o", 3584, 3584 / tp}, {"gate_up", 37888 / tp, 3584},
                          {"down", 3584, 18944 / tp}, {"lm_head", 152064 / tp, 3584}};
  const int rows[] = {1000, 2048, 16384};
  size_t max_w = 0, max_x = 0, max_y = 0;
  for (const Shape& s : shapes)
    for (int m : rows) {
      max_w = std::max(max_w, size_t(s.n) * s.k);
      max_x = std::max(max_x, size_t(m) * s.k);
      max_y = std::max(max_y, size_t(m) * s.n);
    }
  __nv_bfloat16 *w, *x, *y, *bias;
  CK(cudaMalloc(&w, max_w * 2));
  CK(cudaMalloc(&x, max_x * 2));
  CK(cudaMalloc(&y, max_y * 2));
  CK(cudaMalloc(&bias, size_t(152064) * 2));
  fill<<<1024, 256>>>(w, max_w, 1);
  fill<<<1024, 256>>>(x, max_x, 2);
  fill<<<256, 256>>>(bias, 152064, 3);
  CK(cudaDeviceSynchronize());
  cublasHandle_t blas;
  CK(cublasCreate(&blas));
  Lt lt;
  CK(cublasLtCreate(&lt.h));
  CK(cudaMalloc(&lt.ws, lt.ws_bytes));
  CK(cublasSetWorkspace(blas, lt.ws, lt.ws_bytes));

  Flush flush;
  CK(cudaMalloc(&flush.buf, flush.n * sizeof(uint4)));
  std::printf("%-8s %6s | %-22s | %-22s | %-28s | %-22s | %-26s\n", "layer", "rows", "GemmEx beta 0 (us, TF/s)",
              "GemmEx beta 1", "best Lt algo (of tried)", "best Lt + bias epilogue",
              "cold: GemmEx / best Lt");
  for (const Shape& s : shapes) {
    for (int m : rows) {
      if (s.n > 100000 && m > 2048) continue;  // lm_head runs on the rows that need logits only
      const double flop = 2.0 * m * double(s.n) * s.k;
      auto tf = [&](float us) { return flop / (us * 1e-6) / 1e12; };
      auto gemm_ex = [&](float beta) {
        return [&, beta] {
          const float alpha = 1.0f;
          CK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, s.n, m, s.k, &alpha, w, CUDA_R_16BF, s.k, x, CUDA_R_16BF,
                          s.k, &beta, y, CUDA_R_16BF, s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        };
      };
      const float b0 = median_us(gemm_ex(0.0f)), b1 = median_us(gemm_ex(1.0f));
      const float cold_ex = median_us(gemm_ex(0.0f), &flush);
      int tried = 0, tried_b = 0;
      float cold_lt = 1e30f;
      const float lt_us = best_lt(lt, m, s.n, s.k, w, x, y, nullptr, &tried, &flush, &cold_lt);
      const float ltb_us = best_lt(lt, m, s.n, s.k, w, x, y, bias, &tried_b);
      std::printf("%-8s %6d | %8.1f %6.0f        | %8.1f %6.0f        | %8.1f %6.0f (of %2d)      | %8.1f %6.0f (of %2d)"
                  "      | %8.1f %8.1f\n",
                  s.name, m, b0, tf(b0), b1, tf(b1), lt_us, tf(lt_us), tried, ltb_us, tf(ltb_us), tried_b, cold_ex,
                  cold_lt);
    }
  }
  return 0;
}
