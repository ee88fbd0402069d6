// Quantizing one weight matrix W [out, in] to a b-bit integer grid with a scale and a zero per
// output row and group of input columns (a QuantMatrix, gptq_format.h): round to nearest (RTN), or GPTQ (Frantar et al. 2022),
// which quantizes the columns one at a time and spreads each column's rounding error over the
// columns not yet quantized so as to minimise ||W X - Ŵ X|| for the calibration inputs X that the
// Hessian H = 2 X X^T / N summarises. Plain float matrices in; pack_quant then writes the checkpoint layout.
// See README.md (Export) for the decisions.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "quant/gptq_format.h"

namespace apus {

class ThreadPool;

struct QuantGrid {
  int bits = 4;
  int group_size = 128;  // input columns per scale/zero; -1: one group per row (all columns)
  bool sym = false;      // symmetric: zero fixed at 2^(bits-1)
  bool desc_act = false; // GPTQ: quantize columns in order of decreasing H diagonal (act-order)
  double damp_percent = 0.01;  // GPTQ: H += damp_percent * mean(diag H) * I
  int block_size = 128;  // GPTQ: columns per lazy batch update
};

// The running H = 2/N sum_t x_t x_t^T over every input row x_t [cols] seen so far (float32).
class Hessian {
 public:
  explicit Hessian(int64_t cols) : cols_(cols), h_(size_t(cols * cols), 0.0f) {}
  // x: F32 host tensor [T, cols] (rows may be strided).
  void add(const Tensor& x, ThreadPool& pool);
  int64_t cols() const { return cols_; }
  int64_t samples() const { return samples_; }
  const std::vector<float>& matrix() const { return h_; }

 private:
  int64_t cols_;
  int64_t samples_ = 0;
  std::vector<float> h_;
};

// The n values of one group of one row rounded to the grid and back (RTN's values for that group).
void fake_quantize_group(const float* x, int64_t n, const QuantGrid& grid, float* out);

// W: row-major float [rows, cols]. Every column count must be a multiple of the group size.
QuantMatrix quantize_rtn(const float* w, int64_t rows, int64_t cols, const QuantGrid& grid);
QuantMatrix quantize_gptq(const float* w, int64_t rows, int64_t cols, const Hessian& h, const QuantGrid& grid,
                              ThreadPool& pool);

// ||(W - Ŵ) X||_F / ||W X||_F over the inputs `h` summarises (computed from H, without X).
double relative_error(const float* w, const QuantMatrix& q, const Hessian& h, ThreadPool& pool);

}  // namespace apus
