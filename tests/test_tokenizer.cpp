// Tokenizer fidelity against the reference libraries (fixtures from
// tools/tokenizer/make_tokenizer_golden.py), unit tests of the pipeline pieces, and load errors.
// APUS_TOKENIZER_BENCH=1 also prints our single-thread encode throughput on the fixtures' corpus.
#include "text/tokenizer/tokenizer.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <source_location>
#include <thread>

#include "core/error.h"
#include "test_util.h"
#include "text/tokenizer/added_tokens.h"
#include "text/tokenizer/normalizers.h"
#include "text/tokenizer/pre_tokenizers.h"
#include "text/tokenizer/unicode.h"

namespace apus {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kSource = APUS_SOURCE_DIR;
const fs::path kData = kSource / "tests/data/tokenizer";

fs::path fixture_dir() {
  const char* env = std::getenv("APUS_TOKENIZER_FIXTURES");  // e.g. freshly generated ones
  return env ? fs::path(env) : kData;
}

// Where the tokenizer of a fixture lives: tiny_<x> in tests/data, the others as fetched.
fs::path tokenizer_dir(const std::string& name) {
  if (name.starts_with("tiny_")) return kData / "tiny" / name.substr(5);
  return kSource / "third_party/tokenizers" / name;
}

// Loading the big vocabularies takes a while: each tokenizer is loaded once per process.
const Tokenizer& cached_tokenizer(const std::string& name) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& t = cache[name];
  if (!t) t = Tokenizer::load(tokenizer_dir(name).string());
  return *t;
}

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  if (!fs::is_directory(fixture_dir())) return names;
  for (const auto& e : fs::directory_iterator(fixture_dir())) {
    if (e.path().extension() == ".json") names.push_back(e.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string show(const std::string& s) { return json(s).dump(); }

std::string show(const std::vector<int32_t>& v) { return json(v).dump(); }

class Fixture : public testing::TestWithParam<std::string> {};

TEST_P(Fixture, MatchesReference) {
  const std::string name = GetParam();
  if (!fs::exists(tokenizer_dir(name))) {
    GTEST_SKIP() << tokenizer_dir(name) << " is absent (run scripts/fetch-tokenizers.sh)";
  }
  const json fx = test::read_json(fixture_dir() / (name + ".json"));
  const Tokenizer& tok = cached_tokenizer(name);

  size_t ids_compared = 0, mismatches = 0;
  auto report = [&](const std::string& what) {
    if (++mismatches <= 12) ADD_FAILURE() << name << ": " << what;
  };
  for (const json& c : fx["cases"]) {
    const std::string text = c["text"];
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    const auto plain = c["ids_plain"].get<std::vector<int32_t>>();
    const auto got = tok.encode(text, true), got_plain = tok.encode(text, false);
    ids_compared += ids.size() + plain.size();
    if (got != ids) report(fmt::format("encode({}, true)\n  want {}\n  got  {}", show(text), show(ids), show(got)));
    if (got_plain != plain) {
      report(fmt::format("encode({}, false)\n  want {}\n  got  {}", show(text), show(plain), show(got_plain)));
    }
    const std::string decoded = tok.decode(ids, false), decoded_skip = tok.decode(ids, true);
    if (decoded != c["decoded"]) {
      report(fmt::format("decode of {}\n  want {}\n  got  {}", show(text), c["decoded"].dump(), show(decoded)));
    }
    if (decoded_skip != c["decoded_skip"]) {
      report(fmt::format("decode(skip) of {}\n  want {}\n  got  {}", show(text), c["decoded_skip"].dump(),
                         show(decoded_skip)));
    }
    if (c["roundtrip"].get<bool>() && tok.decode(got_plain, false) != text) {
      report("no round trip for " + show(text));
    }
  }
  EXPECT_EQ(mismatches, 0u) << name << ": " << mismatches << " mismatches";
  EXPECT_EQ(tok.vocab_size(), fx["vocab_size"].get<int64_t>());
  if (!fx["bos_id"].is_null()) {
    EXPECT_EQ(tok.bos_id(), fx["bos_id"].get<int32_t>());
  }
  if (!fx["eos_id"].is_null()) {
    EXPECT_EQ(tok.eos_id(), fx["eos_id"].get<int32_t>());
  }
  for (const json& id : fx["special_ids"]) EXPECT_TRUE(tok.is_special(id.get<int32_t>())) << name << " id " << id;
  for (const json& pair : fx["id_to_token"]) {
    const auto id = pair[0].get<int32_t>();
    const std::string token = pair[1];
    EXPECT_EQ(tok.id_to_token(id), token) << name << " id " << id;
    EXPECT_EQ(tok.token_to_id(token), id) << name << " token " << show(token);
  }
  RecordProperty("ids_compared", static_cast<int>(ids_compared));
  std::cout << fmt::format("[ fixture  ] {}: {} cases, {} ids compared, {} mismatches ({})\n", name,
                           fx["cases"].size(), ids_compared, mismatches, fx["reference"].get<std::string>());
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, Fixture, testing::ValuesIn(fixture_names()),
                         [](const testing::TestParamInfo<std::string>& p) {
                           std::string s = p.param;
                           for (char& c : s)
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

// The same documents make_tokenizer_golden.py times the reference on: the cases cycled into
// documents of >= 4 KiB until 2 MiB.
std::vector<std::string> bench_documents(const json& fx) {
  std::vector<std::string> texts;
  for (const json& c : fx["cases"]) texts.push_back(c["text"]);
  std::vector<std::string> docs;
  size_t total = 0;
  for (size_t i = 0; total < (size_t(2) << 20);) {
    std::string doc;
    size_t size = 0;
    while (size < 4096) {
      const std::string& t = texts[i++ % texts.size()];
      if (!doc.empty() || size > 0) doc += '\n';
      doc += t;
      size += t.size() + 1;
    }
    total += doc.size();
    docs.push_back(std::move(doc));
  }
  return docs;
}

TEST(TokenizerBench, EncodeThroughput) {
  if (!std::getenv("APUS_TOKENIZER_BENCH")) GTEST_SKIP() << "set APUS_TOKENIZER_BENCH=1 to run";
  for (const std::string& name : fixture_names()) {
    if (name.starts_with("tiny_") || !fs::exists(tokenizer_dir(name))) continue;
    const json fx = test::read_json(fixture_dir() / (name + ".json"));
    const auto docs = bench_documents(fx);
    size_t bytes = 0;
    for (const auto& d : docs) bytes += d.size();
    const auto load_start = std::chrono::steady_clock::now();
    const Tokenizer& tok = cached_tokenizer(name);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    size_t n_ids = 0;
    for (const auto& d : docs) n_ids += tok.encode(d, false).size();  // warm-up, as the reference
    double best = 1e30;
    for (int r = 0; r < 3; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      for (const auto& d : docs) tok.encode(d, false);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::cout << fmt::format("[ bench    ] {}: encode {:.2f} MB/s over {:.2f} MB ({} docs, {} ids), load {:.2f} s\n",
                             name, bytes / best / 1e6, bytes / 1e6, docs.size(), n_ids, load_s);
  }
}

// ---- Pieces of the pipeline ----------------------------------------------------------------------

namespace tk = apus::tok;

std::vector<std::string> pre_tokenize(const json& spec, std::string_view text) {
  const auto pt = tk::make_pre_tokenizer(tk::JsonField(spec, "test.json"));
  tk::PieceList pl;
  pl.text = text;
  tk::Piece whole;
  whole.end = static_cast<uint32_t>(text.size());
  whole.at_input_start = true;
  pl.pieces.push_back(whole);
  pt->pre_tokenize(pl);
  std::vector<std::string> out;
  for (const auto& p : pl.pieces) out.emplace_back(pl.view(p));
  return out;
}

using Strings = std::vector<std::string>;

TEST(TokenizerParts, SplitBehaviors) {
  auto split = [](const char* behavior, bool invert = false) {
    return pre_tokenize({{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}},
                        "the-final--countdown");
  };
  EXPECT_EQ(split("Removed"), (Strings{"the", "final", "countdown"}));
  EXPECT_EQ(split("Isolated"), (Strings{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithPrevious"), (Strings{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithNext"), (Strings{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(split("Contiguous"), (Strings{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(split("Removed", true), (Strings{"-", "-", "-"}));
}

TEST(TokenizerParts, PreTokenizers) {
  EXPECT_EQ(pre_tokenize({{"type", "Digits"}, {"individual_digits", false}}, "a12b345"),
            (Strings{"a", "12", "b", "345"}));
  EXPECT_EQ(pre_tokenize({{"type", "Digits"}, {"individual_digits", true}}, "a12b345"),
            (Strings{"a", "1", "2", "b", "3", "4", "5"}));
  EXPECT_EQ(pre_tokenize({{"type", "Punctuation"}}, "Hey, you!"), (Strings{"Hey", ",", " you", "!"}));
  EXPECT_EQ(pre_tokenize({{"type", "Whitespace"}}, "Hey man!!, how's it?"),
            (Strings{"Hey", "man", "!!,", "how", "'", "s", "it", "?"}));
  EXPECT_EQ(pre_tokenize({{"type", "WhitespaceSplit"}}, " a  b\tc "), (Strings{"a", "b", "c"}));
  EXPECT_EQ(pre_tokenize({{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "always"}}, "Hello  world "),
            (Strings{"▁Hello", "▁", "▁world", "▁"}));
  EXPECT_EQ(pre_tokenize({{"type", "ByteLevel"}, {"add_prefix_space", true}}, "Hello world's  123\n\n x"),
            (Strings{"ĠHello", "Ġworld", "'s", "Ġ", "Ġ123", "ĊĊ", "Ġx"}));
  // Qwen's pattern: digits one at a time, "\s+(?!\S)" leaving the last space to the next word.
  const std::string qwen =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  EXPECT_EQ(pre_tokenize({{"type", "Split"}, {"pattern", {{"Regex", qwen}}}, {"behavior", "Isolated"}},
                         "Hello world's  123\n\n x"),
            (Strings{"Hello", " world", "'s", " ", " ", "1", "2", "3", "\n\n", " x"}));
  // Oniguruma's \s is White_Space: U+180E (no longer a space) is not one, U+0085 is.
  EXPECT_EQ(pre_tokenize({{"type", "Split"}, {"pattern", {{"Regex", "\\s+"}}}, {"behavior", "Removed"}},
                         "a\u180Eb\u0085c\u3000d"),
            (Strings{"a\u180Eb", "c", "d"}));
}

TEST(TokenizerParts, ByteLevelAlphabet) {
  const auto& chars = tk::byte_level_chars();
  EXPECT_EQ(chars[' '], "Ġ");
  EXPECT_EQ(chars['\n'], "Ċ");
  EXPECT_EQ(chars['a'], "a");
  EXPECT_EQ(chars[0], "Ā");
  EXPECT_EQ(chars[0xAD], "Ń");  // the one byte between the two printable Latin-1 ranges
  EXPECT_EQ(chars[0xFF], "ÿ");
  std::set<std::string> distinct(chars.begin(), chars.end());
  EXPECT_EQ(distinct.size(), 256u);
  for (int b = 0; b < 256; ++b) {
    int len;
    EXPECT_EQ(tk::byte_level_byte(tk::utf8_decode(chars[static_cast<size_t>(b)].data(), &len)), b);
  }
}

// The pieces added-token matching makes, an added token shown as [id].
Strings added_split(std::vector<tk::AddedToken> tokens, std::string_view text, bool lowercase = false) {
  const auto norm = lowercase ? tk::make_normalizer(tk::JsonField(json{{"type", "Lowercase"}}, "test.json")) : nullptr;
  tk::AddedVocabulary vocab;
  vocab.build(std::move(tokens), norm.get());
  tk::PieceList pl;
  vocab.split_raw(text, pl);
  if (norm) {
    std::string scratch;
    tk::transform_pieces(pl, scratch, [&](const tk::Piece&, std::string_view t, std::string& out) { norm->normalize(t, out); });
  }
  vocab.split_normalized(pl);
  Strings out;
  for (const auto& p : pl.pieces) out.push_back(p.is_added() ? fmt::format("[{}]", p.added_id) : std::string(pl.view(p)));
  return out;
}

tk::AddedToken added(std::string content, int32_t id, bool normalized = false) {
  tk::AddedToken t;
  t.content = std::move(content);
  t.id = id;
  t.normalized = normalized;
  return t;
}

TEST(TokenizerParts, AddedTokenMatching) {
  // Leftmost, then longest at that position.
  EXPECT_EQ(added_split({added("ab", 1), added("abc", 2), added("bcd", 3)}, "xabcd"), (Strings{"x", "[2]", "d"}));
  auto mask = added("<mask>", 5);
  mask.lstrip = mask.rstrip = true;
  EXPECT_EQ(added_split({mask}, "a \t<mask>  b"), (Strings{"a", "[5]", "b"}));
  auto ony = added("ony", 6);
  ony.single_word = true;
  EXPECT_EQ(added_split({ony}, "anthony ony onyx"), (Strings{"anthony ", "[6]", " onyx"}));
  // Normalized tokens match the normalized text (tokenizers' own test case).
  auto m = added("<mask>", 0, true);
  m.single_word = true;
  EXPECT_EQ(added_split({m}, "<mask> My name <mask> A<mask> <mask>ony <mask>", true),
            (Strings{"[0]", " my name ", "[0]", " a<mask> <mask>ony ", "[0]"}));
  EXPECT_EQ(added_split({added("<s>", 1)}, ""), Strings{});
}

// A tokenizer directory holding `tokenizer_json` (and a config when given).
std::unique_ptr<Tokenizer> load_json(const test::TempDir& dir, const json& tokenizer_json, const json& config = nullptr) {
  test::write_json(dir.path() / "tokenizer.json", tokenizer_json);
  if (!config.is_null()) test::write_json(dir.path() / "tokenizer_config.json", config);
  return Tokenizer::load(dir.str());
}

json tiny_bpe() {
  return {{"model",
           {{"type", "BPE"},
            {"vocab", {{"<unk>", 0}, {"<0xC3>", 1}, {"<0xA9>", 2}, {"a", 3}, {"b", 4}, {"ab", 5}}},
            {"merges", {"a b"}},
            {"unk_token", "<unk>"},
            {"byte_fallback", true}}},
          {"decoder", {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}}}};
}

TEST(TokenizerParts, ByteFallback) {
  test::TempDir dir;
  const auto tok = load_json(dir, tiny_bpe());
  EXPECT_EQ(tok->encode("abé", false), (std::vector<int32_t>{5, 1, 2}));
  EXPECT_EQ(tok->encode("zab", false), (std::vector<int32_t>{0, 5}));  // no <0x7A>: unknown
  EXPECT_EQ(tok->decode({5, 1, 2}, false), "abé");
  EXPECT_EQ(tok->decode({1, 3}, false), "\uFFFDa");  // an incomplete sequence: one U+FFFD per byte
  EXPECT_EQ(tok->decode({1, 1}, false), "\uFFFD\uFFFD");
  EXPECT_EQ(tok->decode({99, 3}, false), "a");  // unknown ids are dropped
  // Invalid UTF-8 input reads as U+FFFD, as Python's errors="replace" would give the reference.
  EXPECT_EQ(tok->encode("ab\xC3", false), tok->encode("ab\uFFFD", false));
}

TEST(TokenizerParts, UnigramViterbi) {
  test::TempDir dir;
  json vocab = json::array();
  for (const auto& [piece, score] : std::vector<std::pair<std::string, double>>{
           {"<unk>", 0.0}, {"a", -1.0}, {"b", -1.0}, {"ab", -1.5}, {"abc", -5.0}, {"c", -2.0}}) {
    vocab.push_back(json::array({piece, score}));
  }
  const auto tok = load_json(dir, {{"model", {{"type", "Unigram"}, {"unk_id", 0}, {"vocab", vocab}}}});
  EXPECT_EQ(tok->encode("abc", false), (std::vector<int32_t>{3, 5}));  // ab + c (-3.5) beats abc (-5)
  EXPECT_EQ(tok->encode("abxyc", false), (std::vector<int32_t>{3, 0, 5}));  // unknowns fused into one
  EXPECT_EQ(tok->vocab_size(), 6);
  EXPECT_EQ(tok->token_to_id("abc"), 4);
  EXPECT_EQ(tok->id_to_token(3), "ab");
}

TEST(TokenizerParts, Config) {
  test::TempDir dir;
  const json config = {{"bos_token", {{"__type", "AddedToken"}, {"content", "a"}}},
                       {"eos_token", "b"},
                       {"chat_template", {{{"name", "tool_use"}, {"template", "T"}}, {{"name", "default"}, {"template", "D"}}}}};
  const auto tok = load_json(dir, tiny_bpe(), config);
  EXPECT_EQ(tok->bos_token(), "a");
  EXPECT_EQ(tok->bos_id(), 3);
  EXPECT_EQ(tok->eos_id(), 4);
  EXPECT_EQ(tok->chat_template(), "D");
  test::TempDir bare;
  const auto none = load_json(bare, tiny_bpe());
  EXPECT_EQ(none->bos_id(), std::nullopt);
  EXPECT_EQ(none->eos_token(), "");
  EXPECT_EQ(none->chat_template(), std::nullopt);
}

TEST(TokenizerParts, RealSpecialTokens) {
  struct Expect {
    const char* name;
    std::optional<int32_t> bos, eos;
    bool has_template;
  };
  for (const Expect& e : {Expect{"qwen3", std::nullopt, 151645, true}, Expect{"llama3_1", 128000, 128009, true},
                          Expect{"llama2", 1, 2, false}, Expect{"deepseek_v3", 0, 1, true}, Expect{"gemma3", 2, 106, true},
                          Expect{"llama2-sp", 1, 2, false}}) {
    if (!fs::exists(tokenizer_dir(e.name))) continue;
    const Tokenizer& tok = cached_tokenizer(e.name);
    EXPECT_EQ(tok.bos_id(), e.bos) << e.name;
    EXPECT_EQ(tok.eos_id(), e.eos) << e.name;
    EXPECT_EQ(tok.chat_template().has_value(), e.has_template) << e.name;
    if (e.eos) {
      EXPECT_TRUE(tok.is_special(*e.eos)) << e.name;
    }
  }
}

TEST(TokenizerParts, ConcurrentEncode) {
  const std::string name = fs::exists(tokenizer_dir("qwen3")) ? "qwen3" : "tiny_bytelevel";
  const Tokenizer& tok = cached_tokenizer(name);
  const json fx = test::read_json(fixture_dir() / (name + ".json"));
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (const json& c : fx["cases"]) {
        if (tok.encode(c["text"].get<std::string>(), true) != c["ids"].get<std::vector<int32_t>>()) ++wrong;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

// ---- Load errors name the file and the field -----------------------------------------------------

void expect_load_error(const json& tokenizer_json, const Strings& parts,
                       std::source_location loc = std::source_location::current()) {
  testing::ScopedTrace trace(loc.file_name(), static_cast<int>(loc.line()), "expect_load_error");
  test::TempDir dir;
  try {
    load_json(dir, tokenizer_json);
    ADD_FAILURE() << "no apus::Error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "\"" << p << "\" not in: " << msg;
  }
}

TEST(TokenizerErrors, MalformedTokenizerJson) {
  json base = tiny_bpe();
  expect_load_error(json{{"added_tokens", json::array()}}, {"field 'model' is missing"});
  json j = base;
  j["model"]["merges"] = {{1, 2}};
  expect_load_error(j, {"model.merges[0]", "expected"});
  j["model"]["merges"] = {"a z"};
  expect_load_error(j, {"model.merges[0]", "\"z\"", "not in model.vocab"});
  j = base;
  j["model"]["vocab"] = json::array();
  expect_load_error(j, {"model.vocab", "expected an object, found array"});
  j = base;
  j["added_tokens"] = {{{"id", 9}}};
  expect_load_error(j, {"added_tokens[0].content", "missing"});
  j = base;
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  expect_load_error(j, {"pre_tokenizer.pattern.Regex", "(unclosed", "does not compile"});
  j["pre_tokenizer"]["pattern"] = {{"Regex", "x"}};
  j["pre_tokenizer"]["behavior"] = "Sideways";
  expect_load_error(j, {"pre_tokenizer.behavior", "Sideways"});
}

TEST(TokenizerErrors, UnknownComponentsRefusedByName) {
  const json base = tiny_bpe();
  auto with = [&](const char* key, json value) {
    json j = base;
    j[key] = std::move(value);
    return j;
  };
  expect_load_error(with("normalizer", {{"type", "Shout"}}), {"normalizer", "'Shout'"});
  expect_load_error(with("normalizer", {{"type", "Precompiled"}, {"precompiled_charsmap", "AA=="}}),
                    {"normalizer", "Precompiled", "not supported"});
  expect_load_error(with("pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Digits"}}, {{"type", "Bar"}}}}}),
                    {"pre_tokenizer.pretokenizers[1]", "'Bar'"});
  expect_load_error(with("post_processor", {{"type", "Mystery"}}), {"post_processor", "'Mystery'"});
  expect_load_error(with("decoder", {{"type", "CTC"}}), {"decoder", "'CTC'"});
  json j = base;
  j["model"]["type"] = "Transformer";
  expect_load_error(j, {"model", "'Transformer'"});
}

TEST(TokenizerErrors, Files) {
  test::TempDir dir;
  auto expect = [&](const Strings& parts) {
    try {
      Tokenizer::load(dir.str());
      ADD_FAILURE() << "no apus::Error thrown";
    } catch (const Error& e) {
      for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  };
  expect({"no tokenizer.json or tokenizer.model"});
  std::ofstream(dir.path() / "tokenizer.model") << "not a protobuf";
  expect({"tokenizer.model", "cannot load SentencePiece model"});
  std::ofstream(dir.path() / "tokenizer.json") << "{\"model\": ";
  expect({"tokenizer.json", "invalid JSON"});
  test::write_json(dir.path() / "tokenizer.json", tiny_bpe());
  test::write_json(dir.path() / "tokenizer_config.json", {{"bos_token", 7}});
  expect({"tokenizer_config.json", "bos_token"});
}

}  // namespace
}  // namespace apus
