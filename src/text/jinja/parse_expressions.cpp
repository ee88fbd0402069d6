// Expressions with Jinja2's precedence levels, from jinja2/parser.py: condexpr < or < and < not
// < comparisons < + - < ~ < * / // % < ** < unary, postfix ([], ., calls), filters and tests.
#include "text/jinja/parser_internal.h"

namespace apus::jinja {

ExprPtr Parser::parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

ExprPtr Parser::parse_condexpr() {
  DepthGuard guard(*this);
  uint32_t off = cur().offset;
  ExprPtr expr = parse_or();
  ChainDepth chain(*this);
  while (skip_name("if")) {
    chain.link();
    ExprPtr test = parse_or();
    ExprPtr no = skip_name("else") ? parse_condexpr() : nullptr;
    expr = std::make_unique<CondExpr>(off, std::move(test), std::move(expr), std::move(no));
    off = cur().offset;
  }
  return expr;
}

ExprPtr Parser::parse_or() {
  uint32_t off = cur().offset;
  ExprPtr left = parse_and();
  ChainDepth chain(*this);
  while (skip_name("or")) {
    chain.link();
    left = std::make_unique<BinaryExpr>(ExprKind::Or, off, BinOp::Add, std::move(left), parse_and());
  }
  return left;
}

ExprPtr Parser::parse_and() {
  uint32_t off = cur().offset;
  ExprPtr left = parse_not();
  ChainDepth chain(*this);
  while (skip_name("and")) {
    chain.link();
    left = std::make_unique<BinaryExpr>(ExprKind::And, off, BinOp::Add, std::move(left), parse_not());
  }
  return left;
}

ExprPtr Parser::parse_not() {
  if (cur().is_name("not")) {
    DepthGuard guard(*this);
    uint32_t off = next().offset;
    return std::make_unique<UnaryExpr>(ExprKind::Not, off, parse_not());
  }
  return parse_compare();
}

ExprPtr Parser::parse_compare() {
  uint32_t off = cur().offset;
  ExprPtr expr = parse_math1();
  std::unique_ptr<CompareExpr> cmp;
  while (true) {
    CmpOp op;
    const Token& t = cur();
    if (t.is_op("=="))
      op = CmpOp::Eq;
    else if (t.is_op("!="))
      op = CmpOp::Ne;
    else if (t.is_op("<"))
      op = CmpOp::Lt;
    else if (t.is_op("<="))
      op = CmpOp::Le;
    else if (t.is_op(">"))
      op = CmpOp::Gt;
    else if (t.is_op(">="))
      op = CmpOp::Ge;
    else if (t.is_name("in"))
      op = CmpOp::In;
    else if (t.is_name("not") && look().is_name("in")) {
      next();
      op = CmpOp::NotIn;
    } else
      break;
    next();
    if (!cmp) cmp = std::make_unique<CompareExpr>(off, std::move(expr));
    cmp->rest.emplace_back(op, parse_math1());
  }
  if (cmp) return cmp;
  return expr;
}

ExprPtr Parser::parse_math1() {
  uint32_t off = cur().offset;
  ExprPtr left = parse_concat();
  ChainDepth chain(*this);
  while (cur().is_op("+") || cur().is_op("-")) {
    chain.link();
    BinOp op = next().text == "+" ? BinOp::Add : BinOp::Sub;
    left = std::make_unique<BinaryExpr>(ExprKind::Binary, off, op, std::move(left), parse_concat());
  }
  return left;
}

ExprPtr Parser::parse_concat() {
  uint32_t off = cur().offset;
  ExprPtr first = parse_math2();
  if (!cur().is_op("~")) return first;
  auto c = std::make_unique<ConcatExpr>(off);
  c->parts.push_back(std::move(first));
  while (skip_op("~")) c->parts.push_back(parse_math2());
  return c;
}

ExprPtr Parser::parse_math2() {
  uint32_t off = cur().offset;
  ExprPtr left = parse_pow();
  ChainDepth chain(*this);
  while (true) {
    BinOp op;
    if (cur().is_op("*"))
      op = BinOp::Mul;
    else if (cur().is_op("/"))
      op = BinOp::Div;
    else if (cur().is_op("//"))
      op = BinOp::FloorDiv;
    else if (cur().is_op("%"))
      op = BinOp::Mod;
    else
      break;
    next();
    chain.link();
    left = std::make_unique<BinaryExpr>(ExprKind::Binary, off, op, std::move(left), parse_pow());
  }
  return left;
}

ExprPtr Parser::parse_pow() {
  uint32_t off = cur().offset;
  ExprPtr left = parse_unary(true);
  ChainDepth chain(*this);
  while (skip_op("**")) {
    chain.link();
    left =
        std::make_unique<BinaryExpr>(ExprKind::Binary, off, BinOp::Pow, std::move(left), parse_unary(true));
  }
  return left;
}

ExprPtr Parser::parse_unary(bool with_filter) {
  DepthGuard guard(*this);
  uint32_t off = cur().offset;
  ExprPtr node;
  if (skip_op("-")) {
    node = std::make_unique<UnaryExpr>(ExprKind::Neg, off, parse_unary(false));
  } else if (skip_op("+")) {
    node = std::make_unique<UnaryExpr>(ExprKind::Pos, off, parse_unary(false));
  } else {
    node = parse_primary();
  }
  node = parse_postfix(std::move(node));
  if (with_filter) node = parse_filter_expr(std::move(node));
  return node;
}

ExprPtr Parser::parse_primary() {
  DepthGuard guard(*this);
  const Token& tok = cur();
  uint32_t off = tok.offset;
  switch (tok.type) {
    case TokenType::Name: {
      next();
      const std::string& n = tok.text;
      if (n == "true" || n == "True") return std::make_unique<ConstExpr>(off, Value::boolean(true));
      if (n == "false" || n == "False") return std::make_unique<ConstExpr>(off, Value::boolean(false));
      if (n == "none" || n == "None") return std::make_unique<ConstExpr>(off, Value::none());
      return std::make_unique<NameExpr>(off, n);
    }
    case TokenType::String: {
      std::string s;
      while (cur().type == TokenType::String) s += next().text;  // adjacent literals concatenate
      return std::make_unique<ConstExpr>(off, Value::string(std::move(s)));
    }
    case TokenType::Integer: next(); return std::make_unique<ConstExpr>(off, Value::integer(tok.int_value));
    case TokenType::Float: next(); return std::make_unique<ConstExpr>(off, Value::number(tok.float_value));
    case TokenType::Operator:
      if (tok.text == "(") {
        next();
        ExprPtr e = parse_tuple(false, true, {}, true);
        expect_op(")");
        return e;
      }
      if (tok.text == "[") return parse_list();
      if (tok.text == "{") return parse_dict();
      break;
    default: break;
  }
  fail("unexpected '" + describe(tok) + "'");
}

bool Parser::is_tuple_end(std::initializer_list<std::string_view> extra_end) const {
  const Token& t = cur();
  if (t.type == TokenType::VariableEnd || t.type == TokenType::BlockEnd || t.is_op(")")) return true;
  for (auto n : extra_end)
    if (t.is_name(n)) return true;
  return false;
}

ExprPtr Parser::parse_tuple(bool simplified, bool with_condexpr,
                            std::initializer_list<std::string_view> extra_end, bool explicit_parens) {
  uint32_t off = cur().offset;
  std::vector<ExprPtr> items;
  bool is_tuple = false;
  while (true) {
    if (!items.empty()) expect_op(",");
    if (is_tuple_end(extra_end)) break;
    items.push_back(simplified ? parse_primary() : parse_expression(with_condexpr));
    if (cur().is_op(",")) {
      is_tuple = true;
    } else {
      break;
    }
  }
  if (!is_tuple) {
    if (!items.empty()) return std::move(items[0]);
    if (!explicit_parens) fail("Expected an expression, got '" + describe(cur()) + "'");
  }
  auto t = std::make_unique<ListExpr>(ExprKind::Tuple, off);
  t->items = std::move(items);
  return t;
}

ExprPtr Parser::parse_list() {
  auto l = std::make_unique<ListExpr>(ExprKind::List, expect_op("[").offset);
  while (!cur().is_op("]")) {
    if (!l->items.empty()) expect_op(",");
    if (cur().is_op("]")) break;
    l->items.push_back(parse_expression(true));
  }
  expect_op("]");
  return l;
}

ExprPtr Parser::parse_dict() {
  auto d = std::make_unique<DictExpr>(expect_op("{").offset);
  while (!cur().is_op("}")) {
    if (!d->items.empty()) expect_op(",");
    if (cur().is_op("}")) break;
    ExprPtr key = parse_expression(true);
    expect_op(":");
    d->items.emplace_back(std::move(key), parse_expression(true));
  }
  expect_op("}");
  return d;
}

ExprPtr Parser::parse_postfix(ExprPtr node) {
  ChainDepth chain(*this);
  while (true) {
    chain.link();
    if (cur().is_op(".") || cur().is_op("[")) {
      node = parse_subscript(std::move(node));
    } else if (cur().is_op("(")) {
      node = parse_call(std::move(node));
    } else {
      return node;
    }
  }
}

ExprPtr Parser::parse_filter_expr(ExprPtr node) {
  ChainDepth chain(*this);
  while (true) {
    chain.link();
    if (cur().is_op("|")) {
      node = parse_filter(std::move(node), false);
    } else if (cur().is_name("is")) {
      node = parse_test(std::move(node));
    } else if (cur().is_op("(")) {
      node = parse_call(std::move(node));
    } else {
      return node;
    }
  }
}

ExprPtr Parser::parse_subscript(ExprPtr node) {
  DepthGuard guard(*this);
  const Token& tok = next();
  if (tok.is_op(".")) {
    const Token& attr = next();
    if (attr.type == TokenType::Name)
      return std::make_unique<GetAttrExpr>(tok.offset, std::move(node), attr.text);
    if (attr.type != TokenType::Integer) fail_at(attr.offset, "expected name or number");
    return std::make_unique<GetItemExpr>(
        tok.offset, std::move(node),
        std::make_unique<ConstExpr>(attr.offset, Value::integer(attr.int_value)));
  }
  std::vector<ExprPtr> args;
  while (!cur().is_op("]")) {
    if (!args.empty()) expect_op(",");
    args.push_back(parse_subscribed());
  }
  expect_op("]");
  ExprPtr key;
  if (args.size() == 1) {
    key = std::move(args[0]);
  } else {
    auto t = std::make_unique<ListExpr>(ExprKind::Tuple, tok.offset);
    t->items = std::move(args);
    key = std::move(t);
  }
  return std::make_unique<GetItemExpr>(tok.offset, std::move(node), std::move(key));
}

ExprPtr Parser::parse_subscribed() {
  uint32_t off = cur().offset;
  ExprPtr start;
  if (!cur().is_op(":")) {
    ExprPtr e = parse_expression(true);
    if (!cur().is_op(":")) return e;
    start = std::move(e);
  }
  next();  // the first colon
  auto s = std::make_unique<SliceExpr>(off);
  s->start = std::move(start);
  if (!cur().is_op(":") && !cur().is_op("]") && !cur().is_op(",")) s->stop = parse_expression(true);
  if (skip_op(":") && !cur().is_op("]") && !cur().is_op(",")) s->step = parse_expression(true);
  return s;
}

void Parser::parse_call_args(Arguments& a) {
  uint32_t off = expect_op("(").offset;
  auto ensure = [&](bool ok) {
    if (!ok) fail_at(off, "invalid syntax for function call expression");
  };
  bool require_comma = false;
  while (!cur().is_op(")")) {
    if (require_comma) {
      expect_op(",");
      if (cur().is_op(")")) break;  // trailing comma
    }
    if (skip_op("*")) {
      ensure(!a.dyn_args && !a.dyn_kwargs);
      a.dyn_args = parse_expression(true);
    } else if (skip_op("**")) {
      ensure(!a.dyn_kwargs);
      a.dyn_kwargs = parse_expression(true);
    } else if (cur().type == TokenType::Name && look().is_op("=")) {
      ensure(!a.dyn_kwargs);
      std::string key = next().text;
      next();
      a.kwargs.emplace_back(std::move(key), parse_expression(true));
    } else {
      ensure(!a.dyn_args && !a.dyn_kwargs && a.kwargs.empty());
      a.args.push_back(parse_expression(true));
    }
    require_comma = true;
  }
  expect_op(")");
}

ExprPtr Parser::parse_call(ExprPtr node) {
  uint32_t off = node->offset;  // errors point at the start of the call, not at its '('
  auto c = std::make_unique<CallExpr>(off, std::move(node));
  parse_call_args(c->args);
  return c;
}

std::string Parser::parse_dotted_name() {
  std::string name = expect(TokenType::Name, "name").text;
  while (skip_op(".")) name += "." + expect(TokenType::Name, "name").text;
  return name;
}

ExprPtr Parser::parse_filter(ExprPtr node, bool start_inline) {
  ChainDepth chain(*this);
  while (cur().is_op("|") || start_inline) {
    chain.link();
    if (!start_inline) next();
    start_inline = false;
    uint32_t off = cur().offset;
    auto f = std::make_unique<FilterExpr>(off, std::move(node), parse_dotted_name());
    if (cur().is_op("(")) parse_call_args(f->args);
    node = std::move(f);
  }
  return node;
}

ExprPtr Parser::parse_test(ExprPtr node) {
  uint32_t off = next().offset;  // `is`
  bool negated = skip_name("not");
  auto t = std::make_unique<TestExpr>(off, std::move(node), parse_dotted_name());
  const Token& c = cur();
  if (c.is_op("(")) {
    parse_call_args(t->args);
  } else if ((c.type == TokenType::Name || c.type == TokenType::String || c.type == TokenType::Integer ||
              c.type == TokenType::Float || c.is_op("[") || c.is_op("{")) &&
             !c.is_name("else") && !c.is_name("or") && !c.is_name("and")) {
    if (c.is_name("is")) fail("You cannot chain multiple tests with is");
    t->args.args.push_back(parse_postfix(parse_primary()));
  }
  if (negated) return std::make_unique<UnaryExpr>(ExprKind::Not, off, std::move(t));
  return t;
}

}  // namespace apus::jinja
