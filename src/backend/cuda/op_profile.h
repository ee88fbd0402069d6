// APUS_CUDA_PROFILE=1: device time of every op, measured with a pair of CUDA events around it and
// keyed by op and shape, printed to stderr when the profile goes. For finding where a step's time
// goes without a profiler; it adds a few microseconds of host time per op.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace apus::cuda {

class OpProfile {
 public:
  explicit OpProfile(cudaStream_t stream);  // on when APUS_CUDA_PROFILE is set
  OpProfile(const OpProfile&) = delete;
  OpProfile& operator=(const OpProfile&) = delete;
  ~OpProfile();  // prints the table

  bool on() const { return on_; }
  // APUS_CUDA_SKIP=KEY[,KEY...]: ops whose name and shape as the profile prints them, less the row
  // count ("linear n=4608 k=3584", "add_rms_norm"; a tensor-parallel group's "all_reduce" and
  // "all_gather_cols", whose norms still run), start with a KEY are not run at all. The results are wrong; what is left is the op's marginal
  // cost inside a real step (graphs, PDL overlap), which timing it alone does not show.
  bool skips(const char* op, const std::string& detail = {}) const;
  void start(std::string key);
  void stop();
  // Adds up finished ops (called where the host waits for the device anyway).
  void collect();

 private:
  struct Pending {
    std::string key;
    cudaEvent_t start, stop;
  };
  struct Total {
    int64_t calls = 0;
    double ms = 0;
  };
  cudaStream_t stream_;
  bool on_;
  std::vector<std::string> skip_;
  bool ahead_ = false;
  std::vector<Pending> pending_;
  std::map<std::string, Total> totals_;
};

// Times the op it is constructed in when the profile is on; `rows` is the op's row count.
class TimedOp {
 public:
  TimedOp(OpProfile& p, const char* op, int64_t rows, const std::string& detail = {});
  ~TimedOp() {
    if (p_.on()) p_.stop();
  }
  TimedOp(const TimedOp&) = delete;
  TimedOp& operator=(const TimedOp&) = delete;

 private:
  OpProfile& p_;
};

}  // namespace apus::cuda
