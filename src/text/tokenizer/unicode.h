// UTF-8 and Unicode character classes with the exact definitions Rust's `char` methods use, since
// the reference tokenizer is written against them.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace apus::tok {

// Decodes the code point at p (valid UTF-8 assumed: text is sanitized on entry); *len gets its size.
inline char32_t utf8_decode(const char* p, int* len) {
  const auto b0 = static_cast<unsigned char>(p[0]);
  if (b0 < 0x80) {
    *len = 1;
    return b0;
  }
  const auto b1 = static_cast<unsigned char>(p[1]) & 0x3Fu;
  if (b0 < 0xE0) {
    *len = 2;
    return ((b0 & 0x1Fu) << 6) | b1;
  }
  const auto b2 = static_cast<unsigned char>(p[2]) & 0x3Fu;
  if (b0 < 0xF0) {
    *len = 3;
    return ((b0 & 0x0Fu) << 12) | (b1 << 6) | b2;
  }
  const auto b3 = static_cast<unsigned char>(p[3]) & 0x3Fu;
  *len = 4;
  return ((b0 & 0x07u) << 18) | (b1 << 12) | (b2 << 6) | b3;
}

inline int utf8_len(unsigned char lead) { return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

void utf8_append(std::string& out, char32_t c);

// Length of the valid UTF-8 prefix of s (s.size() when all valid).
size_t utf8_valid_prefix(std::string_view s);

// Appends s to out with each maximal invalid subsequence replaced by U+FFFD, as Rust's
// String::from_utf8_lossy and Python's decode(errors="replace") do.
void append_utf8_lossy(std::string& out, std::string_view s);

// Rust char::is_whitespace: the White_Space property.
bool is_whitespace(char32_t c);
// Rust char::is_numeric: general category Nd, Nl or No.
bool is_numeric(char32_t c);
// tokenizers' is_punc: ASCII punctuation or a general category P*.
bool is_punctuation(char32_t c);
// Unicode general category M* (unicode-normalization's is_combining_mark).
bool is_combining_mark(char32_t c);
// \w of Rust's regex and of Oniguruma alike, UTS #18's word character: Alphabetic, marks, decimal
// digits, connector punctuation and joiners.
bool is_word_char(char32_t c);
// Rust char::to_lowercase (full mapping), appended to out.
void append_lowercase(std::string& out, char32_t c);

}  // namespace apus::tok
