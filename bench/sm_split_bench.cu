// Microbenchmark for issue 6's remaining lever, decode attention beside the GEMMs (src/backend/cuda/
// README.md, "Where the open speed figures stand"): with the GPU's SMs split by CUDA green contexts,
// how much of the copy rate does a memory-bound kernel on N SMs draw, and how much slower does a
// decode step's GEMM run on the other SMs, alone and with both running at once?
//
// The memory-bound kernel stands in for flash_decode (an upper bound: it streams one buffer with
// 16-byte loads, no paging, no dependent chains); the GEMM is gate_up's at 1,000 decode rows
// (bf16, [1000, 3584] x [37888, 3584]^T, float32 accumulation, cublasGemmEx as the backend calls it).
// For each N: the stream kernel alone on N SMs (GB/s), the GEMM alone on the other SMs (TFLOP/s), both
// at once (each one's time over the same span), against each on the whole GPU. Built by hand on the GPU
// machine (it needs the driver library):
//
//   nvcc -std=c++17 -O3 -arch=sm_90a bench/sm_split_bench.cu -lcublas -lcuda -o smbench && ./smbench
//
// Results (H100, session 17): bench/RESULTS.md; the GEMM runs 16-20 % slower in a green context of
// 116-124 SMs, so this lever was crossed off (src/backend/cuda/README.md).
#include <cublas_v2.h>
#include <cuda.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_check.cuh"

inline void bench_check(CUresult r, const char* what, const char* file, int line) {
  if (r == CUDA_SUCCESS) return;
  const char* name = nullptr;
  cuGetErrorName(r, &name);
  std::fprintf(stderr, "%s:%d %s: %s\n", file, line, what, name ? name : "?");
  std::exit(1);
}

