// The paged KV cache: per layer, K and V of shape [num_blocks, block_size, kv_heads, head_dim],
// the same layout on every backend. Sequences address it through block tables.
#pragma once
#include <vector>

#include "backend/backend.h"
#include "model/config.h"

namespace apus {

struct KvCache {
  uint64_t id = 0;  // unique per create() in this process (tensor-parallel ranks mirror rank 0's cache by it)
  int num_blocks = 0;
  int block_size = 0;
  std::vector<KvLayer> layers;

  size_t bytes() const;
  static size_t bytes_per_block(const ModelConfig& c, int block_size, DType dtype);
  static KvCache create(Backend& backend, const ModelConfig& c, int num_blocks, int block_size);
};

}  // namespace apus
