// tokenizer.json "normalizer": NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents, Replace, Prepend,
// BertNormalizer and Sequence. Each runs on one piece of text between added tokens.
#pragma once
#include <memory>
#include <string>
#include <string_view>

#include "text/tokenizer/json_field.h"

namespace apus::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Appends the normalized form of `in` to `out`.
  virtual void normalize(std::string_view in, std::string& out) const = 0;
};

// Throws apus::Error naming the field for malformed or unsupported normalizers.
std::unique_ptr<Normalizer> make_normalizer(const JsonField& j);

}  // namespace apus::tok
