// The web chat page (apus app-ui, deploy --ui) end to end: the real binary as a subprocess serving a
// tiny model with the real Qwen tokenizer and --api_key, then
//   - the page's files over HTTP (curl): the page needs no key, the API still does;
//   - the Markdown renderer in node (tests/ui/markdown_test.mjs);
//   - the page in Debian's chromium driven by playwright-core (tests/ui/chat_ui.mjs: streaming, stop,
//     settings, clear, history, errors, keyboard, phone width, a model reply with <script>), which
//     leaves screenshots in the build folder. Skipped without /usr/bin/chromium
//     (scripts/install-deps.sh) or tests/ui/node_modules (scripts/fetch-e2e-deps.sh).
//
// The model: a reply containing <script> must come from the model itself, through the engine,
// detokenizer, SSE stream and page, and a random-weight model says no such thing. So the test
// writes a model that does (write_scripted_model below): a real Qwen2 checkpoint whose weights make
// it answer kReply at temperature 0, and random text at temperature 1.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <set>

#include "core/dtype.h"
#include "deploy_process.h"
#include "model/safetensors.h"
#include "test_util.h"
#include "text/tokenizer/tokenizer.h"

namespace apus {
namespace {

namespace fs = std::filesystem;
using test::sh;

const char* const kKey = "sk-apus-ui";
const char* const kModel = "apus-ui";
// What the model says at temperature 0: markup that must show as text, and Markdown that must not.
// Its tokens must all differ (see write_scripted_model).
const char* const kReply = "<script>alert(1)</script> is **not** run; nor <img src=x onerror=print()>.";

// A one-layer Qwen2 checkpoint whose next token depends on the last token only: attention and MLP
// add nothing (o_proj and down_proj are zero), so the final hidden state is the last token's
// embedding. The generation prompt's last token ("\n" after "<|im_start|>assistant") and each token
// of kReply get their own unit embedding axis among the first kAxes; lm_head maps that axis to the
// reply's next token (after the last, <|im_end|>) with logit kLogit, every other logit being 0.
// Every other token's embedding is random on the remaining axes, so after it all logits are 0.
// Greedy sampling (temperature 0) therefore says kReply then stops; at temperature 1 the scripted
// token has probability e^6 / (e^6 + 151935) ~ 0.3% per step, so the model writes random text (as
// the demo model does) for the streaming, stop and seed checks.
bool write_scripted_model(const fs::path& dir, std::string* why) {
  const fs::path tok_dir = fs::path(APUS_SOURCE_DIR) / "third_party/tokenizers/qwen3";
  if (!fs::exists(tok_dir / "tokenizer.json")) {
    *why = "no tokenizer files: run scripts/fetch-tokenizers.sh";
    return false;
  }
  fs::create_directories(dir);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(tok_dir / f, dir / f);
  constexpr int64_t kVocab = 151936, kHidden = 64, kInter = 64, kHeads = 2, kHeadDim = 32, kAxes = 32;
  constexpr int32_t kImEnd = 151645;
  constexpr float kLogit = 6.0f;
  test::write_json(dir / "config.json",
                   {{"architectures", {"Qwen2ForCausalLM"}}, {"model_type", "qwen2"}, {"hidden_size", kHidden},
                    {"intermediate_size", kInter}, {"num_hidden_layers", 1}, {"num_attention_heads", kHeads},
                    {"num_key_value_heads", 1}, {"vocab_size", kVocab}, {"max_position_embeddings", 4096},
                    {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0}, {"hidden_act", "silu"},
                    {"tie_word_embeddings", false}, {"bos_token_id", 151643}, {"eos_token_id", kImEnd},
                    {"torch_dtype", "bfloat16"}});
  test::write_json(dir / "generation_config.json", {{"eos_token_id", {kImEnd, 151643}}});

  const auto tok = Tokenizer::load(dir.string());
  std::vector<int32_t> from = tok->encode("<|im_start|>assistant\n", false);
  const std::vector<int32_t> reply = tok->encode(kReply, false);
  if (tok->decode(reply, false) != kReply) {
    *why = "kReply does not survive encode + decode";
    return false;
  }
  from = {from.back()};
  from.insert(from.end(), reply.begin(), reply.end());  // axis k: token from[k] -> to[k]
  std::vector<int32_t> to = reply;
  to.push_back(kImEnd);
  if (std::set<int32_t>(from.begin(), from.end()).size() != from.size() || int64_t(from.size()) > kAxes) {
    *why = "kReply needs distinct tokens (and at most 31), unlike the generation prompt's last";
    return false;
  }

  auto zeros = [](int64_t n) { return std::vector<uint16_t>(size_t(n), f32_to_bf16(0.0f)); };
  auto ones = [](int64_t n) { return std::vector<uint16_t>(size_t(n), f32_to_bf16(1.0f)); };
  std::vector<uint16_t> embed = zeros(kVocab * kHidden), lm_head = zeros(kVocab * kHidden);
  const Tensor noise = random_weight("model.embed_tokens.weight", {kVocab, kHidden - kAxes}, DType::BF16, 5);
  const auto* n = static_cast<const uint16_t*>(noise.data);
  for (int64_t t = 0; t < kVocab; ++t)
    for (int64_t j = 0; j < kHidden - kAxes; ++j) embed[size_t(t * kHidden + kAxes + j)] = n[t * (kHidden - kAxes) + j];
  for (size_t k = 0; k < from.size(); ++k) {
    for (int64_t j = 0; j < kHidden; ++j) embed[size_t(from[k] * kHidden + j)] = f32_to_bf16(0.0f);
    embed[size_t(from[k] * kHidden) + k] = f32_to_bf16(1.0f);
    // RMSNorm turns the unit vector into sqrt(kHidden) on its axis.
    lm_head[size_t(to[k] * kHidden) + k] = f32_to_bf16(kLogit / std::sqrt(float(kHidden)));
  }
  const Tensor qkv = random_weight("qkv", {(kHeads + 2) * kHeadDim, kHidden}, DType::BF16, 6);
  const Tensor mlp = random_weight("mlp", {2 * kInter, kHidden}, DType::BF16, 7);
  const auto* q = static_cast<const uint16_t*>(qkv.data);
  const auto* m = static_cast<const uint16_t*>(mlp.data);
  const auto norm = ones(kHidden), o_proj = zeros(kHidden * kHeads * kHeadDim), down = zeros(kHidden * kInter);
  const auto q_bias = zeros(kHeads * kHeadDim), kv_bias = zeros(kHeadDim);
  const std::string L = "model.layers.0.";
  write_checkpoint(dir.string(),
                   {{"model.embed_tokens.weight", DType::BF16, {kVocab, kHidden}, embed.data()},
                    {L + "input_layernorm.weight", DType::BF16, {kHidden}, norm.data()},
                    {L + "self_attn.q_proj.weight", DType::BF16, {kHeads * kHeadDim, kHidden}, q},
                    {L + "self_attn.q_proj.bias", DType::BF16, {kHeads * kHeadDim}, q_bias.data()},
                    {L + "self_attn.k_proj.weight", DType::BF16, {kHeadDim, kHidden}, q + kHeads * kHeadDim * kHidden},
                    {L + "self_attn.k_proj.bias", DType::BF16, {kHeadDim}, kv_bias.data()},
                    {L + "self_attn.v_proj.weight", DType::BF16, {kHeadDim, kHidden}, q + (kHeads + 1) * kHeadDim * kHidden},
                    {L + "self_attn.v_proj.bias", DType::BF16, {kHeadDim}, kv_bias.data()},
                    {L + "self_attn.o_proj.weight", DType::BF16, {kHidden, kHeads * kHeadDim}, o_proj.data()},
                    {L + "post_attention_layernorm.weight", DType::BF16, {kHidden}, norm.data()},
                    {L + "mlp.gate_proj.weight", DType::BF16, {kInter, kHidden}, m},
                    {L + "mlp.up_proj.weight", DType::BF16, {kInter, kHidden}, m + kInter * kHidden},
                    {L + "mlp.down_proj.weight", DType::BF16, {kHidden, kInter}, down.data()},
                    {"model.norm.weight", DType::BF16, {kHidden}, norm.data()},
                    {"lm_head.weight", DType::BF16, {kVocab, kHidden}, lm_head.data()}},
                   size_t(1) << 40);
  return true;
}

bool have(const std::string& program) { return sh("command -v " + program + " >/dev/null 2>&1").status == 0; }

// `apus app-ui` on the scripted model, shared by the suite.
struct AppUi {
  test::DeployProcess process;
  std::string skip;  // why the suite is skipped ("" when it runs)
  test::TempDir dir;

