#include "text/tokenizer/decoders.h"

#include "text/tokenizer/pattern.h"
#include "text/tokenizer/pre_tokenizers.h"
#include "text/tokenizer/unicode.h"

namespace apus::tok {
namespace {

std::vector<char32_t> chars_of(std::string_view s) {
  std::vector<char32_t> out;
  for (size_t i = 0; i < s.size();) {
    int len;
    out.push_back(utf8_decode(s.data() + i, &len));
    i += static_cast<size_t>(len);
  }
  return out;
}

// Maps byte-level characters back to bytes over all tokens at once (a token may hold half a
// character), then reads the bytes as lossy UTF-8. A token with any character outside the
// byte-level alphabet (an added token, say) is kept as its own UTF-8 bytes.
class ByteLevel : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      const size_t mark = bytes.size();
      bool all = true;
      for (size_t i = 0; i < t.size() && all;) {
        int len;
        const int b = byte_level_byte(utf8_decode(t.data() + i, &len));
        if (b < 0) all = false;
        else bytes.push_back(static_cast<char>(b));
        i += static_cast<size_t>(len);
      }
      if (!all) {
        bytes.resize(mark);
        bytes.append(t);
      }
    }
    std::string text;
    append_utf8_lossy(text, bytes);
    tokens.assign(1, std::move(text));
  }
};

// "<0xNN>" runs become their bytes when those form valid UTF-8, else one U+FFFD per byte.
class ByteFallback : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (utf8_valid_prefix(pending) == pending.size()) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      if (auto b = parse_byte(t)) {
        pending.push_back(static_cast<char>(*b));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }

 private:
  // Rust's u8::from_str_radix(&token[3..5], 16), which also takes a leading '+'.
  static std::optional<int> parse_byte(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return std::nullopt;
    auto hex = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    const int lo = hex(t[4]);
    if (lo < 0) return std::nullopt;
    if (t[3] == '+') return lo;
    const int hi = hex(t[3]);
    if (hi < 0) return std::nullopt;
    return hi * 16 + lo;
  }
};

class Fuse : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class Strip : public Decoder {
 public:
  Strip(char32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      const std::vector<char32_t> chars = chars_of(t);
      size_t begin = 0, end = chars.size();
      while (begin < start_ && begin < chars.size() && chars[begin] == content_) ++begin;
      for (size_t i = 0; i < stop_ && end > begin && chars[end - 1] == content_; ++i) --end;
      std::string s;
      for (size_t i = begin; i < end; ++i) utf8_append(s, chars[i]);
      t = std::move(s);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class Replace : public Decoder {
 public:
  Replace(Pattern pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::string out;
      pattern_.replace_all(t, content_, out);
      t = std::move(out);
    }
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// Replacement characters become spaces, except in the first token when a prefix was prepended.
class Metaspace : public Decoder {
 public:
  Metaspace(char32_t replacement, bool strip_first) : replacement_(replacement), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      for (char32_t c : chars_of(tokens[i])) {
        if (c != replacement_) utf8_append(out, c);
        else if (i != 0 || !strip_first_) out.push_back(' ');
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  char32_t replacement_;
  bool strip_first_;
};

class WordPiece : public Decoder {
 public:
  WordPiece(std::string prefix, bool cleanup) : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (i != 0) {
        if (t.starts_with(prefix_)) {
          t.erase(0, prefix_.size());
        } else {
          std::string spaced(1, ' ');
          spaced += t;
          t.swap(spaced);
        }
      }
      if (cleanup_) t = cleanup(t);
    }
  }

 private:
  static std::string cleanup(std::string s) {
    static const std::pair<std::string, std::string> kRules[] = {
        {" .", "."},   {" ?", "?"},     {" !", "!"},   {" ,", ","},           {" ' ", "'"}, {" n't", "n't"},
        {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (const auto& [from, to] : kRules) {
      std::string out;
      size_t last = 0;
      for (size_t pos; (pos = s.find(from, last)) != std::string::npos; last = pos + from.size()) {
        out.append(s, last, pos - last);
        out += to;
      }
      out.append(s, last);
      s = std::move(out);
    }
    return s;
  }
  std::string prefix_;
  bool cleanup_;
};

// BPEDecoder: the end-of-word suffix becomes a space, except on the last token.
class BpeSuffix : public Decoder {
 public:
  explicit BpeSuffix(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      Pattern::literal(suffix_).replace_all(tokens[i], i + 1 == tokens.size() ? "" : " ", out);
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string suffix_;
};

class Sequence : public Decoder {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& s : steps_) s->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

char32_t single_char(const JsonField& f) {
  const std::string s = f.str();
  int len = 0;
  const char32_t c = s.empty() ? 0 : utf8_decode(s.data(), &len);
  if (s.empty() || static_cast<size_t>(len) != s.size()) f.fail("must be a single character");
  return c;
}

}  // namespace

std::unique_ptr<Decoder> make_decoder(const JsonField& j) {
  const std::string type = j["type"].str();
  if (type == "ByteLevel") return std::make_unique<ByteLevel>();
  if (type == "ByteFallback") return std::make_unique<ByteFallback>();
  if (type == "Fuse") return std::make_unique<Fuse>();
  if (type == "Strip") {
    return std::make_unique<Strip>(single_char(j["content"]), static_cast<size_t>(j["start"].integer()),
                                   static_cast<size_t>(j["stop"].integer()));
  }
  if (type == "Replace") return std::make_unique<Replace>(Pattern::from_json(j["pattern"]), j["content"].str());
  if (type == "Metaspace") {
    const char32_t rep = j.get("replacement") ? single_char(j["replacement"]) : U'\u2581';
    std::string scheme = j.str_or("prepend_scheme", "always");
    if (!j.bool_or("add_prefix_space", true)) scheme = "never";
    return std::make_unique<Metaspace>(rep, scheme != "never");
  }
  if (type == "WordPiece") return std::make_unique<WordPiece>(j.str_or("prefix", "##"), j.bool_or("cleanup", true));
  if (type == "BPEDecoder") return std::make_unique<BpeSuffix>(j.str_or("suffix", "</w>"));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> steps;
    const JsonField list = j["decoders"];
    for (size_t i = 0; i < list.array().size(); ++i) steps.push_back(make_decoder(list.at(i)));
    return std::make_unique<Sequence>(std::move(steps));
  }
  j.fail("has unknown decoder type '" + type + "'");
}

}  // namespace apus::tok
