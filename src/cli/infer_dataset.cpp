// `apus infer --val_dataset FILE.jsonl`: every sample is submitted at once, so the engine's
// continuous batching runs them together; the results are written in input order with the fields
// the reference's llm_infer writes for its batched (vllm) backend: system, query, response,
// label (the sample's "response"), history.
#include <unistd.h>

#include <algorithm>
#include <iostream>

#include "cli/infer.h"
#include "core/error.h"
#include "core/jsonl.h"

namespace apus::cli {

// One sample per non-blank line: {"query": ..., "response": label, "history": [[q, r], ...], "system": ...}.
std::vector<DatasetSample> read_dataset(const std::string& file) {
  std::vector<DatasetSample> samples;
  for_each_jsonl_object(file, "--val_dataset", "like {\"query\": ..., \"response\": ...}",
                        [&](const nlohmann::ordered_json& j, const std::string& where) {
    APUS_CHECK(j.contains("query") && j["query"].is_string(), "{}: \"query\" must be a string", where);
    DatasetSample s;
    s.request.query = j["query"].get<std::string>();
    s.request.history = jsonl_history(j.value("history", nlohmann::ordered_json()), where);
    const nlohmann::ordered_json system = j.value("system", nlohmann::ordered_json());
    APUS_CHECK(system.is_null() || system.is_string(), "{}: \"system\" must be a string or null", where);
    if (system.is_string()) s.request.system = system.get<std::string>();
    s.label = j.value("response", nlohmann::ordered_json());
    samples.push_back(std::move(s));
  });
  APUS_CHECK(!samples.empty(), "--val_dataset: {} holds no samples", file);
  return samples;
}

namespace {

// "[#########-----------]  45/100" on stderr, redrawn in place; only on a terminal, so logs and
// pipes get no carriage-return noise.
class ProgressBar {
 public:
  explicit ProgressBar(size_t total) : total_(total), on_(isatty(STDERR_FILENO) == 1) { draw(0); }
  ~ProgressBar() {
    if (on_) std::cerr << "\n";
  }
  void draw(size_t done) {
    if (!on_ || done == shown_) return;
    shown_ = done;
    const size_t width = 30, filled = width * done / total_;
    std::cerr << "\r[" << std::string(filled, '#') << std::string(width - filled, '-') << "] " << done << "/" << total_
              << std::flush;
  }

 private:
  size_t total_;
  bool on_;
  size_t shown_ = size_t(-1);
};

}  // namespace

void run_dataset(const InferSession& s, std::vector<DatasetSample> samples) {
  std::vector<InferRequest> requests;
  for (DatasetSample& x : samples) {
    if (!x.request.system) x.request.system = s.default_system;
    x.request.lora_request = s.lora_request;
    requests.push_back(x.request);
  }
  std::vector<InferResponse> responses;
  {
    ProgressBar bar(samples.size());
    inference_stream(s.engine, s.tmpl, requests, [&](const std::vector<InferResponse>& r) {
      const auto done = size_t(std::count_if(r.begin(), r.end(), [](const auto& x) { return !x.finish_reason.empty(); }));
      bar.draw(done);
      if (done == r.size()) responses = r;  // the last call; copying every step would cost O(n) each
    });
  }
  for (size_t i = 0; i < samples.size(); ++i)
    append_jsonl(s.result_path, result_line(samples[i].request, responses[i].response, &samples[i].label));
  std::cerr << samples.size() << " results written to " << s.result_path.string() << "\n";
}

}  // namespace apus::cli
