#include "text/tokenizer/tiktoken_tokenizer.h"

#include <utf8proc.h>

#include <array>
#include <fstream>
#include <limits>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "text/tokenizer/regex.h"
#include "text/tokenizer/unicode.h"

namespace apus::tok {
namespace {

// tokenization_qwen.py: PAT_STR, and SPECIAL_TOKENS = <|endoftext|>, <|im_start|>, <|im_end|>,
// <|extra_0|> .. <|extra_204|> numbered from SPECIAL_START_ID.
constexpr const char* kQwenPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr int32_t kSpecialStart = 151643;
constexpr int kExtras = 205;

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

bool base64_decode(std::string_view in, std::string& out) {
  out.clear();
  uint32_t acc = 0;
  int bits = 0;
  size_t i = 0;
  for (; i < in.size() && in[i] != '='; ++i) {
    const int v = base64_value(in[i]);
    if (v < 0) return false;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(char((acc >> bits) & 0xFF));
    }
  }
  for (; i < in.size(); ++i)
    if (in[i] != '=') return false;
  return true;
}

std::string nfc(std::string_view s) {
  bool ascii = true;
  for (char c : s) ascii &= static_cast<unsigned char>(c) < 0x80;
  if (ascii) return std::string(s);
  utf8proc_uint8_t* result = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), utf8proc_ssize_t(s.size()), &result,
                              utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) fail("unicode normalization failed: {}", utf8proc_errmsg(n));
  std::string out(reinterpret_cast<const char*>(result), size_t(n));
  std::free(result);
  return out;
}

