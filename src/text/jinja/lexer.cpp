#include "text/jinja/lexer.h"

#include <cerrno>
#include <cstdlib>

#include "text/jinja/template_error.h"
#include "text/jinja/unicode.h"

namespace apus::jinja {
namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

[[noreturn]] void fail_at(size_t offset, const std::string& msg) {
  TemplateError e(msg);
  e.set_offset_if_unknown(static_cast<uint32_t>(offset));
  throw e;
}

// Python's unicode-escape decoding of a string literal's body (what Jinja's lexer applies).
std::string unescape(std::string_view s, size_t offset) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c != '\\' || i + 1 == s.size()) {
      out += c;
      continue;
    }
    char e = s[++i];
    auto hex = [&](size_t n) -> char32_t {
      char32_t v = 0;
      for (size_t k = 1; k <= n; ++k) {
        if (i + k >= s.size() || !is_hex(s[i + k])) fail_at(offset, "truncated escape in string literal");
        char h = s[i + k];
        v = v * 16 + char32_t(is_digit(h) ? h - '0' : (h | 0x20) - 'a' + 10);
      }
      i += n;
      return v;
    };
    switch (e) {
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case '\n': break;  // line continuation
      case 'x': unicode::append(out, hex(2)); break;
      case 'u': unicode::append(out, hex(4)); break;
      case 'U': {
        char32_t v = hex(8);
        if (v > 0x10ffff) fail_at(offset, "illegal Unicode character in string literal");
        unicode::append(out, v);
        break;
      }
      case 'N': fail_at(offset, "\\N{...} escapes are not supported");
      default:
        if (e >= '0' && e <= '7') {
          char32_t v = char32_t(e - '0');
          for (int k = 0; k < 2 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7'; ++k)
            v = v * 8 + char32_t(s[++i] - '0');
          unicode::append(out, v);
        } else {
          out += '\\';
          out += e;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string_view src) : src_(src) {}

  std::vector<Token> run() {
    while (pos_ < src_.size()) lex_root();
    push(TokenType::Eof, src_.size());
    return std::move(tokens_);
  }

 private:
  enum class Tag { Variable, Block, Comment, Raw };

  void push(TokenType type, size_t offset, std::string text = {}) {
    tokens_.push_back(Token{type, static_cast<uint32_t>(offset), std::move(text)});
  }

  bool starts(size_t p, std::string_view s) const { return src_.substr(p, s.size()) == s; }

  // Length of the run of (Unicode) whitespace at p, as Python's \s* matches it.
  size_t whitespace_run(size_t p) const {
    size_t q = p;
    while (q < src_.size()) {
      size_t next = q;
      if (!unicode::is_space(unicode::next(src_, next))) break;
      q = next;
    }
    return q - p;
  }

  bool all_whitespace(std::string_view s) const {
    for (size_t i = 0; i < s.size();)
      if (!unicode::is_space(unicode::next(s, i))) return false;
    return true;
  }

  std::string rstrip(std::string_view s) const {
    // Walk forward remembering where the last non-space character ends (UTF-8 can't be walked back).
    size_t keep = 0;
    for (size_t i = 0; i < s.size();) {
      if (!unicode::is_space(unicode::next(s, i))) keep = i;
    }
    return std::string(s.substr(0, keep));
  }

  // Applies `{%-`, `{%+` and lstrip_blocks to the text in front of a tag, then emits it.
  void emit_data(size_t start, std::string_view text, char sign, bool lstrip_allowed) {
    std::string data;
    if (sign == '-') {
      data = rstrip(text);
    } else {
      data = std::string(text);
      if (sign != '+' && lstrip_allowed) {
        size_t nl = data.rfind('\n');
        size_t line_begin = nl == std::string::npos ? 0 : nl + 1;
        if ((line_begin > 0 || line_starting_) && line_begin < data.size() &&
            all_whitespace(std::string_view(data).substr(line_begin)))
          data.resize(line_begin);
      }
    }
    if (!data.empty()) push(TokenType::Data, start, std::move(data));
  }

  // The end of a `{% raw %}` opener at p, or npos when the block tag at p is not one.
  size_t raw_begin_end(size_t p) const {
    size_t q = p + 2;
    if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) ++q;
    q += whitespace_run(q);
    if (!starts(q, "raw")) return std::string::npos;
    q += 3;
    q += whitespace_run(q);
    if (starts(q, "-%}")) return q + 3 + whitespace_run(q + 3);
    if (starts(q, "%}")) return q + 2;
    return std::string::npos;
  }

  void lex_root() {
    size_t tag = pos_;
    while (tag + 1 < src_.size() &&
           !(src_[tag] == '{' && (src_[tag + 1] == '{' || src_[tag + 1] == '%' || src_[tag + 1] == '#')))
      ++tag;
    if (tag + 1 >= src_.size()) {
      push(TokenType::Data, pos_, std::string(src_.substr(pos_)));
      pos_ = src_.size();
      return;
    }
    char sign = tag + 2 < src_.size() && (src_[tag + 2] == '-' || src_[tag + 2] == '+') ? src_[tag + 2] : 0;
    Tag kind = src_[tag + 1] == '{' ? Tag::Variable : src_[tag + 1] == '#' ? Tag::Comment : Tag::Block;
    size_t raw_end = kind == Tag::Block ? raw_begin_end(tag) : std::string::npos;
    if (raw_end != std::string::npos) kind = Tag::Raw;
    emit_data(pos_, src_.substr(pos_, tag - pos_), sign, kind != Tag::Variable);

    size_t after = tag + 2 + (sign ? 1 : 0);
    switch (kind) {
      case Tag::Raw:
        line_starting_ = src_[raw_end - 1] == '\n';
        pos_ = raw_end;
        lex_raw_body(tag);
        return;
      case Tag::Comment:
        pos_ = after;
        lex_comment(tag);
        return;
      case Tag::Variable:
      case Tag::Block:
        line_starting_ = false;
        push(kind == Tag::Block ? TokenType::BlockBegin : TokenType::VariableBegin, tag);
        pos_ = after;
        lex_tag(kind == Tag::Block);
        return;
    }
  }

  void lex_comment(size_t start) {
    for (size_t p = pos_; p < src_.size(); ++p) {
      size_t end = std::string::npos;
      if (starts(p, "+#}")) {
        end = p + 3;
      } else if (starts(p, "-#}")) {
        end = p + 3 + whitespace_run(p + 3);
      } else if (starts(p, "#}")) {
        end = p + 2 + (p + 2 < src_.size() && src_[p + 2] == '\n' ? 1 : 0);  // trim_blocks
      }
      if (end != std::string::npos) {
        line_starting_ = src_[end - 1] == '\n';
        pos_ = end;
        return;
      }
    }
    fail_at(start, "Missing end of comment tag");
  }

  void lex_raw_body(size_t start) {
    for (size_t p = pos_; p + 1 < src_.size(); ++p) {
      if (!starts(p, "{%")) continue;
      size_t q = p + 2;
      char sign = q < src_.size() && (src_[q] == '-' || src_[q] == '+') ? src_[q] : 0;
      if (sign) ++q;
      q += whitespace_run(q);
      if (!starts(q, "endraw")) continue;
      q += 6;
      q += whitespace_run(q);
      size_t end;
      if (starts(q, "+%}")) {
        end = q + 3;
      } else if (starts(q, "-%}")) {
        end = q + 3 + whitespace_run(q + 3);
      } else if (starts(q, "%}")) {
        end = q + 2 + (q + 2 < src_.size() && src_[q + 2] == '\n' ? 1 : 0);
      } else {
        continue;
      }
      emit_data(pos_, src_.substr(pos_, p - pos_), sign, true);
      line_starting_ = src_[end - 1] == '\n';
      pos_ = end;
      return;
    }
    fail_at(start, "Missing end of raw directive");
  }

  // The closing delimiter at pos_, if any: its end offset, or npos.
  size_t tag_end(bool block) const {
    if (block) {
      if (starts(pos_, "+%}")) return pos_ + 3;
      if (starts(pos_, "-%}")) return pos_ + 3 + whitespace_run(pos_ + 3);
      if (starts(pos_, "%}")) return pos_ + 2 + (pos_ + 2 < src_.size() && src_[pos_ + 2] == '\n' ? 1 : 0);
    } else {
      if (starts(pos_, "-}}")) return pos_ + 3 + whitespace_run(pos_ + 3);
      if (starts(pos_, "}}")) return pos_ + 2;
    }
    return std::string::npos;
  }

  void lex_tag(bool block) {
    std::string balance;  // closers still expected; delimiters only end the tag when it is empty
    while (pos_ < src_.size()) {
      if (balance.empty()) {
        size_t end = tag_end(block);
        if (end != std::string::npos) {
          push(block ? TokenType::BlockEnd : TokenType::VariableEnd, pos_);
          line_starting_ = src_[end - 1] == '\n';
          pos_ = end;
          return;
        }
      }
      if (size_t ws = whitespace_run(pos_)) {
        pos_ += ws;
        continue;
      }
      if (lex_number() || lex_name() || lex_string()) continue;
      lex_operator(balance);
    }
    // Unterminated tag: the parser reports the missing end delimiter.
  }

  // Digits with single underscores between them (Python's (\d+_)*\d+); returns the end or npos.
  size_t digits(size_t p) const {
    if (p >= src_.size() || !is_digit(src_[p])) return std::string::npos;
    while (p < src_.size()) {
      if (is_digit(src_[p])) {
        ++p;
      } else if (src_[p] == '_' && p + 1 < src_.size() && is_digit(src_[p + 1])) {
        ++p;
      } else {
        break;
      }
    }
    return p;
  }

  bool lex_number() {
    size_t start = pos_;
    size_t int_end = digits(start);
    if (int_end == std::string::npos) return false;
    // Float first, as Jinja tries it before integers; not right after a '.' (x.0.1 is items).
    if (start == 0 || src_[start - 1] != '.') {
      size_t p = int_end;
      size_t frac_end = std::string::npos;
      if (p < src_.size() && src_[p] == '.') frac_end = digits(p + 1);
      size_t q = frac_end != std::string::npos ? frac_end : p;
      size_t exp_end = std::string::npos;
      if (q < src_.size() && (src_[q] == 'e' || src_[q] == 'E')) {
        size_t r = q + 1;
        if (r < src_.size() && (src_[r] == '+' || src_[r] == '-')) ++r;
        exp_end = digits(r);
      }
      size_t end = exp_end != std::string::npos ? exp_end : frac_end;
      if (end != std::string::npos) {
        std::string text;
        for (size_t i = start; i < end; ++i)
          if (src_[i] != '_') text += src_[i];
        Token t{TokenType::Float, static_cast<uint32_t>(start), text};
        t.float_value = std::strtod(text.c_str(), nullptr);
        tokens_.push_back(std::move(t));
        pos_ = end;
        return true;
      }
    }
    int base = 10;
    size_t p = start;
    if (src_[p] == '0' && p + 1 < src_.size()) {
      char b = static_cast<char>(src_[p + 1] | 0x20);
      base = b == 'b' ? 2 : b == 'o' ? 8 : b == 'x' ? 16 : 10;
    }
    std::string text;
    size_t end;
    if (base != 10) {
      end = p + 2;
      auto valid = [&](char c) {
        return base == 2 ? (c == '0' || c == '1') : base == 8 ? (c >= '0' && c <= '7') : is_hex(c);
      };
      while (end < src_.size()) {
        if (valid(src_[end])) {
          text += src_[end++];
        } else if (src_[end] == '_' && end + 1 < src_.size() && valid(src_[end + 1])) {
          ++end;
        } else {
          break;
        }
      }
      if (text.empty()) base = 10;  // "0x" alone: just the integer 0
    }
    if (base == 10) {
      if (src_[p] == '0') {  // 0(_?0)*
        end = p + 1;
        while (end < src_.size() &&
               (src_[end] == '0' || (src_[end] == '_' && end + 1 < src_.size() && src_[end + 1] == '0')))
          ++end;
        text = "0";
      } else {
        end = int_end;
        for (size_t i = p; i < end; ++i)
          if (src_[i] != '_') text += src_[i];
      }
    }
    errno = 0;
    char* parse_end = nullptr;
    unsigned long long v = std::strtoull(text.c_str(), &parse_end, base);
    if (errno == ERANGE || v > uint64_t(INT64_MAX)) fail_at(start, "integer literal is too large");
    Token t{TokenType::Integer, static_cast<uint32_t>(start), text};
    t.int_value = int64_t(v);
    tokens_.push_back(std::move(t));
    pos_ = end;
    return true;
  }

  bool lex_name() {
    auto ident_char = [&](size_t p, bool first, size_t& next) {
      next = p;
      char32_t c = unicode::next(src_, next);
      if (c < 0x80)
        return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (!first && is_digit(char(c)));
      return first ? unicode::is_alpha(c) : unicode::is_alnum(c);
    };
    size_t next;
    if (!ident_char(pos_, true, next)) return false;
    size_t start = pos_;
    pos_ = next;
    while (pos_ < src_.size() && ident_char(pos_, false, next)) pos_ = next;
    push(TokenType::Name, start, std::string(src_.substr(start, pos_ - start)));
    return true;
  }

  bool lex_string() {
    char quote = src_[pos_];
    if (quote != '\'' && quote != '"') return false;
    size_t p = pos_ + 1;
    while (p < src_.size() && src_[p] != quote) p += src_[p] == '\\' ? 2 : 1;
    if (p >= src_.size()) fail_at(pos_, fmt::format("unexpected char '{}' (unterminated string)", quote));
    Token t{TokenType::String, static_cast<uint32_t>(pos_),
            unescape(src_.substr(pos_ + 1, p - pos_ - 1), pos_)};
    tokens_.push_back(std::move(t));
    pos_ = p + 1;
    return true;
  }

  void lex_operator(std::string& balance) {
    static constexpr std::string_view kTwo[] = {"//", "**", "==", "!=", ">=", "<="};
    for (std::string_view op : kTwo) {
      if (starts(pos_, op)) {
        push(TokenType::Operator, pos_, std::string(op));
        pos_ += 2;
        return;
      }
    }
    char c = src_[pos_];
    if (std::string_view("+-/*%~[](){}><=.:|,;").find(c) == std::string_view::npos) {
      size_t next = pos_;
      std::string ch;
      unicode::append(ch, unicode::next(src_, next));
      fail_at(pos_, fmt::format("unexpected char '{}'", ch));
    }
    if (c == '(' || c == '[' || c == '{') balance += c == '(' ? ')' : c == '[' ? ']' : '}';
    if (c == ')' || c == ']' || c == '}') {
      if (balance.empty()) fail_at(pos_, fmt::format("unexpected '{}'", c));
      if (balance.back() != c)
        fail_at(pos_, fmt::format("unexpected '{}', expected '{}'", c, balance.back()));
      balance.pop_back();
    }
    push(TokenType::Operator, pos_, std::string(1, c));
    ++pos_;
  }

  std::string_view src_;
  size_t pos_ = 0;
  bool line_starting_ = true;  // did the previous match end with a newline? (lstrip_blocks)
  std::vector<Token> tokens_;
};

}  // namespace

std::string normalize_source(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::vector<Token> tokenize(std::string_view normalized) {
  if (normalized.size() >= TemplateError::kNoOffset) throw TemplateError("template is too large");
  return Lexer(normalized).run();
}

std::pair<int, int> line_col(std::string_view normalized, uint32_t offset) {
  int line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < offset && i < normalized.size(); ++i) {
    if (normalized[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  size_t col_end = std::min<size_t>(offset, normalized.size());
  return {line, int(unicode::length(normalized.substr(line_start, col_end - line_start))) + 1};
}

}  // namespace apus::jinja
