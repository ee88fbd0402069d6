// The CUDA backend: weights, KV cache and activations on one GPU, in the model's 16-bit dtype
// (F32 models run in F32); linear layers through cuBLAS with float32 accumulation, everything else
// through our kernels (kernels.h). All work is queued on one stream; the host waits only in
// copy_to_host() and synchronize(), i.e. once per step for the logits.
#include "backend/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "backend/cuda/cublas.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/op_profile.h"
#include "backend/cuda/quant_repack.h"
#include "core/error.h"

namespace apus {

namespace {

using cuda::check_cuda;
#define APUS_CUDA_CHECK(call) check_cuda((call), #call)

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error in {}: {}", what, cuda::cublas().status_string(s));
}

cudaDataType_t blas_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
    default: fail("cuBLAS: unsupported dtype {}", dtype_name(t));
  }
}

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

// Page-locked host memory for the per-step copies (DMA straight from/to it), grown on demand.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() {
    if (p_) cudaFreeHost(p_);
  }
  // The caller guarantees no copy still reads or writes the old buffer.
  void* get(size_t bytes) {
    if (bytes > cap_) {
      if (p_) APUS_CUDA_CHECK(cudaFreeHost(p_));
      p_ = nullptr;
      cap_ = std::max(bytes, cap_ * 3 / 2);
      APUS_CUDA_CHECK(cudaMallocHost(&p_, cap_));
    }
    return p_;
  }

 private:
  void* p_ = nullptr;
  size_t cap_ = 0;
};

