// Fused LSTM ops. The GEMMs are ATen's (MKL/oneDNN on CPU, cuBLAS on CUDA); each backend
// supplies the fused pointwise step around them, forward and backward, written once over
// the element math in lstm_math.h. Layouts: pre-activations and gates are (B, 4H) rows of
// [i | f | g | o], states are (B, H), all contiguous.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

namespace dll_ext::lstm {

struct Backend {
  // From the pre-activations without biases and the bias row (b_ih + b_hh, in the
  // accumulation type): h, c and the activated gates, all written.
  void (*step_forward)(const at::Tensor& pre, const at::Tensor& bias, const at::Tensor& c_prev,
                       at::Tensor& h, at::Tensor& c, at::Tensor& gates);
  // Gradients of the pre-activations and of c_prev from those reaching h and c; tanh(c) is
  // recomputed from c.
  void (*step_backward)(const at::Tensor& grad_h, const at::Tensor& grad_c,
                        const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c,
                        at::Tensor& grad_pre, at::Tensor& grad_c_prev);
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> cell_forward(
    const Backend& backend, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cell_backward(
    const Backend& backend, const std::optional<at::Tensor>& grad_hy,
    const std::optional<at::Tensor>& grad_cy, const at::Tensor& workspace, const at::Tensor& input,
    const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& cy, const at::Tensor& w_ih,
    const at::Tensor& w_hh, bool has_bias, std::array<bool, 4> output_mask);

}  // namespace dll_ext::lstm
