// Adapters resident on a backend for unmerged serving: every linear layer LoRA may target has, per
// adapter slot, A and B in fixed device memory (LoraPart: stacked over slots, padded to max_rank,
// scale folded into B), so one batched op serves a batch that mixes adapters and the base model,
// and recorded CUDA graphs stay valid when adapters come and go (only the contents change).
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "lora/adapter.h"
#include "model/config.h"
#include "model/shard.h"

namespace apus {

struct LoraLayer {
  std::vector<LoraPart> qkv, o, gate_up, down;  // parts in the order of the layer's Linear parts
};

// With tensor parallelism a rank holds its part of every adapter, split like the weights it adapts:
// column-parallel layers (q/k/v, gate/up) keep all of A and their rows of B, row-parallel ones
// (o_proj, down) their columns of A and all of B, so that B (A x) of the rank's input is its share
// of the sum the layer's all-reduce completes.
class LoraSlots {
 public:
  // `config`: the whole model's; `shard`: the part this rank holds (Shard::of(config, 0, 1): all).
  LoraSlots(const ModelConfig& config, const Shard& shard, Backend& backend, int max_loras, int max_rank);
  int max_loras() const { return max_loras_; }
  int max_rank() const { return max_rank_; }  // the requested one rounded up to a power of two >= 8
  // Writes the adapter into `slot` (checked against the base model first). Waits for the copies.
  void load(int slot, const LoraAdapter& adapter);
  void clear(int slot);
  // Called after each load (with the adapter's directory) and clear (with ""): tensor parallelism
  // repeats them on the other ranks, which read the adapter from that directory themselves.
  void set_listener(std::function<void(int slot, const std::string& dir)> f) { listener_ = std::move(f); }
  const LoraLayer& layer(int i) const { return layers_[size_t(i)]; }
  // The slot's replacement lm_head (modules_to_save), or nullptr.
  const Linear* lm_head(int slot) const { return lm_heads_[size_t(slot)] ? lm_heads_[size_t(slot)].get() : nullptr; }
  // Bytes of device memory the slots take.
  size_t bytes() const { return bytes_; }

 private:
  // The rank's part of module `m` (B's rows from b_row0, A's columns from a_col0) into `slot`.
  void write(int slot, const std::string& module, LoraPart& part, const LoraModule* m, int64_t b_row0 = 0,
             int64_t a_col0 = 0);

  ModelConfig config_;
  Shard shard_;
  std::function<void(int, const std::string&)> listener_;
  Backend& backend_;
  int max_loras_, max_rank_;
  std::vector<LoraLayer> layers_;
  std::vector<std::unique_ptr<Linear>> lm_heads_;
  size_t bytes_ = 0;
};

}  // namespace apus
