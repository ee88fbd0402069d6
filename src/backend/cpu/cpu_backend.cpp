// The CPU backend: F32 activations and KV cache, weights read in their stored dtype.
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/gemm.h"
#include "backend/cpu/qgemm.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "sample/sampler.h"

namespace apus {

namespace {

// Below this many elements an elementwise op runs on the calling thread: waking the pool costs more.
constexpr int64_t kParallelElements = 1 << 15;

float load_float(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: fail("unsupported dtype {} for a float tensor", dtype_name(t));
  }
}

void rms_norm_row(const float* x, const float* w, int64_t n, float eps, float* out) {
  float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(ss / float(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(int threads) : pool_(threads) {}

  std::string name() const override { return fmt::format("cpu ({} threads, {})", pool_.size(), gemm_isa()); }
  Device device() const override { return Device::CPU; }
  DType activation_dtype() const override { return DType::F32; }

  Tensor alloc(DType dtype, std::vector<int64_t> shape) override { return host_tensor(dtype, std::move(shape)); }
  Tensor upload(const Tensor& host) override { return host; }
  Tensor upload_step(const Tensor& host, Tensor&) override { return host; }
  void copy_to_host(const Tensor& src, void* dst) override {
    const size_t esize = dtype_size(src.dtype), row_bytes = size_t(src.cols()) * esize;
    const char* from = static_cast<const char*>(src.data);
    for (int64_t r = 0; r < src.rows(); ++r)
      std::memcpy(static_cast<char*>(dst) + size_t(r) * row_bytes, from + size_t(r * src.row_stride) * esize, row_bytes);
  }

  void copy_from_host(const void* src, Tensor& dst) override { std::memcpy(dst.data, src, dst.nbytes()); }

  // Tokens grouped by adapter; per adapter and part two small GEMMs (shrink to the rank, expand).
  void lora(const Tensor& x, const Tensor& slots, const std::vector<LoraPart>& parts, Tensor& out) override {
    const int64_t T = x.rows(), in = x.cols();
    std::vector<std::vector<int64_t>> groups;
    for (int64_t t = 0; t < T; ++t) {
      const int32_t s = slots.ptr<int32_t>()[t];
      if (s < 0) continue;
      APUS_CHECK(parts.empty() || s < parts[0].a.shape[0], "lora: adapter slot {} outside the {} slots", s,
                 parts[0].a.shape[0]);
      if (size_t(s) >= groups.size()) groups.resize(size_t(s) + 1);
      groups[size_t(s)].push_back(t);
    }
    for (size_t s = 0; s < groups.size(); ++s) {
      const std::vector<int64_t>& rows = groups[s];
      if (rows.empty()) continue;
      const int64_t n_rows = int64_t(rows.size());
      lora_x_.resize(size_t(n_rows * in));
      for (int64_t i = 0; i < n_rows; ++i) std::memcpy(&lora_x_[size_t(i * in)], x.row<float>(rows[size_t(i)]), size_t(in) * 4);
      for (const LoraPart& p : parts) {
        const int64_t R = p.a.shape[1], n = p.b.shape[1];
        APUS_CHECK(p.a.shape[2] == in && p.b.shape[2] == R && p.offset + n <= out.cols(),
                   "lora: A {} / B {} at column {} do not fit input {} / output {}", p.a.describe(), p.b.describe(),
                   p.offset, x.describe(), out.describe());
        const float* a = p.a.ptr<float>() + int64_t(s) * R * in;
        const float* b = p.b.ptr<float>() + int64_t(s) * n * R;
        lora_v_.resize(size_t(n_rows * R));
        lora_u_.resize(size_t(n_rows * n));
        gemm(lora_x_.data(), in, a, DType::F32, in, nullptr, lora_v_.data(), R, n_rows, R, in, pool_);
        gemm(lora_v_.data(), R, b, DType::F32, R, nullptr, lora_u_.data(), n, n_rows, n, R, pool_);
        for (int64_t i = 0; i < n_rows; ++i) {
          float* o = out.row<float>(rows[size_t(i)]) + p.offset;
          const float* u = &lora_u_[size_t(i * n)];
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) o[j] += u[j];
        }
      }
    }
  }

  void embedding(const Tensor& ids, const Tensor& table, Tensor& out, int64_t first, int64_t vocab,
                 const Tensor* drawn) override {
    const int64_t H = table.cols(), V = vocab > 0 ? vocab : table.rows();
    for (int64_t t = 0; t < ids.numel(); ++t) {
      int64_t global = ids.ptr<int32_t>()[t];
      if (global < 0 && drawn != nullptr && -global - 1 < drawn->numel()) global = drawn->ptr<int32_t>()[-global - 1];
      const int64_t id = global - first;
      APUS_CHECK(global >= 0 && global < V, "token id {} is outside the vocabulary (size {})", global, V);
      float* dst = out.row<float>(t);
      if (id < 0 || id >= table.rows()) {  // another rank's part of the vocabulary
        std::fill_n(dst, H, 0.0f);
        continue;
      }
      if (table.dtype == DType::F32) {
        std::memcpy(dst, table.ptr<float>() + id * H, size_t(H) * 4);
      } else {
        for (int64_t i = 0; i < H; ++i) dst[i] = load_float(table.data, table.dtype, id * H + i);
      }
    }
  }

  // The host's own draws (sample/sampler.h), so that the engine's steps take the same path as on a GPU.
  bool sample(const Tensor& logits, const std::vector<SampleRow>& rows, Tensor& drawn) override {
    APUS_CHECK(logits.dtype == DType::F32 && drawn.dtype == DType::I32 && drawn.numel() >= int64_t(rows.size()),
               "sample: {} rows of {} into {}", rows.size(), logits.describe(), drawn.describe());
    for (size_t i = 0; i < rows.size(); ++i) {
      const SampleRow& r = rows[i];
      APUS_CHECK(r.row >= 0 && r.row < logits.rows(), "sample: row {} of {} rows of logits", r.row, logits.rows());
      drawn.ptr<int32_t>()[i] =
          draw_token(logits.row<float>(r.row), logits.cols(), DrawRule{r.temperature, r.top_k, r.top_p, r.min_p}, r.u);
    }
    queue_fetch_draws(drawn, int(rows.size()));
    return true;
  }
  void pick_greedy(const Tensor& candidates, Tensor& drawn) override {
    APUS_CHECK(candidates.dtype == DType::F32 && candidates.cols() % 2 == 0 && drawn.dtype == DType::I32 &&
                   drawn.numel() >= candidates.rows(),
               "pick_greedy: {} into {}", candidates.describe(), drawn.describe());
    for (int64_t r = 0; r < candidates.rows(); ++r)
      drawn.ptr<int32_t>()[r] = greedy_token(candidates.row<float>(r), int(candidates.cols() / 2));
  }
  // Ops run as they are called here: the copy is taken now, before a later step rewrites `drawn`.
  void queue_fetch_draws(const Tensor& drawn, int n) override {
    APUS_CHECK(drawn.dtype == DType::I32 && n <= drawn.numel(), "queue_fetch_draws: {} of {}", n, drawn.describe());
    fetched_.assign(drawn.ptr<int32_t>(), drawn.ptr<int32_t>() + n);
  }
  void fetch_draws(int32_t* ids, int n) override {
    APUS_CHECK(n <= int64_t(fetched_.size()), "fetch_draws: {} ids of {}", n, fetched_.size());
    std::copy_n(fetched_.begin(), n, ids);
  }

  void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) override {
    for (int64_t r = 0; r < rows.numel(); ++r)
      std::memcpy(out.row<float>(r), x.row<float>(rows.ptr<int32_t>()[r]), size_t(x.cols()) * 4);
  }

  void argmax_rows(const Tensor& x, int64_t offset, Tensor& out) override {
    APUS_CHECK(x.dtype == DType::F32 && out.dtype == DType::F32 && out.rows() == x.rows() && out.cols() == 2,
               "argmax_rows: {} into {}", x.describe(), out.describe());
    for (int64_t r = 0; r < x.rows(); ++r) {
      const float* row = x.row<float>(r);
      float best = -INFINITY;
      int64_t at = -1;
      for (int64_t i = 0; i < x.cols(); ++i)
        if (row[i] > best || (at < 0 && row[i] == best)) best = row[i], at = i;
      out.row<float>(r)[0] = best;
      out.row<float>(r)[1] = float(std::max<int64_t>(at, 0) + offset);
    }
  }

  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    const int64_t n = w.numel(), groups = x.cols() / n;
    APUS_CHECK(x.cols() % n == 0, "rms_norm: {} columns are not groups of {}", x.cols(), n);
    for_rows(x.rows(), x.cols(), [&](int64_t r) {
      for (int64_t g = 0; g < groups; ++g)
        rms_norm_row(x.row<float>(r) + g * n, w.ptr<float>(), n, eps, out.row<float>(r) + g * n);
    });
  }

