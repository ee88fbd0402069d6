// tokenizer.json "decoder": ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, WordPiece,
// BPEDecoder and Sequence. Like tokenizers, each step rewrites the list of token strings and the
// result is their concatenation.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "text/tokenizer/json_field.h"

namespace apus::tok {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

std::unique_ptr<Decoder> make_decoder(const JsonField& j);

}  // namespace apus::tok
