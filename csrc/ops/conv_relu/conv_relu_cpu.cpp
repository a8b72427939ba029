// CPU passes of conv2d_relu: the in-place ReLU epilogue and the masked backward with the
// bias-gradient reduction in the same sweep.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/registration.h"
#include "ops/conv_relu/conv_relu.h"
#include "ops/conv_relu/conv_relu_math.h"

namespace dll_ext::conv_relu {
namespace {

// Elements per parallel task, enough to amortise a task on these cache sizes.
constexpr int64_t kGrain = 32768;

// One run of values sharing a bias (NCHW plane) or one row of channels (channels-last).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
DLL_CPU_CLONES void bias_relu_run(scalar_t* values, acc_t bias, int64_t n) {
  for (int64_t i = 0; i < n; ++i) values[i] = scalar_t(bias_relu(acc_t(values[i]), bias));
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
DLL_CPU_CLONES void bias_relu_row(scalar_t* row, const scalar_t* bias, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) row[c] = scalar_t(bias_relu(acc_t(row[c]), acc_t(bias[c])));
}

template <typename scalar_t>
void bias_relu_kernel(scalar_t* out, const scalar_t* bias, Layout l) {
  using acc_t = at::opmath_type<scalar_t>;
  if (!bias) {  // a plain ReLU: elementwise, whatever the layout
    at::parallel_for(0, l.outer * l.channels * l.inner, kGrain, [&](int64_t i0, int64_t i1) {
      bias_relu_run(out + i0, acc_t(0), i1 - i0);
    });
  } else if (l.inner > 1) {  // NCHW: one bias value per (n, c) plane
    at::parallel_for(0, l.outer * l.channels, std::max<int64_t>(1, kGrain / l.inner), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) bias_relu_run(out + p * l.inner, acc_t(bias[p % l.channels]), l.inner);
    });
  } else {  // channels-last: the bias broadcast along each row of channels
    at::parallel_for(0, l.outer, std::max<int64_t>(1, kGrain / l.channels), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) bias_relu_row(out + r * l.channels, bias, l.channels);
    });
  }
}

void bias_relu_cpu_(at::Tensor& out, const std::optional<at::Tensor>& bias) {
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "conv2d_relu_cpu", [&] {
    bias_relu_kernel<scalar_t>(out.data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                               layout_of(out));
  });
}

// grad_in = relu_grad(grad, out) over one contiguous run; with kSum, also the run's sum.
// Sixteen independent partial sums let the compiler vectorise the additions, which a
// single running sum (an ordered chain of float adds) would forbid.
template <bool kSum, typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
DLL_CPU_CLONES acc_t mask_run(const scalar_t* grad, const scalar_t* out, scalar_t* grad_in, int64_t n) {
  constexpr int kLanes = 16;
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const acc_t g = relu_grad(acc_t(grad[i + j]), acc_t(out[i + j]));
      grad_in[i + j] = scalar_t(g);
      if constexpr (kSum) lanes[j] += g;
    }
  }
  acc_t sum = 0;
  for (; i < n; ++i) {
    const acc_t g = relu_grad(acc_t(grad[i]), acc_t(out[i]));
    grad_in[i] = scalar_t(g);
    if constexpr (kSum) sum += g;
  }
  if constexpr (kSum) {
    for (int j = 0; j < kLanes; ++j) sum += lanes[j];
  }
  return sum;
}

// One channels-last row: masks it and adds it into the per-channel sums.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
DLL_CPU_CLONES void mask_row(const scalar_t* grad, const scalar_t* out, scalar_t* grad_in, acc_t* sums,
                             int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) {
    const acc_t g = relu_grad(acc_t(grad[c]), acc_t(out[c]));
    grad_in[c] = scalar_t(g);
    sums[c] += g;
  }
}

