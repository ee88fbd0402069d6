// Streaming detokenization: turns generated ids into text deltas that never split a UTF-8
// character, keep the tokenizer's leading-space rules (ids are decoded in the context of the
// tokens before them), and stop at stop strings even when they span several tokens.
#pragma once
#include <string>
#include <vector>

#include "text/tokenizer/tokenizer.h"

namespace apus {

class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tokenizer, const std::vector<int32_t>& prompt,
                         bool skip_special_tokens = true, std::vector<std::string> stop = {},
                         bool include_stop_in_output = false);

  // Appends generated ids. Returns true when a stop string appeared: the text is then cut before
  // it (or after it, with include_stop_in_output) and later ids are ignored.
  bool add(const std::vector<int32_t>& ids);
  // The text produced since the last call. Until `final`, text that could still turn out to be
  // the start of a stop string is held back.
  std::string take_delta(bool final);
  const std::string& text() const { return text_; }
  bool stopped() const { return stopped_; }
  const std::string& matched_stop() const { return matched_stop_; }

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<std::string> stop_;
  bool include_stop_;
  size_t max_stop_len_ = 0;
  std::vector<int32_t> ids_;   // prompt tail + generated ids
  size_t prefix_offset_ = 0;   // ids_[prefix_offset_, read_offset_) were decoded before
  size_t read_offset_ = 0;
  std::string text_;
  size_t emitted_ = 0;
  bool stopped_ = false;
  std::string matched_stop_;
};

// Bytes of `s` up to `limit`, moved back to a UTF-8 character boundary.
size_t utf8_boundary(const std::string& s, size_t limit);

}  // namespace apus
