// Jinja2's filters over sequences and mappings (jinja2/filters.py): attribute paths, sorting,
// map/select, aggregation.
#include <algorithm>

#include "text/jinja/builtins.h"
#include "text/jinja/interpreter.h"
#include "text/jinja/objects.h"
#include "text/jinja/operators.h"
#include "text/jinja/strings.h"
#include "text/jinja/template_error.h"
#include "text/jinja/unicode.h"

namespace apus::jinja {
namespace {

// make_attrgetter: "a.b.0" looks up item by item (digits as integers), with getitem semantics.
Value get_path(Interpreter& in, Value item, const Value& attribute) {
  if (attribute.is_none()) return item;
  if (!attribute.is_string()) return in.get_item(item, attribute);
  for (const auto& part : pystr::split(attribute.as_string(), std::string("."), -1)) {
    bool digits =
        !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    item = in.get_item(
        item, digits ? Value::integer(std::strtoll(part.c_str(), nullptr, 10)) : Value::string(part));
  }
  return item;
}

Value ignore_case(const Value& v) { return v.is_string() ? Value::string(unicode::lower(v.as_string())) : v; }

// The sort key of one item: the attribute(s) it names ("age,name" gives a list), case-folded.
Value sort_key(Interpreter& in, const Value& item, const Value& attribute, bool case_sensitive) {
  auto fold = [&](const Value& v) { return case_sensitive ? v : ignore_case(v); };
  if (attribute.is_string() && attribute.as_string().find(',') != std::string::npos) {
    std::vector<Value> keys;
    for (const auto& a : pystr::split(attribute.as_string(), std::string(","), -1))
      keys.push_back(fold(get_path(in, item, Value::string(a))));
    return Value::list(std::move(keys));
  }
  return fold(get_path(in, item, attribute));
}

std::vector<Value> sorted(Interpreter& in, std::vector<Value> items, const Value& attribute,
                          bool case_sensitive, bool reverse) {
  std::vector<std::pair<Value, Value>> keyed;
  keyed.reserve(items.size());
  for (auto& item : items) keyed.emplace_back(sort_key(in, item, attribute, case_sensitive), std::move(item));
  // Stable, and reverse keeps equal items in their original order, as Python's sorted() does.
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
    return reverse ? compare(b.first, a.first, "<") < 0 : compare(a.first, b.first, "<") < 0;
  });
  std::vector<Value> out;
  for (auto& kv : keyed) out.push_back(std::move(kv.second));
  return out;
}

Value f_batch(Interpreter&, const Value& v, CallArgs& a) {
  ArgReader r("batch", a, {"linecount", "fill_with"});
  if (!r.get(0) || !r.get(0)->is_integral() || r.get(0)->as_int() <= 0)
    throw_error("batch() needs a positive linecount");
  size_t n = size_t(r.get(0)->as_int());
  std::vector<Value> out, row;
  for (auto& item : iterate(v)) {
    if (row.size() == n) out.push_back(Value::list(std::exchange(row, {})));
    row.push_back(std::move(item));
  }
  if (!row.empty()) {
    if (r.get(1) && !r.get(1)->is_none())
      while (row.size() < n) row.push_back(*r.get(1));
    out.push_back(Value::list(std::move(row)));
  }
  return Value::list(std::move(out));
}

Value f_length(Interpreter&, const Value& v, CallArgs&) { return Value::integer(length(v)); }

Value f_dictsort(Interpreter& in, const Value& v, CallArgs& a) {
  ArgReader r("dictsort", a, {"case_sensitive", "by", "reverse"});
  if (v.is_undefined()) raise_undefined(v);
  if (!v.is_dict()) throw_error("'{}' object has no attribute 'items'", type_name(v));
  std::string by = r.get(1) ? to_str(*r.get(1)) : "key";
  if (by != "key" && by != "value") throw_error("You can only sort by either \"key\" or \"value\"");
  std::vector<Value> pairs;
  for (const auto& [k, val] : v.as_dict().entries()) pairs.push_back(Value::list({k, val}, true));
  return Value::list(sorted(in, std::move(pairs), Value::integer(by == "key" ? 0 : 1), r.flag(0), r.flag(2)));
}

