// `apus bench latency`: one prompt, then decode, timed; decode is compared with the floor set by
// memory bandwidth (weight + KV bytes per token over the read bandwidth this machine shows now).
// `apus bench throughput`: many requests offline; on a GPU compared with the floor set by the
// device's matrix-product rate and copy rate (print_floor).
#include <chrono>
#include <cstring>
#include <random>
#include <iostream>

#include "cli/bench.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "core/random.h"
#include "core/thread_pool.h"
#include "engine/engine.h"
#include "engine/generate.h"
#include "lora/adapter.h"

namespace apus::cli {

namespace {

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
float sum_floats(const float* p, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += p[i];
  return acc;
}

// Read bandwidth in bytes/s: every thread sums its share of a buffer far larger than the caches.
double measure_read_bandwidth(int threads) {
  const int64_t n = int64_t(1) << 28;  // 1 GiB of floats
  Tensor buf = host_tensor(DType::F32, {n});
  ThreadPool pool(threads);
  pool.parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
    std::memset(buf.ptr<float>() + b, 1, size_t(e - b) * 4);  // fault the pages in
  });
  double best = 0.0;
  volatile float sink = 0.0f;
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) { sink = sink + sum_floats(buf.ptr<float>() + b, e - b); });
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(n) * 4 / s);
  }
  return best;
}

// Parameters of the decoder's matrices, the 2 * params FLOPs a token costs (embedding and lm_head
// aside; not matrix_bytes / dtype size: a quantized model's bytes are codes).
double decoder_matrix_params(const ModelConfig& c) {
  const double H = double(c.hidden_size), q = double(c.q_size()), kv = double(c.kv_size());
  return c.num_layers * (H * (q + 2 * kv) + q * H + 3 * H * double(c.intermediate_size));
}

// With tensor parallelism: the group's size and its all-reduce speed, measured now.
void print_parallel(ModelGroup& g, const char* label) {
  if (g.world() == 1) return;
  const ModelGroup::AllReduceFigures f = g.measure_all_reduce();
  std::cout << fmt::format("{}{} ranks; all-reduce {:.1f} GB/s bus bandwidth (256 MiB), {:.1f} us per decode-sized "
                           "sum ({} bytes)\n",
                           label, g.world(), f.bus_bandwidth / 1e9, f.small_seconds * 1e6, f.small_bytes);
}

struct LatencyArgs {
  ModelOptions model;
  int input_len = 512;
  int output_len = 128;
  int iters = 1;
};

void run_latency(const LatencyArgs& a) {
  const int threads = a.model.num_threads();
  auto t0 = std::chrono::steady_clock::now();
  const auto group = a.model.load_group();
  if (!group) return;  // another node's ranks, served until node 0 stopped them
  DecoderModel* m = &group->model();
  Backend* backend = &group->backend();
  double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const ModelConfig& c = m->config();

  std::vector<int32_t> prompt(size_t(a.input_len));
  for (int i = 0; i < a.input_len; ++i) prompt[size_t(i)] = int32_t(splitmix64(uint64_t(i)) % uint64_t(c.vocab_size));
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_tokens = a.output_len;
  p.ignore_eos = true;

  double prefill_s = 1e30, decode_s = 1e30;
  for (int it = 0; it < a.iters; ++it) {
    GenerateResult r = generate(*m, prompt, p);
    prefill_s = std::min(prefill_s, r.prefill_seconds);
    decode_s = std::min(decode_s, r.decode_seconds);
  }
  // A GPU's ceiling is its device-to-device copy rate (bytes read + written); the CPU's, its read rate.
  const double device_bw = backend->measure_copy_bandwidth();
  const double bw = device_bw > 0 ? device_bw : measure_read_bandwidth(threads);
  const double decode_steps = a.output_len - 1;
  const double kv_bytes_per_pos = double(KvCache::bytes_per_block(c, 1, backend->activation_dtype()));
  const double avg_ctx = a.input_len + a.output_len / 2.0;
  const double bytes_per_token = double(m->weights().matrix_bytes) + kv_bytes_per_pos * avg_ctx;
  const double floor_tps = bw / bytes_per_token;
  const double decode_tps = decode_steps / decode_s;

  std::cout << fmt::format("model            {} ({} layers, hidden {}, vocab {})\n",
                           a.model.load.config_preset.empty() ? a.model.load.model_dir : a.model.load.config_preset,
                           c.num_layers, c.hidden_size, c.vocab_size);
  std::cout << fmt::format("backend          {}\n", backend->name());
  print_parallel(*group, "tensor parallel  ");
  std::cout << fmt::format("load             {:.2f} s\n", load_s);
  std::cout << fmt::format("prefill          {} tokens in {:.3f} s = {:.1f} tokens/s\n", a.input_len, prefill_s,
                           a.input_len / prefill_s);
  std::cout << fmt::format("decode           {} tokens in {:.3f} s = {:.2f} tokens/s ({:.1f} ms/token)\n",
                           int(decode_steps), decode_s, decode_tps, 1000.0 * decode_s / decode_steps);
  if (device_bw > 0) std::cout << fmt::format("copy bandwidth   {:.1f} GB/s (measured on the device, read + write)\n", bw / 1e9);
  else std::cout << fmt::format("read bandwidth   {:.1f} GB/s (measured, {} threads)\n", bw / 1e9, threads);
  std::cout << fmt::format("bytes per token  {:.1f} MB (weights {:.1f} MB + KV at avg context {:.0f})\n",
                           bytes_per_token / 1e6, double(m->weights().matrix_bytes) / 1e6, avg_ctx);
  std::cout << fmt::format("decode floor     {:.2f} tokens/s; decode at {:.2f} of the floor\n", floor_tps,
                           decode_tps / floor_tps);
  // Prefill against the dense matrix-product rate the device reaches (GPU only): the matrices'
  // 2 * params FLOPs per token (lm_head aside) plus causal attention's 2 * 2 * L * q_size * n^2 / 2.
  const double gemm_flops = backend->measure_matmul_flops();
  if (gemm_flops > 0) {
    const double n = a.input_len;  // lm_head runs for the last token only
    const double flops = 2.0 * decoder_matrix_params(c) * n + 2.0 * c.num_layers * double(c.q_size()) * n * n;
    const double rate = flops / prefill_s;
    std::cout << fmt::format("prefill rate     {:.1f} TFLOP/s ({:.1f} TFLOP of matrices and attention)\n", rate / 1e12,
                             flops / 1e12);
    std::cout << fmt::format("matmul ceiling   {:.1f} TFLOP/s (cuBLAS bf16 8192^3, measured); prefill at {:.2f} of it\n",
                             gemm_flops / 1e12, rate / gemm_flops);
  }
}

