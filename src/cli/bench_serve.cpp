// `apus bench serve`: a running OpenAI-compatible server under load, measured as `vllm bench serve`
// measures it. Requests arrive as a Poisson process (--request-rate; inf: all at once), at most
// --max-concurrency in flight; each streams, with ignore_eos so that it generates exactly its
// output length. Per request: TTFT (sent -> first chunk with text), ITL (gaps between chunks with
// text), TPOT ((E2E - TTFT) / (output tokens - 1)) and E2E (sent -> end of the stream); output
// token counts are the server's (stream_options.include_usage).
//
// One thread per request in flight, each with its own kept-alive connection: requests are
// blocking and few (bounded by --max-concurrency, else kMaxThreads), so threads stay simple.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <ctime>
#include <fstream>
#include <iostream>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "cli/api_client.h"
#include "cli/bench.h"
#include "cli/common.h"
#include "core/error.h"
#include "server/http_client.h"

namespace apus::cli {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr size_t kMaxThreads = 1024;  // requests in flight when --max-concurrency is not given

struct ServeArgs {
  WorkloadOptions work;
  std::string url = "http://127.0.0.1:8000";
  std::string model, api_key, json_file;
  std::string endpoint = "/v1/completions";
  std::string request_rate = "inf";
  int max_concurrency = 0;  // 0: unbounded (up to kMaxThreads)
  int64_t vocab_size = 0;   // 0: ask the server
  double timeout = 600;     // seconds a request may wait for the server at any step
};

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// One request as the client saw it.
struct Outcome {
  std::string error;  // empty: it succeeded
  double ttft = 0, e2e = 0;
  std::vector<double> itl;
  int64_t prompt_tokens = 0, output_tokens = 0;
  bool usage = false;  // the server reported the token counts
  int text_chunks = 0;
};

Outcome run_request(server::HttpClient& http, const std::string& path, const std::string& body) {
  Outcome o;
  bool done = false;
  const auto t0 = Clock::now();
  auto last = t0;
  try {
    const server::ClientResponse r = http.post_stream(path, body, [&](const std::string& data) {
      const auto now = Clock::now();
      if (data == "[DONE]") {
        done = true;
        return true;
      }
      const json j = json::parse(data, nullptr, false);
      if (j.is_discarded()) o.error = "the server sent a chunk that is not JSON: " + data.substr(0, 200);
      else o.error = error_message(j);
      if (!o.error.empty()) return false;
      if (j.contains("usage") && j["usage"].is_object()) {
        o.prompt_tokens = j["usage"].value("prompt_tokens", int64_t(0));
        o.output_tokens = j["usage"].value("completion_tokens", int64_t(0));
        o.usage = true;
      }
      if (!choice_text(j).empty()) {
        if (o.text_chunks++ == 0) o.ttft = seconds(now - t0);
        else o.itl.push_back(seconds(now - last));
        last = now;
      }
      return true;
    });
    o.e2e = seconds(Clock::now() - t0);
    if (r.status != 200) o.error = describe_failure(r);
    else if (o.error.empty() && !done) o.error = "the answer was not a complete event stream (no [DONE])";
  } catch (const std::exception& e) {
    o.error = e.what();
  }
  if (o.error.empty() && !o.usage) o.output_tokens = o.text_chunks;  // a server without include_usage
  return o;
}

// The server's vocabulary size: the first token id POST /detokenize refuses (apus deploy answers
// 400 for ids outside the vocabulary), found by bisection in ~25 small requests.
int64_t probe_vocab_size(server::HttpClient& http) {
  const auto accepted = [&](int64_t id) {
    const server::ClientResponse r = http.post("/detokenize", json{{"tokens", json::array({id})}}.dump());
    if (r.status == 200 || r.status == 400) return r.status == 200;
    fail("finding the vocabulary size with POST /detokenize failed (give --vocab-size): {}", describe_failure(r));
  };
  int64_t lo = 0, hi = int64_t(1) << 24;  // lo accepted, hi refused
  APUS_CHECK(accepted(lo), "POST /detokenize refuses token id 0; give --vocab-size");
  APUS_CHECK(!accepted(hi), "POST /detokenize accepts any token id, so the vocabulary size is unknown; give --vocab-size");
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (accepted(mid) ? lo : hi) = mid;
  }
  return hi;
}

