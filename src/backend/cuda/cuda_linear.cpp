// The CUDA Backend's linear layers (cuda_backend_impl.h): weights fused and repacked at load, then
// cuBLAS GEMMs, our GEMV for decode-sized 16-bit layers, the int4 / int8 kernels (quant.cu) with
// SiLU and norm folding, and LoRA adapters served unmerged.
#include <cuda_runtime.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_backend_impl.h"
#include "backend/cuda/quant_repack.h"
#include "core/error.h"

namespace apus::cuda {

namespace {

cudaDataType_t blas_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
    default: fail("cuBLAS: unsupported dtype {}", dtype_name(t));
  }
}

}  // namespace

Linear CudaBackend::prepare_linear(Linear l) {
  for (const auto& p : l.parts)
    if (!p.quant.empty()) return prepare_quant_linear(l);
  if (l.parts.size() < 2) return l;
  const int64_t in = l.in_features;
  const DType dt = l.parts[0].weight.dtype;
  bool any_bias = false;
  for (const auto& p : l.parts) {
    APUS_CHECK(p.weight.dtype == dt && p.weight.contiguous() && p.weight.device == Device::CUDA,
               "prepare_linear: parts must be contiguous device matrices of one dtype");
    any_bias = any_bias || !p.bias.empty();
  }
  LinearPart fused;
  fused.weight = raw_alloc(dt, {l.out_features, in});
  if (any_bias) fused.bias = alloc(DType::F32, {l.out_features});
  int64_t row = 0;
  for (const auto& p : l.parts) {
    const int64_t n = p.weight.shape[0];
    APUS_CUDA_CHECK(cudaMemcpyAsync(fused.weight.row<char>(0) + size_t(row * in) * dtype_size(dt), p.weight.data,
                                    p.weight.nbytes(), cudaMemcpyDeviceToDevice, stream_));
    if (!p.bias.empty())
      APUS_CUDA_CHECK(cudaMemcpyAsync(fused.bias.ptr<float>() + row, p.bias.data, size_t(n) * 4,
                                      cudaMemcpyDeviceToDevice, stream_));
    row += n;
  }
  APUS_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the parts are freed when `l` goes
  Linear out;
  out.in_features = in;
  out.out_features = l.out_features;
  out.parts.push_back(std::move(fused));
  return out;
}

