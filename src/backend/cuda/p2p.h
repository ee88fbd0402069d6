// The one-shot peer-to-peer all-reduce (p2p_all_reduce.cu) of a tensor-parallel group whose ranks
// are threads of one process: buffers, peer access and the kernel's arguments. NcclCollectives
// (nccl.cpp) sets it up over its NCCL group and uses it for messages up to max_bytes().
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "backend/cuda/kernels.h"
#include "core/tensor.h"

namespace apus::cuda {

class P2pAllReduce {
 public:
  // Every rank's words side by side, in rank order (a collective every rank calls at once).
  using Gather = std::function<std::vector<int32_t>(const std::vector<int32_t>&)>;
  // Collective: every rank calls it at once. Null (on every rank alike) when the group cannot use
  // it: world not 2, 4 or 8, a pair of devices without peer access, or APUS_TP_P2P=0.
  static std::unique_ptr<P2pAllReduce> create(int rank, int world, int device, const Gather& gather);
  // Call only once no peer can still be reading this rank's buffers: after a collective that
  // follows the last use has completed on this rank.
  ~P2pAllReduce();
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

 private:
  P2pAllReduce() = default;
  P2pArgs args_{};
  size_t max_bytes_ = 0;
  void* data_ = nullptr;  // the buffers, then the signal slots and counters: one mapping for every rank
  size_t mapped_bytes_ = 0;
  uint32_t* signal_ = nullptr;
  volatile int* abort_host_ = nullptr;
};

}  // namespace apus::cuda
