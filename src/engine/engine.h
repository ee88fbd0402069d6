// The engine core: requests in, tokens out, many sequences batched per step over one paged KV
// cache. Single-threaded by design: whoever drives step() (the engine loop thread, or the offline
// API) owns all of this state; see README.md beside this file.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "kv/block_manager.h"
#include "kv/kv_cache.h"
#include "model/decoder.h"

namespace apus {

struct EngineConfig {
  SchedulerConfig scheduler;
  int block_size = 16;
  int num_blocks = 0;        // 0: from kv_cache_bytes, or on a GPU from gpu_memory_utilization
  size_t kv_cache_bytes = size_t(1) << 30;  // the cache's memory on the CPU
  // On a GPU: the share of the card's memory this process may use; the cache gets what the
  // weights and the activation buffers of a full step (reserved first) leave of it.
  double gpu_memory_utilization = 0.9;
  int max_model_len = 0;     // 0: the model's max_position_embeddings, capped by the cache
  // Queue the next step before reading this one's tokens (they reach the next step on the device),
  // where every token of the step is drawn by the backend (with tensor parallelism: every row
  // greedy, picked on each rank): the host's scheduling and output work then overlaps the device's
  // step. A sequence that stops at a token (eos, stop string) has one more token computed and
  // dropped. APUS_ASYNC_SCHEDULING=0 turns it off.
  bool async_scheduling = true;
};

struct Request {
  std::vector<int32_t> prompt;
  SamplingParams params;
  int n = 1;
  int priority = 0;
  uint64_t cache_salt = 0;
  LoraRef lora;                          // the adapter (default: the base model)
  std::vector<int32_t> stop_token_ids;  // in addition to the model's eos (unless ignore_eos)
  std::vector<std::string> stop;        // stop strings (need a tokenizer)
  bool include_stop_str_in_output = false;
  bool skip_special_tokens = true;
};

// What one step produced for one sequence.
struct SeqOutput {
  uint64_t request_id = 0;
  int index = 0;                   // choice index (n > 1)
  std::vector<int32_t> new_tokens;  // usually one; empty for a prefill chunk that sampled nothing
  std::vector<std::vector<std::pair<int, float>>> logprobs;  // per new token, when requested
  std::vector<float> new_token_logprobs;                     // logprob of each new token (with logprobs)
  std::vector<PromptLogprob> prompt_logprobs;  // with the first token, when requested
  std::string text;                 // new text (with a tokenizer), UTF-8 complete
  bool finished = false;
  std::string finish_reason;        // "stop" | "length"
  std::string stop_reason;          // the stop string that ended it, if any
};

struct EngineStats {
  uint64_t steps = 0, prompt_tokens = 0, generated_tokens = 0, computed_tokens = 0;
  uint64_t preemptions = 0, prefix_queried_blocks = 0, prefix_hit_blocks = 0;
  uint64_t argmax_only_steps = 0;  // steps that gathered greedy candidates, not logits (StepBatch::argmax_only)
  uint64_t overlapped_steps = 0;   // steps queued before the one before them was read (async_scheduling)
  // Host seconds spent in each phase of step(): scheduling and building the batch; the forward
  // call (uploads, the step broadcast, launches: on a GPU it returns once the step is queued);
  // drawing the tokens (waits for the device); turning them into outputs. With async scheduling
  // the device runs the next step meanwhile; without, it idles through schedule_s and outputs_s.
  double schedule_s = 0, forward_s = 0, draw_s = 0, outputs_s = 0;
};

class Engine {
 public:
  // With a tokenizer the engine also produces text and honours stop strings.
  Engine(DecoderModel& model, EngineConfig config, const Tokenizer* tokenizer = nullptr);

