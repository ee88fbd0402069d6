#include "text/jinja/value.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

#include "text/jinja/template_error.h"
#include "text/jinja/unicode.h"

namespace apus::jinja {
namespace {

// Values can only form cycles through namespaces (the one mutable object), but printing or
// comparing such a cycle must still end: nesting deeper than this is reported instead.
constexpr int kMaxNesting = 200;
thread_local int g_nesting = 0;

class NestingGuard {
 public:
  NestingGuard() {
    if (++g_nesting > kMaxNesting) {
      --g_nesting;
      throw_error("value is nested more than {} levels deep (or contains itself)", kMaxNesting);
    }
  }
  ~NestingGuard() { --g_nesting; }
  NestingGuard(const NestingGuard&) = delete;
  NestingGuard& operator=(const NestingGuard&) = delete;
};

void repr_string(std::string& out, const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char quote = (has_single && !has_double) ? '"' : '\'';
  out += quote;
  for (size_t i = 0; i < s.size();) {
    char32_t c = unicode::next(s, i);
    if (c == char32_t(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (unicode::is_printable(c)) {
      unicode::append(out, c);
    } else if (c < 0x100) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned>(c));
    } else if (c < 0x10000) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
    } else {
      out += fmt::format("\\U{:08x}", static_cast<unsigned>(c));
    }
  }
  out += quote;
}

void repr_into(std::string& out, const Value& v);

void repr_items(std::string& out, const List& l) {
  out += l.is_tuple ? '(' : '[';
  for (size_t i = 0; i < l.items.size(); ++i) {
    if (i) out += ", ";
    repr_into(out, l.items[i]);
  }
  if (l.is_tuple && l.items.size() == 1) out += ',';
  out += l.is_tuple ? ')' : ']';
}

void repr_dict(std::string& out, const Dict& d) {
  out += '{';
  bool first = true;
  for (const auto& [k, v] : d.entries()) {
    if (!first) out += ", ";
    first = false;
    repr_into(out, k);
    out += ": ";
    repr_into(out, v);
  }
  out += '}';
}

void repr_into(std::string& out, const Value& v) {
  NestingGuard guard;
  switch (v.kind()) {
    case Value::Kind::Undefined: out += "Undefined"; break;
    case Value::Kind::String: repr_string(out, v.as_string()); break;
    case Value::Kind::List: repr_items(out, v.as_list()); break;
    case Value::Kind::Dict: repr_dict(out, v.as_dict()); break;
    case Value::Kind::Object: out += v.as_object().repr(); break;
    default: out += to_str(v); break;
  }
}

bool sequence_equals(const std::vector<Value>& a, const std::vector<Value>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!equals(a[i], b[i])) return false;
  return true;
}

}  // namespace

// ---- containers ----------------------------------------------------------------------------

const Value* Dict::find(const Value& key) const {
  auto it = index_.find(hash_key(key));
  return it == index_.end() ? nullptr : &entries_[it->second].second;
}

const Value* Dict::find(std::string_view key) const {
  std::string k = "s";
  k += key;
  auto it = index_.find(k);
  return it == index_.end() ? nullptr : &entries_[it->second].second;
}

void Dict::set(const Value& key, Value value) {
  auto [it, inserted] = index_.emplace(hash_key(key), entries_.size());
  if (inserted) {
    entries_.emplace_back(key, std::move(value));
  } else {
    entries_[it->second].second = std::move(value);
  }
}

std::string Object::repr() const { return "<" + type_name() + " object>"; }
std::optional<Value> Object::attribute(const std::string&) { return std::nullopt; }
Value Object::call(Interpreter&, CallArgs&) { throw_error("'{}' object is not callable", type_name()); }

Value Value::undefined(std::string message) {
  return Value(Undefined{std::make_shared<const std::string>(std::move(message))});
}

Value Value::list(std::vector<Value> items, bool is_tuple) {
  auto l = std::make_shared<List>();
  l->items = std::move(items);
  l->is_tuple = is_tuple;
  return Value(std::move(l));
}

const std::string& Value::undefined_message() const {
  static const std::string kGeneric = "value is undefined";
  const auto& m = std::get<Undefined>(v_).message;
  return m ? *m : kGeneric;
}

const void* Value::identity() const {
  switch (kind()) {
    case Kind::List: return std::get<std::shared_ptr<List>>(v_).get();
    case Kind::Dict: return std::get<std::shared_ptr<Dict>>(v_).get();
    case Kind::Object: return std::get<std::shared_ptr<Object>>(v_).get();
    default: return nullptr;
  }
}

// ---- Python's str(), repr(), bool() ---------------------------------------------------------

std::string format_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  // Shortest round-trip digits, then Python's layout: positional for 1e-4 <= |d| < 1e16,
  // scientific otherwise, and always a '.0' on whole numbers written positionally.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  size_t e = sci.find('e');
  int exp = std::atoi(sci.c_str() + e + 1);
  std::string mant = sci.substr(0, e);
  bool neg = !mant.empty() && mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  std::string out = neg ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out += "0." + std::string(size_t(-exp - 1), '0') + digits;
    } else if (size_t(exp) + 1 >= digits.size()) {
      out += digits + std::string(size_t(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, size_t(exp) + 1) + "." + digits.substr(size_t(exp) + 1);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  return out;
}

bool truthy(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined:
    case Value::Kind::None: return false;
    case Value::Kind::Bool: return v.as_bool();
    case Value::Kind::Int: return v.as_int() != 0;
    case Value::Kind::Float: return v.as_float() != 0.0;
    case Value::Kind::String: return !v.as_string().empty();
    case Value::Kind::List: return !v.as_list().items.empty();
    case Value::Kind::Dict: return v.as_dict().size() != 0;
    case Value::Kind::Object: return true;
  }
  return false;
}

