// Quantizing one weight matrix W [out, in] to a b-bit integer grid with a scale and a zero per
// output row and group of input columns: round to nearest (RTN), or GPTQ (Frantar et al. 2022),
// which quantizes the columns one at a time and spreads each column's rounding error over the
// columns not yet quantized so as to minimise ||W X - Ŵ X|| for the calibration inputs X that the
// Hessian H = 2 X X^T / N summarises. Plain float matrices in, levels/scales/zeros out; packing into
// a checkpoint layout is src/quant's format code. See README.md (Export) for the decisions.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

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

// Ŵ[r, c] = scales[g, r] * (q[r, c] - zeros[g, r]) with g = g_idx[c].
struct QuantizedMatrix {
  int64_t rows = 0, cols = 0;
  int bits = 4;
  int group_size = 0;            // resolved: cols when the grid says -1
  std::vector<uint8_t> q;        // [rows, cols] levels in [0, 2^bits - 1]
  std::vector<float> scales;     // [groups, rows], each exactly representable in float16
  std::vector<int32_t> zeros;    // [groups, rows], in [1, 2^bits - 1] (see README: GPTQ v1 stores zero - 1)
  std::vector<int32_t> g_idx;    // [cols] group of each input column (i / group_size without act-order)
  int64_t groups() const { return rows == 0 ? 0 : int64_t(scales.size()) / rows; }
  float value(int64_t r, int64_t c) const {
    const size_t g = size_t(g_idx[size_t(c)]) * size_t(rows) + size_t(r);
    return scales[g] * float(int(q[size_t(r * cols + c)]) - zeros[g]);
  }
  std::vector<float> dequantize() const;  // [rows, cols]
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

// W: row-major float [rows, cols]. Every column count must be a multiple of the group size.
QuantizedMatrix quantize_rtn(const float* w, int64_t rows, int64_t cols, const QuantGrid& grid);
QuantizedMatrix quantize_gptq(const float* w, int64_t rows, int64_t cols, const Hessian& h, const QuantGrid& grid,
                              ThreadPool& pool);

// ||(W - Ŵ) X||_F / ||W X||_F over the inputs `h` summarises (computed from H, without X).
double relative_error(const float* w, const QuantizedMatrix& q, const Hessian& h, ThreadPool& pool);

}  // namespace apus
