// Tensor-parallel collectives over NCCL (see cuda_backend.h and src/parallel/README.md). NCCL is
// opened with dlopen the first time a group is made, like cuBLAS, so the apus binary starts without
// it; its few entry points are declared here (NCCL's C ABI is stable), so no nccl.h is needed to
// build either.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/library.h"
#include "backend/cuda/op_profile.h"
#include "backend/cuda/p2p.h"
#include "core/error.h"

namespace apus {

namespace {

// NCCL's C API (nccl.h, stable since 2.x), the parts used here.
using ncclComm_t = struct ncclComm*;
struct ncclUniqueId {
  char internal[128];
};
using ncclResult_t = int;  // 0: ncclSuccess
enum NcclType : int { kNcclInt32 = 2, kNcclFloat16 = 6, kNcclFloat32 = 7, kNcclBfloat16 = 9 };
constexpr int kNcclSum = 0;

struct Nccl {
  ncclResult_t (*get_unique_id)(ncclUniqueId*);
  ncclResult_t (*comm_init_rank)(ncclComm_t*, int nranks, ncclUniqueId id, int rank);
  ncclResult_t (*all_reduce)(const void*, void*, size_t, int type, int op, ncclComm_t, cudaStream_t);
  ncclResult_t (*all_gather)(const void*, void*, size_t, int type, ncclComm_t, cudaStream_t);
  ncclResult_t (*broadcast)(const void*, void*, size_t, int type, int root, ncclComm_t, cudaStream_t);
  ncclResult_t (*comm_abort)(ncclComm_t);
  ncclResult_t (*comm_destroy)(ncclComm_t);
  const char* (*error_string)(ncclResult_t);
};

Nccl load() {
  // NVLink multicast (NVLS) stays off unless the user turned it on explicitly: on shared hosts a
  // program using it can put every GPU of the host out of service.
  setenv("NCCL_NVLS_ENABLE", "0", 0);
  std::vector<std::string> paths;
  if (const char* p = std::getenv("APUS_NCCL_LIBRARY")) paths.push_back(p);
  paths.push_back("libnccl.so.2");
  paths.push_back(APUS_CUDA_LIBRARY_DIR "/libnccl.so.2");
  void* lib = cuda::open_library(paths, "--tensor_parallel_size > 1 on CUDA needs NCCL (libnccl.so.2) and could not load it "
                                  "(set APUS_NCCL_LIBRARY to its path)");
  Nccl n;
  const char* name = "libnccl (an NCCL older than 2.12?)";
  cuda::bind_symbol(lib, name, "ncclGetUniqueId", &n.get_unique_id);
  cuda::bind_symbol(lib, name, "ncclCommInitRank", &n.comm_init_rank);
  cuda::bind_symbol(lib, name, "ncclAllReduce", &n.all_reduce);
  cuda::bind_symbol(lib, name, "ncclAllGather", &n.all_gather);
  cuda::bind_symbol(lib, name, "ncclBroadcast", &n.broadcast);
  cuda::bind_symbol(lib, name, "ncclCommAbort", &n.comm_abort);
  cuda::bind_symbol(lib, name, "ncclCommDestroy", &n.comm_destroy);
  cuda::bind_symbol(lib, name, "ncclGetErrorString", &n.error_string);
  return n;
}

const Nccl& nccl() {
  static std::once_flag once;
  static Nccl n;
  std::call_once(once, [] { n = load(); });
  return n;
}

void check_nccl(ncclResult_t r, const char* what) {
  if (r != 0) fail("NCCL error in {}: {}", what, nccl().error_string(r));
}

using cuda::check_cuda;

int nccl_type(DType t) {
  switch (t) {
    case DType::F32: return kNcclFloat32;
    case DType::F16: return kNcclFloat16;
    case DType::BF16: return kNcclBfloat16;
    case DType::I32: return kNcclInt32;
    default: fail("NCCL: unsupported dtype {}", dtype_name(t));
  }
}

class NcclCollectives final : public Collectives {
 public:
  NcclCollectives(Backend& backend, const NcclId& id, int rank, int world, double timeout_s, bool one_process,
                  std::function<void(const std::string&)> on_timeout)
      : backend_(backend), rank_(rank), world_(world), timeout_s_(timeout_s), on_timeout_(std::move(on_timeout)) {
    check_cuda(cudaSetDevice(cuda::device_of(backend)), "cudaSetDevice");
    ncclUniqueId uid;
    std::memcpy(uid.internal, id.data(), sizeof(uid.internal));
    check_nccl(nccl().comm_init_rank(&comm_, world, uid, rank), "ncclCommInitRank");
    check_cuda(cudaEventCreateWithFlags(&sent_, cudaEventDisableTiming), "cudaEventCreate");
    cuda::set_wait_check(backend_, [this](double waited) { check(waited); });
    // Connect now (NCCL connects peers at their first collective), not in the first step.
    Tensor one = backend_.alloc(DType::F32, {1});
    all_reduce(one);
    cuda::wait(backend_);
    if (one_process) {
      const cuda::PeerGather gather = [this](const std::vector<int32_t>& w) { return gather_words(w); };
      p2p_ = cuda::P2pAllReduce::create(rank, world, cuda::device_of(backend), gather);
      if (p2p_) ce_ = cuda::CopyEngineSum::create(rank, p2p_->devices(), gather);
    }
  }

