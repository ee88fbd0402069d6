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

constexpr size_t kBufferBytes = size_t(16) << 20;    // each of P2pAllReduce's two buffers a rank
constexpr size_t kCeBufferBytes = size_t(128) << 20;  // each of CopyEngineSum's two receive buffers

// The driver calls used here, found through the runtime (apus does not link libcuda).
struct Driver {
  decltype(&cuMemGetAllocationGranularity) granularity = nullptr;
  decltype(&cuMemCreate) create = nullptr;
  decltype(&cuMemRelease) release = nullptr;
  decltype(&cuMemAddressReserve) reserve = nullptr;
  decltype(&cuMemAddressFree) unreserve = nullptr;
  decltype(&cuMemMap) map = nullptr;
  decltype(&cuMemUnmap) unmap = nullptr;
  decltype(&cuMemSetAccess) set_access = nullptr;
  decltype(&cuStreamWaitValue32) wait_value = nullptr;
  decltype(&cuStreamWriteValue32) write_value = nullptr;
};

const Driver& driver() {
  static const Driver v = [] {
    Driver f;
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
    bind("cuStreamWaitValue32", &f.wait_value);
    bind("cuStreamWriteValue32", &f.write_value);
    return f;
  }();
  return v;
}

void check_driver(CUresult r, const char* what) {
  if (r != CUDA_SUCCESS) fail("CUDA driver error {} in {} (peer-to-peer sums)", int(r), what);
}

// A pointer as two words and back, for the gathers (one address space: the ranks are threads).
std::vector<int32_t> pointer_words(const void* p) {
  uint64_t v = 0;
  std::memcpy(&v, &p, sizeof(p));
  return {int32_t(v & 0xffffffffu), int32_t(v >> 32)};
}
void* words_pointer(const std::vector<int32_t>& all, size_t i) {
  const uint64_t v = uint64_t(uint32_t(all[i])) | (uint64_t(uint32_t(all[i + 1])) << 32);
  void* p = nullptr;
  std::memcpy(&p, &v, sizeof(p));
  return p;
}

}  // namespace

PeerMemory::PeerMemory(size_t bytes, int rank, const std::vector<int32_t>& devices, const PeerGather& gather)
    : rank_(rank) {
  const Driver& d = driver();
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = devices[size_t(rank)];
  size_t grain = 0;
  check_driver(d.granularity(&grain, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED), "cuMemGetAllocationGranularity");
  mapped_bytes_ = (bytes + grain - 1) / grain * grain;
  CUmemGenericAllocationHandle handle{};
  check_driver(d.create(&handle, mapped_bytes_, &prop, 0), "cuMemCreate");
  CUdeviceptr base = 0;
  CUresult status = d.reserve(&base, mapped_bytes_, grain, 0, 0);
  if (status == CUDA_SUCCESS) {
    status = d.map(base, mapped_bytes_, 0, handle, 0);
    if (status != CUDA_SUCCESS) d.unreserve(base, mapped_bytes_);
  }
  d.release(handle);  // the mapping keeps the memory
  check_driver(status, "cuMemAddressReserve/cuMemMap");
  std::vector<CUmemAccessDesc> access(devices.size());
  for (size_t p = 0; p < devices.size(); ++p) {
    access[p].location = {CU_MEM_LOCATION_TYPE_DEVICE, devices[p]};
    access[p].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  }
  of_rank_.assign(devices.size(), nullptr);
  of_rank_[size_t(rank)] = reinterpret_cast<void*>(base);
  try {
    check_driver(d.set_access(base, mapped_bytes_, access.data(), access.size()), "cuMemSetAccess");
    check_cuda(cudaMemset(local(), 0, mapped_bytes_), "cudaMemset");
    check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");  // zeroed before any peer writes it
    const std::vector<int32_t> all = gather(pointer_words(local()));
    for (size_t p = 0; p < devices.size(); ++p) of_rank_[p] = words_pointer(all, 2 * p);
  } catch (...) {
    d.unmap(base, mapped_bytes_);  // no destructor for a constructor that throws
    d.unreserve(base, mapped_bytes_);
    throw;
  }
}

