// Rotary position embedding frequencies as transformers computes them (float32), including the
// rope_scaling variants. Dynamic NTK depends on the sequence's current length, as in transformers'
// dynamic_rope_update: frequencies are recomputed from max(seq_len, max_position_embeddings).
// Qwen v1's dynamic NTK (modeling_qwen.py, `qwen-ntk`) instead fixes its scaling at a sequence's first
// forward, from the prompt's length L: alpha = max(2^ceil(log2(L / seq_length) + 1) - 1, 1),
// base = rotary_emb_base * alpha^(dim / (dim - 2)); decode steps reuse that alpha
// (_ntk_alpha_cached_list), so the decoder passes the prompt length as `seq_len` for it.
#pragma once
#include <vector>

#include "model/config.h"

namespace apus {

class Rope {
 public:
  explicit Rope(const ModelConfig& c);
  int half() const { return int(base_inv_freq_.size()); }  // rotary_dim / 2 (rotate-half pairs)
  // Whether `seq_len` in fill() is the sequence's prompt length rather than its current length.
  bool fixed_at_prompt() const { return config_.rope_scaling.type == "qwen-ntk"; }
  // cos/sin of position `pos` for a sequence of current length `seq_len`, half() floats each.
  void fill(int pos, int seq_len, float* cos, float* sin) const;

 private:
  std::vector<float> inv_freq_for(int seq_len) const;
  std::vector<float> qwen_inv_freq(int seq_len) const;

  ModelConfig config_;
  std::vector<float> base_inv_freq_;
};

}  // namespace apus
