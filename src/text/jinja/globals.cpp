// Global functions (range, namespace, dict, and transformers' raise_exception and strftime_now)
// and the json.dumps behind transformers' tojson filter.
#include <locale.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <unordered_map>

#include "text/jinja/builtins.h"
#include "text/jinja/interpreter.h"
#include "text/jinja/objects.h"
#include "text/jinja/template_error.h"
#include "text/jinja/unicode.h"

namespace apus::jinja {
namespace {

// Jinja's sandbox refuses larger ranges (MAX_RANGE).
constexpr int64_t kMaxRange = 100000;

Value g_range(Interpreter& in, CallArgs& a) {
  if (!a.kwargs.empty()) throw_error("range() takes no keyword arguments");
  if (a.args.empty() || a.args.size() > 3)
    throw_error("range expected 1 to 3 arguments, got {}", a.args.size());
  for (const auto& v : a.args)
    if (!v.is_integral()) throw_error("'{}' object cannot be interpreted as an integer", type_name(v));
  int64_t start = 0, stop, step = 1;
  if (a.args.size() == 1) {
    stop = a.args[0].as_int();
  } else {
    start = a.args[0].as_int();
    stop = a.args[1].as_int();
    if (a.args.size() == 3) step = a.args[2].as_int();
  }
  if (step == 0) throw_error("range() arg 3 must not be zero");
  // Unsigned arithmetic: the span of two int64 values always fits in a uint64.
  bool empty = step > 0 ? start >= stop : start <= stop;
  uint64_t span = step > 0 ? uint64_t(stop) - uint64_t(start) : uint64_t(start) - uint64_t(stop);
  uint64_t abs_step = step > 0 ? uint64_t(step) : uint64_t(0) - uint64_t(step);
  uint64_t count = empty ? 0 : (span - 1) / abs_step + 1;
  if (count > uint64_t(kMaxRange))
    throw_error("Range too big. The sandbox blocks ranges larger than MAX_RANGE ({}).", kMaxRange);
  in.check_items(size_t(count));
  in.charge(uint64_t(count) / 4);
  std::vector<Value> items;
  items.reserve(size_t(count));
  for (int64_t i = 0; i < int64_t(count); ++i) items.push_back(Value::integer(start + i * step));
  return Value::list(std::move(items));
}

// dict(*args, **kwargs) as Python builds it: an optional mapping or iterable of pairs, then kwargs.
std::shared_ptr<Dict> build_dict(CallArgs& a, const char* func) {
  auto d = std::make_shared<Dict>();
  if (a.args.size() > 1) throw_error("{} expected at most 1 argument, got {}", func, a.args.size());
  if (a.args.size() == 1) {
    const Value& src = a.args[0];
    if (src.is_dict()) {
      *d = src.as_dict();
    } else {
      for (const auto& pair : iterate(src)) {
        auto kv = iterate(pair);
        if (kv.size() != 2)
          throw_error("dictionary update sequence element has length {}; 2 is required", kv.size());
        d->set(kv[0], kv[1]);
      }
    }
  }
  for (auto& [k, v] : a.kwargs) d->set(Value::string(k), v);
  return d;
}

Value g_dict(Interpreter&, CallArgs& a) { return Value::dict(build_dict(a, "dict")); }

Value g_namespace(Interpreter& in, CallArgs& a) {
  auto ns = std::make_shared<Namespace>();
  auto attrs = build_dict(a, "namespace");
  for (const auto& [k, v] : attrs->entries()) {
    if (!k.is_string()) throw_error("keywords must be strings");
    ns->set(k.as_string(), v);
  }
  in.track(ns);
  return Value::object(std::move(ns));
}

Value g_raise_exception(Interpreter&, CallArgs& a) {
  ArgReader r("raise_exception", a, {"message"});
  throw TemplateError(r.get(0) ? to_str(*r.get(0)) : "", /*raised=*/true);
}

Value g_strftime_now(Interpreter& in, CallArgs& a) {
  ArgReader r("strftime_now", a, {"format"});
  if (!r.get(0) || !r.get(0)->is_string()) throw_error("strftime_now() needs a format string");
  const std::string& format = r.get(0)->as_string();
  if (format.empty()) return Value::string("");
  std::time_t t = in.now();
  std::tm tm{};
  if (in.clock_is_utc())
    gmtime_r(&t, &tm);
  else
    localtime_r(&t, &tm);
  // The C locale, as in Python: month and day names are English whatever the process locale is.
  static locale_t c_locale = newlocale(LC_ALL_MASK, "C", static_cast<locale_t>(nullptr));
  for (size_t cap = 256; cap <= 65536; cap *= 4) {
    std::string buf(cap, '\0');
    size_t n = c_locale ? strftime_l(buf.data(), cap, format.c_str(), &tm, c_locale)
                        : strftime(buf.data(), cap, format.c_str(), &tm);
    if (n > 0) {
      buf.resize(n);
      return Value::string(std::move(buf));
    }
  }
  throw_error("strftime_now(): the formatted date is too long");
}

void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    size_t start = i;
    char32_t c = unicode::next(s, i);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          out += fmt::format("\\u{:04x}", unsigned(c));
        } else if (ensure_ascii && c >= 0x80) {
          if (c >= 0x10000) {
            char32_t v = c - 0x10000;
            out += fmt::format("\\u{:04x}\\u{:04x}", unsigned(0xd800 + (v >> 10)),
                               unsigned(0xdc00 + (v & 0x3ff)));
          } else {
            out += fmt::format("\\u{:04x}", unsigned(c));
          }
        } else {
          out.append(s, start, i - start);
        }
    }
  }
  out += '"';
}

