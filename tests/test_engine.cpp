// The engine under pressure: batch invariance, prefix caching, preemption, seeds, n > 1,
// cancellation, priorities, and a randomized scheduler fuzz against its invariants.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <random>

#include "core/error.h"
#include "engine/async_engine.h"
#include "engine/engine.h"
#include "model/load.h"
#include "test_device.h"
#include "test_util.h"

namespace apus {
namespace {

// The llama fixture model with room for long prompts (weights do not depend on the context size).
class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!test::device_available()) return;
    dir_ = new test::TempDir();
    test::write_fixture_model(dir_->path(), "llama_gqa_f32", {{"max_position_embeddings", 4096}});
    backend_ = test::make_test_backend(2).release();
    LoadOptions o;
    o.model_dir = dir_->str();
    model_ = load_model(o, *backend_).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete backend_;
    delete dir_;
  }

  void SetUp() override {
    if (!model_) GTEST_SKIP() << "no CUDA GPU";
  }

  static EngineConfig config(int num_blocks = 512, int max_batched = 2048, int max_seqs = 256) {
    EngineConfig c;
    c.num_blocks = num_blocks;
    c.block_size = 16;
    c.scheduler.max_num_batched_tokens = max_batched;
    c.scheduler.max_num_seqs = max_seqs;
    c.max_model_len = std::min(4096, num_blocks * 16);
    return c;
  }
  static Request greedy(std::vector<int32_t> prompt, int max_tokens) {
    Request r;
    r.prompt = std::move(prompt);
    r.params.temperature = 0.0f;
    r.params.max_tokens = max_tokens;
    r.params.ignore_eos = true;
    return r;
  }
  static std::vector<int32_t> random_prompt(std::mt19937& rng, int len) {
    std::vector<int32_t> p(static_cast<size_t>(len));
    for (auto& t : p) t = int32_t(rng() % 256);
    return p;
  }
  static std::vector<int32_t> alone(const Request& r) {
    Engine e(*model_, config());
    return run_to_completion(e, {r})[0][0].new_tokens;
  }

  static test::TempDir* dir_;
  static Backend* backend_;
  static DecoderModel* model_;
};
test::TempDir* EngineTest::dir_ = nullptr;
Backend* EngineTest::backend_ = nullptr;
DecoderModel* EngineTest::model_ = nullptr;

TEST_F(EngineTest, BatchOf32EqualsEachAlone) {
  std::mt19937 rng(1);
  std::vector<Request> reqs;
  for (int i = 0; i < 32; ++i) reqs.push_back(greedy(random_prompt(rng, 1 + int(rng() % 90)), 1 + int(rng() % 24)));
  Engine e(*model_, config(512, 256));  // a small token budget forces chunked prefill next to decodes
  auto batched = run_to_completion(e, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(batched[i][0].new_tokens, alone(reqs[i])) << "request " << i;
    EXPECT_EQ(batched[i][0].finish_reason, "length");
  }
  EXPECT_EQ(e.blocks().num_free(), 512);
}

// More logit rows than a GPU backend runs its lm_head at as they are (Backend::logit_rows_bucket: from
// 65 rows it rounds up to 128s) in buffers reserved larger, as the engine reserves them for a GPU: the
// rows computed past the real ones change no token.
TEST_F(EngineTest, ManyLogitRowsInReservedBuffersEqualEachAlone) {
  model_->reserve(512, 256);
  std::mt19937 rng(5);
  std::vector<Request> reqs;
  for (int i = 0; i < 100; ++i) reqs.push_back(greedy(random_prompt(rng, 1 + int(rng() % 12)), 1 + int(rng() % 6)));
  Engine e(*model_, config(512, 512));
  auto batched = run_to_completion(e, reqs);
  EXPECT_GT(e.stats().steps, 0u);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(batched[i][0].new_tokens, alone(reqs[i])) << "request " << i;
}

