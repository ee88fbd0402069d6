// The parsed template: expression and statement nodes mirroring Jinja2's nodes module.
// Every node keeps the source offset it came from so runtime errors can name line and column.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "text/jinja/value.h"

namespace apus::jinja {

// ---- expressions ----------------------------------------------------------------------------

// clang-format off
enum class ExprKind : uint8_t {
  Const, Name, NsRef, GetAttr, GetItem, Slice, Call, Filter, Test,
  Neg, Pos, Not, Binary, And, Or, Concat, Compare, CondExpr, List, Tuple, Dict,
};
// clang-format on

struct Expr {
  Expr(ExprKind k, uint32_t off) : kind(k), offset(off) {}
  virtual ~Expr() = default;
  ExprKind kind;
  uint32_t offset;
};
using ExprPtr = std::unique_ptr<Expr>;

struct ConstExpr : Expr {
  ConstExpr(uint32_t off, Value v) : Expr(ExprKind::Const, off), value(std::move(v)) {}
  Value value;
};

struct NameExpr : Expr {
  NameExpr(uint32_t off, std::string n) : Expr(ExprKind::Name, off), name(std::move(n)) {}
  std::string name;
};

// `ns.attr` as an assignment target of {% set %}.
struct NsRefExpr : Expr {
  NsRefExpr(uint32_t off, std::string n, std::string a)
      : Expr(ExprKind::NsRef, off), name(std::move(n)), attr(std::move(a)) {}
  std::string name, attr;
};

struct GetAttrExpr : Expr {
  GetAttrExpr(uint32_t off, ExprPtr o, std::string a)
      : Expr(ExprKind::GetAttr, off), object(std::move(o)), attr(std::move(a)) {}
  ExprPtr object;
  std::string attr;
};

struct GetItemExpr : Expr {
  GetItemExpr(uint32_t off, ExprPtr o, ExprPtr k)
      : Expr(ExprKind::GetItem, off), object(std::move(o)), key(std::move(k)) {}
  ExprPtr object, key;
};

struct SliceExpr : Expr {  // only as a GetItem key; missing bounds are null
  explicit SliceExpr(uint32_t off) : Expr(ExprKind::Slice, off) {}
  ExprPtr start, stop, step;
};

struct Arguments {
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  ExprPtr dyn_args;    // *args
  ExprPtr dyn_kwargs;  // **kwargs
};

struct CallExpr : Expr {
  CallExpr(uint32_t off, ExprPtr c) : Expr(ExprKind::Call, off), callee(std::move(c)) {}
  ExprPtr callee;
  Arguments args;
};

// `input | name(args)`. In filter blocks and `{% set x | f %}` the innermost input is null and
// stands for the rendered body.
struct FilterExpr : Expr {
  FilterExpr(uint32_t off, ExprPtr in, std::string n)
      : Expr(ExprKind::Filter, off), input(std::move(in)), name(std::move(n)) {}
  ExprPtr input;
  std::string name;
  Arguments args;
};

struct TestExpr : Expr {
  TestExpr(uint32_t off, ExprPtr in, std::string n)
      : Expr(ExprKind::Test, off), input(std::move(in)), name(std::move(n)) {}
  ExprPtr input;
  std::string name;
  Arguments args;
};

struct UnaryExpr : Expr {  // Neg, Pos, Not
  UnaryExpr(ExprKind k, uint32_t off, ExprPtr o) : Expr(k, off), operand(std::move(o)) {}
  ExprPtr operand;
};

enum class BinOp : uint8_t { Add, Sub, Mul, Div, FloorDiv, Mod, Pow };

struct BinaryExpr : Expr {  // Binary (with op), And, Or
  BinaryExpr(ExprKind k, uint32_t off, BinOp o, ExprPtr l, ExprPtr r)
      : Expr(k, off), op(o), left(std::move(l)), right(std::move(r)) {}
  BinOp op;
  ExprPtr left, right;
};

struct ConcatExpr : Expr {
  explicit ConcatExpr(uint32_t off) : Expr(ExprKind::Concat, off) {}
  std::vector<ExprPtr> parts;
};

enum class CmpOp : uint8_t { Eq, Ne, Lt, Le, Gt, Ge, In, NotIn };

struct CompareExpr : Expr {
  CompareExpr(uint32_t off, ExprPtr f) : Expr(ExprKind::Compare, off), first(std::move(f)) {}
  ExprPtr first;
  std::vector<std::pair<CmpOp, ExprPtr>> rest;
};

struct CondExpr : Expr {
  CondExpr(uint32_t off, ExprPtr t, ExprPtr y, ExprPtr n)
      : Expr(ExprKind::CondExpr, off), test(std::move(t)), yes(std::move(y)), no(std::move(n)) {}
  ExprPtr test, yes, no;  // `no` is null for `a if b`
};

struct ListExpr : Expr {  // List and Tuple
  ListExpr(ExprKind k, uint32_t off) : Expr(k, off) {}
  std::vector<ExprPtr> items;
};

struct DictExpr : Expr {
  explicit DictExpr(uint32_t off) : Expr(ExprKind::Dict, off) {}
  std::vector<std::pair<ExprPtr, ExprPtr>> items;
};

// ---- statements -----------------------------------------------------------------------------

// clang-format off
enum class StmtKind : uint8_t {
  Text, Print, If, For, Set, SetBlock, Macro, CallBlock, FilterBlock, With, Scope, Break, Continue,
};
// clang-format on

struct Stmt {
  Stmt(StmtKind k, uint32_t off) : kind(k), offset(off) {}
  virtual ~Stmt() = default;
  StmtKind kind;
  uint32_t offset;
};
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct TextStmt : Stmt {
  TextStmt(uint32_t off, std::string t) : Stmt(StmtKind::Text, off), text(std::move(t)) {}
  std::string text;
};

struct PrintStmt : Stmt {
  PrintStmt(uint32_t off, ExprPtr e) : Stmt(StmtKind::Print, off), expr(std::move(e)) {}
  ExprPtr expr;
};

struct IfStmt : Stmt {
  explicit IfStmt(uint32_t off) : Stmt(StmtKind::If, off) {}
  std::vector<std::pair<ExprPtr, Body>> branches;  // if and elifs
  Body else_body;
};

struct ForStmt : Stmt {
  explicit ForStmt(uint32_t off) : Stmt(StmtKind::For, off) {}
  ExprPtr target, iter, filter;  // filter: `for x in y if cond`, may be null
  Body body, else_body;
};

struct SetStmt : Stmt {
  SetStmt(uint32_t off, ExprPtr t, ExprPtr v)
      : Stmt(StmtKind::Set, off), target(std::move(t)), value(std::move(v)) {}
  ExprPtr target, value;
};

struct SetBlockStmt : Stmt {
  explicit SetBlockStmt(uint32_t off) : Stmt(StmtKind::SetBlock, off) {}
  ExprPtr target;
  ExprPtr filter;  // optional FilterExpr chain applied to the body
  Body body;
};

// A macro, or the body of a {% call %} block (which becomes the `caller` macro).
struct MacroDef {
  std::string name;
  uint32_t offset = 0;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // for the last defaults.size() params
  Body body;
  // Whether the body mentions these names: only then are extra arguments accepted.
  bool uses_caller = false, uses_varargs = false, uses_kwargs = false;
};

struct MacroStmt : Stmt {
  explicit MacroStmt(uint32_t off) : Stmt(StmtKind::Macro, off) {}
  MacroDef def;
};

struct CallBlockStmt : Stmt {
  explicit CallBlockStmt(uint32_t off) : Stmt(StmtKind::CallBlock, off) {}
  ExprPtr call;  // a CallExpr
  MacroDef caller;
};

struct FilterBlockStmt : Stmt {
  explicit FilterBlockStmt(uint32_t off) : Stmt(StmtKind::FilterBlock, off) {}
  ExprPtr filter;
  Body body;
};

struct WithStmt : Stmt {
  explicit WithStmt(uint32_t off) : Stmt(StmtKind::With, off) {}
  std::vector<ExprPtr> targets, values;
  Body body;
};

// A body rendered in its own scope: transformers' {% generation %} block.
struct ScopeStmt : Stmt {
  explicit ScopeStmt(uint32_t off) : Stmt(StmtKind::Scope, off) {}
  Body body;
};

struct LoopControlStmt : Stmt {  // Break, Continue
  LoopControlStmt(StmtKind k, uint32_t off) : Stmt(k, off) {}
};

}  // namespace apus::jinja
