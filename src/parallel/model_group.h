// A model ready for the engine: on one device, or split over a tensor-parallel group of GPUs (or CPU
// threads), possibly on several nodes. See README.md beside this file for the design.
#pragma once
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "model/decoder.h"
#include "model/load.h"

namespace apus {

class Rendezvous;

struct ParallelOptions {
  int tensor_parallel_size = 1;  // ranks in all; each node runs tensor_parallel_size / nnodes of them
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};

class ModelGroup {
 public:
  // Loads the model on `device` (cpu | cuda | auto) with `threads` CPU threads: whole, or one part
  // per rank of this node (rank 0 on this thread, the others on threads of their own). Fails
  // (stopping the other ranks) when any rank fails to load.
  ModelGroup(const LoadOptions& load, const std::string& device, int threads, const ParallelOptions& par);
  ~ModelGroup();  // the leader tells the other ranks to stop, then joins them
  ModelGroup(const ModelGroup&) = delete;
  ModelGroup& operator=(const ModelGroup&) = delete;

  // Whether this process runs rank 0 (node 0): the engine drives model(); other nodes call serve().
  bool leader() const;
  DecoderModel& model();  // rank 0's part (the whole model without tensor parallelism)
  Backend& backend();
  int world() const { return world_; }
  // Another node's process: runs its ranks until the leader stops them; throws why when the group fails.
  void serve();
  // All-reduce speed across the group, measured now (leader; world > 1): NCCL's bus bandwidth of a
  // 256 MiB sum, and the time of one decode-sized sum (one token's hidden state, in the model's dtype).
  struct AllReduceFigures {
    double bus_bandwidth = 0.0;  // bytes/s: 2 (n - 1) / n * size / time
    double small_seconds = 0.0;
    int64_t small_bytes = 0;
  };
  AllReduceFigures measure_all_reduce();

 private:
  struct Rank;
  void build(Rank& r, const LoadOptions& load, const std::string& device, int threads);
  void run_worker(Rank& r);
  // The measure_all_reduce() rounds (every rank runs them); returns the seconds of each timed part.
  std::pair<double, double> all_reduce_rounds(Rank& r);
  void send_step(const StepBatch& b, const KvCache& cache);
  // Rank 0's message to the other ranks (r is rank 0), and a rank's next one (into r.words).
  void send(Rank& r, std::vector<int32_t>& words);
  void receive(Rank& r);
  // Stops every rank of this process (and tells the other nodes).
  void abort_group(const std::string& why);
  void release(Rank& r);
  [[noreturn]] void fail_unloaded(const std::string& why);

  int world_ = 1;
  int node_rank_ = 0;
  std::vector<std::unique_ptr<Collectives>> collectives_;  // this node's ranks', by local index
  std::vector<std::unique_ptr<Rank>> ranks_;                // by local index
  std::vector<std::thread> threads_;
  std::unique_ptr<Rendezvous> rendezvous_;
  class Mailbox;
  std::unique_ptr<Mailbox> mailbox_;  // one node: the step messages through host memory
  std::mutex mutex_;
  std::string failure_;
  bool stopped_ = false;
  // Set once the group is torn down: after a failure, a watchdog ends the process if that has not
  // happened within APUS_TP_EXIT_GRACE seconds (a GPU waiting on a dead peer may never stop).
  std::shared_ptr<std::atomic<bool>> torn_down_ = std::make_shared<std::atomic<bool>>(false);
  std::map<int32_t, std::weak_ptr<void>> live_caches_;  // rank 0: the caches steps have used, by id
  std::mutex lora_mutex_;
  std::vector<std::pair<int, std::string>> lora_changes_;  // rank 0: adapter loads/unloads not yet sent
  // APUS_TP_FAULT=RANK:STEP: rank RANK (not 0) fails at its STEP-th step, to test failure handling.
  int fault_rank_ = -1;
  long fault_step_ = -1;
};

}  // namespace apus
