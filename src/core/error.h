// Errors a user can act on: every failure names what was being read and what was expected.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace apus {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

#define APUS_CHECK(cond, ...)         \
  do {                                \
    if (!(cond)) ::apus::fail(__VA_ARGS__); \
  } while (0)

}  // namespace apus