// The bias gradient is reduced over a fixed number of blocks, each a contiguous range of
// memory with its own per-channel partial sums (double), added in block order: every
// thread streams through memory, and the result does not depend on scheduling.
template <typename scalar_t>
void masked_bias_sums(const scalar_t* grad, const scalar_t* out, scalar_t* grad_in,
                      scalar_t* grad_bias, Layout l) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t units = l.outer * (l.inner > 1 ? l.channels : 1);  // planes, or rows
  // At least kGrain elements a block: a small layer is one block on the calling thread,
  // since waking the pool costs more than its whole sweep.
  const int64_t elements = l.outer * l.channels * l.inner;
  const int64_t blocks = std::clamp<int64_t>(elements / kGrain, 1, std::min<int64_t>(units, 4 * at::get_num_threads()));
  std::vector<double> partial(blocks * l.channels, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double* sums = partial.data() + b * l.channels;
      const int64_t u0 = units * b / blocks, u1 = units * (b + 1) / blocks;
      if (l.inner > 1) {  // NCHW: unit p is the plane of channel p % C
        for (int64_t p = u0; p < u1; ++p) {
          const int64_t offset = p * l.inner;
          sums[p % l.channels] += mask_run<true>(grad + offset, out + offset, grad_in + offset, l.inner);
        }
        continue;
      }
      // Channels-last: rows of C values. Runs of kRows rows add into acc_t sums (the loop
      // over channels vectorises), then flush into double to bound the rounding error.
      constexpr int64_t kRows = 256;
      std::vector<acc_t> run(l.channels);
      for (int64_t r0 = u0; r0 < u1; r0 += kRows) {
        std::fill(run.begin(), run.end(), acc_t(0));
        for (int64_t r = r0; r < std::min(u1, r0 + kRows); ++r) {
          const int64_t offset = r * l.channels;
          mask_row(grad + offset, out + offset, grad_in + offset, run.data(), l.channels);
        }
        for (int64_t c = 0; c < l.channels; ++c) sums[c] += run[c];
      }
    }
  });
  for (int64_t c = 0; c < l.channels; ++c) {
    double sum = 0.0;
    for (int64_t b = 0; b < blocks; ++b) sum += partial[b * l.channels + c];
    grad_bias[c] = scalar_t(sum);
  }
}

template <typename scalar_t>
void relu_backward_kernel(const scalar_t* grad, const scalar_t* out, scalar_t* grad_in,
                          scalar_t* grad_bias, Layout l) {
  if (grad_bias) {
    masked_bias_sums(grad, out, grad_in, grad_bias, l);
    return;
  }
  // Without a bias gradient the pass is elementwise: the layout does not matter.
  at::parallel_for(0, l.outer * l.channels * l.inner, kGrain, [&](int64_t i0, int64_t i1) {
    mask_run<false>(grad + i0, out + i0, grad_in + i0, i1 - i0);
  });
}

std::tuple<at::Tensor, at::Tensor> relu_backward_cpu(const at::Tensor& grad_out,
                                                     const at::Tensor& out, bool bias_grad) {
  at::Tensor grad_in = at::empty_like(out);
  // The sums are double inside the kernel; written once, in out's dtype, at the end.
  at::Tensor grad_bias = bias_grad ? at::empty({out.size(1)}, out.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "conv2d_relu_backward_cpu", [&] {
    relu_backward_kernel<scalar_t>(grad_out.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
                                   grad_in.data_ptr<scalar_t>(),
                                   bias_grad ? grad_bias.data_ptr<scalar_t>() : nullptr, layout_of(out));
  });
  return {grad_in, grad_bias};
}

constexpr Backend kCpu{bias_relu_cpu_, relu_backward_cpu};

}  // namespace
}  // namespace dll_ext::conv_relu

TORCH_LIBRARY_IMPL(dll_ext, CPU, m) {
  dll_ext::conv_relu::register_kernels<dll_ext::conv_relu::kCpu, dll_ext::NoGuard>(m);
}
