// The CUDA Backend class, private to the CUDA backend (the rest of the program makes one through
// make_cuda_backend, cuda_backend.h): declared here, defined in cuda_backend.cpp (memory, streams and
// graphs, norms, attention, sampling) and cuda_linear.cpp (linear layers: cuBLAS, our GEMV, the int4
// / int8 kernels, norm folding, LoRA). Its weights, KV cache and activations live on one GPU, in the
// model's 16-bit dtype (F32 models run in F32); all work is queued on one stream (two while a split
// step runs); the host waits only in copy_to_host() and synchronize(), i.e. once per step.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cublas.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/op_profile.h"
#include "core/error.h"

#define APUS_CUDA_CHECK(call) ::apus::cuda::check_cuda((call), #call)

namespace apus::cuda {

void check_blas(cublasStatus_t s, const char* what);

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

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;
  std::string name() const override;
  Device device() const override { return Device::CUDA; }
  DType activation_dtype() const override { return act_; }
  void set_model_dtype(DType t) override;
  DType weight_dtype(DType) const override { return act_; }
  Tensor alloc(DType dtype, std::vector<int64_t> shape) override;
  Tensor upload(const Tensor& host) override;
  Tensor upload_step(const Tensor& host, Tensor& staging) override;
  void copy_to_host(const Tensor& src, void* dst) override;
  bool memory_info(size_t* free_bytes, size_t* total_bytes) override;

