// BPE as `tokenizers` runs it: characters (or byte-fallback bytes, or a fused unk) become symbols,
// then the lowest-ranked mergeable adjacent pair is merged until none is left, ties going to the
// leftmost pair. A heap of candidate merges makes a word of n symbols O(n log n), which matters for
// SentencePiece-style tokenizers where a whole line is one word.
#include <algorithm>

#include "core/error.h"
#include "text/tokenizer/flat_map.h"
#include "text/tokenizer/models.h"
#include "text/tokenizer/unicode.h"

namespace apus::tok {
namespace {

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

struct MergeTarget {
  uint32_t rank;
  int32_t new_id;
};

class Bpe : public Model {
 public:
  explicit Bpe(const JsonField& j);

  void tokenize(std::string_view word, std::vector<int32_t>& out) const override;
  std::optional<int32_t> token_to_id(std::string_view t) const override { return vocab_.find(t); }
  std::optional<std::string_view> id_to_token(int32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.size(); }

 private:
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    uint32_t len;  // bytes covered; 0 once merged into its left neighbour
  };
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
  };

  void initial_symbols(std::string_view word, std::vector<Symbol>& syms) const;
  void merge_all(std::vector<Symbol>& syms) const;
  std::optional<int32_t> char_id(std::string_view word, size_t i, size_t len) const;

  Vocab vocab_;
  FlatMap64<MergeTarget> merges_;
  FlatMap64<int32_t> char_ids_;  // single-character tokens by code point (no prefix/suffix set)
  int32_t byte_ids_[256];        // <0xNN> tokens, -1 when absent
  std::optional<std::string> unk_token_;
  std::string prefix_, suffix_;  // continuing_subword_prefix, end_of_word_suffix
  bool byte_fallback_, fuse_unk_, ignore_merges_;
  WordCache cache_;
};

Bpe::Bpe(const JsonField& j) {
  const JsonField vocab = j["vocab"];
  vocab_.reserve(vocab.object().size());
  for (const auto& [token, id] : vocab.value().items()) {
    if (!id.is_number_integer()) vocab.fail("has a non-integer id for token " + token);
    vocab_.add(token, id.get<int64_t>(), vocab);
  }
  if (auto u = j.get("unk_token")) unk_token_ = u->str();
  prefix_ = j.str_or("continuing_subword_prefix", "");
  suffix_ = j.str_or("end_of_word_suffix", "");
  byte_fallback_ = j.bool_or("byte_fallback", false);
  fuse_unk_ = j.bool_or("fuse_unk", false);
  ignore_merges_ = j.bool_or("ignore_merges", false);

  const JsonField merges = j["merges"];
  const json& list = merges.array();
  merges_.reserve(list.size());
  std::string a, b;
  for (size_t i = 0; i < list.size(); ++i) {
    const json& m = list[i];
    if (m.is_string()) {  // legacy "a b": split at the first space
      const auto& s = m.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos) merges.at(i).fail("is not of the form \"left right\"");
      a.assign(s, 0, sp);
      b.assign(s, sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      merges.at(i).fail("expected \"left right\" or [\"left\", \"right\"]");
    }
    const auto ia = vocab_.find(a), ib = vocab_.find(b);
    if (!ia || !ib) merges.at(i).fail(fmt::format("names token {:?}, which is not in model.vocab", !ia ? a : b));
    const std::string merged = a + b.substr(std::min(prefix_.size(), b.size()));
    const auto im = vocab_.find(merged);
    if (!im) merges.at(i).fail(fmt::format("makes token {:?}, which is not in model.vocab", merged));
    merges_.set(pair_key(*ia, *ib), {static_cast<uint32_t>(i), *im});
  }

  for (int byte = 0; byte < 256; ++byte) {
    byte_ids_[byte] = vocab_.find(byte_token(static_cast<unsigned char>(byte))).value_or(-1);
  }
  if (prefix_.empty() && suffix_.empty()) {
    for (const auto& [token, id] : vocab.value().items()) {
      int len;
      if (token.empty()) continue;
      const char32_t c = utf8_decode(token.data(), &len);
      if (static_cast<size_t>(len) == token.size()) char_ids_.set(c, *vocab_.find(token));
    }
  }
}

std::optional<int32_t> Bpe::char_id(std::string_view word, size_t i, size_t len) const {
  if (prefix_.empty() && suffix_.empty()) {
    int n;
    const int32_t* id = char_ids_.find(utf8_decode(word.data() + i, &n));
    return id ? std::optional<int32_t>(*id) : std::nullopt;
  }
  std::string s;
  if (i > 0) s = prefix_;
  s.append(word.substr(i, len));
  if (i + len == word.size()) s += suffix_;
  return vocab_.find(s);
}

