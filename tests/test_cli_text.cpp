// The text-facing CLI end to end through the binary: `apus tokenize` and `apus generate` with
// --prompt / --chat, on a model directory holding the Qwen3 tokenizer files and a tiny random
// Qwen2 checkpoint with Qwen's vocabulary size.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>

#include "engine/generate.h"
#include "model/load.h"
#include "test_util.h"
#include "text/chat_template.h"
#include "text/tokenizer/tokenizer.h"

namespace apus {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string quote(const std::string& s) {  // single-quoted for /bin/sh
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}


fs::path tokenizer_dir(const std::string& name) { return fs::path(APUS_SOURCE_DIR) / "third_party" / "tokenizers" / name; }

// Qwen3's tokenizer files plus a 1-layer Qwen2 of hidden size 32 and Qwen's vocabulary (151936).
class CliText : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(tokenizer_dir("qwen3") / "tokenizer.json")) return;
    dir_ = new test::TempDir();
    for (const auto& e : fs::directory_iterator(tokenizer_dir("qwen3"))) fs::copy(e.path(), dir_->path() / e.path().filename());
    const int64_t V = 151936, H = 32, I = 64, heads = 2, kv = 1, hd = H / heads;
    nlohmann::json config = {{"architectures", {"Qwen2ForCausalLM"}}, {"model_type", "qwen2"},
                             {"hidden_size", H}, {"intermediate_size", I}, {"num_hidden_layers", 1},
                             {"num_attention_heads", heads}, {"num_key_value_heads", kv}, {"vocab_size", V},
                             {"max_position_embeddings", 512}, {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0},
                             {"hidden_act", "silu"}, {"tie_word_embeddings", true}, {"bos_token_id", 151643},
                             {"eos_token_id", 151645}, {"use_sliding_window", false}, {"torch_dtype", "bfloat16"}};
    const std::string l = "model.layers.0.";
    std::vector<test::NamedShape> specs = {
        {"model.embed_tokens.weight", {V, H}},
        {l + "self_attn.q_proj.weight", {heads * hd, H}}, {l + "self_attn.q_proj.bias", {heads * hd}},
        {l + "self_attn.k_proj.weight", {kv * hd, H}}, {l + "self_attn.k_proj.bias", {kv * hd}},
        {l + "self_attn.v_proj.weight", {kv * hd, H}}, {l + "self_attn.v_proj.bias", {kv * hd}},
        {l + "self_attn.o_proj.weight", {H, heads * hd}},
        {l + "mlp.gate_proj.weight", {I, H}}, {l + "mlp.up_proj.weight", {I, H}}, {l + "mlp.down_proj.weight", {H, I}},
        {l + "input_layernorm.weight", {H}}, {l + "post_attention_layernorm.weight", {H}},
        {"model.norm.weight", {H}}};
    test::write_random_checkpoint(dir_->path(), config, specs, DType::BF16, 7);
    tok_ = Tokenizer::load(dir_->str()).release();
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete dir_;
    tok_ = nullptr;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (!dir_) GTEST_SKIP() << tokenizer_dir("qwen3") << " is absent (run scripts/fetch-tokenizers.sh)";
  }
  static std::string model() { return "--model " + dir_->str() + " --threads 2 "; }
  static nlohmann::json json_of(const test::Exec& r) {
    EXPECT_EQ(r.status, 0) << r.out;
    return nlohmann::json::parse(r.out);
  }

  static test::TempDir* dir_;
  static Tokenizer* tok_;
};
test::TempDir* CliText::dir_ = nullptr;
Tokenizer* CliText::tok_ = nullptr;

TEST_F(CliText, TokenizeText) {
  EXPECT_GE(tok_->vocab_size(), 151669);
  const std::string text = "Hello world, 你好!";
  auto j = json_of(test::run_apus("tokenize --model " + dir_->str() + " " + quote(text)));
  EXPECT_EQ(j["ids"], nlohmann::json(tok_->encode(text, false)));
  // A directory with only tokenizer files; --add-special-tokens adds Llama's BOS.
  const std::string llama2 = tokenizer_dir("llama2").string();
  auto plain = json_of(test::run_apus("tokenize --model " + llama2 + " Hello"));
  auto with = json_of(test::run_apus("tokenize --model " + llama2 + " --add-special-tokens Hello"));
  ASSERT_EQ(with["ids"].size(), plain["ids"].size() + 1);
  EXPECT_EQ(with["ids"][0], 1);
  EXPECT_EQ(with["ids"][1], plain["ids"][0]);
}

