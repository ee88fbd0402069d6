// Expression evaluation and the sandbox's attribute/item/call rules.
#include "text/jinja/builtins.h"
#include "text/jinja/interpreter.h"
#include "text/jinja/objects.h"
#include "text/jinja/operators.h"
#include "text/jinja/template_error.h"
#include "text/jinja/unicode.h"

namespace apus::jinja {
namespace {

// How Jinja names a value's type in "has no attribute" messages.
std::string object_type_repr(const Value& v) {
  if (v.is_none()) return "None";
  return type_name(v) + " object";
}

std::string missing_attribute(const Value& obj, const std::string& name) {
  return "'" + object_type_repr(obj) + "' has no attribute '" + name + "'";
}

}  // namespace

Value Interpreter::eval(const Expr& e, const FramePtr& frame) try {
  Nesting nesting(*this);
  return eval_impl(e, frame);
} catch (TemplateError& err) {
  err.set_offset_if_unknown(e.offset);
  throw;
}

Value Interpreter::fresh(Value v) {
  if (v.is_string()) {
    check_size(v.as_string().size());
    charge(v.as_string().size() / 64);
  } else if (v.is_list()) {
    check_items(v.as_list().items.size());
    charge(v.as_list().items.size() / 4);
  }
  return v;
}

Value Interpreter::lookup(const std::string& name, const FramePtr& frame) const {
  if (const Value* v = frame->find(name)) return *v;
  if (auto g = find_global(name)) return *g;
  return Value::undefined("'" + name + "' is undefined");
}

void Interpreter::eval_args(const Arguments& a, const FramePtr& frame, CallArgs& out) {
  for (const auto& e : a.args) out.args.push_back(eval(*e, frame));
  if (a.dyn_args)
    for (auto& v : iterate(eval(*a.dyn_args, frame))) out.args.push_back(std::move(v));
  for (const auto& [k, e] : a.kwargs) out.kwargs.emplace_back(k, eval(*e, frame));
  if (a.dyn_kwargs) {
    Value d = eval(*a.dyn_kwargs, frame);
    if (!d.is_dict()) throw_error("argument after ** must be a mapping, not {}", type_name(d));
    for (const auto& [k, v] : d.as_dict().entries()) {
      if (!k.is_string()) throw_error("keywords must be strings");
      out.kwargs.emplace_back(k.as_string(), v);
    }
  }
}

Value Interpreter::eval_filter(const FilterExpr& f, const FramePtr& frame, const Value* body) {
  Value input;
  if (!f.input) {
    if (!body) throw_error("filter '{}' has no input", f.name);
    input = *body;
  } else if (body && f.input->kind == ExprKind::Filter) {
    input = eval_filter(static_cast<const FilterExpr&>(*f.input), frame, body);
  } else {
    input = eval(*f.input, frame);
  }
  CallArgs args;
  eval_args(f.args, frame, args);
  return fresh(apply_filter(f.name, input, args));
}

Value Interpreter::eval_compare(const CompareExpr& c, const FramePtr& frame) {
  Value left = eval(*c.first, frame);
  for (const auto& [op, expr] : c.rest) {
    Value right = eval(*expr, frame);
    bool ok = false;
    switch (op) {
      case CmpOp::Eq: ok = equals(left, right); break;
      case CmpOp::Ne: ok = !equals(left, right); break;
      case CmpOp::Lt: ok = compare(left, right, "<") < 0; break;
      case CmpOp::Le: ok = compare(left, right, "<=") <= 0; break;
      case CmpOp::Gt: ok = compare(left, right, ">") > 0; break;
      case CmpOp::Ge: ok = compare(left, right, ">=") >= 0; break;
      case CmpOp::In: ok = contains(right, left); break;
      case CmpOp::NotIn: ok = !contains(right, left); break;
    }
    if (!ok) return Value::boolean(false);
    left = std::move(right);
  }
  return Value::boolean(true);
}

Value Interpreter::eval_impl(const Expr& e, const FramePtr& frame) {
  switch (e.kind) {
    case ExprKind::Const: return static_cast<const ConstExpr&>(e).value;
    case ExprKind::Name: return lookup(static_cast<const NameExpr&>(e).name, frame);
    case ExprKind::NsRef: throw_error("namespace references can only be assigned to");
    case ExprKind::GetAttr: {
      const auto& g = static_cast<const GetAttrExpr&>(e);
      return get_attr(eval(*g.object, frame), g.attr);
    }
    case ExprKind::GetItem: {
      const auto& g = static_cast<const GetItemExpr&>(e);
      Value obj = eval(*g.object, frame);
      if (g.key->kind != ExprKind::Slice) return get_item(obj, eval(*g.key, frame));
      const auto& s = static_cast<const SliceExpr&>(*g.key);
      auto bound = [&](const ExprPtr& b) { return b ? eval(*b, frame) : Value::none(); };
      Value start = bound(s.start), stop = bound(s.stop), step = bound(s.step);
      if (obj.is_undefined()) raise_undefined(obj);
      if (auto r = slice(obj, start, stop, step)) return fresh(std::move(*r));
      return Value::undefined(object_type_repr(obj) + " has no element slice(...)");
    }
    case ExprKind::Slice: throw_error("slices are only valid inside []");
    case ExprKind::Call: {
      const auto& c = static_cast<const CallExpr&>(e);
      Value callee = eval(*c.callee, frame);
      CallArgs args;
      eval_args(c.args, frame, args);
      return fresh(call(callee, args));
    }
    case ExprKind::Filter: return eval_filter(static_cast<const FilterExpr&>(e), frame, nullptr);
    case ExprKind::Test: {
      const auto& t = static_cast<const TestExpr&>(e);
      Value input = eval(*t.input, frame);
      CallArgs args;
      eval_args(t.args, frame, args);
      return Value::boolean(apply_test(t.name, input, args));
    }
    case ExprKind::Neg: return negate(eval(*static_cast<const UnaryExpr&>(e).operand, frame));
    case ExprKind::Pos: return positive(eval(*static_cast<const UnaryExpr&>(e).operand, frame));
    case ExprKind::Not:
      return Value::boolean(!truthy(eval(*static_cast<const UnaryExpr&>(e).operand, frame)));
    case ExprKind::Binary: {
      const auto& b = static_cast<const BinaryExpr&>(e);
      Value l = eval(*b.left, frame);
      Value r = eval(*b.right, frame);
      return fresh(binary_op(*this, b.op, l, r));
    }
    case ExprKind::And: {  // returns an operand, like Python
      const auto& b = static_cast<const BinaryExpr&>(e);
      Value l = eval(*b.left, frame);
      return truthy(l) ? eval(*b.right, frame) : l;
    }
    case ExprKind::Or: {
      const auto& b = static_cast<const BinaryExpr&>(e);
      Value l = eval(*b.left, frame);
      return truthy(l) ? l : eval(*b.right, frame);
    }
    case ExprKind::Concat: {
      std::string s;
      for (const auto& p : static_cast<const ConcatExpr&>(e).parts) {
        s += to_str(eval(*p, frame));
        check_size(s.size());
      }
      return fresh(Value::string(std::move(s)));
    }
    case ExprKind::Compare: return eval_compare(static_cast<const CompareExpr&>(e), frame);
    case ExprKind::CondExpr: {
      const auto& c = static_cast<const CondExpr&>(e);
      if (truthy(eval(*c.test, frame))) return eval(*c.yes, frame);
      if (c.no) return eval(*c.no, frame);
      return Value::undefined("the inline if-expression evaluated to false and no else section was defined.");
    }
    case ExprKind::List:
    case ExprKind::Tuple: {
      std::vector<Value> items;
      for (const auto& i : static_cast<const ListExpr&>(e).items) items.push_back(eval(*i, frame));
      return fresh(Value::list(std::move(items), e.kind == ExprKind::Tuple));
    }
    case ExprKind::Dict: {
      auto d = std::make_shared<Dict>();
      for (const auto& [k, v] : static_cast<const DictExpr&>(e).items) {
        Value key = eval(*k, frame);
        d->set(key, eval(*v, frame));
      }
      return Value::dict(std::move(d));
    }
  }
  throw_error("unknown expression");
}

Value Interpreter::call(const Value& callee, CallArgs& args) {
  if (callee.is_undefined()) raise_undefined(callee);
  if (callee.is_object() && callee.as_object().callable()) return callee.as_object().call(*this, args);
  throw_error("'{}' object is not callable", type_name(callee));
}

Value Interpreter::apply_filter(const std::string& name, const Value& input, CallArgs& args) {
  if (FilterFn fn = find_filter(name)) return fn(*this, input, args);
  if (is_known_filter(name)) throw_error("the '{}' filter is not supported", name);
  throw_error("No filter named '{}'.", name);
}

bool Interpreter::apply_test(const std::string& name, const Value& input, CallArgs& args) {
  if (TestFn fn = find_test(name)) return fn(*this, input, args);
  if (is_known_test(name)) throw_error("the '{}' test is not supported", name);
  throw_error("No test named '{}'.", name);
}

Value Interpreter::get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::Undefined: raise_undefined(obj);
    case Value::Kind::Object:
      if (is_dunder(name)) return unsafe_attribute(obj, name);
      if (auto a = obj.as_object().attribute(name)) return *a;
      return Value::undefined(missing_attribute(obj, name));
    case Value::Kind::Dict:
      // Python attributes (the dict's methods) win over keys for `d.name`.
      if (auto m = builtin_attribute(obj, name)) return *m;
      if (const Value* v = obj.as_dict().find(name)) return *v;
      return Value::undefined(missing_attribute(obj, name));
    default:
      if (auto m = builtin_attribute(obj, name)) return *m;
      return Value::undefined(missing_attribute(obj, name));
  }
}

