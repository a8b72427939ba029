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

inline std::optional<c10::Device> cuda_device_of(const at::Tensor& t) {
  return t.defined() && t.is_cuda() ? std::make_optional(t.device()) : std::nullopt;
}

inline std::optional<c10::Device> cuda_device_of(const std::optional<at::Tensor>& t) {
  return t ? cuda_device_of(*t) : std::nullopt;
}

template <typename Other>
std::optional<c10::Device> cuda_device_of(const Other&) {
  return std::nullopt;
}

// The guard of the CUDA kernels: the device of the first CUDA tensor argument is current
// while the op runs. The CUDA kernel is picked when any argument is on CUDA, so the first
// argument may be a CPU tensor; the op's argument checks then name the device mismatch.
struct CudaGuard {
  template <typename... Args>
  explicit CudaGuard(const Args&... args) : guard(first_cuda_device(args...)) {}

  template <typename... Args>
  static std::optional<c10::Device> first_cuda_device(const Args&... args) {
    std::optional<c10::Device> device;
    ((device = device ? device : cuda_device_of(args)), ...);
    return device;
  }

  c10::cuda::OptionalCUDAGuard guard;
};

// Kernels that ask for more than the default 48 KiB of shared memory must opt in, up to the
// device's limit, which the callers check first (shared_memory_limit).
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

// The most shared memory one block of the current device may opt in to.
inline size_t shared_memory_limit() { return at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin; }

}  // namespace dll_ext::cuda
