// The CUDA backend (built when CMake finds nvcc: -DAPUS_CUDA=ON|OFF|AUTO). See README.md beside this.
#pragma once
#include <array>
#include <functional>
#include <memory>

#include "backend/backend.h"

namespace apus {

// Usable CUDA devices; 0 when there is no GPU or no driver (the CPU build path never fails here).
int cuda_device_count();
std::unique_ptr<Backend> make_cuda_backend(int device_index);

// Tensor parallelism over NCCL (src/backend/cuda/nccl.cpp; src/parallel/README.md). NCCL is opened
// with dlopen on first use (libnccl.so.2: APUS_NCCL_LIBRARY, the loader's path, the CUDA toolkit).
using NcclId = std::array<char, 128>;
NcclId nccl_unique_id();
// Rank `rank` of `world` over `backend` (a CUDA backend), its ops queued on the backend's stream.
// Every rank calls this at once (it returns when all have joined). While the group lives, the
// backend waits for its stream by polling and calls the group's check, which throws once the group
// has failed, or, when a wait has lasted longer than `timeout_s` (0: no limit), aborts this rank,
// calls `on_timeout(why)` (to stop the others) and throws. `one_process`: every rank is a thread of
// this process, so small sums may use the peer-to-peer kernel (p2p.h) instead of NCCL.
std::unique_ptr<Collectives> make_nccl_collectives(Backend& backend, const NcclId& id, int rank, int world,
                                                   double timeout_s, bool one_process,
                                                   std::function<void(const std::string&)> on_timeout);

namespace cuda {
class OpProfile;
// The CUDA backend's stream (a cudaStream_t), device, op profile, and the hooks the collectives use.
void* stream_of(Backend& b);
OpProfile& profile_of(Backend& b);
int device_of(Backend& b);
void set_wait_check(Backend& b, std::function<void(double waited_s)> check);
void wait(Backend& b);  // waits for the backend's stream (polling, with the check, when set)
}  // namespace cuda

}  // namespace apus
