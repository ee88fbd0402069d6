// The tokenizer.json pipeline of Hugging Face `tokenizers`: added tokens, normalizer, pre-tokenizer,
// model, post-processor (encode) and decoder (decode).
#pragma once
#include <memory>
#include <string>

#include "text/tokenizer/json_field.h"
#include "text/tokenizer/tokenizer.h"

namespace apus::tok {

// `root` is the parsed tokenizer.json, `file` its path (for error messages).
std::unique_ptr<Backend> make_hf_tokenizer(const json& root, const std::string& file);

}  // namespace apus::tok
