#include "parallel/model_group.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iostream>
#include <map>

#include "core/error.h"
#include "kv/kv_cache.h"
#include "lora/lora_slots.h"
#include "model/shard.h"
#include "parallel/host_collectives.h"
#include "parallel/rendezvous.h"
#ifdef APUS_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace apus {

namespace {

enum : int32_t { kStep = 1, kStop = 2, kMeasure = 3 };
constexpr int64_t kBigAllReduce = int64_t(256) << 20;  // bytes
constexpr int kBigRounds = 10, kSmallRounds = 100;

// A rank's view of the group: the collectives of its backend, except that stopping it stops every
// rank of this process (and, by closing the rendezvous connections, the other nodes).
class GroupMember final : public Collectives {
 public:
  // `stop(why)`: this rank failed (its own thread calls abort()).
  GroupMember(Collectives& inner, std::function<void(const std::string&)> stop) : inner_(inner), stop_(std::move(stop)) {}
  int rank() const override { return inner_.rank(); }
  int world() const override { return inner_.world(); }
  void all_reduce(Tensor& x) override { inner_.all_reduce(x); }
  void all_reduce_add_rms_norm(Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out,
                               Backend& backend, const RowProducer* produce) override {
    inner_.all_reduce_add_rms_norm(x, residual, w, eps, out, backend, produce);
  }
  void all_gather_cols(const Tensor& x, Tensor& out) override { inner_.all_gather_cols(x, out); }
  void broadcast_words(std::vector<int32_t>& words) override { inner_.broadcast_words(words); }
  void abort(const std::string& why) override { stop_(why); }

 private:
  Collectives& inner_;
  std::function<void(const std::string&)> stop_;
};

// A step's inputs as words: a header, then each vector as its length and its elements.
class StepWriter {
 public:
  explicit StepWriter(std::vector<int32_t>& w) : w_(w) { w_.clear(); }
  void word(int64_t v) { w_.push_back(int32_t(v)); }
  void vec(const std::vector<int32_t>& v) {
    word(int64_t(v.size()));
    w_.insert(w_.end(), v.begin(), v.end());
  }
  void text(const std::string& s) {  // its length, then its bytes, 4 to a word
    word(int64_t(s.size()));
    for (size_t i = 0; i < s.size(); i += 4) {
      uint32_t v = 0;
      std::memcpy(&v, s.data() + i, std::min<size_t>(4, s.size() - i));
      w_.push_back(int32_t(v));
    }
  }

 private:
  std::vector<int32_t>& w_;
};

class StepReader {
 public:
  explicit StepReader(const std::vector<int32_t>& w) : w_(w) {}
  int32_t word() {
    APUS_CHECK(at_ < w_.size(), "tensor parallel: truncated step message");
    return w_[at_++];
  }
  void vec(std::vector<int32_t>& v) {
    const size_t n = size_t(word());
    APUS_CHECK(at_ + n <= w_.size(), "tensor parallel: truncated step message");
    v.assign(w_.begin() + ptrdiff_t(at_), w_.begin() + ptrdiff_t(at_ + n));
    at_ += n;
  }
  std::string text() {
    const size_t n = size_t(word()), words = (n + 3) / 4;
    APUS_CHECK(at_ + words <= w_.size(), "tensor parallel: truncated step message");
    std::string s(n, '\0');
    for (size_t i = 0; i < n; i += 4) {
      const uint32_t v = uint32_t(w_[at_ + i / 4]);
      std::memcpy(s.data() + i, &v, std::min<size_t>(4, n - i));
    }
    at_ += words;
    return s;
  }

 private:
  const std::vector<int32_t>& w_;
  size_t at_ = 0;
};

double env_seconds(const char* name, double fallback) {
  const char* e = std::getenv(name);
  return e ? std::atof(e) : fallback;
}
[[maybe_unused]] double tp_timeout_s() { return env_seconds("APUS_TP_TIMEOUT", 300); }

}  // namespace

