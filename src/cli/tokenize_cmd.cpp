// `apus tokenize`: text (or a chat conversation) to token ids, for checking prompts against the
// reference tools. DIR needs only the tokenizer files.
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"

namespace apus::cli {

namespace {

struct TokenizeArgs {
  std::string dir, text, chat;
  bool add_special_tokens = false;
  TemplateOptions tmpl;
  CLI::Option *text_opt = nullptr, *chat_opt = nullptr;
};

void run_tokenize(const TokenizeArgs& a) {
  APUS_CHECK((a.text_opt->count() > 0) != (a.chat_opt->count() > 0), "give either TEXT or --chat");
  auto tok = load_tokenizer(a.dir, "tokenize");
  nlohmann::json j;
  if (a.text_opt->count()) {
    j["ids"] = tok->encode(a.text, a.add_special_tokens);
  } else {
    auto tmpl = a.tmpl.make(*tok, a.dir);
    RenderedPrompt p = tmpl->render(a.tmpl.conversation(a.chat, *tmpl), true);
    j["ids"] = p.ids;
    j["text"] = p.text;
    j["template"] = tmpl->name();
    j["stop"] = a.tmpl.stop_words(*tmpl);
  }
  std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
}

}  // namespace

void add_tokenize(CLI::App& root) {
  auto* app = root.add_subcommand("tokenize", "Print the token ids of a text or of a rendered conversation");
  auto a = std::make_shared<TokenizeArgs>();
  app->add_option(opt("model") + "," + opt("model-id-or-path"), a->dir, "directory with tokenizer.json or tokenizer.model")
      ->required();
  a->text_opt = app->add_option("text", a->text, "the text to encode");
  app->add_flag(opt("add-special-tokens"), a->add_special_tokens, "add BOS/EOS as the tokenizer's post-processor does");
  a->chat_opt = app->add_option(opt("chat"), a->chat, "a JSON messages array, rendered with its generation prompt");
  a->tmpl.add_to(*app);
  app->callback([a] { run_tokenize(*a); });
}

}  // namespace apus::cli
