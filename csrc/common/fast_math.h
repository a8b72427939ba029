// float exp and tanh for the CPU in a form the compiler vectorises (no libm calls, no
// branches). Per element, an LSTM step evaluates five of them and attention one per score:
// in scalar libm calls they would cost as much as the GEMMs around them.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/host_device.h"

namespace dll_ext {

#if !defined(__CUDA_ARCH__)
// Accuracy: within 2 ulp of exp; tanh within 3e-7 relative. Arguments below -87 give
// exp(-87), not 0: callers that need exact zeros (masked scores) set them themselves.
DLL_HOST_DEVICE float exp_vectorisable(float x) {
  // exp(x) = 2^n e^r with n = round(x / ln 2) and |r| <= ln(2) / 2 (ln 2 split in two parts
  // so that r is exact); e^r by its Taylor polynomial to r^7 (truncation < 1 ulp there).
  // The clamp keeps 2^n a normal float; NaN passes through the polynomial.
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = __builtin_rintf(x * 1.44269504088896341f);
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

DLL_HOST_DEVICE float tanh_vectorisable(float x) {
  // Small |x|: the odd Taylor series (to x^13, relative error < 1e-7 below 0.4), which keeps
  // full relative precision where 1 - 2 / (e^2x + 1) would cancel.
  const float x2 = x * x;
  float p = 21844.0f / 6081075.0f;
  p = p * x2 - 1382.0f / 155925.0f;
  p = p * x2 + 62.0f / 2835.0f;
  p = p * x2 - 17.0f / 315.0f;
  p = p * x2 + 2.0f / 15.0f;
  p = p * x2 - 1.0f / 3.0f;
  const float small = x + x * x2 * p;
  const float large = 1.0f - 2.0f / (exp_vectorisable(2.0f * x) + 1.0f);
  return (x2 < 0.16f) ? small : large;
}
#endif

// exp, tanh and log of the element math of every op, for the CPU and the GPU: on the CPU
// float takes the vectorisable forms above and double libm's; on the GPU, CUDA's own.
template <typename T>
DLL_HOST_DEVICE T fast_exp(T x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  if constexpr (std::is_same_v<T, float>) return exp_vectorisable(x);
  else return std::exp(x);
#endif
}

template <typename T>
DLL_HOST_DEVICE T fast_tanh(T x) {
#if defined(__CUDA_ARCH__)
  return tanh(x);
#else
  if constexpr (std::is_same_v<T, float>) return tanh_vectorisable(x);
  else return std::tanh(x);
#endif
}

template <typename T>
DLL_HOST_DEVICE T log_of(T x) {
#if defined(__CUDA_ARCH__)
  return log(x);
#else
  return std::log(x);
#endif
}

}  // namespace dll_ext
