#include "engine/scheduler.h"

#include <algorithm>

namespace apus {

Scheduler::Scheduler(SchedulerConfig config, BlockManager& blocks) : config_(config), blocks_(blocks) {}

void Scheduler::insert_waiting(Sequence* s) {
  auto pos = std::find_if(waiting_.begin(), waiting_.end(), [&](Sequence* w) { return s->before(*w); });
  waiting_.insert(pos, s);
}

void Scheduler::add(Sequence* seq) {
  seq->status = SeqStatus::Waiting;
  insert_waiting(seq);
}

void Scheduler::remove(Sequence* seq) {
  std::erase(waiting_, seq);
  std::erase(running_, seq);
  blocks_.release(seq->block_table);
  seq->block_hashes.clear();
  seq->num_computed = 0;
}

int Scheduler::blocks_needed(const Sequence& s, int num_tokens) const {
  const int bs = blocks_.block_size();
  const int want = (s.num_computed + num_tokens + bs - 1) / bs;
  return std::max(0, want - int(s.block_table.size()));
}

void Scheduler::preempt(Sequence* s) {
  std::erase(running_, s);
  blocks_.release(s->block_table);
  s->block_hashes.clear();
  s->num_computed = 0;
  s->num_preemptions++;
  preemptions_++;
  s->status = SeqStatus::Waiting;
  insert_waiting(s);
}

// Blocks are registered for reuse as soon as the step that fills them is scheduled: within a step
// every layer stores all tokens' K/V before any attention reads them, so a sequence admitted later
// in the same step may already share them (n > 1 and simultaneous requests compute a prefix once).
void Scheduler::commit_full_blocks(Sequence& s, int computed_after_step) {
  const int bs = blocks_.block_size();
  while (int(s.block_hashes.size()) < computed_after_step / bs) {
    const size_t i = s.block_hashes.size();
    const auto tokens = std::span(s.tokens).subspan(i * size_t(bs), size_t(bs));
    if (std::any_of(tokens.begin(), tokens.end(), [](int32_t t) { return t < 0; })) break;  // not drawn yet
    const uint64_t prev = i ? s.block_hashes.back() : 0;
    const uint64_t h = BlockManager::hash_block(prev, tokens, s.cache_salt);
    if (config_.enable_prefix_caching) blocks_.register_full(s.block_table[i], h);
    s.block_hashes.push_back(h);
  }
}

namespace {
constexpr int kBacklogSteps = 4;
}  // namespace

int Scheduler::step_budget() const {
  const int full = config_.max_num_batched_tokens;
  if (config_.tokens_per_decode <= 0) return full;
  // More prompt tokens waiting than four full steps hold: a backlog, where throughput is what
  // shortens the wait (a burst of arrivals). (One step's worth was too few: 32 streams of 512-token
  // prompts often have that much waiting, and went back to full steps.)
  int64_t waiting = 0;
  for (const Sequence* s : waiting_)
    if ((waiting += s->length() - s->num_computed) > int64_t(kBacklogSteps) * full) return full;
  int64_t decoding = 0;  // running sequences with one token left to compute: they decode
  for (const Sequence* s : running_) decoding += s->length() - s->num_computed == 1;
  if (decoding == 0) return full;
  const int64_t prompt = std::clamp<int64_t>(decoding * config_.tokens_per_decode, std::max(1, full / 4), full);
  return int(std::min<int64_t>(full, decoding + prompt));
}

std::vector<ScheduledSeq> Scheduler::schedule() {
  std::vector<ScheduledSeq> out;
  int budget = step_budget();

  // Running sequences, best first; victims for preemption come from the back.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* s = running_[i];
    const int n = std::min(s->length() - s->num_computed, budget);
    bool self_preempted = false;
    while (!blocks_.allocate(blocks_needed(*s, n), s->block_table)) {
      Sequence* victim = running_.back();
      preempt(victim);
      if (victim == s) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;
    commit_full_blocks(*s, s->num_computed + n);
    out.push_back({s, n});
    budget -= n;
    ++i;
  }

  // Admit waiting sequences (in priority order) while there is room.
  while (!waiting_.empty() && budget > 0 && int(running_.size()) < config_.max_num_seqs) {
    Sequence* s = waiting_.front();
    const int bs = blocks_.block_size();
    // Prompt log-probabilities need the logits of every prompt position: no cached prefix then.
    if (config_.enable_prefix_caching && s->num_computed == 0 && !s->wants_prompt_logprobs()) {
      // At least one token must be computed to produce the next token's logits.
      const int matched = blocks_.match_prefix(s->tokens, s->cache_salt, (s->length() - 1) / bs,
                                               s->block_table, s->block_hashes);
      s->num_computed = matched * bs;
    }
    const int n = std::min(s->length() - s->num_computed, budget);
    if (!blocks_.allocate(blocks_needed(*s, n), s->block_table)) {
      blocks_.release(s->block_table);  // give back the prefix hits; retry on a later step
      s->block_hashes.clear();
      s->num_computed = 0;
      break;
    }
    waiting_.pop_front();
    s->status = SeqStatus::Running;
    auto pos = std::find_if(running_.begin(), running_.end(), [&](Sequence* r) { return s->before(*r); });
    running_.insert(pos, s);
    commit_full_blocks(*s, s->num_computed + n);
    out.push_back({s, n});
    budget -= n;
  }
  return out;
}

}  // namespace apus