struct JsonWriter {
  bool ensure_ascii;
  const std::optional<std::string>& indent;
  std::string_view item_sep, key_sep;
  bool sort_keys;
  size_t max_bytes;
  std::string out;

  void check() const {
    if (out.size() > max_bytes) throw_error("tojson output exceeds max_output_bytes ({})", max_bytes);
  }

  void newline(int level) {
    if (!indent) return;
    out += '\n';
    for (int i = 0; i < level; ++i) out += *indent;
    check();
  }

  std::string key_text(const Value& k) {
    switch (k.kind()) {
      case Value::Kind::String: return k.as_string();
      case Value::Kind::Bool: return k.as_bool() ? "true" : "false";
      case Value::Kind::None: return "null";
      case Value::Kind::Int: return std::to_string(k.as_int());
      case Value::Kind::Float: return format_float(k.as_float());
      default: throw_error("keys must be str, int, float, bool or None, not {}", type_name(k));
    }
  }

  void write(const Value& v, int level) {
    if (level > 200) throw_error("tojson: value is nested too deeply (or contains itself)");
    switch (v.kind()) {
      case Value::Kind::None: out += "null"; break;
      case Value::Kind::Bool: out += v.as_bool() ? "true" : "false"; break;
      case Value::Kind::Int: out += std::to_string(v.as_int()); break;
      case Value::Kind::Float: {
        double d = v.as_float();
        out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : format_float(d);
        break;
      }
      case Value::Kind::String: json_string(out, v.as_string(), ensure_ascii); break;
      case Value::Kind::List: {
        const auto& items = v.as_list().items;
        if (items.empty()) {
          out += "[]";
          break;
        }
        out += '[';
        for (size_t i = 0; i < items.size(); ++i) {
          if (i) out += item_sep;
          newline(level + 1);
          write(items[i], level + 1);
        }
        newline(level);
        out += ']';
        break;
      }
      case Value::Kind::Dict: {
        const auto& entries = v.as_dict().entries();
        if (entries.empty()) {
          out += "{}";
          break;
        }
        std::vector<const std::pair<Value, Value>*> order;
        for (const auto& e : entries) order.push_back(&e);
        if (sort_keys)
          std::stable_sort(order.begin(), order.end(),
                           [](auto* a, auto* b) { return compare(a->first, b->first, "<") < 0; });
        out += '{';
        bool first = true;
        for (const auto* e : order) {
          if (!first) out += item_sep;
          first = false;
          newline(level + 1);
          json_string(out, key_text(e->first), ensure_ascii);
          out += key_sep;
          write(e->second, level + 1);
        }
        newline(level);
        out += '}';
        break;
      }
      default: throw_error("Object of type {} is not JSON serializable", type_name(v));
    }
    check();
  }
};

const std::unordered_map<std::string_view, Value>& globals() {
  static const std::unordered_map<std::string_view, Value> table = [] {
    std::unordered_map<std::string_view, Value> m;
    auto add = [&](const char* name, NativeFunction::Fn fn, const char* type = "builtin_function_or_method") {
      m.emplace(name, Value::object(std::make_shared<NativeFunction>(name, std::move(fn), type)));
    };
    add("range", g_range, "type");
    add("dict", g_dict, "type");
    add("namespace", g_namespace, "type");
    add("raise_exception", g_raise_exception, "function");
    add("strftime_now", g_strftime_now, "function");
    return m;
  }();
  return table;
}

}  // namespace

std::optional<Value> find_global(std::string_view name) {
  auto it = globals().find(name);
  if (it == globals().end()) return std::nullopt;
  return it->second;
}

std::string to_json(const Value& v, bool ensure_ascii, const std::optional<std::string>& indent,
                    std::string_view item_sep, std::string_view key_sep, bool sort_keys, size_t max_bytes) {
  JsonWriter w{ensure_ascii, indent, item_sep, key_sep, sort_keys, max_bytes, {}};
  w.write(v, 0);
  return std::move(w.out);
}

}  // namespace apus::jinja
