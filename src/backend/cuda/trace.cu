// The step tracer's host side (device_util.cuh; built with -DAPUS_CUDA_TRACE=ON only): the
// APUS_CUDA_TRACE_STEP-th replay of a captured step (counting from 1) is traced, and every block's
// record is written to APUS_CUDA_TRACE_FILE (default apus_trace.csv) as
// `pre,post,grid,threads,block,sm,m0,m1,m2,m3` (m: trace_mark times, 0 for none; m0 the entry).
// bench/trace_summary.py turns it into kernels and their times on the step's critical path.
#ifdef APUS_CUDA_TRACE
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

namespace apus::cuda {

namespace {
std::vector<cudaError_t (*)(TraceState*)>& installers() {
  static std::vector<cudaError_t (*)(TraceState*)> v;
  return v;
}
constexpr unsigned kTraceCap = 1u << 20;
TraceState* g_state = nullptr;
long g_replays = 0;
}  // namespace

void trace_register(cudaError_t (*install)(TraceState*)) { installers().push_back(install); }

bool trace_replay_begin(cudaStream_t stream) {
  static const long step = [] {
    const char* e = std::getenv("APUS_CUDA_TRACE_STEP");
    return e != nullptr ? std::atol(e) : 0L;
  }();
  if (step <= 0 || ++g_replays != step) return false;
  const size_t rec_bytes = sizeof(TraceState) + size_t(kTraceCap) * sizeof(TraceRecord);
  const size_t mark_bytes = size_t(kTraceCap) * kTraceMarks * sizeof(unsigned long long);
  check_cuda(cudaMalloc(&g_state, rec_bytes + mark_bytes), "trace: cudaMalloc");
  auto* marks = reinterpret_cast<unsigned long long*>(reinterpret_cast<char*>(g_state) + rec_bytes);
  check_cuda(cudaMemsetAsync(marks, 0, mark_bytes, stream), "trace: clear");
  for (auto* install : installers()) check_cuda(install(g_state), "trace: install");
  TraceState head{};
  head.armed = 1;
  head.cap = kTraceCap;
  head.marks = marks;
  check_cuda(cudaMemcpyAsync(g_state, &head, offsetof(TraceState, rec), cudaMemcpyHostToDevice, stream), "trace: arm");
  check_cuda(cudaStreamSynchronize(stream), "trace: arm");
  return true;
}

void trace_replay_end(cudaStream_t stream) {
  check_cuda(cudaStreamSynchronize(stream), "trace: step");
  TraceState head;
  check_cuda(cudaMemcpy(&head, g_state, offsetof(TraceState, rec), cudaMemcpyDeviceToHost), "trace: read");
  const unsigned n = head.n < kTraceCap ? head.n : kTraceCap;
  std::vector<TraceRecord> rec(n);
  std::vector<unsigned long long> marks(size_t(n) * kTraceMarks);
  check_cuda(cudaMemcpy(rec.data(), g_state->rec, n * sizeof(TraceRecord), cudaMemcpyDeviceToHost), "trace: read");
  check_cuda(cudaMemcpy(marks.data(), head.marks, marks.size() * sizeof(marks[0]), cudaMemcpyDeviceToHost),
             "trace: read");
  for (auto* install : installers()) check_cuda(install(nullptr), "trace: uninstall");
  check_cuda(cudaFree(g_state), "trace: cudaFree");
  g_state = nullptr;
  const char* path = std::getenv("APUS_CUDA_TRACE_FILE");
  std::FILE* f = std::fopen(path != nullptr ? path : "apus_trace.csv", "w");
  if (f == nullptr) return;
  std::fprintf(f, "pre,post,grid,threads,block,sm,m0,m1,m2,m3\n");
  for (unsigned i = 0; i < n; ++i) {
    const TraceRecord& r = rec[i];
    const unsigned long long* m = &marks[size_t(i) * kTraceMarks];
    std::fprintf(f, "%llu,%llu,%u,%u,%u,%u,%llu,%llu,%llu,%llu\n", r.pre, r.post, r.grid, r.threads, r.block, r.sm,
                 m[0], m[1], m[2], m[3]);
  }
  std::fclose(f);
  std::fprintf(stderr, "apus: traced replay %ld: %u blocks (%u recorded)\n", g_replays, head.n, n);
}

}  // namespace apus::cuda
#endif
