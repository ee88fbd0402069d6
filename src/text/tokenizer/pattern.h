// The {"String": s} | {"Regex": r} pattern of Split, Replace (normalizer and decoder). tokenizers
// escapes a String into a regex; a plain substring search finds the same non-overlapping matches.
#pragma once
#include <memory>
#include <string>
#include <string_view>

#include "text/tokenizer/json_field.h"
#include "text/tokenizer/regex.h"

namespace apus::tok {

class Pattern {
 public:
  static Pattern from_json(const JsonField& j) {
    Pattern p;
    if (j.value().is_string()) {  // lenient: a bare string is a literal
      p.literal_ = j.str();
    } else if (auto s = j.get("String")) {
      p.literal_ = s->str();
    } else if (auto r = j.get("Regex")) {
      return regex(r->str(), j.file() + ": field '" + j.path() + ".Regex'");
    } else {
      j.fail("expected {\"String\": ...} or {\"Regex\": ...}");
    }
    if (p.literal_.empty()) j.fail("is an empty pattern");
    return p;
  }

  static Pattern literal(std::string s) {
    Pattern p;
    p.literal_ = std::move(s);
    return p;
  }
  static Pattern regex(const std::string& pattern, const std::string& where) {
    Pattern p;
    p.regex_ = std::make_shared<Regex>(pattern, where);
    return p;
  }

  template <typename F>
  void for_each_match(std::string_view s, F&& on_match) const {
    if (regex_) {
      regex_->for_each_match(s, on_match);
      return;
    }
    size_t pos = 0;
    while ((pos = s.find(literal_, pos)) != std::string_view::npos) {
      on_match(pos, pos + literal_.size());
      pos += literal_.size();
    }
  }

  void replace_all(std::string_view in, std::string_view with, std::string& out) const {
    size_t last = 0;
    for_each_match(in, [&](size_t b, size_t e) {
      out.append(in.substr(last, b - last));
      out.append(with);
      last = e;
    });
    out.append(in.substr(last));
  }

 private:
  std::string literal_;
  std::shared_ptr<Regex> regex_;
};

}  // namespace apus::tok