struct ThroughputArgs {
  ModelOptions model;
  WorkloadOptions work;
  int max_num_seqs = 0;            // 0: apply_offline_batch_limits
  int max_num_batched_tokens = 0;
  double kv_cache_gib = 1.0;
  bool compare_sequential = false;
  int num_loras = 0;
  int lora_rank = 16;
};

// ShareGPT-like lengths: log-normal fits of the conversation set vLLM benchmarks use (median
// prompt ~ 170 tokens, median reply ~ 200, long tails), clipped to [4, 2048].
int lognormal_len(std::mt19937_64& rng, double median, double sigma) {
  std::lognormal_distribution<double> d(std::log(median), sigma);
  return std::clamp(int(d(rng)), 4, 2048);
}

std::vector<Request> make_requests(const WorkloadOptions& w, int64_t vocab) {
  std::vector<Request> reqs;
  for (WorkloadItem& item : make_workload(w, vocab)) {
    Request r;
    r.prompt = std::move(item.prompt);
    r.params.temperature = 0.0f;
    r.params.max_tokens = item.output_len;
    r.params.ignore_eos = true;
    reqs.push_back(std::move(r));
  }
  return reqs;
}

struct ThroughputResult {
  double seconds;
  size_t input_tokens, output_tokens;
  EngineStats stats;
};

ThroughputResult time_engine(DecoderModel& m, EngineConfig cfg, const std::vector<Request>& reqs) {
  Engine engine(m, cfg);
  std::cout << engine.describe_cache() << "\n";
  auto t0 = std::chrono::steady_clock::now();
  auto out = run_to_completion(engine, reqs);
  ThroughputResult r{std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 0, 0,
                     engine.stats()};
  for (size_t i = 0; i < reqs.size(); ++i) {
    r.input_tokens += reqs[i].prompt.size();
    for (const auto& o : out[i]) r.output_tokens += o.new_tokens.size();
  }
  return r;
}

void print_throughput(const char* label, const ThroughputResult& r, size_t n) {
  std::cout << fmt::format("{:<12} {:.2f} requests/s, {:.1f} input tokens/s, {:.2f} output tokens/s ({} requests in {:.2f} s)\n",
                           label, n / r.seconds, r.input_tokens / r.seconds, r.output_tokens / r.seconds, n, r.seconds);
  // Where the host's time went (EngineStats): on a GPU, schedule and outputs leave it idle.
  const EngineStats& s = r.stats;
  const double per = s.steps ? 1e6 / double(s.steps) : 0.0;
  std::cout << fmt::format("{:<12} {} steps, per step: schedule {:.0f} us, forward call {:.0f} us, drawing tokens {:.0f} us, "
                           "outputs {:.0f} us (schedule + outputs {:.1f}% of the time)\n",
                           "host", s.steps, s.schedule_s * per, s.forward_s * per, s.draw_s * per, s.outputs_s * per,
                           100.0 * (s.schedule_s + s.outputs_s) / r.seconds);
}

