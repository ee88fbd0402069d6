// AWQ (Lin et al. 2023, "Activation-aware Weight Quantization"), the two searches AutoAWQ runs per
// group of linear layers that share an input, before plain round-to-nearest:
// - scales: input channel j of the layers' weights is multiplied by s_j and the operation that
//   produces their input (an RMSNorm, or the previous linear layer's output rows) divided by it, so
//   that the channels that carry large activations lose less to rounding; s is searched on the
//   calibration activations;
// - clipping: each group of each row is clamped to a shrunk range when that reproduces the group's
//   part of the outputs better after rounding.
// quantize_model.cpp applies them to a llama-family layer (README.md, Export).
#pragma once
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "model/decoder.h"
#include "quant/gptq_solver.h"

namespace apus {

class ThreadPool;

// What AWQ needs of one linear layer's input over the calibration tokens: the mean |x| of every
// input channel over all tokens, and every `stride`-th token's row (at most `max_rows`) on which the
// searches measure output errors.
class ActivationSample {
 public:
  ActivationSample(int64_t cols, int64_t stride, int64_t max_rows);
  void add(const Tensor& x);  // F32 host [T, cols] (rows may be strided)
  std::vector<float> mean_abs() const;
  int64_t cols() const { return cols_; }
  int64_t count() const { return int64_t(rows_.size()) / cols_; }
  const float* rows() const { return rows_.data(); }
  // The inputs once the operation that makes them has had its outputs divided by s (per column).
  void divide_columns(const std::vector<float>& s);

 private:
  int64_t cols_, stride_, max_rows_;
  int64_t seen_ = 0;
  std::vector<double> abs_sum_;
  std::vector<float> rows_;
};

// A matrix [rows, in] (row-major float) of a group that shares one input.
using MatrixRef = std::pair<const float*, int64_t>;

struct AwqScales {
  std::vector<float> s;  // [in]
  double ratio = -1.0;   // the exponent alpha chosen; -1: none did better than s = 1
  double loss = 0.0;     // mean squared output error with it, and with s = 1 (plain RTN)
  double loss_rtn = 0.0;
};

// AutoAWQ's scale search (duo scaling): for alpha = 0, 1/20, ..., 19/20, s = x̄^alpha / (w̄^(1-alpha) +
// 1e-4) clamped to >= 1e-4 and divided by sqrt(max s * min s), where x̄ is x's mean |x| per channel
// and w̄ the mean over all rows of |w| / max |w| of its group; the loss is the mean squared
// difference on x's rows between the layers' outputs with W and with RTN(W diag(s)) diag(s)^-1.
// s = 1 (plain RTN) is kept when no alpha does better (a deviation: AutoAWQ takes the best alpha).
AwqScales awq_search_scales(const std::vector<MatrixRef>& ws, const ActivationSample& x, const QuantGrid& grid,
                            ThreadPool& pool);

// AutoAWQ's clip search on W [rows, in] in place: for each row and group, the range
// ±max|w| (1 - k/20), k = 0..9, whose rounded group best reproduces the group's part of the
// outputs on x's rows (mean squared error); W is clamped to it.
void awq_clip(float* w, int64_t rows, int64_t in, const ActivationSample& x, const QuantGrid& grid, ThreadPool& pool);

// A decoder layer's matrices as float32, by slot and part (row-major [out, in] each).
using LayerFloats = std::map<DecoderModel::LinearSlot, std::vector<std::vector<float>>>;

// Folds the scales s of the group at `slot` into a llama-family layer without changing what it
// computes: the group's columns are multiplied by s (in `w`) and whatever makes its input divided by
// s: the RMSNorm's weight for q/k/v and gate/up (in L), v_proj's rows and bias for o_proj (only
// without GQA: one v row per o column), up_proj's rows and bias for down_proj. Returns whether it
// changed a tensor of L (the norm or bias), which the checkpoint must then carry.
bool fold_awq_scales(LayerWeights& L, DecoderModel::LinearSlot slot, const std::vector<float>& s, LayerFloats& w);

// ||X (W - Ŵ)^T|| / ||X W^T|| on x's rows, for W and Ŵ [rows, in].
double sample_error(const float* w, const float* w_hat, int64_t rows, const ActivationSample& x, ThreadPool& pool);

}  // namespace apus
