// Python's operators on template values: arithmetic with int/float promotion and overflow
// checks, sequence concatenation and repetition, `in`, slicing and printf-style `%`.
#pragma once
#include <optional>
#include <string>

#include "text/jinja/ast.h"
#include "text/jinja/value.h"

namespace apus::jinja {

class Interpreter;

Value binary_op(Interpreter& in, BinOp op, const Value& a, const Value& b);
Value negate(const Value& v);
Value positive(const Value& v);
bool contains(const Value& container, const Value& item);  // `item in container`

// obj[start:stop:step] for strings, lists and tuples (code points for strings); nullopt when
// the value cannot be sliced or a bound is not an integer (Jinja then yields Undefined).
std::optional<Value> slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

// str % args (also the `format` filter).
std::string percent_format(Interpreter& in, const std::string& fmt, const Value& args);

}  // namespace apus::jinja
