#include "kv/block_manager.h"

#include <xxhash.h>

#include "core/error.h"

namespace apus {

BlockManager::BlockManager(int num_blocks, int block_size)
    : block_size_(block_size), blocks_(size_t(num_blocks)) {
  APUS_CHECK(num_blocks > 0 && block_size > 0, "the KV cache needs at least one block");
  free_.reserve(size_t(num_blocks));
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

uint64_t BlockManager::hash_block(uint64_t prefix_hash, std::span<const int32_t> tokens, uint64_t salt) {
  XXH64_state_t* st = XXH64_createState();
  XXH64_reset(st, salt);
  XXH64_update(st, &prefix_hash, sizeof(prefix_hash));
  XXH64_update(st, tokens.data(), tokens.size_bytes());
  uint64_t h = XXH64_digest(st);
  XXH64_freeState(st);
  return h;
}

int BlockManager::match_prefix(std::span<const int32_t> tokens, uint64_t salt, int max_blocks,
                               std::vector<int32_t>& table, std::vector<uint64_t>& hashes) {
  int matched = 0;
  uint64_t prev = hashes.empty() ? 0 : hashes.back();
  const int full = int(tokens.size()) / block_size_;
  for (int i = 0; i < std::min(full, max_blocks); ++i) {
    ++queried_;
    const uint64_t h = hash_block(prev, tokens.subspan(size_t(i) * size_t(block_size_), size_t(block_size_)), salt);
    auto it = cached_.find(h);
    if (it == cached_.end()) break;
    Block& b = blocks_[size_t(it->second)];
    if (b.ref == 0) evictable_.erase(b.lru);
    ++b.ref;
    ++hits_;
    table.push_back(it->second);
    hashes.push_back(h);
    prev = h;
    ++matched;
  }
  return matched;
}

int32_t BlockManager::take_free_block() {
  if (!free_.empty()) {
    int32_t b = free_.back();
    free_.pop_back();
    return b;
  }
  int32_t b = evictable_.front();  // least recently released cached block
  evictable_.pop_front();
  Block& blk = blocks_[size_t(b)];
  auto it = cached_.find(blk.hash);
  if (it != cached_.end() && it->second == b) cached_.erase(it);
  blk.hashed = false;
  return b;
}

bool BlockManager::allocate(int n, std::vector<int32_t>& table) {
  if (n > num_free()) return false;
  for (int i = 0; i < n; ++i) {
    int32_t b = take_free_block();
    blocks_[size_t(b)].ref = 1;
    table.push_back(b);
  }
  return true;
}

void BlockManager::register_full(int32_t block, uint64_t hash) {
  Block& b = blocks_[size_t(block)];
  if (b.hashed) return;
  b.hash = hash;
  b.hashed = true;
  cached_.emplace(hash, block);  // keeps an existing identical block as the canonical one
}

void BlockManager::drop_cache() {
  for (Block& b : blocks_) b.hashed = false;
  cached_.clear();
  for (int32_t b : evictable_) free_.push_back(b);
  evictable_.clear();
}

void BlockManager::release(std::vector<int32_t>& table) {
  for (auto it = table.rbegin(); it != table.rend(); ++it) {
    Block& b = blocks_[size_t(*it)];
    APUS_CHECK(b.ref > 0, "release of KV block {} that is not held (double free)", *it);
    if (--b.ref > 0) continue;
    auto c = b.hashed ? cached_.find(b.hash) : cached_.end();
    if (c != cached_.end() && c->second == *it) {
      b.lru = evictable_.insert(evictable_.end(), *it);
    } else {
      b.hashed = false;
      free_.push_back(*it);
    }
  }
  table.clear();
}

}  // namespace apus
