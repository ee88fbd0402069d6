#include "text/jinja/operators.h"

#include <fmt/printf.h>

#include <cmath>

#include "text/jinja/interpreter.h"
#include "text/jinja/template_error.h"
#include "text/jinja/unicode.h"

namespace apus::jinja {
namespace {

[[noreturn]] void unsupported(const char* op, const Value& a, const Value& b) {
  throw_error("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b));
}

[[noreturn]] void overflow() { throw_error("integer overflow (apus keeps template integers in 64 bits)"); }

int64_t checked_add(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) overflow();
  return r;
}

int64_t checked_sub(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_sub_overflow(a, b, &r)) overflow();
  return r;
}

int64_t checked_mul(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) overflow();
  return r;
}

// Python's float divmod, which fixes the sign of the remainder to the divisor's.
std::pair<double, double> float_divmod(double x, double y) {
  double mod = std::fmod(x, y);
  double div = (x - mod) / y;
  if (mod != 0) {
    if ((y < 0) != (mod < 0)) {
      mod += y;
      div -= 1.0;
    }
  } else {
    mod = std::copysign(0.0, y);
  }
  double floordiv;
  if (div != 0) {
    floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
  } else {
    floordiv = std::copysign(0.0, x / y);
  }
  return {floordiv, mod};
}

Value repeat(Interpreter& in, const Value& seq, int64_t n) {
  if (seq.is_string()) {
    const std::string& s = seq.as_string();
    if (n <= 0 || s.empty()) return Value::string("");
    if (uint64_t(n) > in.limits().max_output_bytes / s.size() + 1) in.check_size(SIZE_MAX);
    in.check_size(s.size() * size_t(n));
    std::string out;
    out.reserve(s.size() * size_t(n));
    for (int64_t i = 0; i < n; ++i) out += s;
    return Value::string(std::move(out));
  }
  const List& l = seq.as_list();
  if (n <= 0 || l.items.empty()) return Value::list({}, l.is_tuple);
  if (uint64_t(n) > uint64_t(in.limits().max_loop_iterations) / l.items.size() + 1) in.check_items(SIZE_MAX);
  in.check_items(l.items.size() * size_t(n));
  std::vector<Value> out;
  out.reserve(l.items.size() * size_t(n));
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), l.items.begin(), l.items.end());
  return Value::list(std::move(out), l.is_tuple);
}

Value power(const Value& a, const Value& b) {
  if (a.is_integral() && b.is_integral() && b.as_int() >= 0) {
    int64_t base = a.as_int(), exp = b.as_int(), result = 1;
    while (exp > 0) {
      if (exp & 1) result = checked_mul(result, base);
      exp >>= 1;
      if (exp) base = checked_mul(base, base);
    }
    return Value::integer(result);
  }
  double x = a.as_float(), y = b.as_float();
  if (x == 0 && y < 0) throw_error("0.0 cannot be raised to a negative power");
  if (x < 0 && std::floor(y) != y) throw_error("complex numbers are not supported");
  double r = std::pow(x, y);
  if (std::isinf(r) && std::isfinite(x) && std::isfinite(y))
    throw_error("(34, 'Numerical result out of range')");
  return Value::number(r);
}

}  // namespace

