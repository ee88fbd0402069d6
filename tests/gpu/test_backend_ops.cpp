// Every CUDA op against the CPU backend (the reference) on random inputs, for each activation dtype
// the GPU runs (BF16, F16, F32): both backends get the same values (inputs rounded to the dtype
// first), GPU outputs are poisoned with NaN before each op so that unwritten elements fail, and
// results are compared by relative L2 error against a tolerance set by the dtype's rounding.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "quant/gptq_format.h"
#include "sample/sampler.h"

namespace apus {
namespace {

// Relative L2 error allowed: outputs are rounded once or twice to the dtype (bf16: 2^-9 relative).
double tolerance(DType t) { return t == DType::BF16 ? 1e-2 : t == DType::F16 ? 2e-3 : 2e-5; }

float round_to(float f, DType t) {
  if (t == DType::BF16) return bf16_to_f32(f32_to_bf16(f));
  if (t == DType::F16) return f16_to_f32(f32_to_f16(f));
  return f;
}

class BackendOps : public ::testing::TestWithParam<DType> {
 protected:
  static void SetUpTestSuite() {
    if (!cuda_available()) return;
    cpu_ = make_cpu_backend(4).release();
    gpu_ = make_backend("cuda", 1).release();
  }
  static void TearDownTestSuite() {
    delete gpu_;
    delete cpu_;
    gpu_ = cpu_ = nullptr;
  }
  void SetUp() override {
    if (!gpu_) GTEST_SKIP() << "no CUDA GPU";
    dt_ = GetParam();
    gpu_->set_model_dtype(dt_);
  }

  // Host F32 values in [lo, hi), rounded to the dtype under test.
  Tensor random(std::vector<int64_t> shape, float lo = -1.0f, float hi = 1.0f) {
    Tensor t = host_tensor(DType::F32, std::move(shape));
    std::uniform_real_distribution<float> d(lo, hi);
    for (int64_t i = 0; i < t.numel(); ++i) t.ptr<float>()[i] = round_to(d(rng_), dt_);
    return t;
  }
  // A host F32 tensor on the GPU in dtype `t` (default: the activation dtype).
  Tensor to_gpu(const Tensor& f32, DType t = DType::F32, bool as_activation = true) {
    if (as_activation) t = dt_;
    Tensor h = host_tensor(t, f32.shape);
    for (int64_t i = 0; i < f32.numel(); ++i) {
      const float v = f32.ptr<float>()[i];
      if (t == DType::F32) h.ptr<float>()[i] = v;
      else if (t == DType::BF16) h.ptr<uint16_t>()[i] = f32_to_bf16(v);
      else h.ptr<uint16_t>()[i] = f32_to_f16(v);
    }
    return gpu_->upload(h);
  }
  Tensor to_gpu_f32(const Tensor& f32) { return to_gpu(f32, DType::F32, false); }
  // A GPTQ-style weight [n, k] of random codes, zeros and scales (g_idx: each input column's group).
  QuantWeight random_quant(int bits, int64_t n, int64_t k, int64_t group, const std::vector<int32_t>& g_idx) {
    QuantMatrix m;
    m.out = n, m.in = k, m.bits = bits, m.group_size = group, m.g_idx = g_idx;
    std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
    std::uniform_real_distribution<float> scale(0.2f, 1.0f);
    m.q.resize(size_t(n * k));
    for (auto& v : m.q) v = uint8_t(code(rng_));
    m.zeros.resize(size_t(n * m.groups()));
    for (auto& v : m.zeros) v = uint8_t(code(rng_));
    m.scales.resize(m.zeros.size());
    for (auto& v : m.scales) v = scale(rng_) / float(1 << bits) / std::sqrt(float(k));
    return make_quant_weight(m, "w");
  }
  Tensor to_gpu_i32(const std::vector<int32_t>& v) {
    return gpu_->upload(make_view(const_cast<int32_t*>(v.data()), DType::I32, {int64_t(v.size())}));
  }
  // A GPU activation tensor full of NaN.
  Tensor poisoned(std::vector<int64_t> shape) {
    Tensor nan = host_tensor(DType::F32, std::move(shape));
    std::fill(nan.ptr<float>(), nan.ptr<float>() + nan.numel(), NAN);
    return to_gpu(nan);
  }
  // Any GPU float tensor (possibly a strided view) back as contiguous host F32.
  Tensor to_host(const Tensor& g) {
    Tensor raw = host_tensor(g.dtype, {g.rows(), g.cols()});
    gpu_->copy_to_host(g, raw.data);
    Tensor out = host_tensor(DType::F32, {g.rows(), g.cols()});
    for (int64_t i = 0; i < raw.numel(); ++i) {
      const uint16_t h = raw.ptr<uint16_t>()[i];
      out.ptr<float>()[i] = g.dtype == DType::F32    ? raw.ptr<float>()[i]
                            : g.dtype == DType::BF16 ? bf16_to_f32(h)
                                                     : f16_to_f32(h);
    }
    return out;
  }
  // ||got - want|| / ||want|| within the dtype's tolerance, every element finite. `want` may be a
  // strided view.
  void expect_close(const Tensor& want, const Tensor& got_gpu, const std::string& what, double tol = 0) {
    const Tensor got = to_host(got_gpu);
    ASSERT_EQ(got.rows(), want.rows()) << what;
    ASSERT_EQ(got.cols(), want.cols()) << what;
    double num = 0, den = 0;
    int64_t bad = 0;
    for (int64_t r = 0; r < want.rows(); ++r)
      for (int64_t c = 0; c < want.cols(); ++c) {
        const double w = want.row<float>(r)[c], g = got.row<float>(r)[c];
        if (!std::isfinite(g)) ++bad;
        num += (g - w) * (g - w);
        den += w * w;
      }
    EXPECT_EQ(bad, 0) << what << ": non-finite (unwritten?) elements";
    const double rel = std::sqrt(num / std::max(den, 1e-30));
    EXPECT_LT(rel, tol > 0 ? tol : tolerance(dt_)) << what << " (" << dtype_name(dt_) << ")";
  }

