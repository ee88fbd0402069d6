// CUDA graphs for decode steps (DecoderModel::forward_graph) against the same steps run op by op:
// a prefill of several sequences, then decode steps that record a graph for the padded batch
// size, replay it, and record another when the block tables widen. Eager decode steps are padded
// to the same shape, so up to 8 sequences (our GEMV) the logits must be bit for bit those of the
// eager steps; larger batches go through cuBLAS, which is held to rounding only.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kv/kv_cache.h"
#include "model/load.h"
#include "test_util.h"
#include "core/error.h"

namespace apus {
namespace {

struct StepLogits {
  std::vector<std::vector<float>> logits;  // per step
};

// Prefill of `prompts` (one step), then `steps` decode steps of all of them.
StepLogits run_steps(DecoderModel& m, const std::vector<std::vector<int32_t>>& prompts, int steps) {
  const ModelConfig& c = m.config();
  const int bs = 16, S = int(prompts.size());
  int longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, int(p.size()));
  const int per_seq = (longest + steps + bs - 1) / bs;
  KvCache cache = KvCache::create(m.backend(), c, S * per_seq, bs);
  std::vector<int> ctx(size_t(S), 0);
  std::vector<int32_t> last(size_t(S), 0);
  StepLogits out;
  for (int step = 0; step <= steps; ++step) {
    StepBatch b;
    b.q_start.push_back(0);
    // Tables as wide as this step needs (the engine's way): they widen as contexts grow.
    int width = 1;
    for (int s = 0; s < S; ++s) {
      const int new_ctx = step == 0 ? int(prompts[size_t(s)].size()) : ctx[size_t(s)] + 1;
      width = std::max(width, (new_ctx + bs - 1) / bs);
    }
    b.max_blocks = width;
    for (int s = 0; s < S; ++s) {
      const std::vector<int32_t> toks = step == 0 ? prompts[size_t(s)] : std::vector<int32_t>{last[size_t(s)]};
      for (size_t j = 0; j < toks.size(); ++j) {
        const int pos = ctx[size_t(s)] + int(j);
        b.tokens.push_back(toks[j]);
        b.slot_mapping.push_back((s * per_seq + pos / bs) * bs + pos % bs);
      }
      ctx[size_t(s)] += int(toks.size());
      b.q_start.push_back(int32_t(b.tokens.size()));
      b.ctx_len.push_back(ctx[size_t(s)]);
      b.logit_rows.push_back(b.q_start.back() - 1);
      for (int k = 0; k < width; ++k) b.block_table.push_back(s * per_seq + std::min(k, per_seq - 1));
    }
    std::vector<float> logits;
    m.forward(b, cache, logits);
    // The next tokens are fixed (not sampled), so that a rounding difference in a larger batch
    // cannot send the two runs down different paths.
    for (int s = 0; s < S; ++s) last[size_t(s)] = int32_t((step * 7919 + s * 131 + 5) % c.vocab_size);
    out.logits.push_back(std::move(logits));
  }
  return out;
}

std::vector<std::vector<int32_t>> prompts(int n, int64_t vocab) {
  const int lens[] = {250, 37, 5, 100, 1, 64, 17, 200, 9, 3};
  std::vector<std::vector<int32_t>> p;
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> t(size_t(lens[i % 10]));
    for (size_t j = 0; j < t.size(); ++j) t[j] = int32_t((i * 7919 + int(j) * 104729) % vocab);
    p.push_back(std::move(t));
  }
  return p;
}

class DecodeGraphs : public ::testing::TestWithParam<const char*> {};

TEST_P(DecodeGraphs, ReplayEqualsEager) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU";
  test::TempDir dir;
  test::write_fixture_model(dir.path(), GetParam(), {{"max_position_embeddings", 4096}});
  auto backend = make_backend("cuda", 1);
  LoadOptions o;
  o.model_dir = dir.str();
  auto m = load_model(o, *backend);
  ASSERT_TRUE(m->use_graphs()) << "graphs are off (APUS_CUDA_GRAPHS=0 or APUS_CUDA_PROFILE set?)";
  // 20 decode steps: the 250-token prompt crosses 256 positions, so tables widen from 16 to 32
  // blocks and a second graph is recorded.
  for (int n : {1, 3, 8, 20}) {
    const auto ps = prompts(n, m->config().vocab_size);
    m->set_use_graphs(false);
    const StepLogits eager = run_steps(*m, ps, 20);
    m->set_use_graphs(true);
    const StepLogits graph = run_steps(*m, ps, 20);
    ASSERT_EQ(eager.logits.size(), graph.logits.size());
    for (size_t step = 0; step < eager.logits.size(); ++step) {
      const auto& a = eager.logits[step];
      const auto& b = graph.logits[step];
      ASSERT_EQ(a.size(), b.size());
      if (n <= 8) {
        ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
            << GetParam() << " batch " << n << " step " << step << ": graph logits differ from eager";
      } else {
        double num = 0, den = 0;
        for (size_t i = 0; i < a.size(); ++i) {
          ASSERT_TRUE(std::isfinite(b[i]));
          num += double(a[i] - b[i]) * double(a[i] - b[i]);
          den += double(a[i]) * double(a[i]);
        }
        EXPECT_LT(std::sqrt(num / std::max(den, 1e-30)), 1e-3) << GetParam() << " batch " << n << " step " << step;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DecodeGraphs,
                         ::testing::Values("llama_gqa_f32", "qwen2_tied_bf16", "mistral_window_bf16",
                                           "qwen3_qknorm_bf16", "llama_mqa_bias_bf16"));

}  // namespace
}  // namespace apus
