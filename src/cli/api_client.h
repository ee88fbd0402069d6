// What `apus client` and `apus bench serve` share on top of server/http_client.h: the --url as
// users paste it, the served model's name, and errors in the words the server used.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "server/http_client.h"

namespace apus::cli {

// http://HOST:PORT, from --url with or without the `/v1` that `apus deploy` prints (and a
// trailing slash), since every request names its whole path (/v1/models, /v1/completions, ...).
std::string api_base_url(const std::string& url);

// The first id GET /v1/models lists: what a request names when the user names no model.
std::string first_served_model(server::HttpClient& client);

// "HTTP 404: The model `x` does not exist." — OpenAI's error.message when the body has one,
// else the body itself (shortened).
std::string describe_failure(const server::ClientResponse& r);

// An `{"error": {...}}` object (a body, or an event in a stream, where a server reports a
// failure that came after the 200): its message; empty when `j` is not one.
std::string error_message(const nlohmann::json& j);

// The first choice's text in a reply or a streamed chunk: chat's message.content or
// delta.content, or completions' text; "" when there is none (a role-only or usage chunk).
std::string choice_text(const nlohmann::json& j);

}  // namespace apus::cli
