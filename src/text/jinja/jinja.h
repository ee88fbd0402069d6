// A Jinja2 interpreter for chat templates: renders Hugging Face `chat_template`s exactly as
// transformers does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
// its tojson/raise_exception/strftime_now and the {% generation %} tag).
//
//   auto t = apus::jinja::Template::parse(config["chat_template"].get<std::string>());
//   std::string prompt = t.render({{"messages", msgs}, {"add_generation_prompt", true},
//                                  {"bos_token", "<s>"}});
#pragma once
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.h"

namespace apus::jinja {

// Every render terminates: these bound its output, its loops and its macro recursion.
struct RenderLimits {
  size_t max_output_bytes = 4 << 20;        // also caps any single string the template builds
  int64_t max_loop_iterations = 1'000'000;  // total over the render; also caps list and range sizes
  int max_call_depth = 64;                  // nested macro / caller() calls
};

// Thrown when the template calls raise_exception(msg): the template rejected its input.
// what() is "template:LINE:COL: raise_exception: msg"; message() is msg verbatim.
class TemplateRaised : public Error {
 public:
  TemplateRaised(const std::string& what, std::string message) : Error(what), message_(std::move(message)) {}
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

struct TemplateImpl;

class Template {
 public:
  // Parses once; throws apus::Error "template:LINE:COL: message" on syntax errors.
  static Template parse(std::string_view source);

  // `context` is an object of template variables (messages, tools, add_generation_prompt,
  // bos_token, ...), key order preserved like Python dicts. Throws apus::Error with line:col
  // on runtime errors (TemplateRaised for raise_exception) and when a limit is exceeded.
  std::string render(const nlohmann::ordered_json& context, const RenderLimits& limits = {}) const;

 private:
  explicit Template(std::shared_ptr<const TemplateImpl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const TemplateImpl> impl_;
};

// strftime_now() uses this instant (read as UTC) instead of the local clock, so renders are
// reproducible in tests; nullopt restores the local clock.
void set_clock_for_testing(std::optional<std::time_t> fixed);

}  // namespace apus::jinja
