// The reference tool's named template types (ms-swift 2.x, swift/llm/utils/template.py at commit
// 5d13db794534ae79d765fb4f6112c3d88e82a472). Each expectation is written out from the
// register_template call cited beside it, laid out as Template._concat_and_tokenize does: the
// pieces joined into runs of equal loss scale (history responses, and separators that start with
// the suffix, have scale 1), each run tokenized on its own with add_special_tokens=False.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "core/error.h"
#include "text/chat_template.h"
#include "text/template_types.h"

namespace apus {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const Tokenizer* tokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    const fs::path dir = fs::path(APUS_SOURCE_DIR) / "third_party" / "tokenizers" / name;
    std::unique_ptr<Tokenizer> t;
    if (fs::exists(dir / "tokenizer.json")) t = Tokenizer::load(dir.string());
    it = cache.emplace(name, std::move(t)).first;
  }
  return it->second.get();
}

#define REQUIRE_TOKENIZER(var, name) \
  const Tokenizer* var = tokenizer(name); \
  if (!var) GTEST_SKIP() << "third_party/tokenizers/" << name << " is absent (run scripts/fetch-tokenizers.sh)"

// An expected prompt: text runs (each encoded on its own) and literal id runs with their text.
struct Piece {
  std::string text;
  std::vector<int32_t> ids;
  bool literal = false;
};
Piece R(std::string text) { return {std::move(text), {}, false}; }
Piece I(std::vector<int32_t> ids, std::string text) { return {std::move(text), std::move(ids), true}; }

RenderedPrompt expected(const Tokenizer& tok, const std::vector<Piece>& runs) {
  RenderedPrompt p;
  for (const Piece& r : runs) {
    p.text += r.text;
    const auto ids = r.literal ? r.ids : tok.encode(r.text, false);
    p.ids.insert(p.ids.end(), ids.begin(), ids.end());
  }
  return p;
}

void expect_prompt(const RenderedPrompt& got, const RenderedPrompt& want) {
  EXPECT_EQ(got.text, want.text);
  EXPECT_EQ(got.ids, want.ids);
}

RenderedPrompt render(const Tokenizer& tok, const char* type, const std::vector<ChatMessage>& m, bool gen = true) {
  return make_named_template(tok, type)->render(m, gen);
}

const ChatMessage U1{"user", "Where is the treasure?"}, A1{"assistant", "Under the old oak."}, U2{"user", "How deep?"};
const std::string kSys = "You are a helpful assistant.";  // DEFAULT_SYSTEM

// QwenTemplate: [], ['<|im_start|>user\n{{QUERY}}<|im_end|>\n<|im_start|>assistant\n'], ['<|im_end|>\n'],
// ['<|im_end|>'], DEFAULT_SYSTEM, ['<|im_start|>system\n{{SYSTEM}}<|im_end|>\n'].
TEST(NamedTemplate, Qwen) {
  REQUIRE_TOKENIZER(tok, "qwen3");
  const std::string sys_block = "<|im_start|>system\n" + kSys + "<|im_end|>\n";
  const std::string p1 = "<|im_start|>user\nWhere is the treasure?<|im_end|>\n<|im_start|>assistant\n";
  const std::string p2 = "<|im_start|>user\nHow deep?<|im_end|>\n<|im_start|>assistant\n";
  // Default system, single turn: one run.
  auto single = render(*tok, "qwen", {{"user", "你好!"}});
  expect_prompt(single, expected(*tok, {R(sys_block + "<|im_start|>user\n你好!<|im_end|>\n<|im_start|>assistant\n")}));
  EXPECT_EQ(single.ids.front(), 151644);  // <|im_start|>
  // Custom system; an empty system message means no system block.
  expect_prompt(render(*tok, "qwen", {{"system", "Be brief."}, U1}),
                expected(*tok, {R("<|im_start|>system\nBe brief.<|im_end|>\n" + p1)}));
  expect_prompt(render(*tok, "qwen", {{"system", ""}, U1}), expected(*tok, {R(p1)}));
  // History: the response and the separator (which starts with the suffix: efficient eos) form a
  // run of their own.
  expect_prompt(render(*tok, "qwen", {U1, A1, U2}),
                expected(*tok, {R(sys_block + p1), R("Under the old oak.<|im_end|>\n"), R(p2)}));
  expect_prompt(render(*tok, "qwen", {U1, {"assistant", ""}, U2}),
                expected(*tok, {R(sys_block + p1), R("<|im_end|>\n"), R(p2)}));
  // A finished exchange ends with the suffix.
  expect_prompt(render(*tok, "qwen", {U1, A1}, false), expected(*tok, {R(sys_block + p1), R("Under the old oak.<|im_end|>")}));
  auto t = make_named_template(*tok, "qwen");
  EXPECT_EQ(t->default_system(), kSys);
  EXPECT_EQ(t->stop_words(), std::vector<std::string>{"<|im_end|>"});  // eos, suffix[-1]
}