// The request bodies. Completions take the token ids themselves, so that a prompt has exactly
// its input length; chat needs text, which the server's /detokenize makes of the same ids (its
// length in tokens then only approximates the input length, and the chat template adds some).
std::vector<std::string> make_bodies(const ServeArgs& a, const std::string& model, server::HttpClient& http,
                                     const std::vector<WorkloadItem>& items) {
  const bool chat = a.endpoint == "/v1/chat/completions";
  std::vector<std::string> bodies;
  for (const WorkloadItem& item : items) {
    json body = {{"model", model}, {"stream", true}, {"stream_options", {{"include_usage", true}}},
                 {"temperature", 0.0}, {"ignore_eos", true}};
    if (chat) {
      const server::ClientResponse r = http.post("/detokenize", json{{"tokens", item.prompt}}.dump());
      if (r.status != 200) fail("POST /detokenize (chat prompts are text) failed: {}", describe_failure(r));
      const json j = json::parse(r.body, nullptr, false);
      APUS_CHECK(j.is_object() && j.contains("prompt") && j["prompt"].is_string(),
                 "POST /detokenize answered no \"prompt\" string: {}", r.body.substr(0, 200));
      body["messages"] = json::array({{{"role", "user"}, {"content", j["prompt"]}}});
      body["max_completion_tokens"] = item.output_len;
    } else {
      body["prompt"] = item.prompt;
      body["max_tokens"] = item.output_len;
    }
    bodies.push_back(body.dump());
  }
  return bodies;
}

// Sends every body: request i is released at its arrival time (exponential gaps of mean 1/rate;
// all at once for an infinite rate) and starts as soon as a worker thread is free.
std::vector<Outcome> run_all(const std::string& base_url, const ServeArgs& a, const std::vector<std::string>& bodies,
                             double rate) {
  const size_t n = bodies.size();
  std::vector<Outcome> out(n);
  std::mutex mu;
  std::condition_variable cv;
  size_t released = 0, next = 0;
  const size_t cap = a.max_concurrency > 0 ? size_t(a.max_concurrency) : kMaxThreads;
  std::vector<std::thread> workers;
  for (size_t w = 0; w < std::min(n, cap); ++w)
    workers.emplace_back([&] {
      server::HttpClient http(base_url, a.api_key, a.timeout);
      for (;;) {
        size_t i;
        {
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return next < released || next == n; });
          if (next == n) return;
          i = next++;
        }
        out[i] = run_request(http, a.endpoint, bodies[i]);
      }
    });
  std::mt19937_64 rng(a.work.seed);
  std::exponential_distribution<double> gap(std::isinf(rate) ? 1.0 : rate);
  auto t = Clock::now();
  for (size_t i = 0; i < n; ++i) {
    {
      std::lock_guard<std::mutex> lock(mu);
      released = i + 1;
    }
    cv.notify_one();
    if (!std::isinf(rate) && i + 1 < n) {
      t += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
      std::this_thread::sleep_until(t);
    }
  }
  cv.notify_all();
  for (auto& w : workers) w.join();
  return out;
}

struct Summary {
  double mean = 0, median = 0, stdev = 0, p99 = 0;
};

// numpy's mean, median, std and percentile (linear interpolation), of seconds in milliseconds.
Summary summarize_ms(std::vector<double> v) {
  Summary s;
  if (v.empty()) return s;
  for (double& x : v) x *= 1e3;
  std::sort(v.begin(), v.end());
  const auto pct = [&](double p) {
    const double pos = p / 100.0 * double(v.size() - 1);
    const size_t lo = size_t(pos), hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
  };
  double sum = 0, sq = 0;
  for (double x : v) sum += x;
  s.mean = sum / double(v.size());
  for (double x : v) sq += (x - s.mean) * (x - s.mean);
  s.stdev = std::sqrt(sq / double(v.size()));
  s.median = pct(50);
  s.p99 = pct(99);
  return s;
}

