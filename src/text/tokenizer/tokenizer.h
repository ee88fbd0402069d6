// Tokenizer: text <-> token ids, giving exactly the ids of Hugging Face's `tokenizers` library for a
// tokenizer.json, and of `sentencepiece` for a bare tokenizer.model. See README.md in this folder for
// the pipeline and what is supported.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace apus {

namespace tok {
// One implementation of the encode/decode pipeline (tokenizer.json or sentencepiece).
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const = 0;
  virtual std::optional<std::string> id_to_token(int32_t id) const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual bool is_special(int32_t id) const = 0;
  virtual int64_t vocab_size() const = 0;
};
}  // namespace tok

class Tokenizer {
 public:
  // `dir` holds tokenizer.json (preferred) or tokenizer.model, plus an optional tokenizer_config.json
  // (bos/eos tokens, add_bos_token/add_eos_token for tokenizer.model, chat_template).
  // Throws apus::Error naming the file and the field on any malformed or unsupported input.
  static std::unique_ptr<Tokenizer> load(const std::string& dir);

  // Invalid UTF-8 in `text` is read as U+FFFD per maximal invalid subsequence (Python's
  // errors="replace"), since the reference libraries only accept valid strings.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const;

  // The vocabulary string of one id ("" when unknown). What a single token decodes to is not well
  // defined after the decoder pipeline (byte-level pieces, byte fallback, stripped prefixes), so a
  // streaming detokenizer should decode growing windows of ids instead.
  std::string id_to_token(int32_t id) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  bool is_special(int32_t id) const;
  int64_t vocab_size() const;  // distinct tokens, added tokens included

  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }
  const std::string& bos_token() const { return bos_token_; }  // "" when absent
  const std::string& eos_token() const { return eos_token_; }
  // tokenizer_config.json's chat_template (a string, or the "default" entry of a named list).
  const std::optional<std::string>& chat_template() const { return chat_template_; }
  // tokenizer_config.json's tokenizer_class ("" when absent), e.g. "QWenTokenizer".
  const std::string& tokenizer_class() const { return tokenizer_class_; }

  explicit Tokenizer(std::unique_ptr<tok::Backend> backend) : backend_(std::move(backend)) {}

 private:
  std::unique_ptr<tok::Backend> backend_;
  std::optional<int32_t> bos_id_, eos_id_;
  std::string bos_token_, eos_token_;
  std::optional<std::string> chat_template_;
  std::string tokenizer_class_;
};

}  // namespace apus
