#include "model/shard.h"

#include <algorithm>

#include "core/error.h"

namespace apus {

Shard Shard::of(const ModelConfig& c, int rank, int world) {
  APUS_CHECK(world >= 1 && rank >= 0 && rank < world, "tensor parallel: rank {} of {}", rank, world);
  Shard s;
  s.rank = rank;
  s.world = world;
  APUS_CHECK(c.num_heads % world == 0, "tensor parallel size {} does not divide num_attention_heads {}", world,
             c.num_heads);
  APUS_CHECK(c.intermediate_size % world == 0, "tensor parallel size {} does not divide intermediate_size {}", world,
             c.intermediate_size);
  s.heads = c.num_heads / world;
  s.head0 = rank * s.heads;
  if (c.num_kv_heads >= world) {
    APUS_CHECK(c.num_kv_heads % world == 0, "tensor parallel size {} does not divide num_key_value_heads {}", world,
               c.num_kv_heads);
    s.kv_heads = c.num_kv_heads / world;
    s.kv_head0 = rank * s.kv_heads;
  } else {  // fewer KV heads than ranks: each rank keeps (a copy of) the one its query heads read
    APUS_CHECK(world % c.num_kv_heads == 0, "tensor parallel size {} is not a multiple of num_key_value_heads {}",
               world, c.num_kv_heads);
    s.kv_heads = 1;
    s.kv_head0 = s.head0 / (c.num_heads / c.num_kv_heads);
  }
  s.inter = c.intermediate_size / world;
  s.inter0 = rank * s.inter;
  s.vocab_padded = (c.vocab_size + world - 1) / world;
  s.vocab0 = std::min<int64_t>(c.vocab_size, rank * s.vocab_padded);
  s.vocab = std::min<int64_t>(s.vocab_padded, c.vocab_size - s.vocab0);
  return s;
}

ModelConfig Shard::local(const ModelConfig& c) const {
  ModelConfig l = c;
  l.num_heads = heads;
  l.num_kv_heads = kv_heads;
  l.intermediate_size = inter;
  return l;
}

}  // namespace apus
