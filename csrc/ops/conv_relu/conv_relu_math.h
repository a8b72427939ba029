// Element math of the fused conv2d+bias+ReLU epilogue and its backward, shared by the CPU
// and CUDA kernels. acc_t is the accumulation type (float for half/bfloat16 storage).
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace dll_ext::conv_relu {

// relu(x + b). Written as `y < 0 ? 0 : y` so that NaN propagates as torch.relu does.
template <typename acc_t>
DLL_HOST_DEVICE acc_t bias_relu(acc_t x, acc_t b) {
  const acc_t y = x + b;
  return y < acc_t(0) ? acc_t(0) : y;
}

// Gradient through the ReLU, from its output: zero where the output is <= 0 (the ReLU
// was inactive there), as torch's threshold_backward.
template <typename acc_t>
DLL_HOST_DEVICE acc_t relu_grad(acc_t grad, acc_t out) {
  return out <= acc_t(0) ? acc_t(0) : grad;
}

// Channel of a linear index in an (outer, channels, inner) layout: NCHW is
// (N, C, H*W) and channels-last is (N*H*W, C, 1).
DLL_HOST_DEVICE int64_t channel_of(int64_t index, int64_t channels, int64_t inner) {
  return (index / inner) % channels;
}

}  // namespace dll_ext::conv_relu
