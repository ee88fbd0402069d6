// The CUDA Backend (cuda_backend_impl.h): memory, streams and graphs, the ops other than linear
// layers (cuda_linear.cpp), sampling; and the functions cuda_backend.h declares.
#include "backend/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend_impl.h"
#include "core/error.h"

namespace apus {

namespace cuda {

namespace {

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

constexpr size_t kCublasWorkspace = size_t(32) << 20;
constexpr int kSampleChunk = 64;  // rows drawn per launch: bounds the scratch to 64 vocabularies

}  // namespace

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error in {}: {}", what, cuda::cublas().status_string(s));
}

CudaBackend::CudaBackend(int device) : device_(device) {
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

CudaBackend::~CudaBackend() {
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

std::string CudaBackend::name() const {
  return fmt::format("cuda ({}, sm_{}{}, {} activations, cuBLAS", props_.name, props_.major, props_.minor,
                     dtype_name(act_)) + (gemv_ ? " + GEMV for <= 8 rows)" : ")");
}

void CudaBackend::set_model_dtype(DType t) {
  APUS_CHECK(is_float(t), "the CUDA backend runs F32, F16 or BF16 models, not {}", dtype_name(t));
  act_ = t;
}

Tensor CudaBackend::alloc(DType dtype, std::vector<int64_t> shape) {
  Tensor t = raw_alloc(dtype, std::move(shape));
  APUS_CUDA_CHECK(cudaMemsetAsync(t.data, 0, t.nbytes(), stream_));
  return t;
}

Tensor CudaBackend::upload(const Tensor& host) {
  if (host.device == Device::CUDA) return host;
  APUS_CHECK(host.contiguous(), "upload: {} is a strided view", host.describe());
  Tensor t = raw_alloc(host.dtype, host.shape);
  // Stream-ordered, and synchronous so that `host` (often a temporary) may go at once.
  APUS_CUDA_CHECK(cudaMemcpyAsync(t.data, host.data, host.nbytes(), cudaMemcpyHostToDevice, stream_));
  APUS_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return t;
}

Tensor CudaBackend::upload_step(const Tensor& host, Tensor& staging) {
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

void CudaBackend::copy_to_host(const Tensor& src, void* dst) {
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

bool CudaBackend::memory_info(size_t* free_bytes, size_t* total_bytes) {
  APUS_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
  return true;
}

void CudaBackend::grow(Tensor& scratch, DType dtype, int64_t elements, bool spare) {
  if (scratch.nbytes() >= size_t(elements) * dtype_size(dtype)) return;
  if (!graphs_.empty()) retired_.push_back(scratch);
  scratch = raw_alloc(dtype, {spare ? elements + elements / 2 : elements});
}

void CudaBackend::embedding(const Tensor& ids, const Tensor& table, Tensor& out, int64_t first, int64_t vocab,
                            const Tensor* drawn) {
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

void CudaBackend::gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) {
  activation(x, "gather_rows");
  activation(out, "gather_rows");
  cuda::TimedOp t(*profile_, "gather_rows", rows.numel());
  launched(cuda::gather_rows(act_, x.data, x.row_stride, rows.ptr<int32_t>(), rows.numel(), x.cols(), out.data,
                             out.row_stride, stream_),
           "gather_rows");
}

void CudaBackend::rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  activation(x, "rms_norm");
  activation(out, "rms_norm");
  const int64_t n = w.numel();
  APUS_CHECK(x.cols() % n == 0 && out.cols() == x.cols(), "rms_norm: {} columns are not groups of {}", x.cols(), n);
  cuda::TimedOp t(*profile_, "rms_norm", x.rows(), fmt::format(" cols={}", n));
  launched(cuda::rms_norm(act_, x.data, x.row_stride, w.ptr<float>(), n, x.cols() / n, eps, out.data,
                          out.row_stride, x.rows(), early_norm(x.rows()), stream_),
           "rms_norm");
}

void CudaBackend::add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& w, float eps, Tensor& out) {
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

void CudaBackend::rope(Tensor& x, const Tensor& cos, const Tensor& sin, int head_dim) {
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

void CudaBackend::store_kv(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, KvLayer& cache) {
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

void CudaBackend::rope_store_kv(Tensor& qk, const Tensor& cos, const Tensor& sin, int head_dim, const Tensor& v,
                                const Tensor& slot_mapping, KvLayer& cache) {
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

void CudaBackend::attention(const Tensor& q, const KvLayer& cache, const AttentionBatch& b, Tensor& out) {
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

void CudaBackend::copy_from_host(const void* src, Tensor& dst) {
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

void CudaBackend::silu_mul(const Tensor& gate_up, Tensor& out) {
  activation(gate_up, "silu_mul");
  activation(out, "silu_mul");
  APUS_CHECK(gate_up.cols() == 2 * out.cols(), "silu_mul: {} -> {}", gate_up.describe(), out.describe());
  cuda::TimedOp t(*profile_, "silu_mul", out.rows());
  launched(cuda::silu_mul(act_, gate_up.data, gate_up.row_stride, out.data, out.row_stride, out.rows(), out.cols(),
                          stream_),
           "silu_mul");
}

void CudaBackend::add(Tensor& x, const Tensor& y) {
  activation(x, "add");
  activation(y, "add");
  cuda::TimedOp t(*profile_, "add", x.rows());
  launched(cuda::add(act_, x.data, x.row_stride, y.data, y.row_stride, x.rows(), x.cols(), stream_), "add");
}

void CudaBackend::synchronize() {
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

void CudaBackend::argmax_rows(const Tensor& x, int64_t offset, Tensor& out) {
  on_device(x, "argmax_rows");
  on_device(out, "argmax_rows");
  APUS_CHECK(x.dtype == DType::F32 && out.dtype == DType::F32 && out.rows() == x.rows() && out.cols() == 2 &&
                 out.contiguous() && x.cols() < (int64_t(1) << 24),
             "argmax_rows: {} into {}", x.describe(), out.describe());
  cuda::TimedOp t(*profile_, "argmax_rows", x.rows());
  launched(cuda::argmax_rows(x.ptr<float>(), x.row_stride, x.rows(), x.cols(), offset, out.ptr<float>(), stream_),
           "argmax_rows");
}

bool CudaBackend::sample(const Tensor& logits, const std::vector<SampleRow>& rows, Tensor& drawn) {
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

void CudaBackend::pick_greedy(const Tensor& candidates, Tensor& drawn) {
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

void CudaBackend::queue_fetch_draws(const Tensor& drawn, int n) {
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

void CudaBackend::fetch_draws(int32_t* ids, int n) {
  APUS_CHECK(sample_back_ != nullptr && n <= sample_count_, "fetch_draws: {} ids of a draw of {}", n, sample_count_);
  wait_event(sample_done_);
  profile_->collect();
  cuda::DeviceError e;
  std::memcpy(&e, sample_back_, sizeof e);
  std::memcpy(ids, sample_back_ + sizeof(cuda::DeviceError), 4 * size_t(n));
  if (e.code != cuda::kErrNone) synchronize();  // reports it
}

void CudaBackend::wait() {
  if (!wait_check_) {
    APUS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return;
  }
  wait_for([&] { return cudaStreamQuery(stream_); }, "cudaStreamQuery");
}

void CudaBackend::wait_event(cudaEvent_t e) {
  if (!wait_check_) {
    APUS_CUDA_CHECK(cudaEventSynchronize(e));
    return;
  }
  wait_for([&] { return cudaEventQuery(e); }, "cudaEventQuery");
}

void CudaBackend::set_stream(int s) {
  APUS_CHECK(s >= 0 && s < streams(), "set_stream: stream {} of {}", s, streams());
  if (stream_ == streams_[s]) return;
  stream_ = streams_[s];
  check_blas(cuda::cublas().set_stream(blas_, stream_), "cublasSetStream");
}

void CudaBackend::begin_capture() {
  // Thread-local: another thread's CUDA calls (the server's) do not break this capture.
  APUS_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
}

int CudaBackend::end_capture() {
  cudaGraph_t g = nullptr;
  APUS_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
  cudaGraphExec_t e = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&e, g, 0);
  cudaGraphDestroy(g);
  check_cuda(err, "cudaGraphInstantiate");
  graphs_[next_graph_] = e;
  return next_graph_++;
}

void CudaBackend::replay(int graph) {
  const auto it = graphs_.find(graph);
  APUS_CHECK(it != graphs_.end(), "replay: no graph {}", graph);
  static const bool trace = std::getenv("APUS_TP_TRACE") != nullptr;
  if (trace) std::fprintf(stderr, "tp-trace device %d replays graph %d\n", device_, graph);
#ifdef APUS_CUDA_TRACE
  const bool traced = cuda::trace_replay_begin(stream_);
#endif
  APUS_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
#ifdef APUS_CUDA_TRACE
  if (traced) cuda::trace_replay_end(stream_);
#endif
}

void CudaBackend::drop_graph(int graph) {
  const auto it = graphs_.find(graph);
  if (it == graphs_.end()) return;
  APUS_CUDA_CHECK(cudaStreamSynchronize(stream_));
  cudaGraphExecDestroy(it->second);
  graphs_.erase(it);
  if (graphs_.empty()) retired_.clear();
}

double CudaBackend::measure_copy_bandwidth() {
  const int64_t n = int64_t(1) << 28;  // 1 GiB of floats each way
  Tensor a = raw_alloc(DType::F32, {n}), b = raw_alloc(DType::F32, {n});
  launched(cuda::fill_random(DType::F32, a.data, n, 1, stream_), "fill_random");
  const double s = median_seconds(10, [&] {
    APUS_CUDA_CHECK(cudaMemcpyAsync(b.data, a.data, a.nbytes(), cudaMemcpyDeviceToDevice, stream_));
  });
  return 2.0 * double(a.nbytes()) / s;
}

double CudaBackend::measure_matmul_flops() {
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

Tensor CudaBackend::raw_alloc(DType dtype, std::vector<int64_t> shape) {
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

void CudaBackend::on_device(const Tensor& t, const char* op) const {
  APUS_CHECK(t.device == Device::CUDA, "{}: {} is in host memory; the CUDA backend takes device tensors", op,
             t.describe());
}

void CudaBackend::activation(const Tensor& t, const char* op) const {
  on_device(t, op);
  APUS_CHECK(t.dtype == act_, "{}: {} is not in the activation dtype {}", op, t.describe(), dtype_name(act_));
}

CudaBackend& cuda_backend(Backend& b) {
  auto* c = dynamic_cast<CudaBackend*>(&b);
  APUS_CHECK(c != nullptr, "{} is not a CUDA backend", b.name());
  return *c;
}

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
  return std::make_unique<cuda::CudaBackend>(device_index);
}

}  // namespace apus
