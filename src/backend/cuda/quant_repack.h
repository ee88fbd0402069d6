// Host side of the CUDA layout of quantized weights (kernels.h, QuantArgs): parts of one linear
// layer fused into one matrix and the 4-bit codes reordered within each 32-bit word.
#pragma once
#include <vector>

#include "quant/quant_weight.h"

namespace apus::cuda {

// One contiguous host QuantWeight with the parts' rows one after another (same bits, group size and
// perm: the caller checks), 4-bit words repacked so that nibble p holds column 2p (p < 4) or
// 2(p - 4) + 1. `parts` may be row views.
QuantWeight repack_quant(const std::vector<const QuantWeight*>& parts);

}  // namespace apus::cuda
