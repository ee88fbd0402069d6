#include "sample/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/random.h"

namespace apus {

void log_softmax(const float* logits, int64_t n, float* out) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, logits[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(double(logits[i] - mx));
  const float lse = float(std::log(sum));
  for (int64_t i = 0; i < n; ++i) out[i] = logits[i] - mx - lse;
}

std::vector<std::pair<int, float>> top_logprobs(const float* lp, int64_t n, int k) {
  std::vector<int> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  k = int(std::min<int64_t>(k, n));
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) {
    return lp[a] > lp[b] || (lp[a] == lp[b] && a < b);
  });
  std::vector<std::pair<int, float>> out;
  for (int i = 0; i < k; ++i) out.emplace_back(idx[size_t(i)], lp[idx[size_t(i)]]);
  return out;
}

bool needs_processing(const SamplingParams& p, int num_generated) {
  return p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f ||
         !p.logit_bias.empty() || num_generated < p.min_tokens;
}

void process_logits(float* logits, int64_t n, const SamplingParams& p, const std::vector<int32_t>& prompt,
                    const std::vector<int32_t>& output, const std::vector<int32_t>& stop_ids) {
  if (p.repetition_penalty != 1.0f) {
    std::vector<bool> seen(static_cast<size_t>(n), false);
    for (const auto* list : {&prompt, &output})
      for (int32_t t : *list)
        if (t >= 0 && t < n) seen[size_t(t)] = true;
    for (int64_t t = 0; t < n; ++t)
      if (seen[size_t(t)]) logits[t] = logits[t] > 0 ? logits[t] / p.repetition_penalty : logits[t] * p.repetition_penalty;
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    std::vector<int> count(static_cast<size_t>(n), 0);
    for (int32_t t : output)
      if (t >= 0 && t < n) count[size_t(t)]++;
    for (int64_t t = 0; t < n; ++t)
      if (count[size_t(t)] > 0)
        logits[t] -= p.presence_penalty + p.frequency_penalty * float(count[size_t(t)]);
  }
  for (auto [t, bias] : p.logit_bias)
    if (t >= 0 && t < n) logits[t] += bias;
  if (int(output.size()) < p.min_tokens)
    for (int32_t t : stop_ids)
      if (t >= 0 && t < n) logits[t] = -INFINITY;
}

int argmax(const float* logits, int64_t n) {
  return int(std::max_element(logits, logits + n) - logits);  // first maximum, as torch.argmax
}

int sample_token(const float* logits, int64_t n, const SamplingParams& p, uint64_t step) {
  if (p.temperature <= 0.0f || p.top_k == 1) return argmax(logits, n);
  // Candidates sorted by logit, cut by top-k, then probabilities at the temperature.
  std::vector<int> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  int64_t keep = p.top_k > 0 ? std::min<int64_t>(p.top_k, n) : n;
  auto by_logit = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), by_logit);
  idx.resize(size_t(keep));
  std::vector<double> prob(idx.size());
  const double mx = logits[idx[0]];
  double sum = 0.0;
  for (size_t i = 0; i < idx.size(); ++i) {
    prob[i] = std::exp((double(logits[idx[i]]) - mx) / p.temperature);
    sum += prob[i];
  }
  for (double& q : prob) q /= sum;
  // min-p: drop tokens below min_p times the most likely one.
  size_t cut = prob.size();
  if (p.min_p > 0.0f)
    for (size_t i = 1; i < prob.size(); ++i)
      if (prob[i] < p.min_p * prob[0]) { cut = i; break; }
  // top-p: the smallest prefix whose mass reaches top_p (always at least one token).
  if (p.top_p < 1.0f) {
    double acc = 0.0;
    for (size_t i = 0; i < cut; ++i) {
      acc += prob[i];
      if (acc >= p.top_p) { cut = i + 1; break; }
    }
  }
  double mass = 0.0;
  for (size_t i = 0; i < cut; ++i) mass += prob[i];
  const double u = double(uniform01(splitmix64(p.seed), step)) * mass;
  double acc = 0.0;
  for (size_t i = 0; i < cut; ++i) {
    acc += prob[i];
    if (u < acc) return idx[i];
  }
  return idx[cut - 1];
}

}  // namespace apus