// Rank 0's messages to the other ranks of this process, through host memory. A rank takes its next
// step as soon as rank 0 has written it and queues it behind the step before; through
// broadcast_words (an NCCL broadcast queued on the stream behind the step before, then a copy to
// the host) its thread first waited for its device to finish that step, and the group waited, at
// the new step's first sum, for that rank's host to prepare it (uploads, RoPE tables, launches).
class ModelGroup::Mailbox {
 public:
  explicit Mailbox(int ranks) : queues_(size_t(ranks)) {}
  void post(const std::vector<int32_t>& words) {
    const auto m = std::make_shared<const std::vector<int32_t>>(words);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t r = 1; r < queues_.size(); ++r) queues_[r].push_back(m);
    }
    cv_.notify_all();
  }
  // Rank `local`'s next message; false once the group has failed.
  bool take(int local, std::vector<int32_t>& words) {
    std::unique_lock<std::mutex> lock(mutex_);
    auto& q = queues_[size_t(local)];
    cv_.wait(lock, [&] { return closed_ || !q.empty(); });
    if (closed_) return false;
    words = *q.front();
    q.pop_front();
    return true;
  }
  void close() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool closed_ = false;
  std::vector<std::deque<std::shared_ptr<const std::vector<int32_t>>>> queues_;
};

struct ModelGroup::Rank {
  int global = 0, local = 0;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Collectives> member;
  std::unique_ptr<DecoderModel> model;
  std::vector<int32_t> words;  // the step message, reused
};

ModelGroup::ModelGroup(const LoadOptions& load, const std::string& device, int threads, const ParallelOptions& par)
    : world_(std::max(1, par.tensor_parallel_size)) {
  APUS_CHECK(par.nnodes >= 1 && par.node_rank >= 0 && par.node_rank < par.nnodes,
             "--node_rank {} is not one of --nnodes {}", par.node_rank, par.nnodes);
  APUS_CHECK(world_ % par.nnodes == 0, "--tensor_parallel_size {} does not split over --nnodes {}", world_, par.nnodes);
  node_rank_ = par.node_rank;
  if (const char* f = std::getenv("APUS_TP_FAULT")) std::sscanf(f, "%d:%ld", &fault_rank_, &fault_step_);
  if (world_ == 1) {
    auto r = std::make_unique<Rank>();
    r->backend = make_backend(device, threads);
    r->model = load_model(load, *r->backend);
    ranks_.push_back(std::move(r));
    return;
  }
  const int local = world_ / par.nnodes;
  const std::string dev = device == "auto" ? (cuda_available() ? "cuda" : "cpu") : device;
  APUS_CHECK(dev == "cpu" || dev == "cuda", "unknown --device \"{}\" (cpu, cuda, auto)", device);
  // Every rank must be able to take its part before any starts loading.
  const ModelConfig config = load_config(load);
  Shard::of(config, 0, world_);
  std::vector<std::unique_ptr<Collectives>> host;
  [[maybe_unused]] Rendezvous::Id id{};
  if (dev == "cpu") {
    APUS_CHECK(par.nnodes == 1, "--nnodes > 1 needs --device cuda (the ranks talk through NCCL)");
    host = make_host_collectives(world_);
  } else {
#ifdef APUS_HAVE_CUDA
    const int n = gpu_count();
    APUS_CHECK(n >= local, "--tensor_parallel_size {} needs {} GPUs on this node; {} visible (CUDA_VISIBLE_DEVICES)",
               world_, local, n);
    if (par.node_rank == 0) id = nccl_unique_id();
    if (par.nnodes > 1) {
      rendezvous_ = std::make_unique<Rendezvous>(par.master_addr, par.master_port, par.nnodes, par.node_rank, &id,
                                                 tp_timeout_s());
      rendezvous_->watch([this](const std::string& why) { abort_group(why); }, env_seconds("APUS_TP_HEARTBEAT_TIMEOUT", 10));
    }
#else
    apus::fail("--device cuda: this apus was built without CUDA");
#endif
  }
  // APUS_TP_HOST_STEPS=0: the step messages through broadcast_words on one node too (to compare).
  if (const char* e = std::getenv("APUS_TP_HOST_STEPS"); par.nnodes == 1 && !(e && std::strcmp(e, "0") == 0))
    mailbox_ = std::make_unique<Mailbox>(local);
  collectives_.resize(size_t(local));
  for (int l = 0; l < local; ++l) {
    auto r = std::make_unique<Rank>();
    r->local = l;
    r->global = par.node_rank * local + l;
    ranks_.push_back(std::move(r));
  }
  const int per_rank = std::max(1, threads / local);
  std::mutex built_mutex;
  std::condition_variable built_cv;
  int built = 0;
  auto make = [&, dev, per_rank](Rank& r) {
    try {
      std::unique_ptr<Collectives> inner;
      if (dev == "cpu") {
        r.backend = make_cpu_backend(per_rank);
        inner = std::move(host[size_t(r.global)]);
      } else {
#ifdef APUS_HAVE_CUDA
        r.backend = make_cuda_backend(r.local);
        inner = make_nccl_collectives(*r.backend, id, r.global, world_, r.global == 0 ? tp_timeout_s() : 0.0,
                                      par.nnodes == 1, [this](const std::string& why) { abort_group(why); });
#endif
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!failure_.empty()) inner->abort(failure_);
        collectives_[size_t(r.local)] = std::move(inner);
        r.member = std::make_unique<GroupMember>(*collectives_[size_t(r.local)], [this](const std::string& why) { abort_group(why); });
      }
      LoadOptions lo = load;
      lo.num_threads = per_rank;
      ModelWeights w = load_weights(config, *open_weights(lo), *r.backend, Shard::of(config, r.global, world_));
      r.model = std::make_unique<DecoderModel>(config, std::move(w), *r.backend, r.member.get());
      if (r.global == 0) {
        r.model->set_step_hook([this](const StepBatch& b, const KvCache& c) { send_step(b, c); });
        r.model->set_lora_listener([this](int slot, const std::string& dir) {  // any thread (the server's)
          std::lock_guard<std::mutex> lock(lora_mutex_);
          lora_changes_.emplace_back(slot, dir);
        });
      }
    } catch (const std::exception& e) {
      abort_group(fmt::format("rank {} failed to load: {}", r.global, e.what()));
    }
    std::lock_guard<std::mutex> lock(built_mutex);
    ++built;
    built_cv.notify_all();
  };
  for (auto& rp : ranks_) {
    Rank* r = rp.get();
    if (r->global == 0) continue;  // rank 0 is built on this thread (the engine's device)
    threads_.emplace_back([this, r, &make] {
      make(*r);  // the constructor waits for every rank's make(), so `make` outlives this use
      run_worker(*r);
    });
  }
  if (par.node_rank == 0) make(*ranks_[0]);
  {
    std::unique_lock<std::mutex> lock(built_mutex);
    built_cv.wait(lock, [&] { return built == local; });
  }
  std::string why;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    why = failure_;
  }
  if (!why.empty()) {
    for (auto& t : threads_) t.join();
    threads_.clear();
    fail_unloaded(why);
  }
}

