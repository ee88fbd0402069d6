// `apus client`: the reference tool's inference_client (ms-swift) from the command line. One chat
// request (or, with --completion, a completions request) to an OpenAI-compatible server, the
// answer streamed to stdout as it arrives; without QUERY, a conversation read line by line from
// standard input (a terminal or a pipe), with history.
#include <algorithm>
#include <cctype>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "server/http_client.h"

namespace apus::cli {

namespace {

using nlohmann::json;

struct ClientArgs {
  std::string url = "http://127.0.0.1:8000";
  std::string model, api_key, system, query;
  int max_tokens = 0;
  double temperature = 1.0;
  double timeout = 600;
  CLI::Option* max_tokens_opt = nullptr;
  CLI::Option* temperature_opt = nullptr;
  bool no_stream = false, completion = false;
};

class Client {
 public:
  explicit Client(const ClientArgs& a) : a_(a), http_(api_base_url(a.url), a.api_key, a.timeout) {
    model_ = a.model.empty() ? first_served_model(http_) : a.model;
  }

  // Sends `input` (chat: the messages; completions: the prompt) and writes the answer to stdout
  // as it comes. Returns the answer; throws apus::Error with the server's message on failure.
  std::string ask(const json& input) {
    json body = {{"model", model_}, {"stream", !a_.no_stream}};
    body[a_.completion ? "prompt" : "messages"] = input;
    if (a_.max_tokens_opt->count() > 0) body["max_tokens"] = a_.max_tokens;
    if (a_.temperature_opt->count() > 0) body["temperature"] = a_.temperature;
    const std::string path = a_.completion ? "/v1/completions" : "/v1/chat/completions";
    std::string text, error;
    const auto show = [&](const std::string& piece) {
      std::cout << piece << std::flush;
      text += piece;
    };
    // Text that is not UTF-8 (typed in another encoding) goes as U+FFFD rather than failing here.
    const std::string payload = body.dump(-1, ' ', false, json::error_handler_t::replace);
    server::ClientResponse r;
    try {
      r = a_.no_stream ? http_.post(path, payload)
                       : http_.post_stream(path, payload, [&](const std::string& data) {
                           if (data == "[DONE]") return true;
                           const json chunk = json::parse(data, nullptr, false);
                           error = error_message(chunk);
                           if (!error.empty()) return false;
                           show(choice_text(chunk));
                           return true;
                         });
    } catch (const Error&) {  // the connection failed: end the half-shown answer's line first
      if (!text.empty()) std::cout << std::endl;
      throw;
    }
    if (r.status != 200) fail("POST {} failed: {}", path, describe_failure(r));
    if (!error.empty()) {
      if (!text.empty()) std::cout << std::endl;
      fail("POST {} failed while streaming: {}", path, error);
    }
    if (!r.body.empty()) {  // --no-stream, or a server that answered a stream request whole
      const json reply = json::parse(r.body, nullptr, false);
      APUS_CHECK(reply.is_object() && reply.contains("choices"), "POST {}: the answer is not a completion: {}", path,
                 r.body.substr(0, 300));
      show(choice_text(reply));
    }
    return text;
  }

 private:
  const ClientArgs& a_;
  server::HttpClient http_;
  std::string model_;
};

json user_turn(const std::string& content) { return {{"role", "user"}, {"content", content}}; }

json conversation_start(const ClientArgs& a) {
  json messages = json::array();
  if (!a.system.empty()) messages.push_back({{"role", "system"}, {"content", a.system}});
  return messages;
}

std::string command_of(std::string s) {  // the reference's query.strip().lower()
  const char* space = " \t\r\n\f\v";
  s.erase(0, std::min(s.size(), s.find_first_not_of(space)));
  s.erase(s.find_last_not_of(space) + 1);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

// The conversation: `<<< ` prompts, `exit` / `quit` (or the end of input) to leave, `clear` to
// drop the history. A failed turn is reported and left out of the history.
void run_interactive(const ClientArgs& a, Client& client) {
  std::cerr << "Input `exit` or `quit` to exit the conversation (or press Ctrl-D).\n"
               "Input `clear` to clear the history.\n";
  if (a.completion) std::cerr << "--completion: every line is a prompt of its own (no history).\n";
  json history = conversation_start(a);
  for (;;) {
    std::cout << "<<< " << std::flush;
    std::string line;
    if (!std::getline(std::cin, line)) {
      std::cout << std::endl;
      return;
    }
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::string cmd = command_of(line);
    if (cmd == "exit" || cmd == "quit") return;
    if (cmd == "clear") {
      history = conversation_start(a);
      continue;
    }
    if (cmd.empty()) continue;
    json messages = history;
    messages.push_back(user_turn(line));
    try {
      const std::string answer = client.ask(a.completion ? json(line) : messages);
      std::cout << "\n" << std::string(50, '-') << std::endl;
      if (!a.completion) {
        history = std::move(messages);
        history.push_back({{"role", "assistant"}, {"content", answer}});
      }
    } catch (const Error& e) {
      std::cout << std::flush;
      std::cerr << "error: " << e.what() << std::endl;
    }
  }
}

}  // namespace

void add_client(CLI::App& root) {
  auto a = std::make_shared<ClientArgs>();
  CLI::App* app = root.add_subcommand("client", "Ask an OpenAI-compatible server (apus deploy, vLLM, ...); "
                                                "without QUERY, a conversation read from standard input");
  app->add_option("query", a->query, "the question (chat) or the prompt (--completion)");
  app->add_option(opt("url"), a->url, "the server: http://HOST:PORT (default http://127.0.0.1:8000)");
  app->add_option(opt("model"), a->model, "the served model name (default: the first GET /v1/models lists)");
  app->add_option(opt("api-key"), a->api_key, "sent as 'Authorization: Bearer KEY'");
  app->add_option(opt("system"), a->system, "system prompt (chat)");
  a->max_tokens_opt = app->add_option(opt("max-tokens"), a->max_tokens, "longest answer in tokens (default: the server's)");
  a->temperature_opt = app->add_option(opt("temperature"), a->temperature, "sampling temperature (default: the server's)");
  app->add_option(opt("timeout"), a->timeout, "seconds to wait for the server at any step before giving up");
  app->add_flag(opt("no-stream"), a->no_stream, "wait for the whole answer instead of streaming it");
  app->add_flag(opt("completion"), a->completion, "a completions request (raw prompt) instead of a chat");
  app->callback([a] {
    APUS_CHECK(a->max_tokens_opt->count() == 0 || a->max_tokens > 0, "--max-tokens must be positive");
    Client client(*a);
    if (a->query.empty()) return run_interactive(*a, client);
    json messages = conversation_start(*a);
    messages.push_back(user_turn(a->query));
    client.ask(a->completion ? json(a->query) : messages);
    std::cout << std::endl;
  });
}

}  // namespace apus::cli
