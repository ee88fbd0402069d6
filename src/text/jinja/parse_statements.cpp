// Statements: the template body, block tags and their bodies, following jinja2/parser.py.
#include "text/jinja/parser.h"
#include "text/jinja/parser_internal.h"

namespace apus::jinja {

std::string describe(const Token& t) {
  switch (t.type) {
    case TokenType::Name:
    case TokenType::Operator: return t.text;
    case TokenType::Data: return "template data / text";
    case TokenType::VariableBegin: return "begin of print statement";
    case TokenType::VariableEnd: return "end of print statement";
    case TokenType::BlockBegin: return "begin of statement block";
    case TokenType::BlockEnd: return "end of statement block";
    case TokenType::String: return "string";
    case TokenType::Integer: return "integer";
    case TokenType::Float: return "float";
    case TokenType::Eof: return "end of template";
  }
  return "token";
}

bool Parser::at_end_tag(std::initializer_list<std::string_view> names) const {
  for (auto n : names)
    if (cur().is_name(n)) return true;
  return false;
}

Body Parser::subparse(std::initializer_list<std::string_view> end_names) {
  DepthGuard guard(*this);
  Body body;
  while (cur().type != TokenType::Eof) {
    const Token& tok = cur();
    if (tok.type == TokenType::Data) {
      body.push_back(std::make_unique<TextStmt>(tok.offset, tok.text));
      next();
    } else if (tok.type == TokenType::VariableBegin) {
      next();
      uint32_t off = cur().offset;
      body.push_back(std::make_unique<PrintStmt>(off, parse_tuple(false, true, {}, false)));
      expect(TokenType::VariableEnd, "end of print statement");
    } else if (tok.type == TokenType::BlockBegin) {
      next();
      if (end_names.size() && at_end_tag(end_names)) return body;
      parse_statement(body);
      expect(TokenType::BlockEnd, "end of statement block");
    } else {
      fail("unexpected '" + describe(tok) + "'");
    }
  }
  return body;
}

// The body of a block statement, up to (not past) one of the end tags.
Body Parser::parse_statements(std::initializer_list<std::string_view> end_names, bool drop_needle) {
  skip_op(":");
  expect(TokenType::BlockEnd, "end of statement block");
  Body body = subparse(end_names);
  if (cur().type == TokenType::Eof) {
    std::string names;
    for (auto n : end_names) names += (names.empty() ? "'" : " or '") + std::string(n) + "'";
    fail("Unexpected end of template. Jinja was looking for the following tags: " + names + ".");
  }
  if (drop_needle) next();
  return body;
}

void Parser::parse_statement(Body& body) {
  const Token& tok = cur();
  if (tok.type != TokenType::Name) fail("tag name expected");
  const std::string& name = tok.text;
  uint32_t off = tok.offset;
  if (name == "for") return body.push_back(parse_for());
  if (name == "if") return body.push_back(parse_if());
  if (name == "set") return body.push_back(parse_set());
  if (name == "macro") return body.push_back(parse_macro());
  if (name == "call") return body.push_back(parse_call_block());
  if (name == "filter") return body.push_back(parse_filter_block());
  if (name == "with") return body.push_back(parse_with());
  if (name == "print") {
    next();
    bool first = true;
    while (cur().type != TokenType::BlockEnd) {
      if (!first) expect_op(",");
      first = false;
      uint32_t eoff = cur().offset;
      body.push_back(std::make_unique<PrintStmt>(eoff, parse_expression(true)));
    }
    return;
  }
  if (name == "break" || name == "continue") {
    next();
    return body.push_back(
        std::make_unique<LoopControlStmt>(name == "break" ? StmtKind::Break : StmtKind::Continue, off));
  }
  if (name == "generation") {  // transformers' assistant-mask tag: renders its body unchanged
    next();
    auto s = std::make_unique<ScopeStmt>(off);
    s->body = parse_statements({"endgeneration"}, true);
    return body.push_back(std::move(s));
  }
  for (const char* unsupported : {"block", "extends", "include", "import", "from", "autoescape"})
    if (name == unsupported) fail("the '" + name + "' tag is not supported in chat templates");
  fail("Encountered unknown tag '" + name + "'.");
}

StmtPtr Parser::parse_for() {
  auto s = std::make_unique<ForStmt>(next().offset);
  s->target = parse_assign_target(true, false, {"in"}, false);
  expect_name("in");
  s->iter = parse_tuple(false, false, {"recursive"}, false);
  if (skip_name("if")) s->filter = parse_expression(true);
  if (cur().is_name("recursive")) fail("recursive loops are not supported");
  s->body = parse_statements({"endfor", "else"}, false);
  if (next().text == "else") s->else_body = parse_statements({"endfor"}, true);
  return s;
}

StmtPtr Parser::parse_if() {
  auto s = std::make_unique<IfStmt>(next().offset);
  while (true) {
    ExprPtr test = parse_tuple(false, false, {}, false);
    Body body = parse_statements({"elif", "else", "endif"}, false);
    s->branches.emplace_back(std::move(test), std::move(body));
    const Token& tok = next();
    if (tok.text == "elif") continue;
    if (tok.text == "else") s->else_body = parse_statements({"endif"}, true);
    break;
  }
  return s;
}

StmtPtr Parser::parse_set() {
  uint32_t off = next().offset;
  ExprPtr target = parse_assign_target(true, false, {}, true);
  if (skip_op("="))
    return std::make_unique<SetStmt>(off, std::move(target), parse_tuple(false, true, {}, false));
  auto s = std::make_unique<SetBlockStmt>(off);
  s->target = std::move(target);
  s->filter = parse_filter(nullptr, false);
  s->body = parse_statements({"endset"}, true);
  return s;
}

void Parser::parse_signature(MacroDef& def) {
  expect_op("(");
  while (!cur().is_op(")")) {
    if (!def.params.empty()) expect_op(",");
    const Token& name = expect(TokenType::Name, "name");
    def.params.push_back(name.text);
    if (skip_op("=")) {
      def.defaults.push_back(parse_expression(true));
    } else if (!def.defaults.empty()) {
      fail("non-default argument follows default argument");
    }
  }
  expect_op(")");
}

StmtPtr Parser::parse_macro() {
  auto s = std::make_unique<MacroStmt>(next().offset);
  s->def.offset = s->offset;
  s->def.name = expect(TokenType::Name, "name").text;
  parse_signature(s->def);
  s->def.body = parse_statements({"endmacro"}, true);
  return s;
}

StmtPtr Parser::parse_call_block() {
  auto s = std::make_unique<CallBlockStmt>(next().offset);
  s->caller.name = "caller";
  s->caller.offset = s->offset;
  if (cur().is_op("(")) parse_signature(s->caller);
  s->call = parse_expression(true);
  if (s->call->kind != ExprKind::Call) fail_at(s->offset, "expected call");
  s->caller.body = parse_statements({"endcall"}, true);
  return s;
}

StmtPtr Parser::parse_filter_block() {
  auto s = std::make_unique<FilterBlockStmt>(next().offset);
  s->filter = parse_filter(nullptr, true);
  s->body = parse_statements({"endfilter"}, true);
  return s;
}

StmtPtr Parser::parse_with() {
  auto s = std::make_unique<WithStmt>(next().offset);
  while (cur().type != TokenType::BlockEnd) {
    if (!s->targets.empty()) expect_op(",");
    s->targets.push_back(parse_assign_target(true, false, {}, false));
    expect_op("=");
    s->values.push_back(parse_expression(true));
  }
  s->body = parse_statements({"endwith"}, true);
  return s;
}

bool Parser::assignable(const Expr& e) {
  if (e.kind == ExprKind::Name || e.kind == ExprKind::NsRef) return true;
  if (e.kind != ExprKind::Tuple) return false;
  for (const auto& item : static_cast<const ListExpr&>(e).items)
    if (!assignable(*item)) return false;
  return true;
}

ExprPtr Parser::parse_assign_target(bool with_tuple, bool name_only,
                                    std::initializer_list<std::string_view> extra_end, bool with_namespace) {
  uint32_t off = cur().offset;
  ExprPtr target;
  if (with_namespace && cur().type == TokenType::Name && look().is_op(".")) {
    std::string name = next().text;
    next();
    target = std::make_unique<NsRefExpr>(off, name, expect(TokenType::Name, "name").text);
  } else if (name_only) {
    target = std::make_unique<NameExpr>(off, expect(TokenType::Name, "name").text);
  } else {
    target = with_tuple ? parse_tuple(true, true, extra_end, false) : parse_primary();
  }
  if (!assignable(*target)) fail_at(off, "can't assign to this expression");
  return target;
}

Body parse(const std::vector<Token>& tokens) {
  Body body = Parser(tokens).parse_template();
  analyze(body);
  return body;
}

}  // namespace apus::jinja
