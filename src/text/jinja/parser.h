// Builds the AST from tokens following Jinja2's grammar and operator precedence, then runs the
// checks Jinja2 performs when compiling (unknown filters/tests, break outside a loop).
#pragma once
#include <vector>

#include "text/jinja/ast.h"
#include "text/jinja/lexer.h"

namespace apus::jinja {

// Throws TemplateError with the offset of the offending token.
Body parse(const std::vector<Token>& tokens);

}  // namespace apus::jinja