// EngineStats' host time per step phase: every phase of every step is counted, and together they
// are no more than the run's wall time.
TEST_F(EngineTest, StepPhaseTimesAddUpWithinTheRun) {
  std::mt19937 rng(7);
  std::vector<Request> reqs;
  for (int i = 0; i < 8; ++i) reqs.push_back(greedy(random_prompt(rng, 20 + i), 6));
  Engine e(*model_, config());
  const auto t0 = std::chrono::steady_clock::now();
  run_to_completion(e, reqs);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const EngineStats s = e.stats();
  EXPECT_EQ(s.steps, 6u);  // one step with every prompt, then one per further token
  EXPECT_GT(s.schedule_s, 0.0);
  EXPECT_GT(s.forward_s, 0.0);
  EXPECT_GE(s.draw_s, 0.0);
  EXPECT_GT(s.outputs_s, 0.0);
  EXPECT_LE(s.schedule_s + s.forward_s + s.draw_s + s.outputs_s, wall);
}

TEST_F(EngineTest, SharedPrefixIsComputedOnce) {
  std::mt19937 rng(2);
  const auto prefix = random_prompt(rng, 1000);
  std::vector<Request> reqs;
  for (int i = 0; i < 4; ++i) {
    auto p = prefix;
    auto suffix = random_prompt(rng, 10);
    p.insert(p.end(), suffix.begin(), suffix.end());
    reqs.push_back(greedy(p, 8));
  }
  EngineConfig uncached_cfg = config(512, 8192);
  uncached_cfg.scheduler.enable_prefix_caching = false;
  Engine uncached(*model_, uncached_cfg), cached(*model_, config(512, 8192));
  auto a = run_to_completion(uncached, reqs);
  auto b = run_to_completion(cached, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(a[i][0].new_tokens, b[i][0].new_tokens) << i;
  // 62 full blocks (992 tokens) of the prefix are computed by the first request only.
  EXPECT_EQ(uncached.stats().computed_tokens, 4u * (1010 + 7));
  EXPECT_EQ(cached.stats().computed_tokens, 4u * (1010 + 7) - 3u * 992);
  EXPECT_EQ(cached.stats().prefix_hit_blocks, 3u * 62);
  // A later request with the same prefix is served from the cache too.
  auto later = run_to_completion(cached, {reqs[0]});
  EXPECT_EQ(later[0][0].new_tokens, a[0][0].new_tokens);
  EXPECT_EQ(cached.blocks().num_free(), 512);
}

TEST_F(EngineTest, PreemptionKeepsOutputsAndLeaksNothing) {
  std::mt19937 rng(3);
  std::vector<Request> reqs;
  for (int i = 0; i < 10; ++i) reqs.push_back(greedy(random_prompt(rng, 20 + int(rng() % 30)), 40));
  Engine big(*model_, config());
  auto want = run_to_completion(big, reqs);
  Engine small(*model_, config(14));  // 224 tokens of cache for ~10 x 85 tokens of demand
  auto got = run_to_completion(small, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(got[i][0].new_tokens, want[i][0].new_tokens) << i;
  EXPECT_GT(small.stats().preemptions, 0u);
  EXPECT_EQ(small.blocks().num_free(), 14);
}

TEST_F(EngineTest, SeedsReproduceAcrossBatchesAndDiffer) {
  std::mt19937 rng(4);
  Request r = greedy(random_prompt(rng, 12), 16);
  r.params.temperature = 1.0f;
  r.params.seed = 123;
  const auto solo = alone(r);
  std::vector<Request> mixed;
  for (int i = 0; i < 5; ++i) mixed.push_back(greedy(random_prompt(rng, 30), 20));
  mixed.insert(mixed.begin() + 2, r);
  Engine e(*model_, config());
  EXPECT_EQ(run_to_completion(e, mixed)[2][0].new_tokens, solo);
  Request other = r;
  other.params.seed = 124;
  EXPECT_NE(alone(other), solo);
}

TEST_F(EngineTest, ParallelSamplingSharesThePrompt) {
  std::mt19937 rng(5);
  Request r = greedy(random_prompt(rng, 64), 12);
  r.params.temperature = 1.0f;
  r.params.seed = 9;
  r.n = 3;
  Engine e(*model_, config());
  auto out = run_to_completion(e, {r})[0];
  ASSERT_EQ(out.size(), 3u);
  EXPECT_NE(out[0].new_tokens, out[1].new_tokens);
  EXPECT_EQ(e.stats().prefix_hit_blocks, 2u * 3);  // 3 full prompt blocks reused by choices 1 and 2
  Request g = greedy(r.prompt, 12);
  g.n = 2;
  auto same = run_to_completion(e, {g})[0];
  EXPECT_EQ(same[0].new_tokens, same[1].new_tokens);
}

TEST_F(EngineTest, StopTokensMinTokensAndMaxModelLen) {
  std::mt19937 rng(6);
  Request r = greedy(random_prompt(rng, 10), 30);
  const auto free_run = alone(r);
  Request s = r;
  s.stop_token_ids = {free_run[5]};
  auto out = run_to_completion(*std::make_unique<Engine>(*model_, config()), {s})[0][0];
  auto first = std::find(free_run.begin(), free_run.end(), free_run[5]) - free_run.begin();
  EXPECT_EQ(out.new_tokens.size(), size_t(first + 1));
  EXPECT_EQ(out.finish_reason, "stop");
  s.params.min_tokens = 20;  // the stop id is masked until 20 tokens exist
  out = run_to_completion(*std::make_unique<Engine>(*model_, config()), {s})[0][0];
  EXPECT_GE(out.new_tokens.size(), 20u);

  EngineConfig c = config();
  c.max_model_len = 16;
  Engine e(*model_, c);
  out = run_to_completion(e, {r})[0][0];
  EXPECT_EQ(out.new_tokens.size(), 6u);
  EXPECT_EQ(out.finish_reason, "length");
  EXPECT_THAT([&] { e.add_request(greedy(random_prompt(rng, 16), 1)); },
              ::testing::ThrowsMessage<Error>(::testing::HasSubstr("max_model_len")));
}

TEST_F(EngineTest, CancellationFreesBlocksAtOnce) {
  std::mt19937 rng(7);
  Engine e(*model_, config(64));
  uint64_t a = e.add_request(greedy(random_prompt(rng, 100), 50));
  e.add_request(greedy(random_prompt(rng, 40), 10));
  e.step();
  e.step();
  const int free_before = e.blocks().num_free();
  e.abort(a);
  EXPECT_GE(e.blocks().num_free(), free_before + 7);  // its 100+ tokens held at least 7 blocks
  while (e.has_unfinished()) e.step();
  EXPECT_EQ(e.blocks().num_free(), 64);
}

TEST_F(EngineTest, HigherPriorityIsAdmittedFirst) {
  std::mt19937 rng(8);
  Engine e(*model_, config(512, 2048, 1));  // one sequence at a time
  Request low = greedy(random_prompt(rng, 8), 2), high = greedy(random_prompt(rng, 8), 2);
  high.priority = -1;
  uint64_t lo = e.add_request(low), hi = e.add_request(high);
  auto first = e.step();
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].request_id, hi);
  (void)lo;
}

