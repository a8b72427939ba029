// Launch helpers shared by the CUDA kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <optional>

namespace dll_ext::cuda {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items: enough to fill the GPU, no more than needed.
inline int64_t grid_for(int64_t n) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, sms * 8));
}

// The CUDA kernel of an op is picked when any argument is on CUDA, so `input` may be a CPU
// tensor: a plain CUDAGuard on it would fail an internal assert, where the op's argument
// checks name the device mismatch.
inline c10::cuda::OptionalCUDAGuard device_guard(const at::Tensor& input) {
  return c10::cuda::OptionalCUDAGuard(input.is_cuda() ? std::make_optional(input.device())
                                                      : std::nullopt);
}

}  // namespace dll_ext::cuda
