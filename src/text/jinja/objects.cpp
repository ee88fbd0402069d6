#include "text/jinja/objects.h"

#include "text/jinja/template_error.h"

namespace apus::jinja {

std::string Namespace::repr() const {
  auto d = std::make_shared<Dict>(attrs_);
  return "<Namespace " + jinja::repr(Value::dict(std::move(d))) + ">";
}

std::optional<Value> Namespace::attribute(const std::string& name) {
  if (const Value* v = attrs_.find(name)) return *v;
  return std::nullopt;
}

ArgReader::ArgReader(std::string func, CallArgs& args, std::initializer_list<const char*> params)
    : bound_(params.size()), given_(params.size(), false) {
  if (args.args.size() > params.size())
    throw_error("{}() takes at most {} argument(s) ({} given)", func, params.size(), args.args.size());
  for (size_t i = 0; i < args.args.size(); ++i) {
    bound_[i] = args.args[i];
    given_[i] = true;
  }
  for (auto& [key, value] : args.kwargs) {
    size_t i = 0;
    for (const char* p : params) {
      if (key == p) break;
      ++i;
    }
    if (i == params.size()) throw_error("{}() got an unexpected keyword argument '{}'", func, key);
    if (given_[i]) throw_error("{}() got multiple values for argument '{}'", func, key);
    bound_[i] = value;
    given_[i] = true;
  }
}

}  // namespace apus::jinja
