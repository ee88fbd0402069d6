// Qwen v1's tokenizer (remote code tokenization_qwen.py): a tiktoken byte-level BPE read from
// qwen.tiktoken (base64 of a token's bytes and its rank per line), Qwen's pre-tokenizer regex and
// special tokens at fixed ids after the ranks.
#pragma once
#include <memory>
#include <string>

#include "text/tokenizer/tokenizer.h"

namespace apus::tok {

std::unique_ptr<Backend> make_qwen_tiktoken_tokenizer(const std::string& tiktoken_file);

}  // namespace apus::tok
