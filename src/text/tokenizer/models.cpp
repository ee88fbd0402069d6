#include "text/tokenizer/models.h"

#include <fmt/format.h>

namespace apus::tok {

void Vocab::add(std::string token, int64_t id, const JsonField& where) {
  // Ids index a dense table; a vocabulary this sparse would be a corrupt file, not a real model.
  constexpr int64_t kMaxId = int64_t(1) << 26;
  if (id < 0 || id >= kMaxId) where.fail(fmt::format("has id {} for token {:?}, outside [0, {})", id, token, kMaxId));
  const auto i = static_cast<size_t>(id);
  if (i >= tokens_.size()) {
    tokens_.resize(i + 1);
    present_.resize(i + 1, false);
  }
  tokens_[i] = token;
  present_[i] = true;
  ids_.insert_or_assign(std::move(token), static_cast<int32_t>(id));
}

std::string byte_token(unsigned char b) { return fmt::format("<0x{:02X}>", b); }

std::unique_ptr<Model> make_model(const JsonField& j) {
  std::string type;
  if (auto t = j.get("type")) {
    type = t->str();
  } else if (j.get("merges")) {  // files older than the "type" tag: the fields tell the model
    type = "BPE";
  } else if (auto v = j.get("vocab"); v && v->value().is_array()) {
    type = "Unigram";
  } else if (j.get("continuing_subword_prefix") || j.get("max_input_chars_per_word")) {
    type = "WordPiece";
  } else {
    type = "WordLevel";
  }
  if (type == "BPE") return make_bpe(j);
  if (type == "Unigram") return make_unigram(j);
  if (type == "WordPiece") return make_wordpiece(j);
  if (type == "WordLevel") return make_wordlevel(j);
  j.fail("has unknown model type '" + type + "'");
}

}  // namespace apus::tok
