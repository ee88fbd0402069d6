// Tensor parallelism (src/parallel/): a model split over ranks serves a busy engine exactly as the
// whole model does; a rank that fails stops the group with a clear error instead of a hang; bad
// splits are refused by name; the multi-node rendezvous hands over the id and notices a lost node.
// On the CPU the ranks are thread groups; built again as test_tensor_parallel_gpu (label gpu), where
// they are GPUs talking through NCCL. (Parity with transformers per rank count: test_golden.)
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "core/error.h"
#include "engine/engine.h"
#include "engine/generate.h"
#include "parallel/model_group.h"
#include "parallel/rendezvous.h"
#include "test_device.h"
#include "test_util.h"
#ifdef APUS_TEST_GPU
#include "backend/cuda/cuda_backend.h"
#endif

namespace apus {
namespace {

constexpr int kTp = 2;

bool enough_devices() { return !test::on_gpu() || gpu_count() >= kTp; }

LoadOptions fixture_model(const test::TempDir& dir) {
  test::write_fixture_model(dir.path(), "llama_gqa_f32", {{"max_position_embeddings", 4096}});
  LoadOptions o;
  o.model_dir = dir.str();
  return o;
}

std::unique_ptr<ModelGroup> group_of(const LoadOptions& o, int tp) {
  ParallelOptions par;
  par.tensor_parallel_size = tp;
  return std::make_unique<ModelGroup>(o, APUS_TEST_DEVICE, 2, par);
}

EngineConfig small_cache(int num_blocks) {
  EngineConfig c;
  c.num_blocks = num_blocks;
  c.block_size = 16;
  c.scheduler.max_num_batched_tokens = 256;  // prompts arrive in chunks beside decodes
  c.max_model_len = 256;
  return c;
}

std::vector<Request> busy_requests() {
  std::mt19937 rng(11);
  std::vector<int32_t> shared(40);
  for (auto& t : shared) t = int32_t(rng() % 256);
  std::vector<Request> reqs;
  for (int i = 0; i < 12; ++i) {
    Request r;
    r.prompt = i % 3 == 0 ? shared : std::vector<int32_t>{};  // some share a cached prefix
    for (int k = 0; k < 10 + int(rng() % 60); ++k) r.prompt.push_back(int32_t(rng() % 256));
    r.params.temperature = i % 4 == 1 ? 0.8f : 0.0f;  // seeded draws too
    r.params.seed = uint64_t(i);
    r.params.max_tokens = 30;
    r.params.ignore_eos = true;
    reqs.push_back(std::move(r));
  }
  return reqs;
}

// Sets an environment variable for a scope (the groups read theirs when they are made).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* was = std::getenv(name)) before_ = was;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (before_) setenv(name_, before_->c_str(), 1);
    else unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> before_;
};

TEST(TensorParallel, BusyEngineMatchesTheWholeModel) {
  if (!test::device_available() || !enough_devices()) GTEST_SKIP() << "needs " << kTp << " GPUs";
  test::TempDir dir;
  const LoadOptions o = fixture_model(dir);
  std::vector<std::vector<SeqOutput>> want, got;
  {
    auto whole = group_of(o, 1);
    Engine e(whole->model(), small_cache(24));
    want = run_to_completion(e, busy_requests());
  }
  // Steps of 16 tokens or more with several sequences run as two halves whose sums overlap the
  // other half's work (DecoderModel::run_layers_split; two streams on a GPU): this busy engine
  // makes several, and they must not change a token.
  std::unique_ptr<ModelGroup> split;
  {
    ScopedEnv overlap("APUS_TP_OVERLAP_TOKENS", "16");
    split = group_of(o, kTp);
  }
  EXPECT_EQ(split->model().config().num_heads * kTp, 4);  // this rank's heads
  {
    Engine e(split->model(), small_cache(24));  // 384 tokens for ~12 x 100: preempts
    got = run_to_completion(e, busy_requests());
    EXPECT_GT(e.stats().preemptions, 0u);
    EXPECT_GT(e.stats().prefix_hit_blocks, 0u);
  }
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i][0].new_tokens, want[i][0].new_tokens) << "request " << i;
  // A second engine (a new cache) and generate() (another, short-lived one) on the same group.
  Engine again(split->model(), small_cache(64));
  auto third = run_to_completion(again, {busy_requests()[0]});
  EXPECT_EQ(again.stats().argmax_only_steps, again.stats().steps);  // greedy alone: no logits gathered
  EXPECT_GE(again.stats().overlapped_steps + 1, again.stats().steps);  // each queued before the last was read
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  greedy.max_tokens = 30;
  greedy.ignore_eos = true;
  EXPECT_EQ(generate(split->model(), busy_requests()[0].prompt, greedy).token_ids, want[0][0].new_tokens);
  EXPECT_EQ(third[0][0].new_tokens, want[0][0].new_tokens);
