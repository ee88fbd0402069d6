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
  int logprobs = -1;         // >= 0: each generated token's logprob plus the top N alternatives
  int prompt_logprobs = -1;  // >= 0: each prompt token's logprob plus the top N (completions' echo)
  int min_tokens = 0;        // eos and stop ids are masked until this many tokens exist
  float repetition_penalty = 1.0f;  // transformers-style, over prompt and output tokens
  float presence_penalty = 0.0f;    // OpenAI-style, over output tokens
  float frequency_penalty = 0.0f;   // OpenAI-style, over output tokens
  std::vector<std::pair<int32_t, float>> logit_bias;  // added to the logits
};

// Applies penalties, logit bias and min_tokens masking (of `stop_ids`) in place.
void process_logits(float* logits, int64_t n, const SamplingParams& p, const std::vector<int32_t>& prompt,
                    const std::vector<int32_t>& output, const std::vector<int32_t>& stop_ids);
// True when the parameters change the logits (so the caller must work on a copy).
bool needs_processing(const SamplingParams& p, int num_generated);

// log_softmax of the raw logits (float32, max-subtracted, sum in double).
void log_softmax(const float* logits, int64_t n, float* out);
// The k largest (id, logprob) pairs, best first; ties broken by lower id.
std::vector<std::pair<int, float>> top_logprobs(const float* logprobs, int64_t n, int k);
int argmax(const float* logits, int64_t n);
// The uniform number in [0, 1) of draw `step` of a request: (seed, step) fully determine it.
float draw_uniform(const SamplingParams& p, uint64_t step);
// Draws a token with counter-based randomness (draw_uniform), walking the candidates most likely
// first. (The CUDA backend's device sampler draws from the same distribution in id order.)
int sample_token(const float* logits, int64_t n, const SamplingParams& p, uint64_t step);
// The token of one row of tensor-parallel greedy candidates (`ranks` pairs of logit and id, in rank
// order: each rank's first maximum over its part of the vocabulary): the first maximum over the
// whole vocabulary, as argmax of the gathered logits would give (ties: the lower rank, whose ids
// are lower; a rank whose best is -inf, having no real vocabulary rows, loses to any other; NaN
// never comes: argmax_rows gives -inf for a row without a maximum).
int32_t greedy_token(const float* candidates, int ranks);
// The same draw from its rule and uniform number (a backend's sampler drawing on the host).
struct DrawRule {
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
};
int draw_token(const float* logits, int64_t n, const DrawRule& rule, float uniform);

}  // namespace apus
