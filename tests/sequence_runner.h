// A test harness that feeds chosen tokens to one sequence over a private paged KV cache, so golden
// tests can teacher-force the reference continuation and compare every step's logits.
#pragma once
#include <vector>

#include "core/error.h"
#include "kv/block_manager.h"
#include "kv/kv_cache.h"
#include "model/decoder.h"

namespace apus::test {

class SequenceRunner {
 public:
  SequenceRunner(DecoderModel& model, int max_len, int block_size = 16)
      : model_(model),
        cache_(KvCache::create(model.backend(), model.config(), (max_len + block_size - 1) / block_size, block_size)),
        blocks_(cache_.num_blocks, block_size) {}
  ~SequenceRunner() { blocks_.release(table_); }
  // The LoRA adapter slot every fed token runs with (-1: the base model).
  void set_lora_slot(int slot) { lora_slot_ = slot; }

  // Runs `tokens` after those already fed; logits [n, vocab] for all of them when `all_logits`,
  // else [1, vocab] for the last.
  const std::vector<float>& feed(const std::vector<int32_t>& tokens, bool all_logits) {
    const int n = int(tokens.size()), bs = cache_.block_size;
    const int need = (length_ + n + bs - 1) / bs - int(table_.size());
    APUS_CHECK(blocks_.allocate(need, table_), "SequenceRunner: cache too small");
    StepBatch b;
    b.tokens = tokens;
    b.q_start = {0, n};
    b.ctx_len = {length_ + n};
    if (length_ == 0) prompt_len_ = n;  // the first feed is the prompt
    b.prompt_len = {prompt_len_};
    b.block_table = table_;
    b.max_blocks = int(table_.size());
    if (lora_slot_ >= 0) b.lora_slots.assign(size_t(n), lora_slot_);
    for (int j = 0; j < n; ++j) {
      const int pos = length_ + j;
      b.slot_mapping.push_back(table_[size_t(pos / bs)] * bs + pos % bs);
      if (all_logits || j == n - 1) b.logit_rows.push_back(j);
    }
    model_.forward(b, cache_, logits_);
    length_ += n;
    return logits_;
  }

 private:
  DecoderModel& model_;
  KvCache cache_;
  BlockManager blocks_;
  std::vector<int32_t> table_;
  int length_ = 0, prompt_len_ = 0;
  int lora_slot_ = -1;
  std::vector<float> logits_;
};

}  // namespace apus::test