TEST_F(CliText, TokenizeChatShowsTextIdsAndStopWords) {
  auto j = json_of(test::run_apus("tokenize --model " + dir_->str() + " --template_type qwen --chat " +
                            quote(R"([{"role": "user", "content": "hi"}])")));
  EXPECT_EQ(j["template"], "qwen");
  EXPECT_EQ(j["text"], "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                       "<|im_start|>assistant\n");
  EXPECT_EQ(j["ids"], nlohmann::json(tok_->encode(j["text"].get<std::string>(), false)));
  EXPECT_EQ(j["stop"], nlohmann::json({"<|im_end|>"}));
}

TEST_F(CliText, GeneratePromptIsTokenizedWithSpecialTokens) {
  const std::string prompt = "浙江 -> 杭州\n安徽 -> 合肥\n四川 ->";
  auto j = json_of(test::run_apus("generate " + model() + "--prompt " + quote(prompt) + " --max-tokens 5 --temperature 0 --json"));
  const auto ids = tok_->encode(prompt, true);
  EXPECT_EQ(j["prompt_token_ids"], nlohmann::json(ids));
  ASSERT_EQ(j["token_ids"].size(), 5u);
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_FALSE(j.contains("prompt_text"));
  EXPECT_EQ(j["text"], tok_->decode(j["token_ids"].get<std::vector<int32_t>>(), true));

  // The same tokens as the library's greedy generate() on those ids.
  auto backend = make_cpu_backend(1);
  LoadOptions o;
  o.model_dir = dir_->str();
  auto m = load_model(o, *backend);
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_tokens = 5;
  EXPECT_EQ(j["token_ids"], nlohmann::json(generate(*m, ids, p).token_ids));
  // --prompt-ids of the same ids gives the same output (with text, since DIR has a tokenizer).
  std::string csv;
  for (int32_t id : ids) csv += (csv.empty() ? "" : ",") + std::to_string(id);
  auto k = json_of(test::run_apus("generate " + model() + "--prompt-ids " + csv + " --max-tokens 5 --temperature 0 --json"));
  EXPECT_EQ(k["token_ids"], j["token_ids"]);
  EXPECT_EQ(k["text"], j["text"]);
}

TEST_F(CliText, GenerateChatUsesTheCheckpointTemplate) {
  const std::string chat = R"([{"role": "user", "content": "你好!"}])";
  auto j = json_of(test::run_apus("generate " + model() + "--chat " + quote(chat) + " --max-tokens 4 --temperature 0 --json"));
  const std::string want = "<|im_start|>user\n你好!<|im_end|>\n<|im_start|>assistant\n";  // Qwen3's own template
  EXPECT_EQ(j["prompt_text"], want);
  EXPECT_EQ(j["prompt_token_ids"], nlohmann::json(tok_->encode(want, false)));
  EXPECT_LE(j["token_ids"].size(), 4u);
  EXPECT_TRUE(j["text"].is_string());
}

TEST_F(CliText, GenerateChatWithTemplateTypeModelTypeAndSystem) {
  const std::string chat = quote(R"([{"role": "user", "content": "hi"}])");
  const std::string user = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
  auto run = [&](const std::string& extra) {
    return json_of(test::run_apus("generate " + model() + "--chat " + chat + " --max-tokens 2 --temperature 0 --json " + extra));
  };
  EXPECT_EQ(run("--template_type qwen")["prompt_text"], "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + user);
  EXPECT_EQ(run("--model_type qwen-7b-chat")["prompt_text"],
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + user);
  EXPECT_EQ(run("--model_type qwen-7b-chat --system " + quote("Be brief."))["prompt_text"],
            "<|im_start|>system\nBe brief.<|im_end|>\n" + user);
  EXPECT_EQ(run("--template-type qwen --system ''")["prompt_text"], user);  // "" = no system, as in the reference
  EXPECT_EQ(run("--system " + quote("Be brief."))["prompt_text"], "<|im_start|>system\nBe brief.<|im_end|>\n" + user);
  auto yi = run("--model_type yi-6b-chat");
  EXPECT_EQ(yi["prompt_text"], user);
  EXPECT_EQ(yi["prompt_token_ids"], nlohmann::json(tok_->encode(user, false)));
}

TEST_F(CliText, HumanReadableOutputIsTheText) {
  test::Exec r = test::run_apus("generate " + model() + "--prompt hello --max-tokens 3 --temperature 0");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("finish_reason: "));
}

TEST_F(CliText, ErrorsAreClear) {
  auto err = [&](const std::string& args) {
    test::Exec r = test::run_apus(args);
    EXPECT_EQ(r.status, 1) << args << "\n" << r.out;
    return r.out;
  };
  const std::string g = "generate " + model();
  EXPECT_THAT(err(g + "--prompt a --chat " + quote("[]")), HasSubstr("exactly one of --prompt-ids, --prompt and --chat"));
  EXPECT_THAT(err(g + "--max-tokens 2"), HasSubstr("exactly one of"));
  EXPECT_THAT(err(g + "--chat " + quote("[{\"role\": ")), HasSubstr("--chat: invalid JSON"));
  EXPECT_THAT(err(g + "--chat " + quote(R"({"role": "user"})")), HasSubstr("expected a JSON array"));
  EXPECT_THAT(err(g + "--template_type qwen --chat " + quote(R"([{"role": "assistant", "content": "x"}])")),
              HasSubstr("message 0 has role 'assistant' where 'user' was expected"));
  EXPECT_THAT(err(g + "--template_type nope --chat " + quote(R"([{"role": "user", "content": "x"}])")),
              HasSubstr("unknown template type \"nope\" (known: default, default-generation, qwen"));
  EXPECT_THAT(err(g + "--model_type nope --chat " + quote(R"([{"role": "user", "content": "x"}])")),
              HasSubstr("unknown model type \"nope\""));
  EXPECT_THAT(err("generate --load-format dummy --config-preset tiny --prompt hi"), HasSubstr("--prompt needs a tokenizer"));
  EXPECT_THAT(err("tokenize --model /nonexistent hi"), HasSubstr("/nonexistent has no tokenizer.json"));
  EXPECT_THAT(err("tokenize --model " + dir_->str()), HasSubstr("give either TEXT or --chat"));
}

}  // namespace
}  // namespace apus
