// `apus client` and `apus bench serve` against a real `apus deploy` of the tiny chat model, run
// as a user runs them: the server a separate process on a free port, the commands' output read
// as printed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <optional>
#include <thread>

#include "server/http_client.h"
#include "deploy_process.h"
#include "test_util.h"

namespace apus {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

// `apus deploy` of the tiny chat model on a free port.
class Deployment {
 public:
  explicit Deployment(const fs::path& dir) {
    const fs::path model = dir / "tiny-chat";
    fs::create_directories(model);
    if (!test::write_tiny_chat_model(model)) return;
    ready_ = process_.start(model, dir / "deploy.log", {"--threads", "1", "--log-interval", "0"});
  }
  bool ready() const { return ready_; }
  const std::string& url() const { return process_.url(); }
  const std::string& name() const { return process_.name(); }
  std::string log() const { return process_.log(); }
  int stop() { return process_.stop(std::chrono::seconds(60)); }

 private:
  test::DeployProcess process_;
  bool ready_ = false;
};

// `apus ARGS` with stdout and stderr apart (stdin: `input`, through a pipe).
struct Output {
  int status;
  std::string out, err;
};

class ClientBenchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    server_ = new Deployment(dir_->path());
  }
  static void TearDownTestSuite() {
    delete server_;
    delete dir_;
  }
  void SetUp() override {
    if (!fs::exists(fs::path(APUS_SOURCE_DIR) / "third_party/tokenizers/qwen3/tokenizer.json"))
      GTEST_SKIP() << "no Qwen tokenizer (scripts/fetch-tokenizers.sh)";
    ASSERT_TRUE(server_->ready()) << server_->log();
  }

  static Output apus(const std::string& args, const std::string& input = "") {
    const fs::path in = dir_->path() / "stdin.txt", err = dir_->path() / "stderr.txt";
    std::ofstream(in) << input;
    const std::string cmd = std::string(APUS_BINARY) + " " + args + " <" + in.string() + " 2>" + err.string();
    FILE* p = popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    const int status = pclose(p);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out, test::read_text(err)};
  }
  // `apus client ARGS` streamed and with --no-stream: the same answer; returns the streamed run.
  static Output streamed_equals_whole(const std::string& args) {
    const Output streamed = client(args);
    EXPECT_EQ(streamed.status, 0) << streamed.err;
    const Output whole = client("--no-stream " + args);
    EXPECT_EQ(whole.status, 0) << whole.err;
    EXPECT_GT(streamed.out.size(), 1u);
    EXPECT_EQ(streamed.out, whole.out);
    return streamed;
  }
  // The client on the server, greedy, with a bound on each wait.
  static Output client(const std::string& args, const std::string& input = "") {
    return apus("client --url " + server_->url() + " --temperature 0 --max-tokens 12 --timeout 30 " + args, input);
  }

  static test::TempDir* dir_;
  static Deployment* server_;
};

test::TempDir* ClientBenchTest::dir_ = nullptr;
Deployment* ClientBenchTest::server_ = nullptr;

TEST_F(ClientBenchTest, ChatStreamedAndWholeAnswersAreTheSame) {
  const Output streamed = streamed_equals_whole("'What is the capital of Zhejiang?'");
  ASSERT_FALSE(HasFailure());
  EXPECT_EQ(streamed.out.back(), '\n');
  // The model named explicitly, and the URL as deploy prints it (with /v1): the same answer.
  const Output named = apus("client --url " + server_->url() + "/v1 --model " + server_->name() +
                         " --temperature 0 --max-tokens 12 'What is the capital of Zhejiang?'");
  ASSERT_EQ(named.status, 0) << named.err;
  EXPECT_EQ(named.out, streamed.out);
}

TEST_F(ClientBenchTest, CompletionStreamedAndWholeAnswersAreTheSame) {
  streamed_equals_whole("--completion 'Hangzhou is'");
}

TEST_F(ClientBenchTest, ServerErrorsAreReportedWithTheirStatus) {
  for (const char* stream : {"", "--no-stream "}) {
    const Output r = client(std::string(stream) + "--model no-such-model hello");
    EXPECT_NE(r.status, 0);
    EXPECT_THAT(r.err, HasSubstr("HTTP 404"));
    EXPECT_THAT(r.err, HasSubstr("The model `no-such-model` does not exist."));
    EXPECT_EQ(r.out, "");
  }
  // Beyond max_model_len: a 400 from the server.
  const Output bad = apus("client --url " + server_->url() + " --max-tokens 100000 hello");
  EXPECT_NE(bad.status, 0);
  EXPECT_THAT(bad.err, HasSubstr("HTTP 400"));
  EXPECT_THAT(bad.err, HasSubstr("maximum context length"));
  const Output down = apus("client --url http://127.0.0.1:1 hello");  // nothing listens on port 1
  EXPECT_NE(down.status, 0);
  EXPECT_THAT(down.err, HasSubstr("cannot connect to 127.0.0.1:1"));
}

