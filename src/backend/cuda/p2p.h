// Sums over peer device memory for a tensor-parallel group whose ranks are threads of one process
// (src/parallel/README.md, All-reduce): the one-shot peer-to-peer all-reduce kernel
// (p2p_all_reduce.cu) for small messages, and two-rank sums moved by the copy engines for large
// ones. NcclCollectives (nccl.cpp) sets them up over its NCCL group and picks one per message.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "backend/cuda/kernels.h"
#include "core/tensor.h"

namespace apus::cuda {

// Every rank's words side by side, in rank order (a collective every rank calls at once).
using PeerGather = std::function<std::vector<int32_t>(const std::vector<int32_t>&)>;

// `bytes` of this rank's device memory (zeroed), mapped for every rank of the group with the
// driver's virtual-memory calls, and every rank's address of its own. Not
// cudaDeviceEnablePeerAccess: that maps every allocation of each device into its peers, and then
// freeing any of them (a workspace that grows, say) waits for the peers' devices, which may be
// waiting in a sum for this very rank: a deadlock.
class PeerMemory {
 public:
  // Collective. `devices`: every rank's device, by rank.
  PeerMemory(size_t bytes, int rank, const std::vector<int32_t>& devices, const PeerGather& gather);
  // Only once no peer can still touch this rank's memory: after a collective that follows the last
  // use has completed on this rank.
  ~PeerMemory();
  PeerMemory(const PeerMemory&) = delete;
  PeerMemory& operator=(const PeerMemory&) = delete;
  char* local() const { return static_cast<char*>(of_rank_[size_t(rank_)]); }
  char* of(int rank) const { return static_cast<char*>(of_rank_[size_t(rank)]); }

 private:
  int rank_;
  size_t mapped_bytes_ = 0;
  std::vector<void*> of_rank_;
};

class P2pAllReduce {
 public:
  // Collective: every rank calls it at once. Null (on every rank alike) when the group cannot use
  // it: world not 2, 4 or 8, a pair of devices without peer access, or APUS_TP_P2P=0.
  static std::unique_ptr<P2pAllReduce> create(int rank, int world, int device, const PeerGather& gather);
  ~P2pAllReduce();  // as ~PeerMemory
  P2pAllReduce(const P2pAllReduce&) = delete;
  P2pAllReduce& operator=(const P2pAllReduce&) = delete;

  // Messages up to this many bytes go through here (more: NCCL).
  size_t max_bytes() const { return max_bytes_; }
  bool fits(const Tensor& x) const;
  cudaError_t run(Tensor& x, cudaStream_t stream);
  // run(x), then residual += x; out = RMSNorm(residual) * w (Collectives::all_reduce_add_rms_norm),
  // in one kernel; x, residual and out must each fit.
  cudaError_t run_add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out,
                               cudaStream_t stream);
  // The group failed: kernels waiting for a peer stop waiting (from any thread).
  void abort() { *abort_host_ = 1; }
  // Every rank's device, by rank (for CopyEngineSum::create).
  const std::vector<int32_t>& devices() const { return devices_; }

 private:
  P2pAllReduce() = default;
  P2pArgs args_{};
  size_t max_bytes_ = 0;
  std::vector<int32_t> devices_;
  std::unique_ptr<PeerMemory> mem_;  // the buffers, then the signal slots and counters
  volatile int* abort_host_ = nullptr;
};

// The sum of two ranks' messages moved by the copy engines (no SMs taken from the GEMMs beside it,
// unlike NCCL's kernels or P2pAllReduce): each rank copies its message into the peer's receive
// buffer (cudaMemcpyAsync to peer memory over NVLink), the ranks order themselves with stream
// memory operations on flags in each other's memory (no host wait), and each adds the two messages
// locally, fused with the residual add and RMSNorm. Calls are ordered by a host counter that both
// ranks advance alike, so a call may not be recorded into a CUDA graph (replays would not advance
// it): the caller uses it for eager steps only. Large messages: a prefill chunk's sums (src/parallel/README.md).
class CopyEngineSum {
 public:
  // Collective. Null on every rank alike unless world is 2 and APUS_TP_CE is not 0; `devices` as
  // P2pAllReduce::devices() (each pair has peer access).
  static std::unique_ptr<CopyEngineSum> create(int rank, const std::vector<int32_t>& devices, const PeerGather& gather);
  ~CopyEngineSum();  // as ~PeerMemory
  CopyEngineSum(const CopyEngineSum&) = delete;
  CopyEngineSum& operator=(const CopyEngineSum&) = delete;

  // Whether x, residual or out can take part: contiguous, float dtype, 16-byte aligned, within a buffer.
  bool fits(const Tensor& t) const;
  // residual += x + the peer's x; out = RMSNorm(residual) * w, queued on `stream` (not capturing); x,
  // residual and out each fit and have one shape and dtype. With `produce` (Collectives::RowProducer),
  // x's rows are first produced on `stream` in chunks of APUS_TP_CE_CHUNK_ROWS (default 8,192; 0:
  // one), each chunk copied to the peer from a stream of its own while the next is produced.
  void run_add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out,
                        cudaStream_t stream, const std::function<void(int64_t, int64_t)>* produce = nullptr);
  // The group failed: streams waiting for the peer's flags stop waiting (from any thread).
  void abort();

 private:
  CopyEngineSum() = default;
  int device_ = 0;
  std::unique_ptr<PeerMemory> mem_;  // two receive buffers, then the flags
  char* peer_ = nullptr;             // the peer's mapping
  uint32_t calls_ = 0;
  cudaStream_t abort_stream_ = nullptr;
  cudaStream_t copy_stream_ = nullptr;  // the copies of produced chunks
  static constexpr int kMaxChunks = 8;
  cudaEvent_t chunk_done_[kMaxChunks] = {};  // a chunk produced (on the caller's stream)
  cudaEvent_t sent_ = nullptr;               // the copies done: x may be written again
  int64_t chunk_rows_ = 8192;
};

}  // namespace apus::cuda
