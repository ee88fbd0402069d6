// The reference article's offline inference flow: two questions in one batch, then a follow-up
// that continues the second conversation from its history.
//
//   build/apus_example_hangzhou /path/to/Qwen2.5-7B-Instruct [--model_type qwen2_5-7b-instruct]
#include <apus/apus.h>

#include <cstring>
#include <iostream>

#include "core/error.h"

namespace {

void print_history(const apus::History& h) {
  std::cout << "history: [";
  for (size_t i = 0; i < h.size(); ++i) std::cout << (i ? ", " : "") << "('" << h[i].first << "', '" << h[i].second << "')";
  std::cout << "]\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " MODEL_DIR [--model_type TYPE]\n";
    return 2;
  }
  apus::EngineOptions options;
  if (argc >= 4 && std::strcmp(argv[2], "--model_type") == 0) options.model_type = argv[3];
  try {
    auto engine = apus::LlmEngine::load(argv[1], options);
    auto tmpl = apus::get_template(*engine);
    engine->generation_config.max_new_tokens = 256;

    std::vector<apus::InferRequest> requests{{"你好!"}, {"浙江的省会在哪?"}};
    auto responses = apus::inference(*engine, *tmpl, requests);
    for (size_t i = 0; i < requests.size(); ++i)
      std::cout << "query: " << requests[i].query << "\nresponse: " << responses[i].response << "\n";

    apus::History history = responses[1].history;
    requests = {{"这有什么好吃的", history}};
    std::cout << "query: " << requests[0].query << "\nresponse: ";
    std::string shown;
    apus::inference_stream(*engine, *tmpl, requests, [&](const std::vector<apus::InferResponse>& r) {
      std::cout << r[0].response.substr(shown.size()) << std::flush;  // stream the new text
      shown = r[0].response;
      history = r[0].history;
    });
    std::cout << "\n";
    print_history(history);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
