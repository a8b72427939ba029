// Autograd for conv2d_relu, in C++ so that TorchScript and Python-free C++ programs get
// gradients too. Both directions go through the dispatcher, so fake tensors, torch.compile
// and torch.export see the backward as the op conv2d_relu_backward.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "ops/conv_relu/conv_relu.h"

namespace dll_ext::conv_relu {
namespace {

at::Tensor call_forward(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dll_ext::conv2d_relu", "")
                       .typed<decltype(call_forward)>();
  return op.call(input, weight, bias, stride, padding, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& input,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dll_ext::conv2d_relu_backward", "")
                       .typed<decltype(call_backward)>();
  return op.call(grad_out, out, input, weight, stride, padding, dilation, groups, output_mask);
}

class Conv2dReLUFunction : public torch::autograd::Function<Conv2dReLUFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = call_forward(input, weight, bias, stride, padding, dilation, groups);
    // The output, not the pre-activation, is saved: it alone gives the ReLU mask.
    ctx->save_for_backward({input, weight, out});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = bias.has_value();
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)};
    auto [grad_input, grad_weight, grad_bias] = call_backward(
        grads[0], saved[2], saved[0], saved[1], ctx->saved_data["stride"].toIntVector(),
        ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector(),
        ctx->saved_data["groups"].toInt(), mask);
    return {grad_input, grad_weight, grad_bias, {}, {}, {}, {}};
  }
};

at::Tensor conv2d_relu_autograd(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                int64_t groups) {
  return Conv2dReLUFunction::apply(input, weight, bias, stride, padding, dilation, groups);
}

// Autograd kernel of the backward op. Without one, a backward with create_graph=True would
// run the fused kernel, whose ReLU mask autograd cannot see through, and second derivatives
// (gradient penalties) would silently miss the terms through grad_output. When any input
// requires grad the backward is computed from differentiable ATen ops instead; otherwise
// (every ordinary backward, and torch.compile's) the fused kernel runs.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_relu_backward_autograd(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& input,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  const bool differentiable =
      at::GradMode::is_enabled() && (grad_out.requires_grad() || out.requires_grad() ||
                                     input.requires_grad() || weight.requires_grad());
  if (differentiable) {
    return backward_differentiable(grad_out, out, input, weight, stride, padding, dilation,
                                   groups, output_mask);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_backward(grad_out, out, input, weight, stride, padding, dilation, groups,
                       output_mask);
}

}  // namespace
}  // namespace dll_ext::conv_relu

TORCH_LIBRARY_IMPL(dll_ext, Autograd, m) {
  m.impl("conv2d_relu", &dll_ext::conv_relu::conv2d_relu_autograd);
  m.impl("conv2d_relu_backward", &dll_ext::conv_relu::conv2d_relu_backward_autograd);
}