  ~NcclCollectives() override {
    cuda::set_wait_check(backend_, nullptr);
    if (!aborted_.load()) {
      // No collective here: the ranks are not torn down together (ModelGroup's rank 0 only after
      // joining the others), so a barrier would wait forever. Unmapping the P2P buffers is safe
      // when a collective after their last use has completed on this rank (ModelGroup: the stop
      // broadcast, which every peer's stream reaches only after its last step).
      cudaStreamSynchronize(stream());
      p2p_.reset();
      ce_.reset();
      nccl().comm_destroy(comm_);
    } else {
      (void)p2p_.release();  // a peer's kernel may still read it
      (void)ce_.release();
    }
    cudaEventDestroy(sent_);
    if (pinned_) cudaFreeHost(pinned_);
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }

  void all_reduce(Tensor& x) override {
    APUS_CHECK(x.contiguous() && x.device == Device::CUDA, "all_reduce: {} must be a contiguous device tensor",
               x.describe());
    alive();
    cuda::TimedOp t(cuda::profile_of(backend_), "all_reduce", x.rows());
    const bool p2p = p2p_ && p2p_->fits(x);
    // Diagnosis: the sum's marginal cost ("all_reduce", or one path's: "all_reduce p2p", "all_reduce nccl").
    if (cuda::profile_of(backend_).skips("all_reduce", p2p ? " p2p" : " nccl")) return;
    trace("all_reduce", x, p2p ? "p2p" : "nccl");
    if (p2p) {
      check_cuda(p2p_->run(x, stream()), "p2p_all_reduce");
      return;
    }
    check_nccl(nccl().all_reduce(x.data, x.data, size_t(x.numel()), nccl_type(x.dtype), kNcclSum, comm_, stream()),
               "ncclAllReduce");
  }

  // Small messages through the peer-to-peer kernel, large ones of an eager step through the copy
  // engines (two ranks; rows sent while the next are produced), else NCCL's sum and then the norm.
  void all_reduce_add_rms_norm(Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out,
                               Backend& backend, const RowProducer* produce) override {
    const bool alike = residual.shape == x.shape && out.shape == x.shape && residual.dtype == x.dtype &&
                       out.dtype == x.dtype && w.dtype == DType::F32;
    const bool p2p = alike && p2p_ && p2p_->fits(x) && p2p_->fits(residual) && p2p_->fits(out);
    const bool ce = alike && !p2p && ce_ && ce_->fits(x) && ce_->fits(residual) && ce_->fits(out) && !capturing();
    // Diagnosis: the sum skipped, the norm kept ("all_reduce", or one path's: "all_reduce ce", ...).
    if (cuda::profile_of(backend_).skips("all_reduce", p2p ? " p2p" : ce ? " ce" : " nccl")) {
      if (produce) (*produce)(0, x.rows());
      backend.add_rms_norm(residual, x, w, eps, out);
      return;
    }
    // The profile times the producer's ops on their own.
    if (produce && (!ce || cuda::profile_of(backend_).on())) {
      (*produce)(0, x.rows());
      produce = nullptr;
    }
    if (!p2p && !ce) {
      Collectives::all_reduce_add_rms_norm(x, residual, w, eps, out, backend);
      return;
    }
    alive();
    cuda::TimedOp t(cuda::profile_of(backend_), "all_reduce_add_rms_norm", x.rows());
    trace("all_reduce_add_rms_norm", x, p2p ? "p2p" : "copy engines");
    if (ce) ce_->run_add_rms_norm(x, residual, w, eps, out, stream(), produce);
    else check_cuda(p2p_->run_add_rms_norm(x, residual, w, eps, out, stream()), "p2p_add_rms_norm");
  }