constexpr size_t kCublasWorkspace = size_t(32) << 20;
constexpr int kSampleChunk = 64;  // rows drawn per launch: bounds the scratch to 64 vocabularies

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    APUS_CUDA_CHECK(cudaSetDevice(device));
    APUS_CUDA_CHECK(cudaGetDeviceProperties(&props_, device));
    // Stream 1 (a split step's sums) at the highest priority: its blocks are scheduled before the
    // waiting blocks of stream 0's large GEMMs, so that the sums do not wait for a whole GEMM.
    int least = 0, greatest = 0;
    APUS_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    for (int s = 0; s < kStreams; ++s)
      APUS_CUDA_CHECK(cudaStreamCreateWithPriority(&streams_[size_t(s)], cudaStreamNonBlocking, s == 0 ? least : greatest));
    for (cudaEvent_t& m : marks_) APUS_CUDA_CHECK(cudaEventCreateWithFlags(&m, cudaEventDisableTiming));
    stream_ = streams_[0];
    APUS_CUDA_CHECK(cudaEventCreateWithFlags(&upload_done_, cudaEventDisableTiming));
    APUS_CUDA_CHECK(cudaEventCreateWithFlags(&sample_done_, cudaEventDisableTiming));
    APUS_CUDA_CHECK(cudaStreamCreateWithFlags(&lora_stream_, cudaStreamNonBlocking));
    APUS_CUDA_CHECK(cudaEventCreateWithFlags(&lora_fork_, cudaEventDisableTiming));
    APUS_CUDA_CHECK(cudaEventCreateWithFlags(&lora_join_, cudaEventDisableTiming));
    const cuda::Cublas& cb = cuda::cublas();
    check_blas(cb.create(&blas_), "cublasCreate");
    check_blas(cb.set_stream(blas_, stream_), "cublasSetStream");
    // Our own workspace: cuBLAS then never allocates during a step (and CUDA graphs can capture it).
    blas_workspace_ = raw_alloc(DType::U8, {int64_t(kCublasWorkspace)});
    check_blas(cb.set_workspace(blas_, blas_workspace_.data, kCublasWorkspace), "cublasSetWorkspace");
    if (const char* m = std::getenv("APUS_CUBLAS_SM_MARGIN"); m != nullptr && std::atoi(m) > 0) {
      int sms = 0;
      APUS_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device_));
      check_blas(cb.set_sm_count_target(blas_, std::max(1, sms - std::atoi(m))), "cublasSetSmCountTarget");
    }
    errors_ = alloc(DType::I32, {2});
    errors_host_ = static_cast<cuda::DeviceError*>(error_pinned_.get(sizeof(cuda::DeviceError)));
    profile_ = std::make_unique<cuda::OpProfile>(stream_);
    const char* g = std::getenv("APUS_CUDA_GEMV");
    gemv_ = g == nullptr || std::string(g) != "0";
    const char* o = std::getenv("APUS_LORA_OVERLAP");
    lora_overlap_ = o == nullptr || std::string(o) != "0";
    if (const char* e = std::getenv("APUS_CUDA_EARLY_NORM")) early_norm_ = std::string(e) == "1" ? 1 : 0;
    const char* f = std::getenv("APUS_CUDA_NORM_FOLD");
    norm_fold_ = f == nullptr || std::string(f) != "0";
  }

  ~CudaBackend() override {
    for (cudaStream_t s : streams_) cudaStreamSynchronize(s);
    for (auto& [id, e] : graphs_) cudaGraphExecDestroy(e);
    profile_.reset();
    cuda::cublas().destroy(blas_);
    cudaEventDestroy(upload_done_);
    cudaEventDestroy(sample_done_);
    cudaEventDestroy(lora_fork_);
    cudaEventDestroy(lora_join_);
    cudaStreamDestroy(lora_stream_);
    for (cudaEvent_t m : marks_) cudaEventDestroy(m);
    for (cudaStream_t s : streams_) cudaStreamDestroy(s);
  }

  std::string name() const override {
    return fmt::format("cuda ({}, sm_{}{}, {} activations, cuBLAS", props_.name, props_.major, props_.minor,
                       dtype_name(act_)) + (gemv_ ? " + GEMV for <= 8 rows)" : ")");
  }
  Device device() const override { return Device::CUDA; }
  DType activation_dtype() const override { return act_; }
  void set_model_dtype(DType t) override {
    APUS_CHECK(is_float(t), "the CUDA backend runs F32, F16 or BF16 models, not {}", dtype_name(t));
    act_ = t;
  }
  DType weight_dtype(DType) const override { return act_; }

  Tensor alloc(DType dtype, std::vector<int64_t> shape) override {
    Tensor t = raw_alloc(dtype, std::move(shape));
    APUS_CUDA_CHECK(cudaMemsetAsync(t.data, 0, t.nbytes(), stream_));
    return t;
  }

  Tensor upload(const Tensor& host) override {
    if (host.device == Device::CUDA) return host;
    APUS_CHECK(host.contiguous(), "upload: {} is a strided view", host.describe());
    Tensor t = raw_alloc(host.dtype, host.shape);
    // Stream-ordered, and synchronous so that `host` (often a temporary) may go at once.
    APUS_CUDA_CHECK(cudaMemcpyAsync(t.data, host.data, host.nbytes(), cudaMemcpyHostToDevice, stream_));
    APUS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return t;
  }

  Tensor upload_step(const Tensor& host, Tensor& staging) override {
    APUS_CHECK(host.contiguous(), "upload_step: {} is a strided view", host.describe());
    const size_t bytes = host.nbytes();
    if (staging.empty() || staging.nbytes() < bytes) staging = raw_alloc(DType::U8, {int64_t(bytes + bytes / 4 + 256)});
    APUS_CUDA_CHECK(cudaEventSynchronize(upload_done_));  // the previous copy has left the pinned buffer
    void* pinned = upload_pinned_.get(bytes);
    std::memcpy(pinned, host.data, bytes);
    APUS_CUDA_CHECK(cudaMemcpyAsync(staging.data, pinned, bytes, cudaMemcpyHostToDevice, stream_));
    APUS_CUDA_CHECK(cudaEventRecord(upload_done_, stream_));
    Tensor v = make_view(staging.data, host.dtype, host.shape, Device::CUDA, staging.owner);
    return v;
  }

  void copy_to_host(const Tensor& src, void* dst) override {
    on_device(src, "copy_to_host");
    const size_t esize = dtype_size(src.dtype), row_bytes = size_t(src.cols()) * esize;
    const size_t bytes = row_bytes * size_t(src.rows());
    if (bytes == 0) return;
    void* pinned = download_pinned_.get(bytes);
    APUS_CUDA_CHECK(cudaMemcpy2DAsync(pinned, row_bytes, src.data, size_t(src.row_stride) * esize, row_bytes,
                                      size_t(src.rows()), cudaMemcpyDeviceToHost, stream_));
    synchronize();
    std::memcpy(dst, pinned, bytes);
  }

  bool memory_info(size_t* free_bytes, size_t* total_bytes) override {
    APUS_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return true;
  }

  // One matrix per linear layer: q/k/v and gate/up parts are concatenated at load (the parts are
  // device copies already), so each runs as one GEMM.
  Linear prepare_linear(Linear l) override {
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

  // A GPTQ / AWQ layer: runs of parts with one format and column order (q/k/v, gate/up) become one
  // matrix, repacked for quant.cu (cuda::repack_quant) and uploaded; float parts stay as they are.
  Linear prepare_quant_linear(const Linear& l) {
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

  // Room for `elements` of `dtype` in a scratch buffer that grows with the steps: replaced only when
  // too small, by one half again as large as asked (freeing the old one waits for the whole device:
  // fewer replacements while the steps' shapes grow), the old one kept while a recorded graph may
  // use it. Without `spare`, an exact fit (a buffer sized once, at load).
  void grow(Tensor& scratch, DType dtype, int64_t elements, bool spare = true) {
    if (scratch.nbytes() >= size_t(elements) * dtype_size(dtype)) return;
    if (!graphs_.empty()) retired_.push_back(scratch);
    scratch = raw_alloc(dtype, {spare ? elements + elements / 2 : elements});
  }

  static cuda::QuantArgs quant_args(const QuantWeight& q) {
    APUS_CHECK(q.qweight.device == Device::CUDA, "linear: quantized weight not prepared for the GPU (prepare_linear)");
    return {q.qweight.ptr<uint8_t>(), q.qweight.row_stride, q.scales.ptr<uint16_t>(), q.zeros.ptr<uint8_t>(),
            int(q.groups()), int(q.group_size), q.bits, q.out(), q.in(), cuda::quant_tile_rows(q.qweight.cols())};
  }

  // Whether a quantized part runs on the tensor-core kernels for m rows of x (16-bit activations,
  // 16-byte rows: act-order layers read their gathered copy, which has them).
  bool quant_kernels_take(const Tensor& x, const QuantWeight& q, int64_t m) const {
    const bool aligned = (reinterpret_cast<uintptr_t>(x.data) & 15u) == 0 && x.row_stride * dtype_size(act_) % 16 == 0;
    return act_ != DType::F32 && m <= cuda::kQuantMmaMaxRows && (aligned || !q.perm.empty());
  }

  // The activations a quantized part reads: x, or for act-order layers x's columns gathered into the
  // weight's order (a scratch buffer).
  std::pair<const void*, int64_t> quant_input(const Tensor& x, const QuantWeight& q) {
    if (q.perm.empty()) return {x.data, x.row_stride};
    const int64_t m = x.rows(), k = q.in();
    grow(gather_scratch_, act_, std::max<int64_t>(m * k, 64 * k));
    launched(cuda::gather_cols(act_, x.data, x.row_stride, q.perm.ptr<int32_t>(), m, k, gather_scratch_.data, k,
                               stream_),
             "gather_cols");
    return {gather_scratch_.data, k};
  }

  // y = x W^T (+ bias) for a quantized part: tensor cores on the packed codes for decode-sized
  // batches of 16-bit activations, else the dequantized matrix through cuBLAS.
  void quant_linear(const Tensor& x, const LinearPart& p, void* y, int64_t y_stride, DType y_dtype) {
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

  // A quantized part on the tensor-core kernels (where quant_kernels_take): its activations
  // (quant_input), bias and codes into cuda::quant_matmul, with the SiLU or a norm fold where asked.
  void quant_mma(const Tensor& x, const LinearPart& p, void* y, int64_t y_stride, DType y_dtype, bool silu = false,
                 const cuda::NormFold& fold = cuda::NormFold{}) {
    const auto [xin, x_stride] = quant_input(x, p.quant);
    launched(cuda::quant_matmul(act_, y_dtype, quant_args(p.quant), xin, x_stride, x.rows(),
                                p.bias.empty() ? nullptr : p.bias.ptr<float>(), y, y_stride, stream_, silu, fold),
             "quant_matmul");
  }

  // Row-major y[m, n] = x[m, k] w[n, k]^T (+ bias[n]) through cuBLAS (column-major y^T = w^T(op T)
  // x^T). The bias goes in as C with beta 1, so that it is added to the float32 sums before their one
  // rounding, as PyTorch's addmm with a bias does; adding it to y afterwards rounded twice and reread
  // y (qkv at 16,384 rows: 1,069 -> 990 us a layer on an H100, bench/RESULTS.md session 15).
  void gemm(const void* w, int64_t w_stride, const void* x, int64_t x_stride, int64_t m, int64_t n, int64_t k,
            const float* bias, void* y, int64_t y_stride, DType y_dtype) {
    if (bias) launched(cuda::bias_rows(y_dtype, y, y_stride, bias, m, n, stream_), "bias_rows");
    const float alpha = 1.0f, beta = bias ? 1.0f : 0.0f;
    check_blas(cuda::cublas().gemm_ex(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(m), int(k), &alpha, w,
                                      blas_type(act_), int(w_stride), x, blas_type(act_), int(x_stride), &beta, y,
                                      blas_type(y_dtype), int(y_stride), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx");
  }

  void embedding(const Tensor& ids, const Tensor& table, Tensor& out, int64_t first, int64_t vocab,
                 const Tensor* drawn) override {
    on_device(ids, "embedding");
    activation(out, "embedding");
    APUS_CHECK(table.dtype == act_ && table.cols() == out.cols(), "embedding: table {} does not fit output {}",
               table.describe(), out.describe());
    const bool with_drawn = drawn != nullptr && !drawn->empty();
    if (with_drawn) on_device(*drawn, "embedding");
    APUS_CHECK(!with_drawn || drawn->dtype == DType::I32, "embedding: drawn ids {} must be I32", drawn->describe());
    vocab_ = vocab > 0 ? vocab : table.rows();
    cuda::TimedOp t(*profile_, "embedding", ids.numel());
    launched(cuda::embedding(act_, ids.ptr<int32_t>(), ids.numel(), with_drawn ? drawn->ptr<int32_t>() : nullptr,
                             with_drawn ? drawn->numel() : 0, table.data, first, table.rows(), vocab_, table.cols(),
                             out.data, out.row_stride, error_word(), stream_),
             "embedding");
  }

  void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) override {
    activation(x, "gather_rows");
    activation(out, "gather_rows");
    cuda::TimedOp t(*profile_, "gather_rows", rows.numel());
    launched(cuda::gather_rows(act_, x.data, x.row_stride, rows.ptr<int32_t>(), rows.numel(), x.cols(), out.data,
                               out.row_stride, stream_),
             "gather_rows");
  }

  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    activation(x, "rms_norm");
    activation(out, "rms_norm");
    const int64_t n = w.numel();
    APUS_CHECK(x.cols() % n == 0 && out.cols() == x.cols(), "rms_norm: {} columns are not groups of {}", x.cols(), n);
    cuda::TimedOp t(*profile_, "rms_norm", x.rows(), fmt::format(" cols={}", n));
    launched(cuda::rms_norm(act_, x.data, x.row_stride, w.ptr<float>(), n, x.cols() / n, eps, out.data,
                            out.row_stride, x.rows(), early_norm(x.rows()), stream_),
             "rms_norm");
  }

  // Whether a norm of these rows lets the next kernel (a projection) start before it waits: for a
  // single row of a model with int4 layers, whose first loads of codes then overlap the kernel
  // before the norm too (H100, Qwen2.5-7B shape: int4 single-stream +2.0 %; bf16 -1.6 % and int4 at
  // batch 32 -4 %, so not there). APUS_CUDA_EARLY_NORM=0 / 1: never / every single-row norm.
  bool early_norm(int64_t rows) const { return rows == 1 && (early_norm_ < 0 ? quant_layers_ : early_norm_ == 1); }

  void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    activation(residual, "add_rms_norm");
    activation(x, "add_rms_norm");
    activation(out, "add_rms_norm");
    APUS_CHECK(w.numel() == residual.cols(), "add_rms_norm: weight [{}] for {} columns", w.numel(), residual.cols());
    if (profile_->skips("add_rms_norm")) return;
    cuda::TimedOp t(*profile_, "add_rms_norm", residual.rows());
    launched(cuda::add_rms_norm(act_, residual.data, residual.row_stride, x.data, x.row_stride, w.ptr<float>(),
                                residual.cols(), eps, out.data, out.row_stride, residual.rows(),
                                early_norm(residual.rows()), stream_),
             "add_rms_norm");
  }

  void linear(const Tensor& x, const Linear& w, Tensor& out) override {
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

  // Norm folding (Backend) on the int4 / int8 decode kernel: BF16 activations (the prescaled
  // norm_w * residual is not normalised, so F16 could overflow where the norm's output does not),
  // single-part quantized layers, decode-sized batches. Measured: bench/RESULTS.md, session 20.
  static_assert(kNormFoldCols == cuda::kNormFoldCols, "the decode kernel's blocks are the partial sums' columns");
  bool norm_fold_applies(const Linear& producer, const Linear& consumer, int64_t rows) const override {
    return folds(producer, rows) && folds(consumer, rows) && producer.out_features == consumer.in_features;
  }
  bool folds(const Linear& l, int64_t rows) const {
    return norm_fold_ && act_ == DType::BF16 && rows >= 1 && rows <= cuda::kQuantGemvMaxRows && l.parts.size() == 1 &&
           !l.parts[0].quant.empty();
  }

  void linear_add_prescale(const Tensor& x, const Linear& w, Tensor& residual, const Tensor& norm_w, Tensor& prescaled,
                           Tensor& sums) override {
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

  void linear_rms_scaled(const Tensor& prescaled, const Tensor& sums, float eps, const Linear& w, Tensor& out,
                         bool silu_mul) override {
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

  // For decode-sized batches one kernel (our GEMV, or the int4 decode kernel) computes each gate
  // column beside its up column, rounds both as linear() writes them and stores silu(gate) * up as
  // silu_mul() does: the two ops' bits without writing gate_up. Else the two ops.
  void linear_silu_mul(const Tensor& x, const Linear& w, Tensor& gate_up, Tensor& out) override {
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

  void rope(Tensor& x, const Tensor& cos, const Tensor& sin, int head_dim) override {
    activation(x, "rope");
    on_device(cos, "rope");
    const int half = int(cos.cols());
    cuda::TimedOp t(*profile_, "rope", x.rows());
    APUS_CHECK(x.cols() % head_dim == 0 && 2 * half <= head_dim, "rope: {} with head_dim {} and {} frequencies",
               x.describe(), head_dim, half);
    launched(cuda::rope(act_, x.data, x.row_stride, x.rows(), int(x.cols() / head_dim), head_dim, cos.ptr<float>(),
                        sin.ptr<float>(), half, stream_),
             "rope");
  }

  void store_kv(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, KvLayer& cache) override {
    activation(k, "store_kv");
    activation(v, "store_kv");
    activation(cache.k, "store_kv");
    const int64_t row = cache.k.shape[2] * cache.k.shape[3];
    APUS_CHECK(k.cols() == row && v.cols() == row, "store_kv: rows of {} for a cache of {} per slot", k.cols(), row);
    num_slots_ = cache.k.shape[0] * cache.k.shape[1];
    cuda::TimedOp t(*profile_, "store_kv", k.rows());
    launched(cuda::store_kv(act_, k.data, k.row_stride, v.data, v.row_stride, slot_mapping.ptr<int32_t>(), k.rows(),
                            row, cache.k.data, cache.v.data, num_slots_, error_word(), stream_),
             "store_kv");
  }

  void rope_store_kv(Tensor& qk, const Tensor& cos, const Tensor& sin, int head_dim, const Tensor& v,
                     const Tensor& slot_mapping, KvLayer& cache) override {
    activation(qk, "rope_store_kv");
    activation(v, "rope_store_kv");
    activation(cache.k, "rope_store_kv");
    on_device(cos, "rope_store_kv");
    const int half = int(cos.cols());
    const int64_t row = cache.k.shape[2] * cache.k.shape[3];
    APUS_CHECK(head_dim % 2 == 0 && 2 * half <= head_dim && qk.cols() % head_dim == 0 && v.cols() == row &&
                   qk.cols() > row && cache.k.shape[3] == head_dim,
               "rope_store_kv: {} and {} with head_dim {}, {} frequencies, a cache of {} per slot", qk.describe(),
               v.describe(), head_dim, half, row);
    num_slots_ = cache.k.shape[0] * cache.k.shape[1];
    const int kv_heads = int(row / head_dim), q_heads = int(qk.cols() / head_dim) - kv_heads;
    if (profile_->skips("rope_store_kv")) return;
    cuda::TimedOp t(*profile_, "rope_store_kv", qk.rows());
    launched(cuda::rope_store_kv(act_, qk.data, qk.row_stride, q_heads, kv_heads, head_dim, cos.ptr<float>(),
                                 sin.ptr<float>(), half, v.data, v.row_stride, slot_mapping.ptr<int32_t>(), qk.rows(),
                                 cache.k.data, cache.v.data, num_slots_, error_word(), stream_),
             "rope_store_kv");
  }

  void attention(const Tensor& q, const KvLayer& cache, const AttentionBatch& b, Tensor& out) override {
    activation(q, "attention");
    activation(out, "attention");
    activation(cache.k, "attention");
    cuda::AttentionParams p{};
    p.dt = act_;
    p.q = q.data;
    p.q_stride = q.row_stride;
    p.out = out.data;
    p.out_stride = out.row_stride;
    p.k_cache = cache.k.data;
    p.v_cache = cache.v.data;
    p.q_start = b.q_start.ptr<int32_t>();
    p.ctx_len = b.ctx_len.ptr<int32_t>();
    p.block_table = b.block_table.ptr<int32_t>();
    p.tokens = q.rows();
    p.num_seqs = b.num_seqs;
    p.max_blocks_per_seq = b.max_blocks_per_seq;
    p.block_size = int(cache.k.shape[1]);
    p.sliding_window = b.sliding_window;
    p.kv_heads = int(cache.k.shape[2]);
    p.head_dim = int(cache.k.shape[3]);
    p.heads = int(q.cols() / p.head_dim);
    p.scale = b.scale;
    p.max_q_len = b.max_q_len;
    p.max_ctx_len = b.max_ctx_len;
    p.multi_first = b.multi_first;
    p.multi_end = b.multi_end;
    p.single_seqs = b.single_seqs;
    p.min_multi_q = b.min_multi_q;
    APUS_CHECK(p.max_q_len > 0 && p.max_ctx_len >= p.max_q_len,
               "attention: AttentionBatch.max_q_len / max_ctx_len are not set ({} / {})", p.max_q_len, p.max_ctx_len);
    APUS_CHECK(p.head_dim <= 256 && p.head_dim * int(dtype_size(act_)) % 16 == 0,
               "attention: head_dim {} is not supported on CUDA (a multiple of 16 bytes, at most 256)", p.head_dim);
    APUS_CHECK(p.heads % p.kv_heads == 0 && out.cols() == q.cols(), "attention: {} query heads for {} kv heads",
               p.heads, p.kv_heads);
    const size_t smem = cuda::attention_smem_bytes(p);
    APUS_CHECK(smem <= props_.sharedMemPerBlockOptin, "attention: head_dim {} needs {} bytes of shared memory; {} has {}",
               p.head_dim, smem, props_.name, props_.sharedMemPerBlockOptin);
    p.num_splits = cuda::attention_splits(p, props_.multiProcessorCount);
    const size_t scratch = cuda::attention_scratch_floats(p);
    if (scratch > 0) {
      grow(attention_scratch_, DType::F32, int64_t(scratch));
      p.partial = attention_scratch_.ptr<float>();
    }
    if (profile_->skips("attention")) return;
    cuda::TimedOp t(*profile_, "attention", p.tokens, fmt::format(" max_q={} splits={}", p.max_q_len, p.num_splits));
    launched(cuda::paged_attention(p, stream_), "paged_attention");
  }

  void copy_from_host(const void* src, Tensor& dst) override {
    on_device(dst, "copy_from_host");
    APUS_CHECK(dst.contiguous(), "copy_from_host: {} is a strided view", dst.describe());
    // A stream of its own: the caller may be another thread than the one running (or recording) steps.
    cudaStream_t s = nullptr;
    APUS_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    const cudaError_t e = cudaMemcpyAsync(dst.data, src, dst.nbytes(), cudaMemcpyHostToDevice, s);
    const cudaError_t w = cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    check_cuda(e, "cudaMemcpyAsync (copy_from_host)");
    check_cuda(w, "cudaStreamSynchronize (copy_from_host)");
  }

  void lora(const Tensor& x, const Tensor& slots, const std::vector<LoraPart>& parts, Tensor& out) override {
    const cuda::LoraArgs p = lora_args(x, slots, parts, out);
    cuda::TimedOp t(*profile_, "lora", x.rows());
    launched(cuda::lora(act_, x.data, x.row_stride, x.rows(), slots.ptr<int32_t>(), p, lora_scratch_.ptr<float>(),
                        out.data, out.row_stride, stream_),
             "lora");
  }

  // The shrink (A x into the scratch) reads only x, so it runs on a second stream beside the base
  // GEMM (a branch of its own in a CUDA graph); only the expand, after both, stays on the step's
  // critical path. APUS_LORA_OVERLAP=0 (and the op profile, which times the halves apart) runs
  // linear, shrink and expand one after the other.
  void linear_lora(const Tensor& x, const Linear& w, const Tensor& slots, const std::vector<LoraPart>& parts,
                   Tensor& out) override {
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

  void silu_mul(const Tensor& gate_up, Tensor& out) override {
    activation(gate_up, "silu_mul");
    activation(out, "silu_mul");
    APUS_CHECK(gate_up.cols() == 2 * out.cols(), "silu_mul: {} -> {}", gate_up.describe(), out.describe());
    cuda::TimedOp t(*profile_, "silu_mul", out.rows());
    launched(cuda::silu_mul(act_, gate_up.data, gate_up.row_stride, out.data, out.row_stride, out.rows(), out.cols(),
                            stream_),
             "silu_mul");
  }

  void add(Tensor& x, const Tensor& y) override {
    activation(x, "add");
    activation(y, "add");
    cuda::TimedOp t(*profile_, "add", x.rows());
    launched(cuda::add(act_, x.data, x.row_stride, y.data, y.row_stride, x.rows(), x.cols(), stream_), "add");
  }

  void synchronize() override {
    APUS_CUDA_CHECK(cudaMemcpyAsync(errors_host_, errors_.data, sizeof(cuda::DeviceError), cudaMemcpyDeviceToHost,
                                    stream_));
    wait();
    profile_->collect();
    const cuda::DeviceError e = *errors_host_;
    if (e.code == cuda::kErrNone) return;
    APUS_CUDA_CHECK(cudaMemsetAsync(errors_.data, 0, sizeof(cuda::DeviceError), stream_));
    APUS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (e.code == cuda::kErrTokenId) fail("token id {} is outside the vocabulary (size {})", e.value, vocab_);
    fail("store_kv: slot {} outside the cache ({} slots)", e.value, num_slots_);
  }

  void argmax_rows(const Tensor& x, int64_t offset, Tensor& out) override {
    on_device(x, "argmax_rows");
    on_device(out, "argmax_rows");
    APUS_CHECK(x.dtype == DType::F32 && out.dtype == DType::F32 && out.rows() == x.rows() && out.cols() == 2 &&
                   out.contiguous() && x.cols() < (int64_t(1) << 24),
               "argmax_rows: {} into {}", x.describe(), out.describe());
    cuda::TimedOp t(*profile_, "argmax_rows", x.rows());
    launched(cuda::argmax_rows(x.ptr<float>(), x.row_stride, x.rows(), x.cols(), offset, out.ptr<float>(), stream_),
             "argmax_rows");
  }

  // The draws' arguments go up through a pinned buffer; their ids come back as queue_fetch_draws'.
  bool sample(const Tensor& logits, const std::vector<SampleRow>& rows, Tensor& drawn) override {
    on_device(logits, "sample");
    on_device(drawn, "sample");
    const int n = int(rows.size());
    APUS_CHECK(logits.dtype == DType::F32 && drawn.dtype == DType::I32 && drawn.numel() >= n,
               "sample: {} rows of logits {} into {}", n, logits.describe(), drawn.describe());
    wait_event(sample_done_);  // the previous draw's arguments have gone up (its kernels ran)
    const int64_t vocab = logits.cols();
    const size_t args_bytes = (sizeof(cuda::SampleArgs) * size_t(n) + 15) / 16 * 16;
    char* host = static_cast<char*>(sample_pinned_.get(args_bytes));
    auto* args = reinterpret_cast<cuda::SampleArgs*>(host);
    bool any_drawn = false;
    for (int i = 0; i < n; ++i) {
      const SampleRow& r = rows[size_t(i)];
      APUS_CHECK(r.row >= 0 && r.row < logits.rows(), "sample: row {} of {} rows of logits", r.row, logits.rows());
      args[i] = cuda::SampleArgs{r.row, r.top_k, r.temperature, r.top_p, r.min_p, r.u};
      any_drawn = any_drawn || !r.greedy();
    }
    if (n > 0) {
      if (size_t(sample_buffer_.numel()) < args_bytes) sample_buffer_ = raw_alloc(DType::U8, {int64_t(2 * args_bytes)});
      auto* dev_args = static_cast<cuda::SampleArgs*>(sample_buffer_.data);
      APUS_CUDA_CHECK(cudaMemcpyAsync(dev_args, host, args_bytes, cudaMemcpyHostToDevice, stream_));
      // Draws (not greedy rows) need a vocabulary of scratch per row: kSampleChunk rows at a time.
      const int chunk = any_drawn ? std::min(n, kSampleChunk) : n;
      float* scratch = nullptr;
      if (any_drawn) {
        grow(sample_scratch_, DType::F32, chunk * vocab);
        scratch = sample_scratch_.ptr<float>();
      }
      cuda::TimedOp t(*profile_, "sample", n);
      // Greedy rows only: a row's maximum found by several blocks where the rows are few.
      if (const int slices = any_drawn ? 1 : cuda::greedy_slices(vocab, n, props_.multiProcessorCount); slices > 1) {
        grow(greedy_candidates_, DType::F32, int64_t(n) * 2 * slices);
        launched(cuda::greedy(logits.ptr<float>(), logits.row_stride, vocab, dev_args, n, slices,
                              greedy_candidates_.ptr<float>(), drawn.ptr<int32_t>(), stream_),
                 "greedy");
      } else {
        for (int s = 0; s < n; s += chunk)
          launched(cuda::sample(logits.ptr<float>(), logits.row_stride, vocab, dev_args + s, std::min(chunk, n - s),
                                scratch, drawn.ptr<int32_t>() + s, stream_),
                   "sample");
      }
    }
    queue_fetch_draws(drawn, n);
    return true;
  }

  void pick_greedy(const Tensor& candidates, Tensor& drawn) override {
    on_device(candidates, "pick_greedy");
    on_device(drawn, "pick_greedy");
    APUS_CHECK(candidates.dtype == DType::F32 && candidates.contiguous() && candidates.cols() % 2 == 0 &&
                   drawn.dtype == DType::I32 && drawn.numel() >= candidates.rows(),
               "pick_greedy: {} into {}", candidates.describe(), drawn.describe());
    cuda::TimedOp t(*profile_, "pick_greedy", candidates.rows());
    launched(cuda::pick_greedy(candidates.ptr<float>(), candidates.rows(), int(candidates.cols() / 2),
                               drawn.ptr<int32_t>(), stream_),
             "pick_greedy");
  }

  // The error word and drawn[0, n) go into a pinned buffer, then an event that fetch_draws() waits
  // for (a step queued after it may still run).
  void queue_fetch_draws(const Tensor& drawn, int n) override {
    on_device(drawn, "queue_fetch_draws");
    APUS_CHECK(drawn.dtype == DType::I32 && n <= drawn.numel(), "queue_fetch_draws: {} of {}", n, drawn.describe());
    wait_event(sample_done_);  // the previous ids have left the pinned buffer
    sample_count_ = n;
    char* back = static_cast<char*>(draws_pinned_.get(sizeof(cuda::DeviceError) + 4 * size_t(n)));
    APUS_CUDA_CHECK(cudaMemcpyAsync(back, errors_.data, sizeof(cuda::DeviceError), cudaMemcpyDeviceToHost, stream_));
    if (n > 0)
      APUS_CUDA_CHECK(cudaMemcpyAsync(back + sizeof(cuda::DeviceError), drawn.data, 4 * size_t(n),
                                      cudaMemcpyDeviceToHost, stream_));
    APUS_CUDA_CHECK(cudaEventRecord(sample_done_, stream_));
    sample_back_ = back;
  }

  void fetch_draws(int32_t* ids, int n) override {
    APUS_CHECK(sample_back_ != nullptr && n <= sample_count_, "fetch_draws: {} ids of a draw of {}", n, sample_count_);
    wait_event(sample_done_);
    profile_->collect();
    cuda::DeviceError e;
    std::memcpy(&e, sample_back_, sizeof e);
    std::memcpy(ids, sample_back_ + sizeof(cuda::DeviceError), 4 * size_t(n));
    if (e.code != cuda::kErrNone) synchronize();  // reports it
  }

  // Waits for the stream; in a tensor-parallel group by polling, so that the group's check can stop
  // a wait for a peer that died (it throws).
  void wait() {
    if (!wait_check_) {
      APUS_CUDA_CHECK(cudaStreamSynchronize(stream_));
      return;
    }
    wait_for([&] { return cudaStreamQuery(stream_); }, "cudaStreamQuery");
  }
  void wait_event(cudaEvent_t e) {
    if (!wait_check_) {
      APUS_CUDA_CHECK(cudaEventSynchronize(e));
      return;
    }
    wait_for([&] { return cudaEventQuery(e); }, "cudaEventQuery");
  }
  // Polls `query` (cudaStreamQuery or cudaEventQuery) until it stops answering cudaErrorNotReady.
  template <typename Query>
  void wait_for(Query&& query, const char* what) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      const cudaError_t e = query();
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) check_cuda(e, what);
      wait_check_(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      std::this_thread::yield();
    }
  }
  void set_wait_check(std::function<void(double)> f) { wait_check_ = std::move(f); }
  cudaStream_t stream() const { return stream_; }
  int device_index() const { return device_; }
  cuda::OpProfile& profile() { return *profile_; }

  // Up to 64 rows as they are (the GEMV's, and few shapes), then multiples of 128 (at most 2.4 % more
  // rows from ~1,000 on). cuBLAS's first GEMM of each new row count waited for the device (~one step)
  // in the offline run's first steps, where the logit rows grow by ~32 a step: 0.4 s of its ~20.8
  // (H200, session 16).
  int64_t logit_rows_bucket(int64_t m) const override { return m <= 64 ? m : (m + 127) / 128 * 128; }

  // With APUS_CUDA_PROFILE the ops are timed one by one, eagerly (and on one stream: the profile's
  // events are stream 0's).
  bool graphs_supported() const override { return !profile_->on(); }
  int streams() const override { return profile_->on() ? 1 : kStreams; }
  void set_stream(int s) override {
    APUS_CHECK(s >= 0 && s < streams(), "set_stream: stream {} of {}", s, streams());
    if (stream_ == streams_[s]) return;
    stream_ = streams_[s];
    check_blas(cuda::cublas().set_stream(blas_, stream_), "cublasSetStream");
  }
  // A wait takes the event's state when it is queued, so a mark may be recorded again after.
  void mark(int m) override { APUS_CUDA_CHECK(cudaEventRecord(marks_.at(size_t(m)), stream_)); }
  void wait_mark(int m) override { APUS_CUDA_CHECK(cudaStreamWaitEvent(stream_, marks_.at(size_t(m)), 0)); }

  void begin_capture() override {
    // Thread-local: another thread's CUDA calls (the server's) do not break this capture.
    APUS_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  }

  int end_capture() override {
    cudaGraph_t g = nullptr;
    APUS_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
    cudaGraphExec_t e = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&e, g, 0);
    cudaGraphDestroy(g);
    check_cuda(err, "cudaGraphInstantiate");
    graphs_[next_graph_] = e;
    return next_graph_++;
  }

  void replay(int graph) override {
    const auto it = graphs_.find(graph);
    APUS_CHECK(it != graphs_.end(), "replay: no graph {}", graph);
    static const bool trace = std::getenv("APUS_TP_TRACE") != nullptr;
    if (trace) std::fprintf(stderr, "tp-trace device %d replays graph %d\n", device_, graph);
    APUS_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
  }

  void drop_graph(int graph) override {
    const auto it = graphs_.find(graph);
    if (it == graphs_.end()) return;
    APUS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    cudaGraphExecDestroy(it->second);
    graphs_.erase(it);
    if (graphs_.empty()) retired_.clear();
  }

  double measure_copy_bandwidth() override {
    const int64_t n = int64_t(1) << 28;  // 1 GiB of floats each way
    Tensor a = raw_alloc(DType::F32, {n}), b = raw_alloc(DType::F32, {n});
    launched(cuda::fill_random(DType::F32, a.data, n, 1, stream_), "fill_random");
    const double s = median_seconds(10, [&] {
      APUS_CUDA_CHECK(cudaMemcpyAsync(b.data, a.data, a.nbytes(), cudaMemcpyDeviceToDevice, stream_));
    });
    return 2.0 * double(a.nbytes()) / s;
  }

  double measure_matmul_flops() override {
    const int n = 8192;
    Tensor a = raw_alloc(DType::BF16, {n, n}), b = raw_alloc(DType::BF16, {n, n}), c = raw_alloc(DType::BF16, {n, n});
    launched(cuda::fill_random(DType::BF16, a.data, a.numel(), 2, stream_), "fill_random");
    launched(cuda::fill_random(DType::BF16, b.data, b.numel(), 3, stream_), "fill_random");
    const float alpha = 1.0f, beta = 0.0f;
    const double s = median_seconds(10, [&] {
      check_blas(cuda::cublas().gemm_ex(blas_, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a.data, CUDA_R_16BF, n,
                                        b.data, CUDA_R_16BF, n, &beta, c.data, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx");
    });
    return 2.0 * double(n) * n * n / s;
  }

 private:
  Tensor raw_alloc(DType dtype, std::vector<int64_t> shape) {
    Tensor t = make_view(nullptr, dtype, std::move(shape), Device::CUDA);
    const size_t bytes = std::max<size_t>(t.nbytes(), 16);
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("out of GPU memory allocating {} ({:.1f} MiB; {:.1f} GiB free of {:.1f} GiB): {}", t.describe(),
           double(bytes) / (1 << 20), double(free_b) / (1 << 30), double(total_b) / (1 << 30), cudaGetErrorString(e));
    }
    t.data = p;
    t.owner = std::shared_ptr<void>(p, [](void* q) { cudaFree(q); });
    return t;
  }

  void on_device(const Tensor& t, const char* op) const {
    APUS_CHECK(t.device == Device::CUDA, "{}: {} is in host memory; the CUDA backend takes device tensors", op,
               t.describe());
  }
  void activation(const Tensor& t, const char* op) const {
    on_device(t, op);
    APUS_CHECK(t.dtype == act_, "{}: {} is not in the activation dtype {}", op, t.describe(), dtype_name(act_));
  }
  // Checks a LoRA op's operands and makes room for its scratch (the shrunk activations).
  cuda::LoraArgs lora_args(const Tensor& x, const Tensor& slots, const std::vector<LoraPart>& parts, const Tensor& out) {
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

  void launched(cudaError_t e, const char* kernel) const { check_cuda(e, kernel); }

  cuda::DeviceError* error_word() const { return static_cast<cuda::DeviceError*>(errors_.data); }

  template <typename F>
  double median_seconds(int reps, F&& run) {
    cudaEvent_t start, stop;
    APUS_CUDA_CHECK(cudaEventCreate(&start));
    APUS_CUDA_CHECK(cudaEventCreate(&stop));
    run();  // warm-up (and cuBLAS's heuristics)
    run();
    std::vector<float> ms;
    for (int i = 0; i < reps; ++i) {
      APUS_CUDA_CHECK(cudaEventRecord(start, stream_));
      run();
      APUS_CUDA_CHECK(cudaEventRecord(stop, stream_));
      APUS_CUDA_CHECK(cudaEventSynchronize(stop));
      float t = 0.0f;
      APUS_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
      ms.push_back(t);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    std::sort(ms.begin(), ms.end());
    return double(ms[ms.size() / 2]) / 1e3;
  }

  int device_;
  cudaDeviceProp props_{};
  static constexpr int kStreams = 2;
  std::array<cudaStream_t, kStreams> streams_{};
  std::array<cudaEvent_t, kMarks> marks_{};
  cudaStream_t stream_ = nullptr;  // the current one of streams_ (Backend::set_stream)
  cudaEvent_t upload_done_ = nullptr;
  cudaEvent_t sample_done_ = nullptr;  // the last queued ids have reached sample_back_
  const char* sample_back_ = nullptr;  // in draws_pinned_: the error word, then the ids
  int sample_count_ = 0;
  cublasHandle_t blas_ = nullptr;
  DType act_ = DType::BF16;
  Tensor blas_workspace_, errors_, attention_scratch_, sample_buffer_, sample_scratch_, greedy_candidates_;
  Tensor lora_scratch_;  // the shrunk activations of Backend::lora (grown like attention_scratch_)
  cudaStream_t lora_stream_ = nullptr;  // linear_lora's shrink, beside the base GEMM
  cudaEvent_t lora_fork_ = nullptr, lora_join_ = nullptr;
  bool lora_overlap_ = true;  // APUS_LORA_OVERLAP=0: linear_lora one op after the other
  Tensor quant_scratch_;   // the largest quantized matrix dequantized (prefill), sized at load
  Tensor gather_scratch_;  // act-order layers' reordered activations (grown like attention_scratch_)
  PinnedBuffer upload_pinned_, download_pinned_, error_pinned_, sample_pinned_, draws_pinned_;
  cuda::DeviceError* errors_host_ = nullptr;
  int64_t vocab_ = 0, num_slots_ = 0;
  bool gemv_ = true;                    // APUS_CUDA_GEMV=0: cuBLAS for every linear layer
  bool quant_layers_ = false;           // an int4 / int8 layer has been prepared (early_norm)
  int early_norm_ = -1;                 // APUS_CUDA_EARLY_NORM: -1 unset, 0, 1
  bool norm_fold_ = true;               // APUS_CUDA_NORM_FOLD=0: never fold norms (norm_fold_applies)
  std::map<int, cudaGraphExec_t> graphs_;
  int next_graph_ = 0;
  std::vector<Tensor> retired_;         // buffers replaced while graphs that use them live
  std::unique_ptr<cuda::OpProfile> profile_;
  std::function<void(double)> wait_check_;  // tensor parallelism: see wait()
};

CudaBackend& cuda_backend(Backend& b) {
  auto* c = dynamic_cast<CudaBackend*>(&b);
  APUS_CHECK(c != nullptr, "{} is not a CUDA backend", b.name());
  return *c;
}

}  // namespace

namespace cuda {

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e));
}


void* stream_of(Backend& b) { return cuda_backend(b).stream(); }
int device_of(Backend& b) { return cuda_backend(b).device_index(); }
OpProfile& profile_of(Backend& b) { return cuda_backend(b).profile(); }
void set_wait_check(Backend& b, std::function<void(double)> check) { cuda_backend(b).set_wait_check(std::move(check)); }
void wait(Backend& b) { cuda_backend(b).wait(); }

}  // namespace cuda

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" / "no device" error
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(int device_index) {
  const int n = cuda_device_count();
  APUS_CHECK(n > 0, "--device cuda: no CUDA GPU is visible (no device, or no NVIDIA driver); use --device cpu");
  APUS_CHECK(device_index >= 0 && device_index < n, "CUDA device {} does not exist ({} visible)", device_index, n);
  return std::make_unique<CudaBackend>(device_index);
}

}  // namespace apus