  // Throws apus::Error for a request that can never run. Reads only immutable state, so any
  // thread may call it.
  void validate(const Request& req) const;
  // Validates and queues a request; returns its id (`id`, or a fresh one when 0).
  uint64_t add_request(Request req, uint64_t id = 0);
  // Cancels a request: its sequences leave the batch and free their blocks at once.
  void abort(uint64_t request_id);
  // Runs one forward step over the scheduled batch and returns what it produced.
  std::vector<SeqOutput> step();
  bool has_unfinished() const { return !scheduler_.empty() || inflight_.has_value(); }

  const BlockManager& blocks() const { return blocks_; }
  const EngineConfig& config() const { return config_; }
  int max_model_len() const { return config_.max_model_len; }
  int64_t vocab_size() const { return model_.config().vocab_size; }
  EngineStats stats() const;
  // "KV cache: 4096 blocks of 16 tokens (65536 tokens, 768.0 MiB); max_model_len 32768"
  std::string describe_cache() const;
  size_t num_waiting() const { return scheduler_.num_waiting(); }
  size_t num_running() const { return scheduler_.num_running(); }

 private:
  // A sequence's part in a launched step.
  struct LaunchedSeq {
    uint64_t id = 0;
    int computed = 0, n = 0;  // the step runs its tokens [computed, computed + n)
    int prompt_rows = 0;      // logit rows of prompt logprobs, first
    bool samples = false;     // then one row for its next token,
    int32_t draw = 0;         // held in its tokens until collect(): -1 - j (draw j) or kUndrawn
  };
  // A step queued on the device whose tokens are not read yet.
  struct Launched {
    std::vector<LaunchedSeq> seqs;  // in batch order
    std::vector<SampleRow> draws;   // the rows the backend draws
    std::vector<char> on_host;      // per logit row: the host reads it (prompt logprobs, logprobs, penalties...)
    bool argmax_only = false;       // StepBatch::argmax_only: the forward pass picked the rows' tokens
    bool device = false;            // start_draws() queued the draws on the backend
    Tensor logits;
  };
  // Schedules and queues a step (none when nothing is scheduled); its sequences then count its
  // tokens as computed and hold a placeholder for each new token.
  std::optional<Launched> launch();
  void start_draws(Launched& l);  // queues the draws on the backend, or marks the rows for the host
  // Waits for the step's tokens (copying the rows the host reads), draws those of the host and turns
  // them into outputs.
  std::vector<SeqOutput> collect(Launched& l);
  bool overlaps(const Launched& l) const;  // the next step may be queued before collect(l)
  void finish(Sequence& s, const std::string& reason, SeqOutput& out);
  bool hit_stop(const Sequence& s, int32_t token, int generated) const;

  DecoderModel& model_;
  EngineConfig config_;
  const Tokenizer* tokenizer_;
  KvCache cache_;
  BlockManager blocks_;
  Scheduler scheduler_;
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> seqs_;  // live sequences by id
  std::unordered_map<uint64_t, std::vector<int32_t>> stop_ids_;   // per request
  uint64_t next_request_ = 1, next_seq_ = 1, arrivals_ = 0;
  EngineStats stats_;
  StepBatch batch_;
  std::optional<Launched> inflight_;  // the step queued last, whose tokens are not read yet
  std::vector<float> logits_;  // [logit rows, vocab]: only the rows the host reads are filled
  std::vector<int32_t> drawn_;  // per logit row: the token drawn on the device, or -1
};

// Batch limits for offline runs (the library API, `apus infer`, `apus bench throughput`), as vLLM V1 picks them:
// on a GPU of at least 70 GiB other than an A100, 1,024 sequences and 16,384 tokens a step (H100,
// 7B, 1,000 x 512/256: 9,239 -> 11,024 output tokens/s); elsewhere the scheduler's defaults. Only
// the limits given as 0 are filled in.
void apply_offline_batch_limits(SchedulerConfig& s, Backend& backend);

// Runs requests to completion on `engine` (the offline batch path); returns, per request, its
// sequences' outputs merged over all steps, in request order.
std::vector<std::vector<SeqOutput>> run_to_completion(Engine& engine, std::vector<Request> requests);

}  // namespace apus
