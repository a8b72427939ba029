// CPU passes of conv2d_relu: the in-place bias+ReLU epilogue and the masked backward with
// the bias-gradient reduction in the same sweep.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops/conv_relu/conv_relu.h"
#include "ops/conv_relu/conv_relu_math.h"

namespace dll_ext::conv_relu {
namespace {

// Elements per parallel task, enough to amortise a task on these cache sizes.
constexpr int64_t kGrain = 32768;

template <typename scalar_t>
void bias_relu_kernel(scalar_t* out, const scalar_t* bias, Layout l) {
  using acc_t = at::opmath_type<scalar_t>;
  if (l.inner > 1) {  // NCHW: one bias value per (n, c) plane
    const int64_t planes = l.outer * l.channels;
    at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / l.inner), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const acc_t b = bias ? acc_t(bias[p % l.channels]) : acc_t(0);
        scalar_t* row = out + p * l.inner;
        for (int64_t i = 0; i < l.inner; ++i) row[i] = scalar_t(bias_relu(acc_t(row[i]), b));
      }
    });
    return;
  }
  // Channels-last: rows of `channels` values, the bias broadcast along each row.
  at::parallel_for(0, l.outer, std::max<int64_t>(1, kGrain / l.channels), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      scalar_t* row = out + r * l.channels;
      for (int64_t c = 0; c < l.channels; ++c) {
        row[c] = scalar_t(bias_relu(acc_t(row[c]), bias ? acc_t(bias[c]) : acc_t(0)));
      }
    }
  });
}

void bias_relu_cpu_(at::Tensor& out, const std::optional<at::Tensor>& bias) {
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "conv2d_relu_cpu", [&] {
    bias_relu_kernel<scalar_t>(out.data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                               layout_of(out));
  });
}

// grad_in[i] = relu_grad(grad[i], out[i]) for one contiguous run; returns the run's sum.
template <typename scalar_t, typename acc_t>
acc_t mask_run(const scalar_t* grad, const scalar_t* out, scalar_t* grad_in, int64_t n) {
  acc_t sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t g = relu_grad(acc_t(grad[i]), acc_t(out[i]));
    grad_in[i] = scalar_t(g);
    sum += g;
  }
  return sum;
}

template <typename scalar_t>
void relu_backward_kernel(const scalar_t* grad, const scalar_t* out, scalar_t* grad_in,
                          double* bias_sum, Layout l) {
  using acc_t = at::opmath_type<scalar_t>;
  if (l.inner > 1) {
    // NCHW: a task owns whole channels, so each channel's sum has a single writer. Each
    // plane is summed in acc_t (vectorisable), the planes in double.
    at::parallel_for(0, l.channels, std::max<int64_t>(1, kGrain / (l.inner * l.outer)), [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double total = 0;
        for (int64_t n = 0; n < l.outer; ++n) {
          const int64_t offset = (n * l.channels + c) * l.inner;
          total += mask_run<scalar_t, acc_t>(grad + offset, out + offset, grad_in + offset, l.inner);
        }
        if (bias_sum) bias_sum[c] = total;
      }
    });
    return;
  }
  // Channels-last: a fixed number of row blocks, each with its own per-channel partial
  // sums, added in block order so the result does not depend on scheduling.
  const int64_t blocks = std::min<int64_t>(l.outer, 4 * at::get_num_threads());
  std::vector<double> partial(bias_sum ? blocks * l.channels : 0, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = l.outer * b / blocks, r1 = l.outer * (b + 1) / blocks;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t offset = r * l.channels;
        for (int64_t c = 0; c < l.channels; ++c) {
          const acc_t g = relu_grad(acc_t(grad[offset + c]), acc_t(out[offset + c]));
          grad_in[offset + c] = scalar_t(g);
          if (bias_sum) partial[b * l.channels + c] += g;
        }
      }
    }
  });
  if (!bias_sum) return;
  for (int64_t c = 0; c < l.channels; ++c) bias_sum[c] = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t c = 0; c < l.channels; ++c) bias_sum[c] += partial[b * l.channels + c];
  }
}

std::tuple<at::Tensor, at::Tensor> relu_backward_cpu(const at::Tensor& grad_out,
                                                     const at::Tensor& out, bool bias_grad) {
  at::Tensor grad_in = at::empty_like(out);
  at::Tensor bias_sum = bias_grad ? at::empty({out.size(1)}, out.options().dtype(at::kDouble))
                                  : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "conv2d_relu_backward_cpu", [&] {
    relu_backward_kernel<scalar_t>(grad_out.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
                                   grad_in.data_ptr<scalar_t>(),
                                   bias_grad ? bias_sum.data_ptr<double>() : nullptr, layout_of(out));
  });
  return {grad_in, bias_grad ? bias_sum.to(out.scalar_type()) : at::Tensor()};
}

constexpr Backend kCpu{bias_relu_cpu_, relu_backward_cpu};

at::Tensor conv2d_relu_cpu(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return forward(kCpu, input, weight, bias, stride, padding, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_relu_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& input,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  return backward(kCpu, grad_out, out, input, weight, stride, padding, dilation, groups, output_mask);
}

}  // namespace
}  // namespace dll_ext::conv_relu

TORCH_LIBRARY_IMPL(dll_ext, CPU, m) {
  m.impl("conv2d_relu", &dll_ext::conv_relu::conv2d_relu_cpu);
  m.impl("conv2d_relu_backward", &dll_ext::conv_relu::conv2d_relu_backward_cpu);
}
