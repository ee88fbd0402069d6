// The parser's internals, shared by the files that implement it: statements
// (parse_statements.cpp), expressions (parse_expressions.cpp) and the compile-time checks
// (analyzer.cpp). Only parser.h is meant to be included elsewhere.
#pragma once
#include <algorithm>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "text/jinja/ast.h"
#include "text/jinja/lexer.h"
#include "text/jinja/template_error.h"

namespace apus::jinja {

// Deeper nesting than this is refused rather than risking the parser's (or evaluator's) stack.
// Left-nested chains (a + b + c, x|f|g, a.b.c) count one level per link, since they nest in the
// AST just as parentheses do.
inline constexpr int kMaxParseDepth = 256;

std::string describe(const Token& t);

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : t_(tokens) {}

  Body parse_template() {
    Body body = subparse({});
    if (cur().type != TokenType::Eof) fail("unexpected '" + describe(cur()) + "'");
    return body;
  }

 private:
  // ---- token stream ----

  const Token& cur() const { return t_[pos_]; }
  const Token& look() const { return t_[std::min(pos_ + 1, t_.size() - 1)]; }
  const Token& next() {
    const Token& t = t_[pos_];
    if (pos_ + 1 < t_.size()) ++pos_;
    return t;
  }
  bool skip_op(std::string_view op) {
    if (!cur().is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(std::string_view name) {
    if (!cur().is_name(name)) return false;
    next();
    return true;
  }

  [[noreturn]] void fail(const std::string& msg) const { fail_at(cur().offset, msg); }
  [[noreturn]] static void fail_at(uint32_t offset, const std::string& msg) {
    TemplateError e(msg);
    e.set_offset_if_unknown(offset);
    throw e;
  }
  [[noreturn]] void fail_expected(const std::string& what) const {
    if (cur().type == TokenType::Eof) fail("unexpected end of template, expected '" + what + "'.");
    fail("expected token '" + what + "', got '" + describe(cur()) + "'");
  }
  const Token& expect(TokenType type, const char* what) {
    if (cur().type != type) fail_expected(what);
    return next();
  }
  const Token& expect_op(std::string_view op) {
    if (!cur().is_op(op)) fail_expected(std::string(op));
    return next();
  }
  const Token& expect_name(std::string_view name) {
    if (!cur().is_name(name)) fail_expected(std::string(name));
    return next();
  }

  // One level per link of a left-nested chain, released when the chain's parse function returns.
  class ChainDepth {
   public:
    explicit ChainDepth(Parser& p) : p_(p) {}
    ~ChainDepth() { p_.depth_ -= links_; }
    ChainDepth(const ChainDepth&) = delete;
    ChainDepth& operator=(const ChainDepth&) = delete;
    void link() {
      ++links_;
      if (++p_.depth_ > kMaxParseDepth)
        p_.fail("template nests more than " + std::to_string(kMaxParseDepth) + " levels deep");
    }

   private:
    Parser& p_;
    int links_ = 0;
  };

  class DepthGuard {
   public:
    explicit DepthGuard(Parser& p) : p_(p) {
      if (++p_.depth_ > kMaxParseDepth)
        p_.fail("template nests more than " + std::to_string(kMaxParseDepth) + " levels deep");
    }
    ~DepthGuard() { --p_.depth_; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;

   private:
    Parser& p_;
  };

  // ---- statements (parse_statements.cpp) ----

  bool at_end_tag(std::initializer_list<std::string_view> names) const;
  Body subparse(std::initializer_list<std::string_view> end_names);
  Body parse_statements(std::initializer_list<std::string_view> end_names, bool drop_needle);
  void parse_statement(Body& body);
  StmtPtr parse_for();
  StmtPtr parse_if();
  StmtPtr parse_set();
  void parse_signature(MacroDef& def);
  StmtPtr parse_macro();
  StmtPtr parse_call_block();
  StmtPtr parse_filter_block();
  StmtPtr parse_with();
  static bool assignable(const Expr& e);
  ExprPtr parse_assign_target(bool with_tuple, bool name_only,
                              std::initializer_list<std::string_view> extra_end, bool with_namespace);

  // ---- expressions (parse_expressions.cpp) ----

  ExprPtr parse_expression(bool with_condexpr);
  ExprPtr parse_condexpr();
  ExprPtr parse_or();
  ExprPtr parse_and();
  ExprPtr parse_not();
  ExprPtr parse_compare();
  ExprPtr parse_math1();
  ExprPtr parse_concat();
  ExprPtr parse_math2();
  ExprPtr parse_pow();
  ExprPtr parse_unary(bool with_filter);
  ExprPtr parse_primary();
  bool is_tuple_end(std::initializer_list<std::string_view> extra_end) const;
  ExprPtr parse_tuple(bool simplified, bool with_condexpr, std::initializer_list<std::string_view> extra_end,
                      bool explicit_parens);
  ExprPtr parse_list();
  ExprPtr parse_dict();
  ExprPtr parse_postfix(ExprPtr node);
  ExprPtr parse_filter_expr(ExprPtr node);
  ExprPtr parse_subscript(ExprPtr node);
  ExprPtr parse_subscribed();
  void parse_call_args(Arguments& a);
  ExprPtr parse_call(ExprPtr node);
  std::string parse_dotted_name();
  ExprPtr parse_filter(ExprPtr node, bool start_inline);
  ExprPtr parse_test(ExprPtr node);

  const std::vector<Token>& t_;
  size_t pos_ = 0;
  int depth_ = 0;
};

// Jinja2's compile-time checks on a parsed body (see analyzer.cpp).
void analyze(Body& body);

}  // namespace apus::jinja
