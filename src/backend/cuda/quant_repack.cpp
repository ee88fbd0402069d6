#include "backend/cuda/quant_repack.h"

#include <cstring>

namespace apus::cuda {

QuantWeight repack_quant(const std::vector<const QuantWeight*>& parts) {
  const QuantWeight& first = *parts[0];
  int64_t rows = 0;
  for (const QuantWeight* p : parts) rows += p->out();
  QuantWeight w;
  w.bits = first.bits;
  w.group_size = first.group_size;
  w.perm = first.perm;
  w.qweight = host_tensor(DType::U8, {rows, first.qweight.cols()});
  w.scales = host_tensor(DType::F16, {rows, first.groups()});
  w.zeros = host_tensor(DType::U8, {rows, first.groups()});
  int64_t at = 0;
  for (const QuantWeight* p : parts) {
    for (int64_t r = 0; r < p->out(); ++r, ++at) {
      std::memcpy(w.qweight.row<uint8_t>(at), p->qweight.row<uint8_t>(r), size_t(w.qweight.cols()));
      std::memcpy(w.scales.row<uint16_t>(at), p->scales.row<uint16_t>(r), size_t(w.scales.cols()) * 2);
      std::memcpy(w.zeros.row<uint8_t>(at), p->zeros.row<uint8_t>(r), size_t(w.zeros.cols()));
    }
  }
  if (w.bits == 4) {
    // Column c of a word is nibble c (byte c / 2, low half for even c); even columns move to
    // nibbles 0-3 and odd ones to 4-7, in order.
    auto unzip = [](uint32_t v) {  // the low nibbles of the four bytes, as 16 bits
      v &= 0x0F0F0F0Fu;
      v = (v | (v >> 4)) & 0x00FF00FFu;
      return (v | (v >> 8)) & 0x0000FFFFu;
    };
    uint32_t* words = reinterpret_cast<uint32_t*>(w.qweight.data);
    for (int64_t i = 0; i < w.qweight.numel() / 4; ++i) words[i] = unzip(words[i]) | (unzip(words[i] >> 4) << 16);
  }
  const int64_t row_bytes = w.qweight.cols();
  if (quant_tile_rows(row_bytes) == 8) {
    // Tiles of 8 rows (kernels.h, QuantArgs): piece p (64 bytes) of row r at tile r / 8, slot p * 8 + r % 8.
    Tensor tiled = host_tensor(DType::U8, {quant_codes_bytes(w) / row_bytes, row_bytes});
    std::memset(tiled.data, 0, tiled.nbytes());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t p = 0; p < row_bytes / 64; ++p)
        std::memcpy(tiled.ptr<uint8_t>() + (r / 8) * 8 * row_bytes + (p * 8 + r % 8) * 64,
                    w.qweight.row<uint8_t>(r) + p * 64, 64);
    w.qweight = tiled.rows_view(0, rows);
  }
  return w;
}

}  // namespace apus::cuda
