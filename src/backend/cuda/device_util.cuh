// Device-side helpers shared by the .cu files: float conversion for each activation dtype, dtype
// dispatch, warp and block reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/dtype.h"

namespace apus::cuda {

template <typename T>
struct Num;
template <>
struct Num<float> {
  static __device__ __forceinline__ float to_float(float x) { return x; }
  static __device__ __forceinline__ float from_float(float x) { return x; }
};
template <>
struct Num<__half> {
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
};
template <>
struct Num<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

template <typename T>
__device__ __forceinline__ float to_f(T x) { return Num<T>::to_float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x) { return Num<T>::from_float(x); }

// Runs `body` with T bound to the C++ type of activation dtype `dt`; other dtypes return
// cudaErrorInvalidValue (the backend never passes them).
#define APUS_DISPATCH_FLOAT(dt, T, ...)                \
  switch (dt) {                                        \
    case ::apus::DType::F32: {                         \
      using T = float;                                 \
      __VA_ARGS__;                                     \
      break;                                           \
    }                                                  \
    case ::apus::DType::F16: {                         \
      using T = __half;                                \
      __VA_ARGS__;                                     \
      break;                                           \
    }                                                  \
    case ::apus::DType::BF16: {                        \
      using T = __nv_bfloat16;                         \
      __VA_ARGS__;                                     \
      break;                                           \
    }                                                  \
    default:                                           \
      return cudaErrorInvalidValue;                    \
  }

// silu(g) * u, as silu_mul computes it from g and u already rounded to the activation dtype (the
// fused decode kernels use the same expression, so that their results are the two ops' bits).
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();  // `partial` may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : 0.0f;
  return warp_sum(v);
}

