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
  thread_local std::vector<int> idx;  // vocabulary-sized scratch, reused on this thread
  idx.resize(static_cast<size_t>(n));
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

float draw_uniform(const SamplingParams& p, uint64_t step) { return uniform01(splitmix64(p.seed), step); }

int32_t greedy_token(const float* candidates, int ranks) {
  int q = 0;
  for (int p = 1; p < ranks; ++p)
    if (candidates[2 * p] > candidates[2 * q]) q = p;
  return int32_t(candidates[2 * q + 1]);
}

int sample_token(const float* logits, int64_t n, const SamplingParams& p, uint64_t step) {
  return draw_token(logits, n, DrawRule{p.temperature, p.top_k, p.top_p, p.min_p}, draw_uniform(p, step));
}

int draw_token(const float* logits, int64_t n, const DrawRule& p, float uniform) {
  if (p.temperature <= 0.0f || p.top_k == 1) return argmax(logits, n);
  // The draw walks candidates from the most to the least likely (ties: lower id first). Sorting
  // the whole vocabulary would cost more than the forward pass of a small model, so the order is
  // built lazily: the walk usually ends within the first few dozen tokens.
  auto by_logit = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  // Vocabulary-sized scratch, reused by every draw on this thread.
  thread_local std::vector<int> idx;
  thread_local std::vector<double> w;
  idx.resize(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  size_t sorted = 0;  // idx[0, sorted) is in final order, and before everything after it
  auto sort_upto = [&](size_t k) {
    k = std::min(k, idx.size());
    if (k <= sorted) return;
    std::partial_sort(idx.begin() + long(sorted), idx.begin() + long(k), idx.end(), by_logit);
    sorted = k;
  };
  if (p.top_k > 0 && p.top_k < n) {
    sort_upto(size_t(p.top_k));
    idx.resize(size_t(p.top_k));
  }
  float mx = logits[idx[0]];
  for (int i : idx) mx = std::max(mx, logits[i]);
  // Unnormalised probabilities at the temperature; the most likely token has weight 1.
  w.resize(size_t(n));
  double total = 0.0;
  for (int i : idx) total += (w[size_t(i)] = std::exp((double(logits[i]) - double(mx)) / p.temperature));
  // min-p: drop tokens below min_p times the most likely one (which always stays).
  if (p.min_p > 0.0f) {
    const int best = *std::min_element(idx.begin(), idx.end(), by_logit);
    std::erase_if(idx, [&](int i) { return i != best && w[size_t(i)] < double(p.min_p); });
    sorted = 0;
  }
  auto at = [&](size_t i) {
    if (i >= sorted) sort_upto(std::max<size_t>(64, 2 * sorted));
    return idx[i];
  };
  // top-p: the smallest prefix whose mass reaches top_p (always at least one token).
  size_t cut = idx.size();
  double mass = 0.0;
  if (p.top_p < 1.0f) {
    for (size_t i = 0; i < idx.size(); ++i) {
      mass += w[size_t(at(i))] / total;
      if (mass >= p.top_p) {
        cut = i + 1;
        break;
      }
    }
  } else {
    for (int i : idx) mass += w[size_t(i)] / total;
  }
  const double u = double(uniform) * mass;
  double acc = 0.0;
  for (size_t i = 0; i < cut; ++i) {
    acc += w[size_t(at(i))] / total;
    if (u < acc) return idx[i];
  }
  return at(cut - 1);
}

}  // namespace apus