  void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    const int64_t n = residual.cols();
    for_rows(residual.rows(), n, [&](int64_t r) {
      float* res = residual.row<float>(r);
      const float* xr = x.row<float>(r);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) res[i] += xr[i];
      rms_norm_row(res, w.ptr<float>(), n, eps, out.row<float>(r));
    });
  }

  void linear(const Tensor& x, const Linear& w, Tensor& out) override {
    APUS_CHECK(x.cols() == w.in_features && out.cols() == w.out_features,
               "linear: input {} / output {} do not fit weight [{}, {}]", x.describe(),
               out.describe(), w.out_features, w.in_features);
    int64_t col = 0;
    for (const LinearPart& p : w.parts) {
      const int64_t n = p.out();
      if (!p.quant.empty()) {
        qgemm(x.ptr<float>(), x.row_stride, p.quant, p.bias.empty() ? nullptr : p.bias.ptr<float>(),
              out.ptr<float>() + col, out.row_stride, x.rows(), pool_);
        col += n;
        continue;
      }
      gemm(x.ptr<float>(), x.row_stride, p.weight.data, p.weight.dtype, p.weight.row_stride,
           p.bias.empty() ? nullptr : p.bias.ptr<float>(), out.ptr<float>() + col, out.row_stride,
           x.rows(), n, x.cols(), pool_);
      col += n;
    }
  }

  void rope(Tensor& x, const Tensor& cos, const Tensor& sin, int head_dim) override {
    const int64_t half = cos.cols(), heads = x.cols() / head_dim;
    for_rows(x.rows(), x.cols(), [&](int64_t t) {
      const float* c = cos.row<float>(t);
      const float* s = sin.row<float>(t);
      for (int64_t h = 0; h < heads; ++h) {
        float* v = x.row<float>(t) + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * c[i] - b * s[i];
          v[i + half] = b * c[i] + a * s[i];
        }
      }
    });
  }

  void store_kv(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, KvLayer& cache) override {
    const int64_t row = cache.k.shape[2] * cache.k.shape[3];
    const int64_t slots = cache.k.shape[0] * cache.k.shape[1];
    for (int64_t t = 0; t < k.rows(); ++t) {
      const int64_t slot = slot_mapping.ptr<int32_t>()[t];
      if (slot == -1) continue;  // padding
      APUS_CHECK(slot >= 0 && slot < slots, "store_kv: slot {} outside the cache ({} slots)", slot, slots);
      std::memcpy(cache.k.ptr<float>() + slot * row, k.row<float>(t), size_t(row) * 4);
      std::memcpy(cache.v.ptr<float>() + slot * row, v.row<float>(t), size_t(row) * 4);
    }
  }

  void attention(const Tensor& q, const KvLayer& cache, const AttentionBatch& batch, Tensor& out) override {
    cpu_paged_attention(q, cache, batch, out, pool_);
  }

  void silu_mul(const Tensor& gate_up, Tensor& out) override {
    const int64_t n = out.cols();
    for_rows(out.rows(), n, [&](int64_t r) {
      const float* g = gate_up.row<float>(r);
      const float* u = g + n;
      float* o = out.row<float>(r);
      for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    });
  }

  void add(Tensor& x, const Tensor& y) override {
    const int64_t n = x.cols();
    for_rows(x.rows(), n, [&](int64_t r) {
      float* a = x.row<float>(r);
      const float* b = y.row<float>(r);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] += b[i];
    });
  }

 private:
  template <typename F>
  void for_rows(int64_t rows, int64_t cols, F&& fn) {
    if (rows * cols < kParallelElements) {
      for (int64_t r = 0; r < rows; ++r) fn(r);
      return;
    }
    pool_.parallel_for(rows, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) fn(r);
    });
  }

  ThreadPool pool_;
  std::vector<float> lora_x_, lora_v_, lora_u_;  // LoRA scratch, reused
  std::vector<int32_t> fetched_;                  // the ids queue_fetch_draws() copied
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int num_threads) { return std::make_unique<CpuBackend>(num_threads); }

}  // namespace apus
