// Python's str methods on UTF-8 strings, counting in code points where Python does.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace apus::jinja::pystr {

// strip/lstrip/rstrip: whitespace when chars is nullopt, else any of the given characters.
std::string strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right);

// split/rsplit: on runs of whitespace when sep is nullopt (dropping empty ends), else on sep.
std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit);
std::vector<std::string> rsplit(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit);
std::vector<std::string> splitlines(std::string_view s, bool keepends);

std::string replace(std::string_view s, std::string_view old, std::string_view repl, int64_t count);
int64_t count(std::string_view s, std::string_view sub);
// find/rfind in code points within s[start:end] (slice semantics); -1 when absent.
int64_t find(std::string_view s, std::string_view sub, std::optional<int64_t> start,
             std::optional<int64_t> end, bool reverse);

std::string title(std::string_view s);       // str.title()
std::string capitalize(std::string_view s);  // str.capitalize()
std::string swapcase(std::string_view s);
std::string jinja_title(std::string_view s);  // the `title` filter: word starts after - ( { [ < or whitespace

// center/ljust/rjust: pad to width code points with fill.
std::string pad(std::string_view s, int64_t width, char32_t fill,
                int align /* <0 left, 0 center, >0 right */);

}  // namespace apus::jinja::pystr
