// A linear layer's weight in a backend-neutral integer form (what the loader hands a backend's
// prepare_linear, which may repack it): codes of `bits` bits, one scale and one zero point per
// group of `group_size` consecutive columns. Columns are in the order `perm` gives, so that
// act-order (desc_act) checkpoints also have contiguous groups: weight column k multiplies input
// feature perm[k], i.e. W x = Wq x[perm]. Value: w[o, k] = (code[o, k] - zeros[o, k / g]) * scales[o, k / g].
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace apus {

struct QuantWeight {
  int bits = 0;            // 4 or 8; 0: not quantized
  int64_t group_size = 0;  // columns per group, a multiple of 32 dividing in
  Tensor qweight;          // U8 [out, in * bits / 8]: row-major codes; 4 bits: column 2j in the low
                           // nibble of byte j, column 2j + 1 in the high one
  Tensor scales;           // F16 [out, in / group_size]
  Tensor zeros;            // U8 [out, in / group_size]
  Tensor perm;             // I32 [in], or empty for the identity

  bool empty() const { return bits == 0; }
  int64_t out() const { return qweight.rows(); }
  int64_t in() const { return bits ? qweight.cols() * 8 / bits : 0; }
  int64_t groups() const { return scales.cols(); }
  // Bytes a product with it reads (codes, scales, zeros).
  size_t nbytes() const { return qweight.nbytes() + scales.nbytes() + zeros.nbytes(); }
};

}  // namespace apus
