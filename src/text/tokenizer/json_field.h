// A JSON value plus where it sits ("<file>: field 'model.merges[3]'"), so every load error names the
// file and the field a user has to fix.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.h"

namespace apus::tok {

using json = nlohmann::json;

class JsonField {
 public:
  JsonField(const json& value, std::string file, std::string path = "")
      : value_(&value), file_(std::move(file)), path_(std::move(path)) {}

  const json& value() const { return *value_; }
  const std::string& file() const { return file_; }
  const std::string& path() const { return path_; }

  // Required member (present and not null).
  JsonField operator[](std::string_view key) const {
    auto f = get(key);
    if (!f) fail_at(child_path(key), "is missing");
    return *f;
  }
  // Optional member: nullopt when absent or null.
  std::optional<JsonField> get(std::string_view key) const {
    if (!value_->is_object()) fail("expected an object, found " + std::string(value_->type_name()));
    auto it = value_->find(key);
    if (it == value_->end() || it->is_null()) return std::nullopt;
    return JsonField(*it, file_, child_path(key));
  }
  JsonField at(size_t i) const { return JsonField((*value_)[i], file_, path_ + "[" + std::to_string(i) + "]"); }
  size_t size() const { return value_->size(); }

  std::string str() const { return expect(value_->is_string(), "a string").get<std::string>(); }
  bool boolean() const { return expect(value_->is_boolean(), "a boolean").get<bool>(); }
  double number() const { return expect(value_->is_number(), "a number").get<double>(); }
  int64_t integer() const { return expect(value_->is_number_integer(), "an integer").get<int64_t>(); }
  const json& array() const { return expect(value_->is_array(), "an array"); }
  const json& object() const { return expect(value_->is_object(), "an object"); }

  std::string str_or(std::string_view key, std::string dflt) const {
    auto f = get(key);
    return f ? f->str() : std::move(dflt);
  }
  bool bool_or(std::string_view key, bool dflt) const {
    auto f = get(key);
    return f ? f->boolean() : dflt;
  }
  int64_t int_or(std::string_view key, int64_t dflt) const {
    auto f = get(key);
    return f ? f->integer() : dflt;
  }

  [[noreturn]] void fail(std::string_view what) const { fail_at(path_, what); }

 private:
  const json& expect(bool ok, std::string_view expected) const {
    if (!ok) fail(fmt::format("expected {}, found {}", expected, value_->type_name()));
    return *value_;
  }
  std::string child_path(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }
  [[noreturn]] void fail_at(const std::string& path, std::string_view what) const {
    if (path.empty()) apus::fail("{}: {}", file_, what);
    apus::fail("{}: field '{}' {}", file_, path, what);
  }

  const json* value_;
  std::string file_;
  std::string path_;
};

}  // namespace apus::tok
