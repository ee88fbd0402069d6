// The engine loop thread. Callers (HTTP handlers, the offline API, the REPL) submit requests and
// read their own RequestStream; only the loop thread touches the Engine, so no lock is ever held
// around model state.
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/engine.h"

namespace apus {

// One request's outputs, in order, as the loop thread produces them.
class RequestStream {
 public:
  explicit RequestStream(int num_choices, std::function<void()> on_output = {})
      : open_choices_(num_choices), on_output_(std::move(on_output)) {}
  uint64_t id() const { return id_; }
  // Waits for the next output; false once every choice has finished and all were read, or on
  // timeout (check done()).
  bool next(SeqOutput& out, std::chrono::milliseconds timeout = std::chrono::hours(24));
  // Takes the next output if one is queued (for event-driven readers woken by on_output).
  bool try_next(SeqOutput& out);
  bool done() const;
  // Set when the engine failed while running this request (the message says why).
  std::string error() const;

 private:
  friend class AsyncEngine;
  bool push(SeqOutput out);  // true when this closed the stream (its last choice finished)
  void fail(const std::string& message);

  uint64_t id_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<SeqOutput> queue_;
  int open_choices_;
  std::string error_;
  // Called on the loop thread after each output or failure, with no lock held; it must be quick
  // (an HTTP connection posts a wake-up to its own thread).
  std::function<void()> on_output_;
};

class AsyncEngine {
 public:
  // With a tokenizer the outputs carry text and stop strings are honoured.
  AsyncEngine(DecoderModel& model, EngineConfig config, const Tokenizer* tokenizer = nullptr);
  ~AsyncEngine();  // cancels whatever is still running and joins the loop thread

  // Validates on the caller's thread (throws apus::Error for a request that can never run), then
  // queues the request for the loop thread. `on_output` (optional) is called on the loop thread
  // whenever the stream has something new: see RequestStream.
  std::shared_ptr<RequestStream> submit(Request req, std::function<void()> on_output = {});
  // Cancels a request; its blocks are freed before the next step.
  void abort(uint64_t request_id);

  struct Snapshot {
    size_t running = 0, waiting = 0;
    int free_blocks = 0, total_blocks = 0;
    EngineStats stats;
    int used_blocks() const { return total_blocks - free_blocks; }
    double kv_usage() const { return total_blocks ? double(used_blocks()) / total_blocks : 0.0; }  // 0..1
    double prefix_hit_rate() const {  // 0..1, since start
      return stats.prefix_queried_blocks ? double(stats.prefix_hit_blocks) / double(stats.prefix_queried_blocks) : 0.0;
    }
  };
  Snapshot snapshot() const;  // updated after every step
  // Requests submitted but not yet running (queued for the loop thread or waiting to be scheduled).
  size_t num_queued() const;
  int max_model_len() const { return engine_.max_model_len(); }
  std::string describe_cache() const { return engine_.describe_cache(); }  // immutable: any thread
  int64_t vocab_size() const { return engine_.vocab_size(); }

 private:
  void loop();

  Engine engine_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<Request, std::shared_ptr<RequestStream>>> incoming_;
  std::vector<uint64_t> aborts_;
  std::unordered_map<uint64_t, std::shared_ptr<RequestStream>> streams_;  // loop thread only
  Snapshot snapshot_;
  uint64_t next_id_ = 1;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace apus
