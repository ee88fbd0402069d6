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

constexpr int64_t kPanel = 128;  // block size of the factorisations

// Lower Cholesky factor of the small symmetric positive definite b x b block at `a` (row stride
// lda), in place, in double; false when a pivot is not positive.
bool cholesky_block(float* a, int64_t lda, int64_t b) {
  std::vector<double> d(size_t(b * b));
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j <= i; ++j) d[size_t(i * b + j)] = a[i * lda + j];
  for (int64_t j = 0; j < b; ++j) {
    double* rj = &d[size_t(j * b)];
    double s = rj[j];
    for (int64_t k = 0; k < j; ++k) s -= rj[k] * rj[k];
    if (!(s > 0.0)) return false;
    rj[j] = std::sqrt(s);
    for (int64_t i = j + 1; i < b; ++i) {
      double* ri = &d[size_t(i * b)];
      double t = ri[j];
      for (int64_t k = 0; k < j; ++k) t -= ri[k] * rj[k];
      ri[j] = t / rj[j];
    }
  }
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j <= i; ++j) a[i * lda + j] = float(d[size_t(i * b + j)]);
  return true;
}

// Lower Cholesky factor of the symmetric positive definite n x n matrix `a` (row-major, float32 as
// AutoGPTQ computes it; only the lower triangle is read and written), right-looking by panels:
// factor the diagonal block, solve the panel below it, update the trailing matrix with the gemm.
bool cholesky(std::vector<float>& a, int64_t n, ThreadPool& pool) {
  std::vector<float> prod;
  for (int64_t k = 0; k < n; k += kPanel) {
    const int64_t b = std::min(kPanel, n - k), m = n - k - b;
    float* diag = &a[size_t(k * n + k)];
    if (!cholesky_block(diag, n, b)) return false;
    if (m == 0) break;
    pool.parallel_for(m, 16, [&](int64_t r0, int64_t r1) {  // row i: x L11^T = a_i  (forward substitution)
      for (int64_t i = k + b + r0; i < k + b + r1; ++i) {
        float* x = &a[size_t(i * n + k)];
        for (int64_t j = 0; j < b; ++j) {
          const float* lj = diag + j * n;
          double t = x[j];
          for (int64_t c = 0; c < j; ++c) t -= double(x[c]) * lj[c];
          x[j] = float(t / lj[j]);
        }
      }
    });
    prod.resize(size_t(m * m));
    const float* panel = &a[size_t((k + b) * n + k)];
    gemm(panel, n, panel, DType::F32, n, nullptr, prod.data(), m, m, m, b, pool);
    pool.parallel_for(m, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        float* row = &a[size_t((k + b + i) * n + k + b)];
        for (int64_t j = 0; j <= i; ++j) row[j] -= prod[size_t(i * m + j)];
      }
    });
  }
  return true;
}

// xt = (L^-1)^T for the lower Cholesky factor L in `l`, by block rows: with X = L^-1, block row i of
// X is -L_ii^-1 (L[i, :i] X[:i, :i]) left of the diagonal (one gemm) and L_ii^-1 on it.
std::vector<float> inverse_lower_transposed(const std::vector<float>& l, int64_t n, ThreadPool& pool) {
  std::vector<float> xt(size_t(n * n), 0.0f), t;
  for (int64_t i0 = 0; i0 < n; i0 += kPanel) {
    const int64_t b = std::min(kPanel, n - i0);
    std::vector<double> dinv(size_t(b * b), 0.0);  // L_ii^-1, lower
    for (int64_t j = 0; j < b; ++j) {
      dinv[size_t(j * b + j)] = 1.0 / l[size_t((i0 + j) * n + i0 + j)];
      for (int64_t i = j + 1; i < b; ++i) {
        double s = 0.0;
        for (int64_t k = j; k < i; ++k) s -= double(l[size_t((i0 + i) * n + i0 + k)]) * dinv[size_t(k * b + j)];
        dinv[size_t(i * b + j)] = s / l[size_t((i0 + i) * n + i0 + i)];
      }
    }
    for (int64_t r = 0; r < b; ++r)
      for (int64_t c = 0; c <= r; ++c) xt[size_t((i0 + c) * n + i0 + r)] = float(dinv[size_t(r * b + c)]);
    if (i0 == 0) continue;
    t.resize(size_t(b * i0));  // L[i, :i] X[:i, :i]; X[k][j] = xt[j][k]
    gemm(&l[size_t(i0 * n)], n, xt.data(), DType::F32, n, nullptr, t.data(), i0, b, i0, i0, pool);
    pool.parallel_for(i0, 64, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t r = 0; r < b; ++r) {
          double s = 0.0;
          for (int64_t c = 0; c <= r; ++c) s -= dinv[size_t(r * b + c)] * t[size_t(c * i0 + j)];
          xt[size_t(j * n + i0 + r)] = float(s);
        }
    });
  }
  return xt;
}

