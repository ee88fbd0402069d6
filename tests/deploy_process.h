// `apus deploy` as a separate process on a free port, as users run it: for the end-to-end tests
// (official openai client, curl, apus client, apus bench serve).
#pragma once
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "server/http_client.h"

namespace apus::test {

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class DeployProcess {
 public:
  ~DeployProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  // Runs `apus deploy --model MODEL --port 0 ARGS...` (or `apus COMMAND ...`, e.g. app-ui) with
  // its output in `log`, and waits until it says where it serves and GET /health answers 200.
  // Returns false (and fails the test, with the log) when it does not get there.
  bool start(const std::filesystem::path& model, const std::filesystem::path& log, std::vector<std::string> args,
             const std::string& command = "deploy") {
    log_ = log;
    args.insert(args.begin(), {APUS_BINARY, command, "--model", model.string(), "--port", "0"});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // no server left behind when the test is killed
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      execv(argv[0], argv.data());
      _exit(127);
    }
    // deploy prints `apus: serving "NAME" at http://HOST:PORT/v1 ...` once the model is loaded.
    const std::regex serving(R"re(apus: serving "([^"]*)" at (http://[^ ]+)/v1)re");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(180);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        ADD_FAILURE() << "apus " << command << " exited early (status " << status << "):\n" << this->log();
        return false;
      }
      std::smatch m;
      const std::string text = this->log();
      if (std::regex_search(text, m, serving)) {
        name_ = m[1];
        url_ = m[2];
        if (server::HttpClient(url_, "", 10.0).get("/health").status == 200) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "apus " << command << " did not become ready:\n" << this->log();
    return false;
  }

  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  const std::string& url() const { return url_; }    // http://HOST:PORT
  const std::string& name() const { return name_; }  // the served model name
  std::string log() const { return read_text(log_); }

  // SIGTERM (unless `signal` is false: the caller sent it), then waits for the exit: its status,
  // or -1 when it had to be killed after `wait`.
  int stop(std::chrono::seconds wait, bool signal = true) {
    if (pid_ <= 0) return -1;
    if (signal) kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + wait;
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        pid_ = -1;
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  std::filesystem::path log_;
  pid_t pid_ = -1;
  std::string url_, name_;
};

}  // namespace apus::test
