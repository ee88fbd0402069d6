// Splits a template into text and tag tokens exactly as Jinja2's lexer does with
// trim_blocks=True and lstrip_blocks=True, including its whitespace-control corner cases.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace apus::jinja {

enum class TokenType : uint8_t {
  Data,           // template text between tags
  VariableBegin,  // {{
  VariableEnd,    // }}
  BlockBegin,     // {%
  BlockEnd,       // %}
  Name,
  String,    // text holds the unescaped value
  Integer,   // int_value
  Float,     // float_value
  Operator,  // text holds the operator: + - // ( [ ...
  Eof,
};

struct Token {
  TokenType type;
  uint32_t offset;  // into the normalized source
  std::string text;
  int64_t int_value = 0;
  double float_value = 0;

  bool is_op(std::string_view op) const { return type == TokenType::Operator && text == op; }
  bool is_name(std::string_view name) const { return type == TokenType::Name && text == name; }
};

// The source Jinja actually lexes: newlines normalized to \n and one trailing newline dropped
// (keep_trailing_newline=False). Token offsets refer to this text.
std::string normalize_source(std::string_view source);

// Throws TemplateError (with the offset set) on malformed input.
std::vector<Token> tokenize(std::string_view normalized);

// 1-based line and column of an offset, for error messages.
std::pair<int, int> line_col(std::string_view normalized, uint32_t offset);

}  // namespace apus::jinja