void run_serve(const ServeArgs& a) {
  APUS_CHECK(a.endpoint == "/v1/completions" || a.endpoint == "/v1/chat/completions",
             "--endpoint must be /v1/completions or /v1/chat/completions, not {}", a.endpoint);
  double rate = std::numeric_limits<double>::infinity();
  if (a.request_rate != "inf") {
    try {
      rate = std::stod(a.request_rate);
    } catch (const std::exception&) {
      rate = -1;
    }
    APUS_CHECK(rate > 0, "--request-rate must be a positive number of requests per second, or inf (got \"{}\")",
               a.request_rate);
  }
  APUS_CHECK(a.max_concurrency >= 0, "--max-concurrency must be positive");
  const std::string base_url = api_base_url(a.url);
  server::HttpClient http(base_url, a.api_key, a.timeout);
  const std::string model = a.model.empty() ? first_served_model(http) : a.model;
  const int64_t vocab = a.vocab_size > 0 ? a.vocab_size : probe_vocab_size(http);
  const std::vector<WorkloadItem> items = make_workload(a.work, vocab);
  const std::vector<std::string> bodies = make_bodies(a, model, http, items);

  std::cerr << fmt::format("apus: {} {} requests ({}, {} in / {} out nominal) to {}{} for \"{}\" (vocabulary {})\n",
                           a.work.num_prompts, a.endpoint == "/v1/completions" ? "completions" : "chat", a.work.dataset,
                           a.work.input_len, a.work.output_len, base_url, a.endpoint, model, vocab);
  // As vLLM does: one request first, so that a misconfiguration fails at once and clearly.
  std::cerr << "apus: initial test run with the first prompt\n";
  const Outcome test = run_request(http, a.endpoint, bodies[0]);
  if (!test.error.empty()) fail("the initial test request failed: {}", test.error);
  if (!test.usage)
    std::cerr << "apus: warning: the server reports no usage in streams (stream_options.include_usage); output tokens "
                 "are counted as chunks with text\n";
  std::cerr << fmt::format("apus: starting the benchmark: request rate {}, max concurrency {}\n", a.request_rate,
                           a.max_concurrency > 0 ? std::to_string(a.max_concurrency)
                                                 : fmt::format("unbounded ({} threads at most)", kMaxThreads));

  const auto t0 = Clock::now();
  const std::vector<Outcome> out = run_all(base_url, a, bodies, rate);
  const double duration = seconds(Clock::now() - t0);

  int completed = 0;
  int64_t input_tokens = 0, output_tokens = 0;
  std::vector<double> ttfts, tpots, itls, e2els;
  json errors = json::array();
  for (size_t i = 0; i < out.size(); ++i) {
    const Outcome& o = out[i];
    if (!o.error.empty()) {
      errors.push_back(o.error);
      continue;
    }
    ++completed;
    input_tokens += o.usage ? o.prompt_tokens : int64_t(items[i].prompt.size());
    output_tokens += o.output_tokens;
    ttfts.push_back(o.ttft);
    e2els.push_back(o.e2e);
    if (o.output_tokens > 1) tpots.push_back((o.e2e - o.ttft) / double(o.output_tokens - 1));
    itls.insert(itls.end(), o.itl.begin(), o.itl.end());
  }
  const int failed = int(out.size()) - completed;
  for (size_t i = 0; i < errors.size() && i < 5; ++i) std::cerr << "apus: failed request: " << errors[i].get<std::string>() << "\n";
  if (completed == 0) fail("all {} requests failed", out.size());

  const Summary ttft = summarize_ms(ttfts), tpot = summarize_ms(tpots), itl = summarize_ms(itls), e2el = summarize_ms(e2els);
  const auto line = [](const std::string& label, const std::string& value) {
    std::cout << fmt::format("{:<40} {:<10}\n", label, value);
  };
  const auto f2 = [](double v) { return fmt::format("{:.2f}", v); };
  const auto section = [&](const char* title, const char* name, const Summary& s) {
    std::cout << fmt::format("{:-^50}\n", title);
    line(fmt::format("Mean {} (ms):", name), f2(s.mean));
    line(fmt::format("Median {} (ms):", name), f2(s.median));
    line(fmt::format("P99 {} (ms):", name), f2(s.p99));
  };
  std::cout << fmt::format("{:=^50}\n", " Serving Benchmark Result ");
  line("Successful requests:", std::to_string(completed));
  line("Failed requests:", std::to_string(failed));
  line("Maximum request concurrency:", a.max_concurrency > 0 ? std::to_string(a.max_concurrency) : "unbounded");
  line("Request rate configured (RPS):", a.request_rate);
  line("Benchmark duration (s):", f2(duration));
  line("Total input tokens:", std::to_string(input_tokens));
  line("Total generated tokens:", std::to_string(output_tokens));
  line("Request throughput (req/s):", f2(completed / duration));
  line("Output token throughput (tok/s):", f2(double(output_tokens) / duration));
  line("Total Token throughput (tok/s):", f2(double(input_tokens + output_tokens) / duration));
  section("Time to First Token", "TTFT", ttft);
  section("Time per Output Token (excl. 1st token)", "TPOT", tpot);
  section("Inter-token Latency", "ITL", itl);
  section("End-to-end Latency", "E2EL", e2el);
  std::cout << std::string(50, '=') << std::endl;

  if (a.json_file.empty()) return;
  // vLLM's result keys, so that its plotting scripts read these files too.
  json r = {{"backend", "openai"}, {"endpoint", a.endpoint}, {"model_id", model}, {"num_prompts", a.work.num_prompts},
            {"dataset", a.work.dataset}, {"request_rate", a.request_rate},
            {"max_concurrency", a.max_concurrency > 0 ? json(a.max_concurrency) : json()}, {"duration", duration},
            {"completed", completed}, {"failed", failed}, {"total_input_tokens", input_tokens},
            {"total_output_tokens", output_tokens}, {"request_throughput", completed / duration},
            {"output_throughput", double(output_tokens) / duration},
            {"total_token_throughput", double(input_tokens + output_tokens) / duration}};
  const std::pair<const char*, Summary> summaries[] = {{"ttft", ttft}, {"tpot", tpot}, {"itl", itl}, {"e2el", e2el}};
  for (const auto& [name, s] : summaries) {
    r[fmt::format("mean_{}_ms", name)] = s.mean;
    r[fmt::format("median_{}_ms", name)] = s.median;
    r[fmt::format("std_{}_ms", name)] = s.stdev;
    r[fmt::format("p99_{}_ms", name)] = s.p99;
  }
  json input_lens = json::array(), output_lens = json::array(), ttft_list = json::array(), itl_lists = json::array();
  for (size_t i = 0; i < out.size(); ++i) {
    input_lens.push_back(out[i].usage ? out[i].prompt_tokens : int64_t(items[i].prompt.size()));
    output_lens.push_back(out[i].output_tokens);
    ttft_list.push_back(out[i].ttft);
    itl_lists.push_back(out[i].itl);
  }
  r["input_lens"] = input_lens;
  r["output_lens"] = output_lens;
  r["ttfts"] = ttft_list;
  r["itls"] = itl_lists;
  r["errors"] = errors;
  std::ofstream f(a.json_file);
  APUS_CHECK(f.good(), "cannot write --json {}", a.json_file);
  f << r.dump(2) << "\n";
  APUS_CHECK(f.good(), "writing --json {} failed", a.json_file);
}

}  // namespace