  void start() {
    const fs::path model = dir.path() / "model";
    if (!write_scripted_model(model, &skip)) return;
    if (!process.start(model, dir.path() / "app-ui.log",
                       {"--api_key", kKey, "--served_model_name", kModel, "--kv_cache_gib", "0.25", "--threads", "2",
                        "--log_interval", "0"},
                       "app-ui"))
      skip = "apus app-ui did not start";
  }
};

AppUi* app_ = nullptr;

class WebUi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    app_ = new AppUi;
    app_->start();
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(app_->process.stop(std::chrono::seconds(30)), 0) << app_->process.log();
    delete app_;
    app_ = nullptr;
  }
  void SetUp() override {
    if (!app_->skip.empty()) GTEST_SKIP() << app_->skip;
  }
  const std::string& base() const { return app_->process.url(); }
};

// The model says kReply at temperature 0, through the API (so that the browser test's check of
// the page is a check of the page).
TEST_F(WebUi, ScriptedModelSaysItsReply) {
  server::HttpClient client(base(), kKey, 120.0);
  const auto r = client.post("/v1/chat/completions",
                             R"({"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 64})");
  ASSERT_EQ(r.status, 200) << r.body;
  const auto j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["choices"][0]["message"]["content"], kReply) << r.body;
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop") << r.body;
}

