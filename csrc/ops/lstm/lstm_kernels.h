// The kernels of the LSTM ops for one backend: thin bindings of its pointwise steps to the
// shared compositions (lstm_cell.cpp, lstm_layer.cpp). Each backend's file registers them
// under its dispatch key with register_kernels.
#pragma once

#include <torch/library.h>

#include "ops/lstm/lstm.h"

namespace dll_ext::lstm {

using OptTensor = std::optional<at::Tensor>;

// Guard: a type constructed from the op's input that holds what the backend needs while
// the op runs (the CUDA device).
template <const Backend& backend, typename Guard>
struct Kernels {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> cell_forward_(
      const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
      const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh) {
    const Guard guard(input);
    return cell_forward(backend, input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  }

  static std::tuple<at::Tensor, at::Tensor> cell(const at::Tensor& input, const at::Tensor& hx,
                                                 const at::Tensor& cx, const at::Tensor& w_ih,
                                                 const at::Tensor& w_hh, const OptTensor& b_ih,
                                                 const OptTensor& b_hh) {
    auto [hy, cy, gates] = cell_forward_(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
    return {hy, cy};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
  cell_backward_(const OptTensor& grad_hy, const OptTensor& grad_cy, const at::Tensor& workspace,
                 const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                 const at::Tensor& cy, const at::Tensor& w_ih, const at::Tensor& w_hh, bool has_bias,
                 std::array<bool, 4> output_mask) {
    const Guard guard(input);
    return cell_backward(backend, grad_hy, grad_cy, workspace, input, hx, cx, cy, w_ih, w_hh,
                         has_bias, output_mask);
  }

  static LayerOutputs layer_forward_(const at::Tensor& input, const OptTensor& lengths,
                                     const OptTensor& batch_sizes, const at::Tensor& hx,
                                     const at::Tensor& cx, const at::Tensor& w_ih,
                                     const at::Tensor& w_hh, const OptTensor& b_ih,
                                     const OptTensor& b_hh, bool reverse) {
    const Guard guard(input);
    return layer_forward(backend, input, lengths, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> layer(const at::Tensor& input,
                                                              const at::Tensor& hx,
                                                              const at::Tensor& cx,
                                                              const at::Tensor& w_ih,
                                                              const at::Tensor& w_hh,
                                                              const OptTensor& b_ih,
                                                              const OptTensor& b_hh,
                                                              const OptTensor& lengths, bool reverse) {
    auto [output, hy, cy, gates, cells] =
        layer_forward_(input, lengths, std::nullopt, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse);
    return {output, hy, cy};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_packed(
      const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& hx, const at::Tensor& cx,
      const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
      bool reverse) {
    auto [output, hy, cy, gates, cells] =
        layer_forward_(input, std::nullopt, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse);
    return {output, hy, cy};
  }

  static LayerGrads layer_backward_(const OptTensor& grad_output, const OptTensor& grad_hy,
                                    const OptTensor& grad_cy, const at::Tensor& input,
                                    const OptTensor& lengths, const OptTensor& batch_sizes,
                                    const at::Tensor& hx, const at::Tensor& cx,
                                    const at::Tensor& w_ih, const at::Tensor& w_hh,
                                    const at::Tensor& output, const at::Tensor& gates,
                                    const at::Tensor& cells, bool has_bias, bool reverse,
                                    std::array<bool, 4> output_mask) {
    const Guard guard(input);
    return layer_backward(backend, grad_output, grad_hy, grad_cy, input, lengths, batch_sizes, hx, cx,
                          w_ih, w_hh, output, gates, cells, has_bias, reverse, output_mask);
  }
};

template <const Backend& backend, typename Guard>
void register_kernels(torch::Library& m) {
  using K = Kernels<backend, Guard>;
  m.impl("lstm_cell", &K::cell);
  m.impl("_lstm_cell_forward", &K::cell_forward_);
  m.impl("lstm_cell_backward", &K::cell_backward_);
  m.impl("lstm_layer", &K::layer);
  m.impl("lstm_layer_packed", &K::layer_packed);
  m.impl("_lstm_layer_forward", &K::layer_forward_);
  m.impl("lstm_layer_backward", &K::layer_backward_);
}

}  // namespace dll_ext::lstm