  static Backend* cpu_;
  static Backend* gpu_;
  DType dt_ = DType::BF16;
  std::mt19937 rng_{12345};
};
Backend* BackendOps::cpu_ = nullptr;
Backend* BackendOps::gpu_ = nullptr;

// Batched LoRA: tokens of 3 slots and of the base (-1) mixed, two parts writing column ranges of
// a strided output, input a column view; the CPU's grouped GEMMs are the reference.
// Ranks 8..64, inputs of one and of several 512-column slices (the shrink's atomic sums), aligned
// and unaligned input views, decode- and prefill-sized batches, mixed slots with base (-1) tokens
// and one slot for all. The base output is small so that the LoRA delta dominates the error.
TEST_P(BackendOps, LoraMixedSlots) {
  struct Case {
    int64_t m, k, rank, x_offset;
    bool one_slot;
  };
  for (const Case c : {Case{1, 96, 8, 16, false}, Case{5, 96, 8, 16, false}, Case{64, 96, 8, 16, false},
                       Case{7, 1100, 16, 3, false}, Case{33, 1030, 32, 16, false}, Case{40, 600, 64, 1, false},
                       Case{3000, 1100, 16, 16, false}, Case{3000, 520, 64, 16, true}, Case{300, 96, 32, 16, true}}) {
    const int64_t m = c.m, k = c.k, R = c.rank, n1 = 48, n2 = 80, S = 3;
    Tensor xw = random({m, k + 32});
    Tensor x = xw.cols_view(c.x_offset, k);
    std::vector<int32_t> slots;
    for (int64_t t = 0; t < m; ++t) slots.push_back(c.one_slot ? 1 : int32_t((t * 7 + t / 5) % 4) - 1);
    const float w = 1.0f / std::sqrt(float(k));
    Tensor a1 = random({S, R, k}, -w, w), b1 = random({S, n1, R}, -0.3f, 0.3f);
    Tensor a2 = random({S, R, k}, -w, w), b2 = random({S, n2, R}, -0.3f, 0.3f);
    Tensor base = random({m, n1 + n2 + 8}, -0.05f, 0.05f);
    Tensor yw = host_tensor(DType::F32, {m, n1 + n2 + 8});
    std::copy_n(base.ptr<float>(), base.numel(), yw.ptr<float>());
    Tensor y = yw.cols_view(8, n1 + n2);
    const Tensor cslots = make_view(slots.data(), DType::I32, {m});
    cpu_->lora(x, cslots, {LoraPart{a1, b1, 0}, LoraPart{a2, b2, n1}}, y);

    Tensor gx = to_gpu(xw).cols_view(c.x_offset, k);
    Tensor gy = to_gpu(base).cols_view(8, n1 + n2);
    gpu_->lora(gx, to_gpu_i32(slots), {LoraPart{to_gpu(a1), to_gpu(b1), 0}, LoraPart{to_gpu(a2), to_gpu(b2), n1}}, gy);
    expect_close(y, gy, fmt::format("lora m={} k={} rank={} x offset {}{}", m, k, R, c.x_offset,
                                    c.one_slot ? " one slot" : ""));
  }
}

// linear + LoRA as one op (the CUDA backend runs the shrink on a second stream beside the GEMM):
// two in a row, the second reading the first's output, so that a shrink that ran ahead of the
// op before it (or an expand ahead of its GEMM) would read or add to stale values. Decode- and
// prefill-sized batches, one input slice and several.
TEST_P(BackendOps, LinearLoraChained) {
  for (const int64_t m : {1, 32, 600}) {
    for (const int64_t k : {96, 1100}) {
      const int64_t R = 16, n = k, S = 2;
      std::vector<int32_t> slots;
      for (int64_t t = 0; t < m; ++t) slots.push_back(int32_t(t % 3) - 1);
      const Tensor cslots = make_view(slots.data(), DType::I32, {m});
      const float w = 1.0f / std::sqrt(float(k));
      Tensor x = random({m, k});
      Tensor wt = random({n, k}, -w, w), bias = random({n});
      Tensor a = random({S, R, k}, -w, w), b = random({S, n, R}, -0.5f, 0.5f);
      const Linear cl{{LinearPart{wt, bias}}, k, n};
      Tensor y1 = host_tensor(DType::F32, {m, n}), y2 = host_tensor(DType::F32, {m, n});
      cpu_->linear_lora(x, cl, cslots, {LoraPart{a, b, 0}}, y1);
      for (int64_t i = 0; i < y1.numel(); ++i) y1.ptr<float>()[i] = round_to(y1.ptr<float>()[i], dt_);
      cpu_->linear_lora(y1, cl, cslots, {LoraPart{a, b, 0}}, y2);

      const Linear gl = gpu_->prepare_linear(Linear{{LinearPart{to_gpu(wt), to_gpu_f32(bias)}}, k, n});
      const std::vector<LoraPart> gp{LoraPart{to_gpu(a), to_gpu(b), 0}};
      const Tensor gslots = to_gpu_i32(slots);
      Tensor gx = to_gpu(x), gy1 = poisoned({m, n}), gy2 = poisoned({m, n});
      gpu_->linear_lora(gx, gl, gslots, gp, gy1);
      gpu_->linear_lora(gy1, gl, gslots, gp, gy2);
      const std::string what = fmt::format("linear_lora m={} k={}", m, k);
      expect_close(y1, gy1, what + " first");
      expect_close(y2, gy2, what + " second (input: the first's output)", 2 * tolerance(dt_));
    }
  }
}

TEST_P(BackendOps, LinearPartsBiasStridesAndF32Output) {
  for (int64_t m : {1, 7, 64, 300}) {
    const int64_t k = 96, n1 = 48, n2 = 80;
    // Input: a column view of a wider matrix; output: a column view too.
    Tensor xw = random({m, k + 32});
    Tensor x = xw.cols_view(16, k);
    Tensor w1 = random({n1, k}, -0.2f, 0.2f), w2 = random({n2, k}, -0.2f, 0.2f), b1 = random({n1});
    Linear cl{{LinearPart{w1, b1}, LinearPart{w2, {}}}, k, n1 + n2};
    Tensor yw = host_tensor(DType::F32, {m, n1 + n2 + 8});
    Tensor y = yw.cols_view(8, n1 + n2);
    cpu_->linear(x, cl, y);

    Linear gl = gpu_->prepare_linear(
        Linear{{LinearPart{to_gpu(w1), to_gpu_f32(b1)}, LinearPart{to_gpu(w2), {}}}, k, n1 + n2});
    Tensor gx = to_gpu(xw).cols_view(16, k);
    Tensor gy = poisoned({m, n1 + n2 + 8}).cols_view(8, n1 + n2);
    gpu_->linear(gx, gl, gy);
    expect_close(y, gy, fmt::format("linear m={}", m));

    // Logits: activations in, F32 out.
    Tensor gf = gpu_->alloc(DType::F32, {m, n1 + n2});
    gpu_->linear(gx, gl, gf);
    expect_close(y, gf, fmt::format("linear m={} to F32", m), dt_ == DType::F32 ? 0 : 3e-3);
  }
}

// The decode GEMV (<= 8 rows): vectorized and scalar paths (k not a multiple of 16 bytes, unaligned
// views), one and several parts, bias, F32 output, and the 7B shapes' k.
TEST_P(BackendOps, GemvSmallBatchesOddShapes) {
  struct Shape {
    int64_t k, n, offset;  // offset: first input column inside a wider matrix
  };
  for (const Shape sh : {Shape{8, 1, 0}, Shape{100, 13, 0}, Shape{264, 257, 0}, Shape{1000, 33, 1},
                         Shape{3584, 96, 0}, Shape{18944, 40, 8}, Shape{520, 64, 3}}) {
    for (int64_t m : {1, 2, 3, 5, 8}) {
      const int64_t k = sh.k, n = sh.n;
      Tensor xw = random({m, k + 16});
      Tensor x = xw.cols_view(sh.offset, k);
      Tensor w = random({n, k}, -0.2f, 0.2f), b = random({n});
      Linear cl{{LinearPart{w, b}}, k, n};
      Tensor y = host_tensor(DType::F32, {m, n});
      cpu_->linear(x, cl, y);
      Linear gl = gpu_->prepare_linear(Linear{{LinearPart{to_gpu(w), to_gpu_f32(b)}}, k, n});
      Tensor gx = to_gpu(xw).cols_view(sh.offset, k);
      Tensor gy = poisoned({m, n});
      gpu_->linear(gx, gl, gy);
      const std::string what = fmt::format("gemv m={} k={} n={} offset={}", m, k, n, sh.offset);
      expect_close(y, gy, what);
      Tensor gf = gpu_->alloc(DType::F32, {m, n});
      gpu_->linear(gx, gl, gf);
      expect_close(y, gf, what + " to F32", dt_ == DType::F32 ? 0 : 3e-3);
    }
  }
}

// GPTQ / AWQ layers against the CPU's qgemm: 4 and 8 bits, groups of 32, 64, 96 (not a power of two:
// the kernels divide for the group index), 128 and the whole row (scales per fragment, or per chunk
// of products when a warp's chunk lies in one group), act-order
// (a column permutation), two fused parts with a bias and an odd total of output columns, decode
// batches on tensor cores (1-8 rows in blocks of 16 or 8 warps, by width; 9-64 rows; k not a multiple
// of a warp's chunk), prefill through the dequantized matrix (65+ rows, and every batch for F32), F32
// output; rows independent of the batch around them (within 1-8 rows and within 9-64).
TEST_P(BackendOps, QuantLinear) {
  struct Case {
    int bits;
    int64_t k, group;
    bool act_order;
    int64_t n1 = 40;  // the first part's columns (8,448: more 16-column blocks than two a multiprocessor)
  };
  for (const Case c : {Case{4, 96, 32, false}, Case{4, 256, 128, true}, Case{4, 3584, 128, false},
                       Case{4, 448, 64, false}, Case{8, 96, 32, true}, Case{8, 512, 512, false},
                       Case{8, 192, 64, false}, Case{4, 160, 160, false}, Case{4, 384, 96, false},
                       Case{4, 256, 128, false, 8448}}) {
    const int64_t k = c.k, n1 = c.n1, n2 = 23;
    std::vector<QuantWeight> parts;
    std::vector<int32_t> g_idx(static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ++i) g_idx[size_t(i)] = int32_t(i / c.group);
    if (c.act_order) std::shuffle(g_idx.begin(), g_idx.end(), rng_);
    for (int64_t n : {n1, n2}) parts.push_back(random_quant(c.bits, n, k, c.group, g_idx));
    Tensor b1 = random({n1});
    Linear cl{{LinearPart{{}, b1, parts[0]}, LinearPart{{}, {}, parts[1]}}, k, n1 + n2};
    Linear gl = gpu_->prepare_linear(
        Linear{{LinearPart{{}, to_gpu_f32(b1), parts[0]}, LinearPart{{}, {}, parts[1]}}, k, n1 + n2});
    for (int64_t m : {1, 2, 3, 8, 9, 16, 17, 33, 64, 65, 200}) {
      Tensor x = random({m, k});
      Tensor y = host_tensor(DType::F32, {m, n1 + n2});
      cpu_->linear(x, cl, y);
      Tensor gx = to_gpu(x);
      Tensor gy = poisoned({m, n1 + n2});
      gpu_->linear(gx, gl, gy);
      const std::string what = fmt::format("quant linear bits={} k={} group={} act_order={} m={}", c.bits, k, c.group,
                                           c.act_order, m);
      expect_close(y, gy, what);
      Tensor gf = gpu_->alloc(DType::F32, {m, n1 + n2});
      gpu_->linear(gx, gl, gf);
      expect_close(y, gf, what + " to F32", dt_ == DType::F32 ? 0 : 3e-3);
      // Rows independent of the batch (graphs pad decode batches to powers of two): 1-8 rows take the
      // decode kernel, 9-64 the batch kernel.
      if ((m == 8 || m == 64) && dt_ != DType::F32) {
        const Tensor all_h = to_host(gf);
        for (int64_t sub : m == 8 ? std::vector<int64_t>{1, 2, 5} : std::vector<int64_t>{9, 17, 33}) {
          Tensor part = gpu_->alloc(DType::F32, {sub, n1 + n2});
          gpu_->linear(gx.rows_view(0, sub), gl, part);
          const Tensor part_h = to_host(part);
          for (int64_t r = 0; r < sub; ++r)
            for (int64_t col = 0; col < n1 + n2; ++col)
              ASSERT_EQ(part_h.row<float>(r)[col], all_h.row<float>(r)[col]) << what << " sub " << sub;
        }
      }
    }
  }
}

// linear_silu_mul: for 1-8 rows one kernel (the GEMV, or the int4 / int8 decode kernel, which pair
// each gate column with its up column) that must give the bits of linear + silu_mul; more rows, the
// two ops. Bias on both halves, an intermediate size that is not a multiple of a block's columns,
// act-order codes (gathered activations), int4 groups of 128 (scaled chunk sums), and the CPU's
// result within tolerance.
TEST_P(BackendOps, LinearSiluMulIsLinearThenSiluMul) {
  const int64_t k = 256, inter = 203;
  Tensor w = random({2 * inter, k}, -0.2f, 0.2f), b = random({2 * inter});
  std::vector<int32_t> g_idx(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) g_idx[size_t(i)] = int32_t(i / 64);
  std::shuffle(g_idx.begin(), g_idx.end(), rng_);
  struct Layer {
    std::string name;
    Linear cpu, gpu;
  };
  std::vector<Layer> layers;
  layers.push_back({"dense", Linear{{LinearPart{w, b}}, k, 2 * inter},
                    gpu_->prepare_linear(Linear{{LinearPart{to_gpu(w), to_gpu_f32(b)}}, k, 2 * inter})});
  for (const int bits : {4, 8}) {
    const QuantWeight gate = random_quant(bits, inter, k, 64, g_idx), up = random_quant(bits, inter, k, 64, g_idx);
    layers.push_back({fmt::format("int{} act-order", bits),
                      Linear{{LinearPart{{}, {}, gate}, LinearPart{{}, {}, up}}, k, 2 * inter},
                      gpu_->prepare_linear(Linear{{LinearPart{{}, {}, gate}, LinearPart{{}, {}, up}}, k, 2 * inter})});
  }
  {  // groups of 128 in order: every chunk in one group (the scale applied to the chunk's sums)
    std::vector<int32_t> in_order(static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ++i) in_order[size_t(i)] = int32_t(i / 128);
    const QuantWeight gate = random_quant(4, inter, k, 128, in_order), up = random_quant(4, inter, k, 128, in_order);
    layers.push_back({"int4 group 128", Linear{{LinearPart{{}, {}, gate}, LinearPart{{}, {}, up}}, k, 2 * inter},
                      gpu_->prepare_linear(Linear{{LinearPart{{}, {}, gate}, LinearPart{{}, {}, up}}, k, 2 * inter})});
  }
  for (const Layer& l : layers) {
    for (int64_t m : {1, 2, 5, 8, 9}) {
      const std::string what = fmt::format("{} m={}", l.name, m);
      Tensor x = random({m, k});
      Tensor gu = host_tensor(DType::F32, {m, 2 * inter}), act = host_tensor(DType::F32, {m, inter});
      cpu_->linear(x, l.cpu, gu);
      cpu_->silu_mul(gu, act);
      Tensor gx = to_gpu(x);
      Tensor two_gu = poisoned({m, 2 * inter}), two = poisoned({m, inter});
      gpu_->linear(gx, l.gpu, two_gu);
      gpu_->silu_mul(two_gu, two);
      Tensor one_gu = poisoned({m, 2 * inter}), one = poisoned({m, inter});
      gpu_->linear_silu_mul(gx, l.gpu, one_gu, one);
      expect_close(act, one, what);
      const Tensor a = to_host(two), c = to_host(one);
      for (int64_t r = 0; r < m; ++r)
        for (int64_t col = 0; col < inter; ++col)
          ASSERT_EQ(a.row<float>(r)[col], c.row<float>(r)[col]) << what << " row " << r << " col " << col;
    }
  }
}

// A row's result does not depend on the rows beside it (decode batches, padded graph batches).
TEST_P(BackendOps, GemvRowsAreIndependentOfBatchSize) {
  const int64_t k = 3584, n = 200;
  Tensor xw = random({8, k}), w = random({n, k}, -0.1f, 0.1f);
  Linear gl = gpu_->prepare_linear(Linear{{LinearPart{to_gpu(w), {}}}, k, n});
  Tensor gx = to_gpu(xw);
  Tensor all = gpu_->alloc(DType::F32, {8, n});
  gpu_->linear(gx, gl, all);
  const Tensor all_h = to_host(all);
  for (int64_t m : {1, 2, 3, 4, 7}) {
    Tensor part = gpu_->alloc(DType::F32, {m, n});
    gpu_->linear(gx.rows_view(0, m), gl, part);
    const Tensor part_h = to_host(part);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < n; ++c)
        ASSERT_EQ(part_h.row<float>(r)[c], all_h.row<float>(r)[c]) << "m=" << m << " row " << r << " col " << c;
  }
}

TEST_P(BackendOps, StoreKvSkipsPaddingSlots) {
  const int64_t row = 64;
  const std::vector<int64_t> shape{4, 16, 2, 32};
  Tensor k = random({3, row}), v = random({3, row});
  std::vector<int32_t> slots = {5, -1, 17};
  KvLayer cc{host_tensor(DType::F32, shape), host_tensor(DType::F32, shape)};
  std::fill(cc.k.ptr<float>(), cc.k.ptr<float>() + cc.k.numel(), 0.0f);
  std::fill(cc.v.ptr<float>(), cc.v.ptr<float>() + cc.v.numel(), 0.0f);
  KvLayer gc{gpu_->alloc(dt_, shape), gpu_->alloc(dt_, shape)};
  cpu_->store_kv(k, v, make_view(slots.data(), DType::I32, {3}), cc);
  gpu_->store_kv(to_gpu(k), to_gpu(v), to_gpu_i32(slots), gc);
  gpu_->synchronize();  // no error for -1
  const std::vector<int64_t> flat{64, row};
  expect_close(make_view(cc.k.data, DType::F32, flat), make_view(gc.k.data, dt_, flat, Device::CUDA), "store_kv k", 1e-7);
  expect_close(make_view(cc.v.data, DType::F32, flat), make_view(gc.v.data, dt_, flat, Device::CUDA), "store_kv v", 1e-7);
}

// Norm folding (Backend::linear_add_prescale then linear_rms_scaled; BF16 int4 decode batches on
// CUDA): against linear, add_rms_norm, then linear / linear_silu_mul on the CPU, for consumers whose
// chunks lie in one group (groups of 128: chunk sums scaled) or not (480 columns, groups of 32), one
// with a bias; the residual updated as add_rms_norm updates it; rows
// independent of the batch (graphs pad decode batches to powers of two). Other dtypes: not folded.
TEST_P(BackendOps, NormFoldIsAddRmsNormThenLinear) {
  const int64_t kp = 256, nc = 200, inter = 120;
  const float eps = 1e-6f;
  for (const int64_t hidden : {int64_t(512), int64_t(480)}) {
    const int64_t group = hidden % 128 == 0 ? 128 : 32;
    auto quant = [&](int64_t n, int64_t k, int64_t g) {
      std::vector<int32_t> g_idx(static_cast<size_t>(k));
      for (int64_t i = 0; i < k; ++i) g_idx[size_t(i)] = int32_t(i / g);
      return random_quant(4, n, k, g, g_idx);
    };
    const QuantWeight qp = quant(hidden, kp, 128), qc = quant(nc, hidden, group), qg = quant(2 * inter, hidden, group);
    const Tensor bc = random({nc}), nw = random({hidden}, 0.5f, 1.5f);
    const Linear cp{{LinearPart{{}, {}, qp}}, kp, hidden}, cc{{LinearPart{{}, bc, qc}}, hidden, nc},
        cg{{LinearPart{{}, {}, qg}}, hidden, 2 * inter};
    const Linear gp = gpu_->prepare_linear(cp), gg = gpu_->prepare_linear(cg),
                 gc = gpu_->prepare_linear(Linear{{LinearPart{{}, to_gpu_f32(bc), qc}}, hidden, nc});
    const bool applies = gpu_->norm_fold_applies(gp, gc, 1) && gpu_->norm_fold_applies(gp, gg, 8);
    if (dt_ != DType::BF16) {
      EXPECT_FALSE(applies);
      continue;
    }
    ASSERT_TRUE(applies);
    EXPECT_FALSE(gpu_->norm_fold_applies(gp, gc, 9));
    const Tensor gnw = to_gpu_f32(nw);
    const int64_t parts = (hidden + Backend::kNormFoldCols - 1) / Backend::kNormFoldCols;
    const Tensor x8 = random({8, kp}), res8 = random({8, hidden}, -4.0f, 4.0f);
    Tensor first_c, first_g;  // the 8-row batch's outputs, on the host
    for (const int64_t m : {int64_t(8), int64_t(1), int64_t(3)}) {
      const std::string what = fmt::format("norm fold hidden={} m={}", hidden, m);
      const Tensor x = x8.rows_view(0, m), res = res8.rows_view(0, m);
      // The CPU: the product, the residual add and the norm, then the consumers.
      Tensor y = host_tensor(DType::F32, {m, hidden}), r = host_tensor(DType::F32, {m, hidden});
      Tensor h = host_tensor(DType::F32, {m, hidden}), c = host_tensor(DType::F32, {m, nc});
      Tensor gu = host_tensor(DType::F32, {m, 2 * inter}), act = host_tensor(DType::F32, {m, inter});
      cpu_->linear(x, cp, y);
      for (int64_t i = 0; i < y.numel(); ++i) y.ptr<float>()[i] = round_to(y.ptr<float>()[i], dt_);
      std::copy(res.ptr<float>(), res.ptr<float>() + res.numel(), r.ptr<float>());
      cpu_->add_rms_norm(r, y, nw, eps, h);
      for (int64_t i = 0; i < h.numel(); ++i) h.ptr<float>()[i] = round_to(h.ptr<float>()[i], dt_);
      cpu_->linear(h, cc, c);
      cpu_->linear_silu_mul(h, cg, gu, act);
      // The GPU, folded.
      Tensor gres = to_gpu(res), pre = poisoned({m, hidden}), sums = gpu_->alloc(DType::F32, {m, parts});
      Tensor gcout = poisoned({m, nc}), gact = poisoned({m, inter});
      gpu_->linear_add_prescale(to_gpu(x), gp, gres, gnw, pre, sums);
      gpu_->linear_rms_scaled(pre, sums, eps, gc, gcout, false);
      gpu_->linear_rms_scaled(pre, sums, eps, gg, gact, true);
      expect_close(r, gres, what + " residual");
      expect_close(c, gcout, what + " qkv");
      expect_close(act, gact, what + " gate_up");
      const Tensor hc = to_host(gcout), hg = to_host(gact);
      if (m == 8) {
        first_c = hc, first_g = hg;
        continue;
      }
      for (int64_t row = 0; row < m; ++row) {
        for (int64_t col = 0; col < nc; ++col)
          ASSERT_EQ(hc.row<float>(row)[col], first_c.row<float>(row)[col]) << what << " row " << row;
        for (int64_t col = 0; col < inter; ++col)
          ASSERT_EQ(hg.row<float>(row)[col], first_g.row<float>(row)[col]) << what << " row " << row;
      }
    }
  }
}

TEST_P(BackendOps, RmsNormPlainPerHeadInPlaceAndFusedAdd) {
  for (int64_t rows : {1, 5, 129}) {
    for (int64_t cols : {64, 896, 3584, 8192}) {
      Tensor x = random({rows, cols}, -3.0f, 3.0f), w = random({cols}, 0.5f, 1.5f);
      Tensor out = host_tensor(DType::F32, {rows, cols});
      cpu_->rms_norm(x, w, 1e-6f, out);
      Tensor gout = poisoned({rows, cols});
      gpu_->rms_norm(to_gpu(x), to_gpu_f32(w), 1e-6f, gout);
      expect_close(out, gout, fmt::format("rms_norm {}x{}", rows, cols));

      // residual += y; out = norm(residual)
      Tensor res = random({rows, cols}, -3.0f, 3.0f), y = random({rows, cols}, -3.0f, 3.0f);
      Tensor gres = to_gpu(res), gout2 = poisoned({rows, cols});
      cpu_->add_rms_norm(res, y, w, 1e-6f, out);
      gpu_->add_rms_norm(gres, to_gpu(y), to_gpu_f32(w), 1e-6f, gout2);
      expect_close(res, gres, "add_rms_norm residual");
      expect_close(out, gout2, "add_rms_norm out");
    }
  }
  // Qwen3's per-head q norm: groups of head_dim, in place on a column view.
  for (int64_t hd : {64, 128}) {
    Tensor qkv = random({9, 8 * hd + 2 * 2 * hd}, -2.0f, 2.0f), w = random({hd}, 0.5f, 1.5f);
    Tensor gqkv = to_gpu(qkv);
    Tensor q = qkv.cols_view(0, 8 * hd), gq = gqkv.cols_view(0, 8 * hd);
    cpu_->rms_norm(q, w, 1e-6f, q);
    gpu_->rms_norm(gq, to_gpu_f32(w), 1e-6f, gq);
    expect_close(qkv, gqkv, fmt::format("per-head rms_norm hd={}", hd));
  }
}

// cos / sin tables [T, half] for positions t * step + offset (base 10000).
std::pair<Tensor, Tensor> rope_tables(int64_t T, int half, int step, int offset) {
  Tensor cos = host_tensor(DType::F32, {T, half}), sin = host_tensor(DType::F32, {T, half});
  for (int64_t t = 0; t < T; ++t)
    for (int i = 0; i < half; ++i) {
      const float a = float(t * step + offset) * std::pow(10000.0f, -float(i) / float(half));
      cos.row<float>(t)[i] = std::cos(a);
      sin.row<float>(t)[i] = std::sin(a);
    }
  return {cos, sin};
}

TEST_P(BackendOps, RopeFullAndPartial) {
  for (int hd : {32, 64, 128}) {
    for (int half : {hd / 2, hd / 4}) {
      const int64_t T = 13, heads = 6;
      Tensor xw = random({T, heads * hd + 40}, -2.0f, 2.0f);
      const auto [cos, sin] = rope_tables(T, half, 7, 3);
      Tensor gxw = to_gpu(xw);
      Tensor x = xw.cols_view(8, heads * hd), gx = gxw.cols_view(8, heads * hd);
      cpu_->rope(x, cos, sin, hd);
      gpu_->rope(gx, to_gpu_f32(cos), to_gpu_f32(sin), hd);
      expect_close(xw, gxw, fmt::format("rope hd={} half={}", hd, half));
    }
  }
}

TEST_P(BackendOps, RopeStoreKvIsRopeThenStoreKv) {
  // The fused op against the CPU backend's rope + store_kv (Backend's default): q's and k's heads
  // rotated in place in a fused qkv buffer, k (rotated) and v stored, a padding slot skipped;
  // full and partial rotary.
  for (int hd : {64, 128}) {
    for (int half : {hd / 2, hd / 4}) {
      const int64_t T = 13, qh = 6, kvh = 2;
      const int64_t qk_cols = (qh + kvh) * hd, kv = kvh * hd;
      Tensor w = random({T, qk_cols + kv + 24}, -2.0f, 2.0f);  // [pad 8 | q k | v | pad 16]
      const auto [cos, sin] = rope_tables(T, half, 5, 1);
      std::vector<int32_t> slots(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) slots[size_t(t)] = int32_t(t * 3 + 1);
      slots[4] = -1;
      const std::vector<int64_t> shape{4, 16, kvh, hd};
      KvLayer cc{host_tensor(DType::F32, shape), host_tensor(DType::F32, shape)};
      std::fill(cc.k.ptr<float>(), cc.k.ptr<float>() + cc.k.numel(), 0.0f);
      std::fill(cc.v.ptr<float>(), cc.v.ptr<float>() + cc.v.numel(), 0.0f);
      KvLayer gc{to_gpu(cc.k), to_gpu(cc.v)};
      Tensor gw = to_gpu(w);
      Tensor qk = w.cols_view(8, qk_cols), v = w.cols_view(8 + qk_cols, kv);
      Tensor gqk = gw.cols_view(8, qk_cols), gv = gw.cols_view(8 + qk_cols, kv);
      cpu_->rope_store_kv(qk, cos, sin, hd, v, make_view(slots.data(), DType::I32, {T}), cc);
      gpu_->rope_store_kv(gqk, to_gpu_f32(cos), to_gpu_f32(sin), hd, gv, to_gpu_i32(slots), gc);
      const std::string name = fmt::format("rope_store_kv hd={} half={}", hd, half);
      expect_close(w, gw, name + " qkv");
      const std::vector<int64_t> flat{64, kv};
      expect_close(make_view(cc.k.data, DType::F32, flat), make_view(gc.k.data, dt_, flat, Device::CUDA), name + " k");
      expect_close(make_view(cc.v.data, DType::F32, flat), make_view(gc.v.data, dt_, flat, Device::CUDA), name + " v");
    }
  }
}

TEST_P(BackendOps, EmbeddingGatherSiluMulAdd) {
  const int64_t V = 1000, H = 320, T = 37;
  Tensor table = random({V, H});
  std::vector<int32_t> ids(T);
  for (auto& id : ids) id = int32_t(rng_() % V);
  Tensor out = host_tensor(DType::F32, {T, H});
  cpu_->embedding(make_view(ids.data(), DType::I32, {T}), table, out);
  Tensor gout = poisoned({T, H});
  gpu_->embedding(to_gpu_i32(ids), to_gpu(table), gout);
  expect_close(out, gout, "embedding");

  std::vector<int32_t> rows = {36, 0, 5, 5, 17};
  Tensor g = host_tensor(DType::F32, {5, H});
  cpu_->gather_rows(out, make_view(rows.data(), DType::I32, {5}), g);
  Tensor gg = poisoned({5, H});
  gpu_->gather_rows(gout, to_gpu_i32(rows), gg);
  expect_close(g, gg, "gather_rows");

  Tensor gu = random({T, 2 * H}, -4.0f, 4.0f);
  Tensor act = host_tensor(DType::F32, {T, H});
  cpu_->silu_mul(gu, act);
  Tensor gact = poisoned({T, H});
  gpu_->silu_mul(to_gpu(gu), gact);
  expect_close(act, gact, "silu_mul");

  Tensor a = random({T, H}), b = random({T, H});
  Tensor ga = to_gpu(a);
  cpu_->add(a, b);
  gpu_->add(ga, to_gpu(b));
  expect_close(a, ga, "add");
}

TEST_P(BackendOps, BadTokenIdIsAnErrorNotAWrongAnswer) {
  Tensor table = to_gpu(random({10, 64}));
  std::vector<int32_t> ids = {1, 10};
  Tensor out = poisoned({2, 64});
  gpu_->embedding(to_gpu_i32(ids), table, out);
  EXPECT_THAT([&] { gpu_->synchronize(); }, ::testing::ThrowsMessage<Error>(::testing::HasSubstr("token id 10")));
  gpu_->synchronize();  // the error was reported once and cleared
}

// The host sampler's rule (sample/sampler.h) as probabilities: candidates most likely first (ties:
// lower id), top-k, weights at the temperature, min-p after the total, then the top-p prefix of
// that total. Token i's probability (0: it cannot be drawn), and whether float rounding may put it
// on either side of a min-p or top-p boundary (the device sums in float, the host in double).
struct Distribution {
  std::vector<double> p;
  std::vector<char> borderline;
};
Distribution sample_distribution(const float* l, int64_t n, const SampleRow& r) {
  std::vector<int> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return l[a] > l[b]; });
  if (r.top_k > 0 && r.top_k < n) idx.resize(size_t(r.top_k));
  const double mx = l[idx[0]];
  std::vector<double> w(size_t(n), 0.0);
  Distribution d{std::vector<double>(size_t(n), 0.0), std::vector<char>(size_t(n), 0)};
  double total = 0.0;
  for (int i : idx) total += (w[size_t(i)] = std::exp((double(l[i]) - mx) / r.temperature));
  std::vector<int> keep;
  for (int i : idx) {
    if (std::abs(w[size_t(i)] - r.min_p) < 1e-5) d.borderline[size_t(i)] = 1;
    if (i == idx[0] || w[size_t(i)] >= r.min_p) keep.push_back(i);
  }
  double mass = 0.0;
  size_t cut = 0;
  while (cut < keep.size()) {
    const double before = mass;
    mass += w[size_t(keep[cut])] / total;
    if (r.top_p < 1.0f && std::min(std::abs(before - r.top_p), std::abs(mass - r.top_p)) < 1e-4)
      d.borderline[size_t(keep[cut])] = 1;
    ++cut;
    if (r.top_p < 1.0f && mass >= r.top_p) break;
  }
  if (cut < keep.size() && d.borderline[size_t(keep[cut - 1])]) d.borderline[size_t(keep[cut])] = 1;
  for (size_t j = 0; j < cut; ++j) d.p[size_t(keep[j])] = w[size_t(keep[j])] / total / mass;
  return d;
}

