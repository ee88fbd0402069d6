#include "engine/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace apus {

SequenceRunner::SequenceRunner(DecoderModel& model, int max_len, int block_size)
    : model_(model),
      cache_(KvCache::create(model.backend(), model.config(), (max_len + block_size - 1) / block_size, block_size)),
      blocks_(cache_.num_blocks) {}

SequenceRunner::~SequenceRunner() {
  for (int b : block_table_) blocks_.release(b);
}

const std::vector<float>& SequenceRunner::feed(const std::vector<int32_t>& tokens, bool all_logits) {
  const int n = int(tokens.size());
  APUS_CHECK(n > 0, "nothing to feed");
  const int bs = cache_.block_size;
  APUS_CHECK(length_ + n <= cache_.num_blocks * bs, "sequence of {} tokens exceeds its cache of {}",
             length_ + n, cache_.num_blocks * bs);
  while (int(block_table_.size()) * bs < length_ + n) block_table_.push_back(blocks_.allocate());

  StepBatch& b = batch_;
  b.tokens = tokens;
  b.q_start = {0, n};
  b.ctx_len = {length_ + n};
  b.block_table = block_table_;
  b.max_blocks = int(block_table_.size());
  b.slot_mapping.resize(size_t(n));
  for (int j = 0; j < n; ++j) {
    const int pos = length_ + j;
    b.slot_mapping[size_t(j)] = block_table_[size_t(pos / bs)] * bs + pos % bs;
  }
  b.logit_rows.clear();
  for (int j = all_logits ? 0 : n - 1; j < n; ++j) b.logit_rows.push_back(j);
  model_.forward(b, cache_, logits_);
  length_ += n;
  return logits_;
}

GenerateResult generate(DecoderModel& model, const std::vector<int32_t>& prompt,
                        const SamplingParams& params, int prefill_chunk) {
  using Clock = std::chrono::steady_clock;
  APUS_CHECK(!prompt.empty(), "the prompt is empty");
  APUS_CHECK(params.max_tokens > 0, "max_tokens must be positive");
  const int64_t V = model.config().vocab_size;
  SequenceRunner seq(model, int(prompt.size()) + params.max_tokens);
  GenerateResult r;
  std::vector<float> lp(static_cast<size_t>(V));

  auto t0 = Clock::now();
  const std::vector<float>* logits = nullptr;
  const size_t chunk = prefill_chunk > 0 ? size_t(prefill_chunk) : prompt.size();
  for (size_t i = 0; i < prompt.size(); i += chunk) {
    std::vector<int32_t> part(prompt.begin() + long(i), prompt.begin() + long(std::min(prompt.size(), i + chunk)));
    logits = &seq.feed(part, false);
  }
  auto t1 = Clock::now();
  r.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();

  const auto& eos = model.config().eos_token_ids;
  for (int step = 0;; ++step) {
    const float* row = logits->data();
    const int32_t tok = sample_token(row, V, params, uint64_t(step));
    r.token_ids.push_back(tok);
    if (params.logprobs > 0) {
      log_softmax(row, V, lp.data());
      r.logprobs.push_back(top_logprobs(lp.data(), V, params.logprobs));
    }
    if (!params.ignore_eos && std::find(eos.begin(), eos.end(), tok) != eos.end()) {
      r.finish_reason = "stop";
      break;
    }
    if (int(r.token_ids.size()) >= params.max_tokens) {
      r.finish_reason = "length";
      break;
    }
    logits = &seq.feed({tok}, false);
  }
  r.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  return r;
}

}  // namespace apus