TEST_F(EngineTest, FuzzArrivalsLengthsAndCancellations) {
  for (uint32_t seed = 0; seed < 6; ++seed) {
    std::mt19937 rng(100 + seed);
    const int blocks = 10 + int(rng() % 30);
    Engine e(*model_, config(blocks, 16 + int(rng() % 200), 1 + int(rng() % 8)));
    std::vector<uint64_t> live;
    int finished = 0, added = 0, aborted = 0;
    for (int step = 0; step < 400 && (added < 40 || e.has_unfinished()); ++step) {
      if (added < 40 && rng() % 3 == 0) {
        Request r = greedy(random_prompt(rng, 1 + int(rng() % (blocks * 16 / 2))), 1 + int(rng() % 30));
        r.params.temperature = float(rng() % 2);
        r.params.seed = rng();
        r.n = 1 + int(rng() % 2);
        live.push_back(e.add_request(r));
        ++added;
      }
      if (!live.empty() && rng() % 17 == 0) {
        size_t k = rng() % live.size();
        e.abort(live[k]);
        live.erase(live.begin() + long(k));
        ++aborted;
      }
      for (const auto& o : e.step())
        if (o.finished) ++finished;
      ASSERT_LE(e.blocks().num_free(), blocks);
    }
    while (e.has_unfinished())
      for (const auto& o : e.step())
        if (o.finished) ++finished;
    EXPECT_EQ(e.blocks().num_free(), blocks) << "seed " << seed;
    EXPECT_GT(finished, 0);
    EXPECT_EQ(e.num_running() + e.num_waiting(), 0u);
    (void)aborted;
  }
}

