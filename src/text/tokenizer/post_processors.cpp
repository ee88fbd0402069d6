#include "text/tokenizer/post_processors.h"

#include <string>

namespace apus::tok {
namespace {

// The ids a single-sequence template puts before and after the sequence.
class Wrap : public PostProcessor {
 public:
  Wrap(std::vector<int32_t> before, std::vector<int32_t> after) : before_(std::move(before)), after_(std::move(after)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    ids.insert(ids.begin(), before_.begin(), before_.end());
    ids.insert(ids.end(), after_.begin(), after_.end());
  }

 private:
  std::vector<int32_t> before_, after_;
};

class NoOp : public PostProcessor {
 public:
  void process(std::vector<int32_t>&, bool) const override {}
};

class Sequence : public PostProcessor {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PostProcessor>> steps) : steps_(std::move(steps)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    for (const auto& s : steps_) s->process(ids, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

std::unique_ptr<PostProcessor> template_processing(const JsonField& j) {
  const JsonField single = j["single"];
  const JsonField specials = j["special_tokens"];
  specials.object();
  std::vector<int32_t> before, after;
  bool seen_sequence = false;
  for (size_t i = 0; i < single.array().size(); ++i) {
    const JsonField item = single.at(i);
    if (auto seq = item.get("Sequence")) {
      const std::string id = (*seq)["id"].str();
      if (id != "A") (*seq)["id"].fail("is '" + id + "' in the single-sequence template (expected A)");
      if (seen_sequence) item.fail("repeats the sequence");
      seen_sequence = true;
    } else if (auto tok = item.get("SpecialToken")) {
      const JsonField name = (*tok)["id"];
      auto entry = specials.get(name.str());
      if (!entry) name.fail("names '" + name.str() + "', which is not in special_tokens");
      const JsonField ids = (*entry)["ids"];
      for (size_t k = 0; k < ids.array().size(); ++k) {
        (seen_sequence ? after : before).push_back(static_cast<int32_t>(ids.at(k).integer()));
      }
    } else {
      item.fail("expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  if (!seen_sequence) single.fail("has no Sequence A");
  return std::make_unique<Wrap>(std::move(before), std::move(after));
}

// BertProcessing / RobertaProcessing: [cls] sequence [sep], each given as [token, id].
std::unique_ptr<PostProcessor> cls_sep(const JsonField& j) {
  auto id_of = [&](const char* key) {
    const JsonField f = j[key];
    if (f.array().size() != 2) f.fail("expected [token, id]");
    return static_cast<int32_t>(f.at(1).integer());
  };
  return std::make_unique<Wrap>(std::vector<int32_t>{id_of("cls")}, std::vector<int32_t>{id_of("sep")});
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const JsonField& j) {
  const std::string type = j["type"].str();
  if (type == "TemplateProcessing") return template_processing(j);
  if (type == "BertProcessing" || type == "RobertaProcessing") return cls_sep(j);
  if (type == "ByteLevel") return std::make_unique<NoOp>();  // only trims offsets
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PostProcessor>> steps;
    const JsonField list = j["processors"];
    for (size_t i = 0; i < list.array().size(); ++i) steps.push_back(make_post_processor(list.at(i)));
    return std::make_unique<Sequence>(std::move(steps));
  }
  j.fail("has unknown post-processor type '" + type + "'");
}

}  // namespace apus::tok
