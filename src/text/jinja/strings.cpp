#include "text/jinja/strings.h"

#include <algorithm>

#include "text/jinja/template_error.h"
#include "text/jinja/unicode.h"

namespace apus::jinja::pystr {
namespace {

bool cased(char32_t c) { return unicode::to_upper(c) != c || unicode::to_lower(c) != c; }

// Byte offset of code point index i (clamped to the end).
size_t byte_offset(std::string_view s, int64_t i) {
  size_t pos = 0;
  for (int64_t k = 0; k < i && pos < s.size(); ++k) unicode::next(s, pos);
  return pos;
}

}  // namespace

std::string strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right) {
  std::u32string set;
  if (chars) set = unicode::decode(*chars);
  auto strippable = [&](char32_t c) {
    return chars ? set.find(c) != std::u32string::npos : unicode::is_space(c);
  };
  size_t begin = 0, end = s.size();
  if (left) {
    while (begin < s.size()) {
      size_t next = begin;
      if (!strippable(unicode::next(s, next))) break;
      begin = next;
    }
  }
  if (right) {
    // Find where the last kept character ends by walking forward from `begin`.
    size_t keep = begin;
    for (size_t i = begin; i < s.size();) {
      if (!strippable(unicode::next(s, i))) keep = i;
    }
    end = keep;
  }
  return std::string(s.substr(begin, end - begin));
}

std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep) {
    if (sep->empty()) throw_error("empty separator");
    size_t pos = 0;
    while (maxsplit < 0 || int64_t(out.size()) < maxsplit) {
      size_t hit = s.find(*sep, pos);
      if (hit == std::string_view::npos) break;
      out.emplace_back(s.substr(pos, hit - pos));
      pos = hit + sep->size();
    }
    out.emplace_back(s.substr(pos));
    return out;
  }
  size_t i = 0;
  while (i < s.size()) {
    size_t word = i;  // skip whitespace
    while (word < s.size()) {
      size_t n = word;
      if (!unicode::is_space(unicode::next(s, n))) break;
      word = n;
    }
    if (word >= s.size()) break;
    if (maxsplit >= 0 && int64_t(out.size()) == maxsplit) {
      out.push_back(strip(s.substr(word), std::nullopt, false, true));
      return out;
    }
    size_t end = word;
    while (end < s.size()) {
      size_t n = end;
      if (unicode::is_space(unicode::next(s, n))) break;
      end = n;
    }
    out.emplace_back(s.substr(word, end - word));
    i = end;
  }
  return out;
}

std::vector<std::string> rsplit(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit) {
  if (maxsplit < 0) return split(s, sep, maxsplit);
  std::vector<std::string> out;
  if (sep) {
    if (sep->empty()) throw_error("empty separator");
    size_t end = s.size();
    while (int64_t(out.size()) < maxsplit) {
      size_t hit = end >= sep->size() ? s.rfind(*sep, end - sep->size()) : std::string_view::npos;
      if (hit == std::string_view::npos) break;
      out.emplace_back(s.substr(hit + sep->size(), end - hit - sep->size()));
      end = hit;
    }
    out.emplace_back(s.substr(0, end));
    std::reverse(out.begin(), out.end());
    return out;
  }
  // Whitespace rsplit: split everything, then rejoin the leftmost words with their original gaps.
  std::u32string w = unicode::decode(s);
  std::vector<std::u32string> parts;
  size_t end = w.size();
  while (true) {
    while (end > 0 && unicode::is_space(w[end - 1])) --end;
    if (end == 0) break;
    if (int64_t(parts.size()) == maxsplit) {
      parts.push_back(w.substr(0, end));
      break;
    }
    size_t begin = end;
    while (begin > 0 && !unicode::is_space(w[begin - 1])) --begin;
    parts.push_back(w.substr(begin, end - begin));
    end = begin;
  }
  std::reverse(parts.begin(), parts.end());
  for (auto& p : parts) out.push_back(unicode::encode(p));
  return out;
}

std::vector<std::string> splitlines(std::string_view s, bool keepends) {
  std::vector<std::string> out;
  size_t start = 0, i = 0;
  while (i < s.size()) {
    size_t here = i;
    char32_t c = unicode::next(s, i);
    if (!unicode::is_line_break(c)) continue;
    size_t brk_end = i;
    if (c == '\r' && i < s.size() && s[i] == '\n') brk_end = ++i;
    out.emplace_back(s.substr(start, (keepends ? brk_end : here) - start));
    start = i;
  }
  if (start < s.size()) out.emplace_back(s.substr(start));
  return out;
}