// Async scheduling (the next step queued before this one's tokens are read) changes nothing a
// request sees: the same tokens, logprobs, finish reasons and prompt logprobs as one step at a time,
// through stops mid-step, min_tokens, n > 1, host-drawn rows (logprobs, penalties), prefix hits,
// preemption and cancellation; and it does overlap.
TEST_F(EngineTest, AsyncSchedulingGivesTheSameOutputs) {
  std::mt19937 rng(11);
  std::vector<Request> reqs;
  const std::vector<int32_t> shared = random_prompt(rng, 40);
  for (int i = 0; i < 24; ++i) {
    Request r = greedy(random_prompt(rng, 5 + int(rng() % 60)), 1 + int(rng() % 40));
    if (i % 4 == 1) r.prompt.insert(r.prompt.begin(), shared.begin(), shared.end());  // prefix hits
    r.params.temperature = i % 3 == 0 ? 0.0f : 1.0f;
    r.params.seed = rng();
    r.params.ignore_eos = i % 2 == 0;
    r.stop_token_ids = {int32_t(rng() % 256), int32_t(rng() % 256), int32_t(rng() % 256)};
    if (i % 5 == 2) r.params.min_tokens = 6;
    if (i % 7 == 3) r.n = 2;
    if (i == 5) r.params.logprobs = 3;
    if (i == 9) r.params.repetition_penalty = 1.3f;
    if (i == 13) r.params.prompt_logprobs = 2;
    reqs.push_back(r);
  }
  for (const int blocks : {512, 24}) {  // 24: preemptions
    EngineConfig sync_cfg = config(blocks, 96, 12);
    sync_cfg.async_scheduling = false;
    Engine sync_engine(*model_, sync_cfg), async_engine(*model_, config(blocks, 96, 12));
    const auto want = run_to_completion(sync_engine, reqs), got = run_to_completion(async_engine, reqs);
    for (size_t i = 0; i < reqs.size(); ++i)
      for (size_t c = 0; c < want[i].size(); ++c) {
        const SeqOutput &w = want[i][c], &g = got[i][c];
        EXPECT_EQ(g.new_tokens, w.new_tokens) << "request " << i << " choice " << c << ", " << blocks << " blocks";
        EXPECT_EQ(g.finish_reason, w.finish_reason) << i;
        EXPECT_EQ(g.new_token_logprobs, w.new_token_logprobs) << i;
        ASSERT_EQ(g.prompt_logprobs.size(), w.prompt_logprobs.size()) << i;
        for (size_t k = 0; k < w.prompt_logprobs.size(); ++k) EXPECT_EQ(g.prompt_logprobs[k].logprob, w.prompt_logprobs[k].logprob);
      }
    EXPECT_GT(async_engine.stats().overlapped_steps, 0u) << blocks << " blocks";
    EXPECT_EQ(sync_engine.stats().overlapped_steps, 0u);
    EXPECT_EQ(async_engine.blocks().num_free(), blocks);
    if (blocks == 24) {
      EXPECT_GT(async_engine.stats().preemptions, 0u);
    }
  }
  // Without host-drawn rows nearly every step overlaps (not the first, nor one after a drained queue).
  std::vector<Request> device_only;
  for (const Request& r : reqs)
    if (r.params.min_tokens == 0 && r.params.logprobs < 0 && r.params.prompt_logprobs < 0 &&
        r.params.repetition_penalty == 1.0f)
      device_only.push_back(r);
  Engine d(*model_, config(512, 96, 12));
  run_to_completion(d, device_only);
  EXPECT_GE(d.stats().overlapped_steps + 1, d.stats().steps);
  // Stops land mid-flight: every sequence gets its own outputs however the steps interleave, and a
  // cancelled request's sequences (in the step on the device) just vanish.
  Engine e(*model_, config(64, 96, 8));
  std::vector<uint64_t> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(e.add_request(reqs[size_t(i)]));
  e.step();
  e.step();
  e.abort(ids[1]);
  std::map<uint64_t, int> finished;
  while (e.has_unfinished())
    for (const SeqOutput& o : e.step()) {
      EXPECT_NE(o.request_id, ids[1]);
      finished[o.request_id] += o.finished;
    }
  EXPECT_EQ(finished.size(), 5u);
  EXPECT_EQ(e.blocks().num_free(), 64);
}