PeerMemory::~PeerMemory() {
  const auto base = reinterpret_cast<CUdeviceptr>(local());
  driver().unmap(base, mapped_bytes_);
  driver().unreserve(base, mapped_bytes_);
}

std::unique_ptr<P2pAllReduce> P2pAllReduce::create(int rank, int world, int device, const PeerGather& gather) {
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
  r->devices_ = devices;
  // The buffers and signal slots: one mapping for every rank.
  constexpr size_t kSlots = size_t(kP2pMaxBlocks) * kP2pMaxRanks, kCounters = kP2pMaxBlocks;
  const size_t signal_bytes = (kSlots + kCounters) * sizeof(uint32_t);
  r->mem_ = std::make_unique<PeerMemory>(2 * kBufferBytes + signal_bytes, rank, devices, gather);
  int* host = nullptr;
  check_cuda(cudaHostAlloc(reinterpret_cast<void**>(&host), sizeof(int), cudaHostAllocMapped), "cudaHostAlloc");
  *host = 0;
  r->abort_host_ = host;
  int* dev_abort = nullptr;
  check_cuda(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dev_abort), host, 0), "cudaHostGetDevicePointer");
  P2pArgs& a = r->args_;
  for (int p = 0; p < world; ++p) {
    a.data[p] = r->mem_->of(p);
    a.signal[p] = reinterpret_cast<uint32_t*>(r->mem_->of(p) + 2 * kBufferBytes);
  }
  a.counter = a.signal[rank] + kSlots;
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
  mem_.reset();
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

namespace {

// CopyEngineSum's flags, after its two receive buffers in each rank's mapping: arrived[slot] (the
// peer's message of that call is in the buffer) and freed[slot] (the peer has read what this rank
// put into its buffer), each the number of the last such call; written by the peer only.
enum CeFlag : int { kArrived0 = 0, kFreed0 = 2, kCeFlags = 4 };
CUdeviceptr ce_flag(char* mapping, int f) {
  return reinterpret_cast<CUdeviceptr>(mapping + 2 * kCeBufferBytes + size_t(f) * sizeof(uint32_t));
}

}  // namespace

