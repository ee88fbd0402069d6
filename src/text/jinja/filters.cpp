// Jinja2's filters on single values (jinja2/filters.py), transformers' tojson, and the filter
// lookup. Filters over sequences are in filters_sequence.cpp.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <unordered_map>

#include "text/jinja/builtins.h"
#include "text/jinja/interpreter.h"
#include "text/jinja/objects.h"
#include "text/jinja/operators.h"
#include "text/jinja/strings.h"
#include "text/jinja/template_error.h"
#include "text/jinja/unicode.h"

namespace apus::jinja {
namespace {

// Python's float(str): surrounding whitespace, underscores between digits, inf/nan.
std::optional<double> parse_float(const std::string& text) {
  std::string s = pystr::strip(text, std::nullopt, true, true), clean;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '_') {
      if (i == 0 || i + 1 == s.size() || !isdigit(static_cast<unsigned char>(s[i - 1])) ||
          !isdigit(static_cast<unsigned char>(s[i + 1])))
        return std::nullopt;
      continue;
    }
    clean += s[i];
  }
  if (clean.empty() || clean.find_first_of("xXpP") != std::string::npos) return std::nullopt;
  std::string lower = unicode::lower(clean);
  std::string body = lower[0] == '+' || lower[0] == '-' ? lower.substr(1) : lower;
  if (body == "inf" || body == "infinity" || body == "nan") {
    double v = body == "nan" ? NAN : INFINITY;
    return lower[0] == '-' ? -v : v;
  }
  if (body.find_first_not_of("0123456789.e+-") != std::string::npos) return std::nullopt;
  char* end = nullptr;
  double v = std::strtod(clean.c_str(), &end);
  if (end != clean.c_str() + clean.size()) return std::nullopt;
  return v;
}

// Python's int(str, base).
std::optional<int64_t> parse_int(const std::string& text, int64_t base) {
  std::string s = pystr::strip(text, std::nullopt, true, true);
  bool neg = false;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    neg = s[0] == '-';
    s.erase(0, 1);
  }
  if (s.size() > 1 && s[0] == '0') {
    char p = static_cast<char>(s[1] | 0x20);
    int64_t prefixed = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
    if (prefixed && (base == 0 || base == prefixed)) {
      base = prefixed;
      s.erase(0, 2);
      if (!s.empty() && s[0] == '_') s.erase(0, 1);
    }
  }
  if (base == 0) base = 10;
  if (s.empty() || s.front() == '_' || s.back() == '_' || s.find("__") != std::string::npos)
    return std::nullopt;
  std::erase(s, '_');
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, int(base));
  if (end != s.c_str() + s.size() || errno == ERANGE || s[0] == '-' || s[0] == '+') return std::nullopt;
  return neg ? -v : v;
}

Value f_abs(Interpreter&, const Value& v, CallArgs&) {
  if (v.is_integral()) return v.as_int() < 0 ? negate(v) : Value::integer(v.as_int());
  if (v.is_float()) return Value::number(std::fabs(v.as_float()));
  throw_error("bad operand type for abs(): '{}'", type_name(v));
}

// foo|attr('bar'): the attribute only, without falling back to foo['bar'] as foo.bar does.
Value f_attr(Interpreter&, const Value& v, CallArgs& a) {
  ArgReader r("attr", a, {"name"});
  if (!r.get(0) || !r.get(0)->is_string()) throw_error("attr() needs an attribute name");
  const std::string& name = r.get(0)->as_string();
  if (v.is_undefined()) raise_undefined(v);
  if (v.is_object()) {
    if (auto x = v.as_object().attribute(name)) return *x;
  } else if (auto m = builtin_attribute(v, name)) {
    return *m;
  }
  return Value::undefined("'" + type_name(v) + " object' has no attribute '" + name + "'");
}

Value f_capitalize(Interpreter&, const Value& v, CallArgs&) {
  return Value::string(pystr::capitalize(to_str(v)));
}

Value f_center(Interpreter& in, const Value& v, CallArgs& a) {
  ArgReader r("center", a, {"width"});
  int64_t width = r.get(0) ? r.get(0)->as_int() : 80;
  in.check_size(size_t(std::max<int64_t>(width, 0)));
  return Value::string(pystr::pad(to_str(v), width, ' ', 0));
}

Value f_default(Interpreter&, const Value& v, CallArgs& a) {
  ArgReader r("default", a, {"default_value", "boolean"});
  if (v.is_undefined() || (r.flag(1) && !truthy(v))) return r.get_or(0, Value::string(""));
  return v;
}

Value f_escape(Interpreter&, const Value& v, CallArgs&) {
  std::string out;
  for (char c : to_str(v)) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return Value::string(std::move(out));
}