std::string replace(std::string_view s, std::string_view old, std::string_view repl, int64_t count) {
  std::string out;
  if (old.empty()) {
    // Python inserts the replacement before every character and at the end.
    int64_t done = 0;
    size_t i = 0;
    while (i <= s.size()) {
      if (count < 0 || done < count) {
        out += repl;
        ++done;
      }
      if (i == s.size()) break;
      size_t start = i;
      unicode::next(s, i);
      out += s.substr(start, i - start);
    }
    return out;
  }
  size_t pos = 0;
  for (int64_t done = 0; count < 0 || done < count; ++done) {
    size_t hit = s.find(old, pos);
    if (hit == std::string_view::npos) break;
    out += s.substr(pos, hit - pos);
    out += repl;
    pos = hit + old.size();
  }
  out += s.substr(pos);
  return out;
}

int64_t count(std::string_view s, std::string_view sub) {
  if (sub.empty()) return int64_t(unicode::length(s)) + 1;
  int64_t n = 0;
  for (size_t pos = s.find(sub); pos != std::string_view::npos; pos = s.find(sub, pos + sub.size())) ++n;
  return n;
}

int64_t find(std::string_view s, std::string_view sub, std::optional<int64_t> start,
             std::optional<int64_t> end, bool reverse) {
  int64_t len = int64_t(unicode::length(s));
  auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = *v < 0 ? *v + len : *v;
    return std::clamp<int64_t>(x, 0, len);
  };
  int64_t b = clamp(start, 0), e = clamp(end, len);
  if (b > e) return -1;
  size_t bb = byte_offset(s, b), eb = byte_offset(s, e);
  std::string_view window = s.substr(bb, eb - bb);
  size_t hit = reverse ? window.rfind(sub) : window.find(sub);
  if (hit == std::string_view::npos) return -1;
  return b + int64_t(unicode::length(window.substr(0, hit)));
}

std::string title(std::string_view s) {
  std::string out;
  bool prev_cased = false;
  for (size_t i = 0; i < s.size();) {
    char32_t c = unicode::next(s, i);
    unicode::append(out, prev_cased ? unicode::to_lower(c) : unicode::to_upper(c));
    prev_cased = cased(c);
  }
  return out;
}

std::string capitalize(std::string_view s) {
  std::string out;
  bool first = true;
  for (size_t i = 0; i < s.size();) {
    char32_t c = unicode::next(s, i);
    unicode::append(out, first ? unicode::to_upper(c) : unicode::to_lower(c));
    first = false;
  }
  return out;
}

std::string swapcase(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    char32_t c = unicode::next(s, i);
    char32_t u = unicode::to_upper(c);
    unicode::append(out, u != c ? u : unicode::to_lower(c));
  }
  return out;
}

std::string jinja_title(std::string_view s) {
  // re.split(r"([-\s({\[<]+)", s): separators are kept; each piece gets its first char upper-cased
  // and the rest lower-cased (separators are unaffected by that).
  auto is_sep = [](char32_t c) {
    return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || unicode::is_space(c);
  };
  std::string out;
  bool at_start = true;
  bool in_sep = false;
  for (size_t i = 0; i < s.size();) {
    char32_t c = unicode::next(s, i);
    bool sep = is_sep(c);
    if (sep != in_sep) at_start = true;
    in_sep = sep;
    unicode::append(out, at_start ? unicode::to_upper(c) : unicode::to_lower(c));
    at_start = false;
  }
  return out;
}

std::string pad(std::string_view s, int64_t width, char32_t fill, int align) {
  int64_t len = int64_t(unicode::length(s));
  if (width <= len) return std::string(s);
  int64_t margin = width - len;
  int64_t left = align < 0 ? 0 : align > 0 ? margin : margin / 2 + (margin & width & 1);
  std::string f;
  unicode::append(f, fill);
  std::string out;
  for (int64_t i = 0; i < left; ++i) out += f;
  out += s;
  for (int64_t i = 0; i < margin - left; ++i) out += f;
  return out;
}

}  // namespace apus::jinja::pystr
