// ChatTemplate for the checkpoints' own Jinja chat templates: the text must be what transformers'
// apply_chat_template renders (tests/data/templates/jinja_golden.json, written by
// tools/templates/make_template_golden.py with Python's Jinja2 set up as transformers sets it up)
// and the ids must be encode(text, add_special_tokens=false). Also template selection, message
// parsing, the special tokens map and the reference's model types.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "text/chat_template.h"
#include "text/jinja/jinja.h"
#include "text/model_types.h"
#include "text/template_types.h"

namespace apus {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ojson = nlohmann::ordered_json;

fs::path tokenizer_dir(const std::string& name) { return fs::path(APUS_SOURCE_DIR) / "third_party" / "tokenizers" / name; }
fs::path data_dir() { return fs::path(APUS_SOURCE_DIR) / "tests" / "data" / "templates"; }

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Tokenizers are loaded once per test binary (the larger ones take a while).
const Tokenizer* tokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    const fs::path dir = tokenizer_dir(name);
    std::unique_ptr<Tokenizer> t;
    if (fs::exists(dir / "tokenizer.json") || fs::exists(dir / "tokenizer.model")) t = Tokenizer::load(dir.string());
    it = cache.emplace(name, std::move(t)).first;
  }
  return it->second.get();
}

#define REQUIRE_TOKENIZER(var, name)                                                           \
  const Tokenizer* var = tokenizer(name);                                                      \
  if (!var) GTEST_SKIP() << tokenizer_dir(name) << " is absent (run scripts/fetch-tokenizers.sh)"

std::vector<ChatMessage> to_messages(const nlohmann::json& j) { return parse_messages(j); }

struct GoldenCase {
  std::string name, tokenizer, source;
  std::vector<ChatMessage> messages;
  bool add_generation_prompt;
  ojson extra;
  std::optional<std::string> text, error;
};
void PrintTo(const GoldenCase& c, std::ostream* os) { *os << c.name; }

std::vector<GoldenCase> golden_cases() {
  std::vector<GoldenCase> out;
  const fs::path file = data_dir() / "jinja_golden.json";
  if (!fs::exists(file)) return out;
  const auto g = ojson::parse(read_file(file));
  for (const auto& c : g["cases"]) {
    GoldenCase gc;
    gc.name = c["name"].get<std::string>();
    gc.tokenizer = c["tokenizer"].get<std::string>();
    if (c.contains("template_file")) gc.source = read_file(data_dir() / c["template_file"].get<std::string>());
    gc.messages = to_messages(nlohmann::json::parse(c["messages"].dump()));
    gc.add_generation_prompt = c["add_generation_prompt"].get<bool>();
    gc.extra = c["extra"];
    if (c.contains("text")) gc.text = c["text"].get<std::string>();
    if (c.contains("error")) gc.error = c["error"].get<std::string>();
    out.push_back(std::move(gc));
  }
  return out;
}

