// Objects with behaviour shared by the interpreter and the builtins: namespace() results and
// native functions (globals and methods bound to a value).
#pragma once
#include <functional>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "text/jinja/value.h"

namespace apus::jinja {

// namespace(...): the only value a sandboxed template may change, via {% set ns.attr = v %}.
class Namespace : public Object {
 public:
  std::string type_name() const override { return "Namespace"; }
  std::string repr() const override;
  std::optional<Value> attribute(const std::string& name) override;
  void set(const std::string& name, Value v) { attrs_.set(Value::string(name), std::move(v)); }
  void clear() override { attrs_ = Dict(); }

 private:
  Dict attrs_;
};

class NativeFunction : public Object {
 public:
  using Fn = std::function<Value(Interpreter&, CallArgs&)>;
  NativeFunction(std::string name, Fn fn, std::string type = "builtin_function_or_method")
      : name_(std::move(name)), type_(std::move(type)), fn_(std::move(fn)) {}
  std::string type_name() const override { return type_; }
  std::string repr() const override { return "<built-in function " + name_ + ">"; }
  bool callable() const override { return true; }
  Value call(Interpreter& in, CallArgs& args) override { return fn_(in, args); }

 private:
  std::string name_, type_;
  Fn fn_;
};

// Binding helpers for native functions: Python-style positional-or-keyword parameters.
class ArgReader {
 public:
  // `params` names the parameters in order; extra positional or unknown keyword arguments fail
  // with a message naming `func`.
  ArgReader(std::string func, CallArgs& args, std::initializer_list<const char*> params);
  // The argument for parameter i (by position or keyword), or nullopt when not passed.
  const Value* get(size_t i) const { return given_[i] ? &bound_[i] : nullptr; }
  Value get_or(size_t i, Value fallback) const { return get(i) ? *get(i) : std::move(fallback); }
  bool flag(size_t i) const { return given_[i] && truthy(bound_[i]); }  // a boolean option

 private:
  std::vector<Value> bound_;
  std::vector<bool> given_;
};

}  // namespace apus::jinja
