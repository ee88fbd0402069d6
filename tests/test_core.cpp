// dtype conversions, the thread pool, the block allocator and the sampler.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <set>

#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/scheduler.h"
#include "kv/block_manager.h"
#include "sample/sampler.h"

namespace apus {
namespace {

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between two bf16 values: ties go to the even mantissa (down).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, F16RoundTripsAndRounds) {
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f, 0.1f}) {
    float back = f16_to_f32(f32_to_f16(v));
    EXPECT_NEAR(back, v, std::fabs(v) * 1e-3 + 1e-8) << v;
  }
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);        // rounds up to infinity
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie to even
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);         // half the smallest subnormal: tie to 0
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);         // 1.5 units: tie to even (2)
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
}

TEST(ThreadPool, CoversRangeOnceAndPropagatesErrors) {
  ThreadPool pool(3);
  for (int64_t n : {1, 2, 7, 1000}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    pool.parallel_for(n, 4, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
    });
    for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  }
  EXPECT_THROW(pool.run([](int t, int) {
    if (t == 1) throw Error("boom");
  }), Error);
  std::atomic<int> ran{0};
  pool.run([&](int, int) { ran++; });  // still usable after an error
  EXPECT_EQ(ran.load(), 3);
}

TEST(BlockManager, RefCountsPrefixCacheAndLru) {
  BlockManager m(4, 2);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(m.allocate(2, a));
  const std::vector<int32_t> toks{1, 2, 3, 4, 5};
  const uint64_t h0 = BlockManager::hash_block(0, std::span(toks).subspan(0, 2), 0);
  const uint64_t h1 = BlockManager::hash_block(h0, std::span(toks).subspan(2, 2), 0);
  m.register_full(a[0], h0);
  m.register_full(a[1], h1);
  std::vector<uint64_t> hashes;
  EXPECT_EQ(m.match_prefix(toks, 0, 10, b, hashes), 2);  // shared while both hold them
  EXPECT_EQ(m.ref_count(a[0]), 2);
  std::vector<int32_t> c;
  std::vector<uint64_t> other;
  EXPECT_EQ(m.match_prefix(toks, 7, 10, c, other), 0);  // another salt (adapter) never shares
  m.release(a);
  m.release(b);
  EXPECT_EQ(m.num_free(), 4);  // cached blocks count as free...
  std::vector<int32_t> d;
  hashes.clear();
  EXPECT_EQ(m.match_prefix(toks, 0, 10, d, hashes), 2);  // ...and are still found
  m.release(d);
  std::vector<int32_t> e;
  ASSERT_TRUE(m.allocate(4, e));  // evicts them when the space is needed
  EXPECT_FALSE(m.allocate(1, e));
  m.release(e);
  hashes.clear();
  EXPECT_EQ(m.match_prefix(toks, 0, 10, d, hashes), 0);
  std::vector<int32_t> twice{e.empty() ? 0 : 0};
  EXPECT_THROW(m.release(twice), Error);
}