// The upper triangular U with H^-1 = U^T U (the GPTQ paper's "Cholesky form of the inverse"), with
// one factorisation and one triangular inverse: for the reversal J, J H J = L' L'^T gives
// H = A A^T with A = J L' J upper, so H^-1 = (A^-1)^T A^-1 and U = A^-1 = J L'^-1 J.
// False when H (damped) is not positive definite.
bool inverse_cholesky_upper(const std::vector<double>& h, int64_t n, double damp, ThreadPool& pool,
                            std::vector<float>* u) {
  std::vector<float> a(size_t(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      a[size_t(i * n + j)] = float(h[size_t((n - 1 - i) * n + (n - 1 - j))] + (i == j ? damp : 0.0));
  if (!cholesky(a, n, pool)) return false;
  for (int64_t i = 0; i < n; ++i) std::fill(&a[size_t(i * n + i + 1)], &a[size_t(i * n)] + n, 0.0f);
  const std::vector<float> xt = inverse_lower_transposed(a, n, pool);
  u->assign(size_t(n * n), 0.0f);
  for (int64_t i = 0; i < n; ++i)  // U[i][j] = X[n-1-i][n-1-j] = xt[n-1-j][n-1-i]
    for (int64_t j = i; j < n; ++j) (*u)[size_t(i * n + j)] = xt[size_t((n - 1 - j) * n + (n - 1 - i))];
  return true;
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

void fake_quantize_group(const float* x, int64_t n, const QuantGrid& grid, float* out) {
  const GroupParams p = group_params(x, n, grid);
  const int maxq = max_level(grid);
  for (int64_t i = 0; i < n; ++i) out[i] = p.scale * float(quantize_value(x[i], p, maxq) - p.zero);
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
// w_j -= err * U_ij for the block's later columns (rows in parallel), and the block's errors are
// applied to all later columns at the end of the block with one gemm (lazy batch update).
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
  std::vector<float> u;
  double damp = grid.damp_percent;
  for (int attempt = 0; !inverse_cholesky_upper(a, n, damp * mean_diag, pool, &u); ++attempt) {
    APUS_CHECK(attempt < 4, "GPTQ: the Hessian is not positive definite even with damp_percent {}", damp);
    damp *= 10.0;
  }
  std::vector<float> ut(size_t(n * n));  // U^T: row j holds column j of U, for the gemm
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) ut[size_t(j * n + i)] = u[size_t(i * n + j)];

  std::vector<float> wp(size_t(rows * n));  // W with permuted columns, dead ones zero
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < n; ++i)
      wp[size_t(r * n + i)] = dead[size_t(perm[size_t(i)])] ? 0.0f : w[r * cols + perm[size_t(i)]];
  const int maxq = max_level(grid);
  const int64_t block = std::max(1, grid.block_size);
  std::vector<float> err(size_t(rows * block)), delta;
  for (int64_t i1 = 0; i1 < n; i1 += block) {
    const int64_t i2 = std::min(i1 + block, n), bw = i2 - i1;
    pool.parallel_for(rows, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* row = &wp[size_t(r * n)];
        GroupParams p{};
        if (i1 % gs != 0) {  // a group that started in an earlier block
          const size_t g = size_t(r * (n / gs) + i1 / gs);
          p = {m.scales[g], int(m.zeros[g])};
        }
        for (int64_t i = i1; i < i2; ++i) {
          if (i % gs == 0) {
            p = group_params(row + i, gs, grid);
            m.scales[size_t(r * (n / gs) + i / gs)] = p.scale;
            m.zeros[size_t(r * (n / gs) + i / gs)] = uint8_t(p.zero);
          }
          const int q = quantize_value(row[i], p, maxq);
          m.q[size_t(r * cols + perm[size_t(i)])] = uint8_t(q);
          const float* ui = &u[size_t(i * n)];
          const float e = (row[i] - p.scale * float(q - p.zero)) / ui[i];
          err[size_t(r * bw + (i - i1))] = e;
          for (int64_t j = i + 1; j < i2; ++j) row[j] -= e * ui[j];
        }
      }
    });
    if (i2 == n) break;
    // W[:, i2:] -= Err U[i1:i2, i2:]: the gemm's C = A B^T with B = U^T rows i2.., columns i1..i2.
    const int64_t rest = n - i2;
    delta.resize(size_t(rows * rest));
    gemm(err.data(), bw, &ut[size_t(i2 * n + i1)], DType::F32, n, nullptr, delta.data(), rest, rows, rest, bw, pool);
    pool.parallel_for(rows, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < rest; ++j) wp[size_t(r * n + i2 + j)] -= delta[size_t(r * rest + j)];
    });
  }
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