Value f_float(Interpreter&, const Value& v, CallArgs& a) {
  ArgReader r("float", a, {"default"});
  if (v.is_undefined()) raise_undefined(v);
  if (v.is_number()) return Value::number(v.as_float());
  if (v.is_string())
    if (auto d = parse_float(v.as_string())) return Value::number(*d);
  return r.get_or(0, Value::number(0.0));
}

Value f_int(Interpreter&, const Value& v, CallArgs& a) {
  ArgReader r("int", a, {"default", "base"});
  if (v.is_undefined()) raise_undefined(v);
  auto from_float = [](double d) {
    if (std::isinf(d)) throw_error("cannot convert float infinity to integer");
    if (std::isnan(d)) throw_error("cannot convert float NaN to integer");
    if (std::fabs(d) >= 9.2e18) throw_error("integer overflow (apus keeps template integers in 64 bits)");
    return Value::integer(int64_t(std::trunc(d)));
  };
  if (v.is_integral()) return Value::integer(v.as_int());
  if (v.is_float()) return from_float(v.as_float());
  if (v.is_string()) {
    if (auto i = parse_int(v.as_string(), r.get(1) ? r.get(1)->as_int() : 10)) return Value::integer(*i);
    if (auto d = parse_float(v.as_string())) return from_float(*d);
  }
  return r.get_or(0, Value::integer(0));
}

Value f_format(Interpreter& in, const Value& v, CallArgs& a) {
  if (!a.args.empty() && !a.kwargs.empty())
    throw_error("can't handle positional and keyword arguments at the same time");
  Value args;
  if (!a.kwargs.empty()) {
    auto d = std::make_shared<Dict>();
    for (auto& [k, val] : a.kwargs) d->set(Value::string(k), val);
    args = Value::dict(std::move(d));
  } else {
    args = Value::list(a.args, true);
  }
  return Value::string(percent_format(in, to_str(v), args));
}

Value f_indent(Interpreter& in, const Value& v, CallArgs& a) {
  ArgReader r("indent", a, {"width", "first", "blank"});
  if (v.is_undefined()) raise_undefined(v);
  std::string indention;
  if (r.get(0) && r.get(0)->is_string()) {
    indention = r.get(0)->as_string();
  } else {
    int64_t width = r.get(0) ? r.get(0)->as_int() : 4;
    in.check_size(size_t(std::max<int64_t>(width, 0)));
    indention.assign(size_t(std::max<int64_t>(width, 0)), ' ');
  }
  // Python's `s += "\n"` then s.splitlines() fails in these type-specific ways for non-strings.
  if (v.is_tuple()) throw_error("can only concatenate tuple (not \"str\") to tuple");
  if (v.is_list()) throw_error("'list' object has no attribute 'splitlines'");
  if (!v.is_string()) throw_error("unsupported operand type(s) for +=: '{}' and 'str'", type_name(v));
  std::vector<std::string> lines = pystr::splitlines(v.as_string() + "\n", false);
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i) out += '\n';
    if (i && (r.flag(2) || !lines[i].empty())) out += indention;
    out += lines[i];
    in.check_size(out.size());
  }
  if (r.flag(1)) out = indention + out;
  return Value::string(std::move(out));
}

Value f_lower(Interpreter&, const Value& v, CallArgs&) { return Value::string(unicode::lower(to_str(v))); }

Value f_upper(Interpreter&, const Value& v, CallArgs&) { return Value::string(unicode::upper(to_str(v))); }

Value f_replace(Interpreter& in, const Value& v, CallArgs& a) {
  ArgReader r("replace", a, {"old", "new", "count"});
  if (!r.get(0) || !r.get(1)) throw_error("replace() needs old and new");
  std::string s = to_str(v), old = to_str(*r.get(0)), repl = to_str(*r.get(1));
  if (old.empty()) in.check_size((unicode::length(s) + 1) * repl.size() + s.size());
  int64_t count = r.get(2) && !r.get(2)->is_none() ? r.get(2)->as_int() : -1;
  if (!old.empty() && repl.size() > old.size())
    in.check_size(s.size() + size_t(pystr::count(s, old)) * (repl.size() - old.size()));
  return Value::string(pystr::replace(s, old, repl, count));
}

