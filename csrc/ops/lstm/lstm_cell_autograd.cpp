// Autograd for lstm_cell in C++ (TorchScript and C++ programs get gradients too). Forward
// runs _lstm_cell_forward, which also returns the activated gates the backward needs;
// backward runs lstm_cell_backward; both through the dispatcher, so fake tensors,
// torch.compile and torch.export see them as ops.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

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
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dll_ext::_lstm_cell_forward", "")
                       .typed<decltype(call_forward)>();
  return op.call(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Grads call_backward(const OptTensor& grad_hy, const OptTensor& grad_cy, const at::Tensor& workspace,
                    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                    const at::Tensor& cy, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    bool has_bias, std::array<bool, 4> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dll_ext::lstm_cell_backward", "")
                       .typed<decltype(call_backward)>();
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
    const auto optional = [](const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; };
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

// The fused backward is not itself differentiable: refuse to build a graph through it
// rather than return second derivatives that miss terms.
Grads lstm_cell_backward_autograd(const OptTensor& grad_hy, const OptTensor& grad_cy,
                                  const at::Tensor& workspace, const at::Tensor& input,
                                  const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& cy,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh, bool has_bias,
                                  std::array<bool, 4> output_mask) {
  const auto requires_grad = [](const OptTensor& t) { return t.has_value() && t->requires_grad(); };
  const bool differentiable =
      requires_grad(grad_hy) || requires_grad(grad_cy) || workspace.requires_grad() ||
      input.requires_grad() || hx.requires_grad() || cx.requires_grad() || cy.requires_grad() ||
      w_ih.requires_grad() || w_hh.requires_grad();
  TORCH_CHECK(!(at::GradMode::is_enabled() && differentiable),
              "lstm_cell: double backward (create_graph=True through lstm_cell) is not supported");
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_backward(grad_hy, grad_cy, workspace, input, hx, cx, cy, w_ih, w_hh, has_bias, output_mask);
}

}  // namespace
}  // namespace dll_ext::lstm

TORCH_LIBRARY_IMPL(dll_ext, Autograd, m) {
  m.impl("lstm_cell", &dll_ext::lstm::lstm_cell_autograd);
  m.impl("lstm_cell_backward", &dll_ext::lstm::lstm_cell_backward_autograd);
  // Internal (lstm_cell's autograd runs it below autograd): differentiating it directly errors.
  m.impl("_lstm_cell_forward", torch::autograd::autogradNotImplementedFallback());
}
