// The llama-family decoder forward pass (Llama, Qwen2, Qwen3, Mistral), written once against the
// Backend interface over a flat batch of tokens from any number of sequences.
#pragma once
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "kv/kv_cache.h"
#include "model/config.h"
#include "model/rope.h"
#include "model/weights.h"

namespace apus {

// One step's inputs, built on the host. Sequence s contributes tokens [q_start[s], q_start[s+1]),
// which are the last ones of its ctx_len[s] positions (see AttentionBatch).
struct StepBatch {
  std::vector<int32_t> tokens;        // [T]
  std::vector<int32_t> q_start;       // [S + 1]
  std::vector<int32_t> ctx_len;       // [S]
  std::vector<int32_t> block_table;   // [S * max_blocks]
  int max_blocks = 0;
  std::vector<int32_t> slot_mapping;  // [T]
  std::vector<int32_t> logit_rows;    // token rows whose next-token logits are wanted
  int num_seqs() const { return int(ctx_len.size()); }
};

class DecoderModel {
 public:
  DecoderModel(ModelConfig config, ModelWeights weights, Backend& backend);
  ~DecoderModel();
  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  Backend& backend() { return backend_; }

  // Runs the step, writing K/V into `cache`; `logits` becomes [logit_rows, vocab] row-major.
  void forward(const StepBatch& batch, KvCache& cache, std::vector<float>& logits);
  // Allocates the activation buffers for steps of up to `tokens` tokens and `logit_rows` logit
  // rows now (they otherwise grow on demand), so that free device memory can be measured after.
  void reserve(int64_t tokens, int64_t logit_rows) { workspace(tokens, logit_rows); }

 private:
  struct Workspace;
  Workspace& workspace(int64_t tokens, int64_t logit_rows);

  ModelConfig config_;
  ModelWeights weights_;
  Backend& backend_;
  Rope rope_;
  std::unique_ptr<Workspace> ws_;
};

}  // namespace apus
