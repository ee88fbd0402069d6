// `apus generate`: run one prompt (token ids, text, or a chat conversation) and print the
// continuation (a test and debug entry point that users keep for scripting).
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

struct GenerateArgs {
  ModelOptions model;
  SamplingParams params;
  TemplateOptions tmpl;
  CLI::Option *prompt_ids_opt = nullptr, *prompt_opt = nullptr, *chat_opt = nullptr;
  std::string prompt_ids, prompt, chat;
  bool json = false;
};

void run_generate(const GenerateArgs& a) {
  const int given = int(a.prompt_ids_opt->count() > 0) + int(a.prompt_opt->count() > 0) + int(a.chat_opt->count() > 0);
  APUS_CHECK(given == 1, "give exactly one of --prompt-ids, --prompt and --chat");
  const std::string& dir = a.model.load.model_dir;

  std::unique_ptr<Tokenizer> tok;
  Request req;
  req.params = a.params;
  std::string prompt_text;
  if (a.prompt_ids_opt->count()) {
    req.prompt = parse_ids(a.prompt_ids);
    APUS_CHECK(!req.prompt.empty(), "--prompt-ids is empty");
    if (has_tokenizer(dir)) tok = Tokenizer::load(dir);  // only for the output text
  } else if (a.prompt_opt->count()) {
    tok = load_tokenizer(dir, "--prompt");
    req.prompt = tok->encode(a.prompt, true);  // as vLLM tokenizes a completion prompt
    APUS_CHECK(!req.prompt.empty(), "--prompt encodes to no tokens");
  } else {
    tok = load_tokenizer(dir, "--chat");
    auto tmpl = a.tmpl.make(*tok, dir);
    RenderedPrompt p = tmpl->render(a.tmpl.conversation(a.chat, *tmpl), true);
    prompt_text = std::move(p.text);
    req.prompt = std::move(p.ids);
    req.stop = a.tmpl.stop_words(*tmpl);
    req.stop_token_ids = special_stop_ids(*tok, req.stop);
  }

  const auto group = a.model.load_group();
  DecoderModel* m = &group->model();
  const std::vector<int32_t> prompt = req.prompt;
  GenerateResult out = generate(*m, std::move(req), tok.get());

  if (a.json) {
    nlohmann::json j;
    j["token_ids"] = out.token_ids;
    j["finish_reason"] = out.finish_reason;
    if (a.params.logprobs > 0) {
      nlohmann::json steps = nlohmann::json::array();
      for (const auto& step : out.logprobs) {
        nlohmann::json s = nlohmann::json::array();
        for (auto [id, lp] : step) s.push_back({id, lp});
        steps.push_back(s);
      }
      j["logprobs"] = steps;
    }
    j["prompt_token_ids"] = prompt;
    if (tok) j["text"] = out.text;
    if (a.chat_opt->count()) j["prompt_text"] = prompt_text;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else if (a.prompt_ids_opt->count() || !tok) {
    for (size_t i = 0; i < out.token_ids.size(); ++i) std::cout << (i ? "," : "") << out.token_ids[i];
    std::cout << "\nfinish_reason: " << out.finish_reason << "\n";
  } else {
    std::cout << out.text << "\nfinish_reason: " << out.finish_reason << "\n";
  }
}

}  // namespace

void add_generate(CLI::App& root) {
  auto* app = root.add_subcommand("generate", "Generate a continuation of one prompt");
  auto a = std::make_shared<GenerateArgs>();
  a->model.add_to(*app, false);
  a->params.temperature = 1.0f;
  a->prompt_ids_opt = app->add_option(opt("prompt-ids"), a->prompt_ids, "comma-separated token ids");
  a->prompt_opt = app->add_option(opt("prompt"), a->prompt, "text, tokenized with the special tokens (BOS) added");
  a->chat_opt = app->add_option(opt("chat"), a->chat,
                                "a JSON messages array, rendered with the chat template and its generation prompt");
  a->tmpl.add_to(*app);
  app->add_option(opt("max-tokens") + "," + opt("max-new-tokens"), a->params.max_tokens, "tokens to generate");
  app->add_option(opt("temperature"), a->params.temperature, "0 = greedy");
  app->add_option(opt("top-p"), a->params.top_p);
  app->add_option(opt("top-k"), a->params.top_k);
  app->add_option(opt("min-p"), a->params.min_p);
  app->add_option(opt("seed"), a->params.seed);
  app->add_option(opt("logprobs"), a->params.logprobs, "report the top N log-probabilities of each step");
  app->add_flag(opt("ignore-eos"), a->params.ignore_eos);
  app->add_flag(opt("json"), a->json, "print one JSON object");
  app->callback([a] { run_generate(*a); });
}

}  // namespace apus::cli
