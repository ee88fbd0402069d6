// Added tokens (tokenizer.json "added_tokens"): found in the text before the model sees it, the
// raw ones (normalized: false) in the input, the others in the normalized text, leftmost-longest as
// tokenizers' aho-corasick matcher does, with its single_word / lstrip / rstrip rules.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "text/tokenizer/flat_map.h"
#include "text/tokenizer/models.h"
#include "text/tokenizer/pieces.h"

namespace apus::tok {

class Normalizer;

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = true;
};

class AddedVocabulary {
 public:
  // `normalizer` (may be null) is applied to the content of normalized tokens to get their pattern.
  void build(std::vector<AddedToken> tokens, const Normalizer* normalizer);

  // Cuts `text` into raw added tokens and the text pieces between them.
  void split_raw(std::string_view text, PieceList& out) const;
  // Cuts the text pieces of `pl` (already normalized) around normalized added tokens.
  void split_normalized(PieceList& pl) const;

  const AddedToken* by_id(int32_t id) const;
  std::optional<int32_t> find(std::string_view content) const;
  bool is_special_content(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // Byte trie over the patterns of one matching set.
  class Matcher {
   public:
    void add(std::string_view pattern, size_t token_index);
    bool empty() const { return terminal_.size() <= 1; }
    // Longest pattern starting at text[pos]: its length and token index, or {0, -1}.
    std::pair<size_t, int32_t> longest_at(std::string_view text, size_t pos) const;
    bool may_start(unsigned char c) const { return first_[c]; }

   private:
    std::vector<int32_t> terminal_{-1};  // per node: token index or -1
    FlatMap64<uint32_t> edges_;
    bool first_[256] = {};
  };
  // Appends to `out` the pieces of `text` (found at offset `base` of the piece buffer), with the
  // matches of `m` as added-token pieces.
  void split_with(const Matcher& m, std::string_view text, uint32_t base, bool at_input_start,
                  std::vector<Piece>& out) const;

  std::vector<AddedToken> tokens_;
  StringMap<size_t> by_content_;
  std::unordered_map<int32_t, size_t> by_id_;
  Matcher raw_, normalized_;
};

}  // namespace apus::tok
