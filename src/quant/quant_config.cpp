#include "quant/quant_config.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace apus {

namespace {

using nlohmann::json;

template <typename T>
T field(const json& q, const char* key, T fallback, const std::string& source) {
  auto it = q.find(key);
  if (it == q.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    fail("{}: quantization_config.{} has the wrong type ({})", source, key, it->dump());
  }
}

void check_group_size(int64_t g, const std::string& source) {
  // Groups are cut into 32-column blocks by the kernels (see README.md).
  APUS_CHECK(g == -1 || (g >= 32 && g % 32 == 0),
             "{}: quantization_config.group_size {} is not supported (supported: -1 or a multiple of 32, "
             "e.g. 32, 64, 128)", source, g);
}

}  // namespace

std::string QuantConfig::describe() const {
  std::string s = fmt::format("{} {}-bit, group {}", method == QuantMethod::kGptq ? "gptq" : "awq", bits,
                              group_size);
  if (!sym) s += ", asymmetric";
  if (desc_act) s += ", desc_act";
  return s;
}

std::optional<QuantConfig> parse_quant_config(const json& config, const std::string& source) {
  auto it = config.find("quantization_config");
  if (it == config.end() || it->is_null()) return std::nullopt;
  const json& q = *it;
  APUS_CHECK(q.is_object(), "{}: quantization_config must be an object", source);
  const std::string method = field<std::string>(q, "quant_method", "", source);
  QuantConfig c;
  c.bits = field<int>(q, "bits", field<int>(q, "w_bit", 4, source), source);
  c.group_size = field<int64_t>(q, "group_size", field<int64_t>(q, "q_group_size", 128, source), source);
  if (method == "gptq") {
    c.method = QuantMethod::kGptq;
    APUS_CHECK(c.bits == 4 || c.bits == 8,
               "{}: GPTQ with bits {} is not supported (supported: 4, 8)", source, c.bits);
    check_group_size(c.group_size, source);
    c.sym = field<bool>(q, "sym", true, source);
    c.desc_act = field<bool>(q, "desc_act", false, source);
    // GPTQModel spells the layout checkpoint_format; older AutoGPTQ configs have none (v1).
    const std::string fmt_name =
        field<std::string>(q, "checkpoint_format", field<std::string>(q, "format", "gptq", source), source);
    if (fmt_name == "gptq") c.zeros_minus_one = true;
    else if (fmt_name == "gptq_v2") c.zeros_minus_one = false;
    else
      fail("{}: GPTQ checkpoint_format \"{}\" is not supported (supported: gptq, gptq_v2; marlin, bitblas and "
           "ipex layouts must be converted back to gptq)", source, fmt_name);
    const bool lm_head = field<bool>(q, "lm_head", false, source);
    APUS_CHECK(!lm_head, "{}: GPTQ with a quantized lm_head (quantization_config.lm_head: true) is not supported",
               source);
    auto dyn = q.find("dynamic");
    APUS_CHECK(dyn == q.end() || dyn->is_null() || dyn->empty(),
               "{}: GPTQ with per-module overrides (quantization_config.dynamic) is not supported", source);
    return c;
  }
  if (method == "awq") {
    c.method = QuantMethod::kAwq;
    c.zeros_minus_one = false;
    const std::string version = field<std::string>(q, "version", "gemm", source);
    APUS_CHECK(version == "gemm" || version == "GEMM",
               "{}: AWQ version \"{}\" is not supported (supported: gemm; gemv, gemv_fast, exllama, ipex and "
               "marlin layouts differ)", source, version);
    APUS_CHECK(c.bits == 4, "{}: AWQ with bits {} is not supported (supported: 4)", source, c.bits);
    check_group_size(c.group_size, source);
    c.sym = !field<bool>(q, "zero_point", true, source);
    APUS_CHECK(!field<bool>(q, "desc_act", false, source),
               "{}: AWQ with desc_act (act-order) is not a format AWQ defines", source);
    return c;
  }
  if (method.empty())
    fail("{}: quantization_config has no quant_method (supported: gptq, awq)", source);
  fail("{}: quantization method \"{}\" is not supported (supported: gptq, awq)", source, method);
}

json quant_config_json(const QuantConfig& q) {
  if (q.method == QuantMethod::kAwq)
    return {{"quant_method", "awq"}, {"bits", q.bits}, {"group_size", q.group_size},
            {"zero_point", !q.sym}, {"version", "gemm"}};
  return {{"quant_method", "gptq"}, {"bits", q.bits},       {"group_size", q.group_size},
          {"sym", q.sym},           {"desc_act", q.desc_act}, {"checkpoint_format", q.zeros_minus_one ? "gptq" : "gptq_v2"}};
}

}  // namespace apus
