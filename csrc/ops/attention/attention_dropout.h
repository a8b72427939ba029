// Dropout of the attention probabilities without a stored mask. Whether element (b, h, i, j)
// is kept is a hash of (seed, row (b*H + h)*L + i, key j), so any tile order, the forward and
// the backward, and the CPU and CUDA kernels all see the same mask. The per-row part mixes 64
// bits once; the per-key part is two rounds of a 32-bit integer mix, cheap enough to run
// vectorised on every score.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace dll_ext::attention {

// splitmix64's finaliser: a bijection of 64-bit words with full avalanche.
DLL_HOST_DEVICE uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A 32-bit bijection with low bias (two multiply-xorshift rounds).
DLL_HOST_DEVICE uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  return x ^ (x >> 16);
}

// The keys of one row of scores: two independent 32-bit words, so that two rows' masks never
// coincide as shifted copies of each other.
struct DropoutRow {
  uint32_t first, second;
};

DLL_HOST_DEVICE DropoutRow dropout_row(uint64_t seed, int64_t row) {
  const uint64_t key = mix64(seed ^ mix64(static_cast<uint64_t>(row) + 0x9e3779b97f4a7c15ULL));
  return {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32)};
}

// Element j of the row is kept when its hash is at least `threshold` = round(p * 2^32).
DLL_HOST_DEVICE bool dropout_keeps(DropoutRow row, int64_t key, uint32_t threshold) {
  return mix32(mix32(static_cast<uint32_t>(key) ^ row.first) + row.second) >= threshold;
}

// The resolved dropout of one call: off when p == 0.
struct Dropout {
  bool active = false;
  uint64_t seed = 0;
  uint32_t threshold = 0;
  double keep_scale = 1.0;  // 1 / (1 - p): kept probabilities are scaled up by it
};

}  // namespace dll_ext::attention
