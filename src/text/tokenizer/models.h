// tokenizer.json "model": BPE, Unigram, WordPiece and WordLevel, each turning one pre-tokenized word
// into ids exactly as the `tokenizers` model of the same name does.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "text/tokenizer/json_field.h"

namespace apus::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// token <-> id of a model's vocabulary.
class Vocab {
 public:
  // Adds a token (a later duplicate string wins the string -> id direction, as a HashMap collect).
  // `where` names the field for the error on an out-of-range id.
  void add(std::string token, int64_t id, const JsonField& where);
  std::optional<int32_t> find(std::string_view token) const {
    auto it = ids_.find(token);
    return it == ids_.end() ? std::nullopt : std::optional<int32_t>(it->second);
  }
  std::optional<std::string_view> token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= tokens_.size() || !present_[static_cast<size_t>(id)]) return std::nullopt;
    return tokens_[static_cast<size_t>(id)];
  }
  size_t size() const { return ids_.size(); }
  void reserve(size_t n) { ids_.reserve(n); }

 private:
  StringMap<int32_t> ids_;
  std::vector<std::string> tokens_;
  std::vector<bool> present_;
};

// Bounded word -> ids cache shared by all threads; the models are pure, so a hit is always exact.
// Like tokenizers, only words shorter than 256 bytes are kept; when full it starts over.
class WordCache {
 public:
  static constexpr size_t kMaxWordBytes = 256;
  explicit WordCache(size_t capacity = 16384) : capacity_(capacity) {}
  bool get(std::string_view word, std::vector<int32_t>& out) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(word);
    if (it == map_.end()) return false;
    out.insert(out.end(), it->second.begin(), it->second.end());
    return true;
  }
  void put(std::string_view word, const int32_t* ids, size_t n) const {
    if (word.size() >= kMaxWordBytes) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (map_.size() >= capacity_) map_.clear();
    map_.emplace(std::string(word), std::vector<int32_t>(ids, ids + n));
  }

 private:
  size_t capacity_;
  mutable std::mutex mu_;
  mutable StringMap<std::vector<int32_t>> map_;
};

class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids of one word to `out`.
  virtual void tokenize(std::string_view word, std::vector<int32_t>& out) const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual std::optional<std::string_view> id_to_token(int32_t id) const = 0;
  virtual size_t vocab_size() const = 0;
};

std::unique_ptr<Model> make_model(const JsonField& j);
std::unique_ptr<Model> make_bpe(const JsonField& j);
std::unique_ptr<Model> make_unigram(const JsonField& j);
std::unique_ptr<Model> make_wordpiece(const JsonField& j);
std::unique_ptr<Model> make_wordlevel(const JsonField& j);

// "<0xAB>": the byte-fallback token of one byte.
std::string byte_token(unsigned char b);

}  // namespace apus::tok
