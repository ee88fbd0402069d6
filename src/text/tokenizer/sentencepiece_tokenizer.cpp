#include "text/tokenizer/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include "core/error.h"
#include "text/tokenizer/unicode.h"

namespace apus::tok {
namespace {

class SentencePieceTokenizer : public Backend {
 public:
  SentencePieceTokenizer(const std::string& file, bool add_bos, bool add_eos) : add_bos_(add_bos), add_eos_(add_eos) {
    const auto status = sp_.Load(file);
    if (!status.ok()) fail("{}: cannot load SentencePiece model: {}", file, status.ToString());
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override {
    const std::vector<int> pieces = sentencepiece_encode(sp_, text);
    std::vector<int32_t> ids;
    ids.reserve(pieces.size() + 2);
    if (add_special_tokens && add_bos_ && sp_.bos_id() >= 0) ids.push_back(sp_.bos_id());
    ids.insert(ids.end(), pieces.begin(), pieces.end());
    if (add_special_tokens && add_eos_ && sp_.eos_id() >= 0) ids.push_back(sp_.eos_id());
    return ids;
  }

  // Runs of ordinary ids are decoded by sentencepiece; control and unknown ids are dropped when
  // skipping special tokens and written as their piece otherwise (sentencepiece alone would drop
  // controls and write <unk> as " ⁇ ").
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
    return sentencepiece_decode(sp_, ids, [&](int32_t id) {
      if (id < 0 || id >= sp_.GetPieceSize()) return DecodeStep{DecodeStep::kSkip};
      if (!is_special(id)) return DecodeStep{DecodeStep::kJoin};
      return DecodeStep{DecodeStep::kBreak, skip_special_tokens ? std::string_view() : std::string_view(sp_.IdToPiece(id))};
    });
  }

  std::optional<std::string> id_to_token(int32_t id) const override {
    if (id < 0 || id >= sp_.GetPieceSize()) return std::nullopt;
    return sp_.IdToPiece(id);
  }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    const int id = sp_.PieceToId(token);  // unknown pieces map to the unk id
    if (id < 0 || (sp_.IsUnknown(id) && sp_.IdToPiece(id) != token)) return std::nullopt;
    return id;
  }
  bool is_special(int32_t id) const override { return sp_.IsControl(id) || sp_.IsUnknown(id); }
  int bos() const { return sp_.bos_id(); }
  int eos() const { return sp_.eos_id(); }
  std::string piece(int id) const { return id_to_token(id).value_or(""); }
  int64_t vocab_size() const override { return sp_.GetPieceSize(); }

 private:
  sentencepiece::SentencePieceProcessor sp_;
  bool add_bos_, add_eos_;
};

}  // namespace

std::vector<int> sentencepiece_encode(const sentencepiece::SentencePieceProcessor& sp, std::string_view text) {
  std::string clean;
  if (utf8_valid_prefix(text) != text.size()) {
    append_utf8_lossy(clean, text);
    text = clean;
  }
  std::vector<int> pieces;
  const auto status = sp.Encode(text, &pieces);
  if (!status.ok()) fail("SentencePiece encode failed: {}", status.ToString());
  return pieces;
}

std::string sentencepiece_decode(const sentencepiece::SentencePieceProcessor& sp, const std::vector<int32_t>& ids,
                                 const std::function<DecodeStep(int32_t)>& step) {
  std::string out, part;
  std::vector<int> run;
  auto flush = [&] {
    if (run.empty()) return;
    const auto status = sp.Decode(run, &part);
    if (!status.ok()) fail("SentencePiece decode failed: {}", status.ToString());
    out += part;
    run.clear();
  };
  for (int32_t id : ids) {
    const DecodeStep d = step(id);
    if (d.kind == DecodeStep::kJoin) {
      run.push_back(id);
    } else if (d.kind == DecodeStep::kBreak) {
      flush();
      out += d.text;
    }
  }
  flush();
  return out;
}

std::unique_ptr<Backend> make_sentencepiece_tokenizer(const std::string& model_file, bool add_bos, bool add_eos,
                                                      std::string* bos_piece, std::string* eos_piece) {
  auto t = std::make_unique<SentencePieceTokenizer>(model_file, add_bos, add_eos);
  *bos_piece = t->piece(t->bos());
  *eos_piece = t->piece(t->eos());
  return t;
}

}  // namespace apus::tok