Value f_round(Interpreter&, const Value& v, CallArgs& a) {
  ArgReader r("round", a, {"precision", "method"});
  int64_t precision = r.get(0) ? r.get(0)->as_int() : 0;
  std::string method = r.get(1) ? to_str(*r.get(1)) : "common";
  if (method != "common" && method != "ceil" && method != "floor")
    throw_error("method must be common, ceil or floor");
  if (v.is_undefined()) raise_undefined(v);
  if (!v.is_number()) throw_error("type {} doesn't define __round__ method", type_name(v));
  double scale = std::pow(10.0, double(precision));
  if (method != "common") {
    double x = v.as_float() * scale;
    return Value::number((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
  }
  if (v.is_integral()) {
    if (precision >= 0) return Value::integer(v.as_int());
    return Value::integer(int64_t(std::nearbyint(double(v.as_int()) / (1 / scale)) * (1 / scale)));
  }
  double x = v.as_float();
  if (!std::isfinite(x)) return Value::number(x);
  if (precision < 0) return Value::number(std::nearbyint(x * scale) / scale);
  // printf rounds the exact binary value half-to-even, which is what Python's round() does.
  std::string text = fmt::format("{:.{}f}", x, std::min<int64_t>(precision, 340));
  return Value::number(std::strtod(text.c_str(), nullptr));
}

Value f_safe(Interpreter&, const Value& v, CallArgs&) { return Value::string(to_str(v)); }

Value f_string(Interpreter&, const Value& v, CallArgs&) { return Value::string(to_str(v)); }

Value f_title(Interpreter&, const Value& v, CallArgs&) {
  return Value::string(pystr::jinja_title(to_str(v)));
}

Value f_tojson(Interpreter& in, const Value& v, CallArgs& a) {
  ArgReader r("tojson", a, {"ensure_ascii", "indent", "separators", "sort_keys"});
  std::optional<std::string> indent;
  if (const Value* i = r.get(1); i && !i->is_none()) {
    if (i->is_string())
      indent = i->as_string();
    else if (i->is_integral())
      indent = std::string(size_t(std::clamp<int64_t>(i->as_int(), 0, 4096)), ' ');
    else
      throw_error("indent must be an int or a str");
  }
  std::string item_sep = indent ? "," : ", ", key_sep = ": ";
  if (const Value* s = r.get(2); s && !s->is_none()) {
    if (!s->is_list() || s->as_list().items.size() != 2 || !s->as_list().items[0].is_string() ||
        !s->as_list().items[1].is_string())
      throw_error("separators must be a (item_separator, key_separator) pair of strings");
    item_sep = s->as_list().items[0].as_string();
    key_sep = s->as_list().items[1].as_string();
  }
  return Value::string(
      to_json(v, r.flag(0), indent, item_sep, key_sep, r.flag(3), in.limits().max_output_bytes));
}

Value f_trim(Interpreter&, const Value& v, CallArgs& a) {
  ArgReader r("trim", a, {"chars"});
  std::optional<std::string> chars;
  if (r.get(0) && !r.get(0)->is_none()) chars = to_str(*r.get(0));
  return Value::string(pystr::strip(to_str(v), chars, true, true));
}

Value f_wordcount(Interpreter&, const Value& v, CallArgs&) {
  std::string s = to_str(v);
  int64_t n = 0;
  bool in_word = false;
  for (size_t i = 0; i < s.size();) {
    char32_t c = unicode::next(s, i);
    bool word = c == '_' || unicode::is_alnum(c);
    if (word && !in_word) ++n;
    in_word = word;
  }
  return Value::integer(n);
}

}  // namespace

const FilterTable& scalar_filters() {
  // clang-format off
  static const FilterTable table = {
      {"abs", f_abs}, {"attr", f_attr}, {"capitalize", f_capitalize}, {"center", f_center},
      {"d", f_default}, {"default", f_default}, {"e", f_escape}, {"escape", f_escape},
      {"forceescape", f_escape}, {"float", f_float}, {"format", f_format}, {"indent", f_indent},
      {"int", f_int}, {"lower", f_lower}, {"replace", f_replace}, {"round", f_round}, {"safe", f_safe},
      {"string", f_string}, {"title", f_title}, {"tojson", f_tojson}, {"trim", f_trim}, {"upper", f_upper},
      {"wordcount", f_wordcount},
  };
  // clang-format on
  return table;
}

FilterFn find_filter(std::string_view name) {
  for (const FilterTable* table : {&scalar_filters(), &sequence_filters()}) {
    auto it = table->find(name);
    if (it != table->end()) return it->second;
  }
  return nullptr;
}

bool is_known_filter(std::string_view name) {
  static constexpr std::string_view kJinjaOnly[] = {"filesizeformat", "groupby",   "pprint",   "random",
                                                    "slice",          "striptags", "truncate", "urlencode",
                                                    "urlize",         "wordwrap",  "xmlattr"};
  if (find_filter(name)) return true;
  return std::find(std::begin(kJinjaOnly), std::end(kJinjaOnly), name) != std::end(kJinjaOnly);
}

}  // namespace apus::jinja