// chatml: QwenTemplate(auto_add_bos=True); bos only when tokenizer.encode('') holds it.
TEST(NamedTemplate, ChatmlAddsBosWhenTheTokenizerDoes) {
  REQUIRE_TOKENIZER(qwen, "qwen3");
  REQUIRE_TOKENIZER(llama2, "llama2");
  const std::string text = "<|im_start|>system\n" + kSys + "<|im_end|>\n<|im_start|>user\nWhere is the treasure?<|im_end|>\n<|im_start|>assistant\n";
  expect_prompt(render(*qwen, "chatml", {U1}), expected(*qwen, {R(text)}));  // Qwen: no bos
  expect_prompt(render(*llama2, "chatml", {U1}), expected(*llama2, {I({1}, "<s>"), R(text)}));
}

// yi: the qwen strings with no default system.
TEST(NamedTemplate, Yi) {
  REQUIRE_TOKENIZER(tok, "qwen3");
  const std::string p1 = "<|im_start|>user\nWhere is the treasure?<|im_end|>\n<|im_start|>assistant\n";
  expect_prompt(render(*tok, "yi", {U1}), expected(*tok, {R(p1)}));
  expect_prompt(render(*tok, "yi", {{"system", "S"}, U1}), expected(*tok, {R("<|im_start|>system\nS<|im_end|>\n" + p1)}));
  EXPECT_EQ(make_named_template(*tok, "yi")->default_system(), std::nullopt);
}

// default: [], ['### Human:\n{{QUERY}}\n\n### Assistant:\n'], ['\n\n'], [['eos_token_id']], DEFAULT_SYSTEM,
// ['{{SYSTEM}}\n\n'], auto_add_bos=True. chat_sep does not start with the suffix: it joins the next query's run.
TEST(NamedTemplate, Default) {
  REQUIRE_TOKENIZER(qwen, "qwen3");
  REQUIRE_TOKENIZER(llama2, "llama2");
  const std::string q1 = "### Human:\nWhere is the treasure?\n\n### Assistant:\n";
  expect_prompt(render(*qwen, "default", {U1}), expected(*qwen, {R(kSys + "\n\n" + q1)}));
  expect_prompt(render(*llama2, "default", {U1}), expected(*llama2, {I({1}, "<s>"), R(kSys + "\n\n" + q1)}));
  expect_prompt(render(*qwen, "default", {{"system", ""}, U1, A1, U2}),
                expected(*qwen, {R(q1), R("Under the old oak."), R("\n\n### Human:\nHow deep?\n\n### Assistant:\n")}));
  expect_prompt(render(*llama2, "default", {U1, A1}, false),
                expected(*llama2, {I({1}, "<s>"), R(kSys + "\n\n" + q1), R("Under the old oak."), I({2}, "</s>")}));
  EXPECT_EQ(make_named_template(*qwen, "default")->stop_words(), std::vector<std::string>{"<|im_end|>"});
  EXPECT_EQ(make_named_template(*llama2, "default")->stop_words(), std::vector<std::string>{"</s>"});
}

