// JSON Lines datasets (`apus infer --val_dataset`, `apus export --dataset`): one object per
// non-blank line, errors naming the file and line.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace apus {

// Calls fn(object, "FILE:LINE") for every non-blank line of `file`. A line that is not JSON, or not
// an object, is an error naming the file and line ("expected a JSON object " + `expected`); errors
// about the file itself start with `option` (the command-line option that named it).
void for_each_jsonl_object(const std::string& file, const std::string& option, const std::string& expected,
                           const std::function<void(const nlohmann::ordered_json&, const std::string&)>& fn);

// A sample's "history": [[query, response], ...] (null: none), checked; `where` names the line.
std::vector<std::pair<std::string, std::string>> jsonl_history(const nlohmann::ordered_json& j,
                                                               const std::string& where);

}  // namespace apus