TEST_F(EngineTest, PromptLogprobsMatchTransformers) {
  // The fixture's reference log-softmax of every prompt position (transformers, float32).
  const auto fx = test::read_json(std::string(APUS_SOURCE_DIR) + "/tests/golden/llama_gqa_f32.json");
  const auto prompt = fx["prompt"].get<std::vector<int32_t>>();
  for (int chunk : {2048, 5}) {  // whole prompt, and chunked prefill
    Request r = greedy(prompt, 2);
    r.params.prompt_logprobs = 3;
    Engine e(*model_, config(512, chunk));
    auto out = run_to_completion(e, {r, r})[0][0];  // a second identical request: no prefix sharing
    ASSERT_EQ(out.prompt_logprobs.size(), prompt.size() - 1);
    for (size_t i = 1; i < prompt.size(); ++i) {
      const auto& pl = out.prompt_logprobs[i - 1];
      EXPECT_EQ(pl.token, prompt[i]);
      EXPECT_NEAR(pl.logprob, fx["prompt_logprobs"][i - 1][size_t(prompt[i])].get<double>(), 2e-3) << i;
      ASSERT_EQ(pl.top.size(), 3u);
      EXPECT_GE(pl.top[0].second, pl.logprob);
    }
    if (fx["step_margins"][0].get<double>() > 0.05) {
      EXPECT_EQ(out.new_tokens[0], fx["generated"][0].get<int32_t>());
    }
  }
}

TEST_F(EngineTest, LoopThreadServesConcurrentCallers) {
  std::mt19937 rng(9);
  std::vector<Request> reqs;
  for (int i = 0; i < 12; ++i) reqs.push_back(greedy(random_prompt(rng, 5 + int(rng() % 40)), 1 + int(rng() % 15)));
  Engine ref(*model_, config());
  auto want = run_to_completion(ref, reqs);

  AsyncEngine engine(*model_, config());
  std::vector<std::vector<int32_t>> got(reqs.size());
  std::vector<std::thread> callers;
  for (size_t i = 0; i < reqs.size(); ++i) {
    callers.emplace_back([&, i] {
      auto stream = engine.submit(reqs[i]);
      SeqOutput o;
      while (stream->next(o)) got[i].insert(got[i].end(), o.new_tokens.begin(), o.new_tokens.end());
    });
  }
  for (auto& t : callers) t.join();
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(got[i], want[i][0].new_tokens) << i;

  // An aborted stream ends with an error and its blocks come back; bad requests fail on submit.
  auto stream = engine.submit(greedy(random_prompt(rng, 50), 500));
  SeqOutput o;
  ASSERT_TRUE(stream->next(o));
  engine.abort(stream->id());
  while (stream->next(o, std::chrono::milliseconds(2000))) {
  }
  EXPECT_EQ(stream->error(), "aborted");
  for (int i = 0; i < 100 && engine.snapshot().free_blocks != 512; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(engine.snapshot().free_blocks, 512);
  EXPECT_THROW(engine.submit(greedy({}, 1)), Error);
  // Destroying the engine with a request in flight ends that stream instead of hanging.
  auto orphan = engine.submit(greedy(random_prompt(rng, 10), 1000));
  (void)orphan;
}

// Offline batch limits: given ones are kept; on the CPU the scheduler's defaults, on a GPU of
// >= 70 GiB (not A100) vLLM V1's 1,024 / 16,384.
TEST(OfflineBatchLimits, FillOnlyWhatIsUnset) {
  if (!test::device_available()) GTEST_SKIP() << "no CUDA GPU";
  auto backend = test::make_test_backend(2);
  size_t free_bytes = 0, total = 0;
  const bool large = backend->memory_info(&free_bytes, &total) && total >= size_t(70) << 30 &&
                     backend->name().find("A100") == std::string::npos;
  SchedulerConfig s;
  s.max_num_seqs = 0;
  s.max_num_batched_tokens = 0;
  apply_offline_batch_limits(s, *backend);
  EXPECT_EQ(s.max_num_seqs, large ? 1024 : SchedulerConfig{}.max_num_seqs);
  EXPECT_EQ(s.max_num_batched_tokens, large ? 16384 : SchedulerConfig{}.max_num_batched_tokens);
  SchedulerConfig given;
  given.max_num_seqs = 7;
  given.max_num_batched_tokens = 99;
  apply_offline_batch_limits(given, *backend);
  EXPECT_EQ(given.max_num_seqs, 7);
  EXPECT_EQ(given.max_num_batched_tokens, 99);
}

}  // namespace
}  // namespace apus