std::string to_str(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return "";
    case Value::Kind::None: return "None";
    case Value::Kind::Bool: return v.as_bool() ? "True" : "False";
    case Value::Kind::Int: return std::to_string(v.as_int());
    case Value::Kind::Float: return format_float(v.as_float());
    case Value::Kind::String: return v.as_string();
    default: return repr(v);
  }
}

std::string repr(const Value& v) {
  std::string out;
  repr_into(out, v);
  return out;
}

std::string type_name(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return "Undefined";
    case Value::Kind::None: return "NoneType";
    case Value::Kind::Bool: return "bool";
    case Value::Kind::Int: return "int";
    case Value::Kind::Float: return "float";
    case Value::Kind::String: return "str";
    case Value::Kind::List: return v.is_tuple() ? "tuple" : "list";
    case Value::Kind::Dict: return "dict";
    case Value::Kind::Object: return v.as_object().type_name();
  }
  return "object";
}

// ---- comparisons ----------------------------------------------------------------------------

bool equals(const Value& a, const Value& b) {
  NestingGuard guard;
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_float() == b.as_float();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::Undefined:
    case Value::Kind::None: return true;
    case Value::Kind::String: return a.as_string() == b.as_string();
    case Value::Kind::List:
      return a.is_tuple() == b.is_tuple() && sequence_equals(a.as_list().items, b.as_list().items);
    case Value::Kind::Dict: {
      const Dict& x = a.as_dict();
      const Dict& y = b.as_dict();
      if (x.size() != y.size()) return false;
      for (const auto& [k, v] : x.entries()) {
        const Value* other = y.find(k);
        if (!other || !equals(v, *other)) return false;
      }
      return true;
    }
    case Value::Kind::Object: return a.identity() == b.identity();
    default: return false;
  }
}

int compare(const Value& a, const Value& b, std::string_view op) {
  NestingGuard guard;
  if (a.is_undefined()) raise_undefined(a);
  if (b.is_undefined()) raise_undefined(b);
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) {
      double x = a.as_float(), y = b.as_float();
      return x < y ? -1 : (y < x ? 1 : 0);
    }
    int64_t x = a.as_int(), y = b.as_int();
    return x < y ? -1 : (y < x ? 1 : 0);
  }
  if (a.is_string() && b.is_string()) {
    // Byte order of UTF-8 is code point order, which is how Python orders str.
    int c = a.as_string().compare(b.as_string());
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
  }
  if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
    const auto& x = a.as_list().items;
    const auto& y = b.as_list().items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i)
      if (!equals(x[i], y[i])) return compare(x[i], y[i], op);
    return x.size() < y.size() ? -1 : (x.size() > y.size() ? 1 : 0);
  }
  throw_error("'{}' not supported between instances of '{}' and '{}'", op, type_name(a), type_name(b));
}

std::string hash_key(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::String: return "s" + v.as_string();
    case Value::Kind::None: return "N";
    case Value::Kind::Bool:
    case Value::Kind::Int: return "n" + std::to_string(v.as_int());
    case Value::Kind::Float: {
      double d = v.as_float();
      if (std::floor(d) == d && std::fabs(d) < 9.2e18) return "n" + std::to_string(int64_t(d));
      return "f" + format_float(d);
    }
    case Value::Kind::List:
      if (v.is_tuple()) {
        NestingGuard guard;
        std::string k = "t(";
        for (const auto& item : v.as_list().items) k += hash_key(item) + ",";
        return k + ")";
      }
      break;
    case Value::Kind::Undefined: raise_undefined(v);
    default: break;
  }
  throw_error("unhashable type: '{}'", type_name(v));
}

// ---- iteration ------------------------------------------------------------------------------

std::vector<Value> iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List: return v.as_list().items;
    case Value::Kind::Dict: {
      std::vector<Value> keys;
      keys.reserve(v.as_dict().size());
      for (const auto& entry : v.as_dict().entries()) keys.push_back(entry.first);
      return keys;
    }
    case Value::Kind::String: {
      std::vector<Value> chars;
      const std::string& s = v.as_string();
      for (size_t i = 0; i < s.size();) {
        size_t start = i;
        unicode::next(s, i);
        chars.push_back(Value::string(s.substr(start, i - start)));
      }
      return chars;
    }
    default: throw_error("'{}' object is not iterable", type_name(v));
  }
}

int64_t length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return 0;
    case Value::Kind::String: return int64_t(unicode::length(v.as_string()));
    case Value::Kind::List: return int64_t(v.as_list().items.size());
    case Value::Kind::Dict: return int64_t(v.as_dict().size());
    default: throw_error("object of type '{}' has no len()", type_name(v));
  }
}

void raise_undefined(const Value& v) { throw TemplateError(v.undefined_message()); }

// ---- JSON input -----------------------------------------------------------------------------

Value from_json(const nlohmann::ordered_json& j) {
  NestingGuard guard;
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      if (u > uint64_t(INT64_MAX)) return Value::number(double(u));
      return Value::integer(int64_t(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value::number(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value::string(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json(e));
      return Value::list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      auto d = std::make_shared<Dict>();
      for (const auto& [k, e] : j.items()) d->set(Value::string(k), from_json(e));
      return Value::dict(std::move(d));
    }
    default: throw_error("unsupported JSON value in the template context");
  }
}

}  // namespace apus::jinja