// The conversation from a pipe: `clear` drops the history, so the same question then gets the
// first answer again; `quit` ends it.
TEST_F(ClientBenchTest, InteractiveKeepsAndClearsHistory) {
  const Output one = client("--no-stream hello");
  ASSERT_EQ(one.status, 0) << one.err;
  const std::string answer = one.out.substr(0, one.out.size() - 1);
  const Output r = client("", "hello\nhello\nclear\nhello\n\nquit\nhello\n");
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string rule = "\n" + std::string(50, '-') + "\n";
  std::vector<std::string> turns;
  for (size_t pos = 0, end; (end = r.out.find(rule, pos)) != std::string::npos; pos = end + rule.size())
    turns.push_back(r.out.substr(pos, end - pos));
  ASSERT_EQ(turns.size(), 3u) << r.out;  // nothing after `quit`
  EXPECT_EQ(turns[0], "<<< " + answer);
  EXPECT_EQ(turns[2], "<<< <<< " + answer);  // `clear`, then the first turn again
  EXPECT_EQ(r.out.substr(r.out.size() - 8), "<<< <<< ");  // the empty line, then `quit`
  EXPECT_THAT(r.err, HasSubstr("`clear`"));
}

TEST_F(ClientBenchTest, BenchServeCompletions) {
  const fs::path json = dir_->path() / "bench.json";
  const Output r = apus("bench serve --url " + server_->url() + " --num-prompts 8 --input-len 16 --output-len 8 --timeout 30 --json " +
                     json.string());
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("Serving Benchmark Result"));
  EXPECT_THAT(r.out, testing::ContainsRegex("Successful requests: +8 "));
  EXPECT_THAT(r.out, testing::ContainsRegex("Failed requests: +0 "));
  EXPECT_THAT(r.out, testing::ContainsRegex("Total input tokens: +128 "));
  EXPECT_THAT(r.out, testing::ContainsRegex("Total generated tokens: +64 "));
  for (const char* row : {"Request throughput (req/s):", "Output token throughput (tok/s):", "Mean TTFT (ms):",
                          "Median TPOT (ms):", "P99 ITL (ms):"})
    EXPECT_THAT(r.out, HasSubstr(row));
  const auto j = test::read_json(json);
  EXPECT_EQ(j["completed"], 8);
  EXPECT_EQ(j["failed"], 0);
  EXPECT_EQ(j["total_output_tokens"], 64);
  EXPECT_EQ(j["output_lens"], nlohmann::json(std::vector<int>(8, 8)));
  EXPECT_EQ(j["input_lens"], nlohmann::json(std::vector<int>(8, 16)));
  for (const auto& itl : j["itls"]) EXPECT_LE(itl.size(), 7u);  // gaps between at most 8 chunks with text
  EXPECT_GT(j["mean_ttft_ms"].get<double>(), 0.0);
  EXPECT_LE(j["mean_ttft_ms"].get<double>(), j["mean_e2el_ms"].get<double>());
  EXPECT_GT(j["output_throughput"].get<double>(), 0.0);
}

TEST_F(ClientBenchTest, BenchServeChatWithRateAndConcurrency) {
  const fs::path json = dir_->path() / "bench-chat.json";
  const Output r = apus("bench serve --url " + server_->url() + "/v1 --model " + server_->name() +
                     " --endpoint /v1/chat/completions --num-prompts 6 --input-len 16 --output-len 4 --request-rate 50 "
                     "--max-concurrency 2 --dataset random --random-range-ratio 0.5 --timeout 30 --json " + json.string());
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  const auto j = test::read_json(json);
  EXPECT_EQ(j["completed"], 6);
  EXPECT_EQ(j["max_concurrency"], 2);
  int64_t out = 0;
  for (const auto& n : j["output_lens"]) out += n.get<int64_t>();
  EXPECT_EQ(j["total_output_tokens"], out);
  EXPECT_GE(out, 6 * 2);  // lengths in [2, 6]
  EXPECT_LE(out, 6 * 6);
}

TEST_F(ClientBenchTest, BenchServeFailsClearly) {
  const Output r = apus("bench serve --url " + server_->url() + " --model nope --num-prompts 2 --input-len 4 --output-len 2");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.err, HasSubstr("the initial test request failed: HTTP 404: The model `nope` does not exist."));
  const Output e = apus("bench serve --url " + server_->url() + " --endpoint /v1/embeddings");
  EXPECT_NE(e.status, 0);
  EXPECT_THAT(e.err, HasSubstr("--endpoint must be"));
}

// Last (tests run in the order written): the server stops cleanly on SIGTERM.
TEST_F(ClientBenchTest, DeployExitsCleanlyOnSigterm) {
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(server_->stop(), 0) << server_->log();
  // Nothing was in flight: no wait for --drain_timeout.
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0) << server_->log();
  EXPECT_THAT(server_->log(), HasSubstr("apus: stopped"));
  EXPECT_THAT(server_->log(), Not(HasSubstr("handler failed")));
}

}  // namespace
}  // namespace apus
