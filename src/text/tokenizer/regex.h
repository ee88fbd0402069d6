// PCRE2 (UTF + UCP, JIT when available) standing in for the Oniguruma regexes of `tokenizers`.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace apus::tok {

class Regex {
 public:
  // Throws apus::Error (with `where` in the message) when the pattern does not compile.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls on_match(start, end) for every match, left to right, as Oniguruma's find_iter does: after
  // an empty match the search resumes one character later. `subject` must be valid UTF-8.
  template <typename F>
  void for_each_match(std::string_view subject, F&& on_match) const {
    size_t pos = 0, last_end = std::string_view::npos;
    size_t s, e;
    while (pos <= subject.size() && search(subject, pos, &s, &e)) {
      if (s == e && s == last_end) {
        if (s >= subject.size()) break;
        pos = s + utf8_step(subject[s]);
        continue;
      }
      on_match(s, e);
      last_end = e;
      pos = e;
    }
  }

  // Oniguruma's \s is the White_Space property; PCRE2's UCP \s also takes U+180E. Rewriting \s and \S
  // into explicit classes keeps the two engines' splits identical.
  static std::string onig_compatible(const std::string& pattern);

 private:
  static size_t utf8_step(char lead) {
    const auto b = static_cast<unsigned char>(lead);
    return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  }
  bool search(std::string_view subject, size_t from, size_t* start, size_t* end) const;

  struct Code;
  std::unique_ptr<Code> code_;
};

}  // namespace apus::tok
