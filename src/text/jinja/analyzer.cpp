// The checks Jinja2 makes when compiling a template, after parsing.
#include "text/jinja/builtins.h"
#include "text/jinja/parser_internal.h"

namespace apus::jinja {
namespace {

// Checks Jinja2 makes when compiling. Filters and tests must exist unless they sit in an `if`
// or conditional expression (a "soft" frame), where Jinja defers the error to when they run;
// break/continue need an enclosing loop. It also notes which special names macros use.
class Analyzer {
 public:
  void body(Body& b, bool soft, bool in_loop) {
    for (auto& s : b) stmt(*s, soft, in_loop);
  }

 private:
  void macro(MacroDef& def) {
    for (auto& d : def.defaults) expr(d.get(), false);
    std::vector<std::string> saved;
    saved.swap(names_);
    body(def.body, false, false);
    for (const auto& n : names_) {
      def.uses_caller |= n == "caller";
      def.uses_varargs |= n == "varargs";
      def.uses_kwargs |= n == "kwargs";
    }
    names_.insert(names_.end(), saved.begin(), saved.end());
  }

  void stmt(Stmt& s, bool soft, bool in_loop) {
    switch (s.kind) {
      case StmtKind::Text: break;
      case StmtKind::Print: expr(static_cast<PrintStmt&>(s).expr.get(), soft); break;
      case StmtKind::If:
        for (auto& [test, b] : static_cast<IfStmt&>(s).branches) {
          expr(test.get(), true);
          body(b, true, in_loop);
        }
        body(static_cast<IfStmt&>(s).else_body, true, in_loop);
        break;
      case StmtKind::For: {
        auto& f = static_cast<ForStmt&>(s);
        expr(f.iter.get(), soft);
        expr(f.filter.get(), false);
        body(f.body, false, true);
        body(f.else_body, false, in_loop);
        break;
      }
      case StmtKind::Set: expr(static_cast<SetStmt&>(s).value.get(), soft); break;
      case StmtKind::SetBlock:
        expr(static_cast<SetBlockStmt&>(s).filter.get(), false);
        body(static_cast<SetBlockStmt&>(s).body, false, in_loop);
        break;
      case StmtKind::Macro: macro(static_cast<MacroStmt&>(s).def); break;
      case StmtKind::CallBlock:
        expr(static_cast<CallBlockStmt&>(s).call.get(), soft);
        macro(static_cast<CallBlockStmt&>(s).caller);
        break;
      case StmtKind::FilterBlock:
        expr(static_cast<FilterBlockStmt&>(s).filter.get(), false);
        body(static_cast<FilterBlockStmt&>(s).body, false, in_loop);
        break;
      case StmtKind::With:
        for (auto& v : static_cast<WithStmt&>(s).values) expr(v.get(), soft);
        body(static_cast<WithStmt&>(s).body, false, in_loop);
        break;
      case StmtKind::Scope: body(static_cast<ScopeStmt&>(s).body, false, false); break;
      case StmtKind::Break:
      case StmtKind::Continue:
        if (!in_loop) {
          TemplateError e(s.kind == StmtKind::Break ? "'break' outside loop" : "'continue' outside loop");
          e.set_offset_if_unknown(s.offset);
          throw e;
        }
        break;
    }
  }

  void args(Arguments& a, bool soft) {
    for (auto& e : a.args) expr(e.get(), soft);
    for (auto& kv : a.kwargs) expr(kv.second.get(), soft);
    expr(a.dyn_args.get(), soft);
    expr(a.dyn_kwargs.get(), soft);
  }

  void expr(Expr* e, bool soft) {
    if (!e) return;
    switch (e->kind) {
      case ExprKind::Name: names_.push_back(static_cast<NameExpr*>(e)->name); break;
      case ExprKind::GetAttr: expr(static_cast<GetAttrExpr*>(e)->object.get(), soft); break;
      case ExprKind::GetItem:
        expr(static_cast<GetItemExpr*>(e)->object.get(), soft);
        expr(static_cast<GetItemExpr*>(e)->key.get(), soft);
        break;
      case ExprKind::Slice: {
        auto* s = static_cast<SliceExpr*>(e);
        expr(s->start.get(), soft);
        expr(s->stop.get(), soft);
        expr(s->step.get(), soft);
        break;
      }
      case ExprKind::Call:
        expr(static_cast<CallExpr*>(e)->callee.get(), soft);
        args(static_cast<CallExpr*>(e)->args, soft);
        break;
      case ExprKind::Filter: {
        auto* f = static_cast<FilterExpr*>(e);
        if (!soft && !is_known_filter(f->name)) unknown(e->offset, "filter", f->name);
        expr(f->input.get(), soft);
        args(f->args, soft);
        break;
      }
      case ExprKind::Test: {
        auto* t = static_cast<TestExpr*>(e);
        if (!soft && !is_known_test(t->name)) unknown(e->offset, "test", t->name);
        expr(t->input.get(), soft);
        args(t->args, soft);
        break;
      }
      case ExprKind::Neg:
      case ExprKind::Pos:
      case ExprKind::Not: expr(static_cast<UnaryExpr*>(e)->operand.get(), soft); break;
      case ExprKind::Binary:
      case ExprKind::And:
      case ExprKind::Or:
        expr(static_cast<BinaryExpr*>(e)->left.get(), soft);
        expr(static_cast<BinaryExpr*>(e)->right.get(), soft);
        break;
      case ExprKind::Concat:
        for (auto& p : static_cast<ConcatExpr*>(e)->parts) expr(p.get(), soft);
        break;
      case ExprKind::Compare:
        expr(static_cast<CompareExpr*>(e)->first.get(), soft);
        for (auto& r : static_cast<CompareExpr*>(e)->rest) expr(r.second.get(), soft);
        break;
      case ExprKind::CondExpr: {
        auto* c = static_cast<CondExpr*>(e);
        expr(c->test.get(), true);
        expr(c->yes.get(), true);
        expr(c->no.get(), true);
        break;
      }
      case ExprKind::List:
      case ExprKind::Tuple:
        for (auto& i : static_cast<ListExpr*>(e)->items) expr(i.get(), soft);
        break;
      case ExprKind::Dict:
        for (auto& [k, v] : static_cast<DictExpr*>(e)->items) {
          expr(k.get(), soft);
          expr(v.get(), soft);
        }
        break;
      case ExprKind::Const:
      case ExprKind::NsRef: break;
    }
  }

  [[noreturn]] static void unknown(uint32_t offset, const char* what, const std::string& name) {
    TemplateError e(fmt::format("No {} named '{}'.", what, name));
    e.set_offset_if_unknown(offset);
    throw e;
  }

  std::vector<std::string> names_;  // names loaded in the macro body being analyzed
};

}  // namespace

void analyze(Body& body) { Analyzer().body(body, false, false); }

}  // namespace apus::jinja