Value binary_op(Interpreter& in, BinOp op, const Value& a, const Value& b) {
  if (op == BinOp::Mod && a.is_string()) return Value::string(percent_format(in, a.as_string(), b));
  if (a.is_undefined()) raise_undefined(a);
  if (b.is_undefined()) raise_undefined(b);
  bool ints = a.is_integral() && b.is_integral();
  bool nums = a.is_number() && b.is_number();
  switch (op) {
    case BinOp::Add:
      if (ints) return Value::integer(checked_add(a.as_int(), b.as_int()));
      if (nums) return Value::number(a.as_float() + b.as_float());
      if (a.is_string() && b.is_string()) {
        in.check_size(a.as_string().size() + b.as_string().size());
        return Value::string(a.as_string() + b.as_string());
      }
      if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
        in.check_items(a.as_list().items.size() + b.as_list().items.size());
        std::vector<Value> items = a.as_list().items;
        items.insert(items.end(), b.as_list().items.begin(), b.as_list().items.end());
        return Value::list(std::move(items), a.is_tuple());
      }
      if (a.is_string() || a.is_list())
        throw_error("can only concatenate {} (not \"{}\") to {}", type_name(a), type_name(b), type_name(a));
      unsupported("+", a, b);
    case BinOp::Sub:
      if (ints) return Value::integer(checked_sub(a.as_int(), b.as_int()));
      if (nums) return Value::number(a.as_float() - b.as_float());
      unsupported("-", a, b);
    case BinOp::Mul:
      if (ints) return Value::integer(checked_mul(a.as_int(), b.as_int()));
      if (nums) return Value::number(a.as_float() * b.as_float());
      if ((a.is_string() || a.is_list()) && b.is_integral()) return repeat(in, a, b.as_int());
      if ((b.is_string() || b.is_list()) && a.is_integral()) return repeat(in, b, a.as_int());
      if (a.is_string() || a.is_list())
        throw_error("can't multiply sequence by non-int of type '{}'", type_name(b));
      if (b.is_string() || b.is_list())
        throw_error("can't multiply sequence by non-int of type '{}'", type_name(a));
      unsupported("*", a, b);
    case BinOp::Div:
      if (!nums) unsupported("/", a, b);
      if (b.as_float() == 0) {
        if (ints) throw_error("division by zero");
        throw_error("float division by zero");
      }
      return Value::number(a.as_float() / b.as_float());
    case BinOp::FloorDiv:
      if (ints) {
        int64_t x = a.as_int(), y = b.as_int();
        if (y == 0) throw_error("integer division or modulo by zero");
        if (x == INT64_MIN && y == -1) overflow();
        int64_t q = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
        return Value::integer(q);
      }
      if (!nums) unsupported("//", a, b);
      if (b.as_float() == 0) throw_error("float floor division by zero");
      return Value::number(float_divmod(a.as_float(), b.as_float()).first);
    case BinOp::Mod:
      if (ints) {
        int64_t x = a.as_int(), y = b.as_int();
        if (y == 0) throw_error("integer modulo by zero");
        if (y == -1) return Value::integer(0);
        int64_t m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        return Value::integer(m);
      }
      if (!nums) unsupported("%", a, b);
      if (b.as_float() == 0) throw_error("float modulo");
      return Value::number(float_divmod(a.as_float(), b.as_float()).second);
    case BinOp::Pow:
      if (!nums) unsupported("** or pow()", a, b);
      return power(a, b);
  }
  unsupported("?", a, b);
}

Value negate(const Value& v) {
  if (v.is_undefined()) raise_undefined(v);
  if (v.is_integral()) return Value::integer(checked_sub(0, v.as_int()));
  if (v.is_float()) return Value::number(-v.as_float());
  throw_error("bad operand type for unary -: '{}'", type_name(v));
}

Value positive(const Value& v) {
  if (v.is_undefined()) raise_undefined(v);
  if (v.is_integral()) return Value::integer(v.as_int());
  if (v.is_float()) return v;
  throw_error("bad operand type for unary +: '{}'", type_name(v));
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::Undefined: return false;
    case Value::Kind::String:
      if (!item.is_string())
        throw_error("'in <string>' requires string as left operand, not {}", type_name(item));
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::List:
      for (const auto& x : container.as_list().items)
        if (equals(x, item)) return true;
      return false;
    case Value::Kind::Dict:
      if (item.is_undefined()) return false;
      return container.as_dict().find(item) != nullptr;
    default: throw_error("argument of type '{}' is not iterable", type_name(container));
  }
}

