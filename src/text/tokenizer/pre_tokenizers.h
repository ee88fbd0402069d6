// tokenizer.json "pre_tokenizer": Split, ByteLevel, Metaspace, Digits, Punctuation, Whitespace,
// WhitespaceSplit, BertPreTokenizer, CharDelimiterSplit and Sequence, cutting text pieces into words.
#pragma once
#include <array>
#include <memory>
#include <string>
#include <string_view>

#include "text/tokenizer/json_field.h"
#include "text/tokenizer/pieces.h"

namespace apus::tok {

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(PieceList& pl) const = 0;
};

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const JsonField& j);

// GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100.. in order. byte_level_char(b) is the UTF-8 of the character for byte b.
const std::array<std::string, 256>& byte_level_chars();
// The inverse: the byte a byte-level character stands for, or -1.
int byte_level_byte(char32_t c);

}  // namespace apus::tok
