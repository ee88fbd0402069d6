#include "quant/gptq_solver.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cpu/gemm.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace apus {

namespace {

int max_level(const QuantGrid& g) { return (1 << g.bits) - 1; }

float f16_round(float x) { return f16_to_f32(f32_to_f16(x)); }

struct GroupParams {
  float scale;
  int zero;
};

// AutoGPTQ's Quantizer.find_params for one row of one group (n values `stride` apart): the range
// [min(x, 0), max(x, 0)] over 2^bits - 1 steps (symmetric: mirrored around zero 2^(bits-1)); the
// scale is rounded to float16 (what the checkpoint stores) before the zero is derived from it.
// GPTQ v1 checkpoints store zero - 1 in `bits` bits, so zero 0 cannot be written: a range that
// would get it (every value >= -scale/2) is widened to [-scale', (2^bits - 2) scale'].
GroupParams group_params(const float* x, int64_t n, const QuantGrid& g) {
  float xmin = 0.0f, xmax = 0.0f;
  for (int64_t i = 0; i < n; ++i) xmin = std::min(xmin, x[i]), xmax = std::max(xmax, x[i]);
  const int maxq = max_level(g);
  if (g.sym) {
    xmax = std::max(-xmin, xmax);
    if (xmin < 0.0f) xmin = -xmax;
  }
  if (xmin == 0.0f && xmax == 0.0f) xmin = -1.0f, xmax = 1.0f;
  constexpr float kMinScale = 5.9604645e-08f;  // the smallest positive float16
  float scale = std::max(f16_round((xmax - xmin) / float(maxq)), kMinScale);
  int zero = (maxq + 1) / 2;
  if (!g.sym) {
    zero = int(std::nearbyint(-xmin / scale));
    if (zero < 1) {
      scale = std::max(f16_round(xmax / float(maxq - 1)), kMinScale);
      zero = 1;
    }
    zero = std::min(zero, maxq);
  }
  return {scale, zero};
}

int quantize_value(float x, const GroupParams& p, int maxq) {
  const float q = std::nearbyint(x / p.scale) + float(p.zero);
  return int(std::clamp(q, 0.0f, float(maxq)));
}

int64_t resolve_group(const QuantGrid& g, int64_t cols) {
  APUS_CHECK(g.bits >= 2 && g.bits <= 8, "quantization: bits must be 2..8, got {}", g.bits);
  const int64_t gs = g.group_size <= 0 ? cols : g.group_size;
  APUS_CHECK(g.group_size == -1 || g.group_size > 0, "quantization: group_size must be positive or -1, got {}",
             g.group_size);
  APUS_CHECK(cols % gs == 0, "quantization: {} input columns are not a multiple of group_size {}", cols, gs);
  return gs;
}

QuantMatrix empty_result(int64_t rows, int64_t cols, int64_t gs, const QuantGrid& g) {
  QuantMatrix m;
  m.out = rows, m.in = cols, m.bits = g.bits, m.group_size = gs;
  m.q.assign(size_t(rows * cols), 0);
  m.scales.assign(size_t(cols / gs * rows), 0.0f);
  m.zeros.assign(size_t(cols / gs * rows), 0);
  m.g_idx.resize(size_t(cols));
  for (int64_t c = 0; c < cols; ++c) m.g_idx[size_t(c)] = int32_t(c / gs);
  return m;
}

// Lower Cholesky factor of the symmetric positive definite n x n matrix `a` (row-major), in place
// (the upper triangle is left as it was). False when a pivot is not positive.
bool cholesky(std::vector<double>& a, int64_t n, ThreadPool& pool) {
  for (int64_t j = 0; j < n; ++j) {
    double* rj = &a[size_t(j * n)];
    double s = rj[j];
    for (int64_t k = 0; k < j; ++k) s -= rj[k] * rj[k];
    if (!(s > 0.0)) return false;
    rj[j] = std::sqrt(s);
    const double inv = 1.0 / rj[j];
    auto rows = [&](int64_t i0, int64_t i1) {
      for (int64_t i = j + 1 + i0; i < j + 1 + i1; ++i) {
        double* ri = &a[size_t(i * n)];
        double t = ri[j];
        for (int64_t k = 0; k < j; ++k) t -= ri[k] * rj[k];
        ri[j] = t * inv;
      }
    };
    if ((n - j) * j > (1 << 16)) pool.parallel_for(n - j - 1, 16, rows);
    else rows(0, n - j - 1);
  }
  return true;
}

// The upper triangular U with H^-1 = U^T U (the GPTQ paper's "Cholesky form of the inverse"),
// from the lower Cholesky factor L of H: with M = L^-1, H^-1 = M^T M, then U = chol(H^-1)^T.
std::vector<float> inverse_cholesky_upper(std::vector<double> l, int64_t n, ThreadPool& pool) {
  // mt[j][k] = M[k][j] (M lower, so mt is upper): column j of M, solved from L M = I.
  std::vector<double> mt(size_t(n * n), 0.0);
  pool.parallel_for(n, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      double* col = &mt[size_t(j * n)];
      col[j] = 1.0 / l[size_t(j * n + j)];
      for (int64_t i = j + 1; i < n; ++i) {
        const double* li = &l[size_t(i * n)];
        double s = 0.0;
        for (int64_t k = j; k < i; ++k) s -= li[k] * col[k];
        col[i] = s / li[i];
      }
    }
  });
  // H^-1[a][b] = sum_k M[k][a] M[k][b] = sum_{k >= max(a, b)} mt[a][k] mt[b][k]; lower triangle only.
  std::vector<double>& inv = l;
  pool.parallel_for(n, 1, [&](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a)
      for (int64_t b = 0; b <= a; ++b) {
        const double *ra = &mt[size_t(a * n)], *rb = &mt[size_t(b * n)];
        double s = 0.0;
        for (int64_t k = a; k < n; ++k) s += ra[k] * rb[k];
        inv[size_t(a * n + b)] = s;
      }
  });
  APUS_CHECK(cholesky(inv, n, pool), "GPTQ: the inverse Hessian is not positive definite (increase damp_percent)");
  std::vector<float> u(size_t(n * n), 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) u[size_t(i * n + j)] = float(inv[size_t(j * n + i)]);
  return u;
}

}  // namespace

