// Host side of the CUDA layout of quantized weights (kernels.h, QuantArgs): parts of one linear
// layer fused into one matrix and the 4-bit codes reordered within each 32-bit word.
#pragma once
#include <vector>

#include "backend/cuda/kernels.h"
#include "quant/quant_weight.h"

namespace apus::cuda {

// One contiguous host QuantWeight with the parts' rows one after another (same bits, group size and
// perm: the caller checks), 4-bit words repacked so that nibble p holds column 2p (p < 4) or
// 2(p - 4) + 1, and the codes tiled where kernels.h's QuantArgs says so: qweight is then a view of
// its first out() rows in a buffer of whole tiles (quant_codes_bytes() long), which the upload must
// copy whole. `parts` may be row views.
QuantWeight repack_quant(const std::vector<const QuantWeight*>& parts);

// Bytes of the buffer behind a repacked qweight (whole tiles of 8 rows where tiled).
inline int64_t quant_codes_bytes(const QuantWeight& w) {
  const int64_t rows = quant_tile_rows(w.qweight.cols()) == 8 ? (w.out() + 7) / 8 * 8 : w.out();
  return rows * w.qweight.cols();
}

}  // namespace apus::cuda
