// The named LoRA adapters of a served model (apus deploy --lora_modules, POST /v1/load_lora_adapter,
// the offline API): names -> slots of the model's LoraSlots. Thread-safe: HTTP threads resolve
// names while the engine loop runs steps. An adapter is written into a free slot (no step reads
// it), and unloading removes the name at once (new requests get 404) but frees the slot only after
// the last request holding it is gone (LoraRef::hold).
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engine/sequence.h"
#include "model/decoder.h"

namespace apus {

class LoraRegistry {
 public:
  explicit LoraRegistry(DecoderModel& model);  // model.enable_lora() first

  // Enables LoRA on `model` with `max_loras` slots (0: one per module) of rank `max_rank` (0: 16,
  // or the largest rank among `modules`) and loads `modules` ("name=path" or a bare path).
  static std::unique_ptr<LoraRegistry> create(DecoderModel& model, const std::vector<std::string>& modules,
                                              int max_loras, int max_rank);
  // "name=path", or a bare path (named "default-lora", as the reference tool does).
  static std::pair<std::string, std::string> parse_module(const std::string& spec);

  // Loads the adapter at `path` under `name` into a free slot. Throws apus::Error when the name is
  // taken, every slot (--max_loras) is in use, or the adapter does not fit the base model.
  void load(const std::string& name, const std::string& path);
  // Removes `name` (false when unknown), then waits until no request uses it and clears its slot.
  bool unload(const std::string& name);
  // The reference a request for `name` carries; nullopt when no adapter has that name.
  std::optional<LoraRef> find(const std::string& name) const;
  struct Entry {
    std::string name, path;
  };
  std::vector<Entry> list() const;  // in load order
  int max_loras() const;

 private:
  struct Loaded {
    std::string path;
    LoraRef ref;
    uint64_t order = 0;
  };
  DecoderModel& model_;
  mutable std::mutex mu_;
  std::map<std::string, Loaded> by_name_;
  std::vector<bool> busy_;  // per slot: loaded, or unloading while requests finish
  uint64_t next_id_ = 1, next_order_ = 0;
};

}  // namespace apus
