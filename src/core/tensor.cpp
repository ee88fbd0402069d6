#include "core/tensor.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace apus {

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t Tensor::cols() const {
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

Tensor Tensor::cols_view(int64_t begin, int64_t n) const {
  APUS_CHECK(shape.size() == 2 && begin >= 0 && begin + n <= shape[1],
             "cols_view [{}, {}) out of range for {}", begin, begin + n, describe());
  Tensor v = *this;
  v.data = static_cast<char*>(data) + size_t(begin) * dtype_size(dtype);
  v.shape = {shape[0], n};
  return v;
}

Tensor Tensor::rows_view(int64_t begin, int64_t n) const {
  APUS_CHECK(!shape.empty() && begin >= 0 && begin + n <= shape[0],
             "rows_view [{}, {}) out of range for {}", begin, begin + n, describe());
  Tensor v = *this;
  v.data = static_cast<char*>(data) + size_t(begin * row_stride) * dtype_size(dtype);
  v.shape[0] = n;
  return v;
}

std::string Tensor::describe() const {
  std::string s(dtype_name(dtype));
  s += "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Tensor make_view(void* data, DType dtype, std::vector<int64_t> shape, Device device,
                 std::shared_ptr<void> owner) {
  Tensor t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.shape = std::move(shape);
  t.row_stride = t.cols();
  t.owner = std::move(owner);
  return t;
}

Tensor host_tensor(DType dtype, std::vector<int64_t> shape) {
  Tensor t = make_view(nullptr, dtype, std::move(shape));
  size_t bytes = (t.nbytes() + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes ? bytes : 64);
  APUS_CHECK(p != nullptr, "out of host memory allocating {} ({} bytes)", t.describe(), bytes);
  std::memset(p, 0, bytes);
  t.data = p;
  t.owner = std::shared_ptr<void>(p, std::free);
  return t;
}

float get_float(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::F32: return t.ptr<float>()[i];
    case DType::BF16: return bf16_to_f32(t.ptr<uint16_t>()[i]);
    default: return f16_to_f32(t.ptr<uint16_t>()[i]);
  }
}

void set_float(Tensor& t, int64_t i, float v) {
  if (t.dtype == DType::F32) t.ptr<float>()[i] = v;
  else t.ptr<uint16_t>()[i] = t.dtype == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
}

Tensor contiguous(const Tensor& t) {
  if (t.contiguous()) return t;
  Tensor out = host_tensor(t.dtype, t.shape);
  const size_t row_bytes = size_t(t.cols()) * dtype_size(t.dtype);
  for (int64_t r = 0; r < t.rows(); ++r)
    std::memcpy(static_cast<char*>(out.data) + size_t(r) * row_bytes, static_cast<const char*>(t.data) + size_t(r * t.row_stride) * dtype_size(t.dtype), row_bytes);
  return out;
}

Tensor convert_float(const Tensor& t, DType to) {
  if (t.dtype == to) return t;
  Tensor out = host_tensor(to, t.shape);
  for (int64_t i = 0; i < t.numel(); ++i) set_float(out, i, get_float(t, i));
  return out;
}

}  // namespace apus
