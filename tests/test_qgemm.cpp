// qgemm() (CPU products with GPTQ/AWQ weights) against a float64 reference computed from the
// unpacked QuantMatrix, for every kernel set this CPU supports: 4 and 8 bits, groups of 32, 64 and
// the whole row, act-order permutations, decode (GEMV) and prefill (dequantize + gemm) row counts,
// strided activations, bias, 1 or 3 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cpu/qgemm.h"
#include "core/thread_pool.h"
#include "quant/gptq_format.h"
#include "quant_test_util.h"

namespace apus {
namespace {

TEST(Qgemm, MatchesReferenceOnEveryKernelSet) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  ThreadPool one(1), three(3);
  struct Case {
    int bits;
    int64_t n, k, group;
    bool shuffle;
  };
  const Case cases[] = {{4, 16, 64, 32, false}, {4, 40, 256, 64, true}, {4, 24, 96, 96, false},
                        {8, 16, 64, 32, true},  {8, 40, 256, 128, false}, {4, 264, 128, 128, true}};
  for (const detail::QGemvKernels* kr : detail::qgemv_supported()) {
    for (const Case& c : cases) {
      const QuantMatrix qm = test::random_quant_matrix(c.n, c.k, c.bits, c.group, c.shuffle, rng);
      const QuantWeight w = make_quant_weight(qm, "w");
      std::vector<float> bias(size_t(c.n));
      for (float& b : bias) b = dist(rng);
      for (int64_t m : {1, 2, 3, 5, 8, 9, 20}) {
        const int64_t lda = c.k + 3, ldc = c.n + 5;
        std::vector<float> A(size_t(m * lda));
        for (float& a : A) a = dist(rng);
        for (bool with_bias : {false, true}) {
          for (ThreadPool* pool : {&one, &three}) {
            std::vector<float> C(size_t(m * ldc), 12345.0f);
            detail::qgemm_with(*kr, A.data(), lda, w, with_bias ? bias.data() : nullptr, C.data(), ldc, m, *pool);
            for (int64_t r = 0; r < m; ++r) {
              for (int64_t j = 0; j < c.n; ++j) {
                double want = with_bias ? bias[size_t(j)] : 0.0, mag = 0.0;
                for (int64_t i = 0; i < c.k; ++i) {
                  want += double(A[size_t(r * lda + i)]) * qm.weight(j, i);
                  mag += std::fabs(double(A[size_t(r * lda + i)]) * qm.weight(j, i));
                }
                ASSERT_NEAR(C[size_t(r * ldc + j)], want, 1e-5 * (1.0 + mag))
                    << kr->name << " bits " << c.bits << " k " << c.k << " group " << c.group << " m " << m
                    << " r " << r << " j " << j;
              }
              for (int64_t j = c.n; j < ldc; ++j) ASSERT_EQ(C[size_t(r * ldc + j)], 12345.0f) << "wrote outside C";
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace apus
