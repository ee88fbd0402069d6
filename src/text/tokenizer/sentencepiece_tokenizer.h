// A bare SentencePiece tokenizer.model through libsentencepiece, behind the same interface.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "text/tokenizer/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace apus::tok {

// Helpers shared by the tokenizers built on libsentencepiece (this one, ChatGLM's).
// The ids of `text` (invalid UTF-8 replaced as the Python tokenizers do), without special tokens.
std::vector<int> sentencepiece_encode(const sentencepiece::SentencePieceProcessor& sp, std::string_view text);
// What decoding does with one id: join the current run of ids (decoded by sentencepiece together),
// skip it without ending the run, or end the run and write `text`.
struct DecodeStep {
  enum Kind { kJoin, kSkip, kBreak } kind;
  std::string_view text = {};
};
std::string sentencepiece_decode(const sentencepiece::SentencePieceProcessor& sp, const std::vector<int32_t>& ids,
                                 const std::function<DecodeStep(int32_t)>& step);

// add_bos / add_eos: whether encode(..., add_special_tokens=true) adds the model's BOS / EOS (as
// LlamaTokenizer's add_bos_token, default true, and add_eos_token, default false). The model's own
// BOS / EOS pieces ("" if it has none) are written to *bos_piece / *eos_piece.
std::unique_ptr<Backend> make_sentencepiece_tokenizer(const std::string& model_file, bool add_bos, bool add_eos,
                                                      std::string* bos_piece, std::string* eos_piece);

}  // namespace apus::tok