Linear CudaBackend::prepare_quant_linear(const Linear& l) {
  auto fusable = [](const LinearPart& a, const LinearPart& b) {
    const QuantWeight &x = a.quant, &y = b.quant;
    if (x.empty() || y.empty() || x.bits != y.bits || x.group_size != y.group_size || x.perm.empty() != y.perm.empty())
      return false;
    return x.perm.empty() || std::memcmp(x.perm.data, y.perm.data, x.perm.nbytes()) == 0;
  };
  Linear out;
  out.in_features = l.in_features;
  out.out_features = l.out_features;
  for (size_t i = 0; i < l.parts.size();) {
    if (l.parts[i].quant.empty()) {
      out.parts.push_back(l.parts[i++]);
      continue;
    }
    std::vector<const QuantWeight*> run{&l.parts[i].quant};
    size_t j = i + 1;
    while (j < l.parts.size() && fusable(l.parts[i], l.parts[j])) run.push_back(&l.parts[j++].quant);
    const QuantWeight host = cuda::repack_quant(run);
    quant_layers_ = true;
    LinearPart fused;
    fused.quant = host;
    for (Tensor* t : {&fused.quant.scales, &fused.quant.zeros, &fused.quant.perm})
      if (!t->empty()) *t = upload(*t);
    // The codes' whole buffer (tiled codes fill whole tiles past out() rows), viewed as out() rows.
    const int64_t row_bytes = host.qweight.cols(), code_rows = cuda::quant_codes_bytes(host) / row_bytes;
    const Tensor codes = make_view(host.qweight.data, DType::U8, {code_rows, row_bytes}, Device::CPU, host.qweight.owner);
    fused.quant.qweight = upload(codes).rows_view(0, host.out());
    bool any_bias = false;
    for (size_t p = i; p < j; ++p) any_bias = any_bias || !l.parts[p].bias.empty();
    if (any_bias) {
      fused.bias = alloc(DType::F32, {host.out()});
      int64_t row = 0;
      for (size_t p = i; p < j; ++p) {
        const LinearPart& part = l.parts[p];
        if (!part.bias.empty())
          APUS_CUDA_CHECK(cudaMemcpyAsync(fused.bias.ptr<float>() + row, part.bias.data, part.bias.nbytes(),
                                          cudaMemcpyDeviceToDevice, stream_));
        row += part.out();
      }
      APUS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
    // The largest quantized matrix, dequantized: prefill (and F32 models) multiply it with cuBLAS.
    grow(quant_scratch_, act_, host.out() * host.in(), false);
    out.parts.push_back(std::move(fused));
    i = j;
  }
  return out;
}

cuda::QuantArgs CudaBackend::quant_args(const QuantWeight& q) {
  APUS_CHECK(q.qweight.device == Device::CUDA, "linear: quantized weight not prepared for the GPU (prepare_linear)");
  return {q.qweight.ptr<uint8_t>(), q.qweight.row_stride, q.scales.ptr<uint16_t>(), q.zeros.ptr<uint8_t>(),
          int(q.groups()), int(q.group_size), q.bits, q.out(), q.in(), cuda::quant_tile_rows(q.qweight.cols())};
}

bool CudaBackend::quant_kernels_take(const Tensor& x, const QuantWeight& q, int64_t m) const {
  const bool aligned = (reinterpret_cast<uintptr_t>(x.data) & 15u) == 0 && x.row_stride * dtype_size(act_) % 16 == 0;
  return act_ != DType::F32 && m <= cuda::kQuantMmaMaxRows && (aligned || !q.perm.empty());
}

std::pair<const void*, int64_t> CudaBackend::quant_input(const Tensor& x, const QuantWeight& q) {
  if (q.perm.empty()) return {x.data, x.row_stride};
  const int64_t m = x.rows(), k = q.in();
  grow(gather_scratch_, act_, std::max<int64_t>(m * k, 64 * k));
  launched(cuda::gather_cols(act_, x.data, x.row_stride, q.perm.ptr<int32_t>(), m, k, gather_scratch_.data, k,
                             stream_),
           "gather_cols");
  return {gather_scratch_.data, k};
}

void CudaBackend::quant_linear(const Tensor& x, const LinearPart& p, void* y, int64_t y_stride, DType y_dtype) {
  const QuantWeight& q = p.quant;
  const int64_t m = x.rows(), k = q.in(), n = q.out();
  if (quant_kernels_take(x, q, m)) {
    quant_mma(x, p, y, y_stride, y_dtype);
    return;
  }
  const auto [xin, x_stride] = quant_input(x, q);
  grow(quant_scratch_, act_, n * k, false);  // sized at load; grows only if the activation dtype changed since
  launched(cuda::quant_dequantize(act_, quant_args(q), quant_scratch_.data, k, stream_), "quant_dequantize");
  gemm(quant_scratch_.data, k, xin, x_stride, m, n, k, p.bias.empty() ? nullptr : p.bias.ptr<float>(), y, y_stride,
       y_dtype);
}

void CudaBackend::quant_mma(const Tensor& x, const LinearPart& p, void* y, int64_t y_stride, DType y_dtype, bool silu,
                            const cuda::NormFold& fold) {
  const auto [xin, x_stride] = quant_input(x, p.quant);
  launched(cuda::quant_matmul(act_, y_dtype, quant_args(p.quant), xin, x_stride, x.rows(),
                              p.bias.empty() ? nullptr : p.bias.ptr<float>(), y, y_stride, stream_, silu, fold),
           "quant_matmul");
}

void CudaBackend::gemm(const void* w, int64_t w_stride, const void* x, int64_t x_stride, int64_t m, int64_t n,
                       int64_t k, const float* bias, void* y, int64_t y_stride, DType y_dtype) {
  if (bias) launched(cuda::bias_rows(y_dtype, y, y_stride, bias, m, n, stream_), "bias_rows");
  const float alpha = 1.0f, beta = bias ? 1.0f : 0.0f;
  check_blas(cuda::cublas().gemm_ex(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(m), int(k), &alpha, w,
                                    blas_type(act_), int(w_stride), x, blas_type(act_), int(x_stride), &beta, y,
                                    blas_type(y_dtype), int(y_stride), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "cublasGemmEx");
}

void CudaBackend::linear(const Tensor& x, const Linear& w, Tensor& out) {
  activation(x, "linear");
  on_device(out, "linear");
  APUS_CHECK(x.cols() == w.in_features && out.cols() == w.out_features && x.rows() == out.rows(),
             "linear: input {} / output {} do not fit weight [{}, {}]", x.describe(), out.describe(),
             w.out_features, w.in_features);
  APUS_CHECK(out.dtype == act_ || out.dtype == DType::F32, "linear: output {} must be {} or F32", out.describe(),
             dtype_name(act_));
  const std::string shape = fmt::format(" n={} k={}", w.out_features, w.in_features);
  if (x.rows() == 0 || profile_->skips("linear", shape)) return;
  cuda::TimedOp t(*profile_, "linear", x.rows(), shape);
  const size_t out_esize = dtype_size(out.dtype);
  int64_t col = 0;
  for (const LinearPart& p : w.parts) {
    const int64_t n = p.out();
    if (!p.quant.empty()) {
      quant_linear(x, p, static_cast<char*>(out.data) + size_t(col) * out_esize, out.row_stride, out.dtype);
      col += n;
      continue;
    }
    APUS_CHECK(p.weight.dtype == act_ && p.weight.device == Device::CUDA,
               "linear: weight {} on {} (expected {} on the GPU)", p.weight.describe(),
               p.weight.device == Device::CUDA ? "the GPU" : "the host", dtype_name(act_));
    void* y = static_cast<char*>(out.data) + size_t(col) * out_esize;
    if (gemv_ && x.rows() <= cuda::kGemvMaxRows) {
      // Decode: our GEMV streams the weights at ~0.9 of the copy rate where cuBLAS reaches 0.5-0.9
      // on these shapes (README, "Measured"), with the bias fused.
      launched(cuda::gemv(act_, out.dtype, p.weight.data, p.weight.row_stride, x.data, x.row_stride, x.rows(),
                          p.bias.empty() ? nullptr : p.bias.ptr<float>(), y, out.row_stride, n, x.cols(), stream_),
               "gemv");
      col += n;
      continue;
    }
    gemm(p.weight.data, p.weight.row_stride, x.data, x.row_stride, x.rows(), n, x.cols(),
         p.bias.empty() ? nullptr : p.bias.ptr<float>(), y, out.row_stride, out.dtype);
    col += n;
  }
}

bool CudaBackend::norm_fold_applies(const Linear& producer, const Linear& consumer, int64_t rows) const {
  return folds(producer, rows) && folds(consumer, rows) && producer.out_features == consumer.in_features;
}

bool CudaBackend::folds(const Linear& l, int64_t rows) const {
  return norm_fold_ && act_ == DType::BF16 && rows >= 1 && rows <= cuda::kQuantGemvMaxRows && l.parts.size() == 1 &&
         !l.parts[0].quant.empty();
}

void CudaBackend::linear_add_prescale(const Tensor& x, const Linear& w, Tensor& residual, const Tensor& norm_w,
                                      Tensor& prescaled, Tensor& sums) {
  const int64_t m = x.rows(), n = w.out_features;
  activation(x, "linear_add_prescale");
  activation(residual, "linear_add_prescale");
  activation(prescaled, "linear_add_prescale");
  APUS_CHECK(folds(w, m) && x.cols() == w.in_features && residual.rows() == m && residual.cols() == n &&
                 prescaled.rows() == m && prescaled.cols() == n && norm_w.numel() == n &&
                 norm_w.dtype == DType::F32 && sums.dtype == DType::F32 && sums.rows() >= m &&
                 sums.cols() >= norm_fold_parts(n) && quant_kernels_take(x, w.parts[0].quant, m),
             "linear_add_prescale: {} rows of {} for weight [{}, {}], residual {}, prescaled {}, sums {}", m,
             x.describe(), n, w.in_features, residual.describe(), prescaled.describe(), sums.describe());
  const std::string shape = fmt::format(" n={} k={}", n, w.in_features);
  if (profile_->skips("linear", shape)) return;
  cuda::TimedOp t(*profile_, "linear_add_prescale", m, shape);
  cuda::NormFold f;
  f.residual = residual.data;
  f.res_stride = residual.row_stride;
  f.norm_w = norm_w.ptr<float>();
  f.sums = sums.ptr<float>();
  f.sums_stride = sums.row_stride;
  quant_mma(x, w.parts[0], prescaled.data, prescaled.row_stride, act_, false, f);
}

void CudaBackend::linear_rms_scaled(const Tensor& prescaled, const Tensor& sums, float eps, const Linear& w,
                                    Tensor& out, bool silu_mul) {
  const int64_t m = prescaled.rows(), k = w.in_features;
  activation(prescaled, "linear_rms_scaled");
  activation(out, "linear_rms_scaled");
  APUS_CHECK(folds(w, m) && prescaled.cols() == k && out.rows() == m &&
                 out.cols() == (silu_mul ? w.out_features / 2 : w.out_features) && sums.dtype == DType::F32 &&
                 sums.rows() >= m && sums.cols() >= norm_fold_parts(k) &&
                 quant_kernels_take(prescaled, w.parts[0].quant, m),
             "linear_rms_scaled: input {} / output {} / sums {} for weight [{}, {}]", prescaled.describe(),
             out.describe(), sums.describe(), w.out_features, k);
  const std::string shape = fmt::format(" n={} k={}", w.out_features, k);
  if (profile_->skips(silu_mul ? "linear_silu_mul" : "linear", shape)) return;
  cuda::TimedOp t(*profile_, silu_mul ? "linear_silu_mul_rms_scaled" : "linear_rms_scaled", m, shape);
  cuda::NormFold f;
  f.sums = sums.ptr<float>();
  f.sums_stride = sums.row_stride;
  f.parts = int(norm_fold_parts(k));
  f.cols = float(k);
  f.eps = eps;
  quant_mma(prescaled, w.parts[0], out.data, out.row_stride, act_, silu_mul, f);
}

void CudaBackend::linear_silu_mul(const Tensor& x, const Linear& w, Tensor& gate_up, Tensor& out) {
  activation(x, "linear_silu_mul");
  activation(out, "linear_silu_mul");
  APUS_CHECK(x.cols() == w.in_features && w.out_features == 2 * out.cols() && x.rows() == out.rows(),
             "linear_silu_mul: input {} / output {} do not fit weight [{}, {}]", x.describe(), out.describe(),
             w.out_features, w.in_features);
  const int64_t m = x.rows();
  if (profile_->skips("linear_silu_mul")) return;
  const LinearPart* p = w.parts.size() == 1 ? &w.parts[0] : nullptr;
  const float* bias = p != nullptr && !p->bias.empty() ? p->bias.ptr<float>() : nullptr;
  if (p != nullptr && !p->quant.empty() && m <= cuda::kQuantGemvMaxRows && quant_kernels_take(x, p->quant, m)) {
    cuda::TimedOp t(*profile_, "linear_silu_mul", m, fmt::format(" n={} k={}", w.out_features, w.in_features));
    quant_mma(x, *p, out.data, out.row_stride, act_, true);
    return;
  }
  if (p != nullptr && p->quant.empty() && gemv_ && m <= cuda::kGemvMaxRows &&
      cuda::gemv_vectorized(act_, p->weight.data, p->weight.row_stride, x.data, x.row_stride, x.cols())) {
    cuda::TimedOp t(*profile_, "linear_silu_mul", m, fmt::format(" n={} k={}", w.out_features, w.in_features));
    launched(cuda::gemv(act_, act_, p->weight.data, p->weight.row_stride, x.data, x.row_stride, m, bias, out.data,
                        out.row_stride, w.out_features, x.cols(), stream_, true),
             "gemv (silu)");
    return;
  }
  Backend::linear_silu_mul(x, w, gate_up, out);
}

void CudaBackend::lora(const Tensor& x, const Tensor& slots, const std::vector<LoraPart>& parts, Tensor& out) {
  const cuda::LoraArgs p = lora_args(x, slots, parts, out);
  cuda::TimedOp t(*profile_, "lora", x.rows());
  launched(cuda::lora(act_, x.data, x.row_stride, x.rows(), slots.ptr<int32_t>(), p, lora_scratch_.ptr<float>(),
                      out.data, out.row_stride, stream_),
           "lora");
}

void CudaBackend::linear_lora(const Tensor& x, const Linear& w, const Tensor& slots, const std::vector<LoraPart>& parts,
                              Tensor& out) {
  const cuda::LoraArgs p = lora_args(x, slots, parts, out);
  const int32_t* sl = slots.ptr<int32_t>();
  float* v = lora_scratch_.ptr<float>();
  if (!lora_overlap_ || profile_->on()) {
    linear(x, w, out);
    {
      cuda::TimedOp t(*profile_, "lora_shrink", x.rows());
      launched(cuda::lora_shrink(act_, x.data, x.row_stride, x.rows(), sl, p, v, stream_), "lora_shrink");
    }
    cuda::TimedOp t(*profile_, "lora_expand", x.rows());
    launched(cuda::lora_expand(act_, x.rows(), sl, p, v, out.data, out.row_stride, stream_), "lora_expand");
    return;
  }
  APUS_CUDA_CHECK(cudaEventRecord(lora_fork_, stream_));
  APUS_CUDA_CHECK(cudaStreamWaitEvent(lora_stream_, lora_fork_, 0));
  const cudaError_t shrunk = cuda::lora_shrink(act_, x.data, x.row_stride, x.rows(), sl, p, v, lora_stream_);
  APUS_CUDA_CHECK(cudaEventRecord(lora_join_, lora_stream_));
  try {
    linear(x, w, out);
  } catch (...) {  // the side branch joins the step's stream whatever happens (a capture needs it)
    cudaStreamWaitEvent(stream_, lora_join_, 0);
    throw;
  }
  APUS_CUDA_CHECK(cudaStreamWaitEvent(stream_, lora_join_, 0));
  launched(shrunk, "lora_shrink");
  launched(cuda::lora_expand(act_, x.rows(), sl, p, v, out.data, out.row_stride, stream_), "lora_expand");
}

cuda::LoraArgs CudaBackend::lora_args(const Tensor& x, const Tensor& slots, const std::vector<LoraPart>& parts,
                                      const Tensor& out) {
  activation(x, "lora");
  activation(out, "lora");
  on_device(slots, "lora");
  APUS_CHECK(!parts.empty() && parts.size() <= size_t(cuda::kLoraMaxParts), "lora: {} parts", parts.size());
  APUS_CHECK(slots.numel() >= x.rows(), "lora: {} slots for {} tokens", slots.numel(), x.rows());
  cuda::LoraArgs p{};
  p.count = int(parts.size());
  p.rank = int(parts[0].a.shape[1]);
  p.num_slots = int(parts[0].a.shape[0]);
  p.in = x.cols();
  APUS_CHECK(p.rank == 8 || p.rank == 16 || p.rank == 32 || p.rank == 64,
             "lora: the CUDA kernels take LoRA slots of rank 8, 16, 32 or 64, not {} (--max_lora_rank)", p.rank);
  for (size_t i = 0; i < parts.size(); ++i) {
    const LoraPart& lp = parts[i];
    APUS_CHECK(lp.a.dtype == act_ && lp.b.dtype == act_ && lp.a.shape[1] == p.rank && lp.a.shape[2] == p.in &&
                   lp.b.shape[2] == p.rank && lp.offset + lp.b.shape[1] <= out.cols(),
               "lora: A {} / B {} at column {} do not fit input {} / output {}", lp.a.describe(), lp.b.describe(),
               lp.offset, x.describe(), out.describe());
    p.a[i] = lp.a.data;
    p.b[i] = lp.b.data;
    p.n[i] = lp.b.shape[1];
    p.offset[i] = lp.offset;
  }
  const int64_t need = x.rows() * cuda::kLoraMaxParts * p.rank;
  grow(lora_scratch_, DType::F32, std::max<int64_t>(need, 256 * cuda::kLoraMaxParts * 64));
  return p;
}

}  // namespace apus::cuda
