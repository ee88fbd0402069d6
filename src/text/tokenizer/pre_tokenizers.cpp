#include "text/tokenizer/pre_tokenizers.h"

#include <vector>

#include "text/tokenizer/pattern.h"
#include "text/tokenizer/unicode.h"

namespace apus::tok {

const std::array<std::string, 256>& byte_level_chars() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      utf8_append(t[static_cast<size_t>(b)], printable ? static_cast<char32_t>(b) : next++);
    }
    return t;
  }();
  return table;
}

int byte_level_byte(char32_t c) {
  static const std::vector<int> inverse = [] {
    std::vector<int> inv(324, -1);
    const auto& chars = byte_level_chars();
    for (int b = 0; b < 256; ++b) {
      int len;
      inv[utf8_decode(chars[static_cast<size_t>(b)].data(), &len)] = b;
    }
    return inv;
  }();
  return c < inverse.size() ? inverse[c] : -1;
}

namespace {

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const JsonField& j) {
  const std::string s = j.str();
  if (s == "Removed") return Behavior::Removed;
  if (s == "Isolated") return Behavior::Isolated;
  if (s == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::MergedWithNext;
  if (s == "Contiguous") return Behavior::Contiguous;
  j.fail("has unknown split behavior '" + s + "'");
}

struct Span {
  size_t b, e;
  bool is_match;
};

// Turns a piece's match/gap list into the kept ranges, following NormalizedString::split.
template <typename Emit>
void apply_behavior(std::vector<Span>& spans, Behavior behavior, Emit&& emit) {
  switch (behavior) {
    case Behavior::Isolated:
      for (const Span& s : spans) emit(s.b, s.e);
      return;
    case Behavior::Removed:
      for (const Span& s : spans)
        if (!s.is_match) emit(s.b, s.e);
      return;
    default:
      break;
  }
  std::vector<Span> out;
  bool previous_match = false;
  auto fold = [&](const Span& s, bool merge_into_last, bool extend_end) {
    if (merge_into_last && !out.empty()) {
      if (extend_end) {
        out.back().e = s.e;
      } else {
        out.back().b = s.b;
      }
    } else {
      out.push_back(s);
    }
    previous_match = s.is_match;
  };
  if (behavior == Behavior::MergedWithNext) {
    for (auto it = spans.rbegin(); it != spans.rend(); ++it) fold(*it, it->is_match && !previous_match, false);
    for (auto it = out.rbegin(); it != out.rend(); ++it) emit(it->b, it->e);
    return;
  }
  for (const Span& s : spans) {
    const bool merge =
        behavior == Behavior::Contiguous ? s.is_match == previous_match : s.is_match && !previous_match;
    fold(s, merge, true);
  }
  for (const Span& s : out) emit(s.b, s.e);
}

// Matches of a pattern plus the gaps between them, covering the whole text.
template <typename ForEachMatch>
void collect_spans(std::string_view text, bool invert, std::vector<Span>& spans, ForEachMatch&& for_each_match) {
  spans.clear();
  size_t prev = 0;
  for_each_match(text, [&](size_t b, size_t e) {
    if (prev != b) spans.push_back({prev, b, invert});
    spans.push_back({b, e, !invert});
    prev = e;
  });
  if (prev != text.size()) spans.push_back({prev, text.size(), invert});
}

// A char predicate as a pattern: every matching character is its own match.
template <typename Pred>
auto char_matcher(Pred pred) {
  return [pred](std::string_view text, auto&& on_match) {
    for (size_t i = 0; i < text.size();) {
      int len;
      const char32_t c = utf8_decode(text.data() + i, &len);
      if (pred(c)) on_match(i, i + static_cast<size_t>(len));
      i += static_cast<size_t>(len);
    }
  };
}

template <typename Matcher>
void split_with(PieceList& pl, Behavior behavior, bool invert, const Matcher& matcher) {
  std::vector<Piece> scratch;
  std::vector<Span> spans;
  split_pieces(pl, scratch, [&](std::string_view text, auto&& emit) {
    collect_spans(text, invert, spans, matcher);
    apply_behavior(spans, behavior, emit);
  });
}

class Split : public PreTokenizer {
 public:
  Split(Pattern pattern, Behavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(PieceList& pl) const override {
    split_with(pl, behavior_, invert_, [this](std::string_view t, auto&& m) { pattern_.for_each_match(t, m); });
  }

 private:
  Pattern pattern_;
  Behavior behavior_;
  bool invert_;
};

template <typename Pred>
class CharSplit : public PreTokenizer {
 public:
  CharSplit(Pred pred, Behavior behavior) : pred_(pred), behavior_(behavior) {}
  void pre_tokenize(PieceList& pl) const override { split_with(pl, behavior_, false, char_matcher(pred_)); }

 private:
  Pred pred_;
  Behavior behavior_;
};

template <typename Pred>
std::unique_ptr<PreTokenizer> char_split(Pred pred, Behavior behavior) {
  return std::make_unique<CharSplit<Pred>>(pred, behavior);
}

// tokenizers' regex \w+|[^\w\s]+ with whitespace removed: runs of word characters and runs of
// other non-space characters. Written out because PCRE2's \w is not Oniguruma's.
class Whitespace : public PreTokenizer {
 public:
  void pre_tokenize(PieceList& pl) const override {
    split_with(pl, Behavior::Removed, true, [](std::string_view text, auto&& on_match) {
      int run = 0;  // 0: none, 1: word characters, 2: others
      size_t start = 0;
      for (size_t i = 0; i < text.size();) {
        int len;
        const char32_t c = utf8_decode(text.data() + i, &len);
        const int kind = is_whitespace(c) ? 0 : is_word_char(c) ? 1 : 2;
        if (kind != run) {
          if (run) on_match(start, i);
          run = kind;
          start = i;
        }
        i += static_cast<size_t>(len);
      }
      if (run) on_match(start, text.size());
    });
  }
};

class ByteLevel : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, bool use_regex) : add_prefix_space_(add_prefix_space) {
    if (use_regex) {
      regex_ = std::make_unique<Regex>(
          R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", "ByteLevel pre-tokenizer");
    }
  }
  void pre_tokenize(PieceList& pl) const override {
    std::string scratch;
    if (add_prefix_space_) {
      transform_pieces(pl, scratch, [](const Piece&, std::string_view t, std::string& out) {
        if (t.front() != ' ') out.push_back(' ');
        out.append(t);
      });
    }
    if (regex_) {
      split_with(pl, Behavior::Isolated, false,
                 [this](std::string_view t, auto&& m) { regex_->for_each_match(t, m); });
    }
    const auto& chars = byte_level_chars();
    transform_pieces(pl, scratch, [&](const Piece&, std::string_view t, std::string& out) {
      for (char c : t) out.append(chars[static_cast<unsigned char>(c)]);
    });
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class Metaspace : public PreTokenizer {
 public:
  enum class Prepend { Always, First, Never };
  Metaspace(std::string replacement, Prepend prepend, bool split)
      : replacement_(std::move(replacement)), prepend_(prepend), split_(split) {}
  void pre_tokenize(PieceList& pl) const override {
    std::string scratch;
    transform_pieces(pl, scratch, [&](const Piece& p, std::string_view t, std::string& out) {
      const size_t start = out.size();
      for (char c : t) {
        if (c == ' ') {
          out.append(replacement_);
        } else {
          out.push_back(c);
        }
      }
      const bool starts_with_rep = std::string_view(out).substr(start).starts_with(replacement_);
      if (!starts_with_rep && (prepend_ == Prepend::Always || (prepend_ == Prepend::First && p.at_input_start))) {
        out.insert(start, replacement_);
      }
    });
    if (split_) {
      split_with(pl, Behavior::MergedWithNext, false,
                 [this](std::string_view t, auto&& m) { find_all(t, replacement_, m); });
    }
  }

 private:
  template <typename M>
  static void find_all(std::string_view t, const std::string& needle, M&& on_match) {
    for (size_t pos = 0; (pos = t.find(needle, pos)) != std::string_view::npos; pos += needle.size()) {
      on_match(pos, pos + needle.size());
    }
  }
  std::string replacement_;
  Prepend prepend_;
  bool split_;
};

class Sequence : public PreTokenizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void pre_tokenize(PieceList& pl) const override {
    for (const auto& s : steps_) s->pre_tokenize(pl);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const JsonField& j) {
  const std::string type = j["type"].str();
  if (type == "Split") {
    return std::make_unique<Split>(Pattern::from_json(j["pattern"]), parse_behavior(j["behavior"]),
                                   j.bool_or("invert", false));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevel>(j.bool_or("add_prefix_space", true), j.bool_or("use_regex", true));
  if (type == "Metaspace") {
    auto prepend = Metaspace::Prepend::Always;
    if (auto s = j.get("prepend_scheme")) {
      const std::string v = s->str();
      if (v == "always") prepend = Metaspace::Prepend::Always;
      else if (v == "first") prepend = Metaspace::Prepend::First;
      else if (v == "never") prepend = Metaspace::Prepend::Never;
      else s->fail("has unknown prepend_scheme '" + v + "' (expected always, first or never)");
    }
    if (!j.bool_or("add_prefix_space", true)) prepend = Metaspace::Prepend::Never;
    const std::string replacement = j.str_or("replacement", "\xE2\x96\x81");
    if (replacement.empty()) j["replacement"].fail("must be a single character");
    return std::make_unique<Metaspace>(replacement, prepend, j.bool_or("split", true));
  }
  if (type == "Digits") {
    return char_split(is_numeric, j.bool_or("individual_digits", false) ? Behavior::Isolated : Behavior::Contiguous);
  }
  if (type == "Punctuation") {
    auto b = j.get("behavior");
    return char_split(is_punctuation, b ? parse_behavior(*b) : Behavior::Isolated);
  }
  if (type == "WhitespaceSplit") return char_split(is_whitespace, Behavior::Removed);
  if (type == "Whitespace") return std::make_unique<Whitespace>();
  if (type == "BertPreTokenizer") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    steps.push_back(char_split(is_whitespace, Behavior::Removed));
    steps.push_back(char_split(is_punctuation, Behavior::Isolated));
    return std::make_unique<Sequence>(std::move(steps));
  }
  if (type == "CharDelimiterSplit") {
    const std::string d = j["delimiter"].str();
    int len = 0;
    const char32_t c = d.empty() ? 0 : utf8_decode(d.data(), &len);
    if (d.empty() || static_cast<size_t>(len) != d.size()) j["delimiter"].fail("must be a single character");
    return char_split([c](char32_t x) { return x == c; }, Behavior::Removed);
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    const JsonField list = j["pretokenizers"];
    list.array();
    for (size_t i = 0; i < list.size(); ++i) steps.push_back(make_pre_tokenizer(list.at(i)));
    return std::make_unique<Sequence>(std::move(steps));
  }
  j.fail("has unknown pre-tokenizer type '" + type + "'");
}

}  // namespace apus::tok
