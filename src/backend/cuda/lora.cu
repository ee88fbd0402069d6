// Batched LoRA for a flat batch mixing adapters (Punica's BGMV): every token reads its adapter's
// A and B through the slot index in the step's metadata, so one graph serves any mix of adapters.
// Shrink: v[t, p, r] = A_s[r] . x[t] (a warp per rank, float32); expand: out[t, off_p + o] +=
// B_s[o] . v[t, p] (a thread per output column, v in shared memory). Tokens of slot -1 return at once.
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

namespace apus::cuda {

namespace {

template <typename T>
__global__ void lora_shrink_kernel(const T* x, int64_t x_stride, const int32_t* slots, LoraArgs p, float* v) {
  const int64_t t = blockIdx.x;
  const int part = blockIdx.y;
  const int s = slots[t];
  if (s < 0 || s >= p.num_slots) return;
  const T* xr = x + t * x_stride;
  const T* a = static_cast<const T*>(p.a[part]) + int64_t(s) * p.rank * p.in;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int r = warp; r < p.rank; r += warps) {
    const T* ar = a + int64_t(r) * p.in;
    float acc = 0.0f;
    for (int64_t i = lane; i < p.in; i += 32) acc += to_f(xr[i]) * to_f(ar[i]);
    acc = warp_sum(acc);
    if (lane == 0) v[(t * kLoraMaxParts + part) * p.rank + r] = acc;
  }
}

template <typename T>
__global__ void lora_expand_kernel(const int32_t* slots, LoraArgs p, const float* v, T* out, int64_t out_stride) {
  const int64_t t = blockIdx.x;
  const int part = blockIdx.y;
  const int s = slots[t];
  if (s < 0 || s >= p.num_slots) return;
  extern __shared__ float vs[];
  for (int r = threadIdx.x; r < p.rank; r += blockDim.x) vs[r] = v[(t * kLoraMaxParts + part) * p.rank + r];
  __syncthreads();
  const int64_t n = p.n[part];
  const T* b = static_cast<const T*>(p.b[part]) + int64_t(s) * n * p.rank;
  T* o = out + t * out_stride + p.offset[part];
  for (int64_t c = int64_t(blockIdx.z) * blockDim.x + threadIdx.x; c < n; c += int64_t(gridDim.z) * blockDim.x) {
    const T* br = b + c * p.rank;
    float acc = 0.0f;
    for (int r = 0; r < p.rank; ++r) acc += vs[r] * to_f(br[r]);
    o[c] = from_f<T>(to_f(o[c]) + acc);
  }
}

}  // namespace

cudaError_t lora(DType dt, const void* x, int64_t x_stride, int64_t tokens, const int32_t* slots, const LoraArgs& p,
                 float* scratch, void* out, int64_t out_stride, cudaStream_t stream) {
  if (tokens == 0 || p.count == 0) return cudaSuccess;
  const dim3 grid(unsigned(tokens), unsigned(p.count));
  int64_t max_n = 0;
  for (int i = 0; i < p.count; ++i) max_n = p.n[i] > max_n ? p.n[i] : max_n;
  const dim3 grid_e(unsigned(tokens), unsigned(p.count), ceil_div(max_n, 256) < 16 ? ceil_div(max_n, 256) : 16u);
  APUS_DISPATCH_FLOAT(dt, T, {
    lora_shrink_kernel<T><<<grid, 256, 0, stream>>>(static_cast<const T*>(x), x_stride, slots, p, scratch);
    lora_expand_kernel<T><<<grid_e, 256, size_t(p.rank) * sizeof(float), stream>>>(slots, p, scratch,
                                                                                    static_cast<T*>(out), out_stride);
  });
  return cudaGetLastError();
}

}  // namespace apus::cuda
