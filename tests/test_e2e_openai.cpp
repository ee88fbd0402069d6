// `apus deploy` end to end, as users meet it: the real binary as a subprocess (a tiny random-weight
// Qwen2 model with the real Qwen tokenizer, --api_key, --port 0), then
//   - the official `openai` npm client: tests/e2e/openai_conformance.mjs (skipped without
//     tests/e2e/node_modules, which scripts/fetch-e2e-deps.sh installs);
//   - SPEC.md's curl calls, literally (plus the served name and the key), and curl's raw view of
//     streams and errors;
//   - SIGTERM with a stream in flight: the stream completes, the server exits 0.
// The tests share one server and run in the order written; the last one stops it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "server/http_client.h"
#include "deploy_process.h"
#include "test_util.h"

namespace apus {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const char* const kKey = "sk-apus-e2e";
const char* const kModel = "apus-e2e";
constexpr int kMaxModelLen = 512;

using test::sh;

bool have(const std::string& program) { return sh("command -v " + program + " >/dev/null 2>&1").status == 0; }

// The server process, shared by the suite.
struct Deploy {
  test::DeployProcess process;
  std::string skip;  // why the suite is skipped ("" when it runs)
  std::unique_ptr<test::TempDir> dir;

  std::string start() {
    dir = std::make_unique<test::TempDir>();
    const fs::path model = dir->path() / "model";
    if (!test::write_tiny_chat_model(model)) return "no tokenizer files: run scripts/fetch-tokenizers.sh";
    if (!have("curl")) return "curl is not installed (scripts/install-deps.sh installs it)";
    const bool ok = process.start(model, dir->path() / "deploy.log",
                                  {"--api_key", kKey, "--served_model_name", kModel, "--max_model_len",
                                   std::to_string(kMaxModelLen), "--kv_cache_gib", "0.25", "--threads", "2",
                                   "--log_interval", "0",
                                   // the drain must not be cut short on a slow (sanitizer) build
                                   "--drain_timeout", "600"});
    return ok ? "" : "apus deploy did not start";
  }
};

Deploy* server_ = nullptr;

class E2EOpenAI : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new Deploy;
    server_->skip = server_->start();
  }
  static void TearDownTestSuite() {
    server_->process.stop(std::chrono::seconds(30));
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    if (!server_->skip.empty()) GTEST_SKIP() << server_->skip;
    if (!server_->process.running()) GTEST_SKIP() << "the server was already stopped";
  }

  const std::string& base() const { return server_->process.url(); }
  std::string auth() const { return std::string("-H \"Authorization: Bearer ") + kKey + "\" "; }

  // `curl ARGS` with the status code on a last line of its own: {status, body}.
  std::pair<int, std::string> curl(const std::string& args) {
    const test::Exec e = sh("curl -sS --max-time 300 -w '\\n%{http_code}' " + args + " 2>&1");
    EXPECT_EQ(e.status, 0) << "curl " << args << "\n" << e.out;
    const size_t nl = e.out.rfind('\n');
    if (nl == std::string::npos) return {0, e.out};
    return {std::atoi(e.out.c_str() + nl + 1), e.out.substr(0, nl)};
  }
  json curl_json(const std::string& args, int expect_status) {
    auto [status, body] = curl(args);
    EXPECT_EQ(status, expect_status) << body;
    json j = json::parse(body, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << body;
    return j;
  }
};

void expect_usage(const json& u, int max_completion) {
  ASSERT_TRUE(u.is_object()) << u;
  EXPECT_GT(u["prompt_tokens"].get<int>(), 0);
  EXPECT_GE(u["completion_tokens"].get<int>(), 1);
  EXPECT_LE(u["completion_tokens"].get<int>(), max_completion);
  EXPECT_EQ(u["total_tokens"], u["prompt_tokens"].get<int>() + u["completion_tokens"].get<int>());
}

void expect_envelope(const json& r, const std::string& object) {
  EXPECT_EQ(r["object"], object) << r;
  EXPECT_TRUE(r["id"].is_string() && !r["id"].get<std::string>().empty()) << r;
  EXPECT_TRUE(r["created"].is_number_integer()) << r;
  EXPECT_EQ(r["model"], kModel) << r;
}

