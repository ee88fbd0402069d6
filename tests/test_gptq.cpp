// The GPTQ / RTN quantizers on plain matrices (src/quant/gptq_solver.h): the grid, exactness on
// matrices already on it, GPTQ's reconstruction error below RTN's on correlated inputs, act-order,
// the Hessian's running average and the error measure.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <set>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "quant/gptq_solver.h"

namespace apus {
namespace {

// Inputs [n, cols] with strong correlations: a few shared directions plus a little noise, and a
// different magnitude per feature (as activations with outlier channels have).
std::vector<float> correlated_inputs(int64_t n, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  constexpr int64_t kRank = 12;
  std::vector<float> mix(static_cast<size_t>(kRank * cols)), gain(static_cast<size_t>(cols)), x(static_cast<size_t>(n * cols));
  for (float& v : mix) v = nd(rng);
  for (float& v : gain) v = std::exp(nd(rng));
  for (int64_t t = 0; t < n; ++t) {
    float z[kRank];
    for (float& v : z) v = nd(rng);
    for (int64_t c = 0; c < cols; ++c) {
      float s = 0.1f * nd(rng);
      for (int64_t k = 0; k < kRank; ++k) s += z[k] * mix[size_t(k * cols + c)];
      x[size_t(t * cols + c)] = s * gain[size_t(c)];
    }
  }
  return x;
}

std::vector<float> normal_matrix(int64_t rows, int64_t cols, std::mt19937& rng, float sd = 0.05f) {
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<float> w(size_t(rows * cols));
  for (float& v : w) v = nd(rng);
  return w;
}

Hessian hessian_of(std::vector<float>& x, int64_t n, int64_t cols, ThreadPool& pool) {
  Hessian h(cols);
  h.add(make_view(x.data(), DType::F32, {n, cols}), pool);
  return h;
}

// ||(W - Ŵ) X^T|| / ||W X^T|| computed directly from the inputs.
double direct_error(const std::vector<float>& w, const QuantMatrix& q, const std::vector<float>& x, int64_t n) {
  const std::vector<float> wq = q.dequantize();
  double num = 0.0, den = 0.0;
  for (int64_t r = 0; r < q.out; ++r)
    for (int64_t t = 0; t < n; ++t) {
      double y = 0.0, yq = 0.0;
      for (int64_t c = 0; c < q.in; ++c) {
        y += double(w[size_t(r * q.in + c)]) * x[size_t(t * q.in + c)];
        yq += double(wq[size_t(r * q.in + c)]) * x[size_t(t * q.in + c)];
      }
      num += (y - yq) * (y - yq), den += y * y;
    }
  return std::sqrt(num / den);
}

void expect_on_grid(const QuantMatrix& q, const QuantGrid& g) {
  const int maxq = (1 << g.bits) - 1;
  for (uint8_t v : q.q) ASSERT_LE(int(v), maxq);
  for (float s : q.scales) {
    ASSERT_GT(s, 0.0f);
    ASSERT_EQ(s, f16_to_f32(f32_to_f16(s)));  // stored as float16 without rounding
  }
  for (const int z : q.zeros) {
    ASSERT_GE(z, 1);  // GPTQ v1 stores zero - 1
    ASSERT_LE(z, maxq);
    if (g.sym) {
      ASSERT_EQ(z, (maxq + 1) / 2);
    }
  }
  // Every group has group_size columns.
  std::vector<int> count(size_t(q.groups()), 0);
  for (int32_t gi : q.g_idx) {
    ASSERT_GE(gi, 0);
    ASSERT_LT(gi, q.groups());
    ++count[size_t(gi)];
  }
  for (int c : count) ASSERT_EQ(c, int(q.group_size));
}

TEST(Gptq, BelowRtnOnCorrelatedInputs) {
  ThreadPool pool(2);
  std::mt19937 rng(7);
  const int64_t rows = 48, cols = 256, n = 600;
  std::vector<float> x = correlated_inputs(n, cols, rng);
  const std::vector<float> w = normal_matrix(rows, cols, rng);
  const Hessian h = hessian_of(x, n, cols, pool);
  for (const bool sym : {false, true})
    for (const int gs : {32, 128, -1}) {
      QuantGrid g;
      g.group_size = gs, g.sym = sym;
      const QuantMatrix rtn = quantize_rtn(w.data(), rows, cols, g);
      const QuantMatrix gptq = quantize_gptq(w.data(), rows, cols, h, g, pool);
      expect_on_grid(rtn, g);
      expect_on_grid(gptq, g);
      const double e_rtn = direct_error(w, rtn, x, n), e_gptq = direct_error(w, gptq, x, n);
      EXPECT_NEAR(relative_error(w.data(), rtn, h, pool), e_rtn, 1e-3 * e_rtn + 1e-6);
      EXPECT_NEAR(relative_error(w.data(), gptq, h, pool), e_gptq, 1e-3 * e_gptq + 1e-6);
      std::printf("sym %d group %4d: ||WX - QX|| / ||WX||  rtn %.4f  gptq %.4f\n", int(sym), gs, e_rtn, e_gptq);
      EXPECT_LT(e_gptq, 0.5 * e_rtn) << "sym " << sym << " group " << gs << ": gptq " << e_gptq << " rtn " << e_rtn;
    }
}

TEST(Gptq, ActOrder) {
  ThreadPool pool(2);
  std::mt19937 rng(11);
  const int64_t rows = 24, cols = 128, n = 400;
  std::vector<float> x = correlated_inputs(n, cols, rng);
  const std::vector<float> w = normal_matrix(rows, cols, rng);
  const Hessian h = hessian_of(x, n, cols, pool);
  QuantGrid g;
  g.group_size = 32;
  g.desc_act = true;
  const QuantMatrix q = quantize_gptq(w.data(), rows, cols, h, g, pool);
  expect_on_grid(q, g);
  // The columns with the largest H_ii form group 0.
  int64_t top = 0;
  for (int64_t c = 1; c < cols; ++c)
    if (h.matrix()[size_t(c * cols + c)] > h.matrix()[size_t(top * cols + top)]) top = c;
  EXPECT_EQ(q.g_idx[size_t(top)], 0);
  std::set<int32_t> distinct(q.g_idx.begin(), q.g_idx.end());
  EXPECT_EQ(distinct.size(), 4u);
  bool permuted = false;
  for (int64_t c = 0; c < cols; ++c) permuted |= q.g_idx[size_t(c)] != int32_t(c / 32);
  EXPECT_TRUE(permuted);
  g.desc_act = false;
  const double plain = direct_error(w, quantize_gptq(w.data(), rows, cols, h, g, pool), x, n);
  const double rtn = direct_error(w, quantize_rtn(w.data(), rows, cols, g), x, n);
  EXPECT_LT(direct_error(w, q, x, n), 0.5 * rtn) << "plain GPTQ " << plain;
}

// A matrix already on the grid (levels spanning 0..15 in every group, power-of-two scales) comes
// back bit for bit from both methods; with act-order (groups of permuted columns) for one group per row.
TEST(Gptq, ExactOnGrid) {
  ThreadPool pool(2);
  std::mt19937 rng(3);
  const int64_t rows = 16, cols = 128, n = 300;
  std::vector<float> x = correlated_inputs(n, cols, rng);
  const Hessian h = hessian_of(x, n, cols, pool);
  for (const bool act : {false, true}) {
    const int64_t gs = act ? cols : 32;
    std::vector<float> w(size_t(rows * cols));
    std::uniform_int_distribution<int> level(0, 15), zero(1, 15), shift(-9, -4);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g0 = 0; g0 < cols; g0 += gs) {
        const float s = std::ldexp(1.0f, shift(rng));
        const int z = zero(rng);
        for (int64_t i = 0; i < gs; ++i) {
          const int q = i == 3 ? 0 : i == 7 ? 15 : level(rng);
          w[size_t(r * cols + g0 + i)] = s * float(q - z);
        }
      }
    QuantGrid g;
    g.group_size = act ? -1 : int(gs);
    g.desc_act = act;
    EXPECT_EQ(quantize_rtn(w.data(), rows, cols, g).dequantize(), w);
    EXPECT_EQ(quantize_gptq(w.data(), rows, cols, h, g, pool).dequantize(), w) << "act-order " << act;
  }
}

// The lazy batch update is a reordering of the same arithmetic: block size 1 gives the same levels
// (up to float rounding flipping a rare tie).
TEST(Gptq, BlockSizeIsOnlyAnOrder) {
  ThreadPool pool(2);
  std::mt19937 rng(5);
  const int64_t rows = 16, cols = 256, n = 300;
  std::vector<float> x = correlated_inputs(n, cols, rng);
  const std::vector<float> w = normal_matrix(rows, cols, rng);
  const Hessian h = hessian_of(x, n, cols, pool);
  QuantGrid a, b;
  a.group_size = b.group_size = 64;
  b.block_size = 1;
  const QuantMatrix qa = quantize_gptq(w.data(), rows, cols, h, a, pool);
  const QuantMatrix qb = quantize_gptq(w.data(), rows, cols, h, b, pool);
  size_t same = 0;
  for (size_t i = 0; i < qa.q.size(); ++i) same += qa.q[i] == qb.q[i];
  EXPECT_GE(double(same), 0.99 * double(qa.q.size()));
}

TEST(Gptq, HessianRunningAverage) {
  ThreadPool pool(2);
  std::mt19937 rng(9);
  const int64_t cols = 40, n = 70;
  std::vector<float> x = correlated_inputs(n, cols, rng);
  Hessian parts(cols);
  parts.add(make_view(x.data(), DType::F32, {30, cols}), pool);
  parts.add(make_view(x.data() + 30 * cols, DType::F32, {40, cols}), pool);
  EXPECT_EQ(parts.samples(), n);
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      double s = 0.0;
      for (int64_t t = 0; t < n; ++t) s += double(x[size_t(t * cols + i)]) * x[size_t(t * cols + j)];
      const double want = 2.0 * s / double(n);
      ASSERT_NEAR(parts.matrix()[size_t(i * cols + j)], want, 1e-4 * (std::abs(want) + 1.0)) << i << "," << j;
    }
}

// Inputs that never reach a column (H_ii = 0) leave GPTQ working; such columns quantize to zero.
TEST(Gptq, DeadInputs) {
  ThreadPool pool(1);
  std::mt19937 rng(2);
  const int64_t rows = 8, cols = 64, n = 100;
  std::vector<float> x = correlated_inputs(n, cols, rng);
  for (int64_t t = 0; t < n; ++t) x[size_t(t * cols + 5)] = 0.0f;
  const std::vector<float> w = normal_matrix(rows, cols, rng);
  QuantGrid g;
  g.group_size = 32;
  const QuantMatrix q = quantize_gptq(w.data(), rows, cols, hessian_of(x, n, cols, pool), g, pool);
  expect_on_grid(q, g);
  for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(q.weight(r, 5), 0.0f);
}

TEST(Gptq, BadGroupSizeIsRefused) {
  std::vector<float> w(8 * 48, 0.5f);
  QuantGrid g;
  g.group_size = 32;
  EXPECT_THROW(quantize_rtn(w.data(), 8, 48, g), std::exception);
}

}  // namespace
}  // namespace apus