  void all_gather_cols(const Tensor& x, Tensor& out) override {
    APUS_CHECK(x.contiguous() && out.rows() == x.rows() && out.cols() == world_ * x.cols() && out.dtype == x.dtype,
               "all_gather_cols: {} into {}", x.describe(), out.describe());
    alive();
    cuda::TimedOp t(cuda::profile_of(backend_), "all_gather_cols", x.rows());
    if (cuda::profile_of(backend_).skips("all_gather_cols")) return;
    trace("all_gather_cols", x, "nccl");
    const size_t es = dtype_size(x.dtype), n = size_t(x.numel());
    if (scratch_.numel() < int64_t(n) * world_) scratch_ = backend_.alloc(x.dtype, {int64_t(n) * world_});
    check_nccl(nccl().all_gather(x.data, scratch_.data, n, nccl_type(x.dtype), comm_, stream()), "ncclAllGather");
    const size_t row = size_t(x.cols()) * es;  // rank q's rows [R, cols] go to columns [q * cols, ...)
    for (int q = 0; q < world_; ++q)
      check_cuda(cudaMemcpy2DAsync(static_cast<char*>(out.data) + size_t(q) * row, size_t(out.row_stride) * es,
                                   static_cast<char*>(scratch_.data) + size_t(q) * n * es, row, row,
                                   size_t(x.rows()), cudaMemcpyDeviceToDevice, stream()),
                 "all_gather_cols copy");
  }

  // Every call broadcasts a buffer of cap_ words: the length, then the words. A longer message
  // grows every rank's buffer alike (they all read the length) and goes again.
  void broadcast_words(std::vector<int32_t>& words) override {
    alive();
    const bool root = rank_ == 0;
    for (;;) {
      ensure_capacity();
      if (root) {
        check_cuda(cudaEventSynchronize(sent_), "cudaEventSynchronize");  // the last message left pinned_
        pinned_[0] = int32_t(words.size());
        std::copy_n(words.begin(), std::min(words.size(), cap_ - 1), pinned_ + 1);
        check_cuda(cudaMemcpyAsync(device_.data, pinned_, cap_ * 4, cudaMemcpyHostToDevice, stream()), "H2D");
        check_cuda(cudaEventRecord(sent_, stream()), "cudaEventRecord");
      }
      {
        cuda::TimedOp t(cuda::profile_of(backend_), "broadcast_step", int64_t(cap_));
        check_nccl(nccl().broadcast(device_.data, device_.data, cap_, kNcclInt32, 0, comm_, stream()), "ncclBroadcast");
      }
      size_t n = words.size();
      if (!root) {
        check_cuda(cudaMemcpyAsync(pinned_, device_.data, cap_ * 4, cudaMemcpyDeviceToHost, stream()), "D2H");
        cuda::wait(backend_);
        n = size_t(pinned_[0]);
      }
      if (n + 1 <= cap_) {
        if (!root) words.assign(pinned_ + 1, pinned_ + 1 + n);
        return;
      }
      want_ = std::max(2 * cap_, n + 1);
    }
  }

  // ncclCommAbort runs on a thread of its own, whichever comm it is, and the comm is never
  // destroyed: the caller (a failing rank, the rendezvous watcher, a wait that timed out) must be
  // able to report the failure at once, and NCCL's abort can take long or hang (seen with 2.28 on
  // an idle comm aborted right after its peers'; suspected when a peer process was killed).
  // The ranks' waits poll aborted_ and throw; a device that never stops is the group watchdog's.
  void abort(const std::string& why) override {
    {
      std::lock_guard<std::mutex> lock(why_mutex_);
      if (why_.empty()) why_ = why;
    }
    aborted_ = true;
    if (p2p_) p2p_->abort();
    if (ce_) ce_->abort();
    if (comm_aborted_.exchange(true)) return;
    const bool debug = std::getenv("APUS_TP_DEBUG") != nullptr;
    std::thread([comm = comm_, rank = rank_, debug] {
      if (debug) fprintf(stderr, "apus: rank %d: ncclCommAbort...\n", rank);
      nccl().comm_abort(comm);  // its kernels stop waiting for peers
      if (debug) fprintf(stderr, "apus: rank %d: aborted\n", rank);
    }).detach();
  }

