#include "text/tokenizer/added_tokens.h"

#include "text/tokenizer/normalizers.h"
#include "text/tokenizer/unicode.h"

namespace apus::tok {

void AddedVocabulary::Matcher::add(std::string_view pattern, size_t token_index) {
  uint32_t node = 0;
  for (char c : pattern) {
    const uint64_t key = (uint64_t(node) << 8) | static_cast<unsigned char>(c);
    if (const uint32_t* child = edges_.find(key)) {
      node = *child;
    } else {
      const auto created = static_cast<uint32_t>(terminal_.size());
      terminal_.push_back(-1);
      edges_.set(key, created);
      node = created;
    }
  }
  if (terminal_[node] < 0) terminal_[node] = static_cast<int32_t>(token_index);  // first pattern wins ties
  first_[static_cast<unsigned char>(pattern.front())] = true;
}

std::pair<size_t, int32_t> AddedVocabulary::Matcher::longest_at(std::string_view text, size_t pos) const {
  std::pair<size_t, int32_t> best{0, -1};
  uint32_t node = 0;
  for (size_t k = pos; k < text.size(); ++k) {
    const uint32_t* child = edges_.find((uint64_t(node) << 8) | static_cast<unsigned char>(text[k]));
    if (!child) break;
    node = *child;
    if (terminal_[node] >= 0) best = {k + 1 - pos, terminal_[node]};
  }
  return best;
}

void AddedVocabulary::build(std::vector<AddedToken> tokens, const Normalizer* normalizer) {
  tokens_ = std::move(tokens);
  for (size_t i = 0; i < tokens_.size(); ++i) {
    by_content_.insert_or_assign(tokens_[i].content, i);
    by_id_.insert_or_assign(tokens_[i].id, i);
  }
  // tokenizers builds its matchers from the special tokens first, then the others.
  for (const bool special : {true, false}) {
    for (size_t i = 0; i < tokens_.size(); ++i) {
      const AddedToken& t = tokens_[i];
      if (t.special != special || t.content.empty()) continue;
      if (!t.normalized) {
        raw_.add(t.content, i);
        continue;
      }
      std::string pattern;
      if (normalizer) {
        normalizer->normalize(t.content, pattern);
      } else {
        pattern = t.content;
      }
      if (!pattern.empty()) normalized_.add(pattern, i);
    }
  }
}

void AddedVocabulary::split_with(const Matcher& m, std::string_view text, uint32_t base, bool at_input_start,
                                 std::vector<Piece>& out) const {
  auto push_text = [&](size_t b, size_t e) {
    Piece p;
    p.begin = base + static_cast<uint32_t>(b);
    p.end = base + static_cast<uint32_t>(e);
    p.at_input_start = at_input_start && b == 0;
    out.push_back(p);
  };
  auto char_before = [&](size_t i) {
    size_t s = i - 1;
    while (s > 0 && (static_cast<unsigned char>(text[s]) & 0xC0) == 0x80) --s;
    int len;
    return std::pair<char32_t, size_t>(utf8_decode(text.data() + s, &len), s);
  };
  size_t cursor = 0;  // end of the last emitted piece
  for (size_t pos = 0; pos < text.size();) {
    size_t s = pos, len = 0;
    int32_t index = -1;
    for (; s < text.size(); ++s) {
      if (!m.may_start(static_cast<unsigned char>(text[s]))) continue;
      std::tie(len, index) = m.longest_at(text, s);
      if (index >= 0) break;
    }
    if (index < 0) break;
    size_t e = s + len;
    pos = e;  // the matcher resumes after the raw match, even when the match is then discarded
    const AddedToken& t = tokens_[static_cast<size_t>(index)];
    if (t.single_word) {
      int l;
      const bool word_before = s > 0 && is_word_char(char_before(s).first);
      const bool word_after = e < text.size() && is_word_char(utf8_decode(text.data() + e, &l));
      if (word_before || word_after) continue;
    }
    if (t.lstrip) {
      size_t b = s;
      while (b > 0 && is_whitespace(char_before(b).first)) b = char_before(b).second;
      s = std::max(b, cursor);
    }
    if (t.rstrip) {
      int l;
      while (e < text.size() && is_whitespace(utf8_decode(text.data() + e, &l))) e += static_cast<size_t>(l);
    }
    if (cursor < s) push_text(cursor, s);
    Piece p;
    p.added_id = t.id;
    out.push_back(p);
    cursor = e;
  }
  if (cursor < text.size()) push_text(cursor, text.size());
}

void AddedVocabulary::split_raw(std::string_view text, PieceList& out) const {
  out.text.assign(text);
  out.pieces.clear();
  if (text.empty()) return;
  if (raw_.empty()) {
    Piece p;
    p.end = static_cast<uint32_t>(text.size());
    p.at_input_start = true;
    out.pieces.push_back(p);
    return;
  }
  split_with(raw_, out.text, 0, true, out.pieces);
}

void AddedVocabulary::split_normalized(PieceList& pl) const {
  if (normalized_.empty()) return;
  std::vector<Piece> result;
  result.reserve(pl.pieces.size());
  for (const Piece& p : pl.pieces) {
    if (p.is_added()) {
      result.push_back(p);
    } else {
      split_with(normalized_, pl.view(p), p.begin, p.at_input_start, result);
    }
  }
  pl.pieces.swap(result);
}

const AddedToken* AddedVocabulary::by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> AddedVocabulary::find(std::string_view content) const {
  auto it = by_content_.find(content);
  return it == by_content_.end() ? std::nullopt : std::optional<int32_t>(tokens_[it->second].id);
}

bool AddedVocabulary::is_special_content(std::string_view content) const {
  auto it = by_content_.find(content);
  return it != by_content_.end() && tokens_[it->second].special;
}

}  // namespace apus::tok