ModelGroup::~ModelGroup() {
  if (leader() && world_ > 1 && ranks_[0]->member) {
    bool ok = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ok = failure_.empty();
    }
    if (rendezvous_) rendezvous_->expect_close();  // the other nodes' ending is no failure now
    if (ok) {
      try {
        std::vector<int32_t> w{kStop};
        send(*ranks_[0], w);
      } catch (const std::exception&) {
      }
    }
  }
  for (auto& t : threads_) t.join();
  release(*ranks_[0]);
  if (rendezvous_) rendezvous_->close();
  torn_down_->store(true);
}

bool ModelGroup::leader() const { return node_rank_ == 0; }

DecoderModel& ModelGroup::model() {
  APUS_CHECK(leader() && ranks_[0]->model, "only node 0 runs the engine");
  return *ranks_[0]->model;
}

Backend& ModelGroup::backend() { return *ranks_[0]->backend; }

void ModelGroup::serve() {
  for (auto& t : threads_) t.join();
  threads_.clear();
  std::lock_guard<std::mutex> lock(mutex_);
  if (!failure_.empty()) apus::fail("{}", failure_);
}

// A rank's model, collectives and backend go on the thread that used them (the device's).
void ModelGroup::release(Rank& r) {
  r.model.reset();
  r.member.reset();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (size_t(r.local) < collectives_.size()) collectives_[size_t(r.local)].reset();
  }
  r.backend.reset();
}

[[noreturn]] void ModelGroup::fail_unloaded(const std::string& why) {
  for (auto& r : ranks_) release(*r);
  if (rendezvous_) rendezvous_->close();
  torn_down_->store(true);
  apus::fail("{}", why);
}