void expect_error_object(const json& r, const std::string& type) {
  ASSERT_TRUE(r.contains("error")) << r;
  const json& e = r["error"];
  EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << r;
  EXPECT_EQ(e["type"], type) << r;
  EXPECT_TRUE(e.contains("param") && e.contains("code")) << r;
}

// The official client: everything in tests/e2e/openai_conformance.mjs.
TEST_F(E2EOpenAI, OfficialNodeClient) {
  const fs::path e2e = fs::path(APUS_SOURCE_DIR) / "tests/e2e";
  if (!fs::exists(e2e / "node_modules/openai/package.json")) GTEST_SKIP() << "run scripts/fetch-e2e-deps.sh";
  if (!have("node")) GTEST_SKIP() << "node is not installed";
  const test::Exec e = sh("cd '" + e2e.string() + "' && APUS_API_KEY=" + kKey + " APUS_MODEL=" + kModel +
                          " APUS_MAX_MODEL_LEN=" + std::to_string(kMaxModelLen) + " timeout 600 node openai_conformance.mjs " +
                          base() + "/v1 2>&1");
  EXPECT_EQ(e.status, 0) << e.out;
  EXPECT_NE(e.out.find("checks passed"), std::string::npos) << e.out;
}

// SPEC.md's two calls as written there, with the served name and the key added (the completions
// call sends no Content-Type, as curl -d then says form-urlencoded: the server reads JSON anyway).
TEST_F(E2EOpenAI, SpecCurlCalls) {
  const json chat = curl_json(base() + "/v1/chat/completions -H \"Content-Type: application/json\" " + auth() + R"(-d '{
  "model": "apus-e2e", "messages": [{"role": "user", "content": "晚上睡不着觉怎么办?"}],
  "max_tokens": 256, "temperature": 0}')", 200);
  expect_envelope(chat, "chat.completion");
  ASSERT_EQ(chat["choices"].size(), 1u) << chat;
  const json& c = chat["choices"][0];
  EXPECT_EQ(c["index"], 0);
  EXPECT_EQ(c["message"]["role"], "assistant");
  EXPECT_TRUE(c["message"]["content"].is_string());
  EXPECT_TRUE(c["finish_reason"] == "stop" || c["finish_reason"] == "length") << c;
  EXPECT_TRUE(c["logprobs"].is_null());
  expect_usage(chat["usage"], 256);

  const std::string completion_call = base() + "/v1/completions " + auth() + R"(-d '{"model": "apus-e2e", "prompt": "浙江 -> 杭州\n安徽 -> 合肥\n四川 ->",
  "max_tokens": 32, "temperature": 0.1, "seed": 42}')";
  const json cmpl = curl_json(completion_call, 200);
  expect_envelope(cmpl, "text_completion");
  ASSERT_EQ(cmpl["choices"].size(), 1u) << cmpl;
  EXPECT_EQ(cmpl["choices"][0]["index"], 0);
  EXPECT_TRUE(cmpl["choices"][0]["text"].is_string());
  EXPECT_TRUE(cmpl["choices"][0]["finish_reason"] == "stop" || cmpl["choices"][0]["finish_reason"] == "length");
  expect_usage(cmpl["usage"], 32);
  // seed 42 again: the same sample.
  EXPECT_EQ(curl_json(completion_call, 200)["choices"][0]["text"], cmpl["choices"][0]["text"]);

  const json models = curl_json(base() + "/v1/models " + auth(), 200);
  EXPECT_EQ(models["object"], "list");
  ASSERT_GE(models["data"].size(), 1u) << models;
  EXPECT_EQ(models["data"][0]["id"], kModel);
  EXPECT_EQ(models["data"][0]["object"], "model");
}