TEST_P(BackendOps, SampleGreedyIsTheFirstMaximum) {
  // Several tiles of the kernel; rows 16-byte aligned (vector loads) or not (odd vocabulary).
  for (const int64_t V : {int64_t(50000), int64_t(50003)}) {
    Tensor logits = random({6, V}, -8.0f, 8.0f);
    for (int64_t r = 0; r < 6; ++r) {  // ties at the maximum: the lowest id wins
      float* row = logits.row<float>(r);
      row[V - 1 - r] = row[1000 + r] = row[30000 + 7 * r] = 9.0f;
    }
    std::vector<SampleRow> rows;
    for (int32_t r = 0; r < 6; ++r) rows.push_back(SampleRow{5 - r, r % 2 == 0 ? 0.0f : 0.7f, r % 2 == 0 ? 0 : 1});
    std::vector<int32_t> ids(rows.size(), -1);
    ASSERT_TRUE(gpu_->sample_to_host(to_gpu_f32(logits), rows, ids.data()));
    for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(ids[i], 1000 + rows[i].row) << "row " << rows[i].row << " V " << V;
  }
  // Few rows of a large vocabulary (each row in many blocks): a tie across them, and rows with no
  // finite maximum (all -inf, all NaN: token 0; NaN but one number: that number's).
  const int64_t V = 152064;
  Tensor logits = random({4, V}, -8.0f, 8.0f);
  logits.row<float>(0)[151999] = logits.row<float>(0)[151000] = logits.row<float>(0)[152063] = 9.0f;
  std::fill_n(logits.row<float>(1), V, -INFINITY);
  std::fill_n(logits.row<float>(2), V, std::nanf(""));
  logits.row<float>(2)[70001] = -1.0f;
  std::fill_n(logits.row<float>(3), V, std::nanf(""));
  const Tensor glogits = to_gpu_f32(logits);
  for (int n = 1; n <= 4; ++n) {
    std::vector<SampleRow> rows;
    for (int32_t r = 0; r < n; ++r) rows.push_back(SampleRow{r, 0.0f, 0});
    std::vector<int32_t> ids(rows.size(), -1);
    ASSERT_TRUE(gpu_->sample_to_host(glogits, rows, ids.data()));
    const int32_t want[4] = {151000, 0, 70001, 0};
    for (int r = 0; r < n; ++r) EXPECT_EQ(ids[size_t(r)], want[r]) << "row " << r << " of " << n;
  }
}