// DefaultGenerationTemplate: [], ['{{QUERY}}'], None, [['eos_token_id']], auto_add_bos=True.
TEST(NamedTemplate, DefaultGeneration) {
  REQUIRE_TOKENIZER(qwen, "qwen3");
  REQUIRE_TOKENIZER(llama2, "llama2");
  const std::string q = "浙江 -> 杭州\n安徽 -> 合肥\n四川 ->";
  expect_prompt(render(*qwen, "default-generation", {{"user", q}}), expected(*qwen, {R(q)}));
  expect_prompt(render(*llama2, "default-generation", {{"user", q}}), expected(*llama2, {I({1}, "<s>"), R(q)}));
  EXPECT_EQ(make_named_template(*qwen, "default-generation")->default_system(), std::nullopt);
  EXPECT_THAT([&] { render(*qwen, "default-generation", {{"system", "S"}, U1}); },
              ::testing::ThrowsMessage<Error>(HasSubstr("does not support a system message")));
  EXPECT_THAT([&] { render(*qwen, "default-generation", {U1, A1, U2}); },
              ::testing::ThrowsMessage<Error>(HasSubstr("does not support multi-turn")));
  // An empty system message is "no system", which this template accepts.
  expect_prompt(render(*qwen, "default-generation", {{"system", ""}, {"user", q}}), expected(*qwen, {R(q)}));
}

// llama: ['<s>[INST] '], ['{{QUERY}} [/INST]'], ['</s><s>[INST] '], ['</s>'], LLAMA_DEFAULT_SYSTEM,
// ['<s>[INST] <<SYS>>\n{{SYSTEM}}\n<</SYS>>\n\n'].
TEST(NamedTemplate, Llama) {
  REQUIRE_TOKENIZER(tok, "llama2");
  auto t = make_named_template(*tok, "llama");
  ASSERT_TRUE(t->default_system().has_value());
  const std::string sys = *t->default_system();
  EXPECT_THAT(sys, ::testing::StartsWith("You are a helpful, respectful and honest assistant."));
  EXPECT_THAT(sys, ::testing::EndsWith("please don't share false information."));
  const std::string head = "<s>[INST] <<SYS>>\n" + sys + "\n<</SYS>>\n\n";
  expect_prompt(t->render({U1}, true), expected(*tok, {R(head + "Where is the treasure? [/INST]")}));
  expect_prompt(t->render({{"system", ""}, U1}, true), expected(*tok, {R("<s>[INST] Where is the treasure? [/INST]")}));
  // History: the reply run "Under the old oak.</s><s>[INST] " is tokenized on its own, so its
  // first word gets SentencePiece's "▁" -- not what encoding the joined text gives.
  auto multi = t->render({{"system", "S"}, U1, A1, U2}, true);
  const auto want = expected(*tok, {R("<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nWhere is the treasure? [/INST]"),
                                    R("Under the old oak.</s><s>[INST] "), R("How deep? [/INST]")});
  expect_prompt(multi, want);
  EXPECT_NE(multi.ids, tok->encode(multi.text, false));
  EXPECT_EQ(t->stop_words(), std::vector<std::string>{"</s>"});
}

// llama3: ['<|begin_of_text|>'], ['<|start_header_id|>user<|end_header_id|>\n\n{{QUERY}}<|eot_id|>'
// '<|start_header_id|>assistant<|end_header_id|>\n\n'], ['<|eot_id|>'], ['<|eot_id|>'], None,
// ['<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{{SYSTEM}}<|eot_id|>'].
TEST(NamedTemplate, Llama3) {
  REQUIRE_TOKENIZER(tok, "llama3_1");
  const std::string u = "<|start_header_id|>user<|end_header_id|>\n\n";
  const std::string a = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
  auto single = render(*tok, "llama3", {U1});
  expect_prompt(single, expected(*tok, {R("<|begin_of_text|>" + u + "Where is the treasure?" + a)}));
  EXPECT_EQ(single.ids.front(), 128000);  // <|begin_of_text|>
  expect_prompt(render(*tok, "llama3", {{"system", "S"}, U1}),
                expected(*tok, {R("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>" + u +
                                  "Where is the treasure?" + a)}));
  expect_prompt(render(*tok, "llama3", {U1, A1, U2}),
                expected(*tok, {R("<|begin_of_text|>" + u + "Where is the treasure?" + a), R("Under the old oak.<|eot_id|>"),
                                R(u + "How deep?" + a)}));
  auto t = make_named_template(*tok, "llama3");
  EXPECT_EQ(t->default_system(), std::nullopt);
  EXPECT_EQ(t->stop_words(), std::vector<std::string>{"<|eot_id|>"});
}

