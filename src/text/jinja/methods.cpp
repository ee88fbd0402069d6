// Methods of str, list and dict as the immutable sandbox exposes them: read-only methods work,
// mutating ones come back as an Undefined that fails when called (like Jinja's unsafe_undefined).
#include <fmt/format.h>

#include <algorithm>
#include <unordered_map>

#include "text/jinja/builtins.h"
#include "text/jinja/interpreter.h"
#include "text/jinja/objects.h"
#include "text/jinja/strings.h"
#include "text/jinja/template_error.h"
#include "text/jinja/unicode.h"

namespace apus::jinja {
namespace {

using Method = Value (*)(Interpreter& in, const Value& self, CallArgs& args);

std::optional<std::string> opt_str(const Value* v, const char* what) {
  if (!v || v->is_none()) return std::nullopt;
  if (!v->is_string()) throw_error("{} arg must be None or str", what);
  return v->as_string();
}

std::optional<int64_t> opt_int(const Value* v) {
  if (!v || v->is_none()) return std::nullopt;
  if (!v->is_integral()) throw_error("slice indices must be integers or None or have an __index__ method");
  return v->as_int();
}

const std::string& str_arg(const Value* v, const char* func) {
  if (!v) throw_error("{}() missing required argument", func);
  if (!v->is_string()) throw_error("{}() argument must be str, not {}", func, type_name(*v));
  return v->as_string();
}

Value string_list(std::vector<std::string> parts) {
  std::vector<Value> items;
  items.reserve(parts.size());
  for (auto& p : parts) items.push_back(Value::string(std::move(p)));
  return Value::list(std::move(items));
}

bool affix_matches(const Value& self, CallArgs& args, const char* func, bool suffix) {
  ArgReader r(func, args, {"prefix", "start", "end"});
  if (!r.get(0)) throw_error("{}() takes at least 1 argument (0 given)", func);
  std::string_view s = self.as_string();
  std::string window;
  if (r.get(1) || r.get(2)) {
    int64_t len = int64_t(unicode::length(s));
    auto idx = [&](std::optional<int64_t> v, int64_t dflt) {
      if (!v) return dflt;
      return std::clamp<int64_t>(*v < 0 ? *v + len : *v, 0, len);
    };
    int64_t b = idx(opt_int(r.get(1)), 0), e = idx(opt_int(r.get(2)), len);
    if (b > e) return false;
    std::u32string w = unicode::decode(s);
    window = unicode::encode(std::u32string_view(w).substr(size_t(b), size_t(e - b)));
    s = window;
  }
  auto check = [&](const Value& affix) {
    if (!affix.is_string())
      throw_error("{} first arg must be str or a tuple of str, not {}", func, type_name(affix));
    const std::string& a = affix.as_string();
    if (a.size() > s.size()) return false;
    return suffix ? s.substr(s.size() - a.size()) == a : s.substr(0, a.size()) == a;
  };
  const Value& affix = *r.get(0);
  if (affix.is_tuple()) {
    for (const auto& a : affix.as_list().items)
      if (check(a)) return true;
    return false;
  }
  return check(affix);
}

// str.format with auto/explicit positional fields, keyword fields, !r/!s and format specs.
std::string format_string(Interpreter& in, const std::string& fmt_str, CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < fmt_str.size(); ++i) {
    char c = fmt_str[i];
    if (c == '}') {
      if (i + 1 < fmt_str.size() && fmt_str[i + 1] == '}')
        ++i;
      else
        throw_error("Single '}}' encountered in format string");
      out += '}';
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < fmt_str.size() && fmt_str[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    size_t close = fmt_str.find('}', i);
    if (close == std::string::npos) throw_error("Single '{{' encountered in format string");
    std::string field = fmt_str.substr(i + 1, close - i - 1);
    i = close;
    std::string spec, conversion;
    if (size_t colon = field.find(':'); colon != std::string::npos) {
      spec = field.substr(colon + 1);
      field.resize(colon);
    }
    if (size_t bang = field.find('!'); bang != std::string::npos) {
      conversion = field.substr(bang + 1);
      field.resize(bang);
    }
    const Value* arg = nullptr;
    if (field.empty()) {
      if (auto_index >= args.args.size())
        throw_error("Replacement index {} out of range for positional args tuple", auto_index);
      arg = &args.args[auto_index++];
    } else if (std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
      size_t k = field.size() > 9 ? SIZE_MAX : std::stoul(field);
      if (k >= args.args.size())
        throw_error("Replacement index {} out of range for positional args tuple", k);
      arg = &args.args[k];
    } else {
      for (auto& [key, v] : args.kwargs)
        if (key == field) arg = &v;
      if (!arg) throw_error("KeyError: '{}'", field);
    }
    std::string text;
    if (conversion == "r") {
      text = repr(*arg);
    } else if (conversion.empty() || conversion == "s") {
      if (!spec.empty() && conversion.empty() && arg->is_number()) {
        try {
          text = arg->is_float() ? fmt::format(fmt::runtime("{:" + spec + "}"), arg->as_float())
                                 : fmt::format(fmt::runtime("{:" + spec + "}"), arg->as_int());
        } catch (const fmt::format_error& e) {
          throw_error("invalid format spec '{}': {}", spec, e.what());
        }
        out += text;
        continue;
      }
      text = to_str(*arg);
    } else {
      throw_error("Unknown conversion specifier {}", conversion);
    }
    if (!spec.empty()) {
      try {
        text = fmt::format(fmt::runtime("{:" + spec + "}"), text);
      } catch (const fmt::format_error& e) {
        throw_error("invalid format spec '{}': {}", spec, e.what());
      }
    }
    out += text;
    in.check_size(out.size());
  }
  return out;
}

Value str_method(Interpreter& in, const Value& self, CallArgs& args, const std::string& name) {
  const std::string& s = self.as_string();
  auto reader = [&](std::initializer_list<const char*> params) {
    return ArgReader("str." + name, args, params);
  };
  if (name == "upper") return Value::string(unicode::upper(s));
  if (name == "lower" || name == "casefold") return Value::string(unicode::lower(s));
  if (name == "title") return Value::string(pystr::title(s));
  if (name == "capitalize") return Value::string(pystr::capitalize(s));
  if (name == "swapcase") return Value::string(pystr::swapcase(s));
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    auto r = reader({"chars"});
    return Value::string(
        pystr::strip(s, opt_str(r.get(0), name.c_str()), name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    auto r = reader({"sep", "maxsplit"});
    auto sep = opt_str(r.get(0), "sep");
    int64_t maxsplit = r.get(1) ? r.get(1)->as_int() : -1;
    return string_list(name == "split" ? pystr::split(s, sep, maxsplit) : pystr::rsplit(s, sep, maxsplit));
  }
  if (name == "splitlines") {
    auto r = reader({"keepends"});
    return string_list(pystr::splitlines(s, r.get(0) && truthy(*r.get(0))));
  }
  if (name == "startswith" || name == "endswith")
    return Value::boolean(affix_matches(self, args, name.c_str(), name == "endswith"));
  if (name == "replace") {
    auto r = reader({"old", "new", "count"});
    std::string out = pystr::replace(s, str_arg(r.get(0), "replace"), str_arg(r.get(1), "replace"),
                                     r.get(2) ? r.get(2)->as_int() : -1);
    return Value::string(std::move(out));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex") {
    auto r = reader({"sub", "start", "end"});
    int64_t pos =
        pystr::find(s, str_arg(r.get(0), name.c_str()), opt_int(r.get(1)), opt_int(r.get(2)), name[0] == 'r');
    if (pos < 0 && (name == "index" || name == "rindex")) throw_error("substring not found");
    return Value::integer(pos);
  }
  if (name == "count") {
    auto r = reader({"sub"});
    return Value::integer(pystr::count(s, str_arg(r.get(0), "count")));
  }
  if (name == "join") {
    auto r = reader({"iterable"});
    if (!r.get(0)) throw_error("join() takes exactly one argument (0 given)");
    std::string out;
    size_t i = 0;
    for (const auto& item : iterate(*r.get(0))) {
      if (!item.is_string())
        throw_error("sequence item {}: expected str instance, {} found", i, type_name(item));
      if (i++) out += s;
      out += item.as_string();
      in.check_size(out.size());
    }
    return Value::string(std::move(out));
  }
  if (name == "format") return Value::string(format_string(in, s, args));
  if (name == "removeprefix" || name == "removesuffix") {
    auto r = reader({"affix"});
    const std::string& a = str_arg(r.get(0), name.c_str());
    if (name == "removeprefix" && s.compare(0, a.size(), a) == 0) return Value::string(s.substr(a.size()));
    if (name == "removesuffix" && !a.empty() && s.size() >= a.size() &&
        s.compare(s.size() - a.size(), a.size(), a) == 0)
      return Value::string(s.substr(0, s.size() - a.size()));
    return self;
  }
  if (name == "center" || name == "ljust" || name == "rjust" || name == "zfill") {
    auto r = reader({"width", "fillchar"});
    if (!r.get(0) || !r.get(0)->is_integral()) throw_error("{}() requires an integer width", name);
    int64_t width = r.get(0)->as_int();
    in.check_size(size_t(std::max<int64_t>(width, 0)));
    if (name == "zfill") {
      std::string body = s, sign;
      if (!body.empty() && (body[0] == '+' || body[0] == '-')) {
        sign = body.substr(0, 1);
        body.erase(0, 1);
      }
      return Value::string(sign + pystr::pad(body, width - int64_t(sign.size()), '0', 1));
    }
    char32_t fill = ' ';
    if (r.get(1)) {
      const std::string& f = str_arg(r.get(1), name.c_str());
      if (unicode::length(f) != 1) throw_error("The fill character must be exactly one character long");
      size_t k = 0;
      fill = unicode::next(f, k);
    }
    return Value::string(pystr::pad(s, width, fill, name == "ljust" ? -1 : name == "rjust" ? 1 : 0));
  }
  if (name == "partition" || name == "rpartition") {
    auto r = reader({"sep"});
    const std::string& sep = str_arg(r.get(0), name.c_str());
    if (sep.empty()) throw_error("empty separator");
    size_t hit = name == "partition" ? s.find(sep) : s.rfind(sep);
    std::vector<Value> parts;
    if (hit == std::string::npos) {
      parts = name == "partition" ? std::vector<Value>{self, Value::string(""), Value::string("")}
                                  : std::vector<Value>{Value::string(""), Value::string(""), self};
    } else {
      parts = {Value::string(s.substr(0, hit)), Value::string(sep),
               Value::string(s.substr(hit + sep.size()))};
    }
    return Value::list(std::move(parts), true);
  }
  auto all = [&](bool (*pred)(char32_t)) {
    if (s.empty()) return false;
    for (size_t i = 0; i < s.size();)
      if (!pred(unicode::next(s, i))) return false;
    return true;
  };
  if (name == "isdigit" || name == "isdecimal" || name == "isnumeric")
    return Value::boolean(all(unicode::is_digit));
  if (name == "isalpha") return Value::boolean(all(unicode::is_alpha));
  if (name == "isalnum") return Value::boolean(all(unicode::is_alnum));
  if (name == "isspace") return Value::boolean(all(unicode::is_space));
  if (name == "isupper" || name == "islower") {
    bool any_cased = false;
    for (size_t i = 0; i < s.size();) {
      char32_t c = unicode::next(s, i);
      if (name == "isupper" ? unicode::is_lower(c) : unicode::is_upper(c)) return Value::boolean(false);
      any_cased |= unicode::is_lower(c) || unicode::is_upper(c);
    }
    return Value::boolean(any_cased);
  }
  throw_error("str.{}() is not supported", name);
}

Value list_method(Interpreter&, const Value& self, CallArgs& args, const std::string& name) {
  const auto& items = self.as_list().items;
  if (name == "count" || name == "index") {
    ArgReader r(name, args, {"value"});
    if (!r.get(0)) throw_error("{}() takes exactly one argument (0 given)", name);
    int64_t n = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      if (!equals(items[i], *r.get(0))) continue;
      if (name == "index") return Value::integer(int64_t(i));
      ++n;
    }
    if (name == "index") throw_error("{} is not in list", repr(*r.get(0)));
    return Value::integer(n);
  }
  if (name == "copy") return Value::list(items, self.is_tuple());
  throw_error("list.{}() is not supported", name);
}

Value dict_method(Interpreter&, const Value& self, CallArgs& args, const std::string& name) {
  const Dict& d = self.as_dict();
  if (name == "items" || name == "keys" || name == "values") {
    ArgReader no_args(name, args, {});
    std::vector<Value> out;
    out.reserve(d.size());
    for (const auto& [k, v] : d.entries()) {
      if (name == "items")
        out.push_back(Value::list({k, v}, true));
      else
        out.push_back(name == "keys" ? k : v);
    }
    return Value::list(std::move(out));
  }
  if (name == "get") {
    if (!args.kwargs.empty()) throw_error("dict.get() takes no keyword arguments");
    ArgReader r("get", args, {"key", "default"});
    if (!r.get(0)) throw_error("get expected at least 1 argument, got 0");
    if (!r.get(0)->is_undefined() && (!r.get(0)->is_list() || r.get(0)->is_tuple()))
      if (const Value* v = d.find(*r.get(0))) return *v;
    return r.get_or(1, Value::none());
  }
  if (name == "copy") return Value::dict(std::make_shared<Dict>(d));
  throw_error("dict.{}() is not supported", name);
}

// Every attribute name of the built-in types, so lookups fall back to items exactly when
// Python would; the ones listed as mutating are blocked by the immutable sandbox.
const std::unordered_map<std::string, bool>& names_for(Value::Kind kind) {
  static const std::unordered_map<std::string, bool> str_names = [] {
    std::unordered_map<std::string, bool> m;
    for (const char* n :
         {"capitalize", "casefold",     "center",       "count",   "encode",     "endswith",    "expandtabs",
          "find",       "format",       "format_map",   "index",   "isalnum",    "isalpha",     "isascii",
          "isdecimal",  "isdigit",      "isidentifier", "islower", "isnumeric",  "isprintable", "isspace",
          "istitle",    "isupper",      "join",         "ljust",   "lower",      "lstrip",      "maketrans",
          "partition",  "removeprefix", "removesuffix", "replace", "rfind",      "rindex",      "rjust",
          "rpartition", "rsplit",       "rstrip",       "split",   "splitlines", "startswith",  "strip",
          "swapcase",   "title",        "translate",    "upper",   "zfill"})
      m[n] = false;
    return m;
  }();
  static const std::unordered_map<std::string, bool> list_names = {
      {"count", false}, {"index", false},  {"copy", false},  {"append", true},
      {"clear", true},  {"extend", true},  {"insert", true}, {"pop", true},
      {"remove", true}, {"reverse", true}, {"sort", true}};
  static const std::unordered_map<std::string, bool> dict_names = {
      {"items", false},  {"keys", false},      {"values", false}, {"get", false},
      {"copy", false},   {"fromkeys", false},  {"clear", true},   {"pop", true},
      {"popitem", true}, {"setdefault", true}, {"update", true}};
  static const std::unordered_map<std::string, bool> none;
  switch (kind) {
    case Value::Kind::String: return str_names;
    case Value::Kind::List: return list_names;
    case Value::Kind::Dict: return dict_names;
    default: return none;
  }
}

}  // namespace

bool is_dunder(const std::string& name) { return name.size() > 1 && name[0] == '_' && name[1] == '_'; }

Value unsafe_attribute(const Value& obj, const std::string& name) {
  return Value::undefined("access to attribute '" + name + "' of '" + type_name(obj) + "' object is unsafe.");
}

std::optional<Value> builtin_attribute(const Value& self, const std::string& name) {
  if (is_dunder(name)) return unsafe_attribute(self, name);
  const auto& names = names_for(self.kind());
  auto it = names.find(name);
  if (it == names.end()) return std::nullopt;
  if (it->second) return unsafe_attribute(self, name);
  if (self.is_list() && self.is_tuple() && name == "copy") return std::nullopt;  // tuples have no copy()
  Value bound = self;
  std::string method = name;
  return Value::object(
      std::make_shared<NativeFunction>(name, [bound, method](Interpreter& in, CallArgs& args) {
        switch (bound.kind()) {
          case Value::Kind::String: return str_method(in, bound, args, method);
          case Value::Kind::List: return list_method(in, bound, args, method);
          default: return dict_method(in, bound, args, method);
        }
      }));
}

}  // namespace apus::jinja
