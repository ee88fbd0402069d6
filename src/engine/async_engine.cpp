#include "engine/async_engine.h"

#include "core/error.h"

namespace apus {

bool RequestStream::next(SeqOutput& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !queue_.empty() || open_choices_ == 0 || !error_.empty(); });
  if (queue_.empty()) return false;
  out = std::move(queue_.front());
  queue_.pop_front();
  return true;
}

bool RequestStream::try_next(SeqOutput& out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (queue_.empty()) return false;
  out = std::move(queue_.front());
  queue_.pop_front();
  return true;
}

bool RequestStream::done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.empty() && (open_choices_ == 0 || !error_.empty());
}

std::string RequestStream::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

bool RequestStream::push(SeqOutput out) {
  bool closed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (out.finished) --open_choices_;
    closed = open_choices_ == 0;
    queue_.push_back(std::move(out));
  }
  cv_.notify_all();
  if (on_output_) on_output_();
  return closed;
}

void RequestStream::fail(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = message;
  }
  cv_.notify_all();
  if (on_output_) on_output_();
}

AsyncEngine::AsyncEngine(DecoderModel& model, EngineConfig config, const Tokenizer* tokenizer)
    : engine_(model, config, tokenizer), thread_([this] { loop(); }) {}

AsyncEngine::~AsyncEngine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::shared_ptr<RequestStream> AsyncEngine::submit(Request req, std::function<void()> on_output) {
  engine_.validate(req);
  auto stream = std::make_shared<RequestStream>(req.n, std::move(on_output));
  {
    std::lock_guard<std::mutex> lock(mu_);
    stream->id_ = next_id_++;
    incoming_.emplace_back(std::move(req), stream);
  }
  cv_.notify_all();
  return stream;
}

void AsyncEngine::abort(uint64_t request_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    aborts_.push_back(request_id);
  }
  cv_.notify_all();
}

size_t AsyncEngine::num_queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return incoming_.size() + snapshot_.waiting;
}

AsyncEngine::Snapshot AsyncEngine::snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return snapshot_;
}

void AsyncEngine::loop() {
  for (;;) {
    std::vector<std::pair<Request, std::shared_ptr<RequestStream>>> incoming;
    std::vector<uint64_t> aborts;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !incoming_.empty() || !aborts_.empty() || engine_.has_unfinished(); });
      if (stop_) break;
      incoming.swap(incoming_);
      aborts.swap(aborts_);
    }
    for (auto& [req, stream] : incoming) {
      engine_.add_request(std::move(req), stream->id());
      streams_.emplace(stream->id(), stream);
    }
    for (uint64_t id : aborts) {
      engine_.abort(id);
      if (auto it = streams_.find(id); it != streams_.end()) {
        it->second->fail("aborted");
        streams_.erase(it);
      }
    }
    try {
      for (SeqOutput& out : engine_.step()) {
        auto it = streams_.find(out.request_id);
        if (it == streams_.end()) continue;
        if (it->second->push(std::move(out))) streams_.erase(it);
      }
    } catch (const std::exception& e) {
      // A failed step fails every request in flight; the engine itself stays usable.
      for (auto& [id, stream] : streams_) {
        engine_.abort(id);
        stream->fail(std::string("engine step failed: ") + e.what());
      }
      streams_.clear();
    }
    std::lock_guard<std::mutex> lock(mu_);
    snapshot_.running = engine_.num_running();
    snapshot_.waiting = engine_.num_waiting();
    snapshot_.free_blocks = engine_.blocks().num_free();
    snapshot_.total_blocks = engine_.blocks().num_blocks();
    snapshot_.stats = engine_.stats();
  }
  for (auto& [id, stream] : streams_) stream->fail("engine shut down");
}

}  // namespace apus
