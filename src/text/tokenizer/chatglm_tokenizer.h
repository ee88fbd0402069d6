// ChatGLM2/3's tokenizer (remote code tokenization_chatglm.py): a SentencePiece tokenizer.model plus
// the GLM special tokens [MASK] [gMASK] [sMASK] sop eop <|system|> <|user|> <|assistant|>
// <|observation|>, numbered after the sentencepiece vocabulary; encoding with special tokens puts
// [gMASK] sop in front.
#pragma once
#include <memory>
#include <string>

#include "text/tokenizer/tokenizer.h"

namespace apus::tok {

// *eos_piece: the model's EOS piece (ChatGLMTokenizer's eos_token "</s>").
std::unique_ptr<Backend> make_chatglm_tokenizer(const std::string& model_file, std::string* eos_piece);

}  // namespace apus::tok
