// Unigram as `tokenizers` runs it (its encode_optimized, after sentencepiece): a Viterbi pass over
// byte positions keeping the best-scoring path ending at each, where a character no piece covers
// becomes <unk> with score min_score - 10, consecutive unknowns fused into one.
#include <limits>

#include "core/error.h"
#include "text/tokenizer/flat_map.h"
#include "text/tokenizer/models.h"
#include "text/tokenizer/unicode.h"

namespace apus::tok {
namespace {

class Unigram : public Model {
 public:
  explicit Unigram(const JsonField& j) {
    const JsonField v = j["vocab"];
    const json& list = v.array();
    scores_.reserve(list.size());
    vocab_.reserve(list.size());
    nodes_.push_back(-1);
    for (size_t i = 0; i < list.size(); ++i) {
      const json& e = list[i];
      if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number()) {
        v.at(i).fail("expected [piece, score]");
      }
      const auto& piece = e[0].get_ref<const std::string&>();
      const double score = e[1].get<double>();
      vocab_.add(piece, static_cast<int64_t>(i), v);
      scores_.push_back(score);
      min_score_ = std::min(min_score_, score);
      insert(piece, static_cast<int32_t>(i));
    }
    if (auto u = j.get("unk_id")) {
      const int64_t id = u->integer();
      if (id < 0 || static_cast<size_t>(id) >= list.size()) u->fail("is outside the vocabulary");
      unk_id_ = static_cast<int32_t>(id);
    }
    byte_fallback_ = j.bool_or("byte_fallback", false);
  }

  void tokenize(std::string_view word, std::vector<int32_t>& out) const override;
  std::optional<int32_t> token_to_id(std::string_view t) const override { return vocab_.find(t); }
  std::optional<std::string_view> id_to_token(int32_t id) const override { return vocab_.token(id); }
  // tokenizers counts the entries of the list, a repeated piece included.
  size_t vocab_size() const override { return scores_.size(); }

 private:
  // Byte trie for the common-prefix search: node -> token id (-1 if none), edges keyed node<<8|byte.
  void insert(const std::string& piece, int32_t id) {
    uint32_t node = 0;
    for (char c : piece) {
      const uint64_t key = (uint64_t(node) << 8) | static_cast<unsigned char>(c);
      if (const uint32_t* child = edges_.find(key)) {
        node = *child;
      } else {
        const auto created = static_cast<uint32_t>(nodes_.size());
        nodes_.push_back(-1);
        edges_.set(key, created);
        node = created;
      }
    }
    nodes_[node] = id;
  }
  void emit(std::string_view piece, std::vector<int32_t>& out) const;

  Vocab vocab_;
  std::vector<double> scores_;
  std::vector<int32_t> nodes_;
  FlatMap64<uint32_t> edges_;
  double min_score_ = std::numeric_limits<double>::infinity();
  std::optional<int32_t> unk_id_;
  bool byte_fallback_ = false;
  WordCache cache_;
};

// tokenizers looks every piece up by its string, so a fused unknown run that happens to spell a
// piece gets that piece's id.
void Unigram::emit(std::string_view piece, std::vector<int32_t>& out) const {
  if (auto id = vocab_.find(piece)) {
    out.push_back(*id);
    return;
  }
  if (byte_fallback_) {
    bool all = true;
    for (char c : piece) all = all && vocab_.find(byte_token(static_cast<unsigned char>(c))).has_value();
    if (all) {
      for (char c : piece) out.push_back(*vocab_.find(byte_token(static_cast<unsigned char>(c))));
      return;
    }
  }
  if (!unk_id_) fail("Unigram: {:?} is not in the vocabulary and the model has no unk_id", std::string(piece));
  out.push_back(*unk_id_);
}

void Unigram::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty() || cache_.get(word, out)) return;
  struct Node {
    int32_t id = -1;
    int64_t start = -1;  // -1: not reached yet
    double score = 0;
  };
  const size_t n = word.size();
  std::vector<Node> best(n + 1);
  const double unk_score = min_score_ - 10.0;
  for (size_t start = 0; start < n;) {
    const double base = best[start].score;
    const auto mblen = static_cast<size_t>(utf8_len(static_cast<unsigned char>(word[start])));
    bool single_char_piece = false;
    uint32_t node = 0;
    for (size_t k = start; k < n; ++k) {
      const uint32_t* child = edges_.find((uint64_t(node) << 8) | static_cast<unsigned char>(word[k]));
      if (!child) break;
      node = *child;
      const int32_t id = nodes_[node];
      if (id < 0) continue;
      Node& target = best[k + 1];
      const double candidate = base + scores_[static_cast<size_t>(id)];
      if (target.start < 0 || candidate > target.score) target = {id, static_cast<int64_t>(start), candidate};
      if (k + 1 - start == mblen) single_char_piece = true;
    }
    if (!single_char_piece) {
      if (!unk_id_) fail("Unigram: no piece covers {:?} and the model has no unk_id", std::string(word.substr(start, mblen)));
      Node& target = best[start + mblen];
      const double candidate = base + unk_score;
      if (target.start < 0 || candidate > target.score) target = {*unk_id_, static_cast<int64_t>(start), candidate};
    }
    start += mblen;
  }
  // Walk back from the end, fusing neighbouring <unk> nodes (tokenizers' Unigram always fuses).
  std::vector<std::pair<size_t, size_t>> ranges;  // [start, end), last piece first
  bool last_unk = false;
  for (size_t end = n; end > 0;) {
    const Node& node = best[end];
    const auto start = static_cast<size_t>(node.start);
    const bool unk = unk_id_ && node.id == *unk_id_;
    if (unk && last_unk) {
      ranges.back().first = start;
    } else {
      ranges.emplace_back(start, end);
    }
    last_unk = unk;
    end = start;
  }
  const size_t mark = out.size();
  for (size_t i = ranges.size(); i-- > 0;) emit(word.substr(ranges[i].first, ranges[i].second - ranges[i].first), out);
  cache_.put(word, out.data() + mark, out.size() - mark);
}

}  // namespace

std::unique_ptr<Model> make_unigram(const JsonField& j) { return std::make_unique<Unigram>(j); }

}  // namespace apus::tok