// A vocabulary-parallel rank's greedy candidates: CPU and GPU give the same (value, column + offset)
// for rows of a strided view (a rank's real vocabulary columns), ties, -inf and NaN rows.
TEST_P(BackendOps, ArgmaxRowsOfAStridedView) {
  const int64_t V = 50003, n = 49999;
  Tensor logits = random({5, V}, -8.0f, 8.0f);
  float* row = logits.row<float>(0);
  row[n - 1] = row[777] = 9.0f;                                    // a tie: the first
  logits.row<float>(1)[n] = 50.0f;                                 // past the view: not seen
  std::fill_n(logits.row<float>(2), V, -INFINITY);                 // every column -inf: the first
  std::fill_n(logits.row<float>(3), V, std::nanf(""));             // no maximum at all
  logits.row<float>(3)[n - 2] = -1.0f;                             // but one number
  std::fill_n(logits.row<float>(4), V, std::nanf(""));
  Tensor want = host_tensor(DType::F32, {5, 2});
  cpu_->argmax_rows(logits.cols_view(0, n), 3000, want);
  Tensor gout = gpu_->alloc(DType::F32, {5, 2});
  const Tensor glogits = to_gpu_f32(logits);
  gpu_->argmax_rows(glogits.cols_view(0, n), 3000, gout);
  const Tensor got = to_host(gout);
  const float expect[5][2] = {{9.0f, 3777}, {0, 0}, {-INFINITY, 3000}, {-1.0f, float(3000 + n - 2)}, {-INFINITY, 3000}};
  for (int64_t r = 0; r < 5; ++r) {
    EXPECT_EQ(got.row<float>(r)[0], want.row<float>(r)[0]) << "row " << r;
    EXPECT_EQ(got.row<float>(r)[1], want.row<float>(r)[1]) << "row " << r;
    if (r != 1) {
      EXPECT_EQ(want.row<float>(r)[0], expect[r][0]) << "row " << r;
      EXPECT_EQ(want.row<float>(r)[1], expect[r][1]) << "row " << r;
    }
  }
  EXPECT_LT(want.row<float>(1)[0], 50.0f);
}

