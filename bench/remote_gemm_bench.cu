// What a cuBLAS GEMM loses when it writes its output straight into the other GPU's memory over
// NVLink (peer access) instead of its own: the premise of issue 11's next idea (src/parallel/
// README.md, "Next idea": a prefill chunk's o / down product writing the rows the peer owns into
// the peer's buffer, no copy engines). One rank's shapes at TP=2, Qwen2.5-7B, bf16 with float32
// accumulation, y[m, n] = x[m, k] w[n, k]^T as the backend calls cublasGemmEx; each shape with the
// output on this GPU and on the peer, first GPU 0 alone, then both GPUs at once (each writing into
// the other, as both ranks would). Needs two GPUs with peer access. Built by hand on the GPU machine:
//
//   nvcc -std=c++17 -O3 -arch=sm_90a bench/remote_gemm_bench.cu -lcublas -o rbench && ./rbench
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <cstdio>
#include <vector>

#include "bench_check.cuh"

namespace {

struct Rank {
  cublasHandle_t blas = nullptr;
  __nv_bfloat16 *x = nullptr, *w = nullptr, *y = nullptr;  // y: this GPU's output buffer
  cudaEvent_t e0 = nullptr, e1 = nullptr;
};

void gemm(Rank& r, __nv_bfloat16* y, int m, int n, int k) {
  const float alpha = 1.0f, beta = 0.0f;
  CK(cublasGemmEx(r.blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, r.w, CUDA_R_16BF, k, r.x, CUDA_R_16BF, k, &beta,
                  y, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// Mean µs a call on each of the `ranks` first GPUs, the calls of all of them queued together; rank
// d writes into rank (d + remote) % 2's buffer.
std::vector<double> run(std::vector<Rank>& rk, int ranks, bool remote, int m, int n, int k, int iters) {
  for (int d = 0; d < ranks; ++d) {
    CK(cudaSetDevice(d));
    for (int i = 0; i < 3; ++i) gemm(rk[size_t(d)], rk[size_t((d + remote) % 2)].y, m, n, k);
    CK(cudaDeviceSynchronize());
  }
  for (int d = 0; d < ranks; ++d) {
    CK(cudaSetDevice(d));
    CK(cudaEventRecord(rk[size_t(d)].e0));
  }
  for (int i = 0; i < iters; ++i)
    for (int d = 0; d < ranks; ++d) {
      CK(cudaSetDevice(d));
      gemm(rk[size_t(d)], rk[size_t((d + remote) % 2)].y, m, n, k);
    }
  std::vector<double> us;
  for (int d = 0; d < ranks; ++d) {
    CK(cudaSetDevice(d));
    CK(cudaEventRecord(rk[size_t(d)].e1));
    CK(cudaEventSynchronize(rk[size_t(d)].e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, rk[size_t(d)].e0, rk[size_t(d)].e1));
    us.push_back(double(ms) * 1e3 / iters);
  }
  return us;
}

}  // namespace

int main() {
  int count = 0;
  CK(cudaGetDeviceCount(&count));
  if (count < 2) {
    std::printf("needs two GPUs\n");
    return 1;
  }
  const size_t max_x = size_t(16384) * 9472, max_w = size_t(3584) * 9472, max_y = size_t(16384) * 3584;
  std::vector<Rank> rk(2);
  for (int d = 0; d < 2; ++d) {
    CK(cudaSetDevice(d));
    CK(cudaDeviceEnablePeerAccess(1 - d, 0));
    Rank& r = rk[size_t(d)];
    CK(cublasCreate(&r.blas));
    CK(cudaMalloc(&r.x, max_x * 2));
    CK(cudaMalloc(&r.w, max_w * 2));
    CK(cudaMalloc(&r.y, max_y * 2));
    CK(cudaMemset(r.x, 0x3c, max_x * 2));  // 0x3c3c (~0.0115) in every bf16
    CK(cudaMemset(r.w, 0x3c, max_w * 2));
    CK(cudaEventCreate(&r.e0));
    CK(cudaEventCreate(&r.e1));
  }
  struct Shape {
    const char* name;
    int m, n, k;
  } shapes[] = {{"o, 8,192 rows", 8192, 3584, 1792},
                {"down, 8,192 rows", 8192, 3584, 9472},
                {"o, 16,384 rows", 16384, 3584, 1792},
                {"down, 16,384 rows", 16384, 3584, 9472}};
  std::printf("%-20s %12s %12s %8s | %22s %22s %8s\n", "shape (one rank)", "GPU0 local", "GPU0 remote", "ratio",
              "both local (0 / 1)", "both remote (0 / 1)", "ratio");
  for (const Shape& s : shapes) {
    const int iters = 20;
    const double flop = 2.0 * s.m * s.n * s.k;
    const double l = run(rk, 1, false, s.m, s.n, s.k, iters)[0], r = run(rk, 1, true, s.m, s.n, s.k, iters)[0];
    const auto bl = run(rk, 2, false, s.m, s.n, s.k, iters), br = run(rk, 2, true, s.m, s.n, s.k, iters);
    std::printf("%-20s %7.1f us %7.1f us %7.3f | %9.1f / %7.1f us %9.1f / %7.1f us %7.3f   (%.0f TFLOP/s local; "
                "%.0f GB/s of output remote)\n",
                s.name, l, r, r / l, bl[0], bl[1], br[0], br[1], (br[0] + br[1]) / (bl[0] + bl[1]), flop / l * 1e-6,
                2.0 * s.m * s.n / r * 1e-3);
  }
  return 0;
}
