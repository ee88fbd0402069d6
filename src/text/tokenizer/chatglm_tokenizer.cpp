#include "text/tokenizer/chatglm_tokenizer.h"

#include <sentencepiece_processor.h>

#include <array>

#include "core/error.h"
#include "text/tokenizer/sentencepiece_tokenizer.h"

namespace apus::tok {
namespace {

constexpr std::array<std::string_view, 9> kGlmSpecials = {
    "[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"};

class ChatGlmTokenizer : public Backend {
 public:
  explicit ChatGlmTokenizer(const std::string& file) {
    const auto status = sp_.Load(file);
    if (!status.ok()) fail("{}: cannot load SentencePiece model: {}", file, status.ToString());
    n_sp_ = sp_.GetPieceSize();
  }

  // ChatGLMTokenizer: pieces of sp_model.EncodeAsPieces, each turned into an id by
  // SPTokenizer.convert_token_to_id, which looks the GLM special tokens up first: a piece spelled
  // "sop" or "eop" gets the special id (as the original does); [gMASK] sop in front with specials.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override {
    const std::vector<int> pieces = sentencepiece_encode(sp_, text);
    std::vector<int32_t> ids;
    ids.reserve(pieces.size() + 2);
    if (add_special_tokens) ids = {special_id("[gMASK]"), special_id("sop")};
    for (int id : pieces) {
      const auto glm = glm_index(sp_.IdToPiece(id));
      ids.push_back(glm ? n_sp_ + *glm : id);
    }
    return ids;
  }

  // SPTokenizer.decode: runs of sentencepiece ids through sp_model.decode, GLM specials as their text.
  // skip_special_tokens drops the GLM specials and sentencepiece's control and unknown ids.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
    return sentencepiece_decode(sp_, ids, [&](int32_t id) {
      if (id >= n_sp_ && id < n_sp_ + int32_t(kGlmSpecials.size()))
        return DecodeStep{DecodeStep::kBreak, skip_special_tokens ? std::string_view() : kGlmSpecials[size_t(id - n_sp_)]};
      if (id >= 0 && id < n_sp_ && !(skip_special_tokens && is_special(id))) return DecodeStep{DecodeStep::kJoin};
      return DecodeStep{DecodeStep::kSkip};
    });
  }

  std::optional<std::string> id_to_token(int32_t id) const override {
    if (id >= n_sp_ && id < n_sp_ + int32_t(kGlmSpecials.size())) return std::string(kGlmSpecials[size_t(id - n_sp_)]);
    if (id < 0 || id >= n_sp_) return std::nullopt;
    return sp_.IdToPiece(id);
  }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    if (auto glm = glm_index(token)) return n_sp_ + *glm;
    const int id = sp_.PieceToId(token);
    if (id < 0 || (sp_.IsUnknown(id) && sp_.IdToPiece(id) != token)) return std::nullopt;
    return id;
  }
  bool is_special(int32_t id) const override {
    if (id >= n_sp_) return id < n_sp_ + int32_t(kGlmSpecials.size());
    return id >= 0 && (sp_.IsControl(id) || sp_.IsUnknown(id));
  }
  int64_t vocab_size() const override { return n_sp_ + int64_t(kGlmSpecials.size()); }
  std::string eos_piece() const { return sp_.eos_id() >= 0 ? sp_.IdToPiece(sp_.eos_id()) : ""; }

 private:
  static std::optional<int32_t> glm_index(std::string_view piece) {
    for (size_t k = 0; k < kGlmSpecials.size(); ++k)
      if (kGlmSpecials[k] == piece) return int32_t(k);
    return std::nullopt;
  }
  int32_t special_id(std::string_view token) const { return n_sp_ + *glm_index(token); }

  sentencepiece::SentencePieceProcessor sp_;
  int32_t n_sp_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_chatglm_tokenizer(const std::string& model_file, std::string* eos_piece) {
  auto t = std::make_unique<ChatGlmTokenizer>(model_file);
  *eos_piece = t->eos_piece();
  return t;
}

}  // namespace apus::tok