// Tensor-parallel greedy candidates: the device picks greedy_token's token per row (ties to the
// lower rank, a -inf best loses; argmax_rows never gives NaN), and fetch_draws brings back exactly
// the queued copy.
TEST_P(BackendOps, PickGreedyIsGreedyToken) {
  const int ranks = 3;
  Tensor cand = random({300, 2 * ranks}, -4.0f, 4.0f);
  for (int64_t r = 0; r < cand.rows(); ++r)
    for (int p = 0; p < ranks; ++p) cand.row<float>(r)[2 * p + 1] = float(1000 * p + r);
  cand.row<float>(1)[0] = cand.row<float>(1)[2] = 9.0f;  // a tie for the maximum: rank 0's
  cand.row<float>(2)[0] = -INFINITY;
  Tensor gdrawn = gpu_->alloc(DType::I32, {cand.rows()});
  gpu_->pick_greedy(to_gpu_f32(cand), gdrawn);
  gpu_->queue_fetch_draws(gdrawn, int(cand.rows()));
  std::vector<int32_t> got(size_t(cand.rows()));
  gpu_->fetch_draws(got.data(), int(got.size()));
  for (int64_t r = 0; r < cand.rows(); ++r)
    EXPECT_EQ(got[size_t(r)], greedy_token(cand.row<float>(r), ranks)) << "row " << r;
  EXPECT_EQ(got[1], 1);     // rank 0's id of row 1
  EXPECT_GE(got[2], 1000);  // rank 0's -inf loses
}

