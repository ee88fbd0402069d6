#include "engine/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "engine/engine.h"

namespace apus {

GenerateResult generate(DecoderModel& model, Request req, const Tokenizer* tokenizer, int prefill_chunk) {
  using Clock = std::chrono::steady_clock;
  APUS_CHECK(req.n == 1, "generate() runs one sequence");
  EngineConfig cfg;
  const int prompt_len = int(req.prompt.size());
  const int len = prompt_len + std::max(1, req.params.max_tokens);
  cfg.num_blocks = (len + cfg.block_size - 1) / cfg.block_size;
  cfg.max_model_len = std::max(len, prompt_len + 1);
  cfg.scheduler.max_num_batched_tokens = prefill_chunk > 0 ? prefill_chunk : std::max(1, prompt_len);
  cfg.scheduler.enable_prefix_caching = false;
  Engine engine(model, cfg, tokenizer);
  engine.add_request(std::move(req));

  GenerateResult r;
  auto t0 = Clock::now(), t1 = t0;
  while (engine.has_unfinished()) {
    for (SeqOutput& o : engine.step()) {
      if (r.token_ids.empty() && !o.new_tokens.empty()) t1 = Clock::now();
      r.token_ids.insert(r.token_ids.end(), o.new_tokens.begin(), o.new_tokens.end());
      for (auto& l : o.logprobs) r.logprobs.push_back(std::move(l));
      r.text += o.text;
      if (o.finished) r.finish_reason = o.finish_reason;
    }
  }
  r.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  r.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  return r;
}

GenerateResult generate(DecoderModel& model, const std::vector<int32_t>& prompt, const SamplingParams& params,
                        int prefill_chunk) {
  Request req;
  req.prompt = prompt;
  req.params = params;
  return generate(model, std::move(req), nullptr, prefill_chunk);
}

}  // namespace apus