void Hessian::add(const Tensor& x, ThreadPool& pool) {
  APUS_CHECK(x.dtype == DType::F32 && x.shape.size() == 2 && x.cols() == cols_, "Hessian: expected F32 [T, {}] inputs",
             cols_);
  constexpr int64_t kChunk = 2048;
  std::vector<float> xt, c(size_t(cols_ * cols_));
  for (int64_t t0 = 0; t0 < x.rows(); t0 += kChunk) {
    const int64_t t = std::min(kChunk, x.rows() - t0);
    xt.assign(size_t(cols_ * t), 0.0f);  // x^T: [cols, t]
    for (int64_t r = 0; r < t; ++r) {
      const float* row = x.ptr<float>() + (t0 + r) * x.row_stride;
      for (int64_t i = 0; i < cols_; ++i) xt[size_t(i * t + r)] = row[i];
    }
    gemm(xt.data(), t, xt.data(), DType::F32, t, nullptr, c.data(), cols_, cols_, cols_, t, pool);
    const float keep = float(double(samples_) / double(samples_ + t)), add = float(2.0 / double(samples_ + t));
    for (size_t i = 0; i < h_.size(); ++i) h_[i] = h_[i] * keep + c[i] * add;
    samples_ += t;
  }
}

QuantMatrix quantize_rtn(const float* w, int64_t rows, int64_t cols, const QuantGrid& grid) {
  const int64_t gs = resolve_group(grid, cols);
  QuantMatrix m = empty_result(rows, cols, gs, grid);
  const int maxq = max_level(grid);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < cols / gs; ++g) {
      const float* x = w + r * cols + g * gs;
      const GroupParams p = group_params(x, gs, grid);
      m.scales[size_t(r * (cols / gs) + g)] = p.scale;
      m.zeros[size_t(r * (cols / gs) + g)] = uint8_t(p.zero);
      for (int64_t i = 0; i < gs; ++i) m.q[size_t(r * cols + g * gs + i)] = uint8_t(quantize_value(x[i], p, maxq));
    }
  return m;
}

