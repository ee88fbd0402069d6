// Walks the AST and renders it with Jinja2's runtime semantics: scoping (each loop iteration,
// macro call and block gets its own frame), undefined values, the sandbox's attribute rules.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "text/jinja/ast.h"
#include "text/jinja/jinja.h"
#include "text/jinja/value.h"

namespace apus::jinja {

// Variables of one scope. Lookups fall through to the parent, so a loop body sees the
// variables around it while its own assignments vanish when the iteration ends.
struct Frame {
  explicit Frame(std::shared_ptr<Frame> p) : parent(std::move(p)) {}
  const Value* find(std::string_view name) const;
  void set(const std::string& name, Value v);

  std::shared_ptr<Frame> parent;
  std::vector<std::pair<std::string, Value>> vars;  // few per scope: a vector beats a map
};
using FramePtr = std::shared_ptr<Frame>;

class Interpreter {
 public:
  Interpreter(const RenderLimits& limits, std::time_t now, bool utc);
  ~Interpreter();
  Interpreter(const Interpreter&) = delete;
  Interpreter& operator=(const Interpreter&) = delete;

  std::string render(const Body& body, const nlohmann::ordered_json& context);

  // Services for filters, tests and builtin functions.
  Value call(const Value& callee, CallArgs& args);
  Value apply_filter(const std::string& name, const Value& input, CallArgs& args);
  bool apply_test(const std::string& name, const Value& input, CallArgs& args);
  Value get_attr(const Value& obj, const std::string& name);  // Jinja's getattr (obj.name)
  Value get_item(const Value& obj, const Value& key);         // Jinja's getitem (obj[key])
  // Accounts work (1 unit ~ one loop iteration) against the render's budget.
  void charge(uint64_t units);
  // Fails when a string of this many bytes would exceed max_output_bytes.
  void check_size(size_t bytes) const;
  // Fails when a list of this many items would exceed max_loop_iterations.
  void check_items(size_t count) const;
  const RenderLimits& limits() const { return limits_; }
  std::time_t now() const { return now_; }
  bool clock_is_utc() const { return utc_; }
  // Objects that can close reference cycles (namespaces, macros) are cleared after the render.
  void track(const std::shared_ptr<Object>& obj);

  Value call_macro(const MacroDef& def, const FramePtr& closure, CallArgs& args);

  // Held while evaluating an expression or statement. Recursion through macros can nest
  // evaluation arbitrarily, so this fails cleanly before the C++ stack runs out: after
  // kMaxNesting levels or kMaxStackBytes of stack, whichever comes first (frames are much
  // larger in sanitizer builds). Rendering therefore needs about kMaxStackBytes of stack.
  class Nesting {
   public:
    static constexpr int kMaxNesting = 3000;
    static constexpr size_t kMaxStackBytes = size_t(1) << 20;
    explicit Nesting(Interpreter& in);
    ~Nesting() { --in_.nesting_; }
    Nesting(const Nesting&) = delete;
    Nesting& operator=(const Nesting&) = delete;

   private:
    Interpreter& in_;
  };

 private:
  enum class Flow { Normal, Break, Continue };

  Flow exec(const Body& body, const FramePtr& frame, std::string& out);
  Flow exec_stmt(const Stmt& s, const FramePtr& frame, std::string& out);
  Flow exec_for(const ForStmt& s, const FramePtr& frame, std::string& out);
  void assign(const Expr& target, const Value& value, const FramePtr& frame);
  void append(std::string& out, std::string_view text) const;

  Value eval(const Expr& e, const FramePtr& frame);
  Value eval_impl(const Expr& e, const FramePtr& frame);
  Value eval_filter(const FilterExpr& f, const FramePtr& frame, const Value* body);
  Value eval_compare(const CompareExpr& c, const FramePtr& frame);
  void eval_args(const Arguments& a, const FramePtr& frame, CallArgs& out);
  Value lookup(const std::string& name, const FramePtr& frame) const;
  // Charges and size-checks a freshly built value.
  Value fresh(Value v);

  RenderLimits limits_;
  std::time_t now_;
  bool utc_;
  int64_t iterations_ = 0;
  uint64_t work_ = 0;
  uint64_t work_budget_;
  int call_depth_ = 0;
  int nesting_ = 0;           // see Nesting
  uintptr_t stack_base_ = 0;  // frame address where render() started
  std::vector<std::weak_ptr<Object>> tracked_;
  size_t tracked_prune_at_ = 1024;
};

}  // namespace apus::jinja
