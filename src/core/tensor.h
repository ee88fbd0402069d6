// A typed view of memory on some device. Tensors do not own data directly: `owner` keeps the
// backing store (heap buffer, mmap'd file, device allocation) alive for as long as any view exists.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace apus {

enum class Device : uint8_t { CPU, CUDA };

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  std::vector<int64_t> shape;
  // Elements between consecutive rows (first dimension). Equal to cols() when contiguous; larger
  // for a column slice of a wider matrix (e.g. the q part of a fused qkv activation).
  int64_t row_stride = 0;
  std::shared_ptr<void> owner;

  int64_t numel() const;
  int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
  int64_t cols() const;  // product of all dims after the first
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  bool contiguous() const { return row_stride == cols(); }
  bool empty() const { return data == nullptr; }

  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }
  template <typename T>
  T* row(int64_t r) const { return static_cast<T*>(data) + r * row_stride; }

  // Columns [begin, begin + n) of every row; a view sharing this tensor's memory (2-D only).
  Tensor cols_view(int64_t begin, int64_t n) const;
  // Rows [begin, begin + n); a view.
  Tensor rows_view(int64_t begin, int64_t n) const;
  std::string describe() const;  // "BF16[896, 151936]"
};

// Wraps existing memory (no copy); `owner` may be null when the caller guarantees the lifetime.
Tensor make_view(void* data, DType dtype, std::vector<int64_t> shape, Device device = Device::CPU,
                 std::shared_ptr<void> owner = nullptr);
// A 64-byte aligned, zero-filled host tensor.
Tensor host_tensor(DType dtype, std::vector<int64_t> shape);
// Element i of a contiguous host float tensor (F32, BF16 or F16) as a float, and stored back
// rounded to the tensor's dtype.
float get_float(const Tensor& t, int64_t i);
void set_float(Tensor& t, int64_t i, float v);
// A contiguous host copy of a (possibly strided) host tensor; `t` itself when contiguous already.
Tensor contiguous(const Tensor& t);
// A contiguous host float tensor converted to another float dtype (the same tensor when equal).
Tensor convert_float(const Tensor& t, DType to);

}  // namespace apus
