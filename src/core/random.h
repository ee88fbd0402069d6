// Counter-based randomness: the same (key, counter) always gives the same number, so a seeded
// request samples identically alone or in any batch, and dummy weights are reproducible from
// Python (tools/golden/weights.py implements the same functions; keep them in step).
#pragma once
#include <cstdint>
#include <string_view>

namespace apus {

constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;

inline uint64_t splitmix64(uint64_t z) {
  z += kGoldenGamma;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// Uniform in [0, 1) with 24 random bits: exactly representable in float32.
inline float uniform01(uint64_t key, uint64_t counter) {
  return float(splitmix64(key + counter) >> 40) * (1.0f / 16777216.0f);
}

}  // namespace apus