 private:
  // The backend's current stream: collectives queue where its ops do (Backend::set_stream).
  cudaStream_t stream() const { return static_cast<cudaStream_t>(cuda::stream_of(backend_)); }

  // APUS_TP_TRACE: every collective this rank queues, one line each (recorded into a graph or run).
  void trace(const char* op, const Tensor& x, const char* how) {
    if (!trace_) return;
    std::fprintf(stderr, "tp-trace rank %d #%lld %s %s %s%s\n", rank_, static_cast<long long>(traced_++), op,
                 x.describe().c_str(), how, capturing() ? " (captured)" : "");
  }

  bool capturing() const {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    check_cuda(cudaStreamIsCapturing(stream(), &capture), "cudaStreamIsCapturing");
    return capture != cudaStreamCaptureStatusNone;
  }

  // Every rank's words side by side (a collective; waits).
  std::vector<int32_t> gather_words(const std::vector<int32_t>& w) {
    const int64_t n = int64_t(w.size());
    Tensor in = backend_.alloc(DType::I32, {n}), out = backend_.alloc(DType::I32, {n * world_});
    check_cuda(cudaMemcpyAsync(in.data, w.data(), size_t(n) * 4, cudaMemcpyHostToDevice, stream()), "H2D");
    check_nccl(nccl().all_gather(in.data, out.data, size_t(n), kNcclInt32, comm_, stream()), "ncclAllGather");
    std::vector<int32_t> all(size_t(n * world_));
    check_cuda(cudaMemcpyAsync(all.data(), out.data, all.size() * 4, cudaMemcpyDeviceToHost, stream()), "D2H");
    cuda::wait(backend_);
    return all;
  }

  void alive() const {
    if (aborted_.load()) failed();
  }
  [[noreturn]] void failed() const {
    std::lock_guard<std::mutex> lock(why_mutex_);
    fail("tensor parallel group stopped: {}", why_);
  }
  void check(double waited_s) {
    if (aborted_.load()) failed();
    if (timeout_s_ > 0 && waited_s > timeout_s_) {
      const std::string why =
          fmt::format("rank {} waited {:.0f} s for a step (a peer hung or died; APUS_TP_TIMEOUT)", rank_, waited_s);
      abort(why);
      if (on_timeout_) on_timeout_(why);
      failed();
    }
  }
  void ensure_capacity() {
    if (cap_ >= want_) return;
    if (pinned_) {
      check_cuda(cudaEventSynchronize(sent_), "cudaEventSynchronize");
      check_cuda(cudaFreeHost(pinned_), "cudaFreeHost");
    }
    cap_ = want_;
    check_cuda(cudaMallocHost(reinterpret_cast<void**>(&pinned_), cap_ * 4), "cudaMallocHost");
    device_ = backend_.alloc(DType::I32, {int64_t(cap_)});
  }

  Backend& backend_;
  int rank_, world_;
  double timeout_s_;
  std::function<void(const std::string&)> on_timeout_;
  std::unique_ptr<cuda::P2pAllReduce> p2p_;  // ranks in one process: the one-shot kernel for small sums
  std::unique_ptr<cuda::CopyEngineSum> ce_;  // and two of them: large fused sums of eager steps
  const bool trace_ = std::getenv("APUS_TP_TRACE") != nullptr;
  int64_t traced_ = 0;
  ncclComm_t comm_ = nullptr;
  std::atomic<bool> aborted_{false}, comm_aborted_{false};
  mutable std::mutex why_mutex_;
  std::string why_;
  Tensor scratch_, device_;
  int32_t* pinned_ = nullptr;
  size_t cap_ = 0, want_ = 16384;
  cudaEvent_t sent_ = nullptr;
};

}  // namespace

NcclId nccl_unique_id() {
  ncclUniqueId uid;
  check_nccl(nccl().get_unique_id(&uid), "ncclGetUniqueId");
  NcclId id;
  std::memcpy(id.data(), uid.internal, id.size());
  return id;
}

std::unique_ptr<Collectives> make_nccl_collectives(Backend& backend, const NcclId& id, int rank, int world,
                                                   double timeout_s, bool one_process,
                                                   std::function<void(const std::string&)> on_timeout) {
  return std::make_unique<NcclCollectives>(backend, id, rank, world, timeout_s, one_process, std::move(on_timeout));
}

}  // namespace apus
