// The part of a model one tensor-parallel rank holds (Megatron-style; src/parallel/README.md): a
// contiguous run of query heads with their KV heads (split across ranks, or replicated when there
// are fewer KV heads than ranks), a run of intermediate (MLP) columns, and a run of vocabulary rows
// of the embedding and lm_head. Column-parallel matrices (q/k/v, gate/up, lm_head) keep their rows,
// row-parallel ones (o_proj, down) their columns; one all-reduce follows each row-parallel matrix.
#pragma once
#include <cstdint>

#include "model/config.h"

namespace apus {

struct Shard {
  int rank = 0;
  int world = 1;
  int heads = 0, head0 = 0;        // query heads [head0, head0 + heads)
  int kv_heads = 0, kv_head0 = 0;  // KV heads [kv_head0, kv_head0 + kv_heads)
  int64_t inter = 0, inter0 = 0;   // intermediate columns [inter0, inter0 + inter)
  int64_t vocab = 0, vocab0 = 0;   // vocabulary rows [vocab0, vocab0 + vocab) of a padded share:
                                   // every rank's lm_head has vocab_padded rows (zeros past the end)
  int64_t vocab_padded = 0;

  // Rank `rank` of `world` (1: the whole model); fails naming the config field that does not split.
  static Shard of(const ModelConfig& c, int rank, int world);
  // The rank's own config: its heads, KV heads and intermediate size (the vocabulary stays whole).
  ModelConfig local(const ModelConfig& c) const;
  bool whole() const { return world == 1; }
};

}  // namespace apus
