// The failure raised while parsing or rendering. It remembers where in the template it happened
// (filled in by the innermost node that sees it) and Template turns it into apus::Error.
#pragma once
#include <fmt/format.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace apus::jinja {

class TemplateError : public std::runtime_error {
 public:
  static constexpr uint32_t kNoOffset = UINT32_MAX;

  explicit TemplateError(const std::string& msg, bool raised = false)
      : std::runtime_error(msg), raised_(raised) {}

  uint32_t offset() const { return offset_; }
  void set_offset_if_unknown(uint32_t offset) {
    if (offset_ == kNoOffset) offset_ = offset;
  }
  // True for the template's own raise_exception(): its message is shown verbatim.
  bool raised() const { return raised_; }

 private:
  uint32_t offset_ = kNoOffset;
  bool raised_;
};

template <typename... Args>
[[noreturn]] void throw_error(fmt::format_string<Args...> f, Args&&... args) {
  throw TemplateError(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace apus::jinja
