// CUDA steps of the LSTM ops: cuBLAS's recurrent GEMM (through ATen) and a pointwise
// kernel, one thread per hidden unit of a row, grid-stride; and the CUDA registrations of
// the ops.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>

#include "common/cuda_launch.cuh"
#include "common/registration.h"
#include "ops/lstm/lstm.h"
#include "ops/lstm/lstm_math.h"

namespace dll_ext::lstm {
namespace {

using dll_ext::cuda::grid_for;
using dll_ext::cuda::kThreads;

template <typename scalar_t>
__global__ void step_forward_kernel(const at::opmath_type<scalar_t>* __restrict__ bias,
                                    const scalar_t* __restrict__ c_prev, scalar_t* __restrict__ h,
                                    scalar_t* __restrict__ c, scalar_t* __restrict__ gates, int64_t units,
                                    int64_t hidden) {
  for (int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; u < units;
       u += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = u / hidden;
    step_forward_unit(bias, c_prev + row * hidden, h + row * hidden, c + row * hidden, gates + row * 4 * hidden,
                      u % hidden, hidden);
  }
}

template <typename scalar_t>
__global__ void step_backward_kernel(const scalar_t* __restrict__ grad_h, const scalar_t* __restrict__ grad_out,
                                     scalar_t* __restrict__ grad_c, const scalar_t* __restrict__ gates,
                                     const scalar_t* __restrict__ c_prev, const scalar_t* __restrict__ c,
                                     scalar_t* __restrict__ grad_pre, int64_t units, int64_t hidden) {
  for (int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; u < units;
       u += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = u / hidden, offset = row * hidden;
    step_backward_unit<scalar_t, at::opmath_type<scalar_t>>(
        grad_h + offset, grad_out + offset, grad_c + offset, gates + 4 * offset, c_prev + offset, c + offset,
        grad_pre + 4 * offset, u % hidden, hidden);
  }
}

RecurrentWeight prepare_cuda(const at::Tensor& w_hh, int64_t, int64_t, bool) { return {w_hh.contiguous()}; }

void step_forward_cuda(const at::Tensor& h_prev, const at::Tensor& c_prev, const RecurrentWeight& w_hh,
                       const at::Tensor& bias, at::Tensor& gates, at::Tensor& h, at::Tensor& c) {
  const int64_t units = h.numel();
  if (units == 0) return;
  gates.addmm_(h_prev, w_hh.weight.t());
  const at::Tensor c_rows = c_prev.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "lstm_step_forward_cuda", [&] {
    step_forward_kernel<scalar_t><<<grid_for(units), kThreads, 0, stream>>>(
        bias.const_data_ptr<at::opmath_type<scalar_t>>(), c_rows.const_data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
        c.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), units, h.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void step_backward_cuda(const at::Tensor& grad_h, const at::Tensor& grad_out, at::Tensor& grad_c,
                        const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c,
                        const RecurrentWeight& w_hh, at::Tensor& grad_pre, at::Tensor& grad_h_prev) {
  const int64_t units = c.numel();
  if (units == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "lstm_step_backward_cuda", [&] {
    step_backward_kernel<scalar_t><<<grid_for(units), kThreads, 0, stream>>>(
        grad_h.const_data_ptr<scalar_t>(), grad_out.const_data_ptr<scalar_t>(), grad_c.data_ptr<scalar_t>(),
        gates.const_data_ptr<scalar_t>(), c_prev.const_data_ptr<scalar_t>(),
        c.const_data_ptr<scalar_t>(), grad_pre.data_ptr<scalar_t>(), units, c.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (grad_h_prev.defined()) at::mm_out(grad_h_prev, grad_pre, w_hh.weight);
}

at::Tensor cell_step_forward_cuda(const at::Tensor& input, const at::Tensor& h_prev, const at::Tensor& c_prev,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& bias,
                                  at::Tensor& h, at::Tensor& c) {
  at::Tensor gates = at::mm(input, w_ih.t());
  step_forward_cuda(h_prev, c_prev, prepare_cuda(w_hh, 0, 1, false), bias, gates, h, c);
  return gates;
}

constexpr Backend kCuda{prepare_cuda, step_forward_cuda, step_backward_cuda, cell_step_forward_cuda};

}  // namespace

}  // namespace dll_ext::lstm

TORCH_LIBRARY_IMPL(dll_ext, CUDA, m) {
  dll_ext::lstm::register_kernels<dll_ext::lstm::kCuda, dll_ext::cuda::CudaGuard>(m);
}
