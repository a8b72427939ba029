// conv2d_relu: relu(conv2d(input, weight) + bias) in one op, with a backward that applies
// the ReLU mask while reducing the bias gradient.
//
// The convolution itself is ATen's (oneDNN on CPU, cuDNN on CUDA); each backend supplies the
// memory-bound passes around it, which is where the fusion wins. (oneDNN's ReLU post-op,
// mkldnn::_convolution_pointwise, would save the epilogue pass but turns NaN into 0.)
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

#include "common/registration.h"

namespace dll_ext::conv_relu {

struct Backend {
  // out = relu(out + bias[channel]) in place; out is NCHW-contiguous or channels-last.
  void (*bias_relu_)(at::Tensor& out, const std::optional<at::Tensor>& bias);
  // (grad_out masked by out > 0, sum of the masked gradient per channel or undefined);
  // grad_out has out's layout.
  std::tuple<at::Tensor, at::Tensor> (*relu_backward)(const at::Tensor& grad_out,
                                                       const at::Tensor& out, bool bias_grad);
};

at::Tensor forward(const Backend& backend, const at::Tensor& input, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const Backend& backend, const at::Tensor& grad_out, const at::Tensor& out,
    const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask);

// backward from differentiable ATen ops (no backend kernel), for double backward: the
// Autograd kernel of conv2d_relu_backward takes it when an input requires grad.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_differentiable(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& input,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask);

template <const Backend& backend, typename Guard>
void register_kernels(torch::Library& m) {
  impl<Guard, backend, forward>(m, "conv2d_relu");
  impl<Guard, backend, backward>(m, "conv2d_relu_backward");
}

// Layout helper for the kernels: (outer, channels, inner) of an NCHW or channels-last tensor.
struct Layout {
  int64_t outer, channels, inner;
};
Layout layout_of(const at::Tensor& t);

}  // namespace dll_ext::conv_relu