// What curl sees of errors: OpenAI's error object with the right status.
TEST_F(E2EOpenAI, CurlErrors) {
  const std::string chat = base() + "/v1/chat/completions -H \"Content-Type: application/json\" ";
  expect_error_object(curl_json(chat + R"(-d '{"messages": [{"role": "user", "content": "hi"}]}')", 401),
                      "invalid_request_error");
  expect_error_object(curl_json(chat + "-H \"Authorization: Bearer wrong\" -d '{}'", 401), "invalid_request_error");
  expect_error_object(curl_json(chat + auth() + R"(-d '{"messages": [')", 400), "invalid_request_error");
  const json range = curl_json(chat + auth() + R"(-d '{"messages": [{"role": "user", "content": "hi"}], "n": 0}')", 400);
  expect_error_object(range, "invalid_request_error");
  EXPECT_EQ(range["error"]["param"], "n");
  const json unknown =
      curl_json(chat + auth() + R"(-d '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}')", 404);
  expect_error_object(unknown, "invalid_request_error");
  EXPECT_EQ(unknown["error"]["code"], "model_not_found");
  // Still serving.
  EXPECT_EQ(curl(base() + "/health").first, 200);
}

// curl -N's raw view of a chat stream: data: lines, the role first, [DONE] last.
TEST_F(E2EOpenAI, CurlStreamIsServerSentEvents) {
  const test::Exec e = sh("curl -sS -N -D - " + base() + "/v1/chat/completions " + auth() +
                          R"(-d '{"model": "apus-e2e", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": true, "stream_options": {"include_usage": true}}' 2>&1)");
  ASSERT_EQ(e.status, 0) << e.out;
  const size_t body_at = e.out.find("\r\n\r\n");
  ASSERT_NE(body_at, std::string::npos) << e.out;
  const std::string head = e.out.substr(0, body_at), body = e.out.substr(body_at + 4);
  EXPECT_NE(head.find("HTTP/1.1 200"), std::string::npos) << head;
  EXPECT_NE(head.find("text/event-stream"), std::string::npos) << head;
  std::vector<std::string> events;
  for (size_t at = 0; at < body.size();) {
    const size_t end = body.find("\n\n", at);
    ASSERT_NE(end, std::string::npos) << "an event without its blank line: " << body.substr(at);
    const std::string ev = body.substr(at, end - at);
    ASSERT_EQ(ev.rfind("data: ", 0), 0u) << ev;
    events.push_back(ev.substr(6));
    at = end + 2;
  }
  ASSERT_GE(events.size(), 3u) << body;
  EXPECT_EQ(events.back(), "[DONE]");
  const json first = json::parse(events.front());
  expect_envelope(first, "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant") << first;
  const json usage = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty()) << usage;
  expect_usage(usage["usage"], 8);
  const json last = json::parse(events[events.size() - 3]);
  EXPECT_TRUE(last["choices"][0]["finish_reason"] == "stop" || last["choices"][0]["finish_reason"] == "length") << last;
}

// Last: SIGTERM while a stream is being generated. The stream still completes, then the server
// exits 0.
TEST_F(E2EOpenAI, SigtermDrainsAStreamInFlight) {
  FILE* p = popen(("curl -sS -N " + base() + "/v1/completions " + auth() +
                   R"(-d '{"model": "apus-e2e", "prompt": "Once upon a time", "max_tokens": 100, "ignore_eos": true, "stream": true}' 2>&1)")
                      .c_str(),
                  "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char line[8192];
  // The first event: the request is in flight.
  ASSERT_NE(fgets(line, sizeof line, p), nullptr);
  out += line;
  ASSERT_EQ(out.rfind("data: {", 0), 0u) << out;
  kill(server_->process.pid(), SIGTERM);
  while (size_t n = fread(line, 1, sizeof line, p)) out.append(line, n);
  EXPECT_EQ(WEXITSTATUS(pclose(p)), 0) << out;
  EXPECT_NE(out.find("\"finish_reason\":\"length\""), std::string::npos) << out.substr(out.size() > 2000 ? out.size() - 2000 : 0);
  EXPECT_TRUE(out.size() >= 14 && out.compare(out.size() - 14, 14, "data: [DONE]\n\n") == 0)
      << out.substr(out.size() > 2000 ? out.size() - 2000 : 0);

  EXPECT_EQ(server_->process.stop(std::chrono::seconds(600), /*signal=*/false), 0) << server_->process.log();
  const std::string log = server_->process.log();
  EXPECT_NE(log.find("draining (1 requests in flight"), std::string::npos) << log;
  EXPECT_NE(log.find("apus: stopped"), std::string::npos) << log;
}

}  // namespace
}  // namespace apus
