// GPTQ and AWQ checkpoint tensors <-> one canonical, unpacked form (QuantMatrix), and from that to
// the QuantWeight the backends run. Layouts (../../../shared/FORMATS.md "GPTQ"), for a linear layer
// with weight [out, in], pack factor p = 32 / bits:
//   GPTQ qweight I32 [in / p, out]: field k (bits k*b .. k*b+b-1) of row r is input 8r+k (4 bits);
//        qzeros  I32 [groups, out / p]: field k of column c is the zero of output p*c+k, minus one
//                in checkpoint_format "gptq" (v1, wrapping: a zero of 0 is stored as 2^b - 1);
//        scales  F16 [groups, out]; g_idx I32 [in]: group of each input (absent: i / group_size).
//   AWQ (gemm) qweight I32 [in, out / 8], qzeros I32 [groups, out / 8], scales F16 [groups, out];
//        the eight nibbles of a word hold outputs 8c + {0, 2, 4, 6, 1, 3, 5, 7} (nibble order).
// In both, w[o, i] = (q[o, i] - zero[o, g(i)]) * scale[o, g(i)].
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "quant/quant_config.h"
#include "quant/quant_weight.h"

namespace apus {

// One quantized matrix, unpacked: a code per weight, the real zero point (v1's +1 applied).
struct QuantMatrix {
  int64_t out = 0;
  int64_t in = 0;
  int bits = 4;
  int64_t group_size = 0;       // columns per group (the whole row for quantization_config's -1)
  std::vector<uint8_t> q;       // [out, in]: code of weight (o, i), < 2^bits
  std::vector<int32_t> g_idx;   // [in]: group of input i
  std::vector<uint8_t> zeros;   // [out, groups]
  std::vector<float> scales;    // [out, groups] (fp16 values)

  int64_t groups() const { return in / group_size; }
  float weight(int64_t o, int64_t i) const {
    const size_t g = size_t(o * groups() + g_idx[size_t(i)]);
    return (float(q[size_t(o * in + i)]) - float(zeros[g])) * scales[g];
  }
  // The dequantized matrix, F32 [out, in].
  std::vector<float> dequantize() const;
};

// A linear layer's tensors as stored in the checkpoint (g_idx may be empty: absent).
struct QuantTensors {
  Tensor qweight;
  Tensor qzeros;
  Tensor scales;
  Tensor g_idx;
};

// Unpacks `t` (host tensors) for a layer [out, in] of `config`; `name` (the layer's prefix) and
// `where` (its file) go into errors about shapes, dtypes and out-of-range g_idx entries.
QuantMatrix unpack_quant(const QuantTensors& t, const QuantConfig& config, int64_t out, int64_t in,
                         const std::string& name, const std::string& where);
// The inverse: checkpoint tensors of `config`'s method and checkpoint_format (GPTQ writes g_idx,
// AWQ none). `m`'s group_size must equal config's (or `in` for -1); AWQ needs g_idx = i / group_size.
QuantTensors pack_quant(const QuantMatrix& m, const QuantConfig& config);

// The backend-neutral form (quant_weight.h): columns ordered by group (stable, so identity without
// desc_act), codes packed two per byte for 4 bits. Every group must have group_size columns.
QuantWeight make_quant_weight(const QuantMatrix& m, const std::string& name);

}  // namespace apus
