// Autograd for lstm_cell, lstm_layer and lstm_layer_packed in C++ (TorchScript and C++
// programs get gradients too). Each forward runs its internal _..._forward op, which also
// returns the workspace the backward needs; each backward runs the ..._backward op; all
// through the dispatcher, so fake tensors, torch.compile and torch.export see them as ops.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "common/autograd.h"

namespace dll_ext::lstm {
namespace {

using OptTensor = std::optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_forward(const at::Tensor& input,
                                                            const at::Tensor& hx,
                                                            const at::Tensor& cx,
                                                            const at::Tensor& w_ih,
                                                            const at::Tensor& w_hh,
                                                            const OptTensor& b_ih,
                                                            const OptTensor& b_hh) {
  static auto op = find_op<decltype(call_forward)>("dll_ext::_lstm_cell_forward");
  return op.call(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Grads call_backward(const OptTensor& grad_hy, const OptTensor& grad_cy, const at::Tensor& workspace,
                    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                    const at::Tensor& cy, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    bool has_bias, std::array<bool, 4> output_mask) {
  static auto op = find_op<decltype(call_backward)>("dll_ext::lstm_cell_backward");
  return op.call(grad_hy, grad_cy, workspace, input, hx, cx, cy, w_ih, w_hh, has_bias, output_mask);
}

class LSTMCellFunction : public torch::autograd::Function<LSTMCellFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& input, const at::Tensor& hx,
                                                const at::Tensor& cx, const at::Tensor& w_ih,
                                                const at::Tensor& w_hh, const OptTensor& b_ih,
                                                const OptTensor& b_hh) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [hy, cy, gates] = call_forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
    ctx->save_for_backward({gates, input, hx, cx, cy, w_ih, w_hh});
    ctx->saved_data["has_bias"] = b_ih.has_value();
    return {hy, cy};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    auto [grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias] = call_backward(
        optional(grads[0]), optional(grads[1]), s[0], s[1], s[2], s[3], s[4], s[5], s[6], has_bias,
        {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(3),
         ctx->needs_input_grad(4)});
    // Both biases get the same gradient; each its own tensor, as autograd may accumulate
    // into one in place.
    at::Tensor grad_b_hh = has_bias && ctx->needs_input_grad(6) ? grad_bias.clone() : at::Tensor();
    return {grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias, grad_b_hh};
  }
};

std::tuple<at::Tensor, at::Tensor> lstm_cell_autograd(const at::Tensor& input, const at::Tensor& hx,
                                                      const at::Tensor& cx, const at::Tensor& w_ih,
                                                      const at::Tensor& w_hh, const OptTensor& b_ih,
                                                      const OptTensor& b_hh) {
  auto outputs = LSTMCellFunction::apply(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  return {outputs[0], outputs[1]};
}

Grads lstm_cell_backward_autograd(const OptTensor& grad_hy, const OptTensor& grad_cy,
                                  const at::Tensor& workspace, const at::Tensor& input,
                                  const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& cy,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh, bool has_bias,
                                  std::array<bool, 4> output_mask) {
  refuse_double_backward("lstm_cell", grad_hy, grad_cy, workspace, input, hx, cx, cy, w_ih, w_hh);
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_backward(grad_hy, grad_cy, workspace, input, hx, cx, cy, w_ih, w_hh, has_bias, output_mask);
}

using LayerOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

LayerOutputs call_layer_forward(const at::Tensor& input, const OptTensor& lengths,
                                const OptTensor& batch_sizes, const at::Tensor& hx,
                                const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                const OptTensor& b_ih, const OptTensor& b_hh, bool reverse) {
  static auto op = find_op<decltype(call_layer_forward)>("dll_ext::_lstm_layer_forward");
  return op.call(input, lengths, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse);
}

Grads call_layer_backward(const OptTensor& grad_output, const OptTensor& grad_hy,
                          const OptTensor& grad_cy, const at::Tensor& input, const OptTensor& lengths,
                          const OptTensor& batch_sizes, const at::Tensor& hx, const at::Tensor& cx,
                          const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
                          const at::Tensor& gates, const at::Tensor& cells, bool has_bias,
                          bool reverse, std::array<bool, 4> output_mask) {
  static auto op = find_op<decltype(call_layer_backward)>("dll_ext::lstm_layer_backward");
  return op.call(grad_output, grad_hy, grad_cy, input, lengths, batch_sizes, hx, cx, w_ih, w_hh, output,
                 gates, cells, has_bias, reverse, output_mask);
}

// Both layouts of a layer: `lengths` for padded input, `batch_sizes` for packed.
class LSTMLayerFunction : public torch::autograd::Function<LSTMLayerFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& input, const at::Tensor& hx,
                                                const at::Tensor& cx, const at::Tensor& w_ih,
                                                const at::Tensor& w_hh, const OptTensor& b_ih,
                                                const OptTensor& b_hh, const OptTensor& lengths,
                                                const OptTensor& batch_sizes, bool reverse) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, hy, cy, gates, cells] =
        call_layer_forward(input, lengths, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse);
    ctx->save_for_backward({input, hx, cx, w_ih, w_hh, output, gates, cells,
                            lengths.value_or(at::Tensor()), batch_sizes.value_or(at::Tensor())});
    ctx->saved_data["has_bias"] = b_ih.has_value();
    ctx->saved_data["reverse"] = reverse;
    return {output, hy, cy};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    auto [grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias] = call_layer_backward(
        optional(grads[0]), optional(grads[1]), optional(grads[2]), s[0], optional(s[8]), optional(s[9]),
        s[1], s[2], s[3], s[4], s[5], s[6], s[7], has_bias, ctx->saved_data["reverse"].toBool(),
        {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(3),
         ctx->needs_input_grad(4)});
    at::Tensor grad_b_hh = has_bias && ctx->needs_input_grad(6) ? grad_bias.clone() : at::Tensor();
    return {grad_input, grad_hx,       grad_cx,      grad_w_ih,    grad_w_hh,
            grad_bias,  grad_b_hh,     at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer_autograd(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& lengths,
    bool reverse) {
  auto outputs =
      LSTMLayerFunction::apply(input, hx, cx, w_ih, w_hh, b_ih, b_hh, lengths, OptTensor(), reverse);
  return {outputs[0], outputs[1], outputs[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer_packed_autograd(
    const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& hx, const at::Tensor& cx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    bool reverse) {
  auto outputs =
      LSTMLayerFunction::apply(input, hx, cx, w_ih, w_hh, b_ih, b_hh, OptTensor(), batch_sizes, reverse);
  return {outputs[0], outputs[1], outputs[2]};
}

Grads lstm_layer_backward_autograd(const OptTensor& grad_output, const OptTensor& grad_hy,
                                   const OptTensor& grad_cy, const at::Tensor& input,
                                   const OptTensor& lengths, const OptTensor& batch_sizes,
                                   const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
                                   const at::Tensor& w_hh, const at::Tensor& output,
                                   const at::Tensor& gates, const at::Tensor& cells, bool has_bias,
                                   bool reverse, std::array<bool, 4> output_mask) {
  refuse_double_backward("lstm_layer", grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, output,
                         gates, cells);
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_layer_backward(grad_output, grad_hy, grad_cy, input, lengths, batch_sizes, hx, cx, w_ih,
                             w_hh, output, gates, cells, has_bias, reverse, output_mask);
}

}  // namespace
}  // namespace dll_ext::lstm

TORCH_LIBRARY_IMPL(dll_ext, Autograd, m) {
  m.impl("lstm_cell", &dll_ext::lstm::lstm_cell_autograd);
  m.impl("lstm_cell_backward", &dll_ext::lstm::lstm_cell_backward_autograd);
  m.impl("lstm_layer", &dll_ext::lstm::lstm_layer_autograd);
  m.impl("lstm_layer_packed", &dll_ext::lstm::lstm_layer_packed_autograd);
  m.impl("lstm_layer_backward", &dll_ext::lstm::lstm_layer_backward_autograd);
  // Internal (the public ops' autograd runs them below autograd): differentiating them
  // directly errors.
  m.impl("_lstm_cell_forward", torch::autograd::autogradNotImplementedFallback());
  m.impl("_lstm_layer_forward", torch::autograd::autogradNotImplementedFallback());
}
