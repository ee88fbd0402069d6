// Generation for one sequence at a time over the paged KV cache: the `apus generate` and
// `apus bench latency` path, and the harness the golden tests drive. (Continuous batching of many
// sequences is the scheduler's job.)
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "kv/block_allocator.h"
#include "kv/kv_cache.h"
#include "model/decoder.h"
#include "sample/sampler.h"

namespace apus {

// One sequence's blocks and length. Feeding tokens runs them through the model in one step.
class SequenceRunner {
 public:
  // A private cache large enough for `max_len` tokens.
  SequenceRunner(DecoderModel& model, int max_len, int block_size = 16);
  ~SequenceRunner();

  int length() const { return length_; }
  // Runs `tokens` after those already fed; returns logits [n, vocab] for all of them when
  // `all_logits`, else [1, vocab] for the last one.
  const std::vector<float>& feed(const std::vector<int32_t>& tokens, bool all_logits);

 private:
  DecoderModel& model_;
  KvCache cache_;
  BlockAllocator blocks_;
  std::vector<int32_t> block_table_;
  int length_ = 0;
  StepBatch batch_;
  std::vector<float> logits_;
};

struct GenerateResult {
  std::vector<int32_t> token_ids;
  std::vector<std::vector<std::pair<int, float>>> logprobs;  // per generated token, top-N
  std::string finish_reason;  // "stop" (eos) or "length"
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // all steps after the first token
};

// `prefill_chunk` > 0 splits the prompt into steps of at most that many tokens.
GenerateResult generate(DecoderModel& model, const std::vector<int32_t>& prompt,
                        const SamplingParams& params, int prefill_chunk = 0);

}  // namespace apus
