#include "kv/kv_cache.h"

#include <atomic>

namespace apus {

size_t KvCache::bytes() const {
  size_t n = 0;
  for (const auto& l : layers) n += l.k.nbytes() + l.v.nbytes();
  return n;
}

size_t KvCache::bytes_per_block(const ModelConfig& c, int block_size, DType dtype) {
  return size_t(2) * size_t(c.num_layers) * size_t(block_size) * size_t(c.kv_size()) * dtype_size(dtype);
}

KvCache KvCache::create(Backend& backend, const ModelConfig& c, int num_blocks, int block_size) {
  static std::atomic<uint64_t> next_id{1};
  KvCache kv;
  kv.id = next_id++;
  kv.num_blocks = num_blocks;
  kv.block_size = block_size;
  const std::vector<int64_t> shape{num_blocks, block_size, c.num_kv_heads, c.head_dim};
  for (int i = 0; i < c.num_layers; ++i)
    kv.layers.push_back({backend.alloc(backend.activation_dtype(), shape),
                         backend.alloc(backend.activation_dtype(), shape)});
  return kv;
}

}  // namespace apus
