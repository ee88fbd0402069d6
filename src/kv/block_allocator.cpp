#include "kv/block_allocator.h"

#include "core/error.h"

namespace apus {

BlockAllocator::BlockAllocator(int num_blocks) : ref_(size_t(num_blocks), 0) {
  free_.reserve(size_t(num_blocks));
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

int BlockAllocator::allocate() {
  APUS_CHECK(!free_.empty(), "out of KV cache blocks ({} in all)", num_blocks());
  int b = free_.back();
  free_.pop_back();
  ref_[size_t(b)] = 1;
  return b;
}

void BlockAllocator::retain(int block) {
  APUS_CHECK(block >= 0 && block < num_blocks() && ref_[size_t(block)] > 0,
             "retain of block {} that is not allocated", block);
  ++ref_[size_t(block)];
}

void BlockAllocator::release(int block) {
  APUS_CHECK(block >= 0 && block < num_blocks() && ref_[size_t(block)] > 0,
             "release of block {} that is not allocated (double free?)", block);
  if (--ref_[size_t(block)] == 0) free_.push_back(block);
}

}  // namespace apus