class JinjaGolden : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(JinjaGolden, TextAndIdsMatchTransformers) {
  const GoldenCase& c = GetParam();
  REQUIRE_TOKENIZER(tok, c.tokenizer);
  jinja::set_clock_for_testing(1721995200);
  const std::string source = c.source.empty() ? *tok->chat_template() : c.source;
  auto tmpl = make_jinja_template(*tok, source, read_special_tokens_map(tokenizer_dir(c.tokenizer).string()));
  EXPECT_EQ(tmpl->name(), "jinja");
  if (c.error) {
    try {
      tmpl->render(c.messages, c.add_generation_prompt, c.extra);
      ADD_FAILURE() << "rendered without an error";
    } catch (const jinja::TemplateRaised& e) {
      EXPECT_THAT(e.message(), HasSubstr(*c.error));
    }
    return;
  }
  RenderedPrompt p = tmpl->render(c.messages, c.add_generation_prompt, c.extra);
  EXPECT_EQ(p.text, *c.text);
  EXPECT_EQ(p.ids, tok->encode(*c.text, false));
  jinja::set_clock_for_testing(std::nullopt);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, JinjaGolden, ::testing::ValuesIn(golden_cases()),
                         [](const ::testing::TestParamInfo<GoldenCase>& p) {
                           std::string n = p.param.name;
                           for (char& ch : n)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(JinjaTemplate, GoldenFixturePresent) { EXPECT_GE(golden_cases().size(), 40u); }

TEST(JinjaTemplate, AnchorsAgainstKnownIds) {
  REQUIRE_TOKENIZER(tok, "qwen3");
  auto tmpl = make_jinja_template(*tok, *tok->chat_template());
  RenderedPrompt p = tmpl->render({{"user", "Hello"}}, true);
  EXPECT_EQ(p.text, "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
  // <|im_start|> user \n Hello <|im_end|> \n <|im_start|> assistant \n
  EXPECT_EQ(p.ids, (std::vector<int32_t>{151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198}));
  EXPECT_EQ(tmpl->stop_words(), std::vector<std::string>{"<|im_end|>"});
  EXPECT_EQ(tmpl->default_system(), std::nullopt);
}

TEST(JinjaTemplate, ContextHasSpecialTokensToolsAndExtras) {
  REQUIRE_TOKENIZER(tok, "qwen3");
  auto tmpl = make_jinja_template(
      *tok, "{{ bos_token }}|{{ eos_token }}|{{ tools is none }}|{{ documents is none }}|{{ flag }}|{{ eos_token }}",
      ojson{{"bos_token", "<B>"}, {"eos_token", "<E>"}});
  EXPECT_EQ(tmpl->render({}, false, {{"flag", 7}}).text, "<B>|<E>|True|True|7|<E>");
  // Extras override the special tokens, as keyword arguments do in apply_chat_template.
  EXPECT_EQ(tmpl->render({}, false, {{"flag", 1}, {"eos_token", "X"}}).text, "<B>|X|True|True|1|X");
  // Without a special tokens map: the tokenizer's bos/eos (Qwen3 has no bos: undefined renders "").
  auto plain = make_jinja_template(*tok, "[{{ bos_token }}][{{ eos_token }}]");
  EXPECT_EQ(plain->render({}, false).text, "[][<|im_end|>]");
  EXPECT_THAT([&] { tmpl->render({}, false, ojson::array({1})); },
              ::testing::ThrowsMessage<Error>(HasSubstr("must be a JSON object")));
}

TEST(JinjaTemplate, ParseErrorsNameThePosition) {
  REQUIRE_TOKENIZER(tok, "qwen3");
  EXPECT_THAT([&] { make_jinja_template(*tok, "{% if x %}"); }, ::testing::ThrowsMessage<Error>(HasSubstr("template:")));
}

TEST(SelectTemplate, TypeWinsThenCheckpointThenFallback) {
  REQUIRE_TOKENIZER(qwen, "qwen3");
  REQUIRE_TOKENIZER(llama2, "llama2");
  EXPECT_EQ(select_template(*qwen, "")->name(), "jinja");
  EXPECT_EQ(select_template(*qwen, "auto")->name(), "jinja");
  EXPECT_EQ(select_template(*qwen, "AUTO")->name(), "jinja");
  EXPECT_EQ(select_template(*qwen, "qwen")->name(), "qwen");
  EXPECT_EQ(select_template(*llama2, "")->name(), "default");  // llama2 ships no chat_template
  EXPECT_EQ(select_template(*llama2, "", "llama")->name(), "llama");
  EXPECT_THAT([&] { select_template(*qwen, "qwen3-chat"); },
              ::testing::ThrowsMessage<Error>(AllOf(HasSubstr("unknown template type \"qwen3-chat\""),
                                                    HasSubstr("qwen, chatml, yi, chatglm3, llama, llama3"))));
  EXPECT_EQ(known_template_types(), "default, default-generation, qwen, chatml, yi, chatglm3, llama, llama3");
}

TEST(SpecialTokensMap, ReadsTokenizerConfigLikeTransformers) {
  if (!tokenizer("qwen3") || !tokenizer("deepseek_v3")) GTEST_SKIP() << "third_party tokenizers absent";
  const ojson q = read_special_tokens_map(tokenizer_dir("qwen3").string());
  EXPECT_FALSE(q.contains("bos_token"));  // null in the config
  EXPECT_FALSE(q.contains("unk_token"));
  EXPECT_EQ(q["eos_token"], "<|im_end|>");
  EXPECT_EQ(q["pad_token"], "<|endoftext|>");
  EXPECT_EQ(q["additional_special_tokens"][0], "<|im_start|>");
  const ojson d = read_special_tokens_map(tokenizer_dir("deepseek_v3").string());  // AddedToken objects
  EXPECT_EQ(d["bos_token"], "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(d["pad_token"], "<｜end▁of▁sentence｜>");
  EXPECT_TRUE(read_special_tokens_map("/nonexistent").empty());
}

TEST(ParseMessages, AcceptsOpenAiShapes) {
  auto m = parse_messages(nlohmann::json::parse(R"([
    {"role": "system", "content": "s"},
    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    {"role": "assistant", "content": null, "tool_calls": []},
    {"role": "user", "content": "q"}])"));
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[1].content, "a\nb");
  EXPECT_EQ(m[2].role, "assistant");
  EXPECT_EQ(m[2].content, "");
  EXPECT_EQ(m[3].content, "q");
  auto bad = [](const char* s) { return [s] { parse_messages(nlohmann::json::parse(s)); }; };
  EXPECT_THAT(bad(R"({"role": "user"})"), ::testing::ThrowsMessage<Error>(HasSubstr("expected a JSON array")));
  EXPECT_THAT(bad(R"([{"content": "x"}])"), ::testing::ThrowsMessage<Error>(HasSubstr("messages[0]: \"role\"")));
  EXPECT_THAT(bad(R"([{"role": "user", "content": 3}])"), ::testing::ThrowsMessage<Error>(HasSubstr("messages[0]")));
  EXPECT_THAT(bad(R"([{"role": "user", "content": [{"type": "image_url"}]}])"),
              ::testing::ThrowsMessage<Error>(HasSubstr("messages[0].content[0]")));
  EXPECT_THAT(bad(R"(["hi"])"), ::testing::ThrowsMessage<Error>(HasSubstr("messages[0]: expected an object")));
}

TEST(ParseMessages, DefaultSystemGoesInFrontOnlyWhenMissing) {
  auto m = with_default_system({{"user", "q"}}, "S");
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].role, "system");
  EXPECT_EQ(m[0].content, "S");
  m = with_default_system({{"system", "mine"}, {"user", "q"}}, "S");
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].content, "mine");
}

