#include "core/jsonl.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>

#include "core/error.h"

namespace apus {

void for_each_jsonl_object(const std::string& file, const std::string& option, const std::string& expected,
                           const std::function<void(const nlohmann::ordered_json&, const std::string&)>& fn) {
  std::ifstream in(file);
  APUS_CHECK(in.good(), "{}: cannot open {}", option, file);
  std::string text;
  for (size_t n = 1; std::getline(in, text); ++n) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;  // e.g. a trailing blank line
    const std::string where = fmt::format("{}:{}", file, n);
    nlohmann::ordered_json j;
    try {
      j = nlohmann::ordered_json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail("{}: invalid JSON ({})", where, e.what());
    }
    APUS_CHECK(j.is_object(), "{}: expected a JSON object {}", where, expected);
    fn(j, where);
  }
  APUS_CHECK(!in.bad(), "{}: cannot read {}", option, file);
}

std::vector<std::pair<std::string, std::string>> jsonl_history(const nlohmann::ordered_json& j,
                                                               const std::string& where) {
  std::vector<std::pair<std::string, std::string>> h;
  if (j.is_null()) return h;
  const bool ok = j.is_array() && std::all_of(j.begin(), j.end(), [](const auto& turn) {
                    return turn.is_array() && turn.size() == 2 && turn[0].is_string() && turn[1].is_string();
                  });
  APUS_CHECK(ok, "{}: \"history\" must be a list of [query, response] string pairs", where);
  for (const auto& turn : j) h.emplace_back(turn[0].template get<std::string>(), turn[1].template get<std::string>());
  return h;
}

}  // namespace apus