Value Interpreter::get_item(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::Undefined: raise_undefined(obj);
    case Value::Kind::Dict:
      if (!key.is_undefined() && (!key.is_list() || key.is_tuple())) {
        if (const Value* v = obj.as_dict().find(key)) return *v;
      }
      break;
    case Value::Kind::List:
    case Value::Kind::String:
      if (key.is_integral()) {
        int64_t i = key.as_int();
        if (obj.is_list()) {
          int64_t n = int64_t(obj.as_list().items.size());
          if (i < 0) i += n;
          if (i >= 0 && i < n) return obj.as_list().items[size_t(i)];
        } else {
          const std::string& s = obj.as_string();
          if (unicode::is_ascii(s)) {
            int64_t n = int64_t(s.size());
            if (i < 0) i += n;
            if (i >= 0 && i < n) return Value::string(std::string(1, s[size_t(i)]));
          } else {
            std::u32string w = unicode::decode(s);
            int64_t n = int64_t(w.size());
            if (i < 0) i += n;
            if (i >= 0 && i < n) return Value::string(unicode::encode(w.substr(size_t(i), 1)));
          }
        }
      }
      break;
    default: break;
  }
  // obj[key] failed: a string key falls back to the attribute, as in Jinja's getitem.
  if (key.is_string()) {
    const std::string& name = key.as_string();
    if (obj.is_object()) {
      if (is_dunder(name)) return unsafe_attribute(obj, name);
      if (auto a = obj.as_object().attribute(name)) return *a;
    } else if (auto m = builtin_attribute(obj, name)) {
      return *m;
    }
    return Value::undefined(missing_attribute(obj, name));
  }
  return Value::undefined(object_type_repr(obj) + " has no element " + repr(key));
}

}  // namespace apus::jinja
