// A bare SentencePiece tokenizer.model through libsentencepiece, behind the same interface.
#pragma once
#include <memory>
#include <string>

#include "text/tokenizer/tokenizer.h"

namespace apus::tok {

// add_bos / add_eos: whether encode(..., add_special_tokens=true) adds the model's BOS / EOS (as
// LlamaTokenizer's add_bos_token, default true, and add_eos_token, default false). The model's own
// BOS / EOS pieces ("" if it has none) are written to *bos_piece / *eos_piece.
std::unique_ptr<Backend> make_sentencepiece_tokenizer(const std::string& model_file, bool add_bos, bool add_eos,
                                                      std::string* bos_piece, std::string* eos_piece);

}  // namespace apus::tok
