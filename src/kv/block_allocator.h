// Reference-counted fixed-size KV blocks. A block returns to the free list when its last holder
// releases it. (Prefix caching builds on this in the engine.)
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace apus {

class BlockAllocator {
 public:
  explicit BlockAllocator(int num_blocks);

  int num_blocks() const { return int(ref_.size()); }
  int num_free() const { return int(free_.size()); }
  // A fresh block with ref count 1; throws when none is free (callers check num_free first).
  int allocate();
  void retain(int block);
  void release(int block);
  int ref_count(int block) const { return ref_[size_t(block)]; }

 private:
  std::vector<int> ref_;
  std::vector<int> free_;  // a stack: recently freed blocks are reused first (warm in cache)
};

}  // namespace apus
