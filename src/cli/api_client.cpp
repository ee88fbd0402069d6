#include "cli/api_client.h"

#include <fmt/format.h>

#include "core/error.h"

namespace apus::cli {

std::string api_base_url(const std::string& url) {
  std::string u = url;
  while (!u.empty() && u.back() == '/') u.pop_back();
  if (u.size() >= 3 && u.compare(u.size() - 3, 3, "/v1") == 0) u.resize(u.size() - 3);
  return u;
}

std::string error_message(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("error")) return "";
  const auto& e = j["error"];
  if (e.is_object() && e.contains("message") && e["message"].is_string()) return e["message"].get<std::string>();
  return e.dump();
}

std::string describe_failure(const server::ClientResponse& r) {
  std::string message = error_message(nlohmann::json::parse(r.body, nullptr, false));
  if (message.empty()) message = r.body.size() > 300 ? r.body.substr(0, 300) + "..." : r.body;
  if (message.empty()) message = "(no body)";
  return fmt::format("HTTP {}: {}", r.status, message);
}

std::string choice_text(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("choices") || !j["choices"].is_array() || j["choices"].empty()) return "";
  const nlohmann::json& c = j["choices"][0];
  if (!c.is_object()) return "";
  for (const char* field : {"delta", "message"})  // content may be null or left out
    if (c.contains(field) && c[field].is_object() && c[field].contains("content") && c[field]["content"].is_string())
      return c[field]["content"].get<std::string>();
  if (c.contains("text") && c["text"].is_string()) return c["text"].get<std::string>();
  return "";
}

std::string first_served_model(server::HttpClient& client) {
  const server::ClientResponse r = client.get("/v1/models");
  if (r.status != 200) fail("GET /v1/models failed: {}", describe_failure(r));
  const auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (!j.is_object() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() ||
      !j["data"][0].is_object() || !j["data"][0].contains("id") || !j["data"][0]["id"].is_string())
    fail("GET /v1/models answered no model id (give --model NAME): {}", r.body.substr(0, 300));
  return j["data"][0]["id"].get<std::string>();
}

}  // namespace apus::cli
