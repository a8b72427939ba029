// Schemas, argument checks and the backend-independent composition of lstm_cell.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common/checks.h"
#include "ops/lstm/lstm.h"

namespace dll_ext::lstm {
namespace {

void check_dtype_supported(const at::Tensor& input) {
  const auto dtype = input.scalar_type();
  const bool cpu_ok = dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16;
  TORCH_CHECK_TYPE(input.is_cuda() ? cpu_ok || dtype == at::kHalf : cpu_ok, "lstm_cell: input dtype ",
                   dtype, " is not supported on ", input.device().type(),
                   "; supported: float32, float64, bfloat16",
                   input.is_cuda() ? ", float16" : " (float16 on CUDA only)");
}

void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* name, const char* what) {
  TORCH_CHECK_VALUE(t.sizes() == expected, "lstm_cell: ", name, " must have shape ", expected, " ",
                    what, ", but got ", t.sizes());
}

void check_args(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                const at::Tensor& w_ih, const at::Tensor& w_hh,
                const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  check_dim(input, 2, "lstm_cell: input", "(batch, input_size)");
  check_dim(w_hh, 2, "lstm_cell: weight_hh", "(4 * hidden_size, hidden_size)");
  check_dim(w_ih, 2, "lstm_cell: weight_ih", "(4 * hidden_size, input_size)");
  const int64_t batch = input.size(0), hidden = w_hh.size(1);
  check_shape(w_hh, {4 * hidden, hidden}, "weight_hh", "(4 * hidden_size, hidden_size)");
  TORCH_CHECK_VALUE(w_ih.size(0) == 4 * hidden, "lstm_cell: weight_ih must have 4 * hidden_size = ",
                    4 * hidden, " rows (hidden_size from weight_hh), but got shape ", w_ih.sizes());
  TORCH_CHECK_VALUE(input.size(1) == w_ih.size(1), "lstm_cell: input has feature size ",
                    input.size(1), " but weight_ih expects input_size = ", w_ih.size(1));
  check_shape(hx, {batch, hidden}, "hx", "(batch, hidden_size)");
  check_shape(cx, {batch, hidden}, "cx", "(batch, hidden_size)");
  TORCH_CHECK_VALUE(b_ih.has_value() == b_hh.has_value(),
                    "lstm_cell: bias_ih and bias_hh must be given together or both be None");
  const std::pair<const at::Tensor*, const char*> others[] = {
      {&hx, "hx"}, {&cx, "cx"}, {&w_ih, "weight_ih"}, {&w_hh, "weight_hh"},
      {b_ih ? &*b_ih : nullptr, "bias_ih"}, {b_hh ? &*b_hh : nullptr, "bias_hh"}};
  for (const auto& [t, name] : others) {
    if (!t) continue;
    check_same_device(*t, input, (std::string("lstm_cell: ") + name).c_str(), "input");
    check_same_dtype(*t, input, (std::string("lstm_cell: ") + name).c_str(), "input");
  }
  if (b_ih) check_shape(*b_ih, {4 * hidden}, "bias_ih", "(4 * hidden_size,)");
  if (b_hh) check_shape(*b_hh, {4 * hidden}, "bias_hh", "(4 * hidden_size,)");
  check_dtype_supported(input);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> cell_forward(
    const Backend& backend, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh) {
  check_args(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  // Two GEMMs into one buffer; the biases are added in the fused pointwise step.
  at::Tensor pre = at::mm(input, w_ih.t());
  pre.addmm_(hx, w_hh.t());
  const int64_t hidden = w_hh.size(1);
  at::Tensor hy = at::empty({input.size(0), hidden}, input.options());
  at::Tensor cy = at::empty_like(hy);
  at::Tensor gates = at::empty_like(pre);
  // One bias row in the accumulation type: the step loads it unconditionally, and
  // low-precision biases are added without an extra rounding.
  const auto acc = pre.options().dtype(at::toOpMathType(pre.scalar_type()));
  const at::Tensor bias = b_ih ? (b_ih->to(acc) + b_hh->to(acc)) : at::zeros({4 * hidden}, acc);
  backend.step_forward(pre, bias, cx.contiguous(), hy, cy, gates);
  return {hy, cy, gates};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cell_backward(
    const Backend& backend, const std::optional<at::Tensor>& grad_hy,
    const std::optional<at::Tensor>& grad_cy, const at::Tensor& workspace, const at::Tensor& input,
    const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& cy, const at::Tensor& w_ih,
    const at::Tensor& w_hh, bool has_bias, std::array<bool, 4> output_mask) {
  check_args(input, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt);
  const int64_t batch = input.size(0), hidden = w_hh.size(1);
  check_shape(workspace, {batch, 4 * hidden}, "workspace", "(batch, 4 * hidden_size)");
  check_shape(cy, {batch, hidden}, "cy", "(batch, hidden_size)");
  const std::pair<const at::Tensor*, const char*> saved[] = {
      {grad_hy ? &*grad_hy : nullptr, "grad_hy"}, {grad_cy ? &*grad_cy : nullptr, "grad_cy"},
      {&workspace, "workspace"}, {&cy, "cy"}};
  for (const auto& [t, name] : saved) {
    if (!t || !t->defined()) continue;
    const std::string label = std::string("lstm_cell_backward: ") + name;
    if (t != &workspace) check_shape(*t, {batch, hidden}, name, "(batch, hidden_size)");
    check_same_device(*t, input, label.c_str(), "input");
    check_same_dtype(*t, input, label.c_str(), "input");
  }
  // An undefined gradient is zero; materialised so the backends' step loads unconditionally.
  const auto contiguous_or_zero = [&cy](const std::optional<at::Tensor>& t) {
    return t.has_value() && t->defined() ? t->contiguous() : at::zeros_like(cy);
  };
  at::Tensor grad_pre = at::empty_like(workspace);
  at::Tensor grad_cx = at::empty_like(cy);
  backend.step_backward(contiguous_or_zero(grad_hy), contiguous_or_zero(grad_cy),
                        workspace.contiguous(), cx.contiguous(), cy.contiguous(), grad_pre, grad_cx);
  // Only the GEMMs whose gradient is wanted (output_mask: input, hx, w_ih, w_hh): a loop
  // over a sequence's inputs, say, needs no input gradient. The weight gradients are single
  // GEMMs over the batch.
  const auto gemm_if = [](bool wanted, const at::Tensor& a, const at::Tensor& b) {
    return wanted ? at::mm(a, b) : at::Tensor();
  };
  return {gemm_if(output_mask[0], grad_pre, w_ih),      gemm_if(output_mask[1], grad_pre, w_hh),
          grad_cx,
          gemm_if(output_mask[2], grad_pre.t(), input), gemm_if(output_mask[3], grad_pre.t(), hx),
          has_bias ? grad_pre.sum(0) : at::Tensor()};
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
