#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace apus {

namespace {

std::vector<float> default_inv_freq(double base, int dim) {
  std::vector<float> inv(size_t(dim / 2));
  for (int i = 0; i < dim / 2; ++i) {
    const float e = float(2 * i) / float(dim);
    inv[size_t(i)] = 1.0f / std::pow(float(base), e);
  }
  return inv;
}

// transformers' _compute_llama3_parameters, in the same float32 steps.
void apply_llama3(const RopeScaling& r, std::vector<float>& inv) {
  const float old_ctx = float(r.original_max_position_embeddings);
  const float low_wavelen = old_ctx / r.low_freq_factor;
  const float high_wavelen = old_ctx / r.high_freq_factor;
  for (float& f : inv) {
    const float wavelen = 2.0f * float(std::numbers::pi) / f;
    float scaled = wavelen > low_wavelen ? f / r.factor : f;
    if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
      const float smooth = (old_ctx / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
      scaled = (1.0f - smooth) * scaled / r.factor + smooth * scaled;
    }
    f = scaled;
  }
}

}  // namespace

Rope::Rope(const ModelConfig& c) : config_(c) {
  base_inv_freq_ = default_inv_freq(c.rope_theta, c.rope_dim());
  const RopeScaling& r = c.rope_scaling;
  if (r.type == "linear") {
    for (float& f : base_inv_freq_) f /= r.factor;
  } else if (r.type == "llama3") {
    apply_llama3(r, base_inv_freq_);
  }
}

namespace {

double qwen_ntk_alpha(int seq_len, int seq_length) {
  const double context_value = std::log(double(seq_len) / seq_length) / std::log(2.0) + 1;  // math.log(x, 2)
  return std::max(std::exp2(std::ceil(context_value)) - 1, 1.0);
}

}  // namespace

std::vector<float> Rope::qwen_inv_freq(int seq_len) const {
  const int dim = config_.rope_dim();
  const double alpha = qwen_ntk_alpha(seq_len, config_.rope_scaling.original_max_position_embeddings);
  return default_inv_freq(double(config_.rope_theta) * std::pow(alpha, double(dim) / (dim - 2)), dim);
}

std::vector<float> Rope::inv_freq_for(int seq_len) const {
  const int max_pos = config_.max_position_embeddings;
  const double factor = config_.rope_scaling.factor;
  const int dim = config_.rope_dim();
  const double base = config_.rope_theta *
                      std::pow(factor * seq_len / max_pos - (factor - 1), double(dim) / (dim - 2));
  return default_inv_freq(base, dim);
}

void Rope::fill(int pos, int seq_len, float* cos, float* sin) const {
  std::vector<float> dynamic;
  const std::vector<float>* inv = &base_inv_freq_;
  if (config_.rope_scaling.type == "dynamic" && seq_len > config_.max_position_embeddings) {
    dynamic = inv_freq_for(seq_len);
    inv = &dynamic;
  } else if (config_.rope_scaling.type == "qwen-ntk" &&
             seq_len > config_.rope_scaling.original_max_position_embeddings) {
    dynamic = qwen_inv_freq(seq_len);
    inv = &dynamic;
  }
  for (int i = 0; i < half(); ++i) {
    const float angle = float(pos) * (*inv)[size_t(i)];
    cos[i] = std::cos(angle);
    sin[i] = std::sin(angle);
  }
}

}  // namespace apus
