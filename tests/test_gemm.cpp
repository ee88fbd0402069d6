// gemm() against a float64 reference, for every kernel set this CPU supports, every weight dtype,
// shapes that hit all the vector and block tails, strided views, bias, and 1 or 3 threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/gemm.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace apus {
namespace {

constexpr float kSentinel = 12345.0f;  // marks C elements outside the view, which must survive

// Weights in their storage format plus the exact float value of each stored element.
struct Weights {
  DType dtype;
  std::vector<uint8_t> bytes;
  std::vector<double> values;
};

Weights make_weights(DType dtype, int64_t rows, int64_t ld, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  Weights w{dtype, std::vector<uint8_t>(size_t(rows * ld) * dtype_size(dtype)),
            std::vector<double>(size_t(rows * ld))};
  for (size_t i = 0; i < w.values.size(); ++i) {
    float f = dist(rng);
    if (dtype == DType::F32) {
      std::memcpy(&w.bytes[i * 4], &f, 4);
    } else {
      uint16_t h = dtype == DType::F16 ? f32_to_f16(f) : f32_to_bf16(f);
      if (i % 97 == 5) h = uint16_t(0x0001 + i % 0x3ff);  // a subnormal in both formats
      std::memcpy(&w.bytes[i * 2], &h, 2);
      f = dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
    w.values[i] = f;
  }
  return w;
}

std::vector<float> random_floats(size_t count, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (float& x : v) x = dist(rng);
  return v;
}

struct Case {
  int64_t m, n, k;
  int64_t lda, ldw, ldc;
  bool bias;
};

// Checks every kernel set, with 1 and 3 threads, on one problem. The bound scales with
// sum |a w| + |bias| rather than |C|: float32 accumulation in any order is accurate to a few ulps
// of that sum, while C itself may cancel to nearly zero.
void check_case(const Case& c, DType dtype, uint32_t seed) {
  // Three threads split work unevenly and outnumber the panels of small problems.
  static ThreadPool one_thread(1), three_threads(3);
  std::mt19937 rng(seed);
  const std::vector<float> A = random_floats(size_t(std::max<int64_t>(1, c.m * c.lda)), rng);
  const Weights W = make_weights(dtype, c.n, c.ldw, rng);
  const std::vector<float> bias = random_floats(size_t(c.n), rng);
  std::vector<double> ref(size_t(c.m * c.n)), bound(size_t(c.m * c.n));
  for (int64_t r = 0; r < c.m; ++r) {
    for (int64_t j = 0; j < c.n; ++j) {
      double sum = c.bias ? bias[j] : 0.0, mag = c.bias ? std::fabs(bias[j]) : 0.0;
      for (int64_t kk = 0; kk < c.k; ++kk) {
        const double p = double(A[r * c.lda + kk]) * W.values[j * c.ldw + kk];
        sum += p;
        mag += std::fabs(p);
      }
      ref[r * c.n + j] = sum;
      bound[r * c.n + j] = 1e-5 * mag + 1e-30;
    }
  }
  for (const detail::GemmKernels* kernels : detail::gemm_supported()) {
    for (int threads : {1, 3}) {
      ThreadPool& pool = threads == 1 ? one_thread : three_threads;
      std::vector<float> C(size_t(c.m * c.ldc), kSentinel);
      detail::gemm_with(*kernels, A.data(), c.lda, W.bytes.data(), dtype, c.ldw,
                        c.bias ? bias.data() : nullptr, C.data(), c.ldc, c.m, c.n, c.k, pool);
      const std::string where =
          fmt::format("{} {} threads={} m={} n={} k={} lda={} ldw={} ldc={} bias={}", kernels->name,
                      dtype_name(dtype), threads, c.m, c.n, c.k, c.lda, c.ldw, c.ldc, c.bias);
      int failures = 0;
      for (int64_t r = 0; r < c.m && failures < 5; ++r) {
        for (int64_t j = 0; j < c.ldc && failures < 5; ++j) {
          const float got = C[r * c.ldc + j];
          if (j >= c.n) {
            if (got != kSentinel) {
              ADD_FAILURE() << where << ": wrote C[" << r << ", " << j << "] outside the view";
              ++failures;
            }
            continue;
          }
          const double want = ref[r * c.n + j];
          if (!(std::fabs(got - want) <= bound[r * c.n + j])) {
            ADD_FAILURE() << where << ": C[" << r << ", " << j << "] = " << got << ", want " << want
                          << " (tolerance " << bound[r * c.n + j] << ")";
            ++failures;
          }
        }
      }
      if (failures) return;
    }
  }
}

class GemmShapes : public ::testing::TestWithParam<DType> {};

TEST_P(GemmShapes, MatchesFloat64Reference) {
  uint32_t seed = 1;
  // Every GEMV row count (1..8), then packed-path row tails and several row tiles.
  for (int64_t m : {1, 2, 3, 4, 5, 6, 7, 8, 17, 64, 200}) {
    for (int64_t n : {1, 15, 16, 17, 100, 257}) {
      for (int64_t k : {0, 1, 7, 16, 33, 300}) {
        // Contiguous without bias, and a strided view of wider matrices with bias.
        check_case({m, n, k, k, k, n, false}, GetParam(), seed++);
        check_case({m, n, k, k + 3, k + 5, n + 7, true}, GetParam(), seed++);
        if (HasFatalFailure() || HasNonfatalFailure()) return;
      }
    }
  }
}

TEST_P(GemmShapes, LongDotProducts) {
  // k = 8192 with float32 accumulation, in both the GEMV and the packed regime.
  check_case({3, 40, 8192, 8192, 8192, 40, true}, GetParam(), 7);
  check_case({20, 40, 8192, 8192, 8192, 40, true}, GetParam(), 8);
}

TEST_P(GemmShapes, ManyBlocks) {
  // More rows than one L2 block of A; more panels than threads with a partial last panel; several
  // K blocks (accumulating into C) with a partial last one.
  check_case({600, 70, 50, 50, 50, 70, true}, GetParam(), 9);
  check_case({33, 1000, 40, 41, 40, 1000, false}, GetParam(), 10);
  check_case({40, 70, 1100, 1103, 1100, 75, true}, GetParam(), 11);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GemmShapes, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const auto& p) { return std::string(dtype_name(p.param)); });

TEST(Gemm, DispatchPicksASupportedKernelSet) {
  const std::vector<const detail::GemmKernels*> supported = detail::gemm_supported();
  ASSERT_FALSE(supported.empty());
  EXPECT_STREQ(supported.front()->name, "scalar");
  bool found = false;
  for (const auto* k : supported) found = found || std::string(k->name) == gemm_isa();
  EXPECT_TRUE(found) << gemm_isa();
  if (!std::getenv("APUS_CPU_ISA")) {
    EXPECT_STREQ(gemm_isa(), supported.back()->name);
  }
}

TEST(Gemm, PublicEntryPoint) {
  // 2 x 3 times a 3 x 2 (stored as W [2, 3]) plus bias, through the dispatched kernels.
  const float A[] = {1, 2, 3, 4, 5, 6};
  const uint16_t W[] = {f32_to_bf16(1),    f32_to_bf16(0), f32_to_bf16(-1),
                        f32_to_bf16(0.5f), f32_to_bf16(2), f32_to_bf16(0)};
  const float bias[] = {10, 20};
  float C[4] = {};
  ThreadPool pool(2);
  gemm(A, 3, W, DType::BF16, 3, bias, C, 2, 2, 2, 3, pool);
  EXPECT_FLOAT_EQ(C[0], 10 + 1 - 3);
  EXPECT_FLOAT_EQ(C[1], 20 + 0.5f + 4);
  EXPECT_FLOAT_EQ(C[2], 10 + 4 - 6);
  EXPECT_FLOAT_EQ(C[3], 20 + 2 + 10);
}

TEST(Gemm, RejectsUnsupportedWeightType) {
  const float A[1] = {1};
  const int8_t W[1] = {1};
  float C[1];
  ThreadPool pool(1);
  EXPECT_THROW(gemm(A, 1, W, DType::I8, 1, nullptr, C, 1, 1, 1, 1, pool), Error);
}

}  // namespace
}  // namespace apus
