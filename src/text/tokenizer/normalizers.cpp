#include "text/tokenizer/normalizers.h"

#include <utf8proc.h>

#include <cstdlib>
#include <vector>

#include "text/tokenizer/pattern.h"
#include "text/tokenizer/unicode.h"

namespace apus::tok {
namespace {

bool is_ascii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

// Calls f(code point) for each character of valid UTF-8 text.
template <typename F>
void for_each_char(std::string_view s, F&& f) {
  for (size_t i = 0; i < s.size();) {
    int len;
    const char32_t c = utf8_decode(s.data() + i, &len);
    f(c, s.substr(i, static_cast<size_t>(len)));
    i += static_cast<size_t>(len);
  }
}

// NFC leaves text alone when every character is below U+0300 (no combining marks, and nothing
// there decomposes canonically) or a CJK unified ideograph (which composes with nothing).
bool nfc_stable(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    int len;
    const char32_t c = utf8_decode(s.data() + i, &len);
    if (c >= 0x300 && !(c >= 0x4E00 && c <= 0x9FFF)) return false;
    i += static_cast<size_t>(len);
  }
  return true;
}

class UnicodeForm : public Normalizer {
 public:
  explicit UnicodeForm(int options) : options_(options) {}
  void normalize(std::string_view in, std::string& out) const override {
    // Every normalization form leaves ASCII unchanged; NFC also most other text.
    if (options_ == (UTF8PROC_STABLE | UTF8PROC_COMPOSE) ? nfc_stable(in) : is_ascii(in)) {
      out.append(in);
      return;
    }
    utf8proc_uint8_t* result = nullptr;
    const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(in.data()),
                                static_cast<utf8proc_ssize_t>(in.size()), &result,
                                static_cast<utf8proc_option_t>(options_));
    if (n < 0) fail("unicode normalization failed: {}", utf8proc_errmsg(n));
    out.append(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
    std::free(result);
  }

 private:
  int options_;
};

class Lowercase : public Normalizer {
 public:
  void normalize(std::string_view in, std::string& out) const override {
    for_each_char(in, [&](char32_t c, std::string_view) { append_lowercase(out, c); });
  }
};

class Strip : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string_view in, std::string& out) const override {
    size_t b = 0, e = in.size();
    if (left_) {
      while (b < e) {
        int len;
        if (!is_whitespace(utf8_decode(in.data() + b, &len))) break;
        b += static_cast<size_t>(len);
      }
    }
    if (right_) {
      while (e > b) {
        size_t s = e - 1;
        while (s > b && (static_cast<unsigned char>(in[s]) & 0xC0) == 0x80) --s;
        int len;
        if (!is_whitespace(utf8_decode(in.data() + s, &len))) break;
        e = s;
      }
    }
    out.append(in.substr(b, e - b));
  }

 private:
  bool left_, right_;
};

class StripAccents : public Normalizer {
 public:
  void normalize(std::string_view in, std::string& out) const override {
    for_each_char(in, [&](char32_t c, std::string_view bytes) {
      if (!is_combining_mark(c)) out.append(bytes);
    });
  }
};

class Replace : public Normalizer {
 public:
  Replace(Pattern pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(std::string_view in, std::string& out) const override { pattern_.replace_all(in, content_, out); }

 private:
  Pattern pattern_;
  std::string content_;
};

class Prepend : public Normalizer {
 public:
  explicit Prepend(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string_view in, std::string& out) const override {
    if (!in.empty()) out.append(prefix_);  // tokenizers prepends to non-empty text only
    out.append(in);
  }

 private:
  std::string prefix_;
};

// BERT's cleanup: drop controls, map whitespace to ' ', pad CJK ideographs with spaces, strip
// accents (NFD, then drop nonspacing marks) and lowercase.
class BertNormalizer : public Normalizer {
 public:
  BertNormalizer(bool clean_text, bool chinese, bool strip_accents, bool lowercase)
      : clean_text_(clean_text), chinese_(chinese), strip_accents_(strip_accents), lowercase_(lowercase) {}
  void normalize(std::string_view in, std::string& out) const override {
    std::string a;
    for_each_char(in, [&](char32_t c, std::string_view bytes) {
      if (clean_text_) {
        if (c == 0 || c == 0xFFFD || is_control(c)) return;
        if (c == '\t' || c == '\n' || c == '\r' || is_whitespace(c)) {
          a.push_back(' ');
          return;
        }
      }
      if (chinese_ && is_chinese(c)) {
        a.push_back(' ');
        a.append(bytes);
        a.push_back(' ');
        return;
      }
      a.append(bytes);
    });
    if (strip_accents_) {
      std::string d;
      UnicodeForm(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE).normalize(a, d);
      a.clear();
      for_each_char(d, [&](char32_t c, std::string_view bytes) {
        if (utf8proc_category(static_cast<utf8proc_int32_t>(c)) != UTF8PROC_CATEGORY_MN) a.append(bytes);
      });
    }
    if (lowercase_) {
      Lowercase().normalize(a, out);
    } else {
      out.append(a);
    }
  }

 private:
  static bool is_control(char32_t c) {
    if (c == '\t' || c == '\n' || c == '\r') return false;
    // tokenizers' table (unicode_categories) has no unassigned (Cn) code points, so they stay.
    const auto k = utf8proc_category(static_cast<utf8proc_int32_t>(c));
    return k == UTF8PROC_CATEGORY_CC || k == UTF8PROC_CATEGORY_CF || k == UTF8PROC_CATEGORY_CO;
  }
  static bool is_chinese(char32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
  }
  bool clean_text_, chinese_, strip_accents_, lowercase_;
};

class Sequence : public Normalizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  void normalize(std::string_view in, std::string& out) const override {
    if (steps_.empty()) {
      out.append(in);
      return;
    }
    std::string a(in), b;
    for (size_t i = 0; i + 1 < steps_.size(); ++i) {
      b.clear();
      steps_[i]->normalize(a, b);
      a.swap(b);
    }
    steps_.back()->normalize(a, out);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const JsonField& j) {
  const std::string type = j["type"].str();
  if (type == "NFC") return std::make_unique<UnicodeForm>(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  if (type == "NFD") return std::make_unique<UnicodeForm>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
  if (type == "NFKC") return std::make_unique<UnicodeForm>(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
  if (type == "NFKD") return std::make_unique<UnicodeForm>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "Strip") return std::make_unique<Strip>(j.bool_or("strip_left", true), j.bool_or("strip_right", true));
  if (type == "StripAccents") return std::make_unique<StripAccents>();
  if (type == "Replace") return std::make_unique<Replace>(Pattern::from_json(j["pattern"]), j["content"].str());
  if (type == "Prepend") return std::make_unique<Prepend>(j["prepend"].str());
  if (type == "BertNormalizer") {
    const bool lowercase = j.bool_or("lowercase", true);
    return std::make_unique<BertNormalizer>(j.bool_or("clean_text", true), j.bool_or("handle_chinese_chars", true),
                                            j.bool_or("strip_accents", lowercase), lowercase);
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> steps;
    const JsonField list = j["normalizers"];
    list.array();
    for (size_t i = 0; i < list.size(); ++i) steps.push_back(make_normalizer(list.at(i)));
    return std::make_unique<Sequence>(std::move(steps));
  }
  if (type == "Precompiled") {
    j.fail("has type 'Precompiled' (a SentencePiece precompiled_charsmap), which is not supported");
  }
  j.fail("has unknown normalizer type '" + type + "'");
}

}  // namespace apus::tok
