// `apus generate`: run one prompt of token ids and print the continuation (a test and debug entry
// point that users keep for scripting).
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "engine/generate.h"

namespace apus::cli {

namespace {

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      long v = std::stol(item, &used);
      APUS_CHECK(used == item.size() && v >= 0 && v <= INT32_MAX, "bad token id");
      ids.push_back(int32_t(v));
    } catch (const std::exception&) {
      fail("--prompt-ids: \"{}\" is not a token id (expected comma-separated non-negative integers)", item);
    }
  }
  return ids;
}

}  // namespace

void add_generate(CLI::App& root) {
  auto* app = root.add_subcommand("generate", "Generate a continuation of one prompt");
  auto model = std::make_shared<ModelOptions>();
  auto params = std::make_shared<SamplingParams>();
  auto prompt_ids = std::make_shared<std::string>();
  auto json_out = std::make_shared<bool>(false);
  model->add_to(*app);
  params->temperature = 1.0f;
  app->add_option(opt("prompt-ids"), *prompt_ids, "comma-separated token ids")->required();
  app->add_option(opt("max-tokens") + "," + opt("max-new-tokens"), params->max_tokens, "tokens to generate");
  app->add_option(opt("temperature"), params->temperature, "0 = greedy");
  app->add_option(opt("top-p"), params->top_p);
  app->add_option(opt("top-k"), params->top_k);
  app->add_option(opt("min-p"), params->min_p);
  app->add_option(opt("seed"), params->seed);
  app->add_option(opt("logprobs"), params->logprobs, "report the top N log-probabilities of each step");
  app->add_flag(opt("ignore-eos"), params->ignore_eos);
  app->add_flag(opt("json"), *json_out, "print one JSON object");
  app->callback([=] {
    std::vector<int32_t> prompt = parse_ids(*prompt_ids);
    APUS_CHECK(!prompt.empty(), "--prompt-ids is empty");
    auto backend = make_cpu_backend(model->num_threads());
    auto m = load_model(model->resolved(), *backend);
    for (int32_t id : prompt)
      APUS_CHECK(id < m->config().vocab_size, "prompt token id {} is outside the vocabulary (size {})", id,
                 m->config().vocab_size);
    GenerateResult r = generate(*m, prompt, *params);
    if (*json_out) {
      nlohmann::json j;
      j["token_ids"] = r.token_ids;
      j["finish_reason"] = r.finish_reason;
      if (params->logprobs > 0) {
        nlohmann::json steps = nlohmann::json::array();
        for (const auto& step : r.logprobs) {
          nlohmann::json s = nlohmann::json::array();
          for (auto [id, lp] : step) s.push_back({id, lp});
          steps.push_back(s);
        }
        j["logprobs"] = steps;
      }
      std::cout << j.dump() << "\n";
    } else {
      for (size_t i = 0; i < r.token_ids.size(); ++i) std::cout << (i ? "," : "") << r.token_ids[i];
      std::cout << "\nfinish_reason: " << r.finish_reason << "\n";
    }
  });
}

}  // namespace apus::cli
