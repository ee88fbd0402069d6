// `apus infer` internals shared by its interactive REPL (infer_repl.cpp) and its data-set run
// (infer_dataset.cpp); the options and the engine are set up in infer_cmd.cpp.
#pragma once
#include <apus/apus.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace apus::cli {

struct InferSession {
  LlmEngine& engine;
  const ChatTemplate& tmpl;
  // The system prompt of a conversation that sets none: --system, else the template's default
  // (the reference's template.default_system, which its --system replaces). nullopt: none.
  std::optional<std::string> default_system;
  std::filesystem::path result_path;  // infer_result/<YYYYMMDD-HHMMSS>.jsonl
  std::string lora_request = "";      // the LoRA adapter every request runs with ("": the base model)
};

// Appends one JSON object as a line of `path` (opened per line, as the reference's
// append_to_jsonl does, so a session killed later loses nothing already written).
void append_jsonl(const std::filesystem::path& path, const nlohmann::ordered_json& obj);
// One result line as the reference writes it: system (null for none), query, response, label
// (data-set runs only), history (the turns before this one, as [[query, response], ...]).
nlohmann::ordered_json result_line(const InferRequest& request, const std::string& response,
                                   const nlohmann::ordered_json* label = nullptr);

void run_repl(const InferSession& session);

// A --val_dataset sample; request.system is nullopt where the line sets none.
struct DatasetSample {
  InferRequest request;
  nlohmann::ordered_json label;  // the line's "response" (null when absent)
};
// Reads the whole file first, so a malformed line fails before the model loads.
std::vector<DatasetSample> read_dataset(const std::string& file);
void run_dataset(const InferSession& session, std::vector<DatasetSample> samples);

}  // namespace apus::cli
