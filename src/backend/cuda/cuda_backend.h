// The CUDA backend (built when CMake finds nvcc: -DAPUS_CUDA=ON|OFF|AUTO). See README.md beside this.
#pragma once
#include <memory>

#include "backend/backend.h"

namespace apus {

// Usable CUDA devices; 0 when there is no GPU or no driver (the CPU build path never fails here).
int cuda_device_count();
std::unique_ptr<Backend> make_cuda_backend(int device_index);

}  // namespace apus
