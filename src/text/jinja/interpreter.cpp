// Statements, scopes, macros and the render limits. Expressions live in expressions.cpp.
#include "text/jinja/interpreter.h"

#include <algorithm>

#include "text/jinja/objects.h"
#include "text/jinja/template_error.h"

namespace apus::jinja {
namespace {

// The `loop` variable of a for loop; one object per loop, advanced each iteration.
class LoopObject : public Object, public std::enable_shared_from_this<LoopObject> {
 public:
  explicit LoopObject(std::vector<Value> items) : items_(std::move(items)) {}

  std::string type_name() const override { return "LoopContext"; }
  std::string repr() const override { return fmt::format("<LoopContext {}/{}>", index0_ + 1, items_.size()); }
  void clear() override { items_.clear(); }
  void advance(size_t index0) { index0_ = index0; }

  std::optional<Value> attribute(const std::string& name) override {
    int64_t i = int64_t(index0_), n = int64_t(items_.size());
    if (name == "index") return Value::integer(i + 1);
    if (name == "index0") return Value::integer(i);
    if (name == "revindex") return Value::integer(n - i);
    if (name == "revindex0") return Value::integer(n - i - 1);
    if (name == "first") return Value::boolean(i == 0);
    if (name == "last") return Value::boolean(i == n - 1);
    if (name == "length") return Value::integer(n);
    if (name == "depth") return Value::integer(1);
    if (name == "depth0") return Value::integer(0);
    if (name == "previtem")
      return i > 0 ? items_[size_t(i - 1)] : Value::undefined("there is no previous item");
    if (name == "nextitem")
      return i + 1 < n ? items_[size_t(i + 1)] : Value::undefined("there is no next item");
    if (name == "cycle") {
      auto self = shared_from_this();
      return Value::object(std::make_shared<NativeFunction>("cycle", [self](Interpreter&, CallArgs& a) {
        if (a.args.empty()) throw_error("no items for cycling given");
        return a.args[self->index0_ % a.args.size()];
      }));
    }
    if (name == "changed") {
      auto self = shared_from_this();
      return Value::object(std::make_shared<NativeFunction>("changed", [self](Interpreter&, CallArgs& a) {
        Value now = Value::list(a.args);
        bool changed = !self->last_changed_ || !equals(*self->last_changed_, now);
        if (changed) self->last_changed_ = now;
        return Value::boolean(changed);
      }));
    }
    return std::nullopt;
  }

 private:
  std::vector<Value> items_;
  size_t index0_ = 0;
  std::optional<Value> last_changed_;
};

class MacroObject : public Object {
 public:
  MacroObject(const MacroDef* def, FramePtr closure) : def_(def), closure_(std::move(closure)) {}

  std::string type_name() const override { return "Macro"; }
  std::string repr() const override { return "<Macro '" + def_->name + "'>"; }
  bool callable() const override { return true; }
  Value call(Interpreter& in, CallArgs& args) override {
    if (!closure_) throw_error("macro '{}' called after its template finished rendering", def_->name);
    return in.call_macro(*def_, closure_, args);
  }
  std::optional<Value> attribute(const std::string& name) override {
    if (name == "name") return Value::string(def_->name);
    if (name == "arguments") {
      std::vector<Value> params;
      for (const auto& p : def_->params) params.push_back(Value::string(p));
      return Value::list(std::move(params), true);
    }
    return std::nullopt;
  }
  void clear() override { closure_.reset(); }

