// UTF-8 helpers with Python's notion of characters: templates index, slice and measure strings
// in code points, and Python's str methods decide what counts as whitespace, a letter or a case.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace apus::jinja::unicode {

// Decodes the code point starting at s[i] and advances i. A malformed sequence decodes as U+FFFD
// and advances by one byte, so any byte string (a fuzzed template, say) can be walked safely.
char32_t next(std::string_view s, size_t& i);
void append(std::string& out, char32_t c);

std::u32string decode(std::string_view s);
std::string encode(std::u32string_view s);

size_t length(std::string_view s);  // in code points
bool is_ascii(std::string_view s);

bool is_space(char32_t c);       // str.isspace()
bool is_alnum(char32_t c);       // str.isalnum(); also the \w class together with '_'
bool is_alpha(char32_t c);       // str.isalpha()
bool is_digit(char32_t c);       // str.isdigit() for the characters templates meet
bool is_printable(char32_t c);   // str.isprintable(): decides escaping in repr()
bool is_line_break(char32_t c);  // the separators str.splitlines() splits on
char32_t to_upper(char32_t c);
char32_t to_lower(char32_t c);
bool is_upper(char32_t c);
bool is_lower(char32_t c);

std::string upper(std::string_view s);
std::string lower(std::string_view s);

}  // namespace apus::jinja::unicode
