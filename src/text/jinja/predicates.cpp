// Jinja2's built-in tests (`x is defined`, `x is divisibleby 3`, ...), from jinja2/tests.py.
#include <algorithm>
#include <unordered_map>

#include "text/jinja/builtins.h"
#include "text/jinja/interpreter.h"
#include "text/jinja/operators.h"
#include "text/jinja/template_error.h"
#include "text/jinja/unicode.h"

namespace apus::jinja {
namespace {

const Value& arg(CallArgs& a, const char* test) {
  if (!a.args.empty()) return a.args[0];
  if (!a.kwargs.empty()) return a.kwargs[0].second;
  throw_error("the '{}' test needs an argument", test);
}

// value % n == expected, with Python's semantics (and its errors) for the modulo.
bool mod_is(Interpreter& in, const Value& v, const Value& n, int64_t expected) {
  if (v.is_string()) throw_error("not all arguments converted during string formatting");
  return equals(binary_op(in, BinOp::Mod, v, n), Value::integer(expected));
}

bool t_odd(Interpreter& in, const Value& v, CallArgs&) { return mod_is(in, v, Value::integer(2), 1); }
bool t_even(Interpreter& in, const Value& v, CallArgs&) { return mod_is(in, v, Value::integer(2), 0); }
bool t_divisibleby(Interpreter& in, const Value& v, CallArgs& a) {
  return mod_is(in, v, arg(a, "divisibleby"), 0);
}
bool t_defined(Interpreter&, const Value& v, CallArgs&) { return !v.is_undefined(); }
bool t_undefined(Interpreter&, const Value& v, CallArgs&) { return v.is_undefined(); }
bool t_none(Interpreter&, const Value& v, CallArgs&) { return v.is_none(); }
bool t_boolean(Interpreter&, const Value& v, CallArgs&) { return v.is_bool(); }
bool t_false(Interpreter&, const Value& v, CallArgs&) { return v.is_bool() && !v.as_bool(); }
bool t_true(Interpreter&, const Value& v, CallArgs&) { return v.is_bool() && v.as_bool(); }
bool t_integer(Interpreter&, const Value& v, CallArgs&) { return v.is_int(); }
bool t_float(Interpreter&, const Value& v, CallArgs&) { return v.is_float(); }
bool t_number(Interpreter&, const Value& v, CallArgs&) { return v.is_number(); }
bool t_string(Interpreter&, const Value& v, CallArgs&) { return v.is_string(); }
bool t_mapping(Interpreter&, const Value& v, CallArgs&) { return v.is_dict(); }
bool t_escaped(Interpreter&, const Value&, CallArgs&) { return false; }  // no autoescape, no Markup

bool t_sequence(Interpreter&, const Value& v, CallArgs&) {
  // Python: has len() and __getitem__ (Undefined has both).
  return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
}

bool t_iterable(Interpreter&, const Value& v, CallArgs&) {
  return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined() ||
         (v.is_object() && v.as_object().type_name() == "LoopContext");
}

bool t_callable(Interpreter&, const Value& v, CallArgs&) {
  return v.is_undefined() || (v.is_object() && v.as_object().callable());  // Undefined has __call__
}

bool t_lower(Interpreter&, const Value& v, CallArgs&) {
  std::string s = to_str(v);
  bool any = false;
  for (size_t i = 0; i < s.size();) {
    char32_t c = unicode::next(s, i);
    if (unicode::is_upper(c)) return false;
    any |= unicode::is_lower(c);
  }
  return any;
}

bool t_upper(Interpreter&, const Value& v, CallArgs&) {
  std::string s = to_str(v);
  bool any = false;
  for (size_t i = 0; i < s.size();) {
    char32_t c = unicode::next(s, i);
    if (unicode::is_lower(c)) return false;
    any |= unicode::is_upper(c);
  }
  return any;
}

// Python's `is`: singletons and small scalars compare by value, containers by identity.
bool t_sameas(Interpreter&, const Value& v, CallArgs& a) {
  const Value& o = arg(a, "sameas");
  if (v.kind() != o.kind()) return false;
  if (v.is_list() || v.is_dict() || v.is_object()) return v.identity() == o.identity();
  return equals(v, o);
}

bool t_in(Interpreter&, const Value& v, CallArgs& a) { return contains(arg(a, "in"), v); }
bool t_eq(Interpreter&, const Value& v, CallArgs& a) { return equals(v, arg(a, "eq")); }
bool t_ne(Interpreter&, const Value& v, CallArgs& a) { return !equals(v, arg(a, "ne")); }
bool t_lt(Interpreter&, const Value& v, CallArgs& a) { return compare(v, arg(a, "lt"), "<") < 0; }
bool t_le(Interpreter&, const Value& v, CallArgs& a) { return compare(v, arg(a, "le"), "<=") <= 0; }
bool t_gt(Interpreter&, const Value& v, CallArgs& a) { return compare(v, arg(a, "gt"), ">") > 0; }
bool t_ge(Interpreter&, const Value& v, CallArgs& a) { return compare(v, arg(a, "ge"), ">=") >= 0; }
bool t_filter(Interpreter&, const Value& v, CallArgs&) {
  return v.is_string() && is_known_filter(v.as_string());
}
bool t_test(Interpreter&, const Value& v, CallArgs&) { return v.is_string() && is_known_test(v.as_string()); }

const std::unordered_map<std::string_view, TestFn>& tests() {
  // clang-format off
  static const std::unordered_map<std::string_view, TestFn> table = {
      {"odd", t_odd},          {"even", t_even},         {"divisibleby", t_divisibleby}, {"defined", t_defined},
      {"undefined", t_undefined}, {"none", t_none},     {"boolean", t_boolean},         {"false", t_false},
      {"true", t_true},        {"integer", t_integer},   {"float", t_float},             {"number", t_number},
      {"string", t_string},    {"mapping", t_mapping},   {"sequence", t_sequence},       {"iterable", t_iterable},
      {"callable", t_callable}, {"lower", t_lower},      {"upper", t_upper},             {"sameas", t_sameas},
      {"escaped", t_escaped},  {"in", t_in},             {"==", t_eq},                   {"eq", t_eq},
      {"equalto", t_eq},       {"!=", t_ne},             {"ne", t_ne},                   {"<", t_lt},
      {"lt", t_lt},            {"lessthan", t_lt},       {"<=", t_le},                   {"le", t_le},
      {">", t_gt},             {"gt", t_gt},             {"greaterthan", t_gt},          {">=", t_ge},
      {"ge", t_ge},            {"filter", t_filter},     {"test", t_test},
  };
  // clang-format on
  return table;
}

}  // namespace

TestFn find_test(std::string_view name) {
  auto it = tests().find(name);
  return it == tests().end() ? nullptr : it->second;
}

bool is_known_test(std::string_view name) { return find_test(name) != nullptr; }

}  // namespace apus::jinja
