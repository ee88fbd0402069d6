// Streaming detokenization on real tokenizers: deltas concatenate to the full decode, never split
// a UTF-8 character, and stop strings are found across token boundaries.
#include <gtest/gtest.h>

#include <filesystem>

#include "text/detokenizer.h"

namespace apus {
namespace {

std::unique_ptr<Tokenizer> load(const std::string& name) {
  const std::string dir = std::string(APUS_SOURCE_DIR) + "/third_party/tokenizers/" + name;
  if (!std::filesystem::exists(dir)) return nullptr;
  return Tokenizer::load(dir);
}

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

const std::vector<std::string> kTexts = {
    "Hello, world! How are you today?",
    "浙江的省会是杭州市。这有什么好吃的？西湖醋鱼和东坡肉。",
    "Emoji: 👩‍👩‍👧‍👦 and 👍🏽, café, naïve — “quotes”",
    "  leading spaces\n\nand\ttabs   and trailing  ",
    "def f(x):\n    return x ** 2  # square\n",
};

class Detok : public ::testing::TestWithParam<std::string> {};

TEST_P(Detok, DeltasRebuildTheText) {
  auto tok = load(GetParam());
  if (!tok) GTEST_SKIP() << "third_party/tokenizers missing: run scripts/fetch-tokenizers.sh";
  const auto prompt = tok->encode("Question: say something.", true);
  for (const auto& text : kTexts) {
    const auto ids = tok->encode(text, false);
    IncrementalDetokenizer d(*tok, prompt);
    std::string streamed;
    for (int32_t id : ids) {
      d.add({id});
      std::string delta = d.take_delta(false);
      EXPECT_TRUE(valid_utf8(delta)) << text;
      streamed += delta;
    }
    streamed += d.take_delta(true);
    // The reference: the text of prompt + output minus the text of the prompt alone.
    auto all = prompt;
    all.insert(all.end(), ids.begin(), ids.end());
    const std::string full = tok->decode(all, true), head = tok->decode(prompt, true);
    EXPECT_EQ(streamed, full.substr(head.size())) << GetParam() << ": " << text;
  }
}

TEST_P(Detok, StopStringsAcrossTokens) {
  auto tok = load(GetParam());
  if (!tok) GTEST_SKIP() << "third_party/tokenizers missing";
  const std::string text = "The capital of Zhejiang is Hangzhou. Next question: what to eat?";
  const auto ids = tok->encode(text, false);
  for (bool include : {false, true}) {
    IncrementalDetokenizer d(*tok, {}, true, {"Next quest", "zzz"}, include);
    std::string streamed;
    size_t used = 0;
    for (int32_t id : ids) {
      ++used;
      if (d.add({id})) break;
      streamed += d.take_delta(false);
      EXPECT_EQ(streamed.find("Next"), std::string::npos);  // held back until decided
    }
    streamed += d.take_delta(true);
    EXPECT_TRUE(d.stopped());
    EXPECT_LT(used, ids.size());
    EXPECT_EQ(d.matched_stop(), "Next quest");
    const std::string want = include ? "The capital of Zhejiang is Hangzhou. Next quest" : "The capital of Zhejiang is Hangzhou. ";
    EXPECT_EQ(streamed, want);
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Detok, ::testing::Values("qwen3", "llama3_1", "llama2", "deepseek_v3", "llama2-sp"),
                         [](const ::testing::TestParamInfo<std::string>& p) {
                           std::string n = p.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(Utf8, Boundary) {
  const std::string s = "a\xE6\x9D\xAD";  // "a杭"
  EXPECT_EQ(utf8_boundary(s, 2), 1u);
  EXPECT_EQ(utf8_boundary(s, 4), 4u);
}

}  // namespace
}  // namespace apus
