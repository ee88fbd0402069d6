// What `apus bench throughput` (bench_cmd.cpp) and `apus bench serve` (bench_serve.cpp) share:
// the synthetic workload, so that both measure the same requests for the same options and seed.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

namespace apus::cli {

struct WorkloadOptions {
  int num_prompts = 64;
  int input_len = 128;
  int output_len = 64;
  double range_ratio = 0.0;        // lengths uniform in [len * (1 - r), len * (1 + r)]
  std::string dataset = "random";  // random | sharegpt-like
  uint64_t seed = 0;
  void add_to(CLI::App& app);
  void check() const;  // counts positive, a known --dataset
};

struct WorkloadItem {
  std::vector<int32_t> prompt;  // random token ids in [0, vocab)
  int output_len = 0;           // tokens to generate (the benchmarks ignore EOS)
};

// The same items for the same options, seed and vocabulary size.
std::vector<WorkloadItem> make_workload(const WorkloadOptions& o, int64_t vocab);

void add_bench_serve(CLI::App& bench);

}  // namespace apus::cli