void Bpe::initial_symbols(std::string_view word, std::vector<Symbol>& syms) const {
  auto add = [&](int32_t id, uint32_t len) {
    const auto n = static_cast<int32_t>(syms.size());
    if (n > 0) syms.back().next = n;
    syms.push_back({id, n - 1, -1, len});
  };
  // Pending unknown run (unk_len 0: none), emitted when a known symbol follows or at the end.
  int32_t unk_id = -1;
  uint32_t unk_len = 0;
  for (size_t i = 0; i < word.size();) {
    const auto len = static_cast<size_t>(utf8_len(static_cast<unsigned char>(word[i])));
    if (auto id = char_id(word, i, len)) {
      if (unk_len) add(unk_id, unk_len);
      unk_len = 0;
      add(*id, static_cast<uint32_t>(len));
      i += len;
      continue;
    }
    if (byte_fallback_) {
      // The bytes of the symbol as looked up, prefix and suffix included, as tokenizers does. A
      // pending unk is deliberately not flushed first: tokenizers emits it after these bytes.
      std::string s = (i > 0 ? prefix_ : std::string()) + std::string(word.substr(i, len)) +
                      (i + len == word.size() ? suffix_ : std::string());
      bool all = true;
      for (char c : s) all = all && byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        for (char c : s) add(byte_ids_[static_cast<unsigned char>(c)], 1);
        i += len;
        continue;
      }
    }
    if (unk_token_) {
      const auto id = vocab_.find(*unk_token_);
      if (!id) fail("BPE: unk_token {:?} is not in the vocabulary", *unk_token_);
      if (unk_len && fuse_unk_) {
        unk_len += static_cast<uint32_t>(len);
      } else {
        if (unk_len) add(unk_id, unk_len);
        unk_id = *id;
        unk_len = static_cast<uint32_t>(len);
      }
    }
    i += len;
  }
  if (unk_len) add(unk_id, unk_len);
}

void Bpe::merge_all(std::vector<Symbol>& syms) const {
  // Heap order: lowest rank first, then leftmost position.
  auto later = [](const Candidate& x, const Candidate& y) { return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos; };
  std::vector<Candidate> heap;
  heap.reserve(syms.size());
  for (size_t i = 0; i + 1 < syms.size(); ++i) {
    if (const MergeTarget* m = merges_.find(pair_key(syms[i].id, syms[i + 1].id))) {
      heap.push_back({m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  std::make_heap(heap.begin(), heap.end(), later);
  const auto n = static_cast<int32_t>(syms.size());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& cur = syms[static_cast<size_t>(top.pos)];
    if (cur.len == 0 || cur.next == -1) continue;
    const Symbol right = syms[static_cast<size_t>(cur.next)];
    // Skip stale candidates: the pair at this position must still produce the same token.
    const MergeTarget* still = merges_.find(pair_key(cur.id, right.id));
    if (!still || still->new_id != top.new_id) continue;
    syms[static_cast<size_t>(cur.next)].len = 0;
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    if (right.next >= 0 && right.next < n) syms[static_cast<size_t>(right.next)].prev = top.pos;
    if (cur.prev >= 0) {
      if (const MergeTarget* m = merges_.find(pair_key(syms[static_cast<size_t>(cur.prev)].id, cur.id))) {
        heap.push_back({m->rank, cur.prev, m->new_id});
        std::push_heap(heap.begin(), heap.end(), later);
      }
    }
    if (cur.next >= 0 && cur.next < n) {
      if (const MergeTarget* m = merges_.find(pair_key(cur.id, syms[static_cast<size_t>(cur.next)].id))) {
        heap.push_back({m->rank, top.pos, m->new_id});
        std::push_heap(heap.begin(), heap.end(), later);
      }
    }
  }
}

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto id = vocab_.find(word)) {
      out.push_back(*id);
      return;
    }
  }
  if (cache_.get(word, out)) return;
  thread_local std::vector<Symbol> syms;
  syms.clear();
  initial_symbols(word, syms);
  merge_all(syms);
  const size_t mark = out.size();
  for (const Symbol& s : syms)
    if (s.len != 0) out.push_back(s.id);
  cache_.put(word, out.data() + mark, out.size() - mark);
}

}  // namespace

std::unique_ptr<Model> make_bpe(const JsonField& j) { return std::make_unique<Bpe>(j); }

}  // namespace apus::tok
