// `apus infer` end to end, as a person uses it: the chat REPL driven through a pseudo-terminal
// (typed lines, Ctrl-C, Ctrl-D), and --val_dataset runs. Greedy answers of the tiny chat model are
// checked against `apus generate --chat` and the offline API on the same conversations.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <unistd.h>

#include <apus/apus.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "test_util.h"
#include "text/chat_template.h"

namespace apus {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kRule(50, '-');  // printed after every answer, as the reference does

std::string quote(const std::string& s) {  // single-quoted for /bin/sh
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// `apus ARGS` run in `cwd` (where it writes infer_result/), stdout and stderr captured: not a terminal.
test::Exec run_in(const fs::path& cwd, const std::string& args) {
  const std::string cmd = "cd " + quote(cwd.string()) + " && " + APUS_BINARY + " " + args + " 2>&1 </dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  const int status = pclose(p);
  return {WEXITSTATUS(status), out};
}

// The apus binary on a pseudo-terminal: type() sends keys as a keyboard does ("\r" is Enter,
// "\x03" Ctrl-C, "\x04" Ctrl-D); expect() waits for text on the screen.
class Terminal {
 public:
  Terminal(const std::vector<std::string>& args, const fs::path& cwd) {
    std::vector<std::string> argv{APUS_BINARY};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> c;  // built before fork(): the child only calls async-signal-safe functions
    for (auto& a : argv) c.push_back(a.data());
    c.push_back(nullptr);
    pid_ = forkpty(&fd_, nullptr, nullptr, nullptr);
    if (pid_ == 0) {  // the child: apus itself is the terminal's foreground process, as from a shell
      if (chdir(cwd.c_str()) == 0) execv(c[0], c.data());
      _exit(127);
    }
  }
  ~Terminal() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) close(fd_);
  }
  bool started() const { return pid_ > 0; }

  void type(const std::string& keys) { ASSERT_EQ(write(fd_, keys.data(), keys.size()), ssize_t(keys.size())); }

  // Waits until `text` appears after the previous match and returns what came in between
  // (with the terminal's "\r\n" as "\n"). Fails the test after `timeout_s`.
  std::string expect(const std::string& text, int timeout_s = 300) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    for (;;) {
      if (const size_t at = screen_.find(text, pos_); at != std::string::npos) {
        std::string between = screen_.substr(pos_, at - pos_);
        pos_ = at + text.size();
        return between;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0 || !read_some(int(left.count()))) {
        ADD_FAILURE() << "no \"" << text << "\" on the terminal; after the last match it shows:\n" << screen_.substr(pos_);
        return {};
      }
    }
  }

  int wait_exit() {  // the exit status (128 + signal when killed)
    int status = 0;
    while (read_some(1000)) {}  // drain, so the child never blocks on a full terminal
    waitpid(pid_, &status, 0);
    exited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  const std::string& screen() const { return screen_; }

 private:
  bool read_some(int timeout_ms) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return false;
    char buf[4096];
    const ssize_t n = read(fd_, buf, sizeof buf);
    if (n <= 0) return false;  // EIO: the child closed the terminal
    for (ssize_t i = 0; i < n; ++i)
      if (buf[i] != '\r') screen_ += buf[i];
    return true;
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  bool exited_ = false;
  std::string screen_;
  size_t pos_ = 0;
};

std::vector<nlohmann::json> read_jsonl(const fs::path& p) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(p);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// The one file a session wrote under infer_result/, named by its start time.
fs::path result_file(const fs::path& cwd) {
  std::vector<fs::path> files;
  if (fs::exists(cwd / "infer_result"))
    for (const auto& e : fs::directory_iterator(cwd / "infer_result")) files.push_back(e.path());
  EXPECT_EQ(files.size(), 1u);
  if (files.empty()) return {};
  EXPECT_THAT(files[0].filename().string(), ::testing::MatchesRegex("[0-9]{8}-[0-9]{6}\\.jsonl"));
  return files[0];
}