Value f_first(Interpreter&, const Value& v, CallArgs&) {
  if (v.is_list()) {
    const auto& items = v.as_list().items;
    return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
  }
  auto items = iterate(v);
  return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
}

Value f_last(Interpreter&, const Value& v, CallArgs&) {
  if (!v.is_undefined() && !v.is_list() && !v.is_string() && !v.is_dict())
    throw_error("'{}' object is not reversible", type_name(v));
  auto items = iterate(v);
  return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
}

Value f_items(Interpreter&, const Value& v, CallArgs&) {
  if (v.is_undefined()) return Value::list({});
  if (!v.is_dict()) throw_error("Can only get item pairs from a mapping.");
  std::vector<Value> out;
  for (const auto& [k, val] : v.as_dict().entries()) out.push_back(Value::list({k, val}, true));
  return Value::list(std::move(out));
}

Value f_join(Interpreter& in, const Value& v, CallArgs& a) {
  ArgReader r("join", a, {"d", "attribute"});
  std::string sep = r.get(0) ? to_str(*r.get(0)) : "";
  std::string out;
  bool first = true;
  for (const auto& item : iterate(v)) {
    if (!first) out += sep;
    first = false;
    out += to_str(r.get(1) ? get_path(in, item, *r.get(1)) : item);
    in.check_size(out.size());
  }
  return Value::string(std::move(out));
}

Value f_list(Interpreter&, const Value& v, CallArgs&) { return Value::list(iterate(v)); }

Value f_map(Interpreter& in, const Value& v, CallArgs& a) {
  std::vector<Value> out;
  if (!truthy(v)) return Value::list({});
  if (a.args.empty()) {
    std::optional<Value> attribute, dflt;
    for (auto& [k, val] : a.kwargs) {
      if (k == "attribute")
        attribute = val;
      else if (k == "default")
        dflt = val;
      else
        throw_error("Unexpected keyword argument '{}'", k);
    }
    if (!attribute) throw_error("map requires a filter argument");
    for (auto& item : iterate(v)) {
      Value x = get_path(in, item, *attribute);
      out.push_back(x.is_undefined() && dflt && !dflt->is_none() ? *dflt : x);
    }
    return Value::list(std::move(out));
  }
  std::string name = to_str(a.args[0]);
  CallArgs rest{std::vector<Value>(a.args.begin() + 1, a.args.end()), a.kwargs};
  for (auto& item : iterate(v)) {
    CallArgs call_args = rest;
    out.push_back(in.apply_filter(name, item, call_args));
  }
  return Value::list(std::move(out));
}

Value min_max(Interpreter& in, const Value& v, CallArgs& a, bool want_max) {
  ArgReader r(want_max ? "max" : "min", a, {"case_sensitive", "attribute"});
  auto items = iterate(v);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  Value attribute = r.get_or(1, Value::none());
  size_t best = 0;
  Value best_key = sort_key(in, items[0], attribute, r.flag(0));
  for (size_t i = 1; i < items.size(); ++i) {
    Value key = sort_key(in, items[i], attribute, r.flag(0));
    if (want_max ? compare(best_key, key, ">") < 0 : compare(key, best_key, "<") < 0) {
      best = i;
      best_key = std::move(key);
    }
  }
  return items[best];
}

Value f_max(Interpreter& in, const Value& v, CallArgs& a) { return min_max(in, v, a, true); }

Value f_min(Interpreter& in, const Value& v, CallArgs& a) { return min_max(in, v, a, false); }

