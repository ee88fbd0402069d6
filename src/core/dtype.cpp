#include "core/dtype.h"

#include <array>
#include <cmath>

namespace apus {

namespace {
struct DTypeInfo {
  DType type;
  std::string_view name;
  size_t size;
};
constexpr std::array<DTypeInfo, 12> kTypes{{
    {DType::F32, "F32", 4},   {DType::F16, "F16", 2},         {DType::BF16, "BF16", 2},
    {DType::F64, "F64", 8},   {DType::I64, "I64", 8},         {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},   {DType::I8, "I8", 1},           {DType::U8, "U8", 1},
    {DType::Bool, "BOOL", 1}, {DType::F8E4M3, "F8_E4M3", 1}, {DType::F8E5M2, "F8_E5M2", 1},
}};
}  // namespace

size_t dtype_size(DType t) { return kTypes[size_t(t)].size; }
std::string_view dtype_name(DType t) { return kTypes[size_t(t)].name; }

bool parse_dtype(std::string_view s, DType* out) {
  for (const auto& info : kTypes) {
    if (info.name == s) {
      *out = info.type;
      return true;
    }
  }
  return false;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    u = sign;
  } else {  // subnormal: value = mant * 2^-24
    float f = std::ldexp(float(mant), -24);
    std::memcpy(&u, &f, 4);
    u |= sign;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {                        // below the smallest normal (2^-14)
    // Subnormal: scale so that one unit of the result is 2^-24, rounding to nearest even.
    float scaled = std::fabs(f) * 16777216.0f;  // exact: power-of-two scale
    float r = std::nearbyint(scaled);           // default rounding mode: ties to even
    return sign | uint16_t(r);
  }
  uint32_t mant_round = abs + 0xfffu + ((abs >> 13) & 1u);
  return sign | uint16_t((mant_round - 0x38000000u) >> 13);
}

}  // namespace apus