#ifdef APUS_TEST_GPU
  // Every sum of an eager step through the copy engines (the peer-to-peer kernel's limit 0), split
  // steps too: the copy engines' sums on stream 1 beside the other half's work on stream 0.
  split.reset();
  ScopedEnv overlap("APUS_TP_OVERLAP_TOKENS", "16"), no_p2p("APUS_TP_P2P_MAX_BYTES", "0");
  auto engines = group_of(o, kTp);
  Engine e(engines->model(), small_cache(24));
  got = run_to_completion(e, busy_requests());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i][0].new_tokens, want[i][0].new_tokens) << "request " << i;
  // Unsplit, each row-parallel product (o, down) made in chunks of 3 rows, each chunk copied to the
  // peer from the copy engines' own stream while the next is made.
  engines.reset();
  {
    ScopedEnv whole("APUS_TP_OVERLAP_TOKENS", "0"), chunks("APUS_TP_CE_CHUNK_ROWS", "3");
    engines = group_of(o, kTp);
  }
  Engine chunked(engines->model(), small_cache(24));
  got = run_to_completion(chunked, busy_requests());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i][0].new_tokens, want[i][0].new_tokens) << "request " << i;
#endif
}

TEST(TensorParallel, GreedyCandidatesGiveTheFirstMaximumOfTheWholeVocabulary) {
  // (logit, id) per rank, in rank order: ties go to the lower rank (its ids are lower), and a rank
  // whose best is -inf (no real vocabulary rows, all NaN) loses to any other.
  const float tie[] = {2.5f, 7, 2.5f, 40, 1.0f, 90};
  EXPECT_EQ(greedy_token(tie, 3), 7);
  const float later[] = {-1.0f, 3, 0.5f, 33};
  EXPECT_EQ(greedy_token(later, 2), 33);
  const float empty[] = {-INFINITY, 0, -3.0f, 20, -INFINITY, 40};
  EXPECT_EQ(greedy_token(empty, 3), 20);
  const float none[] = {-INFINITY, 0, -INFINITY, 20};
  EXPECT_EQ(greedy_token(none, 2), 0);
}

TEST(TensorParallel, AFailingRankStopsTheGroupWithItsError) {
  if (!test::device_available() || !enough_devices()) GTEST_SKIP() << "needs " << kTp << " GPUs";
  test::TempDir dir;
  const LoadOptions o = fixture_model(dir);
  // On GPUs also with the eager steps' sums through the copy engines (the peer-to-peer kernel's
  // limit 0): rank 0's stream then waits on a flag that rank 1 never writes, until the abort.
  for (int ce = 0; ce < (test::on_gpu() ? 2 : 1); ++ce) {
    SCOPED_TRACE(ce ? "copy-engine sums" : "default sums");
    std::optional<ScopedEnv> no_p2p;
    if (ce) no_p2p.emplace("APUS_TP_P2P_MAX_BYTES", "0");
    std::unique_ptr<ModelGroup> split;
    {
      ScopedEnv fault("APUS_TP_FAULT", "1:3");  // rank 1 fails at its fourth step
      split = group_of(o, kTp);
    }
    const auto t0 = std::chrono::steady_clock::now();
    Engine e(split->model(), small_cache(64));
    try {
      run_to_completion(e, busy_requests());
      FAIL() << "the engine went on without rank 1";
    } catch (const Error& err) {
      EXPECT_NE(std::string(err.what()).find("rank 1 failed: injected fault"), std::string::npos) << err.what();
    }
    // Later steps fail at once with the same cause; nothing hangs, and the group still shuts down.
    Request r = busy_requests()[0];
    EXPECT_THROW(run_to_completion(e, {r}), Error);
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 60.0);
  }
}

