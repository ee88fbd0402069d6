#include "backend/cuda/op_profile.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>

#include "backend/cuda/kernels.h"
#include "core/error.h"

namespace apus::cuda {

namespace {

#define APUS_CUDA_CHECK(call) check_cuda((call), #call)

}  // namespace

OpProfile::OpProfile(cudaStream_t stream) : stream_(stream), on_(std::getenv("APUS_CUDA_PROFILE") != nullptr) {
  if (const char* s = std::getenv("APUS_CUDA_SKIP")) {
    std::string list = s;
    for (size_t at = 0; at <= list.size();) {
      const size_t end = std::min(list.find(',', at), list.size());
      if (end > at) skip_.push_back(list.substr(at, end - at));
      at = end + 1;
    }
  }
}

bool OpProfile::skips(const char* op, const std::string& detail) const {
  if (skip_.empty()) return false;
  const std::string key = op + detail;
  return std::any_of(skip_.begin(), skip_.end(), [&](const std::string& k) { return key.rfind(k, 0) == 0; });
}

OpProfile::~OpProfile() {
  if (!on_) return;
  collect();
  std::vector<std::pair<std::string, Total>> rows(totals_.begin(), totals_.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  double all = 0;
  for (const auto& [k, t] : rows) all += t.ms;
  fmt::print(stderr, "APUS_CUDA_PROFILE: device time per op ({:.1f} ms in all)\n", all);
  for (const auto& [k, t] : rows)
    fmt::print(stderr, "  {:<44} {:>7} calls {:>10.3f} ms {:>9.1f} us/call {:>5.1f}%\n", k, t.calls, t.ms,
               1e3 * t.ms / double(t.calls), 100.0 * t.ms / all);
}

void OpProfile::start(std::string key) {
  // Events time device work only while the device runs behind the host: an idle GPU stamps the
  // start event at once and then waits for the host to launch the op, and that wait (host time)
  // would count. A ~30 ms busy kernel before the first op after each wait lets the host queue the
  // step ahead (host launch gaps were what made small ops read ~5-10 us before).
  if (!ahead_) {
    APUS_CUDA_CHECK(spin(30'000'000, stream_));
    ahead_ = true;
  }
  Pending p{std::move(key), nullptr, nullptr};
  APUS_CUDA_CHECK(cudaEventCreate(&p.start));
  APUS_CUDA_CHECK(cudaEventCreate(&p.stop));
  APUS_CUDA_CHECK(cudaEventRecord(p.start, stream_));
  pending_.push_back(std::move(p));
}

void OpProfile::stop() { APUS_CUDA_CHECK(cudaEventRecord(pending_.back().stop, stream_)); }

void OpProfile::collect() {
  for (Pending& p : pending_) {
    APUS_CUDA_CHECK(cudaEventSynchronize(p.stop));
    float ms = 0;
    APUS_CUDA_CHECK(cudaEventElapsedTime(&ms, p.start, p.stop));
    Total& t = totals_[p.key];
    t.calls++;
    t.ms += ms;
    cudaEventDestroy(p.start);
    cudaEventDestroy(p.stop);
  }
  pending_.clear();
  ahead_ = false;
}

TimedOp::TimedOp(OpProfile& p, const char* op, int64_t rows, const std::string& detail) : p_(p) {
  if (p_.on()) p_.start(fmt::format("{} rows={}{}", op, rows, detail));
}

}  // namespace apus::cuda
