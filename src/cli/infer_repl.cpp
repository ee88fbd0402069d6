// `apus infer`'s interactive chat, command for command the reference's (ms-swift 2.x llm_infer
// with eval_human): a `<<< ` prompt; `exit` / `quit`; `clear` drops the history; `reset-system`
// takes the next input as the system prompt (empty: the default) and drops the history;
// `multi-line` makes an input end at a line ending in `#` (the `#` removed) until `single-line#`.
// Answers stream as they are generated. Beyond the reference: Ctrl-D exits, Ctrl-C stops the
// answer being generated (or drops what was typed at the prompt).
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <string_view>
#include <utility>

#include "cli/infer.h"
#include "core/error.h"

namespace apus::cli {

namespace {

std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free, "set from a signal handler");

void on_sigint(int) { g_interrupted.store(true); }

// Installs the Ctrl-C handler for the session. SA_RESTART keeps writes and reads elsewhere from
// failing with EINTR; the line reader waits in poll(), which a signal always interrupts.
class SigintHandler {
 public:
  SigintHandler() {
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_);
  }
  ~SigintHandler() { sigaction(SIGINT, &old_, nullptr); }

 private:
  struct sigaction old_ {};
};

enum class Input { text, eof, interrupted };

// Lines from a file descriptor (a terminal in canonical mode, or a pipe), without the newline.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd) {}

  Input read(std::string& line) {
    for (;;) {
      if (const size_t nl = buf_.find('\n'); nl != std::string::npos) {
        line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return Input::text;
      }
      if (eof_) {
        if (buf_.empty()) return Input::eof;
        line = std::exchange(buf_, {});  // a last line without a newline
        return Input::text;
      }
      if (g_interrupted.exchange(false)) return Input::interrupted;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, -1) < 0) {
        APUS_CHECK(errno == EINTR, "reading standard input: {}", std::strerror(errno));
        continue;  // a Ctrl-C: the check above reports it
      }
      char chunk[4096];
      const ssize_t n = ::read(fd_, chunk, sizeof chunk);
      if (n < 0) {
        APUS_CHECK(errno == EINTR || errno == EAGAIN, "reading standard input: {}", std::strerror(errno));
        continue;
      }
      if (n == 0) eof_ = true;  // Ctrl-D on a terminal, or the end of a pipe
      buf_.append(chunk, size_t(n));
    }
  }

 private:
  int fd_;
  std::string buf_;
  bool eof_ = false;
};

// One input as the reference reads it: a line, or in multi-line mode lines up to one ending in
// `#` (read_multi_line: only the first line shows the prompt; the `#` is dropped).
Input read_query(LineReader& in, bool multi_line, bool read_system, std::string& query) {
  std::string prompt = std::string("<<<") + (multi_line ? "[M]" : "") + (read_system ? "[S]" : "") + " ";
  query.clear();
  for (;;) {
    std::cout << prompt << std::flush;
    prompt.clear();
    std::string line;
    if (const Input got = in.read(line); got != Input::text) return got;  // EOF mid-input drops it
    if (!multi_line) {
      query = std::move(line);
      return Input::text;
    }
    if (!line.empty() && line.back() == '#') {
      query += line.substr(0, line.size() - 1);
      return Input::text;
    }
    query += line + "\n";
  }
}

std::string command_of(const std::string& input) {  // the reference's query.strip().lower()
  const size_t b = input.find_first_not_of(" \t\r\n\f\v");
  if (b == std::string::npos) return "";
  const size_t e = input.find_last_not_of(" \t\r\n\f\v");
  std::string c = input.substr(b, e - b + 1);
  std::transform(c.begin(), c.end(), c.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
  return c;
}

struct Stopped {};  // thrown from the stream callback on Ctrl-C

// Streams the answer to stdout. nullopt when Ctrl-C stopped it or it failed (e.g. the
// conversation outgrew --max_model_len): that exchange is then neither kept nor saved.
std::optional<InferResponse> answer(const InferSession& s, const InferRequest& req) {
  g_interrupted.store(false);
  std::optional<InferResponse> result;
  size_t shown = 0;
  try {
    inference_stream(s.engine, s.tmpl, {req}, [&](const std::vector<InferResponse>& r) {
      if (g_interrupted.exchange(false)) throw Stopped{};
      std::cout << std::string_view(r[0].response).substr(shown) << std::flush;
      shown = r[0].response.size();
      result = r[0];
    });
  } catch (const Stopped&) {
    std::cout << "\n[stopped; this answer is not kept in the history]" << std::endl;
    return std::nullopt;
  } catch (const Error& e) {
    if (shown > 0) std::cout << "\n";
    std::cout << std::flush;
    std::cerr << "error: " << e.what() << (req.history.empty() ? "" : " (`clear` drops the history)") << std::endl;
    return std::nullopt;
  }
  std::cout << "\n" << std::string(50, '-') << std::endl;
  return result;
}

}  // namespace

void run_repl(const InferSession& s) {
  std::cerr << "Input `exit` or `quit` to exit the conversation (or press Ctrl-D).\n"
               "Input `multi-line` to switch to multi-line input mode (end the input with `#`).\n"
               "Input `reset-system` to reset the system and clear the history.\n"
               "Input `clear` to clear the history.\n"
               "Press Ctrl-C to stop an answer.\n";
  SigintHandler handler;
  LineReader in(STDIN_FILENO);
  bool multi_line = false, read_system = false;
  std::optional<std::string> system;  // set by reset-system; nullopt: the session's default
  History history;
  for (;;) {
    std::string query;
    const Input got = read_query(in, multi_line, read_system, query);
    if (got == Input::eof) {
      std::cout << std::endl;
      break;
    }
    if (got == Input::interrupted) {  // Ctrl-C at the prompt drops what was typed
      std::cout << std::endl;
      continue;
    }
    // The reference's order of checks, including its quirks (`clear` while a system prompt is
    // awaited still awaits it; an empty system prompt restores the default).
    const std::string cmd = command_of(query);
    if (cmd == "exit" || cmd == "quit") break;
    if (cmd == "clear") {
      history.clear();
      continue;
    }
    if (cmd.empty() && !read_system) continue;
    if (cmd == "reset-system") {
      read_system = true;
      continue;
    }
    if (read_system) {
      system = query.empty() ? std::nullopt : std::optional<std::string>(query);
      read_system = false;
      history.clear();
      continue;
    }
    if (!multi_line && cmd == "multi-line") {
      multi_line = true;
      continue;
    }
    if (multi_line && cmd == "single-line") {
      multi_line = false;
      continue;
    }
    const InferRequest req{query, history, system ? system : s.default_system, s.lora_request};
    std::optional<InferResponse> resp = answer(s, req);
    if (!resp) continue;
    append_jsonl(s.result_path, result_line(req, resp->response));
    history = std::move(resp->history);
  }
}

}  // namespace apus::cli
