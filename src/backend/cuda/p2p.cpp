#include "backend/cuda/p2p.h"

#include <cuda.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "core/error.h"

namespace apus::cuda {

namespace {

constexpr size_t kBufferBytes = size_t(16) << 20;  // each of a rank's two buffers


// The driver's virtual memory calls, found through the runtime (apus does not link libcuda).
struct Vmm {
  decltype(&cuMemGetAllocationGranularity) granularity = nullptr;
  decltype(&cuMemCreate) create = nullptr;
  decltype(&cuMemRelease) release = nullptr;
  decltype(&cuMemAddressReserve) reserve = nullptr;
  decltype(&cuMemAddressFree) unreserve = nullptr;
  decltype(&cuMemMap) map = nullptr;
  decltype(&cuMemUnmap) unmap = nullptr;
  decltype(&cuMemSetAccess) set_access = nullptr;
};

const Vmm& vmm() {
  static const Vmm v = [] {
    Vmm f;
    auto bind = [](const char* name, auto* fn) {
      void* p = nullptr;
      cudaDriverEntryPointQueryResult found{};
      check_cuda(cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &found), name);
      APUS_CHECK(found == cudaDriverEntryPointSuccess && p, "the CUDA driver has no {}", name);
      *fn = reinterpret_cast<std::remove_pointer_t<decltype(fn)>>(p);
    };
    bind("cuMemGetAllocationGranularity", &f.granularity);
    bind("cuMemCreate", &f.create);
    bind("cuMemRelease", &f.release);
    bind("cuMemAddressReserve", &f.reserve);
    bind("cuMemAddressFree", &f.unreserve);
    bind("cuMemMap", &f.map);
    bind("cuMemUnmap", &f.unmap);
    bind("cuMemSetAccess", &f.set_access);
    return f;
  }();
  return v;
}

void check_driver(CUresult r, const char* what) {
  if (r != CUDA_SUCCESS) fail("CUDA driver error {} in {} (peer-to-peer all-reduce)", int(r), what);
}

}  // namespace

std::unique_ptr<P2pAllReduce> P2pAllReduce::create(int rank, int world, int device, const Gather& gather) {
  // On unless APUS_TP_P2P=0 (src/parallel/README.md, All-reduce: status).
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
  // The buffers and signal slots: device memory of this rank mapped for its peers too. Not
  // cudaDeviceEnablePeerAccess: that maps every allocation of each device into its peers, and then
  // freeing any of them (a workspace that grows, say) waits for the peers' devices, which may be
  // waiting in this kernel for this very rank: a deadlock.
  constexpr size_t kSlots = size_t(kP2pMaxBlocks) * kP2pMaxRanks, kCounters = kP2pMaxBlocks;
  const size_t signal_bytes = (kSlots + kCounters) * sizeof(uint32_t);
  const Vmm& driver = vmm();
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  size_t grain = 0;
  check_driver(driver.granularity(&grain, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED), "cuMemGetAllocationGranularity");
  r->mapped_bytes_ = (2 * kBufferBytes + signal_bytes + grain - 1) / grain * grain;
  CUmemGenericAllocationHandle handle{};
  check_driver(driver.create(&handle, r->mapped_bytes_, &prop, 0), "cuMemCreate");
  CUdeviceptr base = 0;
  CUresult status = driver.reserve(&base, r->mapped_bytes_, grain, 0, 0);
  if (status == CUDA_SUCCESS) {
    status = driver.map(base, r->mapped_bytes_, 0, handle, 0);
    if (status != CUDA_SUCCESS) driver.unreserve(base, r->mapped_bytes_);
  }
  driver.release(handle);  // the mapping keeps the memory
  check_driver(status, "cuMemAddressReserve/cuMemMap");
  std::vector<CUmemAccessDesc> access(static_cast<size_t>(world));
  for (int p = 0; p < world; ++p) {
    access[size_t(p)].location = {CU_MEM_LOCATION_TYPE_DEVICE, devices[size_t(p)]};
    access[size_t(p)].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  }
  r->data_ = reinterpret_cast<void*>(base);  // owned (unmapped by the destructor) from here
  check_driver(driver.set_access(base, r->mapped_bytes_, access.data(), access.size()), "cuMemSetAccess");
  r->signal_ = reinterpret_cast<uint32_t*>(static_cast<char*>(r->data_) + 2 * kBufferBytes);
  check_cuda(cudaMemset(r->signal_, 0, signal_bytes), "cudaMemset");
  int* host = nullptr;
  check_cuda(cudaHostAlloc(reinterpret_cast<void**>(&host), sizeof(int), cudaHostAllocMapped), "cudaHostAlloc");
  *host = 0;
  r->abort_host_ = host;
  int* dev_abort = nullptr;
  check_cuda(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dev_abort), host, 0), "cudaHostGetDevicePointer");
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");  // the zeroed slots, before any peer writes them
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
  if (const char* limit = std::getenv("APUS_TP_P2P_SPIN_LIMIT")) a.spin_limit_ns = static_cast<unsigned long long>(std::atof(limit) * 1e9);
  a.rank = rank;
  a.world = world;
  // One rank reads every peer's message: beyond two ranks, large messages are NCCL's (its ring
  // moves each byte once). APUS_TP_P2P_MAX_BYTES lowers the limit, to compare with NCCL (2 x H200,
  // session 11: with sums of up to ~1,000 decode rows, 7 MB, going to NCCL throughput fell 1 %).
  r->max_bytes_ = world == 2 ? kBufferBytes : size_t(4) << 20;
  if (const char* cap = std::getenv("APUS_TP_P2P_MAX_BYTES"))
    r->max_bytes_ = std::min(r->max_bytes_, static_cast<size_t>(std::strtoull(cap, nullptr, 10)));
  return r;
}

P2pAllReduce::~P2pAllReduce() {
  if (data_) {
    const auto base = reinterpret_cast<CUdeviceptr>(data_);
    vmm().unmap(base, mapped_bytes_);
    vmm().unreserve(base, mapped_bytes_);
  }
  if (abort_host_) cudaFreeHost(const_cast<int*>(abort_host_));
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