// Sweeping the draw's uniform number over a fine grid makes the device's draws an exact inverse-CDF
// picture of its distribution: each token's count must be its probability times the grid size
// within 2, and tokens outside the top-k/min-p/top-p set must never come out.
TEST_P(BackendOps, SampleDrawsTheHostDistribution) {
  struct Case {
    int64_t vocab;
    SampleRow row;
    float step;  // logits on a grid of this step: many ties at every boundary
  };
  const std::vector<Case> cases = {
      {1000, {0, 1.0f, 0, 1.0f, 0.0f}, 0.0f},      {1000, {0, 0.7f, 10, 1.0f, 0.0f}, 0.25f},
      {1000, {0, 1.3f, 0, 0.37f, 0.0f}, 0.25f},    {1000, {0, 1.0f, 0, 1.0f, 0.08f}, 0.0f},
      {1000, {0, 0.9f, 50, 0.61f, 0.02f}, 0.5f},   {20000, {0, 1.0f, 0, 0.83f, 0.0f}, 0.0f},
      {20000, {0, 0.5f, 300, 0.9f, 0.0f}, 0.125f}, {3, {0, 2.0f, 0, 1.0f, 0.0f}, 0.0f},
  };
  const int grid = 4000;
  for (const Case& c : cases) {
    const std::string what = fmt::format("vocab {} T {} top_k {} top_p {} min_p {} grid {}", c.vocab,
                                         c.row.temperature, c.row.top_k, c.row.top_p, c.row.min_p, c.step);
    Tensor logits = random({1, c.vocab}, -4.0f, 4.0f);
    float* l = logits.ptr<float>();
    if (c.step > 0)
      for (int64_t i = 0; i < c.vocab; ++i) l[i] = std::round(l[i] / c.step) * c.step;
    for (int64_t i = 0; i < std::min<int64_t>(c.vocab, 40); ++i) l[i] += 3.0f;  // a few likely tokens
    const Distribution d = sample_distribution(l, c.vocab, c.row);
    std::vector<SampleRow> rows(grid, c.row);
    for (int j = 0; j < grid; ++j) rows[size_t(j)].u = (float(j) + 0.5f) / float(grid);
    std::vector<int32_t> ids(rows.size(), -1);
    // Rows all read logits row 0: more rows than one launch holds (kSampleChunk) as well.
    ASSERT_TRUE(gpu_->sample_to_host(to_gpu_f32(logits), rows, ids.data())) << what;
    std::vector<int> count(size_t(c.vocab), 0);
    for (int32_t id : ids) {
      ASSERT_TRUE(id >= 0 && id < c.vocab) << what << ": id " << id;
      count[size_t(id)]++;
    }
    int outside = 0, off = 0;
    for (int64_t i = 0; i < c.vocab; ++i) {
      if (d.borderline[size_t(i)]) continue;
      if (d.p[size_t(i)] == 0.0) outside += count[size_t(i)];
      else if (std::abs(count[size_t(i)] - d.p[size_t(i)] * grid) > 2.0) ++off;
    }
    EXPECT_EQ(outside, 0) << what << ": draws of tokens the host sampler excludes";
    EXPECT_EQ(off, 0) << what << ": tokens drawn more or less often than their probability";
  }
}