std::unique_ptr<CopyEngineSum> CopyEngineSum::create(int rank, const std::vector<int32_t>& devices,
                                                     const PeerGather& gather) {
  const char* env = std::getenv("APUS_TP_CE");
  // The same answer on every rank (one process, one environment).
  if (devices.size() != 2 || (env && std::string(env) == "0")) return nullptr;
  std::unique_ptr<CopyEngineSum> r(new CopyEngineSum());
  r->device_ = devices[size_t(rank)];
  r->mem_ = std::make_unique<PeerMemory>(2 * kCeBufferBytes + kCeFlags * sizeof(uint32_t), rank, devices, gather);
  r->peer_ = r->mem_->of(1 - rank);
  check_cuda(cudaStreamCreateWithFlags(&r->abort_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  check_cuda(cudaStreamCreateWithFlags(&r->copy_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  for (cudaEvent_t& e : r->chunk_done_) check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  check_cuda(cudaEventCreateWithFlags(&r->sent_, cudaEventDisableTiming), "cudaEventCreate");
  if (const char* rows = std::getenv("APUS_TP_CE_CHUNK_ROWS")) r->chunk_rows_ = std::atoll(rows);
  return r;
}

CopyEngineSum::~CopyEngineSum() {
  if (copy_stream_) cudaStreamSynchronize(copy_stream_);
  for (cudaEvent_t e : chunk_done_)
    if (e) cudaEventDestroy(e);
  if (sent_) cudaEventDestroy(sent_);
  if (copy_stream_) cudaStreamDestroy(copy_stream_);
  if (abort_stream_) cudaStreamDestroy(abort_stream_);
  mem_.reset();
}

bool CopyEngineSum::fits(const Tensor& t) const {
  const int64_t per_chunk = 16 / int64_t(dtype_size(t.dtype));  // add2_rms_norm's rows
  return t.device == Device::CUDA && t.contiguous() &&
         (t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16) && t.nbytes() <= kCeBufferBytes &&
         t.cols() % per_chunk == 0 && t.cols() <= 4096 * per_chunk && (reinterpret_cast<uintptr_t>(t.data) & 15u) == 0;
}

void CopyEngineSum::run_add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out,
                                     cudaStream_t stream, const std::function<void(int64_t, int64_t)>* produce) {
  const Driver& d = driver();
  const uint32_t n = ++calls_;
  const int slot = int(n & 1u);
  char* mine = mem_->local();
  auto wait = [&](cudaStream_t s, int f, uint32_t value) {
    check_driver(d.wait_value(s, ce_flag(mine, f), value, CU_STREAM_WAIT_VALUE_GEQ), "cuStreamWaitValue32");
  };
  // A write waits for what is before it on the stream and is fenced after it (the default flags).
  auto tell_peer = [&](cudaStream_t s, int f) {
    check_driver(d.write_value(s, ce_flag(peer_, f), n, CU_STREAM_WRITE_VALUE_DEFAULT), "cuStreamWriteValue32");
  };
  const int64_t rows = x.rows(), row_bytes = int64_t(x.nbytes()) / std::max<int64_t>(rows, 1);
  const int chunks = produce == nullptr || chunk_rows_ <= 0
                         ? 1
                         : int(std::clamp<int64_t>((rows + chunk_rows_ - 1) / chunk_rows_, 1, kMaxChunks));
  // One chunk: the copy on `stream` itself, after the product.
  const cudaStream_t cs = chunks > 1 ? copy_stream_ : stream;
  for (int c = 0; c < chunks; ++c) {
    const int64_t r0 = rows * c / chunks, r1 = rows * (c + 1) / chunks;
    if (produce) (*produce)(r0, r1);
    if (cs != stream) {
      check_cuda(cudaEventRecord(chunk_done_[c], stream), "cudaEventRecord");
      check_cuda(cudaStreamWaitEvent(cs, chunk_done_[c], 0), "cudaStreamWaitEvent");
    }
    // The peer's buffer `slot` was last filled two calls ago: wait until the peer has read that.
    if (c == 0 && n > 2) wait(cs, kFreed0 + slot, n - 2);
    check_cuda(cudaMemcpyAsync(peer_ + size_t(slot) * kCeBufferBytes + size_t(r0 * row_bytes),
                               static_cast<const char*>(x.data) + r0 * row_bytes, size_t((r1 - r0) * row_bytes),
                               cudaMemcpyDeviceToDevice, cs),
               "cudaMemcpyAsync to the peer");
  }
  tell_peer(cs, kArrived0 + slot);
  if (cs != stream) {  // x (read by the copies) is written again only after them
    check_cuda(cudaEventRecord(sent_, cs), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(stream, sent_, 0), "cudaStreamWaitEvent");
  }
  wait(stream, kArrived0 + slot, n);
  // Two addends in either order give the same bits: both ranks get the same sum.
  check_cuda(add2_rms_norm(x.dtype, residual.data, x.data, mine + size_t(slot) * kCeBufferBytes, w.ptr<float>(),
                           x.cols(), eps, out.data, x.rows(), stream),
             "add2_rms_norm");
  tell_peer(stream, kFreed0 + slot);
}

void CopyEngineSum::abort() {
  // Flags far ahead of any call (the waits compare as signed differences): waiting streams go on.
  int was = 0;
  if (cudaGetDevice(&was) != cudaSuccess || cudaSetDevice(device_) != cudaSuccess) return;
  for (int f = 0; f < kCeFlags; ++f)
    driver().write_value(abort_stream_, ce_flag(mem_->local(), f), 0x7fffffffu, CU_STREAM_WRITE_VALUE_DEFAULT);
  cudaSetDevice(was);
}

}  // namespace apus::cuda
