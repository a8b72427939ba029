// Schemas, argument checks and the backend-independent composition of lstm_cell.
#include <torch/library.h>

#include "common/checks.h"
#include "ops/lstm/lstm.h"

namespace dll_ext::lstm {
namespace {

constexpr const char* kOp = "lstm_cell";

void check_args(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                const at::Tensor& w_ih, const at::Tensor& w_hh,
                const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  check_dim(input, 2, "lstm_cell: input", "(batch, input_size)");
  check_parameters(kOp, input, w_ih, w_hh, b_ih, b_hh);
  const int64_t batch = input.size(0), hidden = w_hh.size(1);
  check_state(kOp, hx, input, batch, hidden, "hx");
  check_state(kOp, cx, input, batch, hidden, "cx");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> cell_forward(
    const Backend& backend, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh) {
  check_args(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  const int64_t hidden = w_hh.size(1);
  at::Tensor hy = at::empty({input.size(0), hidden}, input.options());
  at::Tensor cy = at::empty_like(hy);
  at::Tensor gates = backend.cell_step_forward(input, hx, cx, w_ih, w_hh, bias_row(input, b_ih, b_hh, hidden), hy, cy);
  return {hy, cy, gates};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cell_backward(
    const Backend& backend, const std::optional<at::Tensor>& grad_hy,
    const std::optional<at::Tensor>& grad_cy, const at::Tensor& workspace, const at::Tensor& input,
    const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& cy, const at::Tensor& w_ih,
    const at::Tensor& w_hh, bool has_bias, std::array<bool, 4> output_mask) {
  check_args(input, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt);
  const int64_t batch = input.size(0), hidden = w_hh.size(1);
  constexpr const char* op = "lstm_cell_backward";
  check_shape(op, workspace, {batch, 4 * hidden}, "workspace", "(batch, 4 * hidden_size)");
  check_like_input(op, workspace, input, "workspace");
  check_state(op, cy, input, batch, hidden, "cy");
  if (grad_hy && grad_hy->defined()) check_state(op, *grad_hy, input, batch, hidden, "grad_hy");
  if (grad_cy && grad_cy->defined()) check_state(op, *grad_cy, input, batch, hidden, "grad_cy");
  // An undefined gradient is zero; materialised so the backends' step loads unconditionally.
  // A cell has no output besides h: the step's output gradient is zero too. grad_c is the
  // step's own buffer: it leaves holding cx's gradient.
  const at::Tensor zeros = at::zeros_like(cy);
  const at::Tensor grad_h = grad_hy && grad_hy->defined() ? grad_hy->contiguous() : zeros;
  at::Tensor grad_cx =
      grad_cy && grad_cy->defined() ? grad_cy->clone(at::MemoryFormat::Contiguous) : at::zeros_like(cy);
  at::Tensor grad_pre = at::empty_like(workspace);
  at::Tensor grad_hx = output_mask[1] ? at::empty_like(cy) : at::Tensor();
  backend.step_backward(grad_h, zeros, grad_cx, workspace.contiguous(), cx.contiguous(), cy.contiguous(),
                        backend.prepare(w_hh, batch, 1, true), grad_pre, grad_hx);
  // Only the GEMMs whose gradient is wanted (output_mask: input, hx, w_ih, w_hh): a loop
  // over a sequence's inputs, say, needs no input gradient. The weight gradients are single
  // GEMMs over the batch.
  const auto gemm_if = [](bool wanted, const at::Tensor& a, const at::Tensor& b) {
    return wanted ? at::mm(a, b) : at::Tensor();
  };
  return {gemm_if(output_mask[0], grad_pre, w_ih),      grad_hx,
          grad_cx,
          gemm_if(output_mask[2], grad_pre.t(), input), gemm_if(output_mask[3], grad_pre.t(), hx),
          has_bias ? grad_pre.sum(0) : at::Tensor()};
}

std::tuple<at::Tensor, at::Tensor> cell(const Backend& backend, const at::Tensor& input, const at::Tensor& hx,
                                        const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                        const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  auto [hy, cy, gates] = cell_forward(backend, input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  return {hy, cy};
}

}  // namespace dll_ext::lstm

TORCH_LIBRARY_FRAGMENT(dll_ext, m) {
  m.def(
      "lstm_cell(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh) -> (Tensor, Tensor)");
  m.def(
      "_lstm_cell_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh) -> (Tensor, Tensor, Tensor)");
  m.def(
      "lstm_cell_backward(Tensor? grad_hy, Tensor? grad_cy, Tensor workspace, Tensor input, "
      "Tensor hx, Tensor cx, Tensor cy, Tensor w_ih, Tensor w_hh, bool has_bias, "
      "bool[4] output_mask=[True, True, True, True]) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
