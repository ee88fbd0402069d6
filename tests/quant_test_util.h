// A random unpacked quantized matrix for the quantization tests (codes, zero points and fp16-valued
// scales drawn from `rng`; groups of `group` inputs, shuffled as act-order g_idx when `shuffle`).
#pragma once
#include <algorithm>
#include <random>

#include "core/dtype.h"
#include "quant/gptq_format.h"

namespace apus::test {

inline QuantMatrix random_quant_matrix(int64_t out, int64_t in, int bits, int64_t group, bool shuffle,
                                       std::mt19937& rng) {
  QuantMatrix m;
  m.out = out, m.in = in, m.bits = bits, m.group_size = group;
  std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
  m.q.resize(size_t(out * in));
  for (auto& v : m.q) v = uint8_t(code(rng));
  m.zeros.resize(size_t(out * m.groups()));
  for (auto& v : m.zeros) v = uint8_t(code(rng));
  m.scales.resize(m.zeros.size());
  std::uniform_real_distribution<float> s(0.001f, 0.05f);
  for (auto& v : m.scales) v = f16_to_f32(f32_to_f16(s(rng)));
  m.g_idx.resize(size_t(in));
  for (int64_t i = 0; i < in; ++i) m.g_idx[size_t(i)] = int32_t(i / group);
  if (shuffle) std::shuffle(m.g_idx.begin(), m.g_idx.end(), rng);
  return m;
}

}  // namespace apus::test