// AutoGPTQ's GPTQ.fasterquant: dead inputs (H_ii = 0) get H_ii = 1 and zero weights; act-order
// permutes the columns by decreasing H_ii; H += damp * mean(diag) I; U = chol(H^-1) upper. Then,
// per block of block_size columns and per column i: the group's scale/zero when a group starts
// (from the current, already compensated values), q_i = quant(w_i), err = (w_i - q_i) / U_ii,
// w_j -= err * U_ij for the block's later columns, and the block's errors are applied to all later
// columns at the end of the block (lazy batch update). Rows are independent: threads take tiles.
QuantMatrix quantize_gptq(const float* w, int64_t rows, int64_t cols, const Hessian& hess, const QuantGrid& grid,
                              ThreadPool& pool) {
  APUS_CHECK(hess.cols() == cols, "GPTQ: the Hessian is {}x{}, the matrix has {} columns", hess.cols(), hess.cols(),
             cols);
  APUS_CHECK(hess.samples() > 0, "GPTQ: no calibration inputs were seen");
  const int64_t gs = resolve_group(grid, cols), n = cols;
  QuantMatrix m = empty_result(rows, cols, gs, grid);
  std::vector<double> a(hess.matrix().begin(), hess.matrix().end());
  std::vector<bool> dead(static_cast<size_t>(n), false);
  for (int64_t i = 0; i < n; ++i)
    if (a[size_t(i * n + i)] == 0.0) a[size_t(i * n + i)] = 1.0, dead[size_t(i)] = true;
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  if (grid.desc_act) {
    std::stable_sort(perm.begin(), perm.end(),
                     [&](int64_t x, int64_t y) { return a[size_t(x * n + x)] > a[size_t(y * n + y)]; });
    std::vector<double> p(size_t(n * n));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) p[size_t(i * n + j)] = a[size_t(perm[size_t(i)] * n + perm[size_t(j)])];
    a.swap(p);
    for (int64_t i = 0; i < n; ++i) m.g_idx[size_t(perm[size_t(i)])] = int32_t(i / gs);
  }
  double mean_diag = 0.0;
  for (int64_t i = 0; i < n; ++i) mean_diag += a[size_t(i * n + i)];
  mean_diag /= double(n);
  std::vector<double> l;
  double damp = grid.damp_percent;
  for (int attempt = 0;; ++attempt) {
    l = a;
    for (int64_t i = 0; i < n; ++i) l[size_t(i * n + i)] += damp * mean_diag;
    if (cholesky(l, n, pool)) break;
    APUS_CHECK(attempt < 4, "GPTQ: the Hessian is not positive definite even with damp_percent {}", damp);
    damp *= 10.0;
  }
  const std::vector<float> u = inverse_cholesky_upper(std::move(l), n, pool);

  const int maxq = max_level(grid);
  const int64_t block = std::max(1, grid.block_size);
  constexpr int64_t kTile = 8;  // rows per task: U's rows are read once per tile and block
  pool.parallel_for((rows + kTile - 1) / kTile, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> wt(size_t(kTile * n)), err(size_t(kTile * block));
    std::vector<GroupParams> params(static_cast<size_t>(kTile));
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t r0 = tile * kTile, nr = std::min(kTile, rows - r0);
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t i = 0; i < n; ++i)
          wt[size_t(r * n + i)] = dead[size_t(perm[size_t(i)])] ? 0.0f : w[(r0 + r) * cols + perm[size_t(i)]];
      for (int64_t i1 = 0; i1 < n; i1 += block) {
        const int64_t i2 = std::min(i1 + block, n);
        for (int64_t i = i1; i < i2; ++i) {
          const float* ui = &u[size_t(i * n)];
          for (int64_t r = 0; r < nr; ++r) {
            float* row = &wt[size_t(r * n)];
            if (i % gs == 0) {
              params[size_t(r)] = group_params(row + i, gs, grid);
              m.scales[size_t((r0 + r) * (n / gs) + i / gs)] = params[size_t(r)].scale;
              m.zeros[size_t((r0 + r) * (n / gs) + i / gs)] = uint8_t(params[size_t(r)].zero);
            }
            const GroupParams& p = params[size_t(r)];
            const int q = quantize_value(row[i], p, maxq);
            m.q[size_t((r0 + r) * cols + perm[size_t(i)])] = uint8_t(q);
            const float e = (row[i] - p.scale * float(q - p.zero)) / ui[i];
            err[size_t(r * block + (i - i1))] = e;
            for (int64_t j = i + 1; j < i2; ++j) row[j] -= e * ui[j];
          }
        }
        for (int64_t k = 0; k < i2 - i1; ++k) {
          const float* uk = &u[size_t((i1 + k) * n)];
          for (int64_t r = 0; r < nr; ++r) {
            const float e = err[size_t(r * block + k)];
            float* row = &wt[size_t(r * n)];
            for (int64_t j = i2; j < n; ++j) row[j] -= e * uk[j];
          }
        }
      }
    }
  });
  return m;
}

double relative_error(const float* w, const QuantMatrix& q, const Hessian& h, ThreadPool& pool) {
  const int64_t rows = q.out, cols = q.in;
  APUS_CHECK(h.cols() == cols, "relative_error: the Hessian is {}x{}, the matrix has {} columns", h.cols(), h.cols(),
             cols);
  std::vector<float> d = q.dequantize();
  for (size_t i = 0; i < d.size(); ++i) d[i] = w[i] - d[i];
  // sum_r v_r H v_r^T for v = W - Ŵ and for W: (V H) . V summed.
  auto quad = [&](const float* v) {
    std::vector<float> vh(size_t(rows * cols));
    gemm(v, cols, h.matrix().data(), DType::F32, cols, nullptr, vh.data(), cols, rows, cols, cols, pool);
    double s = 0.0;
    for (size_t i = 0; i < vh.size(); ++i) s += double(vh[i]) * double(v[i]);
    return s;
  };
  const double num = quad(d.data()), den = quad(w);
  return den > 0.0 ? std::sqrt(std::max(num, 0.0) / den) : 0.0;
}

}  // namespace apus