class CliInfer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new test::TempDir();
    if (!test::write_tiny_chat_model(model_->path())) {
      delete model_;
      model_ = nullptr;
    }
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "third_party/tokenizers/qwen3 is absent (run scripts/fetch-tokenizers.sh)";
  }

  static std::vector<std::string> infer_args(const std::vector<std::string>& extra) {
    std::vector<std::string> args{"infer", "--model", model_->str(), "--threads", "2", "--temperature", "0"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  // The greedy answer of `apus generate --chat` to `history` + `query` (Qwen template, 8 tokens).
  static std::string generate_answer(const apus::History& history, const std::string& query, const std::string& system_opt) {
    nlohmann::json messages = nlohmann::json::array();
    for (const auto& [q, r] : history) {
      messages.push_back({{"role", "user"}, {"content", q}});
      messages.push_back({{"role", "assistant"}, {"content", r}});
    }
    messages.push_back({{"role", "user"}, {"content", query}});
    test::Exec r = test::run_apus("generate --model " + model_->str() + " --threads 2 --template_type qwen " + system_opt +
                                  " --max_new_tokens 8 --temperature 0 --json --chat " + quote(messages.dump()) +
                                  " 2>/dev/null");
    EXPECT_EQ(r.status, 0) << r.out;
    return nlohmann::json::parse(r.out, nullptr, false).value("text", "<no text>");
  }

  static test::TempDir* model_;
};
test::TempDir* CliInfer::model_ = nullptr;

// What a person sees after typing `keys` and Enter: the echoed lines, the streamed answer, the
// rule, the next prompt. Returns the answer.
std::string ask(Terminal& t, const std::string& keys, const std::string& next_prompt = "<<< ") {
  t.type(keys + "\r");
  std::string echo = keys + "\n";
  std::replace(echo.begin(), echo.end(), '\r', '\n');
  std::string shown = t.expect("\n" + kRule + "\n" + next_prompt);
  EXPECT_TRUE(shown.starts_with(echo)) << shown;  // the terminal's echo of the typed lines
  return shown.substr(std::min(shown.size(), echo.size()));
}

TEST_F(CliInfer, ReplChatsWithHistoryCommandsAndResultFile) {
  test::TempDir cwd;
  Terminal t(infer_args({"--template_type", "qwen", "--max_new_tokens", "8"}), cwd.path());
  ASSERT_TRUE(t.started());
  EXPECT_THAT(t.expect("<<< "), HasSubstr("Input `exit` or `quit` to exit the conversation"));

  const std::string a1 = ask(t, "你好");
  const std::string a2 = ask(t, "What next?");
  t.type("clear\r");
  t.expect("<<< ");
  const std::string a3 = ask(t, "hi");
  t.type("reset-system\r");
  t.expect("<<<[S] ");
  t.type("Be brief.\r");
  t.expect("<<< ");
  const std::string a4 = ask(t, "hi");
  t.type("multi-line\r");
  t.expect("<<<[M] ");
  const std::string a5 = ask(t, "line one\rline two#", "<<<[M] ");  // no prompt on the second line
  t.type("single-line#\r");
  t.expect("<<< ");
  t.type("   \r");  // blank input is ignored
  t.expect("<<< ");
  t.type("exit\r");
  EXPECT_EQ(t.wait_exit(), 0) << t.screen();

  // Every streamed answer is the greedy answer `apus generate --chat` gives to that conversation.
  const std::string q = "--system " + quote("Be brief.");
  EXPECT_EQ(a1, generate_answer({}, "你好", ""));
  EXPECT_EQ(a2, generate_answer({{"你好", a1}}, "What next?", ""));
  EXPECT_EQ(a3, generate_answer({}, "hi", ""));
  EXPECT_EQ(a4, generate_answer({}, "hi", q));
  EXPECT_EQ(a5, generate_answer({{"hi", a4}}, "line one\nline two", q));
  EXPECT_FALSE(a1.empty());
  EXPECT_NE(a3, a4);  // the system prompt reached the model

  // One line per exchange with the reference's fields; history is the turns before the query.
  const std::string def = "You are a helpful assistant.";
  const nlohmann::json none = nlohmann::json::array();
  auto pairs = [](const History& h) { return nlohmann::json(h); };  // [[query, response], ...]
  auto lines = read_jsonl(result_file(cwd.path()));
  ASSERT_EQ(lines.size(), 5u);
  const std::vector<nlohmann::json> want = {
      {{"system", def}, {"query", "你好"}, {"response", a1}, {"history", none}},
      {{"system", def}, {"query", "What next?"}, {"response", a2}, {"history", pairs({{"你好", a1}})}},
      {{"system", def}, {"query", "hi"}, {"response", a3}, {"history", none}},
      {{"system", "Be brief."}, {"query", "hi"}, {"response", a4}, {"history", none}},
      {{"system", "Be brief."}, {"query", "line one\nline two"}, {"response", a5}, {"history", pairs({{"hi", a4}})}}};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(lines[i], want[i]) << "line " << i + 1;
  std::ifstream raw(result_file(cwd.path()));  // the keys in the reference's order
  std::string first;
  std::getline(raw, first);
  EXPECT_TRUE(first.starts_with("{\"system\":\"You are a helpful assistant.\",\"query\":\"你好\",\"response\":")) << first;
  EXPECT_TRUE(first.ends_with(",\"history\":[]}")) << first;
}

TEST_F(CliInfer, CtrlCStopsTheAnswerAndCtrlDExits) {
  test::TempDir cwd;
  // The tiny model never ends this answer by itself (it runs to the token limit), so Ctrl-C
  // always lands while it is being generated.
  Terminal t(infer_args({"--template_type", "qwen", "--max_new_tokens", "4000"}), cwd.path());
  ASSERT_TRUE(t.started());
  t.expect("<<< ");
  t.type("你好\r");
  t.expect("你好\n");
  t.expect("modern");  // the answer is streaming
  t.type("\x03");
  t.expect("[stopped; this answer is not kept in the history]\n<<< ");
  t.type("half-typed\x03");  // at the prompt, Ctrl-C drops the line
  t.expect("<<< ");
  t.type(" QUIT \r");
  EXPECT_EQ(t.wait_exit(), 0) << t.screen();  // "quit" was read as a command, not appended to "half-typed"
  EXPECT_TRUE(fs::is_empty(cwd.path() / "infer_result"));  // the stopped exchange was not saved

  // A question too long for --max_model_len is an error message, not the end of the session.
  Terminal u(infer_args({"--max_new_tokens", "3", "--max_model_len", "40"}), cwd.path());
  u.expect("<<< ");
  std::string long_question;
  for (int i = 0; i < 60; ++i) long_question += "word ";
  u.type(long_question + "\r");
  u.expect("error: the prompt has");
  u.expect("<<< ");
  u.type("\x04");  // Ctrl-D on an empty line
  EXPECT_EQ(u.wait_exit(), 0) << u.screen();
}

TEST_F(CliInfer, DatasetRunsBatchedInOrderWithLabels) {
  test::TempDir cwd;
  std::ofstream(cwd.path() / "val.jsonl") << R"({"query": "浙江的省会在哪?", "response": "杭州"}
{"query": "这有什么好吃的", "response": "西湖醋鱼", "history": [["浙江的省会在哪?", "浙江省会是杭州市。"]]}

{"query": "hi", "system": "Be brief.", "extra": 1}
{"query": "你好", "response": "你好!", "history": null, "system": null}
)";
  test::Exec r = run_in(cwd.path(), "infer --model " + model_->str() +
                                        " --threads 2 --template_type qwen --max_new_tokens 6 --temperature 0 --val_dataset val.jsonl");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("4 results written to infer_result/"));
  EXPECT_THAT(r.out, Not(HasSubstr("\r")));  // no progress bar when stderr is not a terminal
  EXPECT_THAT(r.out, Not(HasSubstr("<<<")));

  // The same batch through the offline API gives the same greedy answers.
  EngineOptions eo;
  eo.num_threads = 2;
  eo.verbose = false;
  auto engine = LlmEngine::load(model_->str(), eo);
  engine->generation_config.max_new_tokens = 6;
  auto tmpl = get_template(*engine, "qwen");
  const std::string def = "You are a helpful assistant.";
  const History h{{"浙江的省会在哪?", "浙江省会是杭州市。"}};
  const std::vector<InferRequest> requests = {
      {"浙江的省会在哪?", {}, def}, {"这有什么好吃的", h, def}, {"hi", {}, "Be brief."}, {"你好", {}, def}};
  const auto want = inference(*engine, *tmpl, requests);

  auto lines = read_jsonl(result_file(cwd.path()));
  ASSERT_EQ(lines.size(), 4u);
  const nlohmann::json labels = {"杭州", "西湖醋鱼", nullptr, "你好!"};
  for (size_t i = 0; i < lines.size(); ++i) {
    SCOPED_TRACE("line " + std::to_string(i + 1));
    EXPECT_EQ(lines[i]["query"], requests[i].query);
    EXPECT_EQ(lines[i]["response"], want[i].response);
    EXPECT_EQ(lines[i]["label"], labels[i]);
    EXPECT_EQ(lines[i]["system"], *requests[i].system);
    EXPECT_EQ(lines[i]["history"], nlohmann::json(requests[i].history));
  }
  // A single request gives the same answer as in the batch (greedy, per-token work is batch-independent).
  EXPECT_EQ(inference(*engine, *tmpl, {requests[1]})[0].response, want[1].response);
  // Stopping a stream from its callback (what Ctrl-C does) propagates, and the engine stays usable.
  struct Stop {};
  EXPECT_THROW(inference_stream(*engine, *tmpl, requests, [](const auto&) { throw Stop{}; }), Stop);
  EXPECT_EQ(inference(*engine, *tmpl, {requests[3]})[0].response, want[3].response);

  // On a terminal the run shows a progress bar on stderr.
  test::TempDir cwd2;
  fs::copy(cwd.path() / "val.jsonl", cwd2.path() / "val.jsonl");
  Terminal t(infer_args({"--template_type", "qwen", "--max_new_tokens", "2", "--val_dataset", "val.jsonl"}), cwd2.path());
  t.expect("] 4/4");
  EXPECT_EQ(t.wait_exit(), 0) << t.screen();
}

