// The quantized checkpoint formats (src/quant): quantization_config parsing and refusals, GPTQ and
// AWQ tensors unpacked against hand-computed values of the FORMATS.md formula, pack/unpack round
// trips, and the backend-neutral QuantWeight (columns reordered by group for act-order).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <cstring>
#include <random>

#include "core/error.h"
#include "quant/gptq_format.h"
#include "quant/quant_config.h"
#include "quant_test_util.h"

namespace apus {
namespace {

using nlohmann::json;

QuantConfig config_of(json q) { return *parse_quant_config(json{{"quantization_config", q}}, "config.json"); }

std::string refusal(json q) {
  try {
    parse_quant_config(json{{"quantization_config", q}}, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(QuantConfig, ParsesGptqAndAwq) {
  EXPECT_FALSE(parse_quant_config(json{{"hidden_size", 8}}, "config.json"));
  QuantConfig g = config_of({{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 128}, {"desc_act", true}, {"sym", false}});
  EXPECT_EQ(g.method, QuantMethod::kGptq);
  EXPECT_EQ(g.bits, 4);
  EXPECT_EQ(g.group_size, 128);
  EXPECT_TRUE(g.desc_act);
  EXPECT_FALSE(g.sym);
  EXPECT_TRUE(g.zeros_minus_one);  // no checkpoint_format: AutoGPTQ's v1
  g = config_of({{"quant_method", "gptq"}, {"bits", 8}, {"group_size", -1}, {"checkpoint_format", "gptq_v2"}});
  EXPECT_EQ(g.bits, 8);
  EXPECT_EQ(g.group_size, -1);
  EXPECT_FALSE(g.zeros_minus_one);
  QuantConfig a = config_of({{"quant_method", "awq"}, {"bits", 4}, {"group_size", 64}, {"zero_point", true}, {"version", "gemm"}});
  EXPECT_EQ(a.method, QuantMethod::kAwq);
  EXPECT_EQ(a.group_size, 64);
  EXPECT_FALSE(a.zeros_minus_one);
  // The exporter's config reads back as itself.
  for (const QuantConfig& c : {g, a}) {
    QuantConfig back = config_of(quant_config_json(c));
    EXPECT_EQ(back.describe(), c.describe());
    EXPECT_EQ(back.zeros_minus_one, c.zeros_minus_one);
  }
}

TEST(QuantConfig, RefusesUnsupportedVariantsByName) {
  EXPECT_NE(refusal({{"quant_method", "gptq"}, {"bits", 3}, {"group_size", 128}}).find("GPTQ with bits 3"), std::string::npos);
  EXPECT_NE(refusal({{"quant_method", "gptq"}, {"bits", 2}, {"group_size", 128}}).find("bits 2"), std::string::npos);
  EXPECT_NE(refusal({{"quant_method", "gptq"}, {"bits", 4}, {"checkpoint_format", "marlin"}}).find("\"marlin\""),
            std::string::npos);
  EXPECT_NE(refusal({{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 100}}).find("group_size 100"), std::string::npos);
  EXPECT_NE(refusal({{"quant_method", "awq"}, {"bits", 4}, {"version", "gemv"}}).find("AWQ version \"gemv\""),
            std::string::npos);
  EXPECT_NE(refusal({{"quant_method", "awq"}, {"bits", 4}, {"version", "exllama"}}).find("\"exllama\""), std::string::npos);
  EXPECT_NE(refusal({{"quant_method", "awq"}, {"bits", 4}, {"desc_act", true}}).find("AWQ with desc_act"), std::string::npos);
  EXPECT_NE(refusal({{"quant_method", "awq"}, {"bits", 8}}).find("AWQ with bits 8"), std::string::npos);
  EXPECT_NE(refusal({{"quant_method", "bitsandbytes"}}).find("\"bitsandbytes\""), std::string::npos);
  EXPECT_NE(refusal({{"quant_method", "gptq"}, {"bits", 4}, {"lm_head", true}}).find("lm_head"), std::string::npos);
}

// A host I32 tensor of `shape` with every word zero but the given ones.
Tensor words(std::vector<int64_t> shape, std::vector<std::pair<int64_t, uint32_t>> set) {
  Tensor t = host_tensor(DType::I32, shape);
  for (auto [i, w] : set) t.ptr<uint32_t>()[i] = w;
  return t;
}

Tensor halfs(std::vector<int64_t> shape, float fill, std::vector<std::pair<int64_t, float>> set) {
  Tensor t = host_tensor(DType::F16, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<uint16_t>()[i] = f32_to_f16(fill);
  for (auto [i, v] : set) t.ptr<uint16_t>()[i] = f32_to_f16(v);
  return t;
}

TEST(GptqFormat, UnpacksHandComputedFourBit) {
  // Layer [out 8, in 32], one group. qweight [4, 8]: word (row 0, output 3) holds inputs 0..7 of output 3.
  QuantTensors t;
  t.qweight = words({4, 8}, {{0 * 8 + 3, 0x76543210u}, {1 * 8 + 3, 0xF0000000u}});
  // qzeros [1, 1]: field k = zero of output k, minus one in v1; output 3's field holds 2.
  t.qzeros = words({1, 1}, {{0, 0x77772777u}});
  t.scales = halfs({1, 8}, 1.0f, {{3, 0.5f}});
  QuantConfig v1;
  v1.group_size = 32;
  QuantMatrix m = unpack_quant(t, v1, 8, 32, "layer", "file");
  // w = (q - zero) * scale with zero = 2 + 1 = 3.
  EXPECT_EQ(m.weight(3, 5), (5.0f - 3.0f) * 0.5f);
  EXPECT_EQ(m.weight(3, 0), (0.0f - 3.0f) * 0.5f);
  EXPECT_EQ(m.weight(3, 15), (15.0f - 3.0f) * 0.5f);  // row 1, field 7
  EXPECT_EQ(m.weight(3, 8), -1.5f);
  EXPECT_EQ(m.weight(0, 0), -8.0f);  // zero 7 + 1, scale 1
  QuantConfig v2 = v1;
  v2.zeros_minus_one = false;
  m = unpack_quant(t, v2, 8, 32, "layer", "file");
  EXPECT_EQ(m.weight(3, 5), (5.0f - 2.0f) * 0.5f);
  EXPECT_EQ(m.weight(0, 0), -7.0f);
}

TEST(GptqFormat, UnpacksHandComputedEightBit) {
  // [out 4 -> padded to 8, in 32]: qweight [8, 8] of four bytes; word (row 1, output 2) = inputs 4..7.
  QuantTensors t;
  t.qweight = words({8, 8}, {{1 * 8 + 2, 0x04030201u}});
  t.qzeros = words({1, 2}, {{0, 0x7F7F7F7Fu}, {1, 0x7F7F7F7Fu}});  // v1: zero 128
  t.scales = halfs({1, 8}, 0.25f, {});
  QuantConfig c;
  c.bits = 8;
  c.group_size = -1;
  QuantMatrix m = unpack_quant(t, c, 8, 32, "layer", "file");
  EXPECT_EQ(m.group_size, 32);
  EXPECT_EQ(m.weight(2, 4), (1.0f - 128.0f) * 0.25f);
  EXPECT_EQ(m.weight(2, 7), (4.0f - 128.0f) * 0.25f);
  EXPECT_EQ(m.weight(2, 8), (0.0f - 128.0f) * 0.25f);
}

TEST(GptqFormat, UnpacksHandComputedAwq) {
  // AWQ qweight [in 32, out/8 1]; input 2's word: nibble j holds output {0,2,4,6,1,3,5,7}[j].
  QuantTensors t;
  t.qweight = words({32, 1}, {{2, 0x76543210u}});
  t.qzeros = words({1, 1}, {{0, 0x00000010u}});  // nibble 1 -> output 2, zero 1 (stored as is)
  t.scales = halfs({1, 8}, 2.0f, {});
  QuantConfig c;
  c.method = QuantMethod::kAwq;
  c.group_size = 32;
  c.zeros_minus_one = false;
  QuantMatrix m = unpack_quant(t, c, 8, 32, "layer", "file");
  EXPECT_EQ(m.weight(1, 2), 4.0f * 2.0f);  // nibble 4
  EXPECT_EQ(m.weight(6, 2), 3.0f * 2.0f);  // nibble 3
  EXPECT_EQ(m.weight(7, 2), 7.0f * 2.0f);
  EXPECT_EQ(m.weight(2, 2), (1.0f - 1.0f) * 2.0f);  // nibble 1 = 1, zero 1
  EXPECT_EQ(m.weight(2, 3), -2.0f);                // code 0, zero 1
}

TEST(GptqFormat, NamesTheTensorAtFault) {
  QuantTensors t;
  t.qweight = words({4, 8}, {});
  t.qzeros = words({1, 1}, {});
  t.scales = halfs({1, 8}, 1.0f, {});
  QuantConfig c;
  c.group_size = 32;
  t.g_idx = words({32}, {{5, 3u}});
  try {
    unpack_quant(t, c, 8, 32, "model.layers.0.mlp.up_proj", "x.safetensors");
    FAIL() << "accepted a g_idx entry outside the groups";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.up_proj.g_idx has group 3 at input 5"), std::string::npos)
        << e.what();
  }
  t.g_idx = {};
  t.qweight = words({8, 4}, {});
  try {
    unpack_quant(t, c, 8, 32, "model.layers.0.mlp.up_proj", "x.safetensors");
    FAIL() << "accepted a wrong qweight shape";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x.safetensors: tensor model.layers.0.mlp.up_proj.qweight has shape [8, 4], expected [4, 8]"),
              std::string::npos) << e.what();
  }
}

// With one zero point of 0 (GPTQ v1 stores it as 2^bits - 1, wrapping).
QuantMatrix random_matrix(int64_t out, int64_t in, int bits, int64_t group, bool shuffle, std::mt19937& rng) {
  QuantMatrix m = test::random_quant_matrix(out, in, bits, group, shuffle, rng);
  m.zeros[0] = 0;
  return m;
}

void expect_same(const QuantMatrix& a, const QuantMatrix& b) {
  EXPECT_EQ(a.q, b.q);
  EXPECT_EQ(a.zeros, b.zeros);
  EXPECT_EQ(a.scales, b.scales);
  EXPECT_EQ(a.g_idx, b.g_idx);
}

TEST(GptqFormat, PackUnpackRoundTrips) {
  std::mt19937 rng(3);
  struct Case {
    QuantMethod method;
    int bits;
    int64_t group;
    bool v1, shuffle;
  };
  for (const Case& k : {Case{QuantMethod::kGptq, 4, 32, true, false}, Case{QuantMethod::kGptq, 4, 64, false, true},
                        Case{QuantMethod::kGptq, 4, -1, true, false}, Case{QuantMethod::kGptq, 8, 32, true, true},
                        Case{QuantMethod::kGptq, 8, 64, false, false}, Case{QuantMethod::kAwq, 4, 32, false, false}}) {
    QuantConfig c;
    c.method = k.method, c.bits = k.bits, c.group_size = k.group, c.zeros_minus_one = k.v1, c.desc_act = k.shuffle;
    const int64_t out = 24, in = 128;
    QuantMatrix m = random_matrix(out, in, k.bits, k.group == -1 ? in : k.group, k.shuffle, rng);
    QuantTensors t = pack_quant(m, c);
    expect_same(unpack_quant(t, c, out, in, "l", "f"), m);
    // The backend-neutral form: groups contiguous in perm order, the same weights.
    QuantWeight w = make_quant_weight(m, "l");
    // The loader's entry point (a fast path for GPTQ without act-order) gives the same bytes.
    const QuantWeight loaded = load_quant_weight(t, c, out, in, "l", "f");
    auto same = [](const Tensor& a, const Tensor& b) {
      return a.empty() == b.empty() && a.shape == b.shape && (a.empty() || std::memcmp(a.data, b.data, a.nbytes()) == 0);
    };
    EXPECT_TRUE(same(loaded.qweight, w.qweight) && same(loaded.scales, w.scales) && same(loaded.zeros, w.zeros) &&
                same(loaded.perm, w.perm));
    EXPECT_EQ(w.in(), in);
    EXPECT_EQ(w.out(), out);
    EXPECT_EQ(w.perm.empty(), !k.shuffle);
    for (int64_t o = 0; o < out; ++o)
      for (int64_t kk = 0; kk < in; ++kk) {
        const uint8_t* row = w.qweight.ptr<uint8_t>() + o * w.qweight.cols();
        const int q = k.bits == 8 ? row[kk] : (row[kk / 2] >> (4 * (kk % 2))) & 15;
        const int64_t g = kk / w.group_size;
        const float v = (float(q) - float(w.zeros.ptr<uint8_t>()[o * w.groups() + g])) *
                        f16_to_f32(w.scales.ptr<uint16_t>()[o * w.groups() + g]);
        const int64_t i = w.perm.empty() ? kk : w.perm.ptr<int32_t>()[kk];
        ASSERT_EQ(v, m.weight(o, i)) << o << " " << kk;
      }
  }
}

TEST(GptqFormat, RefusesUnequalGroups) {
  std::mt19937 rng(5);
  QuantMatrix m = random_matrix(8, 64, 4, 32, false, rng);
  m.g_idx[40] = 0;  // group 0 gets 33 inputs
  EXPECT_THROW(make_quant_weight(m, "l"), Error);
}

}  // namespace
}  // namespace apus