 private:
  const MacroDef* def_;
  FramePtr closure_;
};

}  // namespace

Interpreter::Nesting::Nesting(Interpreter& in) : in_(in) {
  ++in_.nesting_;
  auto here = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  bool deep_stack = in_.stack_base_ > here && in_.stack_base_ - here > kMaxStackBytes;
  if (in_.nesting_ > kMaxNesting || deep_stack) {
    --in_.nesting_;
    throw_error("template evaluation nests too deeply (more than {} levels or {} KiB of stack)", kMaxNesting,
                kMaxStackBytes >> 10);
  }
}

const Value* Frame::find(std::string_view name) const {
  for (const Frame* f = this; f; f = f->parent.get())
    for (const auto& [k, v] : f->vars)
      if (k == name) return &v;
  return nullptr;
}

void Frame::set(const std::string& name, Value v) {
  for (auto& [k, old] : vars) {
    if (k == name) {
      old = std::move(v);
      return;
    }
  }
  vars.emplace_back(name, std::move(v));
}

Interpreter::Interpreter(const RenderLimits& limits, std::time_t now, bool utc)
    : limits_(limits),
      now_(now),
      utc_(utc),
      work_budget_(uint64_t(std::max<int64_t>(limits.max_loop_iterations, 1)) * 64) {}

Interpreter::~Interpreter() {
  for (auto& weak : tracked_)
    if (auto obj = weak.lock()) obj->clear();
}

void Interpreter::track(const std::shared_ptr<Object>& obj) {
  if (tracked_.size() >= tracked_prune_at_) {
    std::erase_if(tracked_, [](const std::weak_ptr<Object>& w) { return w.expired(); });
    tracked_prune_at_ = std::max<size_t>(1024, tracked_.size() * 2);
  }
  tracked_.push_back(obj);
}

void Interpreter::charge(uint64_t units) {
  work_ += units;
  if (work_ > work_budget_)
    throw_error("template exceeded its work budget (64 x max_loop_iterations = {} units)", work_budget_);
}

void Interpreter::check_size(size_t bytes) const {
  if (bytes > limits_.max_output_bytes)
    throw_error("template built a string longer than max_output_bytes ({})", limits_.max_output_bytes);
}

void Interpreter::check_items(size_t count) const {
  if (count > uint64_t(std::max<int64_t>(limits_.max_loop_iterations, 0)))
    throw_error("template built a list longer than max_loop_iterations ({})", limits_.max_loop_iterations);
}

void Interpreter::append(std::string& out, std::string_view text) const {
  if (out.size() + text.size() > limits_.max_output_bytes)
    throw_error("template output exceeds max_output_bytes ({})", limits_.max_output_bytes);
  out += text;
}

std::string Interpreter::render(const Body& body, const nlohmann::ordered_json& context) {
  if (!context.is_object() && !context.is_null())
    throw TemplateError("the template context must be a JSON object");
  stack_base_ = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  auto root = std::make_shared<Frame>(nullptr);
  if (context.is_object())
    for (const auto& [key, value] : context.items()) root->set(key, from_json(value));
  std::string out;
  exec(body, root, out);
  return out;
}

Interpreter::Flow Interpreter::exec(const Body& body, const FramePtr& frame, std::string& out) {
  for (const auto& s : body) {
    Flow f = exec_stmt(*s, frame, out);
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

Interpreter::Flow Interpreter::exec_stmt(const Stmt& s, const FramePtr& frame, std::string& out) try {
  Nesting nesting(*this);
  switch (s.kind) {
    case StmtKind::Text: append(out, static_cast<const TextStmt&>(s).text); break;
    case StmtKind::Print: append(out, to_str(eval(*static_cast<const PrintStmt&>(s).expr, frame))); break;
    case StmtKind::If: {
      const auto& st = static_cast<const IfStmt&>(s);
      for (const auto& [test, body] : st.branches)
        if (truthy(eval(*test, frame))) return exec(body, frame, out);
      return exec(st.else_body, frame, out);
    }
    case StmtKind::For: return exec_for(static_cast<const ForStmt&>(s), frame, out);
    case StmtKind::Set: {
      const auto& st = static_cast<const SetStmt&>(s);
      assign(*st.target, eval(*st.value, frame), frame);
      break;
    }
    case StmtKind::SetBlock: {
      const auto& st = static_cast<const SetBlockStmt&>(s);
      auto inner = std::make_shared<Frame>(frame);
      std::string buf;
      Flow f = exec(st.body, inner, buf);
      if (f != Flow::Normal) return f;
      Value v = Value::string(std::move(buf));
      if (st.filter) v = eval_filter(static_cast<const FilterExpr&>(*st.filter), inner, &v);
      assign(*st.target, v, frame);
      break;
    }
    case StmtKind::Macro: {
      const auto& def = static_cast<const MacroStmt&>(s).def;
      auto m = std::make_shared<MacroObject>(&def, frame);
      track(m);
      frame->set(def.name, Value::object(std::move(m)));
      break;
    }
    case StmtKind::CallBlock: {
      const auto& st = static_cast<const CallBlockStmt&>(s);
      const auto& call_expr = static_cast<const CallExpr&>(*st.call);
      auto caller = std::make_shared<MacroObject>(&st.caller, frame);
      track(caller);
      Value callee = eval(*call_expr.callee, frame);
      CallArgs args;
      eval_args(call_expr.args, frame, args);
      args.kwargs.emplace_back("caller", Value::object(std::move(caller)));
      append(out, to_str(call(callee, args)));
      break;
    }
    case StmtKind::FilterBlock: {
      const auto& st = static_cast<const FilterBlockStmt&>(s);
      auto inner = std::make_shared<Frame>(frame);
      std::string buf;
      Flow f = exec(st.body, inner, buf);
      if (f != Flow::Normal) return f;
      Value body = Value::string(std::move(buf));
      append(out, to_str(eval_filter(static_cast<const FilterExpr&>(*st.filter), inner, &body)));
      break;
    }
    case StmtKind::With: {
      const auto& st = static_cast<const WithStmt&>(s);
      std::vector<Value> values;
      for (const auto& v : st.values) values.push_back(eval(*v, frame));
      auto inner = std::make_shared<Frame>(frame);
      for (size_t i = 0; i < values.size(); ++i) assign(*st.targets[i], values[i], inner);
      return exec(st.body, inner, out);
    }
    case StmtKind::Scope: {
      std::string buf;
      exec(static_cast<const ScopeStmt&>(s).body, std::make_shared<Frame>(frame), buf);
      append(out, buf);
      break;
    }
    case StmtKind::Break: return Flow::Break;
    case StmtKind::Continue: return Flow::Continue;
  }
  return Flow::Normal;
} catch (TemplateError& e) {
  e.set_offset_if_unknown(s.offset);
  throw;
}

Interpreter::Flow Interpreter::exec_for(const ForStmt& s, const FramePtr& frame, std::string& out) {
  std::vector<Value> items = iterate(eval(*s.iter, frame));
  if (s.filter) {
    // `for x in y if cond`: Jinja filters first, so loop.length and loop.last see only kept items.
    std::vector<Value> kept;
    for (auto& item : items) {
      if (++iterations_ > limits_.max_loop_iterations)
        throw_error("template exceeded max_loop_iterations ({})", limits_.max_loop_iterations);
      auto test_frame = std::make_shared<Frame>(frame);
      assign(*s.target, item, test_frame);
      if (truthy(eval(*s.filter, test_frame))) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  // Jinja runs `else` unless an iteration ran to its end: a break (or continue) in the last
  // iteration that got that far leaves it armed, a quirk templates can observe.
  bool run_else = true;
  size_t n = items.size();
  auto loop = std::make_shared<LoopObject>(items);
  Value loop_value = Value::object(loop);
  for (size_t i = 0; i < n; ++i) {
    if (++iterations_ > limits_.max_loop_iterations)
      throw_error("template exceeded max_loop_iterations ({})", limits_.max_loop_iterations);
    charge(1);
    loop->advance(i);
    // A fresh frame per iteration: assignments in the body do not carry over (Jinja semantics).
    auto iter_frame = std::make_shared<Frame>(frame);
    assign(*s.target, items[i], iter_frame);
    iter_frame->set("loop", loop_value);
    Flow f = exec(s.body, iter_frame, out);
    if (f == Flow::Break) break;
    if (f == Flow::Normal) run_else = false;
  }
  if (run_else) return exec(s.else_body, std::make_shared<Frame>(frame), out);
  return Flow::Normal;
}

void Interpreter::assign(const Expr& target, const Value& value, const FramePtr& frame) {
  switch (target.kind) {
    case ExprKind::Name: frame->set(static_cast<const NameExpr&>(target).name, value); return;
    case ExprKind::NsRef: {
      const auto& ref = static_cast<const NsRefExpr&>(target);
      const Value* ns = frame->find(ref.name);
      Namespace* obj = ns && ns->is_object() ? dynamic_cast<Namespace*>(&ns->as_object()) : nullptr;
      if (!obj) throw_error("cannot assign attribute on non-namespace object");
      obj->set(ref.attr, value);
      return;
    }
    case ExprKind::Tuple: {
      const auto& targets = static_cast<const ListExpr&>(target).items;
      if (!value.is_list() && !value.is_string() && !value.is_dict() && !value.is_undefined())
        throw_error("cannot unpack non-iterable {} object", type_name(value));
      std::vector<Value> items = iterate(value);
      if (items.size() < targets.size())
        throw_error("not enough values to unpack (expected {}, got {})", targets.size(), items.size());
      if (items.size() > targets.size())
        throw_error("too many values to unpack (expected {})", targets.size());
      for (size_t i = 0; i < targets.size(); ++i) assign(*targets[i], items[i], frame);
      return;
    }
    default: throw_error("cannot assign to this expression");
  }
}

Value Interpreter::call_macro(const MacroDef& def, const FramePtr& closure, CallArgs& args) {
  if (call_depth_ >= limits_.max_call_depth)
    throw_error("macro calls nest deeper than max_call_depth ({})", limits_.max_call_depth);
  charge(1);
  struct DepthScope {
    int& depth;
    explicit DepthScope(int& d) : depth(d) { ++depth; }
    ~DepthScope() { --depth; }
  } depth_scope(call_depth_);

  size_t n = def.params.size();
  std::vector<std::optional<Value>> bound(n);
  for (size_t i = 0; i < n && i < args.args.size(); ++i) bound[i] = args.args[i];
  auto extra = std::make_shared<Dict>();
  std::optional<Value> caller;
  for (auto& [key, value] : args.kwargs) {
    size_t j = 0;
    while (j < n && def.params[j] != key) ++j;
    if (j < n && j >= args.args.size()) {
      bound[j] = value;
    } else if (key == "caller" && def.uses_caller && j == n) {
      caller = value;
    } else if (def.uses_kwargs) {
      extra->set(Value::string(key), value);
    } else if (key == "caller") {
      throw_error(
          "macro '{}' was invoked with two values for the special caller argument. This is most likely a "
          "bug.",
          def.name);
    } else {
      throw_error("macro '{}' takes no keyword argument '{}'", def.name, key);
    }
  }
  std::vector<Value> varargs;
  if (args.args.size() > n) {
    if (!def.uses_varargs) throw_error("macro '{}' takes not more than {} argument(s)", def.name, n);
    varargs.assign(args.args.begin() + std::ptrdiff_t(n), args.args.end());
  }

  auto frame = std::make_shared<Frame>(closure);
  size_t first_default = n - def.defaults.size();
  for (size_t i = 0; i < n; ++i) {
    Value v;
    if (bound[i]) {
      v = *bound[i];
    } else if (i >= first_default) {
      v = eval(*def.defaults[i - first_default], frame);
    } else {
      v = Value::undefined("parameter '" + def.params[i] + "' was not provided");
    }
    frame->set(def.params[i], std::move(v));
  }
  if (def.uses_varargs) frame->set("varargs", Value::list(std::move(varargs), true));
  if (def.uses_kwargs) frame->set("kwargs", Value::dict(std::move(extra)));
  bool explicit_caller = std::find(def.params.begin(), def.params.end(), "caller") != def.params.end();
  if (def.uses_caller && !explicit_caller)
    frame->set("caller", caller ? *caller : Value::undefined("No caller defined"));

  std::string out;
  exec(def.body, frame, out);
  return Value::string(std::move(out));
}

}  // namespace apus::jinja