// The model types the article and the brief name, as swift/llm/utils/model.py registers them.
TEST(ModelTypes, MatchTheReferenceRegistrations) {
  struct Want {
    const char *name, *template_type, *architecture, *eos;
  };
  for (const Want& w : std::vector<Want>{
           {"qwen-7b-chat", "qwen", "QWenLMHeadModel", "<|im_end|>"},
           {"qwen-7b", "default-generation", "QWenLMHeadModel", "<|endoftext|>"},
           {"qwen1half-7b-chat", "qwen", "Qwen2ForCausalLM", "<|im_end|>"},
           {"qwen1half-7b-chat-int4", "qwen", "Qwen2ForCausalLM", "<|im_end|>"},
           {"qwen2-7b-instruct", "qwen", "Qwen2ForCausalLM", "<|im_end|>"},
           {"qwen2_5-7b-instruct", "qwen", "Qwen2ForCausalLM", "<|im_end|>"},
           {"chatglm3-6b", "chatglm3", "ChatGLMModel", ""},
           {"chatglm3-6b-32k", "chatglm3", "ChatGLMModel", ""},
           {"yi-6b-chat", "yi", "LlamaForCausalLM", "<|im_end|>"},
           {"llama2-7b-chat", "llama", "LlamaForCausalLM", ""},
           {"llama3-8b-instruct", "llama3", "LlamaForCausalLM", ""},
           {"llama3_1-8b-instruct", "llama3", "LlamaForCausalLM", ""},
           {"mistral-7b-instruct", "llama", "MistralForCausalLM", ""},
       }) {
    SCOPED_TRACE(w.name);
    const ModelTypeInfo& m = find_model_type(w.name);
    EXPECT_EQ(m.template_type, w.template_type);
    EXPECT_EQ(m.architecture, w.architecture);
    EXPECT_EQ(m.eos_token, w.eos);
  }
  EXPECT_EQ(find_model_type("qwen1half-7b-chat-int4").quantization, "gptq-int4");
  EXPECT_FALSE(find_model_type("qwen2_5-7b-instruct").in_reference);  // registered after the pinned commit
  EXPECT_TRUE(find_model_type("qwen2-7b-instruct").in_reference);
  for (const ModelTypeInfo& m : model_types()) EXPECT_NE(find_template_spec(m.template_type), nullptr) << m.name;
  EXPECT_THAT([] { find_model_type("gpt-4"); },
              ::testing::ThrowsMessage<Error>(AllOf(HasSubstr("unknown model type \"gpt-4\""), HasSubstr("qwen-7b-chat"),
                                                    HasSubstr("chatglm3-6b"), HasSubstr("llama3-8b-instruct"))));
}

}  // namespace
}  // namespace apus
