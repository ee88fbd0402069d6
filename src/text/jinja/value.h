// The values templates compute with: Python's data model cut down to what chat templates use.
// Lists and dicts are shared (the sandbox never mutates them); namespaces are the one mutable
// object and, like macros and the loop variable, are reached through Object's attributes.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace apus::jinja {

class Value;
class Interpreter;
struct List;
class Dict;
class Object;

struct Undefined {
  // What UndefinedError says when the value is used (e.g. "'x' is undefined").
  std::shared_ptr<const std::string> message;
};

class Value {
 public:
  enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Object };

  Value() = default;  // undefined
  static Value undefined(std::string message);
  static Value none() { return Value(nullptr); }
  static Value boolean(bool b) { return Value(b); }
  static Value integer(int64_t i) { return Value(i); }
  static Value number(double d) { return Value(d); }
  static Value string(std::string s) { return Value(std::move(s)); }
  static Value list(std::vector<Value> items, bool is_tuple = false);
  static Value dict(std::shared_ptr<Dict> d) { return Value(std::move(d)); }
  static Value object(std::shared_ptr<Object> o) { return Value(std::move(o)); }

  Kind kind() const { return static_cast<Kind>(v_.index()); }
  bool is_undefined() const { return kind() == Kind::Undefined; }
  bool is_none() const { return kind() == Kind::None; }
  bool is_string() const { return kind() == Kind::String; }
  bool is_int() const { return kind() == Kind::Int; }
  bool is_float() const { return kind() == Kind::Float; }
  bool is_bool() const { return kind() == Kind::Bool; }
  bool is_list() const { return kind() == Kind::List; }
  bool is_dict() const { return kind() == Kind::Dict; }
  bool is_object() const { return kind() == Kind::Object; }
  bool is_tuple() const;
  // Python treats bool as an int subclass; these follow that.
  bool is_integral() const { return is_int() || is_bool(); }
  bool is_number() const { return is_int() || is_bool() || is_float(); }

  bool as_bool() const { return std::get<bool>(v_); }
  int64_t as_int() const { return is_bool() ? int64_t(as_bool()) : std::get<int64_t>(v_); }
  double as_float() const { return is_float() ? std::get<double>(v_) : double(as_int()); }
  const std::string& as_string() const { return std::get<std::string>(v_); }
  const List& as_list() const { return *std::get<std::shared_ptr<List>>(v_); }
  const Dict& as_dict() const { return *std::get<std::shared_ptr<Dict>>(v_); }
  Object& as_object() const { return *std::get<std::shared_ptr<Object>>(v_); }
  const std::shared_ptr<Object>& object_ptr() const { return std::get<std::shared_ptr<Object>>(v_); }
  const std::string& undefined_message() const;
  // Identity of a shared container, for Python's `is` (the sameas test).
  const void* identity() const;

 private:
  template <typename T>
  explicit Value(T v) : v_(std::move(v)) {}

  std::variant<Undefined, std::nullptr_t, bool, int64_t, double, std::string, std::shared_ptr<List>,
               std::shared_ptr<Dict>, std::shared_ptr<Object>>
      v_;
};

// Arguments of a call, filter or test, as written in the template.
struct CallArgs {
  std::vector<Value> args;
  std::vector<std::pair<std::string, Value>> kwargs;
};

struct List {
  std::vector<Value> items;
  bool is_tuple = false;  // only changes how it prints: (1, 2) instead of [1, 2]
};

// Insertion-ordered, like a Python dict. Keys are hashable values (strings, numbers, None, tuples).
class Dict {
 public:
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
  void set(const Value& key, Value value);
  size_t size() const { return entries_.size(); }
  const std::vector<std::pair<Value, Value>>& entries() const { return entries_; }

 private:
  std::vector<std::pair<Value, Value>> entries_;
  std::unordered_map<std::string, size_t> index_;  // hash_key(key) -> position
};

class Object {
 public:
  virtual ~Object() = default;
  virtual std::string type_name() const = 0;  // Python's type(x).__name__
  virtual std::string repr() const;
  // nullopt when the object has no such attribute (the caller then makes an Undefined).
  virtual std::optional<Value> attribute(const std::string& name);
  virtual bool callable() const { return false; }
  virtual Value call(Interpreter& in, CallArgs& args);
  // Drops references to other values; run when a render ends so reference cycles through
  // namespaces and macro closures do not leak.
  virtual void clear() {}
};

inline bool Value::is_tuple() const { return is_list() && as_list().is_tuple; }

// Python's bool(x), str(x), repr(x) and type(x).__name__.
bool truthy(const Value& v);
std::string to_str(const Value& v);
std::string repr(const Value& v);
std::string type_name(const Value& v);
std::string format_float(double d);  // float.__repr__: shortest round trip, "1.0", "1e-05"

// Python's ==, and <-style ordering (-1, 0, 1); ordering unrelated types raises TypeError's message.
bool equals(const Value& a, const Value& b);
int compare(const Value& a, const Value& b, std::string_view op);

// The key a dict indexes by; raises for unhashable values (lists, dicts). Equal numbers of
// different types (1, 1.0, True) share a key, as they do in Python.
std::string hash_key(const Value& v);

// What `for x in v` visits: list items, dict keys, string characters; Undefined is empty.
std::vector<Value> iterate(const Value& v);
// len(v) for values that have one; raises otherwise.
int64_t length(const Value& v);

[[noreturn]] void raise_undefined(const Value& v);

Value from_json(const nlohmann::ordered_json& j);

}  // namespace apus::jinja
