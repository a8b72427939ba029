// CPU pointwise steps of the LSTM ops, and the CPU registrations of the ops.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "common/registration.h"
#include "ops/lstm/lstm.h"
#include "ops/lstm/lstm_math.h"

namespace dll_ext::lstm {
namespace {

// Hidden units per parallel task. A step is short (B x H units) and sits between MKL GEMMs;
// an OpenMP region for less than this measured slower than running it on one thread
// (OpenMP's spinning workers compete with the GEMM's on 2 cores).
constexpr int64_t kGrain = 4096;

// One batch row; the loop over hidden units reads each gate block contiguously and has no
// branches or conditional loads, so it vectorises (the element math is libm-free for float).
template <typename scalar_t>
DLL_CPU_CLONES void step_forward_row(const scalar_t* __restrict__ pre,
                                     const at::opmath_type<scalar_t>* __restrict__ bias,
                                     const scalar_t* __restrict__ c_prev, scalar_t* __restrict__ h,
                                     scalar_t* __restrict__ c, scalar_t* __restrict__ gates, int64_t hidden) {
  for (int64_t j = 0; j < hidden; ++j) step_forward_unit(pre, bias, c_prev, h, c, gates, j, hidden);
}

template <typename scalar_t>
DLL_CPU_CLONES void step_backward_row(const scalar_t* __restrict__ grad_h, const scalar_t* __restrict__ grad_c,
                                      const scalar_t* __restrict__ gates, const scalar_t* __restrict__ c_prev,
                                      const scalar_t* __restrict__ c, scalar_t* __restrict__ grad_pre,
                                      scalar_t* __restrict__ grad_c_prev, int64_t hidden) {
  for (int64_t j = 0; j < hidden; ++j) {
    step_backward_unit<scalar_t, at::opmath_type<scalar_t>>(grad_h, grad_c, gates, c_prev, c, grad_pre,
                                                            grad_c_prev, j, hidden);
  }
}

template <typename scalar_t>
void step_forward_kernel(const scalar_t* pre, const at::opmath_type<scalar_t>* bias, const scalar_t* c_prev,
                         scalar_t* h, scalar_t* c, scalar_t* gates, int64_t batch, int64_t hidden) {
  at::parallel_for(0, batch, std::max<int64_t>(1, kGrain / hidden), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      step_forward_row(pre + r * 4 * hidden, bias, c_prev + r * hidden, h + r * hidden,
                       c + r * hidden, gates + r * 4 * hidden, hidden);
    }
  });
}

template <typename scalar_t>
void step_backward_kernel(const scalar_t* grad_h, const scalar_t* grad_c, const scalar_t* gates,
                          const scalar_t* c_prev, const scalar_t* c, scalar_t* grad_pre,
                          scalar_t* grad_c_prev, int64_t batch, int64_t hidden) {
  at::parallel_for(0, batch, std::max<int64_t>(1, kGrain / hidden), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t row = r * hidden;
      step_backward_row(grad_h + row, grad_c + row, gates + 4 * row, c_prev + row, c + row, grad_pre + 4 * row,
                        grad_c_prev + row, hidden);
    }
  });
}

void step_forward_cpu(const at::Tensor& pre, const at::Tensor& bias, const at::Tensor& c_prev,
                      at::Tensor& h, at::Tensor& c, at::Tensor& gates) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, pre.scalar_type(), "lstm_step_forward_cpu", [&] {
    step_forward_kernel<scalar_t>(pre.const_data_ptr<scalar_t>(), bias.const_data_ptr<at::opmath_type<scalar_t>>(),
                                  c_prev.const_data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                                  c.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), h.size(0),
                                  h.size(1));
  });
}

void step_backward_cpu(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& gates,
                       const at::Tensor& c_prev, const at::Tensor& c, at::Tensor& grad_pre,
                       at::Tensor& grad_c_prev) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gates.scalar_type(), "lstm_step_backward_cpu", [&] {
    step_backward_kernel<scalar_t>(grad_h.const_data_ptr<scalar_t>(), grad_c.const_data_ptr<scalar_t>(),
                                   gates.const_data_ptr<scalar_t>(), c_prev.const_data_ptr<scalar_t>(),
                                   c.const_data_ptr<scalar_t>(), grad_pre.data_ptr<scalar_t>(),
                                   grad_c_prev.data_ptr<scalar_t>(), c.size(0), c.size(1));
  });
}

constexpr Backend kCpu{step_forward_cpu, step_backward_cpu};

}  // namespace

}  // namespace dll_ext::lstm

TORCH_LIBRARY_IMPL(dll_ext, CPU, m) {
  dll_ext::lstm::register_kernels<dll_ext::lstm::kCpu, dll_ext::NoGuard>(m);
}