// The workload's floor on this device: every matrix product at the cuBLAS rate measured here and
// the decode steps' reads of their whole context's keys and values at the copy rate, nothing else
// (no norm, activation, RoPE, prefill attention, sampling or host time, no overlap), split ideally
// over a tensor-parallel group's GPUs. A decode step for output j of a request reads prompt + j positions.
void print_floor(const DecoderModel& m, Backend& backend, const std::vector<Request>& reqs, double gemm_rate,
                 double copy_rate, int world, const ThroughputResult& run) {
  const ModelConfig& c = m.config();
  const double per_pos = double(KvCache::bytes_per_block(c, 1, backend.activation_dtype()));
  double tokens = 0, logit_rows = 0, kv_positions = 0;
  for (const Request& r : reqs) {
    const double in = double(r.prompt.size()), out = double(r.params.max_tokens);
    tokens += in + out - 1;  // every prompt token, and every output but the last, passes the layers
    logit_rows += out;
    kv_positions += (out - 1) * in + (out - 1) * out / 2;
  }
  const double flops = 2.0 * decoder_matrix_params(c) * tokens + 2.0 * double(c.hidden_size) * double(c.vocab_size) * logit_rows;
  const double kv_bytes = per_pos * kv_positions;
  const double seconds = (flops / gemm_rate + kv_bytes / copy_rate) / world;
  const double floor_tps = double(run.output_tokens) / seconds;
  std::cout << fmt::format("floor        {:.0f} output tokens/s: {:.2f} PFLOP of matrix products at {:.1f} TFLOP/s (cuBLAS "
                           "bf16 8192^3, measured) + {:.2f} TB of decode KV reads at {:.1f} GB/s (copy rate){}; run "
                           "at {:.2f} of it\n",
                           floor_tps, flops / 1e15, gemm_rate / 1e12, kv_bytes / 1e12, copy_rate / 1e9,
                           world > 1 ? fmt::format(", split over {} GPUs", world) : std::string(),
                           (double(run.output_tokens) / run.seconds) / floor_tps);
}

void run_throughput(const ThroughputArgs& a) {
  const auto group = a.model.load_group();
  if (!group) return;
  DecoderModel* m = &group->model();
  Backend* backend = &group->backend();
  auto reqs = make_requests(a.work, m->config().vocab_size);
  if (a.num_loras > 0) {  // request i runs with adapter i % num_loras (unmerged, batched)
    m->enable_lora(a.num_loras, a.lora_rank);
    for (int s = 0; s < a.num_loras; ++s) m->lora()->load(s, random_lora_adapter(m->config(), a.lora_rank, uint64_t(s + 1)));
    for (size_t i = 0; i < reqs.size(); ++i) reqs[i].lora = {int(i % size_t(a.num_loras)), i % size_t(a.num_loras) + 1, nullptr};
    std::cout << fmt::format("LoRA         {} adapters of rank {} on every linear layer ({:.1f} MiB of slots), requests "
                             "round-robin\n", a.num_loras, a.lora_rank, double(m->lora()->bytes()) / (1 << 20));
  }
  EngineConfig cfg;
  cfg.scheduler.max_num_seqs = a.max_num_seqs;
  cfg.scheduler.max_num_batched_tokens = a.max_num_batched_tokens;
  apply_offline_batch_limits(cfg.scheduler, *backend);
  cfg.kv_cache_bytes = size_t(a.kv_cache_gib * double(1ull << 30));
  cfg.gpu_memory_utilization = a.model.gpu_memory_utilization;
  std::cout << fmt::format("model        {} on {}\n",
                           a.model.load.config_preset.empty() ? a.model.load.model_dir : a.model.load.config_preset,
                           backend->name());
  print_parallel(*group, "parallel     ");
  std::cout << fmt::format("workload     {} requests, {} ({} in / {} out nominal), max_num_seqs {}, max_num_batched_tokens {}\n",
                           reqs.size(), a.work.dataset, a.work.input_len, a.work.output_len, cfg.scheduler.max_num_seqs,
                           cfg.scheduler.max_num_batched_tokens);
  // The device's rates for the floor below (GPUs), measured before the run, while memory is free.
  const double gemm_rate = backend->measure_matmul_flops();
  const double copy_rate = gemm_rate > 0 ? backend->measure_copy_bandwidth() : 0.0;
  const ThroughputResult batched = time_engine(*m, cfg, reqs);
  print_throughput("batched", batched, reqs.size());
  if (gemm_rate > 0 && copy_rate > 0) print_floor(*m, *backend, reqs, gemm_rate, copy_rate, group->world(), batched);
  if (a.compare_sequential) {
    cfg.scheduler.max_num_seqs = 1;
    const ThroughputResult seq = time_engine(*m, cfg, reqs);
    print_throughput("one-at-a-time", seq, reqs.size());
    std::cout << fmt::format("speed-up     {:.2f}x output tokens/s from batching\n",
                             (batched.output_tokens / batched.seconds) / (seq.output_tokens / seq.seconds));
  }
}

}  // namespace

