// One sequence being generated: its tokens, how much of it is in the KV cache, and its blocks.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <memory>

#include "sample/sampler.h"
#include "text/detokenizer.h"

namespace apus {

// The LoRA adapter a request runs with (served unmerged: src/lora/lora_slots.h). `id` is unique per
// load of an adapter (it salts the prefix cache, so blocks are never shared between adapters, nor
// with an earlier adapter that had the same slot); `hold` keeps the adapter from being unloaded
// while a sequence of the request lives.
struct LoraRef {
  int slot = -1;  // -1: the base model
  uint64_t id = 0;
  std::shared_ptr<const void> hold;
};

enum class SeqStatus { Waiting, Running, Finished };

// The log-probability of one prompt token given the tokens before it, and the top alternatives.
struct PromptLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<std::pair<int, float>> top;
};

struct Sequence {
  uint64_t id = 0;          // unique per sequence
  uint64_t request_id = 0;  // several sequences share a request when n > 1
  int index = 0;            // which of the request's n choices
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int prompt_len = 0;
  // Leading tokens whose K/V are in the cache. Everything after is computed by the next step(s);
  // when that reaches the end, the step samples a new token.
  int num_computed = 0;
  std::vector<int32_t> block_table;
  std::vector<uint64_t> block_hashes;  // chained hashes of the full, computed blocks
  uint64_t cache_salt = 0;             // separates prefix-cache entries (e.g. per LoRA adapter)
  LoraRef lora;
  SamplingParams params;
  int priority = 0;          // lower runs first (vLLM's convention)
  uint64_t arrival = 0;      // FCFS order within a priority
  SeqStatus status = SeqStatus::Waiting;
  std::string finish_reason;
  int num_preemptions = 0;
  std::unique_ptr<IncrementalDetokenizer> detokenizer;  // when the engine has a tokenizer
  std::vector<PromptLogprob> prompt_logprobs;  // for prompt tokens 1.. (token 0 has no context)
  bool wants_prompt_logprobs() const { return params.prompt_logprobs >= 0; }
  // Still scoring the prompt (they are reported with the first generated token).
  bool collecting_prompt_logprobs() const { return wants_prompt_logprobs() && num_generated() == 0; }

  int length() const { return int(tokens.size()); }
  int num_generated() const { return length() - prompt_len; }
  bool before(const Sequence& o) const {
    return priority != o.priority ? priority < o.priority : arrival < o.arrival;
  }
};

}  // namespace apus
