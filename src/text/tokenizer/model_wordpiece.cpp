// WordPiece (greedy longest-match-first, BERT) and WordLevel (whole-word lookup).
#include "core/error.h"
#include "text/tokenizer/models.h"
#include "text/tokenizer/unicode.h"

namespace apus::tok {
namespace {

Vocab read_vocab_object(const JsonField& j) {
  const JsonField v = j["vocab"];
  Vocab vocab;
  vocab.reserve(v.object().size());
  for (const auto& [token, id] : v.value().items()) {
    if (!id.is_number_integer()) JsonField(id, v.file(), v.path() + "." + token).integer();
    vocab.add(token, id.get<int64_t>(), v);
  }
  return vocab;
}

class WordPiece : public Model {
 public:
  explicit WordPiece(const JsonField& j)
      : vocab_(read_vocab_object(j)),
        unk_token_(j.str_or("unk_token", "[UNK]")),
        prefix_(j.str_or("continuing_subword_prefix", "##")),
        max_chars_(static_cast<size_t>(j.int_or("max_input_chars_per_word", 100))) {}

  void tokenize(std::string_view word, std::vector<int32_t>& out) const override {
    size_t chars = 0;
    for (char c : word) chars += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    if (chars > max_chars_) {
      out.push_back(unk());
      return;
    }
    const size_t mark = out.size();
    std::string candidate;
    for (size_t start = 0; start < word.size();) {
      size_t end = word.size();
      std::optional<int32_t> found;
      while (start < end) {
        candidate.assign(start > 0 ? prefix_ : "");
        candidate.append(word.substr(start, end - start));
        if ((found = vocab_.find(candidate))) break;
        do --end;  // drop the last character of the candidate
        while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80);
      }
      if (!found) {
        out.resize(mark);
        out.push_back(unk());
        return;
      }
      out.push_back(*found);
      start = end;
    }
  }
  std::optional<int32_t> token_to_id(std::string_view t) const override { return vocab_.find(t); }
  std::optional<std::string_view> id_to_token(int32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.size(); }

 private:
  int32_t unk() const {
    auto id = vocab_.find(unk_token_);
    if (!id) fail("WordPiece: unk_token {:?} is not in the vocabulary", unk_token_);
    return *id;
  }
  Vocab vocab_;
  std::string unk_token_, prefix_;
  size_t max_chars_;
};

class WordLevel : public Model {
 public:
  explicit WordLevel(const JsonField& j) : vocab_(read_vocab_object(j)), unk_token_(j.str_or("unk_token", "")) {}
  void tokenize(std::string_view word, std::vector<int32_t>& out) const override {
    if (auto id = vocab_.find(word)) {
      out.push_back(*id);
    } else if (auto unk = vocab_.find(unk_token_)) {
      out.push_back(*unk);
    } else {
      fail("WordLevel: {:?} is not in the vocabulary and unk_token {:?} is missing", std::string(word), unk_token_);
    }
  }
  std::optional<int32_t> token_to_id(std::string_view t) const override { return vocab_.find(t); }
  std::optional<std::string_view> id_to_token(int32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.size(); }

 private:
  Vocab vocab_;
  std::string unk_token_;
};

}  // namespace

std::unique_ptr<Model> make_wordpiece(const JsonField& j) { return std::make_unique<WordPiece>(j); }
std::unique_ptr<Model> make_wordlevel(const JsonField& j) { return std::make_unique<WordLevel>(j); }

}  // namespace apus::tok
