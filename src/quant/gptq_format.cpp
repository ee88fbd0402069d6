#include "quant/gptq_format.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace apus {

namespace {

constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};  // nibble j of an AWQ word holds output 8c + kAwqOrder[j]

std::string shape_str(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

void check_tensor(const Tensor& t, const std::string& name, const std::vector<int64_t>& shape, bool int32,
                  const std::string& where) {
  APUS_CHECK(!t.empty(), "{}: missing tensor {} (expected shape {})", where, name, shape_str(shape));
  APUS_CHECK(t.shape == shape, "{}: tensor {} has shape {}, expected {} from config.json", where, name,
             shape_str(t.shape), shape_str(shape));
  if (int32)
    APUS_CHECK(t.dtype == DType::I32, "{}: tensor {} has dtype {}, expected I32", where, name, dtype_name(t.dtype));
  else
    APUS_CHECK(t.dtype == DType::F16 || t.dtype == DType::BF16 || t.dtype == DType::F32,
               "{}: tensor {} has dtype {}, expected F16", where, name, dtype_name(t.dtype));
  APUS_CHECK(t.contiguous(), "{}: tensor {} is not contiguous", where, name);
}

uint32_t word(const Tensor& t, int64_t i) { return uint32_t(t.ptr<int32_t>()[i]); }

}  // namespace

std::vector<float> QuantMatrix::dequantize() const {
  std::vector<float> w(size_t(out * in));
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) w[size_t(o * in + i)] = weight(o, i);
  return w;
}

QuantMatrix unpack_quant(const QuantTensors& t, const QuantConfig& c, int64_t out, int64_t in,
                         const std::string& name, const std::string& where) {
  QuantMatrix m;
  m.out = out, m.in = in, m.bits = c.bits;
  m.group_size = c.group_size == -1 ? in : c.group_size;
  const int p = 32 / c.bits;
  const uint32_t mask = (1u << c.bits) - 1;
  APUS_CHECK(in % m.group_size == 0 && out % 8 == 0 && in % 8 == 0,
             "{}: layer {} [{}, {}] does not fit {} (inputs a multiple of the group size, sizes of 8)", where,
             name, out, in, c.describe());
  const int64_t G = m.groups();
  const bool awq = c.method == QuantMethod::kAwq;
  check_tensor(t.qweight, name + ".qweight", awq ? std::vector<int64_t>{in, out / p} : std::vector<int64_t>{in / p, out},
               true, where);
  check_tensor(t.qzeros, name + ".qzeros", {G, out / p}, true, where);
  check_tensor(t.scales, name + ".scales", {G, out}, false, where);

  m.q.resize(size_t(out * in));
  m.zeros.resize(size_t(out * G));
  m.scales.resize(size_t(out * G));
  m.g_idx.resize(size_t(in));
  if (awq) {
    for (int64_t i = 0; i < in; ++i)
      for (int64_t c8 = 0; c8 < out / 8; ++c8) {
        const uint32_t w = word(t.qweight, i * (out / 8) + c8);
        for (int j = 0; j < 8; ++j) m.q[size_t((c8 * 8 + kAwqOrder[j]) * in + i)] = uint8_t((w >> (4 * j)) & 15u);
      }
    for (int64_t g = 0; g < G; ++g)
      for (int64_t c8 = 0; c8 < out / 8; ++c8) {
        const uint32_t w = word(t.qzeros, g * (out / 8) + c8);
        for (int j = 0; j < 8; ++j) m.zeros[size_t((c8 * 8 + kAwqOrder[j]) * G + g)] = uint8_t((w >> (4 * j)) & 15u);
      }
  } else {
    for (int64_t r = 0; r < in / p; ++r)
      for (int64_t o = 0; o < out; ++o) {
        const uint32_t w = word(t.qweight, r * out + o);
        for (int k = 0; k < p; ++k) m.q[size_t(o * in + r * p + k)] = uint8_t((w >> (c.bits * k)) & mask);
      }
    const uint32_t plus = c.zeros_minus_one ? 1u : 0u;
    for (int64_t g = 0; g < G; ++g)
      for (int64_t cp = 0; cp < out / p; ++cp) {
        const uint32_t w = word(t.qzeros, g * (out / p) + cp);
        for (int k = 0; k < p; ++k)
          m.zeros[size_t((cp * p + k) * G + g)] = uint8_t((((w >> (c.bits * k)) & mask) + plus) & mask);
      }
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t o = 0; o < out; ++o) m.scales[size_t(o * G + g)] = get_float(t.scales, g * out + o);
  if (!awq && !t.g_idx.empty()) {
    check_tensor(t.g_idx, name + ".g_idx", {in}, true, where);
    for (int64_t i = 0; i < in; ++i) {
      const int32_t g = t.g_idx.ptr<int32_t>()[i];
      APUS_CHECK(g >= 0 && g < G, "{}: tensor {}.g_idx has group {} at input {}, outside [0, {})", where, name, g, i, G);
      m.g_idx[size_t(i)] = g;
    }
  } else {
    APUS_CHECK(!c.desc_act, "{}: layer {} has desc_act but no g_idx tensor", where, name);
    for (int64_t i = 0; i < in; ++i) m.g_idx[size_t(i)] = int32_t(i / m.group_size);
  }
  return m;
}

