// The filters, tests, globals and methods templates can call, looked up by name.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "text/jinja/value.h"

namespace apus::jinja {

class Interpreter;

using FilterFn = Value (*)(Interpreter& in, const Value& input, CallArgs& args);
using TestFn = bool (*)(Interpreter& in, const Value& input, CallArgs& args);

// Null when apus does not implement it. is_known_* is Jinja2's own list: a template naming a
// filter Jinja2 lacks fails when parsed, one Jinja2 has but apus lacks fails only when used.
FilterFn find_filter(std::string_view name);
using FilterTable = std::unordered_map<std::string_view, FilterFn>;
const FilterTable& scalar_filters();    // filters.cpp
const FilterTable& sequence_filters();  // filters_sequence.cpp
TestFn find_test(std::string_view name);
bool is_known_filter(std::string_view name);
bool is_known_test(std::string_view name);

// Global functions (range, namespace, dict, raise_exception, strftime_now).
std::optional<Value> find_global(std::string_view name);

// Attribute lookup on built-in types the way the sandbox sees it: a method bound to `self`,
// an Undefined for unsafe (mutating) methods, or nullopt when the type has no such attribute.
std::optional<Value> builtin_attribute(const Value& self, const std::string& name);
// The sandbox's verdict on attributes it will not expose (e.g. __class__, list.append): an
// Undefined that prints as nothing and fails when used.
Value unsafe_attribute(const Value& obj, const std::string& name);
bool is_dunder(const std::string& name);  // "__x": always unsafe

// The `tojson` filter transformers installs: json.dumps(x, ensure_ascii, indent, separators,
// sort_keys) with Python's exact formatting.
// Fails once the text would exceed max_bytes.
std::string to_json(const Value& v, bool ensure_ascii, const std::optional<std::string>& indent,
                    std::string_view item_sep, std::string_view key_sep, bool sort_keys, size_t max_bytes);

}  // namespace apus::jinja
