// Schema, argument checks and the backend-independent composition of conv2d_relu.
#include "ops/conv_relu/conv_relu.h"

#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "common/dtypes.h"

namespace dll_ext::conv_relu {
namespace {

constexpr DtypeTable kDtypes{{at::kFloat, at::kDouble, at::kBFloat16},
                             {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}};
const RegisterDtypes kRegistered({"conv2d_relu"}, kDtypes);

void check_args(const at::Tensor& input, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_dim(input, 4, "conv2d_relu: input", "(N, C_in, H, W)");
  check_dim(weight, 4, "conv2d_relu: weight", "(C_out, C_in / groups, kH, kW)");
  check_int_list(stride, 2, 1, "conv2d_relu: stride");
  check_int_list(padding, 2, 0, "conv2d_relu: padding");
  check_int_list(dilation, 2, 1, "conv2d_relu: dilation");
  TORCH_CHECK(groups >= 1, "conv2d_relu: groups must be >= 1, but got ", groups);
  check_same_device(weight, input, "conv2d_relu: weight", "input");
  check_same_dtype(weight, input, "conv2d_relu: weight", "input");
  check_dtype_supported("conv2d_relu", input, kDtypes);

  const int64_t batch = input.size(0), in_channels = input.size(1);
  const int64_t out_channels = weight.size(0);
  TORCH_CHECK(batch > 0, "conv2d_relu: input has an empty batch (N = 0), shape ",
              input.sizes());
  // Zero channels would give an output with zero channels (ATen's convolution does so),
  // not the weight.size(0) the shape functions promise.
  TORCH_CHECK(in_channels > 0, "conv2d_relu: input has no channels (C_in = 0), shape ",
              input.sizes());
  TORCH_CHECK(in_channels % groups == 0, "conv2d_relu: input channels (", in_channels,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(out_channels % groups == 0, "conv2d_relu: weight.size(0) = out channels (",
              out_channels, ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) * groups == in_channels, "conv2d_relu: weight.size(1) must be ",
              "input channels / groups = ", in_channels, " / ", groups, " = ",
              in_channels / groups, ", but got weight of shape ", weight.sizes());
  TORCH_CHECK(
      out_channels > 0 && weight.size(1) > 0 && weight.size(2) > 0 && weight.size(3) > 0,
      "conv2d_relu: weight must have non-zero sizes, but got ", weight.sizes());
  for (int d = 0; d < 2; ++d) {
    const int64_t padded = input.size(2 + d) + 2 * padding[d];
    const int64_t extent = dilation[d] * (weight.size(2 + d) - 1) + 1;
    TORCH_CHECK(padded >= extent, "conv2d_relu: padded input ", d == 0 ? "height" : "width",
                " (", padded, ") is smaller than the dilated kernel (", extent,
                "); input shape ", input.sizes(), ", weight shape ", weight.sizes());
  }
  if (bias.has_value()) {
    check_dim(*bias, 1, "conv2d_relu: bias", "(C_out,)");
    TORCH_CHECK(bias->size(0) == out_channels, "conv2d_relu: bias must have ", out_channels,
                " entries (weight.size(0)), but got ", bias->size(0));
    check_same_device(*bias, input, "conv2d_relu: bias", "input");
    check_same_dtype(*bias, input, "conv2d_relu: bias", "input");
  }
}

at::MemoryFormat output_format(const at::Tensor& input, const at::Tensor& weight) {
  return is_channels_last(input) || is_channels_last(weight) ? at::MemoryFormat::ChannelsLast
                                                             : at::MemoryFormat::Contiguous;
}

}  // namespace

Layout layout_of(const at::Tensor& t) {
  const int64_t n = t.size(0), c = t.size(1), hw = t.size(2) * t.size(3);
  if (t.is_contiguous()) return {n, c, hw};
  TORCH_INTERNAL_ASSERT(t.is_contiguous(at::MemoryFormat::ChannelsLast));
  return {n * hw, c, 1};
}

at::Tensor forward(const Backend& backend, const at::Tensor& input, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_args(input, weight, bias, stride, padding, dilation, groups);
  at::Tensor out = at::convolution(input, weight, std::nullopt, stride, padding, dilation,
                                   /*transposed=*/false, /*output_padding=*/{0, 0}, groups)
                       .contiguous(output_format(input, weight));
  backend.bias_relu_(out, bias);
  return out;
}

namespace {

void check_backward_args(const at::Tensor& grad_out, const at::Tensor& out,
                         const at::Tensor& input, const at::Tensor& weight,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups) {
  check_args(input, weight, std::nullopt, stride, padding, dilation, groups);
  // output must be what forward gives for these arguments: ATen's convolution_backward
  // reports other shapes only as an obscure backend failure.
  std::vector<int64_t> out_shape{input.size(0), weight.size(0)};
  for (int d = 0; d < 2; ++d) {
    const int64_t extent = dilation[d] * (weight.size(2 + d) - 1) + 1;
    out_shape.push_back((input.size(2 + d) + 2 * padding[d] - extent) / stride[d] + 1);
  }
  TORCH_CHECK(out.sizes() == at::IntArrayRef(out_shape),
              "conv2d_relu_backward: output must have shape ", at::IntArrayRef(out_shape),
              " (the convolution of input ", input.sizes(), " with weight ", weight.sizes(),
              "), but got ", out.sizes());
  TORCH_CHECK(grad_out.sizes() == out.sizes(), "conv2d_relu_backward: grad_output shape ",
              grad_out.sizes(), " must equal output shape ", out.sizes());
  check_same_device(grad_out, input, "conv2d_relu_backward: grad_output", "input");
  check_same_device(out, input, "conv2d_relu_backward: output", "input");
  check_same_dtype(grad_out, input, "conv2d_relu_backward: grad_output", "input");
  check_same_dtype(out, input, "conv2d_relu_backward: output", "input");
}

// grad_input and grad_weight from the ReLU-masked output gradient, in fixed layouts so
// the fake kernels can state them: input's (as the output's), and weight's.
std::tuple<at::Tensor, at::Tensor> conv_grads(const at::Tensor& grad_masked,
                                              const at::Tensor& input, const at::Tensor& weight,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation, int64_t groups,
                                              std::array<bool, 3> output_mask) {
  at::Tensor grad_input, grad_weight;
  if (output_mask[0] || output_mask[1]) {
    std::tie(grad_input, grad_weight, std::ignore) = at::convolution_backward(
        grad_masked, input, weight, std::nullopt, stride, padding, dilation,
        /*transposed=*/false, /*output_padding=*/{0, 0}, groups,
        {output_mask[0], output_mask[1], false});
  }
  if (grad_input.defined()) grad_input = grad_input.contiguous(output_format(input, weight));
  if (grad_weight.defined()) {
    grad_weight = grad_weight.contiguous(is_channels_last(weight) ? at::MemoryFormat::ChannelsLast
                                                                  : at::MemoryFormat::Contiguous);
  }
  return {grad_input, grad_weight};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const Backend& backend, const at::Tensor& grad_out, const at::Tensor& out,
    const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  check_backward_args(grad_out, out, input, weight, stride, padding, dilation, groups);
  const auto format = output_format(input, weight);
  auto [grad_masked, grad_bias] = backend.relu_backward(
      grad_out.contiguous(format), out.contiguous(format), output_mask[2]);
  auto [grad_input, grad_weight] =
      conv_grads(grad_masked, input, weight, stride, padding, dilation, groups, output_mask);
  return {grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_differentiable(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& input,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  check_backward_args(grad_out, out, input, weight, stride, padding, dilation, groups);
  // torch's own ReLU backward (zero where out <= 0, NaN passing as in relu_grad), which
  // autograd can differentiate; the mask itself is piecewise constant in out.
  const at::Tensor grad_masked = at::threshold_backward(grad_out, out, 0);
  auto [grad_input, grad_weight] =
      conv_grads(grad_masked, input, weight, stride, padding, dilation, groups, output_mask);
  at::Tensor grad_bias = output_mask[2] ? grad_masked.sum({0, 2, 3}) : at::Tensor();
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace dll_ext::conv_relu

TORCH_LIBRARY_FRAGMENT(dll_ext, m) {
  m.def(
      "conv2d_relu(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_relu_backward(Tensor grad_output, Tensor output, Tensor input, Tensor weight, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
}
