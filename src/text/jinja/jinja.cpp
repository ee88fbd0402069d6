#include "text/jinja/jinja.h"

#include <atomic>

#include "text/jinja/interpreter.h"
#include "text/jinja/lexer.h"
#include "text/jinja/parser.h"
#include "text/jinja/template_error.h"

namespace apus::jinja {

struct TemplateImpl {
  std::string source;  // normalized; token offsets point into it
  Body body;
};

namespace {

// INT64_MIN means "use the real clock".
std::atomic<int64_t> g_fixed_clock{INT64_MIN};

std::string located(const std::string& source, const TemplateError& e, const std::string& message) {
  auto [line, col] = line_col(source, e.offset() == TemplateError::kNoOffset ? 0 : e.offset());
  return fmt::format("template:{}:{}: {}", line, col, message);
}

[[noreturn]] void rethrow(const std::string& source, const TemplateError& e) {
  if (e.raised())
    throw TemplateRaised(located(source, e, std::string("raise_exception: ") + e.what()), e.what());
  throw Error(located(source, e, e.what()));
}

}  // namespace

Template Template::parse(std::string_view source) {
  auto impl = std::make_shared<TemplateImpl>();
  impl->source = normalize_source(source);
  try {
    impl->body = jinja::parse(tokenize(impl->source));
  } catch (const TemplateError& e) {
    rethrow(impl->source, e);
  } catch (const std::exception& e) {
    throw Error(std::string("template: ") + e.what());
  }
  return Template(std::move(impl));
}

std::string Template::render(const nlohmann::ordered_json& context, const RenderLimits& limits) const {
  int64_t fixed = g_fixed_clock.load();
  std::time_t now = fixed == INT64_MIN ? std::time(nullptr) : std::time_t(fixed);
  try {
    Interpreter interpreter(limits, now, fixed != INT64_MIN);
    return interpreter.render(impl_->body, context);
  } catch (const TemplateError& e) {
    rethrow(impl_->source, e);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    // A safety net: nothing inside should throw anything but TemplateError.
    throw Error(std::string("template: ") + e.what());
  }
}

void set_clock_for_testing(std::optional<std::time_t> fixed) {
  g_fixed_clock.store(fixed ? int64_t(*fixed) : INT64_MIN);
}

}  // namespace apus::jinja