std::vector<WorkloadItem> make_workload(const WorkloadOptions& o, int64_t vocab) {
  std::mt19937_64 rng(o.seed);
  std::vector<WorkloadItem> items;
  for (int i = 0; i < o.num_prompts; ++i) {
    int in = o.input_len, out = o.output_len;
    if (o.dataset == "sharegpt-like") {
      in = lognormal_len(rng, 170, 1.0);
      out = lognormal_len(rng, 200, 0.9);
    } else if (o.range_ratio > 0) {
      std::uniform_int_distribution<int> din(int(in * (1 - o.range_ratio)), int(in * (1 + o.range_ratio)));
      std::uniform_int_distribution<int> dout(int(out * (1 - o.range_ratio)), int(out * (1 + o.range_ratio)));
      in = std::max(1, din(rng));
      out = std::max(1, dout(rng));
    }
    WorkloadItem item;
    for (int t = 0; t < in; ++t) item.prompt.push_back(int32_t(rng() % uint64_t(vocab)));
    item.output_len = out;
    items.push_back(std::move(item));
  }
  return items;
}

void WorkloadOptions::add_to(CLI::App& app) {
  app.add_option(opt("num-prompts"), num_prompts);
  app.add_option(opt("input-len"), input_len);
  app.add_option(opt("output-len"), output_len);
  app.add_option(opt("random-range-ratio"), range_ratio, "spread of random lengths around the nominal ones");
  app.add_option(opt("dataset"), dataset, "random | sharegpt-like (log-normal ShareGPT-shaped lengths)");
  app.add_option(opt("seed"), seed);
}

void WorkloadOptions::check() const {
  APUS_CHECK(num_prompts > 0 && input_len > 0 && output_len > 0, "lengths and counts must be positive");
  APUS_CHECK(dataset == "random" || dataset == "sharegpt-like", "--dataset must be random or sharegpt-like");
  APUS_CHECK(range_ratio >= 0 && range_ratio < 1, "--random-range-ratio must be in [0, 1)");
}

void add_bench(CLI::App& root) {
  auto* bench = root.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  auto* lat = bench->add_subcommand("latency", "Prefill and single-stream decode speed");
  auto args = std::make_shared<LatencyArgs>();
  args->model.add_to(*lat);
  lat->add_option(opt("input-len"), args->input_len);
  lat->add_option(opt("output-len"), args->output_len);
  lat->add_option(opt("num-iters"), args->iters, "repetitions (the best is reported)");
  lat->callback([args] {
    APUS_CHECK(args->input_len > 0 && args->output_len > 1, "--input-len must be > 0 and --output-len > 1");
    run_latency(*args);
  });

  auto* thr = bench->add_subcommand("throughput", "Offline throughput of many requests (like vLLM's)");
  auto targs = std::make_shared<ThroughputArgs>();
  targs->model.add_to(*thr);
  targs->work.add_to(*thr);
  thr->add_option(opt("max-num-seqs"), targs->max_num_seqs, "default: 1024 on GPUs of >= 70 GiB (not A100), else 256");
  thr->add_option(opt("max-num-batched-tokens"), targs->max_num_batched_tokens,
                  "default: 16384 on GPUs of >= 70 GiB (not A100), else 2048");
  thr->add_option(opt("kv-cache-gib"), targs->kv_cache_gib, "KV cache memory budget (CPU; a GPU's follows --gpu-memory-utilization)");
  thr->add_option(opt("num-loras"), targs->num_loras, "serve the requests through this many random LoRA adapters (unmerged)");
  thr->add_option(opt("lora-rank"), targs->lora_rank, "rank of the --num-loras adapters (all linear layers)");
  thr->add_flag(opt("compare-sequential"), targs->compare_sequential, "also run the requests one at a time and print the speed-up");
  thr->callback([targs] {
    targs->work.check();
    run_throughput(*targs);
  });

  add_bench_serve(*bench);
}

}  // namespace apus::cli
