#include "parallel/host_collectives.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>

#include "core/error.h"

namespace apus {

namespace {

// What the ranks share: a barrier that an abort releases, and one published pointer per rank.
struct Shared {
  explicit Shared(int w) : world(w), ptrs(size_t(w), nullptr) {}
  const int world;
  std::mutex mutex;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
  bool aborted = false;
  std::string why;
  std::vector<void*> ptrs;

  void barrier() {
    std::unique_lock<std::mutex> lock(mutex);
    if (aborted) fail("tensor parallel group stopped: {}", why);
    const uint64_t gen = generation;
    if (++arrived == world) {
      arrived = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return generation != gen || aborted; });
    }
    if (aborted) fail("tensor parallel group stopped: {}", why);
  }
  void abort(const std::string& w) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!aborted) why = w;
    aborted = true;
    cv.notify_all();
  }
};

class HostCollectives final : public Collectives {
 public:
  HostCollectives(std::shared_ptr<Shared> s, int rank) : s_(std::move(s)), rank_(rank) {}
  int rank() const override { return rank_; }
  int world() const override { return s_->world; }

  void all_reduce(Tensor& x) override {
    APUS_CHECK(x.contiguous() && x.dtype == DType::F32 && x.device == Device::CPU,
               "all_reduce: {} must be a contiguous F32 host tensor", x.describe());
    const int64_t n = x.numel(), w = s_->world;
    s_->ptrs[size_t(rank_)] = x.data;
    s_->barrier();
    // Rank r sums its slice of every rank's buffer (in rank order), then writes it to all of them.
    const int64_t begin = n * rank_ / w, end = n * (rank_ + 1) / w;
    sum_.assign(size_t(end - begin), 0.0f);
    for (int q = 0; q < w; ++q) {
      const float* p = static_cast<const float*>(s_->ptrs[size_t(q)]);
      for (int64_t i = begin; i < end; ++i) sum_[size_t(i - begin)] += p[i];
    }
    s_->barrier();
    for (int q = 0; q < w; ++q)
      std::copy(sum_.begin(), sum_.end(), static_cast<float*>(s_->ptrs[size_t(q)]) + begin);
    s_->barrier();
  }

  void all_gather_cols(const Tensor& x, Tensor& out) override {
    APUS_CHECK(x.contiguous() && out.rows() == x.rows() && out.cols() == s_->world * x.cols() && out.dtype == x.dtype,
               "all_gather_cols: {} into {}", x.describe(), out.describe());
    s_->ptrs[size_t(rank_)] = x.data;
    s_->barrier();
    const size_t es = dtype_size(x.dtype), row = size_t(x.cols()) * es;
    for (int q = 0; q < s_->world; ++q)
      for (int64_t r = 0; r < x.rows(); ++r)
        std::memcpy(static_cast<char*>(out.data) + (size_t(r * out.row_stride) * es + size_t(q) * row),
                    static_cast<const char*>(s_->ptrs[size_t(q)]) + size_t(r) * row, row);
    s_->barrier();
  }

  void broadcast_words(std::vector<int32_t>& words) override {
    if (rank_ == 0) s_->ptrs[0] = &words;
    s_->barrier();
    if (rank_ != 0) words = *static_cast<const std::vector<int32_t>*>(s_->ptrs[0]);
    s_->barrier();
  }

  void abort(const std::string& why) override { s_->abort(why); }

 private:
  std::shared_ptr<Shared> s_;
  int rank_;
  std::vector<float> sum_;
};

}  // namespace

std::vector<std::unique_ptr<Collectives>> make_host_collectives(int world) {
  auto shared = std::make_shared<Shared>(world);
  std::vector<std::unique_ptr<Collectives>> out;
  for (int r = 0; r < world; ++r) out.push_back(std::make_unique<HostCollectives>(shared, r));
  return out;
}

}  // namespace apus