TEST(TensorParallelDeathTest, AFailedGroupThatIsNotTornDownEndsTheProcess) {
  // After a failure the group must be torn down; one that is not (in real life: a GPU stuck in a
  // collective with a dead peer keeps a rank's thread from ever returning) ends the process with
  // the failure, after APUS_TP_EXIT_GRACE seconds, instead of hanging.
  if (!test::device_available() || !enough_devices()) GTEST_SKIP() << "needs " << kTp << " GPUs";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        test::TempDir dir;
        const LoadOptions o = fixture_model(dir);
        setenv("APUS_TP_EXIT_GRACE", "0.5", 1);
        setenv("APUS_TP_FAULT", "1:3", 1);
        auto split = group_of(o, kTp);
        Engine e(split->model(), small_cache(64));
        try {
          run_to_completion(e, busy_requests());
        } catch (const Error&) {
        }
        std::this_thread::sleep_for(std::chrono::seconds(30));  // the owner keeps the failed group
        std::exit(0);
      },
      testing::ExitedWithCode(1), "rank 1 failed: injected fault.*did not shut down within 0.5 s: exiting");
}

#ifdef APUS_TEST_GPU
// The collectives directly, two GPUs: sums of every size the model makes (decode rows through the
// peer-to-peer kernel, larger ones through NCCL), three at a time back to back and then two fused
// with the residual add + RMSNorm into one residual stream (larger ones through the copy engines),
// of values whose sums bf16 holds exactly, so that any stale or raced buffer shows; both ranks get
// the exact sums (and the norm within bf16 rounding).
TEST(TensorParallel, AllReducesOfEverySizeAreExactOnEveryRank) {
  if (gpu_count() < 2) GTEST_SKIP() << "needs 2 GPUs";
  ScopedEnv p2p("APUS_TP_P2P", "1"), ce("APUS_TP_CE", "1");  // whatever the environment says
  constexpr int kWorld = 2;
  constexpr int64_t kCols = 3584;
  // 2048 rows: 14.7 MB (peer-to-peer); 3000 and 9000 (64.5 MB): NCCL, fused ones through the copy engines
  const int64_t sizes[] = {1, 7, 256, 1, 2048, 3000, 64, 9000, 256, 255};
  const NcclId id = nccl_unique_id();
  auto value = [](int rank, int it, int k, int64_t i) { return float(int((i * 7 + it * 13 + k * 5 + rank * 101) % 17) - 8) * 0.125f; };
  std::vector<std::string> errors(kWorld);
  auto run = [&](int rank) {
    try {
      auto b = make_cuda_backend(rank);
      auto c = make_nccl_collectives(*b, id, rank, kWorld, 0.0, true, nullptr);
      for (int it = 0; it < 40; ++it) {
        const int64_t rows = sizes[it % std::size(sizes)];
        std::vector<Tensor> t;
        for (int k = 0; k < 3; ++k) {
          Tensor h = host_tensor(DType::BF16, {rows, kCols});
          for (int64_t i = 0; i < h.numel(); ++i) set_float(h, i, value(rank, it, k, i));
          t.push_back(b->upload(h));
        }
        for (Tensor& x : t) c->all_reduce(x);
        // The fused sum + residual add + RMSNorm of a fourth and a fifth, one after the other, into
        // one residual stream: rank 0's 4th input.
        Tensor hx = host_tensor(DType::BF16, {rows, kCols}), hx2 = host_tensor(DType::BF16, {rows, kCols});
        Tensor hr = host_tensor(DType::BF16, {rows, kCols}), hw = host_tensor(DType::F32, {kCols});
        for (int64_t i = 0; i < hx.numel(); ++i) {
          set_float(hx, i, value(rank, it, 3, i));
          set_float(hx2, i, value(rank, it, 5, i));
          set_float(hr, i, value(0, it, 4, i));
        }
        for (int64_t i = 0; i < kCols; ++i) hw.ptr<float>()[i] = 0.5f + float(i % 7) * 0.25f;
        Tensor dx = b->upload(hx), dx2 = b->upload(hx2), dres = b->upload(hr), dw = b->upload(hw);
        Tensor dout = b->alloc(DType::BF16, {rows, kCols});
        c->all_reduce_add_rms_norm(dx, dres, dw, 1e-6f, dout, *b);
        c->all_reduce_add_rms_norm(dx2, dres, dw, 1e-6f, dout, *b);
        b->copy_to_host(dres, hr.data);
        Tensor hout = host_tensor(DType::BF16, {rows, kCols});
        b->copy_to_host(dout, hout.data);
        for (int64_t r = 0; r < rows && errors[size_t(rank)].empty(); ++r) {
          double ss = 0.0;
          for (int64_t i = r * kCols; i < (r + 1) * kCols; ++i) {
            const float want = value(0, it, 4, i) + value(0, it, 3, i) + value(1, it, 3, i) + value(0, it, 5, i) +
                               value(1, it, 5, i);
            ss += double(want) * want;
            if (get_float(hr, i) != want)
              errors[size_t(rank)] = fmt::format("rank {} call {} residual row {} element {}: {} instead of {}", rank, it,
                                                 r, i, get_float(hr, i), want);
          }
          const double inv = 1.0 / std::sqrt(ss / double(kCols) + 1e-6);
          for (int64_t i = r * kCols; i < (r + 1) * kCols && errors[size_t(rank)].empty(); ++i) {
            const double want = double(get_float(hr, i)) * inv * hw.ptr<float>()[i % kCols];
            if (std::fabs(get_float(hout, i) - want) > 0.01 * std::fabs(want) + 1e-3)
              errors[size_t(rank)] = fmt::format("rank {} call {} norm row {} element {}: {} instead of {}", rank, it,
                                                 r, i, get_float(hout, i), want);
          }
        }
        for (int k = 0; k < 3; ++k) {
          Tensor h = host_tensor(DType::BF16, {rows, kCols});
          b->copy_to_host(t[size_t(k)], h.data);
          for (int64_t i = 0; i < h.numel(); ++i) {
            const float want = value(0, it, k, i) + value(1, it, k, i);
            if (get_float(h, i) != want && errors[size_t(rank)].empty()) {  // go on: the peer waits for us
              errors[size_t(rank)] = fmt::format("rank {} call {}.{} ({} rows) element {}: {} instead of {}", rank, it,
                                                 k, rows, i, get_float(h, i), want);
              break;
            }
          }
        }
      }
      // Before the buffers go: a collective (4 bytes: NCCL) after the last sum, so that no peer
      // still reads this rank's buffers.
      Tensor last = b->alloc(DType::F32, {1});
      c->all_reduce(last);
      b->synchronize();
    } catch (const std::exception& e) {
      errors[size_t(rank)] = e.what();
    }
  };
  std::thread t1(run, 1);
  run(0);
  t1.join();
  for (const std::string& e : errors) EXPECT_EQ(e, "");
}
#endif

