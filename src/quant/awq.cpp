#include "quant/awq.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/cpu/gemm.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace apus {

namespace {

constexpr int kScaleGrid = 20;   // AutoAWQ's n_grid
constexpr int kClipSteps = 10;   // max_shrink 0.5 over n_grid 20

int64_t group_of(const QuantGrid& g, int64_t in) { return g.group_size <= 0 ? in : g.group_size; }

// Y [S, rows] = X W^T on the sample's rows.
std::vector<float> outputs(const float* w, int64_t rows, const ActivationSample& x, ThreadPool& pool) {
  std::vector<float> y(size_t(x.count() * rows));
  gemm(x.rows(), x.cols(), w, DType::F32, x.cols(), nullptr, y.data(), rows, x.count(), rows, x.cols(), pool);
  return y;
}

// RTN(W diag(s)) diag(s)^-1 for W [rows, in].
std::vector<float> scaled_rtn(const float* w, int64_t rows, int64_t in, const std::vector<float>& s,
                              const QuantGrid& grid, ThreadPool& pool) {
  const int64_t gs = group_of(grid, in);
  std::vector<float> out(static_cast<size_t>(rows * in));
  pool.parallel_for(rows, 8, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(static_cast<size_t>(in));
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t i = 0; i < in; ++i) buf[size_t(i)] = w[r * in + i] * s[size_t(i)];
      for (int64_t g = 0; g < in; g += gs) fake_quantize_group(&buf[size_t(g)], gs, grid, &out[size_t(r * in + g)]);
      for (int64_t i = 0; i < in; ++i) out[size_t(r * in + i)] /= s[size_t(i)];
    }
  });
  return out;
}

}  // namespace

ActivationSample::ActivationSample(int64_t cols, int64_t stride, int64_t max_rows)
    : cols_(cols), stride_(std::max<int64_t>(1, stride)), max_rows_(max_rows), abs_sum_(size_t(cols), 0.0) {}

void ActivationSample::add(const Tensor& x) {
  APUS_CHECK(x.dtype == DType::F32 && x.cols() == cols_, "AWQ: activations {} for a layer of {} inputs", x.describe(),
             cols_);
  for (int64_t r = 0; r < x.rows(); ++r, ++seen_) {
    const float* row = x.ptr<float>() + r * x.row_stride;
    for (int64_t c = 0; c < cols_; ++c) abs_sum_[size_t(c)] += std::fabs(row[c]);
    if (seen_ % stride_ == 0 && count() < max_rows_) rows_.insert(rows_.end(), row, row + cols_);
  }
}

std::vector<float> ActivationSample::mean_abs() const {
  std::vector<float> m(static_cast<size_t>(cols_));
  for (int64_t c = 0; c < cols_; ++c) m[size_t(c)] = float(abs_sum_[size_t(c)] / double(std::max<int64_t>(1, seen_)));
  return m;
}

void ActivationSample::divide_columns(const std::vector<float>& s) {
  for (size_t i = 0; i < rows_.size(); ++i) rows_[i] /= s[i % size_t(cols_)];
  for (int64_t c = 0; c < cols_; ++c) abs_sum_[size_t(c)] /= s[size_t(c)];
}

AwqScales awq_search_scales(const std::vector<MatrixRef>& ws, const ActivationSample& x, const QuantGrid& grid,
                            ThreadPool& pool) {
  const int64_t in = x.cols(), gs = group_of(grid, in);
  APUS_CHECK(x.count() > 0, "AWQ: no calibration inputs were seen");
  const std::vector<float> x_mean = x.mean_abs();
  // w̄: |w| relative to its group's largest, averaged over every row of every matrix.
  std::vector<double> w_sum(size_t(in), 0.0);
  int64_t total_rows = 0;
  for (const auto& [w, rows] : ws) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < in; g += gs) {
        float m = 0.0f;
        for (int64_t i = g; i < g + gs; ++i) m = std::max(m, std::fabs(w[r * in + i]));
        for (int64_t i = g; i < g + gs; ++i) w_sum[size_t(i)] += std::fabs(w[r * in + i]) / (m + 1e-6f);
      }
    total_rows += rows;
  }
  std::vector<std::vector<float>> ref;
  for (const auto& [w, rows] : ws) ref.push_back(outputs(w, rows, x, pool));
  auto loss_of = [&](const std::vector<float>& s) {
    double sum = 0.0;
    int64_t n = 0;
    for (size_t m = 0; m < ws.size(); ++m) {
      const auto [w, rows] = ws[m];
      const std::vector<float> q = scaled_rtn(w, rows, in, s, grid, pool);
      const std::vector<float> y = outputs(q.data(), rows, x, pool);
      for (size_t i = 0; i < y.size(); ++i) sum += double(y[i] - ref[m][i]) * double(y[i] - ref[m][i]);
      n += int64_t(y.size());
    }
    return sum / double(std::max<int64_t>(1, n));
  };
  AwqScales best;  // s = 1 unless some alpha does better (AutoAWQ takes the best alpha even if worse)
  best.s.assign(size_t(in), 1.0f);
  best.loss = best.loss_rtn = loss_of(best.s);
  best.ratio = -1.0;
  std::vector<float> s(static_cast<size_t>(in));
  for (int k = 0; k < kScaleGrid; ++k) {
    const double alpha = double(k) / kScaleGrid;
    float lo = std::numeric_limits<float>::infinity(), hi = 0.0f;
    for (int64_t i = 0; i < in; ++i) {
      const double w_mean = w_sum[size_t(i)] / double(total_rows);
      const float v = float(std::max(std::pow(double(x_mean[size_t(i)]), alpha) / (std::pow(w_mean, 1.0 - alpha) + 1e-4), 1e-4));
      s[size_t(i)] = v;
      lo = std::min(lo, v), hi = std::max(hi, v);
    }
    const float norm = std::sqrt(lo * hi);
    for (float& v : s) {
      v /= norm;
      if (!std::isfinite(v)) v = 1.0f;
    }
    const double loss = loss_of(s);
    if (loss < best.loss) best.loss = loss, best.ratio = alpha, best.s = s;
  }
  return best;
}

