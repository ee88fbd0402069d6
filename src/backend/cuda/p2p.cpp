#include "backend/cuda/p2p.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"

namespace apus::cuda {

namespace {

constexpr size_t kBufferBytes = size_t(16) << 20;  // each of a rank's two buffers

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in {} (peer-to-peer all-reduce): {}", what, cudaGetErrorString(e));
}

}  // namespace

std::unique_ptr<P2pAllReduce> P2pAllReduce::create(int rank, int world, int device, const Gather& gather) {
  const char* env = std::getenv("APUS_TP_P2P");
  const bool want = !(env && std::string(env) == "0") && (world == 2 || world == 4 || world == 8);
  // Every rank must decide alike: first every rank's device (-1: not wanted), then every verdict.
  const std::vector<int32_t> devices = gather({want ? device : -1});
  bool ok = true;
  for (int p = 0; p < world; ++p) {
    if (devices[size_t(p)] < 0) ok = false;
    if (!ok || p == rank) continue;
    int can = 0;
    ok = cudaDeviceCanAccessPeer(&can, device, devices[size_t(p)]) == cudaSuccess && can != 0;
  }
  for (int32_t v : gather({ok ? 1 : 0}))
    if (v == 0) return nullptr;

  std::unique_ptr<P2pAllReduce> r(new P2pAllReduce());
  for (int p = 0; p < world; ++p) {
    if (p == rank) continue;
    const cudaError_t e = cudaDeviceEnablePeerAccess(devices[size_t(p)], 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();  // another group of this process did
    else check(e, "cudaDeviceEnablePeerAccess");
  }
  constexpr size_t kSlots = size_t(kP2pMaxBlocks) * kP2pMaxRanks, kCounters = kP2pMaxBlocks;
  check(cudaMalloc(&r->data_, 2 * kBufferBytes), "cudaMalloc");
  check(cudaMalloc(reinterpret_cast<void**>(&r->signal_), (kSlots + kCounters) * sizeof(uint32_t)), "cudaMalloc");
  check(cudaMemset(r->signal_, 0, (kSlots + kCounters) * sizeof(uint32_t)), "cudaMemset");
  int* host = nullptr;
  check(cudaHostAlloc(reinterpret_cast<void**>(&host), sizeof(int), cudaHostAllocMapped), "cudaHostAlloc");
  *host = 0;
  r->abort_host_ = host;
  int* dev_abort = nullptr;
  check(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dev_abort), host, 0), "cudaHostGetDevicePointer");
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");  // the zeroed slots, before any peer writes them
  // Every rank's buffer and signal addresses (one address space: the ranks are threads of this process).
  auto words = [](const void* p) {
    uint64_t v = 0;
    std::memcpy(&v, &p, sizeof(p));
    return std::pair<int32_t, int32_t>(int32_t(v & 0xffffffffu), int32_t(v >> 32));
  };
  const auto [d0, d1] = words(r->data_);
  const auto [s0, s1] = words(r->signal_);
  const std::vector<int32_t> all = gather({d0, d1, s0, s1});
  auto pointer = [&](size_t i) {
    const uint64_t v = uint64_t(uint32_t(all[i])) | (uint64_t(uint32_t(all[i + 1])) << 32);
    void* p = nullptr;
    std::memcpy(&p, &v, sizeof(p));
    return p;
  };
  P2pArgs& a = r->args_;
  for (int p = 0; p < world; ++p) {
    a.data[p] = pointer(size_t(p) * 4);
    a.signal[p] = static_cast<uint32_t*>(pointer(size_t(p) * 4 + 2));
  }
  a.counter = r->signal_ + kSlots;
  a.abort = dev_abort;
  a.buffer_bytes = kBufferBytes;
  a.rank = rank;
  a.world = world;
  // One rank reads every peer's message: beyond two ranks, large messages are NCCL's (its ring
  // moves each byte once).
  r->max_bytes_ = world == 2 ? kBufferBytes : size_t(4) << 20;
  return r;
}

P2pAllReduce::~P2pAllReduce() {
  cudaFree(data_);
  cudaFree(signal_);
  cudaFreeHost(const_cast<int*>(abort_host_));
}

bool P2pAllReduce::fits(const Tensor& x) const {
  return x.device == Device::CUDA && x.contiguous() &&
         (x.dtype == DType::F32 || x.dtype == DType::F16 || x.dtype == DType::BF16) && x.nbytes() <= max_bytes_ &&
         x.nbytes() % 16 == 0 && (reinterpret_cast<uintptr_t>(x.data) & 15u) == 0;
}

cudaError_t P2pAllReduce::run(Tensor& x, cudaStream_t stream) {
  return p2p_all_reduce(x.dtype, x.data, int64_t(x.nbytes()), args_, stream);
}

cudaError_t P2pAllReduce::run_add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out,
                                           cudaStream_t stream) {
  return p2p_add_rms_norm(x.dtype, x.data, residual.data, w.ptr<float>(), eps, out.data, x.rows(), x.cols(), args_,
                          stream);
}

}  // namespace apus::cuda
