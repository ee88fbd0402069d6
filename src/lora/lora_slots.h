// Adapters resident on a backend for unmerged serving: every linear layer LoRA may target has, per
// adapter slot, A and B in fixed device memory (LoraPart: stacked over slots, padded to max_rank,
// scale folded into B), so one batched op serves a batch that mixes adapters and the base model,
// and recorded CUDA graphs stay valid when adapters come and go (only the contents change).
#pragma once
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "lora/adapter.h"
#include "model/config.h"

namespace apus {

struct LoraLayer {
  std::vector<LoraPart> qkv, o, gate_up, down;  // parts in the order of the layer's Linear parts
};

class LoraSlots {
 public:
  LoraSlots(const ModelConfig& config, Backend& backend, int max_loras, int max_rank);
  int max_loras() const { return max_loras_; }
  int max_rank() const { return max_rank_; }  // the requested one rounded up to a power of two >= 8
  // Writes the adapter into `slot` (checked against the base model first). Waits for the copies.
  void load(int slot, const LoraAdapter& adapter);
  void clear(int slot);
  const LoraLayer& layer(int i) const { return layers_[size_t(i)]; }
  // The slot's replacement lm_head (modules_to_save), or nullptr.
  const Linear* lm_head(int slot) const { return lm_heads_[size_t(slot)] ? lm_heads_[size_t(slot)].get() : nullptr; }
  // Bytes of device memory the slots take.
  size_t bytes() const { return bytes_; }

 private:
  void write(int slot, const std::string& module, LoraPart& part, const LoraModule* m);

  ModelConfig config_;
  Backend& backend_;
  int max_loras_, max_rank_;
  std::vector<LoraLayer> layers_;
  std::vector<std::unique_ptr<Linear>> lm_heads_;
  size_t bytes_ = 0;
};

}  // namespace apus
