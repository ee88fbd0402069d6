// KV block bookkeeping with automatic prefix caching (the vLLM design, in nano-vllm's size).
//
// Every block has a reference count. A full block whose tokens are computed is registered under a
// hash chained from its prefix (hash of the previous block, its tokens, and a salt such as the
// LoRA adapter id), so a later sequence with the same prefix reuses it instead of recomputing.
// Unreferenced blocks stay cached (and findable) until they are needed for new data; they are
// then evicted least-recently-released first.
#pragma once
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

namespace apus {

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size);

  int block_size() const { return block_size_; }
  int num_blocks() const { return int(blocks_.size()); }
  // Blocks that can be handed out now: never used, or cached but unreferenced.
  int num_free() const { return int(free_.size() + evictable_.size()); }

  static uint64_t hash_block(uint64_t prefix_hash, std::span<const int32_t> tokens, uint64_t salt);

  // Takes a reference on the longest run of cached full blocks that starts `tokens`, at most
  // `max_blocks` of them, appending their ids to `table` and their hashes to `hashes`. Returns
  // how many blocks matched.
  int match_prefix(std::span<const int32_t> tokens, uint64_t salt, int max_blocks,
                   std::vector<int32_t>& table, std::vector<uint64_t>& hashes);
  // Appends `n` fresh blocks to `table`; returns false (and takes nothing) if fewer are free.
  bool allocate(int n, std::vector<int32_t>& table);
  // Registers a block that has just become full and computed, so others can reuse it. If an
  // identical block is already registered the existing one stays the canonical copy.
  void register_full(int32_t block, uint64_t hash);
  // Drops one reference on every block of `table` (last block first, so the deepest prefix
  // blocks are evicted first) and clears it.
  void release(std::vector<int32_t>& table);

  // Forgets every registered hash (cached blocks become plain free blocks); used when a step
  // failed after its blocks were registered, so no sequence can reuse K/V that was never written.
  void drop_cache();

  int ref_count(int32_t block) const { return blocks_[size_t(block)].ref; }
  // Prefix-cache statistics, in blocks: looked up by match_prefix, and found.
  uint64_t queried_blocks() const { return queried_; }
  uint64_t hit_blocks() const { return hits_; }

 private:
  struct Block {
    int ref = 0;
    bool hashed = false;
    uint64_t hash = 0;
    std::list<int32_t>::iterator lru;  // valid while evictable
  };
  int32_t take_free_block();

  int block_size_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;             // never hashed (or evicted): reuse first
  std::list<int32_t> evictable_;          // hashed and unreferenced, oldest release first
  std::unordered_map<uint64_t, int32_t> cached_;  // hash -> block
  uint64_t queried_ = 0, hits_ = 0;
};

}  // namespace apus
