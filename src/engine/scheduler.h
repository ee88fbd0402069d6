// Continuous batching: which sequences run in the next step and how many of their tokens.
//
// Running sequences are served first (decodes, and the rest of chunked prefills), then waiting
// ones are admitted while the token budget (max_num_batched_tokens), the sequence limit
// (max_num_seqs) and free KV blocks allow. A long prompt is split into chunks so that it never
// stalls the running decodes. When blocks run out, the lowest-priority, latest-arrived running
// sequence is preempted: its blocks are released and it is recomputed later (its full blocks are
// likely still in the prefix cache), continuing with identical output.
#pragma once
#include <deque>
#include <vector>

#include "engine/sequence.h"
#include "kv/block_manager.h"

namespace apus {

struct SchedulerConfig {
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
  // While sequences decode and no more than four full steps of prompt tokens wait, a step's prompt
  // tokens are at most this many per decoding sequence (but at least a quarter of
  // max_num_batched_tokens; the total stays within it): a prompt chunk then stalls a few decodes
  // for a short step, many decodes share the cost of a full one, and a backlog drains at full
  // steps. 0: always the full budget. Measured in bench/RESULTS.md (session 8).
  int tokens_per_decode = 16;
  bool enable_prefix_caching = true;
};

struct ScheduledSeq {
  Sequence* seq;
  int num_tokens;  // tokens [seq->num_computed, seq->num_computed + num_tokens) run this step
};

class Scheduler {
 public:
  Scheduler(SchedulerConfig config, BlockManager& blocks);

  void add(Sequence* seq);  // enters the waiting queue (by priority, then arrival)
  // Removes a sequence wherever it is and releases its blocks (cancellation, or finished).
  void remove(Sequence* seq);
  std::vector<ScheduledSeq> schedule();
  int step_budget() const;  // the next step's token budget (tokens_per_decode)
  // Registers s's computed blocks for prefix reuse, up to a block holding a token not known yet
  // (Engine: a placeholder for a draw), which waits until it is.
  void commit_full_blocks(Sequence& s) { commit_full_blocks(s, s.num_computed); }
  bool empty() const { return waiting_.empty() && running_.empty(); }
  size_t num_waiting() const { return waiting_.size(); }
  size_t num_running() const { return running_.size(); }
  uint64_t num_preemptions() const { return preemptions_; }

 private:
  int blocks_needed(const Sequence& s, int num_tokens) const;
  void preempt(Sequence* s);
  void insert_waiting(Sequence* s);
  void commit_full_blocks(Sequence& s, int computed_after_step);

  SchedulerConfig config_;
  BlockManager& blocks_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // kept in priority order
  uint64_t preemptions_ = 0;
};

}  // namespace apus