namespace {

constexpr size_t kStreamBytes = size_t(2) << 30;  // read once per pass: far beyond L2
constexpr int kM = 1000, kN = 37888, kK = 3584;    // gate_up at a 1,000-sequence decode step
constexpr int kReps = 20;                          // passes / GEMMs per measurement

__global__ void stream_read(const uint4* p, size_t n, unsigned* sink) {
  unsigned acc = 0;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;  // keeps the loads; practically never taken
}

__global__ void fill(__nv_bfloat16* p, size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = __float2bfloat16(float(int(i % 17) - 8) / 16.0f);
}

struct Buffers {
  uint4* stream = nullptr;
  unsigned* sink = nullptr;
  __nv_bfloat16 *x = nullptr, *w = nullptr, *y = nullptr;
};

// A stream whose kernels run on the given SMs only (a green context of its own), or the whole GPU.
struct Partition {
  CUgreenCtx ctx = nullptr;
  CUstream stream = nullptr;
  unsigned sms = 0;
};

Partition make_partition(CUdevice dev, CUdevResource* r) {
  Partition p;
  CUdevResourceDesc desc;
  CK(cuDevResourceGenerateDesc(&desc, r, 1));
  CK(cuGreenCtxCreate(&p.ctx, desc, dev, CU_GREEN_CTX_DEFAULT_STREAM));
  CK(cuGreenCtxStreamCreate(&p.stream, p.ctx, CU_STREAM_NON_BLOCKING, 0));
  p.sms = r->sm.smCount;
  return p;
}

void launch_stream(const Buffers& b, cudaStream_t s, int blocks) {
  for (int r = 0; r < kReps; ++r) stream_read<<<blocks, 512, 0, s>>>(b.stream, kStreamBytes / 16, b.sink);
  CK(cudaGetLastError());
}

void launch_gemm(cublasHandle_t h, const Buffers& b, cudaStream_t s) {
  const float alpha = 1.0f, beta = 0.0f;
  CK(cublasSetStream(h, s));
  for (int r = 0; r < kReps; ++r)
    CK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, kN, kM, kK, &alpha, b.w, CUDA_R_16BF, kK, b.x, CUDA_R_16BF, kK, &beta,
                    b.y, CUDA_R_16BF, kN, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// Milliseconds from the first launch until each stream's work is done (host clock, polling: events
// and streams of different contexts do not mix), both queued at once where both are given.
struct Times {
  float stream_ms = 0, gemm_ms = 0;
};
Times run(cublasHandle_t h, const Buffers& b, cudaStream_t ss, int blocks, cudaStream_t gs) {
  CK(cudaDeviceSynchronize());
  if (ss) CK(cudaStreamSynchronize(ss));
  if (gs) CK(cudaStreamSynchronize(gs));
  const auto t0 = std::chrono::steady_clock::now();
  if (ss) launch_stream(b, ss, blocks);
  if (gs) launch_gemm(h, b, gs);
  Times t;
  auto ms = [&] { return std::chrono::duration<float, std::milli>(std::chrono::steady_clock::now() - t0).count(); };
  for (bool s_done = !ss, g_done = !gs; !s_done || !g_done;) {
    if (!s_done && cudaStreamQuery(ss) == cudaSuccess) s_done = true, t.stream_ms = ms();
    if (!g_done && cudaStreamQuery(gs) == cudaSuccess) g_done = true, t.gemm_ms = ms();
  }
  CK(cudaGetLastError());
  return t;
}

double gbps(float ms) { return double(kStreamBytes) * kReps / (ms * 1e-3) / 1e9; }
double tflops(float ms) { return 2.0 * kM * double(kN) * kK * kReps / (ms * 1e-3) / 1e12; }

}  // namespace

int main() {
  CK(cudaSetDevice(0));
  CK(cudaFree(nullptr));  // the primary context, current on this thread
  CUdevice dev;
  CK(cuDeviceGet(&dev, 0));
  Buffers b;
  CK(cudaMalloc(&b.stream, kStreamBytes));
  CK(cudaMemset(b.stream, 1, kStreamBytes));
  CK(cudaMalloc(&b.sink, sizeof(unsigned)));
  CK(cudaMalloc(&b.x, sizeof(__nv_bfloat16) * kM * kK));
  CK(cudaMalloc(&b.w, sizeof(__nv_bfloat16) * size_t(kN) * kK));
  CK(cudaMalloc(&b.y, sizeof(__nv_bfloat16) * size_t(kM) * kN));
  fill<<<1024, 256>>>(b.x, size_t(kM) * kK);
  fill<<<1024, 256>>>(b.w, size_t(kN) * kK);
  CK(cudaDeviceSynchronize());
  cublasHandle_t h;
  CK(cublasCreate(&h));
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaStream_t whole, whole2;
  CK(cudaStreamCreateWithFlags(&whole, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&whole2, cudaStreamNonBlocking));

  run(h, b, whole, 4 * sms, whole);  // warm-up: kernels loaded, clocks up
  const Times alone_stream = run(h, b, whole, 4 * sms, nullptr), alone_gemm = run(h, b, nullptr, 0, whole);
  std::printf("whole GPU (%d SMs): stream %.0f GB/s, gemm %.0f TFLOP/s\n", sms, gbps(alone_stream.stream_ms),
              tflops(alone_gemm.gemm_ms));
  const Times both = run(h, b, whole, 4 * sms, whole2);
  std::printf("whole GPU, both at once on two streams: stream %.0f GB/s, gemm %.0f TFLOP/s\n", gbps(both.stream_ms),
              tflops(both.gemm_ms));

  CUdevResource all;
  CK(cuDeviceGetDevResource(dev, &all, CU_DEV_RESOURCE_TYPE_SM));
  std::printf("SM partitions: at least %u SMs, in steps of %u\n", all.sm.minSmPartitionSize,
              all.sm.smCoscheduledAlignment);
  std::printf("%8s %8s | %12s %12s | %12s %12s\n", "attn SMs", "gemm SMs", "alone GB/s", "alone TF/s", "both GB/s",
              "both TF/s");
  for (unsigned want : {8u, 16u, 24u, 32u, 48u}) {
    CUdevResource part, rest;
    unsigned groups = 1;
    CK(cuDevSmResourceSplitByCount(&part, &groups, &all, &rest, 0, want));
    if (groups < 1) continue;
    Partition a = make_partition(dev, &part), g = make_partition(dev, &rest);
    const auto as = reinterpret_cast<cudaStream_t>(a.stream), gs = reinterpret_cast<cudaStream_t>(g.stream);
    const int blocks = int(4 * a.sms);
    run(h, b, as, blocks, gs);  // warm-up in these contexts
    const Times s = run(h, b, as, blocks, nullptr), m = run(h, b, nullptr, 0, gs), t = run(h, b, as, blocks, gs);
    std::printf("%8u %8u | %12.0f %12.0f | %12.0f %12.0f\n", a.sms, g.sms, gbps(s.stream_ms), tflops(m.gemm_ms),
                gbps(t.stream_ms), tflops(t.gemm_ms));
    CK(cuStreamDestroy(a.stream));
    CK(cuStreamDestroy(g.stream));
    CK(cuGreenCtxDestroy(a.ctx));
    CK(cuGreenCtxDestroy(g.ctx));
  }
  cublasDestroy(h);
  return 0;
}
