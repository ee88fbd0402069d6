#include "server/metrics.h"

#include <fmt/format.h>

namespace apus::server {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[i];
  sum_ += v;
  ++count_;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out = fmt::format("# HELP {0} {1}\n# TYPE {0} histogram\n", name, help);
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    const std::string le = i < bounds_.size() ? fmt::format("{}", bounds_[i]) : "+Inf";
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, le, cumulative);
  }
  out += fmt::format("{}_sum {}\n{}_count {}\n", name, sum_, name, count_);
  return out;
}

namespace {

std::string metric(const std::string& name, const char* type, const std::string& help, double value) {
  return fmt::format("# HELP {0} {1}\n# TYPE {0} {2}\n{0} {3}\n", name, help, type, value);
}

}  // namespace

std::string ServerMetrics::render(const AsyncEngine::Snapshot& s, const std::string& model_name) const {
  const EngineStats& st = s.stats;
  std::string out;
  out += metric("apus:num_requests_running", "gauge", "Requests in the running batch.", double(s.running));
  out += metric("apus:num_requests_waiting", "gauge", "Requests waiting to be scheduled.", double(s.waiting));
  out += metric("apus:kv_cache_usage_perc", "gauge", "Fraction of KV cache blocks in use (1 = full).", s.kv_usage());
  out += metric("apus:kv_cache_blocks_used", "gauge", "KV cache blocks owned by live sequences.", double(s.used_blocks()));
  out += metric("apus:kv_cache_blocks_total", "gauge", "KV cache blocks in all.", double(s.total_blocks));
  out += metric("apus:prefix_cache_queries_total", "counter", "Full prompt blocks looked up in the prefix cache.",
                double(st.prefix_queried_blocks));
  out += metric("apus:prefix_cache_hits_total", "counter", "Full prompt blocks found in the prefix cache.",
                double(st.prefix_hit_blocks));
  out += metric("apus:prefix_cache_hit_rate", "gauge", "Prefix cache hits over queries since start.", s.prefix_hit_rate());
  out += metric("apus:prompt_tokens_total", "counter", "Prompt tokens admitted.", double(st.prompt_tokens));
  out += metric("apus:generation_tokens_total", "counter", "Tokens generated.", double(st.generated_tokens));
  out += metric("apus:num_preemptions_total", "counter", "Sequences preempted for lack of KV cache.", double(st.preemptions));
  out += "# HELP apus:request_success_total Requests finished, by reason.\n# TYPE apus:request_success_total counter\n";
  out += fmt::format("apus:request_success_total{{finished_reason=\"stop\"}} {}\n", finished_stop.load());
  out += fmt::format("apus:request_success_total{{finished_reason=\"length\"}} {}\n", finished_length.load());
  out += metric("apus:request_aborted_total", "counter", "Requests cancelled because the client went away.", double(aborted.load()));
  out += metric("apus:request_rejected_total", "counter", "Requests refused with an error status.", double(rejected.load()));
  out += ttft.render("apus:time_to_first_token_seconds", "Time to first token.");
  out += tpot.render("apus:time_per_output_token_seconds", "Time per output token after the first.");
  out += e2e.render("apus:e2e_request_latency_seconds", "End-to-end request latency.");
  out += fmt::format("# HELP apus:model_info The model being served.\n# TYPE apus:model_info gauge\napus:model_info{{model=\"{}\"}} 1\n",
                     model_name);
  return out;
}

}  // namespace apus::server