// One attention scenario: sequences (context length, new tokens), model geometry, window.
struct AttnCase {
  std::vector<std::pair<int, int>> seqs;
  int heads, kv_heads, head_dim, window;
  int max_ctx_len = 0;  // > 0: AttentionBatch.max_ctx_len overstated (as a decode graph sizes it)
};

class BackendAttention : public BackendOps {
 protected:
  void run(const AttnCase& ac) {
    const int bs = 16, S = int(ac.seqs.size());
    const std::string name = fmt::format("attention heads {}/{} hd {} window {} seqs {}", ac.heads, ac.kv_heads,
                                         ac.head_dim, ac.window, S);
    // Blocks: every sequence's table drawn from a shuffled pool (non-contiguous, any order).
    int max_blocks = 0, total_blocks = 0, max_q = 0, max_ctx = 0;
    for (auto [ctx, q] : ac.seqs) {
      max_blocks = std::max(max_blocks, (ctx + bs - 1) / bs);
      total_blocks += (ctx + bs - 1) / bs;
      max_q = std::max(max_q, q);
      max_ctx = std::max(max_ctx, ctx);
    }
    const int num_blocks = total_blocks + 7;
    std::vector<int32_t> pool(static_cast<size_t>(num_blocks));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng_);
    std::vector<int32_t> table(size_t(S * max_blocks), 0), q_start{0}, ctx_len, all_slots, new_slots;
    size_t next = 0;
    for (int s = 0; s < S; ++s) {
      const auto [ctx, q] = ac.seqs[size_t(s)];
      for (int b = 0; b < (ctx + bs - 1) / bs; ++b) table[size_t(s * max_blocks + b)] = pool[next++];
      for (int p = 0; p < ctx; ++p) {
        const int32_t slot = table[size_t(s * max_blocks + p / bs)] * bs + p % bs;
        all_slots.push_back(slot);
        if (p >= ctx - q) new_slots.push_back(slot);
      }
      q_start.push_back(q_start.back() + q);
      ctx_len.push_back(ctx);
    }
    const int64_t kv = int64_t(ac.kv_heads) * ac.head_dim, qd = int64_t(ac.heads) * ac.head_dim;
    const int64_t n_all = int64_t(all_slots.size()), T = q_start.back();

    // Every position's K/V through store_kv (from column views of a fused qkv, as the model does).
    Tensor kvw = random({n_all, 2 * kv + 8}, -2.0f, 2.0f);
    Tensor k = kvw.cols_view(0, kv), v = kvw.cols_view(kv + 8, kv);
    const std::vector<int64_t> shape{num_blocks, bs, ac.kv_heads, ac.head_dim};
    KvLayer ccache{host_tensor(DType::F32, shape), host_tensor(DType::F32, shape)};
    KvLayer gcache{gpu_->alloc(dt_, shape), gpu_->alloc(dt_, shape)};
    cpu_->store_kv(k, v, make_view(all_slots.data(), DType::I32, {n_all}), ccache);
    Tensor gkvw = to_gpu(kvw);
    gpu_->store_kv(gkvw.cols_view(0, kv), gkvw.cols_view(kv + 8, kv), to_gpu_i32(all_slots), gcache);
    const std::vector<int64_t> flat{int64_t(num_blocks) * bs, kv};
    expect_close(make_view(ccache.k.data, DType::F32, flat), make_view(gcache.k.data, dt_, flat, Device::CUDA),
                 name + " store_kv k", 1e-7);
    expect_close(make_view(ccache.v.data, DType::F32, flat), make_view(gcache.v.data, dt_, flat, Device::CUDA),
                 name + " store_kv v", 1e-7);

