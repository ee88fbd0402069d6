#include "lora/registry.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "core/error.h"
#include "lora/adapter.h"

namespace apus {

LoraRegistry::LoraRegistry(DecoderModel& model) : model_(model) {
  APUS_CHECK(model.lora(), "LoRA serving is not enabled on this model");
  busy_.assign(size_t(model.lora()->max_loras()), false);
}

std::pair<std::string, std::string> LoraRegistry::parse_module(const std::string& spec) {
  const size_t eq = spec.find('=');
  if (eq == std::string::npos) return {"default-lora", spec};
  APUS_CHECK(eq > 0 && eq + 1 < spec.size(), "--lora_modules \"{}\": expected name=path or a path", spec);
  return {spec.substr(0, eq), spec.substr(eq + 1)};
}

std::unique_ptr<LoraRegistry> LoraRegistry::create(DecoderModel& model, const std::vector<std::string>& modules,
                                                   int max_loras, int max_rank) {
  std::vector<std::pair<std::string, std::string>> named;
  int rank = max_rank > 0 ? max_rank : 16;
  for (const auto& spec : modules) {
    named.push_back(parse_module(spec));
    if (max_rank <= 0) rank = std::max(rank, load_lora_adapter(named.back().second).max_rank);
  }
  const int slots = max_loras > 0 ? max_loras : std::max<int>(1, int(named.size()));
  APUS_CHECK(int(named.size()) <= slots, "{} LoRA modules but max_loras {}", named.size(), slots);
  model.enable_lora(slots, rank);
  auto reg = std::make_unique<LoraRegistry>(model);
  for (const auto& [name, path] : named) reg->load(name, path);
  return reg;
}

int LoraRegistry::max_loras() const { return model_.lora()->max_loras(); }

void LoraRegistry::load(const std::string& name, const std::string& path) {
  APUS_CHECK(!name.empty(), "a LoRA adapter needs a name");
  const LoraAdapter adapter = load_lora_adapter(path);  // reads and checks the files, outside the lock
  int slot = -1;
  {
    std::lock_guard<std::mutex> lock(mu_);
    APUS_CHECK(!by_name_.count(name), "a LoRA adapter named \"{}\" is already loaded", name);
    const auto it = std::find(busy_.begin(), busy_.end(), false);
    APUS_CHECK(it != busy_.end(), "cannot load LoRA adapter \"{}\": all {} slots (--max_loras) are in use; unload one",
               name, busy_.size());
    slot = int(it - busy_.begin());
    busy_[size_t(slot)] = true;
  }
  try {
    model_.lora()->load(slot, adapter);
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    busy_[size_t(slot)] = false;
    throw;
  }
  std::lock_guard<std::mutex> lock(mu_);
  Loaded l;
  l.path = path;
  l.ref.slot = slot;
  l.ref.id = next_id_++;
  l.ref.hold = std::make_shared<int>(slot);
  l.order = next_order_++;
  by_name_[name] = std::move(l);
}

bool LoraRegistry::unload(const std::string& name) {
  std::weak_ptr<const void> in_use;
  int slot = -1;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_name_.find(name);
    if (it == by_name_.end()) return false;
    slot = it->second.ref.slot;
    in_use = it->second.ref.hold;
    by_name_.erase(it);
  }
  // Requests still running hold a copy of `hold`; the slot is cleared once the last one is gone.
  while (!in_use.expired()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  model_.lora()->clear(slot);
  std::lock_guard<std::mutex> lock(mu_);
  busy_[size_t(slot)] = false;
  return true;
}

std::optional<LoraRef> LoraRegistry::find(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return std::nullopt;
  return it->second.ref;
}

std::vector<LoraRegistry::Entry> LoraRegistry::list() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<uint64_t, Entry>> v;
  for (const auto& [name, l] : by_name_) v.push_back({l.order, {name, l.path}});
  std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<Entry> out;
  for (auto& e : v) out.push_back(std::move(e.second));
  return out;
}

}  // namespace apus
