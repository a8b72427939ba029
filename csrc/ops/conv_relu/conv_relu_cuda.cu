// CUDA passes of conv2d_relu around cuDNN's convolution: the in-place bias+ReLU epilogue and
// the masked backward that reduces the bias gradient in the same sweep. The reduction is
// deterministic: each block writes its partial sums to its own slot, and the slots are added
// in a fixed order afterwards (no atomics).
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>

#include "common/cuda_launch.cuh"
#include "common/registration.h"
#include "ops/conv_relu/conv_relu.h"
#include "ops/conv_relu/conv_relu_math.h"

namespace dll_ext::conv_relu {
namespace {

using dll_ext::cuda::grid_for;
using dll_ext::cuda::kThreads;

template <typename scalar_t>
__global__ void bias_relu_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ bias,
                                 int64_t numel, int64_t channels, int64_t inner) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    const acc_t b = bias ? acc_t(bias[channel_of(i, channels, inner)]) : acc_t(0);
    out[i] = scalar_t(bias_relu(acc_t(out[i]), b));
  }
}

void bias_relu_cuda_(at::Tensor& out, const std::optional<at::Tensor>& bias) {
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const Layout l = layout_of(out);
  const int64_t numel = out.numel();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "conv2d_relu_cuda", [&] {
    bias_relu_kernel<scalar_t><<<grid_for(numel), kThreads, 0, stream>>>(
        out.data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, numel,
        l.channels, l.inner);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Sum of `value` over the block; valid in thread 0.
template <typename acc_t>
__device__ acc_t block_sum(acc_t value, acc_t* shared) {
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  return shared[0];
}

// NCHW: block (c, y) masks planes n = y, y + gridDim.y, ... of channel c and writes its
// partial bias-gradient sum to partial[c * gridDim.y + y].
template <typename scalar_t>
__global__ void relu_backward_planes_kernel(const scalar_t* __restrict__ grad,
                                            const scalar_t* __restrict__ out,
                                            scalar_t* __restrict__ grad_in,
                                            at::opmath_type<scalar_t>* __restrict__ partial,
                                            int64_t outer, int64_t channels, int64_t inner) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kThreads];
  const int64_t c = blockIdx.x;
  acc_t sum = 0;
  for (int64_t n = blockIdx.y; n < outer; n += gridDim.y) {
    const int64_t offset = (n * channels + c) * inner;
    for (int64_t i = threadIdx.x; i < inner; i += blockDim.x) {
      const acc_t g = relu_grad(acc_t(grad[offset + i]), acc_t(out[offset + i]));
      grad_in[offset + i] = scalar_t(g);
      sum += g;
    }
  }
  if (partial == nullptr) return;
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[c * gridDim.y + blockIdx.y] = sum;
}

// Channels-last: threadIdx.x walks channels (coalesced), threadIdx.y and blockIdx.x walk
// rows; blockIdx.y picks the tile of 32 channels. Block x writes its partial sum of channel
// c to partial[c * gridDim.x + x].
template <typename scalar_t>
__global__ void relu_backward_rows_kernel(const scalar_t* __restrict__ grad,
                                          const scalar_t* __restrict__ out,
                                          scalar_t* __restrict__ grad_in,
                                          at::opmath_type<scalar_t>* __restrict__ partial,
                                          int64_t rows, int64_t channels) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[8][32];
  const int64_t c = blockIdx.y * 32 + threadIdx.x;
  acc_t sum = 0;
  if (c < channels) {
    for (int64_t r = blockIdx.x * int64_t(blockDim.y) + threadIdx.y; r < rows;
         r += int64_t(gridDim.x) * blockDim.y) {
      const int64_t i = r * channels + c;
      const acc_t g = relu_grad(acc_t(grad[i]), acc_t(out[i]));
      grad_in[i] = scalar_t(g);
      sum += g;
    }
  }
  if (partial == nullptr) return;
  shared[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    for (int y = 1; y < blockDim.y; ++y) sum += shared[y][threadIdx.x];
    partial[c * gridDim.x + blockIdx.x] = sum;
  }
}

std::tuple<at::Tensor, at::Tensor> relu_backward_cuda(const at::Tensor& grad_out,
                                                      const at::Tensor& out, bool bias_grad) {
  at::Tensor grad_in = at::empty_like(out);
  const auto acc_dtype = at::toOpMathType(out.scalar_type());
  const Layout l = layout_of(out);
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  dim3 grid;
  int64_t blocks_per_channel;
  if (l.inner > 1) {
    // Enough (c, y) blocks to fill the GPU, capped by the planes there are.
    const int64_t ys = std::min<int64_t>(l.outer, std::max<int64_t>(1, 8 * sms / l.channels));
    grid = dim3(l.channels, std::min<int64_t>(ys, 65535));
    blocks_per_channel = grid.y;
  } else {
    const int64_t tiles = (l.channels + 31) / 32;
    TORCH_CHECK(tiles <= 65535, "conv2d_relu_backward: channels-last output with ", l.channels,
                " channels exceeds the CUDA kernel's limit of ", 65535 * 32);
    grid = dim3(std::min<int64_t>((l.outer + 7) / 8, std::max<int64_t>(1, 8 * sms / tiles)), tiles);
    blocks_per_channel = grid.x;
  }
  at::Tensor partial = bias_grad ? at::empty({l.channels, blocks_per_channel}, out.options().dtype(acc_dtype))
                                 : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "conv2d_relu_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* sums = bias_grad ? partial.data_ptr<acc_t>() : nullptr;
    if (l.inner > 1) {
      relu_backward_planes_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
          grad_in.data_ptr<scalar_t>(), sums, l.outer, l.channels, l.inner);
    } else {
      relu_backward_rows_kernel<scalar_t><<<grid, dim3(32, 8), 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
          grad_in.data_ptr<scalar_t>(), sums, l.outer, l.channels);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // ATen's reduction over a fixed shape adds in a fixed order.
  return {grad_in, bias_grad ? partial.sum(1).to(out.scalar_type()) : at::Tensor()};
}

constexpr Backend kCuda{bias_relu_cuda_, relu_backward_cuda};

}  // namespace
}  // namespace dll_ext::conv_relu

TORCH_LIBRARY_IMPL(dll_ext, CUDA, m) {
  dll_ext::conv_relu::register_kernels<dll_ext::conv_relu::kCuda, dll_ext::cuda::CudaGuard>(m);
}
