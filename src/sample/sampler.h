// Turning one row of logits into a token: greedy or seeded sampling with temperature, top-k,
// top-p and min-p, and the log-probabilities reported to users.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace apus {

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy (argmax, lowest id on ties)
  float top_p = 1.0f;
  int top_k = 0;             // <= 0: off
  float min_p = 0.0f;
  uint64_t seed = 0;
  int max_tokens = 16;
  bool ignore_eos = false;
  int logprobs = 0;          // top-N log-probabilities reported per generated token
};

// log_softmax of the raw logits (float32, max-subtracted, sum in double).
void log_softmax(const float* logits, int64_t n, float* out);
// The k largest (id, logprob) pairs, best first; ties broken by lower id.
std::vector<std::pair<int, float>> top_logprobs(const float* logprobs, int64_t n, int k);
int argmax(const float* logits, int64_t n);
// Draws a token with counter-based randomness: (seed, step) fully determine the draw.
int sample_token(const float* logits, int64_t n, const SamplingParams& p, uint64_t step);

}  // namespace apus
