#include "text/tokenizer/hf_tokenizer.h"

#include "text/tokenizer/added_tokens.h"
#include "text/tokenizer/decoders.h"
#include "text/tokenizer/models.h"
#include "text/tokenizer/normalizers.h"
#include "text/tokenizer/post_processors.h"
#include "text/tokenizer/pre_tokenizers.h"
#include "text/tokenizer/unicode.h"

namespace apus::tok {
namespace {

class HfTokenizer : public Backend {
 public:
  HfTokenizer(const json& root, const std::string& file) {
    const JsonField j(root, file);
    j.object();
    model_ = make_model(j["model"]);
    if (auto n = j.get("normalizer")) normalizer_ = make_normalizer(*n);
    if (auto p = j.get("pre_tokenizer")) pre_tokenizer_ = make_pre_tokenizer(*p);
    if (auto p = j.get("post_processor")) post_processor_ = make_post_processor(*p);
    if (auto d = j.get("decoder")) decoder_ = make_decoder(*d);
    load_added_tokens(j);
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override {
    std::string clean;
    if (utf8_valid_prefix(text) != text.size()) {
      append_utf8_lossy(clean, text);
      text = clean;
    }
    PieceList pl;
    added_.split_raw(text, pl);
    if (normalizer_) {
      std::string scratch;
      transform_pieces(pl, scratch, [this](const Piece&, std::string_view t, std::string& out) {
        normalizer_->normalize(t, out);
      });
    }
    added_.split_normalized(pl);
    if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(pl);
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    for (const Piece& p : pl.pieces) {
      if (p.is_added()) {
        ids.push_back(p.added_id);
      } else {
        model_->tokenize(pl.view(p), ids);
      }
    }
    if (post_processor_) post_processor_->process(ids, add_special_tokens);
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
      auto t = token_of(id);
      if (!t) continue;  // tokenizers drops ids it does not know
      if (skip_special_tokens && added_.is_special_content(*t)) continue;
      tokens.emplace_back(*t);
    }
    if (!decoder_) {  // tokenizers joins with spaces
      std::string out;
      for (size_t i = 0; i < tokens.size(); ++i) {
        if (i) out += ' ';
        out += tokens[i];
      }
      return out;
    }
    decoder_->decode_chain(tokens);
    std::string out;
    for (const std::string& t : tokens) out += t;
    return out;
  }

  std::optional<std::string> id_to_token(int32_t id) const override {
    auto t = token_of(id);
    return t ? std::optional<std::string>(std::string(*t)) : std::nullopt;
  }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    if (auto id = added_.find(token)) return id;
    return model_->token_to_id(token);
  }
  bool is_special(int32_t id) const override {
    const AddedToken* t = added_.by_id(id);
    return t && t->special;
  }
  int64_t vocab_size() const override { return vocab_size_; }

 private:
  std::optional<std::string_view> token_of(int32_t id) const {
    if (const AddedToken* t = added_.by_id(id)) return t->content;
    return model_->id_to_token(id);
  }

  void load_added_tokens(const JsonField& j) {
    std::vector<AddedToken> tokens;
    StringMap<bool> new_strings;  // contents the model does not have
    if (auto list = j.get("added_tokens")) {
      list->array();
      for (size_t i = 0; i < list->size(); ++i) {
        const JsonField e = list->at(i);
        AddedToken t;
        t.content = e["content"].str();
        // tokenizers gives a token the model already has the model's id, whatever the file says.
        const auto model_id = model_->token_to_id(t.content);
        const int64_t id = e["id"].integer();
        if (!model_id && (id < 0 || id > INT32_MAX)) e["id"].fail("is out of range");
        t.id = model_id ? *model_id : static_cast<int32_t>(id);
        t.special = e.bool_or("special", false);
        t.single_word = e.bool_or("single_word", false);
        t.lstrip = e.bool_or("lstrip", false);
        t.rstrip = e.bool_or("rstrip", false);
        t.normalized = e.bool_or("normalized", !t.special);
        if (!model_id) new_strings.emplace(t.content, true);
        tokens.push_back(std::move(t));
      }
    }
    vocab_size_ = static_cast<int64_t>(model_->vocab_size() + new_strings.size());
    added_.build(std::move(tokens), normalizer_.get());
  }

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  AddedVocabulary added_;
  int64_t vocab_size_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_hf_tokenizer(const json& root, const std::string& file) {
  return std::make_unique<HfTokenizer>(root, file);
}

}  // namespace apus::tok
