// tokenizer.json "post_processor": TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel
// and Sequence. Only the ids of a single sequence matter here: they add special tokens when the
// caller asks for them and otherwise leave the ids alone.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "text/tokenizer/json_field.h"

namespace apus::tok {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
};

std::unique_ptr<PostProcessor> make_post_processor(const JsonField& j);

}  // namespace apus::tok
