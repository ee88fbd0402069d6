// Calibration data for quantization (apus export --quant_bits): texts from a JSONL file or the
// built-in multilingual text, tokenized and cut into sample windows of at most `seqlen` tokens.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace apus {

class Tokenizer;

// One text per non-blank line of `file`: the line's "text" string, else its "system", "history"
// ([[query, response], ...]), "query" and "response" strings (apus infer --val_dataset's fields)
// joined by newlines. Errors name the file and line.
std::vector<std::string> read_calibration_jsonl(const std::string& file);

// A few KB of varied text embedded in the binary (English, Chinese, French, German, Spanish,
// Russian, Japanese, Arabic, code, numbers) for when no --dataset is given.
std::vector<std::string> builtin_calibration_texts();

// The texts tokenized (no special tokens) and joined, separated by the EOS token when the tokenizer
// has one. With at least n_samples * seqlen tokens: n_samples windows of seqlen at deterministic
// pseudo-random offsets (`seed`); otherwise consecutive windows of seqlen (the last one shorter,
// when it has at least 16 tokens), at most n_samples of them.
std::vector<std::vector<int32_t>> calibration_samples(const Tokenizer& tokenizer, const std::vector<std::string>& texts,
                                                      int n_samples, int seqlen, uint64_t seed = 0);

}  // namespace apus
