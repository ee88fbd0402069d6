// Paged attention on the CPU (prefill and decode alike): the reference the GPU kernels are
// checked against, and fast enough for small models on a few cores.
#pragma once
#include "backend/backend.h"

namespace apus {

void cpu_paged_attention(const Tensor& q, const KvLayer& cache, const AttentionBatch& batch,
                         Tensor& out, ThreadPool& pool);

}  // namespace apus