  // Room for `elements` of `dtype` in a scratch buffer that grows with the steps: replaced only when
  // too small, by one half again as large as asked (freeing the old one waits for the whole device:
  // fewer replacements while the steps' shapes grow), the old one kept while a recorded graph may
  // use it. Without `spare`, an exact fit (a buffer sized once, at load).
  void grow(Tensor& scratch, DType dtype, int64_t elements, bool spare = true);
  void embedding(const Tensor& ids, const Tensor& table, Tensor& out, int64_t first, int64_t vocab,
                 const Tensor* drawn) override;
  void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) override;
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override;

  // Whether a norm of these rows lets the next kernel (a projection) start before it waits: for a
  // single row of a model with int4 layers, whose first loads of codes then overlap the kernel
  // before the norm too (H100, Qwen2.5-7B shape: int4 single-stream +2.0 %; bf16 -1.6 % and int4 at
  // batch 32 -4 %, so not there). APUS_CUDA_EARLY_NORM=0 / 1: never / every single-row norm.
  bool early_norm(int64_t rows) const { return rows == 1 && (early_norm_ < 0 ? quant_layers_ : early_norm_ == 1); }
  void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& w, float eps, Tensor& out) override;
  void rope(Tensor& x, const Tensor& cos, const Tensor& sin, int head_dim) override;
  void store_kv(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, KvLayer& cache) override;
  void rope_store_kv(Tensor& qk, const Tensor& cos, const Tensor& sin, int head_dim, const Tensor& v,
                     const Tensor& slot_mapping, KvLayer& cache) override;
  void attention(const Tensor& q, const KvLayer& cache, const AttentionBatch& b, Tensor& out) override;
  void copy_from_host(const void* src, Tensor& dst) override;
  void silu_mul(const Tensor& gate_up, Tensor& out) override;
  void add(Tensor& x, const Tensor& y) override;
  void synchronize() override;
  void argmax_rows(const Tensor& x, int64_t offset, Tensor& out) override;

  // The draws' arguments go up through a pinned buffer; their ids come back as queue_fetch_draws'.
  bool sample(const Tensor& logits, const std::vector<SampleRow>& rows, Tensor& drawn) override;
  void pick_greedy(const Tensor& candidates, Tensor& drawn) override;

  // The error word and drawn[0, n) go into a pinned buffer, then an event that fetch_draws() waits
  // for (a step queued after it may still run).
  void queue_fetch_draws(const Tensor& drawn, int n) override;
  void fetch_draws(int32_t* ids, int n) override;

  // Waits for the stream; in a tensor-parallel group by polling, so that the group's check can stop
  // a wait for a peer that died (it throws).
  void wait();
  void wait_event(cudaEvent_t e);

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
  void set_stream(int s) override;

  // A wait takes the event's state when it is queued, so a mark may be recorded again after.
  void mark(int m) override { APUS_CUDA_CHECK(cudaEventRecord(marks_.at(size_t(m)), stream_)); }
  void wait_mark(int m) override { APUS_CUDA_CHECK(cudaStreamWaitEvent(stream_, marks_.at(size_t(m)), 0)); }
  void begin_capture() override;
  int end_capture() override;
  void replay(int graph) override;
  void drop_graph(int graph) override;
  double measure_copy_bandwidth() override;
  double measure_matmul_flops() override;

  // Linear layers (cuda_linear.cpp).

  // One matrix per linear layer: q/k/v and gate/up parts are concatenated at load (the parts are
  // device copies already), so each runs as one GEMM.
  Linear prepare_linear(Linear l) override;
  void linear(const Tensor& x, const Linear& w, Tensor& out) override;

  // Norm folding (Backend) on the int4 / int8 decode kernel: BF16 activations (the prescaled
  // norm_w * residual is not normalised, so F16 could overflow where the norm's output does not),
  // single-part quantized layers, decode-sized batches. Measured: bench/RESULTS.md, session 20.
  static_assert(kNormFoldCols == cuda::kNormFoldCols, "the decode kernel's blocks are the partial sums' columns");
  bool norm_fold_applies(const Linear& producer, const Linear& consumer, int64_t rows) const override;
  void linear_add_prescale(const Tensor& x, const Linear& w, Tensor& residual, const Tensor& norm_w, Tensor& prescaled,
                           Tensor& sums) override;
  void linear_rms_scaled(const Tensor& prescaled, const Tensor& sums, float eps, const Linear& w, Tensor& out,
                         bool silu_mul) override;

  // For decode-sized batches one kernel (our GEMV, or the int4 decode kernel) computes each gate
  // column beside its up column, rounds both as linear() writes them and stores silu(gate) * up as
  // silu_mul() does: the two ops' bits without writing gate_up. Else the two ops.
  void linear_silu_mul(const Tensor& x, const Linear& w, Tensor& gate_up, Tensor& out) override;
  void lora(const Tensor& x, const Tensor& slots, const std::vector<LoraPart>& parts, Tensor& out) override;

  // The shrink (A x into the scratch) reads only x, so it runs on a second stream beside the base
  // GEMM (a branch of its own in a CUDA graph); only the expand, after both, stays on the step's
  // critical path. APUS_LORA_OVERLAP=0 (and the op profile, which times the halves apart) runs
  // linear, shrink and expand one after the other.
  void linear_lora(const Tensor& x, const Linear& w, const Tensor& slots, const std::vector<LoraPart>& parts,
                   Tensor& out) override;

 private:
  // Linear layers' helpers (cuda_linear.cpp).

  // A GPTQ / AWQ layer: runs of parts with one format and column order (q/k/v, gate/up) become one
  // matrix, repacked for quant.cu (cuda::repack_quant) and uploaded; float parts stay as they are.
  Linear prepare_quant_linear(const Linear& l);
  static cuda::QuantArgs quant_args(const QuantWeight& q);

  // Whether a quantized part runs on the tensor-core kernels for m rows of x (16-bit activations,
  // 16-byte rows: act-order layers read their gathered copy, which has them).
  bool quant_kernels_take(const Tensor& x, const QuantWeight& q, int64_t m) const;

  // The activations a quantized part reads: x, or for act-order layers x's columns gathered into the
  // weight's order (a scratch buffer).
  std::pair<const void*, int64_t> quant_input(const Tensor& x, const QuantWeight& q);

  // y = x W^T (+ bias) for a quantized part: tensor cores on the packed codes for decode-sized
  // batches of 16-bit activations, else the dequantized matrix through cuBLAS.
  void quant_linear(const Tensor& x, const LinearPart& p, void* y, int64_t y_stride, DType y_dtype);

  // A quantized part on the tensor-core kernels (where quant_kernels_take): its activations
  // (quant_input), bias and codes into cuda::quant_matmul, with the SiLU or a norm fold where asked.
  void quant_mma(const Tensor& x, const LinearPart& p, void* y, int64_t y_stride, DType y_dtype, bool silu = false,
                 const cuda::NormFold& fold = cuda::NormFold{});

  // Row-major y[m, n] = x[m, k] w[n, k]^T (+ bias[n]) through cuBLAS (column-major y^T = w^T(op T)
  // x^T). The bias goes in as C with beta 1, so that it is added to the float32 sums before their one
  // rounding, as PyTorch's addmm with a bias does; adding it to y afterwards rounded twice and reread
  // y (qkv at 16,384 rows: 1,069 -> 990 us a layer on an H100, bench/RESULTS.md session 15).
  void gemm(const void* w, int64_t w_stride, const void* x, int64_t x_stride, int64_t m, int64_t n, int64_t k,
            const float* bias, void* y, int64_t y_stride, DType y_dtype);
  bool folds(const Linear& l, int64_t rows) const;

  Tensor raw_alloc(DType dtype, std::vector<int64_t> shape);
  void on_device(const Tensor& t, const char* op) const;
  void activation(const Tensor& t, const char* op) const;
  // Checks a LoRA op's operands and makes room for its scratch (the shrunk activations).
  cuda::LoraArgs lora_args(const Tensor& x, const Tensor& slots, const std::vector<LoraPart>& parts, const Tensor& out);
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

// `b` as the CUDA backend it is (fails naming it otherwise).
CudaBackend& cuda_backend(Backend& b);

}  // namespace apus::cuda
