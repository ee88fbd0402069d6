// The backend a suite runs on: the CPU, or the GPU when tests/CMakeLists.txt builds the suite again
// for the `gpu` label with APUS_TEST_DEVICE="cuda" (test_golden_gpu, test_engine_gpu).
#pragma once
#include <memory>
#include <string>

#include "backend/backend.h"

#ifndef APUS_TEST_DEVICE
#define APUS_TEST_DEVICE "cpu"
#endif

namespace apus::test {

inline bool on_gpu() { return std::string(APUS_TEST_DEVICE) != "cpu"; }
// False when the suite is for the GPU and none is present (its tests then skip).
inline bool device_available() { return !on_gpu() || cuda_available(); }
inline std::unique_ptr<Backend> make_test_backend(int threads) { return make_backend(APUS_TEST_DEVICE, threads); }

}  // namespace apus::test