// The page and its files: served without the key (they hold none), with their types and a
// Content-Security-Policy that allows no inline script; the API still wants the key.
TEST_F(WebUi, ServesThePageWithoutTheKey) {
  if (!have("curl")) GTEST_SKIP() << "curl is not installed (scripts/install-deps.sh installs it)";
  for (const auto& [path, type] : std::vector<std::pair<std::string, std::string>>{
           {"/", "text/html"}, {"/index.html", "text/html"}, {"/ui/app.js", "text/javascript"},
           {"/ui/markdown.js", "text/javascript"}, {"/ui/style.css", "text/css"}}) {
    const test::Exec e = sh("curl -sS -D - --max-time 30 " + base() + path + " 2>&1");
    ASSERT_EQ(e.status, 0) << e.out;
    EXPECT_NE(e.out.find("HTTP/1.1 200"), std::string::npos) << path << "\n" << e.out.substr(0, 600);
    EXPECT_NE(e.out.find("Content-Type: " + type), std::string::npos) << path << "\n" << e.out.substr(0, 600);
    EXPECT_NE(e.out.find("Content-Security-Policy: default-src 'none'; script-src 'self';"), std::string::npos) << path;
    // The embedded bytes are the source files'.
    const std::string file = path.size() > 4 && path.rfind("/ui/", 0) == 0 ? path.substr(4) : "index.html";
    const std::string want = test::read_text(fs::path(APUS_SOURCE_DIR) / "src/server/ui" / file);
    EXPECT_TRUE(e.out.size() >= want.size() && e.out.compare(e.out.size() - want.size(), want.size(), want) == 0) << path;
  }
  EXPECT_NE(sh("curl -sS " + base() + "/ui/nothing.js").out.find("\"not_found\""), std::string::npos);
  EXPECT_EQ(sh("curl -sS -o /dev/null -w '%{http_code}' " + base() + "/v1/models").out, "401");
  EXPECT_EQ(sh("curl -sS -o /dev/null -w '%{http_code}' -X POST " + base() + "/").out, "404");
}

// The Markdown renderer's tree, in node (no browser needed).
TEST_F(WebUi, MarkdownRenderer) {
  if (!have("node")) GTEST_SKIP() << "node is not installed";
  const test::Exec e = sh("timeout 60 node " + std::string(APUS_SOURCE_DIR) + "/tests/ui/markdown_test.mjs 2>&1");
  EXPECT_EQ(e.status, 0) << e.out;
  EXPECT_NE(e.out.find("checks passed"), std::string::npos) << e.out;
}

// The page in a real browser: everything in tests/ui/chat_ui.mjs.
TEST_F(WebUi, ChatInChromium) {
  const fs::path ui = fs::path(APUS_SOURCE_DIR) / "tests/ui";
  if (!fs::exists("/usr/bin/chromium")) GTEST_SKIP() << "no /usr/bin/chromium (scripts/install-deps.sh installs it)";
  if (!fs::exists(ui / "node_modules/playwright-core/package.json")) GTEST_SKIP() << "run scripts/fetch-e2e-deps.sh";
  if (!have("node")) GTEST_SKIP() << "node is not installed";
  const fs::path shots = fs::path(APUS_BINARY).parent_path();  // the build folder
  // timeout: the script bounds each step itself; this bounds the whole, browser included
  // (playwright closes it on SIGTERM).
  const test::Exec e = sh("cd '" + ui.string() + "' && APUS_API_KEY=" + kKey + " APUS_MODEL=" + kModel +
                          " APUS_SCREENSHOTS='" + shots.string() + "' APUS_REPLY='" + kReply +
                          "' timeout -k 10 400 node chat_ui.mjs " + base() + " 2>&1");
  EXPECT_EQ(e.status, 0) << e.out << "\n" << app_->process.log();
  EXPECT_NE(e.out.find("checks passed"), std::string::npos) << e.out;
  EXPECT_TRUE(fs::exists(shots / "ui-test-screenshot.png"));
}

}  // namespace
}  // namespace apus