// While sequences decode, a step takes tokens_per_decode prompt tokens per decoding sequence (at
// least a quarter of the budget, the total within it); with none decoding, or more than four full
// steps of prompt tokens waiting, the whole budget.
TEST(Scheduler, StepBudgetFollowsTheDecodes) {
  BlockManager blocks(4096, 16);
  SchedulerConfig cfg;  // 2048 tokens, 16 per decode
  Scheduler sched(cfg, blocks);
  std::vector<std::unique_ptr<Sequence>> seqs;
  uint64_t next = 0;
  auto add = [&](int prompt) {
    auto s = std::make_unique<Sequence>();
    s->id = s->arrival = next++;
    s->tokens.assign(size_t(prompt), int32_t(7 + next));
    s->prompt_len = prompt;
    sched.add(s.get());
    seqs.push_back(std::move(s));
  };
  // What the engine does after a step: the tokens are computed, finished prompts sample a token.
  auto step = [&] {
    std::vector<ScheduledSeq> out = sched.schedule();
    for (const ScheduledSeq& sc : out) {
      sc.seq->num_computed += sc.num_tokens;
      if (sc.seq->num_computed == sc.seq->length()) sc.seq->tokens.push_back(1);
    }
    return out;
  };
  auto tokens = [](const std::vector<ScheduledSeq>& out) {
    int n = 0;
    for (const ScheduledSeq& sc : out) n += sc.num_tokens;
    return n;
  };
  for (int i = 0; i < 4; ++i) add(512);
  EXPECT_EQ(sched.step_budget(), 2048);  // nothing decodes: the whole budget
  EXPECT_EQ(tokens(step()), 2048);       // the four prompts in one step
  for (int i = 0; i < 4; ++i) add(512);
  EXPECT_EQ(sched.step_budget(), 4 + 512);  // 4 decodes: a quarter of the budget for prompts
  std::vector<ScheduledSeq> out = step();
  ASSERT_EQ(out.size(), 5u);
  EXPECT_EQ(out[4].num_tokens, 512);  // one whole prompt beside the four decodes
  for (int i = 0; i < 13; ++i) add(512);
  EXPECT_EQ(sched.step_budget(), 5 + 512);  // 5 decode; 16 prompts wait, 8,192 tokens: four full steps
  add(512);
  EXPECT_EQ(sched.step_budget(), 2048);  // more than four full steps wait: a backlog drains at full steps
  while (sched.num_waiting() > 0) step();
  for (int i = 0; i < 186; ++i) add(8);
  while (sched.num_waiting() > 0) step();
  EXPECT_EQ(sched.step_budget(), 2048);  // 208 decodes: the whole budget
  SchedulerConfig off = cfg;
  off.tokens_per_decode = 0;
  BlockManager blocks2(64, 16);
  Scheduler fixed(off, blocks2);
  EXPECT_EQ(fixed.step_budget(), 2048);
}

TEST(Sampler, GreedyLogprobsAndSeeds) {
  std::vector<float> logits{1.0f, 3.0f, 3.0f, -1.0f};
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  EXPECT_EQ(sample_token(logits.data(), 4, greedy, 0), 1);  // first maximum
  std::vector<float> lp(4);
  log_softmax(logits.data(), 4, lp.data());
  double total = 0;
  for (float v : lp) total += std::exp(double(v));
  EXPECT_NEAR(total, 1.0, 1e-6);
  auto top = top_logprobs(lp.data(), 4, 2);
  EXPECT_EQ(top[0].first, 1);
  EXPECT_EQ(top[1].first, 2);

  SamplingParams p;
  p.seed = 42;
  std::vector<float> flat(50, 0.0f);
  std::vector<int> a, b, c;
  for (int s = 0; s < 20; ++s) {
    a.push_back(sample_token(flat.data(), 50, p, uint64_t(s)));
    b.push_back(sample_token(flat.data(), 50, p, uint64_t(s)));
  }
  p.seed = 43;
  for (int s = 0; s < 20; ++s) c.push_back(sample_token(flat.data(), 50, p, uint64_t(s)));
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_GT(std::set<int>(a.begin(), a.end()).size(), 5u);
}

TEST(Sampler, TopKTopPMinPRestrictCandidates) {
  std::vector<float> logits{5.0f, 4.0f, 0.0f, -1.0f, -2.0f};
  SamplingParams p;
  p.seed = 1;
  p.top_k = 2;
  for (int s = 0; s < 200; ++s) EXPECT_LT(sample_token(logits.data(), 5, p, uint64_t(s)), 2);
  p.top_k = 0;
  p.top_p = 0.5f;  // the first token alone has ~72% of the mass
  for (int s = 0; s < 200; ++s) EXPECT_EQ(sample_token(logits.data(), 5, p, uint64_t(s)), 0);
  p.top_p = 1.0f;
  p.min_p = 0.3f;  // token 1 has e^-1 = 0.37 of token 0's probability; token 2 has e^-5
  std::set<int> seen;
  for (int s = 0; s < 400; ++s) seen.insert(sample_token(logits.data(), 5, p, uint64_t(s)));
  EXPECT_EQ(seen, (std::set<int>{0, 1}));
}

}  // namespace
}  // namespace apus