    AttentionBatch cb;
    cb.num_seqs = S;
    cb.max_blocks_per_seq = max_blocks;
    cb.block_size = bs;
    cb.sliding_window = ac.window;
    cb.scale = 1.0f / std::sqrt(float(ac.head_dim));
    cb.max_q_len = max_q;
    cb.max_ctx_len = std::max(max_ctx, ac.max_ctx_len);
    cb.single_seqs = 0;
    for (int s = 0; s < S; ++s) {  // the range and counts of sequences by new tokens, as the decoder sets them
      const int q = q_start[size_t(s) + 1] - q_start[size_t(s)];
      cb.single_seqs += q == 1;
      if (q > 1) {
        if (cb.multi_end == 0) cb.multi_first = s;
        cb.multi_end = s + 1;
        cb.min_multi_q = cb.min_multi_q == 0 ? q : std::min(cb.min_multi_q, q);
      }
    }
    AttentionBatch gb = cb;
    cb.q_start = make_view(q_start.data(), DType::I32, {S + 1});
    cb.ctx_len = make_view(ctx_len.data(), DType::I32, {S});
    cb.block_table = make_view(table.data(), DType::I32, {S, max_blocks});
    gb.q_start = to_gpu_i32(q_start);
    gb.ctx_len = to_gpu_i32(ctx_len);
    gb.block_table = gpu_->upload(make_view(table.data(), DType::I32, {S, max_blocks}));

    Tensor qw = random({T, qd + 2 * kv}, -2.0f, 2.0f);  // q is a column view of the fused qkv
    Tensor out = host_tensor(DType::F32, {T, qd});
    cpu_->attention(qw.cols_view(0, qd), ccache, cb, out);
    Tensor gout = poisoned({T, qd});
    gpu_->attention(to_gpu(qw).cols_view(0, qd), gcache, gb, gout);
    expect_close(out, gout, name);
  }
};

TEST_P(BackendAttention, PrefillDecodeAndMixedBatches) {
  // Mixed: a fresh prompt, a decode, a chunked-prefill continuation, a long decode, a 1-token prompt.
  const std::vector<std::pair<int, int>> mixed = {{37, 37}, {300, 1}, {530, 17}, {2000, 1}, {1, 1}};
  for (auto [heads, kv_heads, hd] : std::vector<std::tuple<int, int, int>>{
           {8, 2, 128}, {14, 2, 64}, {4, 4, 128}, {4, 1, 64}, {4, 2, 16}, {4, 2, 32}, {28, 4, 128}, {2, 1, 256}}) {
    run({mixed, heads, kv_heads, hd, 0});
  }
}

TEST_P(BackendAttention, LongPrefillsOnTensorCores) {
  // 16-bit prefills of head_dim 64/128 with >= 16 new tokens run on tensor cores, beside decodes and
  // short chunks on the CUDA-core kernel: partial 64-token tiles, a cached prefix before the chunk,
  // GQA and MHA, sliding windows.
  const std::vector<std::pair<int, int>> seqs = {{700, 700}, {1000, 300}, {300, 1}, {95, 16}, {20, 15}, {129, 129}};
  run({seqs, 28, 4, 128, 0});
  run({seqs, 8, 8, 64, 0});
  run({{{600, 600}, {900, 77}}, 8, 2, 128, 100});
  run({{{64, 64}, {65, 65}, {16, 16}}, 4, 1, 64, 0});
}

TEST_P(BackendAttention, LongDecodesSplitAcrossBlocks) {
  // Few sequences with long contexts: the keys are split over several blocks and merged.
  run({{{3000, 1}}, 28, 4, 128, 0});
  run({{{4097, 1}, {33, 1}}, 8, 8, 64, 0});
  run({{{1500, 3}}, 32, 8, 128, 0});
  run({{{3000, 1}, {40, 2}, {900, 1}}, 28, 4, 128, 0});  // mixed: decodes on tensor cores, a 2-token chunk
}

TEST_P(BackendAttention, OverstatedMaxContextSplitsMore) {
  // A decode graph sizes attention for the widest block table it serves: more splits than the
  // contexts need, many of them empty.
  run({{{1, 1}}, 28, 4, 128, 0, 4096});
  run({{{100, 1}, {7, 1}, {300, 1}}, 28, 4, 128, 0, 8192});
  run({{{1100, 1}}, 28, 4, 128, 0, 2048});
  run({{{50, 1}, {3, 1}}, 8, 2, 64, 16, 4096});
  run({{{100, 1}, {7, 1}}, 28, 4, 128, 0, 1024});  // 8 splits, most of the second sequence's empty
}

TEST_P(BackendAttention, ManyDecodesAndSlidingWindow) {
  std::vector<std::pair<int, int>> many;
  for (int i = 0; i < 100; ++i) many.push_back({1 + int(rng_() % 700), 1});
  run({many, 14, 2, 64, 0});
  run({{{37, 37}, {300, 1}, {530, 17}, {2000, 1}}, 8, 2, 128, 64});
  run({{{20, 20}, {9, 2}}, 4, 2, 16, 6});  // the Mistral fixture's window
  run({{{3000, 1}}, 8, 2, 128, 100});       // windowed and split
}

TEST_P(BackendAttention, GqaDecodeSteps) {
  // Steps of decodes only, 2..16 query heads per kv head (unless APUS_CUDA_FLASH_DECODE=0, 16-bit
  // head_dim 64/128 ones run on tensor cores, flash_decode.cu): one sequence split over blocks, a
  // batch too large to split, windows, group sizes that leave most of the 16-row tile empty.
  std::vector<std::pair<int, int>> many;
  for (int i = 0; i < 300; ++i) many.push_back({1 + int(rng_() % 1500), 1});
  run({many, 28, 4, 128, 0});
  run({{{1024, 1}}, 28, 4, 128, 0});
  run({{{512, 1}}, 28, 4, 128, 0});  // the decode benchmark's shape: 4 splits
  run({{{5000, 1}, {31, 1}, {32, 1}, {33, 1}}, 64, 8, 128, 0});
  run({{{700, 1}, {1, 1}, {64, 1}}, 32, 2, 64, 0});  // 16 per kv head (ChatGLM3's MQA)
  run({{{2500, 1}, {90, 1}}, 4, 2, 64, 300});
  run({{{129, 1}}, 16, 8, 128, 0, 8192});  // overstated context: empty splits
}

INSTANTIATE_TEST_SUITE_P(Dtypes, BackendOps, ::testing::Values(DType::BF16, DType::F16, DType::F32),
                         [](const ::testing::TestParamInfo<DType>& p) { return std::string(dtype_name(p.param)); });
INSTANTIATE_TEST_SUITE_P(Dtypes, BackendAttention, ::testing::Values(DType::BF16, DType::F16, DType::F32),
                         [](const ::testing::TestParamInfo<DType>& p) { return std::string(dtype_name(p.param)); });

}  // namespace
}  // namespace apus
