// One prompt through the engine: the `apus generate` and `apus bench latency` path.
#pragma once
#include <string>
#include <vector>

#include "engine/engine.h"
#include "model/decoder.h"
#include "sample/sampler.h"

namespace apus {

struct GenerateResult {
  std::vector<int32_t> token_ids;
  std::vector<std::vector<std::pair<int, float>>> logprobs;  // per generated token, top-N
  std::string text;           // with a tokenizer
  std::string finish_reason;  // "stop" or "length"
  double prefill_seconds = 0.0;  // until the first token
  double decode_seconds = 0.0;   // the remaining tokens
};

// One request (n = 1) on a private engine sized for it. With a tokenizer the result has text and
// stop strings apply. `prefill_chunk` > 0 splits the prompt into steps of at most that many tokens.
GenerateResult generate(DecoderModel& model, Request req, const Tokenizer* tokenizer = nullptr,
                        int prefill_chunk = 0);
GenerateResult generate(DecoderModel& model, const std::vector<int32_t>& prompt,
                        const SamplingParams& params, int prefill_chunk = 0);

}  // namespace apus
