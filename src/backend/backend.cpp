#include "backend/backend.h"

#include <algorithm>

#include "core/error.h"
#ifdef APUS_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace apus {

bool cuda_available() { return gpu_count() > 0; }

int gpu_count() {
#ifdef APUS_HAVE_CUDA
  return cuda_device_count();
#else
  return 0;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& device, int num_threads) {
  if (device == "cpu") return make_cpu_backend(num_threads);
  if (device == "auto") return cuda_available() ? make_backend("cuda", num_threads) : make_cpu_backend(num_threads);
  APUS_CHECK(device == "cuda", "unknown --device \"{}\" (cpu, cuda, auto)", device);
#ifdef APUS_HAVE_CUDA
  return make_cuda_backend(0);
#else
  fail("--device cuda: this apus was built without CUDA (configure with -DAPUS_CUDA=ON where nvcc is installed)");
#endif
}

void Backend::linear_add_prescale(const Tensor&, const Linear&, Tensor&, const Tensor&, Tensor&, Tensor&) {
  APUS_CHECK(false, "{}: no norm folding (norm_fold_applies is false)", name());
}

void Backend::linear_rms_scaled(const Tensor&, const Tensor&, float, const Linear&, Tensor&, bool) {
  APUS_CHECK(false, "{}: no norm folding (norm_fold_applies is false)", name());
}

void Backend::rope_store_kv(Tensor& qk, const Tensor& cos, const Tensor& sin, int head_dim, const Tensor& v,
                            const Tensor& slot_mapping, KvLayer& cache) {
  rope(qk, cos, sin, head_dim);
  store_kv(qk.cols_view(qk.cols() - v.cols(), v.cols()), v, slot_mapping, cache);
}

bool Backend::sample_to_host(const Tensor& logits, const std::vector<SampleRow>& rows, int32_t* ids) {
  Tensor drawn = alloc(DType::I32, {std::max<int64_t>(1, int64_t(rows.size()))});
  if (!sample(logits, rows, drawn)) return false;
  fetch_draws(ids, int(rows.size()));
  return true;
}

void Collectives::all_reduce_add_rms_norm(Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out,
                                          Backend& backend, const RowProducer* produce) {
  if (produce) (*produce)(0, x.rows());
  all_reduce(x);
  backend.add_rms_norm(residual, x, w, eps, out);
}

}  // namespace apus