// select / reject / selectattr / rejectattr.
Value select_items(Interpreter& in, const Value& v, CallArgs& a, bool keep, bool by_attr) {
  if (!truthy(v)) return Value::list({});
  size_t off = 0;
  Value attribute = Value::none();
  if (by_attr) {
    if (a.args.empty()) throw_error("Missing parameter for attribute name");
    attribute = a.args[0];
    off = 1;
  }
  std::optional<std::string> test;
  if (a.args.size() > off) test = to_str(a.args[off]);
  CallArgs rest{
      std::vector<Value>(a.args.begin() + std::ptrdiff_t(std::min(a.args.size(), off + 1)), a.args.end()),
      a.kwargs};
  std::vector<Value> out;
  for (auto& item : iterate(v)) {
    Value x = by_attr ? get_path(in, item, attribute) : item;
    bool pass;
    if (test) {
      CallArgs call_args = rest;
      pass = in.apply_test(*test, x, call_args);
    } else {
      pass = truthy(x);
    }
    if (pass == keep) out.push_back(std::move(item));
  }
  return Value::list(std::move(out));
}

Value f_select(Interpreter& in, const Value& v, CallArgs& a) { return select_items(in, v, a, true, false); }

Value f_reject(Interpreter& in, const Value& v, CallArgs& a) { return select_items(in, v, a, false, false); }

Value f_selectattr(Interpreter& in, const Value& v, CallArgs& a) {
  return select_items(in, v, a, true, true);
}

Value f_rejectattr(Interpreter& in, const Value& v, CallArgs& a) {
  return select_items(in, v, a, false, true);
}

Value f_reverse(Interpreter&, const Value& v, CallArgs&) {
  if (v.is_string()) {
    std::u32string w = unicode::decode(v.as_string());
    std::reverse(w.begin(), w.end());
    return Value::string(unicode::encode(w));
  }
  if (v.is_undefined()) raise_undefined(v);
  if (!v.is_list() && !v.is_dict()) throw_error("argument must be iterable");
  auto items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}

Value f_sort(Interpreter& in, const Value& v, CallArgs& a) {
  ArgReader r("sort", a, {"reverse", "case_sensitive", "attribute"});
  return Value::list(sorted(in, iterate(v), r.get_or(2, Value::none()), r.flag(1), r.flag(0)));
}

Value f_sum(Interpreter& in, const Value& v, CallArgs& a) {
  ArgReader r("sum", a, {"attribute", "start"});
  Value total = r.get_or(1, Value::integer(0));
  for (const auto& item : iterate(v))
    total = binary_op(in, BinOp::Add, total,
                      r.get(0) && !r.get(0)->is_none() ? get_path(in, item, *r.get(0)) : item);
  return total;
}

Value f_unique(Interpreter& in, const Value& v, CallArgs& a) {
  ArgReader r("unique", a, {"case_sensitive", "attribute"});
  Value attribute = r.get_or(1, Value::none());
  std::vector<Value> out;
  std::vector<Value> seen;
  for (auto& item : iterate(v)) {
    Value key = sort_key(in, item, attribute, r.flag(0));
    hash_key(key);  // unhashable keys fail as in Python
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); })) {
      seen.push_back(std::move(key));
      out.push_back(std::move(item));
    }
  }
  return Value::list(std::move(out));
}

}  // namespace

const FilterTable& sequence_filters() {
  // clang-format off
  static const FilterTable table = {
      {"batch", f_batch}, {"count", f_length}, {"dictsort", f_dictsort}, {"first", f_first},
      {"items", f_items}, {"join", f_join}, {"last", f_last}, {"length", f_length}, {"list", f_list},
      {"map", f_map}, {"max", f_max}, {"min", f_min}, {"reject", f_reject}, {"rejectattr", f_rejectattr},
      {"reverse", f_reverse}, {"select", f_select}, {"selectattr", f_selectattr}, {"sort", f_sort},
      {"sum", f_sum}, {"unique", f_unique},
  };
  // clang-format on
  return table;
}

}  // namespace apus::jinja