void ModelGroup::abort_group(const std::string& why) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!failure_.empty() || stopped_) return;
  failure_ = why;
  std::cerr << "apus: tensor parallel group stopping: " << why << "\n";
  // The ranks should now stop (their waits throw) and the owner tear the group down. If a device
  // stays stuck in a collective with a dead peer (NCCL's abort is the only way out, and has been
  // seen to hang), nothing would ever return: end the process instead of hanging.
  std::thread([done = torn_down_, why, grace = env_seconds("APUS_TP_EXIT_GRACE", 30)] {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace);
    while (!done->load() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (done->load()) return;
    std::fprintf(stderr, "apus: tensor parallel group failed (%s) and did not shut down within %g s: exiting\n",
                 why.c_str(), grace);
    std::_Exit(1);
  }).detach();
  if (mailbox_) mailbox_->close();
  for (auto& c : collectives_)
    if (c) c->abort(why);
  if (rendezvous_) rendezvous_->hang_up();
  if (std::getenv("APUS_TP_DEBUG")) std::cerr << "apus: every rank of this process aborted\n";
}

void ModelGroup::send_step(const StepBatch& b, const KvCache& cache) {
  Rank& r = *ranks_[0];
  // The other ranks keep a copy of every cache rank 0 still has (an engine's, generate()'s...):
  // the message names the live ones, so that they drop the others.
  const int32_t id = int32_t(cache.id & 0x7fffffff);
  if (!cache.layers.empty()) live_caches_[id] = cache.layers[0].k.owner;
  std::vector<int32_t> live;
  for (auto it = live_caches_.begin(); it != live_caches_.end();) {
    if (it->second.expired()) {
      it = live_caches_.erase(it);
    } else {
      live.push_back(it->first);
      ++it;
    }
  }
  StepWriter w(r.words);
  const auto [tokens, rows] = r.model->reserved();
  w.word(kStep);
  w.word(id);
  w.word(cache.num_blocks);
  w.word(cache.block_size);
  w.word(tokens);
  w.word(rows);
  w.word(r.model->use_graphs() ? 1 : 0);
  w.word(r.model->split_tokens());
  w.word(b.max_blocks);
  w.word(b.argmax_only ? 1 : 0);
  w.word(r.model->draws_capacity());
  w.vec(live);
  // LoRA: the slots' shape, then the adapters loaded (slot, directory) or cleared (slot, "") since
  // the last step, in order; a step that uses a slot comes after its load.
  const LoraSlots* lora = r.model->lora();
  w.word(lora ? lora->max_loras() : 0);
  w.word(lora ? lora->max_rank() : 0);
  {
    std::lock_guard<std::mutex> lock(lora_mutex_);
    w.word(int64_t(lora_changes_.size()));
    for (const auto& [slot, dir] : lora_changes_) {
      w.word(slot);
      w.text(dir);
    }
    lora_changes_.clear();
  }
  for (const auto* v : {&b.tokens, &b.q_start, &b.ctx_len, &b.block_table, &b.slot_mapping, &b.logit_rows,
                        &b.prompt_len, &b.lora_slots})
    w.vec(*v);
  send(r, r.words);
}

void ModelGroup::send(Rank& r, std::vector<int32_t>& words) {
  if (!mailbox_) {
    r.member->broadcast_words(words);
    return;
  }
  mailbox_->post(words);
  // The stop is also a collective: a rank unmaps its peer-to-peer buffers only after one that
  // follows their last use (src/parallel/README.md, teardown).
  if (words.size() == 1 && words[0] == kStop) r.member->broadcast_words(words);
}

void ModelGroup::receive(Rank& r) {
  if (!mailbox_) {
    r.member->broadcast_words(r.words);
    return;
  }
  if (!mailbox_->take(r.local, r.words)) apus::fail("tensor parallel group stopped");
  if (r.words.size() == 1 && r.words[0] == kStop) r.member->broadcast_words(r.words);  // rank 0's stop collective
}