class QwenTiktoken : public Backend {
 public:
  explicit QwenTiktoken(const std::string& file) : regex_(Regex::onig_compatible(kQwenPattern), file) {
    std::ifstream in(file, std::ios::binary);
    APUS_CHECK(in.good(), "{}: cannot open", file);
    std::string line, bytes;
    size_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      const size_t space = line.find(' ');
      int64_t rank = -1;
      if (space != std::string::npos) {
        try {
          size_t used = 0;
          rank = std::stoll(line.substr(space + 1), &used);
          if (used != line.size() - space - 1) rank = -1;
        } catch (const std::exception&) {
          rank = -1;
        }
      }
      APUS_CHECK(rank >= 0 && rank < kSpecialStart && base64_decode(std::string_view(line).substr(0, space), bytes),
                 "{}:{}: expected \"<base64 token> <rank below {}>\", found \"{}\"", file, line_no, kSpecialStart, line);
      APUS_CHECK(ranks_.emplace(bytes, int32_t(rank)).second, "{}:{}: token listed twice", file, line_no);
      if (size_t(rank) >= decoder_.size()) decoder_.resize(size_t(rank) + 1);
      decoder_[size_t(rank)] = bytes;
    }
    // QWenTokenizer asserts len(mergeable_ranks) + len(special_tokens) == n_vocab: dense ranks.
    APUS_CHECK(ranks_.size() == decoder_.size(), "{}: ranks are not 0..{} without gaps", file, ranks_.size() - 1);
    for (int b = 0; b < 256; ++b)
      APUS_CHECK(ranks_.count(std::string(1, char(b))), "{}: byte {} has no token (a byte-level BPE needs all 256)",
                 file, b);
    specials_ = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < kExtras; ++i) specials_.push_back("<|extra_" + std::to_string(i) + "|>");
  }

  // tokenization_qwen.py: tokenize() = tiktoken encode of the NFC text with every special token allowed.
  std::vector<int32_t> encode(std::string_view text, bool) const override {
    std::string clean;
    if (utf8_valid_prefix(text) != text.size()) {
      append_utf8_lossy(clean, text);
      text = clean;
    }
    const std::string s = nfc(text);
    std::vector<int32_t> ids;
    size_t pos = 0;
    while (pos < s.size()) {
      size_t at = std::string::npos, len = 0;
      int32_t id = -1;
      for (size_t k = 0; k < specials_.size(); ++k) {  // leftmost (no special is a prefix of another)
        const size_t f = s.find(specials_[k], pos);
        if (f < at) at = f, len = specials_[k].size(), id = kSpecialStart + int32_t(k);
      }
      encode_ordinary(std::string_view(s).substr(pos, (at == std::string::npos ? s.size() : at) - pos), ids);
      if (at == std::string::npos) break;
      ids.push_back(id);
      pos = at + len;
    }
    return ids;
  }

  // _decode: tiktoken's decode with errors="replace"; skip_special_tokens keeps ids below <|endoftext|>.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
    std::string bytes;
    for (int32_t id : ids) {
      if (id >= 0 && size_t(id) < decoder_.size()) bytes += decoder_[size_t(id)];
      else if (!skip_special_tokens && is_special(id)) bytes += specials_[size_t(id - kSpecialStart)];
    }
    std::string out;
    append_utf8_lossy(out, bytes);
    return out;
  }

  std::optional<std::string> id_to_token(int32_t id) const override {  // a regular token's raw bytes
    if (id >= 0 && size_t(id) < decoder_.size()) return decoder_[size_t(id)];
    if (is_special(id)) return specials_[size_t(id - kSpecialStart)];
    return std::nullopt;
  }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    for (size_t k = 0; k < specials_.size(); ++k)
      if (specials_[k] == token) return kSpecialStart + int32_t(k);
    auto it = ranks_.find(std::string(token));
    if (it == ranks_.end()) return std::nullopt;
    return it->second;
  }
  bool is_special(int32_t id) const override { return id >= kSpecialStart && id < kSpecialStart + int32_t(specials_.size()); }
  int64_t vocab_size() const override { return kSpecialStart + int64_t(specials_.size()); }

 private:
  void encode_ordinary(std::string_view text, std::vector<int32_t>& ids) const {
    regex_.for_each_match(text, [&](size_t s, size_t e) {
      if (s == e) return;
      const std::string_view piece = text.substr(s, e - s);
      auto it = ranks_.find(std::string(piece));
      if (it != ranks_.end()) {
        ids.push_back(it->second);
        return;
      }
      byte_pair_encode(piece, ids);
    });
  }

  int32_t rank_of(std::string_view bytes) const {
    auto it = ranks_.find(std::string(bytes));
    return it == ranks_.end() ? std::numeric_limits<int32_t>::max() : it->second;
  }

  // tiktoken's _byte_pair_merge: merge the adjacent pair whose joined bytes have the lowest rank
  // (the leftmost on ties) until no joined pair is a token.
  void byte_pair_encode(std::string_view piece, std::vector<int32_t>& ids) const {
    std::vector<size_t> starts(piece.size() + 1);
    for (size_t i = 0; i <= piece.size(); ++i) starts[i] = i;
    std::vector<int32_t> pair_rank(piece.size());  // rank of parts i and i+1 joined
    constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
    auto joined = [&](size_t i) {
      return i + 2 < starts.size() ? rank_of(piece.substr(starts[i], starts[i + 2] - starts[i])) : kNone;
    };
    for (size_t i = 0; i + 1 < starts.size(); ++i) pair_rank[i] = joined(i);
    while (starts.size() > 2) {
      size_t best = 0;
      for (size_t i = 1; i + 2 < starts.size(); ++i)
        if (pair_rank[i] < pair_rank[best]) best = i;
      if (pair_rank[best] == kNone) break;
      starts.erase(starts.begin() + ptrdiff_t(best) + 1);
      pair_rank.erase(pair_rank.begin() + ptrdiff_t(best) + 1);
      pair_rank[best] = joined(best);
      if (best > 0) pair_rank[best - 1] = joined(best - 1);
    }
    for (size_t i = 0; i + 1 < starts.size(); ++i)
      ids.push_back(rank_of(piece.substr(starts[i], starts[i + 1] - starts[i])));
  }

  Regex regex_;
  std::unordered_map<std::string, int32_t> ranks_;
  std::vector<std::string> decoder_;
  std::vector<std::string> specials_;
};

}  // namespace

std::unique_ptr<Backend> make_qwen_tiktoken_tokenizer(const std::string& tiktoken_file) {
  return std::make_unique<QwenTiktoken>(tiktoken_file);
}

}  // namespace apus::tok