void awq_clip(float* w, int64_t rows, int64_t in, const ActivationSample& x, const QuantGrid& grid, ThreadPool& pool) {
  const int64_t gs = group_of(grid, in), S = x.count();
  APUS_CHECK(x.cols() == in && S > 0, "AWQ clip: inputs of {} columns for a matrix of {}", x.cols(), in);
  const float* X = x.rows();
  pool.parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> c(static_cast<size_t>(gs)), q(static_cast<size_t>(gs));
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t g = 0; g < in; g += gs) {
        float* wg = w + r * in + g;
        float max_abs = 0.0f;
        for (int64_t i = 0; i < gs; ++i) max_abs = std::max(max_abs, std::fabs(wg[i]));
        double best_err = std::numeric_limits<double>::infinity();
        float best_max = max_abs;
        for (int k = 0; k < kClipSteps; ++k) {
          const float mv = max_abs * (1.0f - float(k) / kScaleGrid);
          for (int64_t i = 0; i < gs; ++i) c[size_t(i)] = std::clamp(wg[i], -mv, mv);
          fake_quantize_group(c.data(), gs, grid, q.data());
          for (int64_t i = 0; i < gs; ++i) q[size_t(i)] -= wg[i];  // the change to the group's weights
          double err = 0.0;
          for (int64_t t = 0; t < S; ++t) {
            const float* xt = X + t * in + g;
            float d = 0.0f;
            for (int64_t i = 0; i < gs; ++i) d += xt[i] * q[size_t(i)];
            err += double(d) * double(d);
          }
          if (err < best_err) best_err = err, best_max = mv;
        }
        for (int64_t i = 0; i < gs; ++i) wg[i] = std::clamp(wg[i], -best_max, best_max);
      }
  });
}

bool fold_awq_scales(LayerWeights& L, DecoderModel::LinearSlot slot, const std::vector<float>& s, LayerFloats& w) {
  using Slot = DecoderModel::LinearSlot;
  auto divide = [&](Tensor& t) {  // a norm's weight or a bias, F32
    for (int64_t k = 0; k < t.numel(); ++k) set_float(t, k, get_float(t, k) / s[size_t(k)]);
  };
  for (auto& m : w.at(slot))
    for (size_t k = 0; k < m.size(); ++k) m[k] *= s[k % s.size()];
  switch (slot) {
    case Slot::kQkv: divide(L.attn_norm); return true;
    case Slot::kGateUp: divide(L.mlp_norm); return true;
    case Slot::kO:
    case Slot::kDown: break;
  }
  const bool o = slot == Slot::kO;  // the previous linear layer: v_proj, up_proj
  LinearPart& part = o ? L.qkv.parts[2] : L.gate_up.parts[1];
  std::vector<float>& prev = w.at(o ? Slot::kQkv : Slot::kGateUp).at(o ? 2 : 1);
  const size_t in = size_t(part.weight.cols());
  APUS_CHECK(prev.size() == in * s.size(), "AWQ: {} has {} rows, not the {} inputs of the layer after it",
             o ? "v_proj" : "up_proj", prev.size() / in, s.size());
  for (size_t k = 0; k < prev.size(); ++k) prev[k] /= s[k / in];
  if (part.bias.empty()) return false;
  divide(part.bias);
  return true;
}

double sample_error(const float* w, const float* w_hat, int64_t rows, const ActivationSample& x, ThreadPool& pool) {
  const std::vector<float> y = outputs(w, rows, x, pool), yq = outputs(w_hat, rows, x, pool);
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < y.size(); ++i) num += double(y[i] - yq[i]) * double(y[i] - yq[i]), den += double(y[i]) * y[i];
  return den > 0.0 ? std::sqrt(num / den) : 0.0;
}

}  // namespace apus
