// The OpenAI request bodies (chat completions, completions) as Apus reads them: JSON in, a checked
// OpenAIRequest out, or an ApiError naming the offending field. Pure functions of the body, with
// no model or tokenizer, so that they can be fuzzed on their own (tests/fuzz/).
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace apus::server {

// An error the client sees as {"error": {"message", "type", "param", "code"}} with `status`.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string param = {}, std::string code = {}, std::string type = {});
  int status;
  std::string param, code, type;
  std::string body() const;  // the JSON error object
};

enum class Endpoint { Chat, Completion };

// One completions prompt: text, or token ids.
struct PromptInput {
  std::string text;
  std::vector<int32_t> ids;
  bool is_ids = false;
};

struct OpenAIRequest {
  Endpoint endpoint = Endpoint::Chat;
  std::string model;                 // "" when not given
  nlohmann::json messages;           // chat: the messages array (checked by parse_messages later)
  std::vector<PromptInput> prompts;  // completions: one or more prompts
  std::optional<int> max_tokens;     // also max_completion_tokens
  float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f;
  int top_k = 0;  // <= 0: off (vLLM's -1 too)
  int n = 1;
  bool stream = false, include_usage = false;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  std::optional<int64_t> seed;
  float presence_penalty = 0.0f, frequency_penalty = 0.0f, repetition_penalty = 1.0f;
  // Top-N log-probabilities per generated token; nullopt: none. Chat: logprobs=true (+top_logprobs);
  // completions: logprobs=N.
  std::optional<int> logprobs;
  bool echo = false;  // completions: the prompt in front of the reply
  bool ignore_eos = false;
  int min_tokens = 0;
  bool skip_special_tokens = true, include_stop_str_in_output = false;
  bool add_generation_prompt = true;
  nlohmann::json chat_template_kwargs = nlohmann::json::object();
  std::vector<std::pair<int32_t, float>> logit_bias;
  std::string user;
};

constexpr int kMaxLogprobs = 20;
constexpr int kMaxN = 128;

// A request body that must be a JSON object; ApiError(400) for malformed JSON, nesting deeper
// than 64 levels, or another JSON type.
nlohmann::json parse_json_object(std::string_view body);

// Throws ApiError(400) for malformed JSON, wrong types and out-of-range values. Fields this server
// does not know are ignored, as OpenAI clients send more than any one server reads.
OpenAIRequest parse_openai_request(Endpoint endpoint, std::string_view body);

}  // namespace apus::server