QuantTensors pack_quant(const QuantMatrix& m, const QuantConfig& c) {
  const int64_t out = m.out, in = m.in, G = m.groups();
  APUS_CHECK(m.bits == c.bits && m.group_size == (c.group_size == -1 ? in : c.group_size),
             "pack_quant: matrix of {} bits, group {} does not match {}", m.bits, m.group_size, c.describe());
  APUS_CHECK(in % m.group_size == 0 && out % 8 == 0 && in % 8 == 0, "pack_quant: [{}, {}] is not packable", out, in);
  const int p = 32 / c.bits;
  const uint32_t mask = (1u << c.bits) - 1;
  const bool awq = c.method == QuantMethod::kAwq;
  QuantTensors t;
  t.qweight = host_tensor(DType::I32, awq ? std::vector<int64_t>{in, out / p} : std::vector<int64_t>{in / p, out});
  t.qzeros = host_tensor(DType::I32, {G, out / p});
  t.scales = host_tensor(DType::F16, {G, out});
  uint32_t* qw = reinterpret_cast<uint32_t*>(t.qweight.data);
  uint32_t* qz = reinterpret_cast<uint32_t*>(t.qzeros.data);
  auto code = [&](int64_t o, int64_t i) {
    const uint8_t v = m.q[size_t(o * in + i)];
    APUS_CHECK(v <= mask, "pack_quant: code {} at ({}, {}) does not fit {} bits", v, o, i, c.bits);
    return uint32_t(v);
  };
  if (awq) {
    for (int64_t i = 0; i < in; ++i) {
      APUS_CHECK(m.g_idx[size_t(i)] == i / m.group_size, "pack_quant: AWQ has no act-order (g_idx[{}] = {})", i,
                 m.g_idx[size_t(i)]);
      for (int64_t c8 = 0; c8 < out / 8; ++c8)
        for (int j = 0; j < 8; ++j) qw[i * (out / 8) + c8] |= code(c8 * 8 + kAwqOrder[j], i) << (4 * j);
    }
    for (int64_t g = 0; g < G; ++g)
      for (int64_t c8 = 0; c8 < out / 8; ++c8)
        for (int j = 0; j < 8; ++j)
          qz[g * (out / 8) + c8] |= (uint32_t(m.zeros[size_t((c8 * 8 + kAwqOrder[j]) * G + g)]) & mask) << (4 * j);
  } else {
    for (int64_t r = 0; r < in / p; ++r)
      for (int64_t o = 0; o < out; ++o)
        for (int k = 0; k < p; ++k) qw[r * out + o] |= code(o, r * p + k) << (c.bits * k);
    const uint32_t minus = c.zeros_minus_one ? 1u : 0u;
    for (int64_t g = 0; g < G; ++g)
      for (int64_t cp = 0; cp < out / p; ++cp)
        for (int k = 0; k < p; ++k)
          qz[g * (out / p) + cp] |= ((uint32_t(m.zeros[size_t((cp * p + k) * G + g)]) - minus) & mask) << (c.bits * k);
    t.g_idx = host_tensor(DType::I32, {in});
    std::copy(m.g_idx.begin(), m.g_idx.end(), t.g_idx.ptr<int32_t>());
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t o = 0; o < out; ++o) t.scales.ptr<uint16_t>()[g * out + o] = f32_to_f16(m.scales[size_t(o * G + g)]);
  return t;
}

QuantWeight make_quant_weight(const QuantMatrix& m, const std::string& name) {
  const int64_t out = m.out, in = m.in, G = m.groups();
  APUS_CHECK(m.group_size % 32 == 0, "{}: group size {} is not a multiple of 32", name, m.group_size);
  std::vector<int64_t> perm(static_cast<size_t>(in));
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return m.g_idx[size_t(a)] < m.g_idx[size_t(b)]; });
  for (int64_t k = 0; k < in; ++k)
    APUS_CHECK(m.g_idx[size_t(perm[size_t(k)])] == k / m.group_size,
               "{}.g_idx: group {} does not have {} inputs (groups must be of equal size)", name,
               m.g_idx[size_t(perm[size_t(k)])], m.group_size);
  bool identity = true;
  for (int64_t k = 0; k < in; ++k) identity = identity && perm[size_t(k)] == k;
  QuantWeight w;
  w.bits = m.bits;
  w.group_size = m.group_size;
  w.qweight = host_tensor(DType::U8, {out, in * m.bits / 8});
  w.scales = host_tensor(DType::F16, {out, G});
  w.zeros = host_tensor(DType::U8, {out, G});
  uint8_t* qw = w.qweight.ptr<uint8_t>();
  for (int64_t o = 0; o < out; ++o) {
    const uint8_t* src = m.q.data() + o * in;
    uint8_t* dst = qw + o * w.qweight.cols();
    if (m.bits == 8) {
      for (int64_t k = 0; k < in; ++k) dst[k] = src[perm[size_t(k)]];
    } else {
      for (int64_t k = 0; k < in; k += 2) dst[k / 2] = uint8_t(src[perm[size_t(k)]] | (src[perm[size_t(k + 1)]] << 4));
    }
    for (int64_t g = 0; g < G; ++g) {
      w.scales.ptr<uint16_t>()[o * G + g] = f32_to_f16(m.scales[size_t(o * G + g)]);
      w.zeros.ptr<uint8_t>()[o * G + g] = m.zeros[size_t(o * G + g)];
    }
  }
  if (!identity) {
    w.perm = host_tensor(DType::I32, {in});
    for (int64_t k = 0; k < in; ++k) w.perm.ptr<int32_t>()[k] = int32_t(perm[size_t(k)]);
  }
  return w;
}

}  // namespace apus
