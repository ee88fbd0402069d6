// Collectives between the threads of one process over host memory: the CPU backend's tensor-parallel
// ranks (and the reference the NCCL ones are tested against). Sums run in rank order, so every rank
// gets bit-identical results.
#pragma once
#include <memory>
#include <vector>

#include "backend/backend.h"

namespace apus {

// One Collectives per rank of a `world`-rank group; rank r's is element r.
std::vector<std::unique_ptr<Collectives>> make_host_collectives(int world);

}  // namespace apus
