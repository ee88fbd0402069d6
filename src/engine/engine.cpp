#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>

#include "core/error.h"

namespace apus {

namespace {

int resolve_num_blocks(DecoderModel& m, const EngineConfig& c, DType kv_dtype) {
  if (c.num_blocks > 0) return c.num_blocks;
  const size_t per_block = KvCache::bytes_per_block(m.config(), c.block_size, kv_dtype);
  size_t budget = c.kv_cache_bytes, free_bytes = 0, total = 0;
  if (c.gpu_memory_utilization > 0 && m.backend().memory_info(&free_bytes, &total)) {
    APUS_CHECK(c.gpu_memory_utilization <= 1.0, "gpu_memory_utilization {} is not in (0, 1]", c.gpu_memory_utilization);
    // Activations of the largest step first (logits for up to one row per sequence), then measure.
    m.reserve(c.scheduler.max_num_batched_tokens,
              std::min(c.scheduler.max_num_batched_tokens, c.scheduler.max_num_seqs));
    m.backend().memory_info(&free_bytes, &total);
    const double allowed = c.gpu_memory_utilization * double(total), used = double(total - free_bytes);
    APUS_CHECK(allowed >= used + double(per_block),
               "no GPU memory left for the KV cache: {:.2f} GiB of {:.2f} GiB are in use (weights, activations, "
               "other processes) and gpu_memory_utilization {} allows {:.2f} GiB",
               used / double(1 << 30), double(total) / double(1 << 30), c.gpu_memory_utilization,
               allowed / double(1 << 30));
    budget = size_t(allowed - used);
  }
  // Slots are int32 (slot mapping): at most 2^31 tokens of cache.
  return int(std::min<size_t>(std::max<size_t>(1, budget / per_block), size_t(INT32_MAX / c.block_size)));
}

}  // namespace

void apply_offline_batch_limits(SchedulerConfig& s, Backend& backend) {
  const SchedulerConfig defaults;
  size_t free_bytes = 0, total = 0;
  const bool large = backend.memory_info(&free_bytes, &total) && total >= size_t(70) << 30 &&
                     backend.name().find("A100") == std::string::npos;
  if (s.max_num_seqs <= 0) s.max_num_seqs = large ? 1024 : defaults.max_num_seqs;
  if (s.max_num_batched_tokens <= 0) s.max_num_batched_tokens = large ? 16384 : defaults.max_num_batched_tokens;
}

Engine::Engine(DecoderModel& model, EngineConfig config, const Tokenizer* tokenizer)
    : model_(model),
      config_(config),
      tokenizer_(tokenizer),
      cache_(KvCache::create(model.backend(), model.config(),
                             resolve_num_blocks(model, config, model.backend().activation_dtype()), config.block_size)),
      blocks_(cache_.num_blocks, config.block_size),
      scheduler_(config.scheduler, blocks_) {
  const int capacity = cache_.num_blocks * config_.block_size;
  if (config_.max_model_len <= 0) config_.max_model_len = std::min(model.config().max_position_embeddings, capacity);
  APUS_CHECK(config_.max_model_len <= capacity,
             "the KV cache holds {} tokens ({} blocks of {}), less than one sequence of max_model_len {}: "
             "give the cache more memory or lower --max_model_len",
             capacity, cache_.num_blocks, config_.block_size, config_.max_model_len);
  APUS_CHECK(config_.scheduler.max_num_batched_tokens > 0 && config_.scheduler.max_num_seqs > 0,
             "max_num_batched_tokens and max_num_seqs must be positive");
  if (const char* a = std::getenv("APUS_ASYNC_SCHEDULING"); a != nullptr && std::string(a) == "0")
    config_.async_scheduling = false;
  model_.draws(config_.scheduler.max_num_seqs);  // every step's draws fit: it never grows mid-run
}

void Engine::validate(const Request& req) const {
  const int64_t V = model_.config().vocab_size;
  APUS_CHECK(!req.prompt.empty(), "the prompt is empty");
  APUS_CHECK(int(req.prompt.size()) < config_.max_model_len,
             "the prompt has {} tokens; this model accepts at most {} (max_model_len) including the reply",
             req.prompt.size(), config_.max_model_len);
  for (int32_t t : req.prompt) APUS_CHECK(t >= 0 && t < V, "prompt token id {} is outside the vocabulary (size {})", t, V);
  APUS_CHECK(req.n >= 1, "n must be at least 1");
  APUS_CHECK(req.params.max_tokens >= 1, "max_tokens must be at least 1");
  APUS_CHECK(req.stop.empty() || tokenizer_, "stop strings need a tokenizer");
  if (req.lora.slot >= 0) {
    const LoraSlots* slots = model_.lora();
    APUS_CHECK(slots && req.lora.slot < slots->max_loras(), "LoRA slot {} does not exist (LoRA serving is {})",
               req.lora.slot, slots ? fmt::format("on with {} slots", slots->max_loras()) : "off");
  }
}

uint64_t Engine::add_request(Request req, uint64_t id) {
  validate(req);
  const uint64_t rid = id ? id : next_request_++;
  APUS_CHECK(!stop_ids_.count(rid), "request id {} is already in use", rid);
  std::vector<int32_t> stops = req.stop_token_ids;
  if (!req.params.ignore_eos)
    for (int32_t e : model_.config().eos_token_ids) stops.push_back(e);
  stop_ids_[rid] = std::move(stops);
  for (int i = 0; i < req.n; ++i) {
    auto s = std::make_unique<Sequence>();
    s->id = next_seq_++;
    s->request_id = rid;
    s->index = i;
    s->tokens = req.prompt;
    s->prompt_len = int(req.prompt.size());
    s->params = req.params;
    s->params.seed = req.params.seed + uint64_t(i);  // each choice its own random stream
    s->priority = req.priority;
    s->arrival = arrivals_++;
    // The adapter is part of every block hash: blocks are never shared across adapters.
    s->cache_salt = req.lora.slot >= 0 ? req.cache_salt ^ ((req.lora.id + 1) * 0x9E3779B97F4A7C15ull) : req.cache_salt;
    s->lora = req.lora;
    if (tokenizer_)
      s->detokenizer = std::make_unique<IncrementalDetokenizer>(*tokenizer_, req.prompt, req.skip_special_tokens, req.stop,
                                                                req.include_stop_str_in_output);
    scheduler_.add(s.get());
    seqs_.emplace(s->id, std::move(s));
  }
  stats_.prompt_tokens += req.prompt.size() * size_t(req.n);
  return rid;
}

void Engine::abort(uint64_t request_id) {
  for (auto it = seqs_.begin(); it != seqs_.end();) {
    if (it->second->request_id == request_id) {
      scheduler_.remove(it->second.get());
      it = seqs_.erase(it);
    } else {
      ++it;
    }
  }
  stop_ids_.erase(request_id);
}

bool Engine::hit_stop(const Sequence& s, int32_t token, int generated) const {
  if (generated < s.params.min_tokens) return false;
  const auto& stops = stop_ids_.at(s.request_id);
  return std::find(stops.begin(), stops.end(), token) != stops.end();
}

void Engine::finish(Sequence& s, const std::string& reason, SeqOutput& out) {
  out.finished = true;
  out.finish_reason = reason;
  s.status = SeqStatus::Finished;
  s.finish_reason = reason;
  scheduler_.remove(&s);
}

namespace {

// Seconds since `t`, which moves on to now.
double lap(std::chrono::steady_clock::time_point& t) {
  const auto now = std::chrono::steady_clock::now();
  const double s = std::chrono::duration<double>(now - t).count();
  t = now;
  return s;
}

// A sequence's new token until collect() knows it: -1 - j for draw j of its step (what the next
// step's embedding reads on the device, StepBatch::tokens), kUndrawn where the host draws it.
constexpr int32_t kUndrawn = INT32_MIN;

}  // namespace

std::vector<SeqOutput> Engine::step() {
  try {
    if (!inflight_) {
      inflight_ = launch();
      if (!inflight_) return {};
      start_draws(*inflight_);
    }
    // The next step goes to the device before this one's tokens are read (its sequences' new tokens
    // come from this step's draws on the device), so that the host's work between the two (outputs,
    // scheduling, the launch) runs while the device computes.
    std::optional<Launched> next;
    if (overlaps(*inflight_) && (next = launch())) stats_.overlapped_steps++;
    std::vector<SeqOutput> out = collect(*inflight_);
    inflight_ = std::move(next);
    if (inflight_) start_draws(*inflight_);
    return out;
  } catch (...) {
    inflight_.reset();
    throw;
  }
}

// With tensor parallelism only the greedy candidates' picks are on every rank (pick_greedy).
bool Engine::overlaps(const Launched& l) const {
  return config_.async_scheduling && l.device && (!model_.vocab_parallel() || l.argmax_only) &&
         std::none_of(l.on_host.begin(), l.on_host.end(), [](char c) { return c != 0; });
}

std::optional<Engine::Launched> Engine::launch() {
  auto clock = std::chrono::steady_clock::now();
  std::vector<ScheduledSeq> sched = scheduler_.schedule();
  if (sched.empty()) return std::nullopt;
  const int bs = config_.block_size;

  Launched l;
  StepBatch& b = batch_;
  b.tokens.clear(), b.q_start.assign(1, 0), b.ctx_len.clear(), b.slot_mapping.clear(), b.logit_rows.clear();
  b.prompt_len.clear();
  b.lora_slots.clear();
  const bool lora = std::any_of(sched.begin(), sched.end(), [](const ScheduledSeq& x) { return x.seq->lora.slot >= 0; });
  b.max_blocks = 0;
  for (const auto& [s, n] : sched) b.max_blocks = std::max(b.max_blocks, int(s->block_table.size()));
  b.block_table.assign(sched.size() * size_t(b.max_blocks), 0);
  for (size_t i = 0; i < sched.size(); ++i) {
    const auto& [s, n] = sched[i];
    LaunchedSeq& ls = l.seqs.emplace_back();
    ls.id = s->id, ls.computed = s->num_computed, ls.n = n;
    for (int j = 0; j < n; ++j) {
      const int pos = s->num_computed + j;
      const int32_t t = s->tokens[size_t(pos)];
      APUS_CHECK(t != kUndrawn, "sequence {}: token {} is drawn on the host and not known yet", s->id, pos);
      b.tokens.push_back(t);
      if (lora) b.lora_slots.push_back(s->lora.slot);
      b.slot_mapping.push_back(s->block_table[size_t(pos / bs)] * bs + pos % bs);
    }
    if (s->collecting_prompt_logprobs())  // position p's logits score prompt token p + 1
      for (int j = 0; j < n; ++j)
        if (s->num_computed + j < s->prompt_len - 1) {
          b.logit_rows.push_back(b.q_start.back() + j);
          l.on_host.push_back(1);
          ls.prompt_rows++;
        }
    if (s->num_computed + n == s->length()) {  // the next token: drawn on the device unless host work is needed
      const SamplingParams& p = s->params;
      const bool host = p.logprobs >= 0 || needs_processing(p, s->num_generated());
      ls.samples = true;
      ls.draw = host ? kUndrawn : -1 - int32_t(l.draws.size());
      if (!host)
        l.draws.push_back(SampleRow{int32_t(b.logit_rows.size()), p.temperature, p.top_k, p.top_p, p.min_p,
                                    draw_uniform(p, uint64_t(s->num_generated()))});
      b.logit_rows.push_back(int32_t(b.tokens.size()) - 1);
      l.on_host.push_back(host);
    }
    b.q_start.push_back(int32_t(b.tokens.size()));
    b.ctx_len.push_back(s->num_computed + n);
    b.prompt_len.push_back(s->prompt_len);
    std::copy(s->block_table.begin(), s->block_table.end(), b.block_table.begin() + long(i) * b.max_blocks);
  }
  // Tensor parallelism: a step whose rows are all greedy draws gathers each rank's best token
  // instead of every logit.
  b.argmax_only = model_.vocab_parallel() && !lora && !l.draws.empty() && l.draws.size() == b.logit_rows.size() &&
                  std::all_of(l.draws.begin(), l.draws.end(), [](const SampleRow& d) { return d.greedy(); });
  l.argmax_only = b.argmax_only;
  stats_.schedule_s += lap(clock);
  try {
    l.logits = model_.forward(b, cache_);
  } catch (...) {
    blocks_.drop_cache();
    throw;
  }
  stats_.steps++;
  stats_.computed_tokens += b.tokens.size();
  // From now on the step's tokens count as computed and each new token as there (known at
  // collect()), so that the next step can be scheduled while this one runs. A sequence that ends
  // at its new token by length leaves the scheduler now: its blocks go back at once (a step queued
  // later may reuse them; it runs after this one).
  for (size_t i = 0; i < sched.size(); ++i) {
    Sequence& s = *sched[i].seq;
    const LaunchedSeq& ls = l.seqs[i];
    s.num_computed += ls.n;
    if (!ls.samples) continue;
    s.tokens.push_back(ls.draw);
    if (s.num_generated() >= s.params.max_tokens || s.length() >= config_.max_model_len) scheduler_.remove(&s);
  }
  stats_.forward_s += lap(clock);
  return l;
}

void Engine::start_draws(Launched& l) {
  l.device = true;
  if (l.draws.empty()) return;
  Tensor& drawn = model_.draws(int64_t(l.draws.size()));
  if (l.argmax_only) {  // the forward pass picked them from the ranks' candidates
    model_.backend().queue_fetch_draws(drawn, int(l.draws.size()));
    return;
  }
  if (model_.backend().sample(l.logits, l.draws, drawn)) return;
  l.device = false;
  for (const SampleRow& d : l.draws) l.on_host[size_t(d.row)] = 1;
}

std::vector<SeqOutput> Engine::collect(Launched& l) {
  auto clock = std::chrono::steady_clock::now();
  const int64_t R = l.logits.empty() ? 0 : l.logits.rows(), V = model_.config().vocab_size;
  drawn_.assign(size_t(R), -1);
  stats_.argmax_only_steps += l.argmax_only;
  // The backend's draws (or the tokens picked from tensor-parallel candidates) come back first.
  if (l.device && !l.draws.empty()) {
    std::vector<int32_t> ids(l.draws.size());
    model_.backend().fetch_draws(ids.data(), int(ids.size()));
    for (size_t i = 0; i < l.draws.size(); ++i) drawn_[size_t(l.draws[i].row)] = ids[i];
  }
  // The rows the host reads (a step with any is never followed by one queued before its end),
  // copied in runs of consecutive rows. The buffer only grows: resizing it per step would
  // zero-fill up to [rows, vocab] floats on the host each time.
  int64_t last = R - 1;
  while (last >= 0 && !l.on_host[size_t(last)]) --last;
  if (logits_.size() < size_t((last + 1) * V)) logits_.resize(size_t((last + 1) * V));
  for (int64_t a = 0; a <= last;) {
    if (!l.on_host[size_t(a)]) {
      ++a;
      continue;
    }
    int64_t e = a;
    while (e <= last && l.on_host[size_t(e)]) ++e;
    model_.backend().copy_to_host(l.logits.rows_view(a, e - a), logits_.data() + a * V);
    a = e;
  }
  stats_.draw_s += lap(clock);

  std::vector<SeqOutput> outputs;
  std::vector<float> row, lp;
  size_t logit_row = 0;
  for (const LaunchedSeq& ls : l.seqs) {
    const int end = ls.computed + ls.n;  // the step ran tokens [computed, end); its new token goes at `end`
    auto it = seqs_.find(ls.id);
    // Gone (aborted, or finished by a token of the step before this one): its rows are not read.
    Sequence* s = it == seqs_.end() ? nullptr : it->second.get();
    for (int k = 0; k < ls.prompt_rows; ++k, ++logit_row) {
      const int pos = ls.computed + k;
      if (!s || size_t(pos) != s->prompt_logprobs.size()) continue;  // recomputed after a preemption
      lp.resize(size_t(V));
      log_softmax(logits_.data() + int64_t(logit_row) * V, V, lp.data());
      const int32_t t = s->tokens[size_t(pos) + 1];
      s->prompt_logprobs.push_back({t, lp[size_t(t)], top_logprobs(lp.data(), V, s->params.prompt_logprobs)});
    }
    if (!ls.samples) continue;  // a prefill chunk: nothing to sample yet
    const int32_t r = int32_t(logit_row++);
    if (!s) continue;
    const int generated = end - s->prompt_len;  // before this token

    SeqOutput out;
    out.request_id = s->request_id;
    out.index = s->index;
    if (generated == 0) out.prompt_logprobs = std::move(s->prompt_logprobs);
    int32_t tok = drawn_[size_t(r)];
    // Rows not drawn on the device were copied to the host (those reporting logprobs always are).
    const float* raw = tok < 0 ? logits_.data() + int64_t(r) * V : nullptr;
    if (tok < 0) {
      const float* use = raw;
      if (needs_processing(s->params, generated)) {
        row.assign(raw, raw + V);
        std::vector<int32_t> prompt(s->tokens.begin(), s->tokens.begin() + s->prompt_len);
        std::vector<int32_t> output(s->tokens.begin() + s->prompt_len, s->tokens.begin() + end);
        process_logits(row.data(), V, s->params, prompt, output, stop_ids_.at(s->request_id));
        use = row.data();
      }
      tok = sample_token(use, V, s->params, uint64_t(generated));
    }
    out.new_tokens.push_back(tok);
    if (s->params.logprobs >= 0) {  // a full-vocabulary log-softmax: only when asked for
      lp.resize(size_t(V));
      log_softmax(raw, V, lp.data());
      out.new_token_logprobs.push_back(lp[size_t(tok)]);
      out.logprobs.push_back(top_logprobs(lp.data(), V, s->params.logprobs));
    }
    s->tokens[size_t(end)] = tok;
    scheduler_.commit_full_blocks(*s);  // those that waited for this token
    stats_.generated_tokens++;
    if (s->detokenizer && s->detokenizer->add({tok})) {
      out.stop_reason = s->detokenizer->matched_stop();
      finish(*s, "stop", out);
    } else if (hit_stop(*s, tok, generated + 1)) {
      finish(*s, "stop", out);
    } else if (generated + 1 >= s->params.max_tokens || end + 1 >= config_.max_model_len) {
      finish(*s, "length", out);
    }
    if (s->detokenizer) out.text = s->detokenizer->take_delta(out.finished);
    outputs.push_back(std::move(out));
  }
  // Finished sequences are dropped once their last output is built.
  for (auto it = seqs_.begin(); it != seqs_.end();) {
    if (it->second->status == SeqStatus::Finished) {
      const uint64_t rid = it->second->request_id;
      it = seqs_.erase(it);
      bool more = std::any_of(seqs_.begin(), seqs_.end(), [&](const auto& kv) { return kv.second->request_id == rid; });
      if (!more) stop_ids_.erase(rid);
    } else {
      ++it;
    }
  }
  stats_.outputs_s += lap(clock);
  return outputs;
}

std::string Engine::describe_cache() const {
  return fmt::format("KV cache: {} blocks of {} tokens ({} tokens, {:.1f} MiB); max_model_len {}", cache_.num_blocks,
                     config_.block_size, cache_.num_blocks * config_.block_size, double(cache_.bytes()) / (1 << 20),
                     config_.max_model_len);
}

EngineStats Engine::stats() const {
  EngineStats s = stats_;
  s.preemptions = scheduler_.num_preemptions();
  s.prefix_queried_blocks = blocks_.queried_blocks();
  s.prefix_hit_blocks = blocks_.hit_blocks();
  return s;
}

std::vector<std::vector<SeqOutput>> run_to_completion(Engine& engine, std::vector<Request> requests) {
  std::vector<uint64_t> ids;
  std::vector<std::vector<SeqOutput>> results(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    results[i].resize(size_t(requests[i].n));
    ids.push_back(engine.add_request(std::move(requests[i])));
  }
  while (engine.has_unfinished()) {
    for (SeqOutput& o : engine.step()) {
      const size_t r = size_t(std::lower_bound(ids.begin(), ids.end(), o.request_id) - ids.begin());
      SeqOutput& acc = results[r][size_t(o.index)];
      acc.request_id = o.request_id;
      acc.index = o.index;
      acc.new_tokens.insert(acc.new_tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      acc.new_token_logprobs.insert(acc.new_token_logprobs.end(), o.new_token_logprobs.begin(), o.new_token_logprobs.end());
      for (auto& l : o.logprobs) acc.logprobs.push_back(std::move(l));
      for (auto& l : o.prompt_logprobs) acc.prompt_logprobs.push_back(std::move(l));
      acc.text += o.text;
      acc.finished = o.finished;
      acc.finish_reason = o.finish_reason;
      acc.stop_reason = o.stop_reason;
    }
  }
  return results;
}

}  // namespace apus
