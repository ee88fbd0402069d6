// Rotary position embedding frequencies as transformers computes them (float32), including the
// rope_scaling variants. Dynamic NTK depends on the sequence's current length, as in transformers'
// dynamic_rope_update: frequencies are recomputed from max(seq_len, max_position_embeddings).
#pragma once
#include <vector>

#include "model/config.h"

namespace apus {

class Rope {
 public:
  explicit Rope(const ModelConfig& c);
  int half() const { return int(base_inv_freq_.size()); }
  // cos/sin of position `pos` for a sequence of current length `seq_len`, half() floats each.
  void fill(int pos, int seq_len, float* cos, float* sin) const;

 private:
  std::vector<float> inv_freq_for(int seq_len) const;

  ModelConfig config_;
  std::vector<float> base_inv_freq_;
};

}  // namespace apus