TEST(TensorParallel, SplitsThatDoNotDivideAreRefusedByName) {
  if (!test::device_available()) GTEST_SKIP() << "no CUDA GPU";
  test::TempDir dir;
  const LoadOptions o = fixture_model(dir);  // 4 heads, 2 KV heads, intermediate 128
  try {
    group_of(o, 3);
    FAIL() << "3 ranks for 4 heads";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_attention_heads 4"), std::string::npos) << e.what();
  }
  ParallelOptions par;
  par.tensor_parallel_size = 3;
  par.nnodes = 2;
  EXPECT_THROW(ModelGroup(o, APUS_TEST_DEVICE, 2, par), Error);  // 3 ranks over 2 nodes
  if (!test::on_gpu()) {
    par.tensor_parallel_size = 2;
    try {
      ModelGroup g(o, "cpu", 2, par);
      FAIL() << "CPU ranks in two processes";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--nnodes > 1 needs --device cuda"), std::string::npos) << e.what();
    }
  }
}

TEST(Rendezvous, HandsTheIdToEveryNodeAndNoticesALostOne) {
  std::random_device rd;
  const int port = 20000 + int(rd() % 20000);
  Rendezvous::Id id{};
  for (size_t i = 0; i < id.size(); ++i) id[i] = char(i * 7 + 1);
  Rendezvous::Id got1{}, got2{};
  std::unique_ptr<Rendezvous> n1, n2;
  std::thread t1([&] { n1 = std::make_unique<Rendezvous>("127.0.0.1", port, 3, 1, &got1, 30.0); });
  std::thread t2([&] { n2 = std::make_unique<Rendezvous>("127.0.0.1", port, 3, 2, &got2, 30.0); });
  Rendezvous n0("127.0.0.1", port, 3, 0, &id, 30.0);
  t1.join();
  t2.join();
  EXPECT_EQ(got1, id);
  EXPECT_EQ(got2, id);
  std::atomic<int> lost{0};
  std::string why;
  n0.watch(
      [&](const std::string& w) {
        why = w;
        ++lost;
      },
      30.0);
  n1->expect_close();  // orderly on node 1's side; node 0 still sees a node go
  n2.reset();          // node 2's process "ends"
  for (int i = 0; i < 100 && lost == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(lost.load(), 1);
  EXPECT_NE(why.find("closed its connection"), std::string::npos) << why;
  n0.expect_close();
  n1.reset();

  // A node that cannot reach node 0 gives up with the address it tried.
  Rendezvous::Id none{};
  try {
    Rendezvous late("127.0.0.1", port, 2, 1, &none, 0.5);
    FAIL() << "connected to nobody";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format("127.0.0.1:{}", port)), std::string::npos) << e.what();
  }
}

