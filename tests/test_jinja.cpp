// The Jinja2 interpreter against Python's Jinja2: tests/data/jinja/golden.json holds what
// Jinja2 (configured as transformers configures it) renders for unit cases and for real chat
// templates over many conversations; tools/jinja/make_jinja_golden.py regenerates it.
// Then the things Python cannot tell us: limits, error positions, and robustness under fuzzing.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "text/jinja/jinja.h"

namespace apus::jinja {
namespace {

namespace fs = std::filesystem;

fs::path data_dir() { return fs::path(APUS_SOURCE_DIR) / "tests" / "data" / "jinja"; }

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const nlohmann::ordered_json& golden() {
  static const nlohmann::ordered_json g =
      nlohmann::ordered_json::parse(read_file(data_dir() / "golden.json"));
  return g;
}

struct GoldenCase {
  std::string name;
  std::string source;
  nlohmann::ordered_json context;
  std::optional<std::string> expected;
  std::optional<std::string> error;  // a substring of the expected message ("" = any error)
};

void PrintTo(const GoldenCase& c, std::ostream* os) { *os << c.name; }

std::vector<GoldenCase> load_cases() {
  std::vector<GoldenCase> cases;
  for (const auto& c : golden()["cases"]) {
    GoldenCase g;
    g.name = c["name"].get<std::string>();
    g.source = c.contains("template")
                   ? c["template"].get<std::string>()
                   : read_file(data_dir() / "templates" / c["template_file"].get<std::string>());
    g.context = c["context"];
    if (c.contains("expected")) g.expected = c["expected"].get<std::string>();
    if (c.contains("error")) g.error = c["error"].get<std::string>();
    cases.push_back(std::move(g));
  }
  return cases;
}

class JinjaGolden : public ::testing::TestWithParam<GoldenCase> {
 protected:
  void SetUp() override { set_clock_for_testing(golden()["now"].get<std::time_t>()); }
  void TearDown() override { set_clock_for_testing(std::nullopt); }
};

TEST_P(JinjaGolden, MatchesPythonJinja2) {
  const GoldenCase& c = GetParam();
  std::string out;
  try {
    out = Template::parse(c.source).render(c.context);
  } catch (const Error& e) {
    ASSERT_TRUE(c.error) << "unexpected error: " << e.what();
    EXPECT_NE(std::string(e.what()).find(*c.error), std::string::npos)
        << "error '" << e.what() << "' lacks '" << *c.error << "'";
    return;
  }
  ASSERT_FALSE(c.error) << "expected an error containing '" << *c.error << "', rendered: " << out;
  EXPECT_EQ(out, *c.expected);
}

INSTANTIATE_TEST_SUITE_P(Golden, JinjaGolden, ::testing::ValuesIn(load_cases()),
                         [](const ::testing::TestParamInfo<GoldenCase>& param_info) {
                           std::string n = param_info.param.name;
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n + "_" + std::to_string(param_info.index);
                         });

TEST(JinjaGoldenFile, CoversTheRequiredTemplates) {
  std::set<std::string> files;
  size_t n = 0;
  for (const auto& c : golden()["cases"]) {
    ++n;
    if (c.contains("template_file")) files.insert(c["template_file"].get<std::string>());
  }
  EXPECT_GE(n, 150u);
  for (const char* t :
       {"qwen3.jinja", "qwen2_5_instruct.jinja", "llama3_1.jinja", "llama3_1_instruct_tools.jinja",
        "llama3_2_instruct.jinja", "mistral_7b_instruct_v0_3.jinja", "gemma2_it.jinja", "gemma3.jinja",
        "deepseek_v3.jinja", "deepseek_r1.jinja", "yi_34b_chat.jinja", "phi3_mini_instruct.jinja",
        "llama2_chat.jinja"})
    EXPECT_TRUE(files.count(t)) << t;
}

// ---- API behaviour ---------------------------------------------------------------------------

std::string render(std::string_view src, const nlohmann::ordered_json& ctx = nlohmann::ordered_json::object(),
                   const RenderLimits& limits = {}) {
  return Template::parse(src).render(ctx, limits);
}

std::string error_of(std::string_view src,
                     const nlohmann::ordered_json& ctx = nlohmann::ordered_json::object(),
                     const RenderLimits& limits = {}) {
  try {
    render(src, ctx, limits);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Jinja, SyntaxErrorsNameLineAndColumn) {
  EXPECT_EQ(error_of("line one\n  {{ 1 + }}"), "template:2:10: unexpected 'end of print statement'");
  EXPECT_EQ(error_of("{% for x in xs %}\n{% endif %}"), "template:2:4: Encountered unknown tag 'endif'.");
  EXPECT_NE(error_of("{% if x %}\nabc").find("template:2:"), std::string::npos);
}

TEST(Jinja, RuntimeErrorsNameLineAndColumn) {
  EXPECT_EQ(error_of("ok\n  {{ 1 / 0 }}"), "template:2:6: division by zero");
  EXPECT_EQ(error_of("{% for m in messages %}\n{{ m.content.x.y }}{% endfor %}",
                     {{"messages", {{{"content", "hi"}}}}}),
            "template:2:15: 'str object' has no attribute 'x'");
}

TEST(Jinja, RaiseExceptionIsRecognisable) {
  try {
    render("{{ raise_exception('Roles must alternate') }}");
    FAIL() << "no exception";
  } catch (const TemplateRaised& e) {
    EXPECT_EQ(e.message(), "Roles must alternate");
    EXPECT_EQ(std::string(e.what()), "template:1:4: raise_exception: Roles must alternate");
  }
}

TEST(Jinja, ContextMustBeAnObject) {
  EXPECT_NE(error_of("x", nlohmann::ordered_json::array()).find("must be a JSON object"), std::string::npos);
}

TEST(Jinja, TojsonKeepsContextKeyOrder) {
  auto ctx = nlohmann::ordered_json::parse(R"({"tool": {"zeta": 1, "alpha": {"b": 2, "a": 1}}})");
  EXPECT_EQ(render("{{ tool|tojson }}", ctx), R"({"zeta": 1, "alpha": {"b": 2, "a": 1}})");
}

TEST(Jinja, StrftimeNowUsesTheTestClock) {
  set_clock_for_testing(0);
  EXPECT_EQ(render("{{ strftime_now('%Y-%m-%d %H:%M') }}"), "1970-01-01 00:00");
  set_clock_for_testing(std::nullopt);
  EXPECT_EQ(render("{{ strftime_now('%Y')|length }}"), "4");
}

TEST(Jinja, ATemplateRendersConcurrently) {
  Template t = Template::parse(
      "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m }}{% endfor %}{{ "
      "ns.n }}");
  std::vector<std::thread> threads;
  std::vector<std::string> outs(8);
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&, i] { outs[size_t(i)] = t.render({{"messages", {"a", std::to_string(i)}}}); });
  for (auto& th : threads) th.join();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(outs[size_t(i)], "a" + std::to_string(i) + "2");
}

// ---- limits: every template terminates --------------------------------------------------------

TEST(JinjaLimits, LoopIterations) {
  RenderLimits limits;
  limits.max_loop_iterations = 1000;
  EXPECT_EQ(render("{% for i in range(10) %}{% for j in range(99) %}{% endfor %}{% endfor %}ok", {}, limits),
            "ok");
  EXPECT_NE(error_of("{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}", {}, limits)
                .find("max_loop_iterations"),
            std::string::npos);
}

TEST(JinjaLimits, OutputSize) {
  RenderLimits limits;
  limits.max_output_bytes = 1000;
  EXPECT_NE(error_of("{% for i in range(200) %}0123456789{% endfor %}", {}, limits).find("max_output_bytes"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 5000 }}", {}, limits).find("max_output_bytes"), std::string::npos);
  EXPECT_NE(error_of("{{ 'ab' * 9000000000000000000 }}", {}, limits).find("max_output_bytes"),
            std::string::npos);
}

TEST(JinjaLimits, ExponentialStringGrowthStops) {
  // Doubling a string in a loop would need 2^60 bytes; the size cap stops it early.
  std::string e = error_of(
      "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ "
      "ns.s|length }}");
  EXPECT_NE(e.find("max_output_bytes"), std::string::npos) << e;
  e = error_of(
      "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}");
  EXPECT_NE(e.find("max_loop_iterations"), std::string::npos) << e;
}

TEST(JinjaLimits, WorkBudgetStopsRepeatedLargeCopies) {
  // Each iteration builds a 4 MB string: allowed one by one, but not a million times.
  std::string e =
      error_of("{% set big = 'x' * 4000000 %}{% for i in range(100000) %}{% set c = big ~ '' %}{% endfor %}");
  EXPECT_NE(e.find("work budget"), std::string::npos) << e;
}

TEST(JinjaLimits, MacroRecursionDepth) {
  RenderLimits limits;
  limits.max_call_depth = 10;
  const char* src = "{% macro r(n) %}{% if n > 0 %}{{ r(n - 1) }}{% endif %}.{% endmacro %}{{ r(depth) }}";
  EXPECT_EQ(render(src, {{"depth", 5}}, limits), "......");
  EXPECT_NE(error_of(src, {{"depth", 50}}, limits).find("max_call_depth"), std::string::npos);
  EXPECT_NE(error_of("{% macro r() %}{{ r() }}{% endmacro %}{{ r() }}").find("max_call_depth"),
            std::string::npos);
}

TEST(JinjaLimits, DeepRecursionFailsBeforeTheStackDoes) {
  RenderLimits limits;
  limits.max_call_depth = 1 << 30;  // a caller who lifts the macro limit still gets an error, not a crash
  std::string e = error_of("{% macro r(n) %}{{ (((r(n + 1)))) }}{% endmacro %}{{ r(0) }}", {}, limits);
  EXPECT_NE(e.find("nests too deeply"), std::string::npos) << e;
}

TEST(JinjaLimits, DeepNestingIsASyntaxError) {
  EXPECT_NE(
      error_of("{{ " + std::string(2000, '(') + "1" + std::string(2000, ')') + " }}").find("levels deep"),
      std::string::npos);
  std::string chain = "{{ 1";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  EXPECT_NE(error_of(chain + " }}").find("levels deep"), std::string::npos);
  std::string ifs;
  for (int i = 0; i < 1000; ++i) ifs += "{% if true %}";
  EXPECT_NE(error_of(ifs).find("levels deep"), std::string::npos);
}

TEST(JinjaLimits, SelfReferencingNamespaceStillEnds) {
  std::string e = error_of("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}");
  EXPECT_NE(e.find("nested"), std::string::npos) << e;
  e = error_of("{% set ns = namespace() %}{% set ns.me = [ns] %}{{ ns == ns.me[0] }}{{ ns|tojson }}");
  EXPECT_NE(e.find("JSON serializable"), std::string::npos) << e;
}

// ---- robustness: mutated real templates parse and render, or fail with apus::Error -----------

TEST(JinjaFuzz, MutatedTemplatesFailCleanly) {
  std::vector<std::string> sources;
  for (const auto& entry : fs::directory_iterator(data_dir() / "templates"))
    if (entry.path().extension() == ".jinja") sources.push_back(read_file(entry.path()));
  for (const auto& c : golden()["cases"])
    if (c.contains("template") && sources.size() < 200) sources.push_back(c["template"].get<std::string>());
  std::sort(sources.begin(), sources.end());
  ASSERT_GE(sources.size(), 20u);

  std::vector<nlohmann::ordered_json> contexts;
  for (const auto& c : golden()["cases"])
    if (c.contains("template_file") && contexts.size() < 40) contexts.push_back(c["context"]);

  // clang-format off
  static const char* kFragments[] = {
      "{%", "%}", "{{", "}}", "{#", "#}", "{%-", "-%}", "{{-", "-}}", " if ", " else ", " elif ", " for ", " in ",
      "{% endfor %}", "{% endif %}", "{% for x in messages %}", "{% if loop.last %}", "(", ")", "[", "]", "{", "}",
      "'", "\"", "|", ".", ",", ":", "loop.", "macro ", "set ", "~", "*", "**", "-", "+", "//", "%", " not ",
      " is ", "defined", "none", "10", "-1", "range(", "namespace(", "|tojson(indent=2)", "|join(',')", "[::-1]",
      "caller()", "{% break %}", "{% continue %}", "\\", "\n", " ", "\xe4\xb8\x96", "\xff", "recursive", "raw",
      "{% raw %}", "{% endraw %}", "endmacro", "{% set ns.x = 1 %}", "|map(attribute='content')",
      "99999999999999999999"};
  // clang-format on

  RenderLimits limits;
  limits.max_output_bytes = 1 << 16;
  limits.max_loop_iterations = 20000;
  limits.max_call_depth = 16;

  std::mt19937 rng(20240726);
  auto pick = [&](size_t n) { return size_t(std::uniform_int_distribution<size_t>(0, n - 1)(rng)); };
  int parsed = 0, rendered = 0;
  double worst_ms = 0;
  const int kIterations = 10000;
  for (int it = 0; it < kIterations; ++it) {
    std::string s = sources[pick(sources.size())];
    int mutations = 1 + int(pick(4));
    for (int m = 0; m < mutations && !s.empty(); ++m) {
      size_t pos = pick(s.size() + 1);
      size_t len = std::min(s.size() - std::min(pos, s.size()), pick(12));
      switch (pick(5)) {
        case 0: s.erase(pos, len); break;
        case 1: s.insert(pos, s.substr(pos, len)); break;
        case 2: s.insert(pos, kFragments[pick(std::size(kFragments))]); break;
        case 3:
          if (pos < s.size()) s[pos] = char(pick(256));
          break;
        default: {
          size_t other = pick(s.size());
          std::string piece = s.substr(other, std::min<size_t>(len, s.size() - other));
          s.replace(std::min(pos, s.size()), len, piece);
        }
      }
    }
    auto start = std::chrono::steady_clock::now();
    try {
      Template t = Template::parse(s);
      ++parsed;
      t.render(contexts[pick(contexts.size())], limits);
      ++rendered;
    } catch (const Error&) {
      // expected for most mutations
    } catch (const std::exception& e) {
      FAIL() << "non-apus exception " << e.what() << " for template:\n" << s;
    }
    worst_ms =
        std::max(worst_ms,
                 std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::cout << "fuzz: " << kIterations << " mutants, " << parsed << " parsed, " << rendered
            << " rendered, slowest " << worst_ms << " ms\n";
  EXPECT_GT(parsed, kIterations / 10);
  EXPECT_GT(rendered, kIterations / 20);
}

}  // namespace
}  // namespace apus::jinja