std::pair<double, double> ModelGroup::all_reduce_rounds(Rank& r) {
  const DType dt = r.backend->activation_dtype();
  Tensor big = r.backend->alloc(dt, {kBigAllReduce / int64_t(dtype_size(dt))});
  Tensor small = r.backend->alloc(dt, {r.model->config().hidden_size});
  auto timed = [&](Tensor& t, int rounds) {
    r.member->all_reduce(t);  // warm-up
    r.backend->synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < rounds; ++i) r.member->all_reduce(t);
    r.backend->synchronize();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / rounds;
  };
  const double big_s = timed(big, kBigRounds);
  return {big_s, timed(small, kSmallRounds)};
}

ModelGroup::AllReduceFigures ModelGroup::measure_all_reduce() {
  APUS_CHECK(leader() && world_ > 1, "measure_all_reduce: node 0 of a tensor-parallel group only");
  Rank& r = *ranks_[0];
  std::vector<int32_t> w{kMeasure};
  send(r, w);
  const auto [big_s, small_s] = all_reduce_rounds(r);
  AllReduceFigures f;
  f.bus_bandwidth = 2.0 * double(world_ - 1) / world_ * double(kBigAllReduce) / big_s;
  f.small_seconds = small_s;
  f.small_bytes = r.model->config().hidden_size * int64_t(dtype_size(r.backend->activation_dtype()));
  return f;
}

void ModelGroup::run_worker(Rank& r) {
  if (r.model) {
    try {
      std::map<int32_t, KvCache> caches;  // rank 0's live caches, by id
      std::vector<int32_t> live;
      StepBatch b;
      for (int64_t step = 0;; ++step) {
        receive(r);
        StepReader in(r.words);
        const int32_t cmd = in.word();
        if (cmd == kMeasure) {
          all_reduce_rounds(r);
          continue;
        }
        if (cmd != kStep) {
          std::lock_guard<std::mutex> lock(mutex_);
          stopped_ = true;  // rank 0 ended the group: connections closing now are no failure
          break;
        }
        const int32_t id = in.word(), blocks = in.word(), block_size = in.word(), tokens = in.word(), rows = in.word();
        const bool graphs = in.word() != 0;
        const int split_tokens = in.word();
        b.max_blocks = in.word();
        b.argmax_only = in.word() != 0;
        // Rank 0's draws, mirrored: a step may read the last one's tokens there (async scheduling).
        if (const int draws = in.word(); draws > r.model->draws_capacity()) r.model->draws(draws);
        in.vec(live);
        const int max_loras = in.word(), max_rank = in.word();
        if (max_loras > 0 && (!r.model->lora() || r.model->lora()->max_loras() != max_loras ||
                              r.model->lora()->max_rank() != max_rank))
          r.model->enable_lora(max_loras, max_rank);
        for (int n = in.word(); n > 0; --n) {  // rank 0's adapter loads and unloads, repeated here
          const int slot = in.word();
          const std::string dir = in.text();
          if (dir.empty()) r.model->lora()->clear(slot);
          else r.model->lora()->load(slot, load_lora_adapter(dir));
        }
        for (auto* v : {&b.tokens, &b.q_start, &b.ctx_len, &b.block_table, &b.slot_mapping, &b.logit_rows,
                        &b.prompt_len, &b.lora_slots})
          in.vec(*v);
        for (auto it = caches.begin(); it != caches.end();)
          it = std::find(live.begin(), live.end(), it->first) == live.end() ? caches.erase(it) : std::next(it);
        auto c = caches.find(id);
        if (c == caches.end()) {  // rank 0 made a new cache: mirror it (after its activations, as rank 0 did)
          r.model->reserve(tokens, rows);
          c = caches.emplace(id, KvCache::create(*r.backend, r.model->config(), blocks, block_size)).first;
        }
        if (graphs != r.model->use_graphs()) r.model->set_use_graphs(graphs);
        r.model->set_split_tokens(split_tokens);  // rank 0's: every rank splits the same steps
        if (r.global == fault_rank_ && step == fault_step_)
          apus::fail("injected fault (APUS_TP_FAULT={}:{})", fault_rank_, fault_step_);
        r.model->forward(b, c->second);
      }
    } catch (const std::exception& e) {
      abort_group(fmt::format("rank {} failed: {}", r.global, e.what()));
    }
  }
  release(r);
}

}  // namespace apus
