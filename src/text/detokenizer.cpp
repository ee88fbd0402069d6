#include "text/detokenizer.h"

#include <algorithm>

namespace apus {

namespace {

// How many prompt ids give a newly generated id its context (vLLM uses the same window).
constexpr size_t kContextIds = 5;

bool ends_incomplete(const std::string& s) {
  if (s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0) return true;  // U+FFFD
  // A truncated multi-byte sequence at the end (a decoder that keeps raw bytes).
  size_t i = s.size(), cont = 0;
  while (i > 0 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80 && cont < 4) --i, ++cont;
  if (i == 0) return cont > 0;
  const unsigned char lead = static_cast<unsigned char>(s[i - 1]);
  const size_t need = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : lead >= 0xC0 ? 1 : 0;
  return need > cont;
}

}  // namespace

size_t utf8_boundary(const std::string& s, size_t limit) {
  limit = std::min(limit, s.size());
  while (limit > 0 && limit < s.size() && (static_cast<unsigned char>(s[limit]) & 0xC0) == 0x80) --limit;
  return limit;
}

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, const std::vector<int32_t>& prompt,
                                               bool skip_special_tokens, std::vector<std::string> stop,
                                               bool include_stop_in_output)
    : tok_(tokenizer), skip_special_(skip_special_tokens), stop_(std::move(stop)), include_stop_(include_stop_in_output) {
  std::erase(stop_, std::string());
  for (const auto& s : stop_) max_stop_len_ = std::max(max_stop_len_, s.size());
  const size_t keep = std::min(kContextIds, prompt.size());
  ids_.assign(prompt.end() - long(keep), prompt.end());
  prefix_offset_ = 0;
  read_offset_ = ids_.size();
}

bool IncrementalDetokenizer::add(const std::vector<int32_t>& ids) {
  for (int32_t id : ids) {
    if (stopped_) break;
    ids_.push_back(id);
    const std::vector<int32_t> prefix(ids_.begin() + long(prefix_offset_), ids_.begin() + long(read_offset_));
    const std::vector<int32_t> window(ids_.begin() + long(prefix_offset_), ids_.end());
    const std::string prefix_text = tok_.decode(prefix, skip_special_);
    const std::string new_text = tok_.decode(window, skip_special_);
    if (new_text.size() <= prefix_text.size() || ends_incomplete(new_text)) continue;  // wait for more bytes
    const size_t before = text_.size();
    text_ += new_text.substr(prefix_text.size());
    prefix_offset_ = read_offset_;
    read_offset_ = ids_.size();
    // A stop string can only end inside the new text, so search from where it could begin.
    const size_t from = before >= max_stop_len_ ? before - max_stop_len_ + 1 : 0;
    size_t best = std::string::npos;
    for (const auto& s : stop_) {
      const size_t p = text_.find(s, from);
      if (p != std::string::npos && p < best) best = p, matched_stop_ = s;
    }
    if (best != std::string::npos) {
      text_.resize(include_stop_ ? best + matched_stop_.size() : best);
      stopped_ = true;
    }
  }
  return stopped_;
}

std::string IncrementalDetokenizer::take_delta(bool final) {
  size_t limit = text_.size();
  if (!final && !stopped_ && max_stop_len_ > 1) limit = text_.size() >= max_stop_len_ - 1 ? text_.size() - (max_stop_len_ - 1) : 0;
  limit = utf8_boundary(text_, limit);
  if (limit <= emitted_) return {};
  std::string delta = text_.substr(emitted_, limit - emitted_);
  emitted_ = limit;
  return delta;
}

}  // namespace apus