// chatglm3: GLMTemplate([], ['<|user|>\n{{QUERY}}<|assistant|>\n'], [], ['<|user|>'], None,
// ['<|system|>\n{{SYSTEM}}']) with tokenizer.encode('') ([gMASK] sop) in front of prefix and
// system_prefix. The Qwen3 tokenizer knows none of ChatGLM's special tokens, so their literal ids
// (64790 [gMASK], 64792 sop, 64794 <|system|>, 64795 <|user|>, 64796 <|assistant|>) are used.
TEST(NamedTemplate, Chatglm3) {
  REQUIRE_TOKENIZER(tok, "qwen3");
  const Piece glm = I({64790, 64792}, "[gMASK]sop");
  const Piece user = I({64795}, "<|user|>"), assistant = I({64796}, "<|assistant|>"), system = I({64794}, "<|system|>");
  expect_prompt(render(*tok, "chatglm3", {{"user", "你好"}}),
                expected(*tok, {glm, user, R("\n你好"), assistant, R("\n")}));
  expect_prompt(render(*tok, "chatglm3", {{"system", "S"}, U1}),
                expected(*tok, {glm, system, R("\nS"), user, R("\nWhere is the treasure?"), assistant, R("\n")}));
  // chat_sep is [] (multi-turn, no separator); the reply is a run of its own.
  expect_prompt(render(*tok, "chatglm3", {U1, A1, U2}),
                expected(*tok, {glm, user, R("\nWhere is the treasure?"), assistant, R("\n"), R("Under the old oak."),
                                user, R("\nHow deep?"), assistant, R("\n")}));
  auto t = make_named_template(*tok, "chatglm3");
  EXPECT_EQ(t->default_system(), std::nullopt);
  EXPECT_EQ(t->stop_words(), (std::vector<std::string>{"<|im_end|>", "<|user|>"}));  // eos, suffix[-1]
}

// The conversation must map onto (system, history, query): [system] (user, assistant)* user.
TEST(NamedTemplate, ConversationErrorsNameTheProblem) {
  REQUIRE_TOKENIZER(tok, "qwen3");
  auto t = make_named_template(*tok, "qwen");
  auto err = [&](std::vector<ChatMessage> m, bool gen = true) {
    try {
      t->render(m, gen);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_THAT(err({A1, U1}), HasSubstr("message 0 has role 'assistant' where 'user' was expected"));
  EXPECT_THAT(err({U1, U2}), HasSubstr("message 1 has role 'user' where 'assistant' was expected"));
  EXPECT_THAT(err({U1, A1, {"system", "S"}, U2}), HasSubstr("message 2 is a system message"));
  EXPECT_THAT(err({U1, {"tool", "42"}}), HasSubstr("message 1 has role 'tool'"));
  EXPECT_THAT(err({}), HasSubstr("no user message"));
  EXPECT_THAT(err({{"system", "S"}}), HasSubstr("no user message"));
  EXPECT_THAT(err({U1, A1}), HasSubstr("nothing to generate"));
  EXPECT_THAT(err({U1}, false), HasSubstr("always gets the generation prompt"));
  EXPECT_THAT(err({{"user", "q"}, {"role-less", ""}}), HasSubstr("role 'role-less'"));
  EXPECT_THAT([&] { t->render({U1}, true, {{"enable_thinking", false}}); },
              ::testing::ThrowsMessage<Error>(HasSubstr("takes no extra variables")));
}

// Placeholders are replaced in the reference's order: {{SYSTEM}} before {{QUERY}}.
TEST(NamedTemplate, PlaceholdersInsideUserTextFollowTheReference) {
  REQUIRE_TOKENIZER(tok, "qwen3");
  auto p = render(*tok, "yi", {{"system", "say {{QUERY}}"}, {"user", "round {{ROUND0}}"}});
  EXPECT_EQ(p.text, "<|im_start|>system\nsay {{QUERY}}<|im_end|>\n<|im_start|>user\nround 0<|im_end|>\n<|im_start|>assistant\n");
}

TEST(NamedTemplate, EverySpecCitesTheReference) {
  for (const TemplateSpec& s : template_specs()) {
    EXPECT_THAT(s.reference, HasSubstr("template.py")) << s.name;
    EXPECT_FALSE(s.prompt.empty()) << s.name;
  }
}

}  // namespace
}  // namespace apus