TEST_F(CliInfer, DatasetErrorsNameTheFileAndLine) {
  test::TempDir cwd;
  auto err = [&](const std::string& content) {
    std::ofstream(cwd.path() / "bad.jsonl") << content;
    test::Exec r = run_in(cwd.path(), "infer --model " + model_->str() + " --threads 2 --val_dataset bad.jsonl");
    EXPECT_EQ(r.status, 1) << r.out;
    return r.out;
  };
  const std::string ok = "{\"query\": \"a\", \"response\": \"b\"}\n";
  EXPECT_THAT(err(ok + ok + "{\"query\": \"a\",\n"), HasSubstr("error: bad.jsonl:3: invalid JSON"));
  EXPECT_THAT(err(ok + "{\"response\": \"b\"}\n"), HasSubstr("error: bad.jsonl:2: \"query\" must be a string"));
  EXPECT_THAT(err("[1, 2]\n"), HasSubstr("bad.jsonl:1: expected a JSON object"));
  EXPECT_THAT(err(ok + "\n" + R"({"query": "a", "history": [["only one"]]})"),
              HasSubstr("bad.jsonl:3: \"history\" must be a list of [query, response] string pairs"));
  EXPECT_THAT(err(R"({"query": "a", "system": 5})"), HasSubstr("bad.jsonl:1: \"system\" must be a string or null"));
  EXPECT_THAT(err("\n"), HasSubstr("bad.jsonl holds no samples"));
  test::Exec r = run_in(cwd.path(), "infer --model " + model_->str() + " --val_dataset missing.jsonl");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.out, HasSubstr("cannot open missing.jsonl"));
  r = run_in(cwd.path(), "infer --model /nonexistent");
  EXPECT_THAT(r.out, HasSubstr("infer needs a tokenizer, and /nonexistent has no tokenizer.json"));
}

}  // namespace
}  // namespace apus