void add_bench_serve(CLI::App& bench) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* app = bench.add_subcommand("serve", "Load on a running OpenAI-compatible server (like vLLM's bench serve)");
  a->work.add_to(*app);
  app->add_option(opt("url"), a->url, "the server: http://HOST:PORT (default http://127.0.0.1:8000)");
  app->add_option(opt("model"), a->model, "the served model name (default: the first GET /v1/models lists)");
  app->add_option(opt("endpoint"), a->endpoint, "/v1/completions (token-id prompts, exact lengths) or /v1/chat/completions");
  app->add_option(opt("request-rate"), a->request_rate, "requests per second, Poisson arrivals; inf: all at once");
  app->add_option(opt("max-concurrency"), a->max_concurrency, "most requests in flight (default: unbounded)");
  app->add_option(opt("api-key"), a->api_key, "sent as 'Authorization: Bearer KEY'");
  app->add_option(opt("vocab-size"), a->vocab_size, "token ids are drawn below this (default: found with POST /detokenize)");
  app->add_option(opt("timeout"), a->timeout, "seconds a request may wait for the server at any step before it fails");
  app->add_option(opt("json"), a->json_file, "also write the figures and per-request timings to this JSON file");
  app->callback([a] {
    a->work.check();
    run_serve(*a);
  });
}

}  // namespace apus::cli