TEST(Rendezvous, NoticesANodeThatGoesSilent) {
  // A killed process with GPU work can take long to exit and close its sockets: its silence counts.
  std::random_device rd;
  const int port = 20000 + int(rd() % 20000);
  Rendezvous::Id id{}, got{};
  std::unique_ptr<Rendezvous> n1;
  std::thread t1([&] { n1 = std::make_unique<Rendezvous>("127.0.0.1", port, 2, 1, &got, 30.0); });
  Rendezvous n0("127.0.0.1", port, 2, 0, &id, 30.0);
  t1.join();
  std::atomic<int> lost0{0}, lost1{0};
  std::string why;
  n1->watch([&](const std::string&) { ++lost1; }, 3.0);
  n0.watch(
      [&](const std::string& w) {
        why = w;
        ++lost0;
      },
      3.0);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_EQ(lost0.load(), 0) << why;  // both send their heartbeats
  n1->expect_close();                 // node 1's watcher (and heartbeat) stops; its socket stays open
  for (int i = 0; i < 200 && lost0 == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(lost0.load(), 1);
  EXPECT_NE(why.find("node 1 sent nothing for 3 s"), std::string::npos) << why;
  EXPECT_EQ(lost1.load(), 0);
  n0.expect_close();
  n1.reset();
}

}  // namespace
}  // namespace apus