// mma.sync m16n8k16 (sm_80+): c += a b, a 16x16 row-major and b 16x8 column-major in T (bf16 or
// f16) fragments of the PTX ISA's layout, c float32.
template <typename T>
__device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma<__half>(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ldmatrix (sm_75+): four 8x8 matrices of 16-bit values from shared memory, one row address per
// lane, into mma fragments (_trans: transposed).
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* p) {
  const unsigned a = unsigned(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* p) {
  const unsigned a = unsigned(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// Elements per shared-memory row of HD 16-bit values padded by 16 bytes, so that the 8 row
// addresses of an ldmatrix fall in different banks.
template <int HD>
__host__ __device__ constexpr int padded_row() { return HD + 8; }

// Two floats as one register of two 16-bit values (the first in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

inline unsigned ceil_div(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Lets `Kernel` use `smem` bytes of dynamic shared memory (> 48 KiB needs opting in) on the current
// device. The attribute is per device, so it is raised once per device (tensor-parallel ranks run
// on several from one process).
template <auto Kernel>
cudaError_t allow_shared_memory(size_t smem) {
  constexpr int kMaxDevices = 64;
  static std::atomic<size_t> raised[kMaxDevices] = {};
  if (smem <= 48 * 1024) return cudaSuccess;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  if (dev < kMaxDevices && raised[dev].load() >= smem) return cudaSuccess;
  e = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess || dev >= kMaxDevices) return e;
  size_t cur = raised[dev].load();
  while (cur < smem && !raised[dev].compare_exchange_weak(cur, smem)) {
  }
  return cudaSuccess;
}

// Programmatic dependent launch (PDL, sm_90+): every kernel here is launched by launch_kernel(),
// which lets it start while the kernel before it in the stream is still running (inside CUDA graphs
// too). pdl_begin() waits until that kernel has completed and its writes are visible, then lets the
// next kernel start in turn. Each kernel calls it before it touches anything another kernel writes
// or reads, and before any of its threads returns, so that completion stays ordered along the
// stream; only loads of what the kernel before it cannot be writing may come before it: weights
// (no kernel writes them during a step), and in flash_decode the step's tables and the keys and
// values of earlier positions (written before that kernel started). Without
// PDL (older GPUs, APUS_CUDA_PDL=0, or a launch without the attribute) both instructions are no-ops.
// EarlyNext: let the next kernel start before this one waits, so that the next kernel's loads
// before its own pdl_begin() (weights) overlap the kernel before this one too, not only this one.
// Completion stays ordered (every kernel still waits before it finishes), but that next kernel may
// then load before its wait only what no kernel of the chain writes (weights, not the step's earlier
// keys and values: the kernel before this one may still run), and its blocks take their places on
// the multiprocessors early: worth it only where measured (single-row norms before int4
// projections, src/backend/cuda/README.md).
#ifdef APUS_CUDA_TRACE
// The step tracer (a build with -DAPUS_CUDA_TRACE=ON only; trace.cu): while armed, thread 0 of every
// block records the global timer just before and just after pdl_begin()'s wait, and at the
// trace_mark(tag) points a kernel may have. Every .cu file has its own copy of g_trace (no
// relocatable device code), installed through trace_register.
struct TraceRecord {
  unsigned long long pre, post;       // ns: the block at its wait (its loads before it issued), and released
  unsigned grid, threads, block, sm;  // blocks in the grid, threads a block, this block, its multiprocessor
};
constexpr int kTraceMarks = 4;  // trace_mark tags: 0 the kernel's entry, 1..3 its own points
struct TraceState {
  unsigned armed, n, cap, pad;
  unsigned long long* marks;  // [cap][kTraceMarks] ns, 0 where a block passed no such mark
  TraceRecord rec[1];         // cap of them
};
void trace_register(cudaError_t (*install)(TraceState*));
namespace {
__device__ TraceState* g_trace = nullptr;
__shared__ unsigned long long* g_trace_marks;  // this block's marks (thread 0's), null when not recorded
cudaError_t trace_install(TraceState* s) { return cudaMemcpyToSymbol(g_trace, &s, sizeof s); }
[[maybe_unused]] const bool g_trace_registered = (trace_register(trace_install), true);
}  // namespace
__device__ __forceinline__ unsigned long long trace_now() {  // the global timer, ns
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ bool trace_thread() { return threadIdx.x + threadIdx.y + threadIdx.z == 0; }
// Thread 0 of a recorded block notes the time `t` (a store, no wait) as mark `tag`; after pdl_begin()
// only. Tag 0 is the kernel's entry: `const auto t0 = trace_now();` as its first line, then
// `trace_mark(0, t0)` after pdl_begin() (launch latency against the time its preamble takes).
__device__ __forceinline__ void trace_mark(int tag, unsigned long long t = trace_now()) {
  if (trace_thread() && g_trace_marks != nullptr) g_trace_marks[tag] = t;
}
#else
__device__ __forceinline__ unsigned long long trace_now() { return 0; }
__device__ __forceinline__ void trace_mark(int, unsigned long long = 0) {}
#endif

template <bool EarlyNext = false>
__device__ __forceinline__ void pdl_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#ifdef APUS_CUDA_TRACE
  TraceState* const ts = g_trace;
  const bool rec = ts != nullptr && trace_thread() && *static_cast<volatile unsigned*>(&ts->armed) != 0;
  unsigned long long pre = 0, *marks = nullptr;
  unsigned slot = 0, cap = 0;
  if (rec) {  // the loads' and the atomic's round trips overlap the wait
    pre = trace_now();
    cap = ts->cap;
    marks = ts->marks;
    slot = atomicAdd(&ts->n, 1u);
  }
#endif
  if constexpr (EarlyNext) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  asm volatile("griddepcontrol.wait;" ::: "memory");
  if constexpr (!EarlyNext) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#ifdef APUS_CUDA_TRACE
  if (trace_thread()) g_trace_marks = rec && slot < cap ? marks + slot * kTraceMarks : nullptr;
  if (rec && slot < cap) {
    unsigned sm;
    asm volatile("mov.u32 %0, %smid;" : "=r"(sm));
    ts->rec[slot] = {pre, trace_now(), gridDim.x * gridDim.y * gridDim.z, blockDim.x * blockDim.y * blockDim.z,
                     blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z), sm};
  }
#endif
#endif
}

// Brings the 128-byte line at p into L2 (no register, no wait).
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Attribute A of the current device (0 if it cannot be read), asked once per device: tensor-parallel
// ranks drive several devices from one process.
template <cudaDeviceAttr A>
int device_attribute() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> known[kMaxDevices] = {};  // the value + 1; 0: not asked yet
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (dev < kMaxDevices) {
    const int k = known[dev].load(std::memory_order_relaxed);
    if (k != 0) return k - 1;
  }
  int v = 0;
  if (cudaDeviceGetAttribute(&v, A, dev) != cudaSuccess) v = 0;
  if (dev < kMaxDevices) known[dev].store(v + 1, std::memory_order_relaxed);
  return v;
}

// A kernel file's on/off switch from the environment: `on` unless NAME=0 where on by default, off
// unless NAME=1 where off.
inline bool env_switch(const char* name, bool on) {
  const char* e = std::getenv(name);
  if (e == nullptr) return on;
  return on ? std::strcmp(e, "0") != 0 : std::strcmp(e, "1") == 0;
}

// Whether launches on the current device use PDL: compute capability 9.0 or more, unless
// APUS_CUDA_PDL=0.
inline bool pdl_enabled() {
  static const bool allowed = env_switch("APUS_CUDA_PDL", true);
  return allowed && device_attribute<cudaDevAttrComputeCapabilityMajor>() >= 9;
}

// kernel<<<grid, block, smem, stream>>>(args...), with PDL where pdl_enabled().
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace apus::cuda