std::optional<Value> slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  auto bound = [](const Value& v, std::optional<int64_t>& out) {
    if (v.is_none()) return true;
    if (!v.is_integral()) return false;
    out = v.as_int();
    return true;
  };
  std::optional<int64_t> b, e, s;
  if (!bound(start, b) || !bound(stop, e) || !bound(step, s)) return std::nullopt;
  if (!obj.is_string() && !obj.is_list()) return std::nullopt;
  int64_t st = s.value_or(1);
  if (st == 0) throw_error("slice step cannot be zero");
  if (st == INT64_MIN) st = -INT64_MAX;

  bool ascii = obj.is_string() && unicode::is_ascii(obj.as_string());
  std::u32string wide;
  if (obj.is_string() && !ascii) wide = unicode::decode(obj.as_string());
  int64_t len = obj.is_list() ? int64_t(obj.as_list().items.size())
                : ascii       ? int64_t(obj.as_string().size())
                              : int64_t(wide.size());
  // CPython's PySlice_AdjustIndices.
  auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = *v;
    if (x < 0) {
      x = x < -len ? (st < 0 ? -1 : 0) : x + len;
    } else if (x >= len) {
      x = st < 0 ? len - 1 : len;
    }
    return x;
  };
  int64_t first = clamp(b, st < 0 ? len - 1 : 0);
  int64_t last = clamp(e, st < 0 ? -1 : len);
  std::vector<int64_t> idx;
  if (st > 0) {
    for (int64_t i = first; i < last; i += st) idx.push_back(i);
  } else {
    for (int64_t i = first; i > last; i += st) idx.push_back(i);
  }
  if (obj.is_list()) {
    std::vector<Value> items;
    items.reserve(idx.size());
    for (int64_t i : idx) items.push_back(obj.as_list().items[size_t(i)]);
    return Value::list(std::move(items), obj.is_tuple());
  }
  if (ascii) {
    std::string out;
    out.reserve(idx.size());
    for (int64_t i : idx) out += obj.as_string()[size_t(i)];
    return Value::string(std::move(out));
  }
  std::u32string out;
  for (int64_t i : idx) out += wide[size_t(i)];
  return Value::string(unicode::encode(out));
}

std::string percent_format(Interpreter& in, const std::string& fmt, const Value& args) {
  std::vector<Value> values;
  const Dict* mapping = nullptr;
  if (args.is_tuple()) {
    values = args.as_list().items;
  } else {
    if (args.is_dict()) mapping = &args.as_dict();
    values.push_back(args);
  }
  size_t next = 0;
  std::string out;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size()) throw_error("incomplete format");
    const Value* arg = nullptr;
    if (fmt[i] == '(') {
      size_t close = fmt.find(')', i);
      if (close == std::string::npos) throw_error("incomplete format key");
      if (!mapping) throw_error("format requires a mapping");
      arg = mapping->find(std::string_view(fmt).substr(i + 1, close - i - 1));
      if (!arg) throw_error("KeyError: '{}'", fmt.substr(i + 1, close - i - 1));
      i = close + 1;
    }
    std::string spec = "%";
    while (i < fmt.size() && std::string_view("-+ #0").find(fmt[i]) != std::string_view::npos)
      spec += fmt[i++];
    while (i < fmt.size() && ((fmt[i] >= '0' && fmt[i] <= '9') || fmt[i] == '.')) spec += fmt[i++];
    if (i >= fmt.size()) throw_error("incomplete format");
    char type = fmt[i];
    if (type == '%') {
      out += '%';
      continue;
    }
    if (!arg) {
      if (next >= values.size()) throw_error("not enough arguments for format string");
      arg = &values[next++];
    }
    switch (type) {
      case 's':
      case 'r':
      case 'a': {
        std::string s = type == 's' ? to_str(*arg) : repr(*arg);
        out += fmt::sprintf(spec + "s", s);
        break;
      }
      case 'd':
      case 'i':
      case 'u':
      case 'x':
      case 'X':
      case 'o': {
        if (!arg->is_number())
          throw_error("%{} format: a real number is required, not {}", type, type_name(*arg));
        int64_t v = arg->is_float() ? int64_t(std::trunc(arg->as_float())) : arg->as_int();
        out += fmt::sprintf(spec + "l" + (type == 'i' || type == 'u' ? 'd' : type), v);
        break;
      }
      case 'f':
      case 'F':
      case 'e':
      case 'E':
      case 'g':
      case 'G':
        if (!arg->is_number()) throw_error("must be real number, not {}", type_name(*arg));
        out += fmt::sprintf(spec + type, arg->as_float());
        break;
      case 'c':
        if (arg->is_integral()) {
          unicode::append(out, char32_t(arg->as_int()));
        } else if (arg->is_string() && unicode::length(arg->as_string()) == 1) {
          out += arg->as_string();
        } else {
          throw_error("%c requires int or char");
        }
        break;
      default: throw_error("unsupported format character '{}'", type);
    }
    in.check_size(out.size());
  }
  if (!mapping && next < values.size()) throw_error("not all arguments converted during string formatting");
  return out;
}

}  // namespace apus::jinja
