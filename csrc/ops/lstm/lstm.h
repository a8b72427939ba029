// Fused LSTM ops. Each backend supplies one step of the recurrence, forward and backward:
// the recurrent GEMM and the pointwise math of lstm_math.h around it. The CPU fuses them
// per block of hidden units (a thread's GEMM output is still in its cache when its
// pointwise pass reads it); CUDA runs cuBLAS and a pointwise kernel. The GEMMs over whole
// batches or sequences (input projections, weight gradients) are ATen's. Layouts:
// pre-activations and gates are (B, 4H) rows of [i | f | g | o], states are (B, H), all
// contiguous. lstm_cell is one step; lstm_layer and lstm_layer_packed run a whole sequence
// of one layer and direction with the same steps.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "common/registration.h"

namespace dll_ext::lstm {

// W_hh prepared once for all the steps of an op call, in the direction they go. The CPU
// splits each step into blocks of hidden units and, where its BLAS has a packed GEMM, packs
// each block's slice of W_hh once (bytes, one block after another); CUDA keeps W_hh alone.
struct RecurrentWeight {
  at::Tensor weight;  // W_hh, contiguous
  int64_t blocks = 1;
  at::Tensor packed;  // undefined where nothing is packed
  int64_t packed_block_bytes = 0;
};

struct Backend {
  // W_hh for steps of up to `rows` rows, forward or backward; worth packing when `steps`
  // steps will read it.
  RecurrentWeight (*prepare)(const at::Tensor& w_hh, int64_t rows, int64_t steps, bool backward);
  // One step for B rows. On entry gates holds x W_ih^T; the step adds h_prev W_hh^T and the
  // bias row (b_ih + b_hh, in the accumulation type), and leaves the activated gates there;
  // h and c are written.
  void (*step_forward)(const at::Tensor& h_prev, const at::Tensor& c_prev, const RecurrentWeight& w_hh,
                       const at::Tensor& bias, at::Tensor& gates, at::Tensor& h, at::Tensor& c);
  // Its backward: grad_pre from the gradients reaching h (grad_h plus grad_out, the output's
  // at this step) and c (grad_c, which the step overwrites with c_prev's), tanh(c)
  // recomputed from c; then, when grad_h_prev is defined, grad_pre W_hh into it. grad_h_prev
  // may be grad_h itself: it is written only after every read of grad_h.
  void (*step_backward)(const at::Tensor& grad_h, const at::Tensor& grad_out, at::Tensor& grad_c,
                        const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c,
                        const RecurrentWeight& w_hh, at::Tensor& grad_pre, at::Tensor& grad_h_prev);
  // A cell's single step from its input: both GEMMs, then step_forward's pointwise math.
  // Returns the activated gates; h and c are written.
  at::Tensor (*cell_step_forward)(const at::Tensor& input, const at::Tensor& h_prev, const at::Tensor& c_prev,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& bias,
                                  at::Tensor& h, at::Tensor& c);
};

// The edges of the blocks of hidden units a CPU step of `rows` rows splits into (blocks + 1
// values, from 0 to hidden): one block per thread while each has enough work.
std::vector<int64_t> cpu_unit_blocks(int64_t rows, int64_t hidden);

// Argument checks shared by the ops; `op` starts every message.
void check_shape(const char* op, const at::Tensor& t, at::IntArrayRef expected, const char* name,
                 const char* layout);
void check_like_input(const char* op, const at::Tensor& t, const at::Tensor& input, const char* name);
// Weights and biases against each other and against input's last (feature) dimension; the
// dtype is one the kernels support on input's device.
void check_parameters(const char* op, const at::Tensor& input, const at::Tensor& w_ih,
                      const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                      const std::optional<at::Tensor>& b_hh);
// A (batch, hidden_size) state or state gradient on input's device and dtype.
void check_state(const char* op, const at::Tensor& t, const at::Tensor& input, int64_t batch,
                 int64_t hidden, const char* name);

// The bias row the steps add, b_ih + b_hh (zeros without biases), in the accumulation type
// of `like`: the steps load it unconditionally, and low-precision biases are added without
// an extra rounding.
at::Tensor bias_row(const at::Tensor& like, const std::optional<at::Tensor>& b_ih,
                    const std::optional<at::Tensor>& b_hh, int64_t hidden);

// The ops. lstm_cell is _lstm_cell_forward without the gates; lstm_layer and
// lstm_layer_packed are _lstm_layer_forward without the workspace.
std::tuple<at::Tensor, at::Tensor, at::Tensor> cell_forward(
    const Backend& backend, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh);

std::tuple<at::Tensor, at::Tensor> cell(const Backend& backend, const at::Tensor& input, const at::Tensor& hx,
                                        const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                        const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cell_backward(
    const Backend& backend, const std::optional<at::Tensor>& grad_hy,
    const std::optional<at::Tensor>& grad_cy, const at::Tensor& workspace, const at::Tensor& input,
    const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& cy, const at::Tensor& w_ih,
    const at::Tensor& w_hh, bool has_bias, std::array<bool, 4> output_mask);

using LayerOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LayerGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// A whole sequence of one layer and direction. `input` is padded (T, B, input_size) with
// optional per-sequence `lengths` (CPU int64, any order), or, when `batch_sizes` is given,
// PyTorch's packed layout (N, input_size) with the sequences sorted by decreasing length.
// Returns output, the final h and c, and the workspace the backward reads: the activated
// gates and the cell states of every valid position, packed, in buffers with a row per
// input row.
LayerOutputs layer_forward(const Backend& backend, const at::Tensor& input,
                           const std::optional<at::Tensor>& lengths,
                           const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                           const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                           const std::optional<at::Tensor>& b_ih,
                           const std::optional<at::Tensor>& b_hh, bool reverse);

// Gradients of input, hx, cx, w_ih, w_hh and the bias (the same for b_ih and b_hh); the
// first, second, fourth and fifth only where output_mask (input, hx, w_ih, w_hh) asks.
LayerGrads layer_backward(const Backend& backend, const std::optional<at::Tensor>& grad_output,
                          const std::optional<at::Tensor>& grad_hy,
                          const std::optional<at::Tensor>& grad_cy, const at::Tensor& input,
                          const std::optional<at::Tensor>& lengths,
                          const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                          const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                          const at::Tensor& output, const at::Tensor& gates, const at::Tensor& cells,
                          bool has_bias, bool reverse, std::array<bool, 4> output_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer(const Backend& backend, const at::Tensor& input,
                                                     const at::Tensor& hx, const at::Tensor& cx,
                                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                     const std::optional<at::Tensor>& b_ih,
                                                     const std::optional<at::Tensor>& b_hh,
                                                     const std::optional<at::Tensor>& lengths, bool reverse);

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_packed(
    const Backend& backend, const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& hx,
    const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, bool reverse);

template <const Backend& backend, typename Guard>
void register_kernels(torch::Library& m) {
  impl<Guard, backend, cell>(m, "lstm_cell");
  impl<Guard, backend, cell_forward>(m, "_lstm_cell_forward");
  impl<Guard, backend, cell_backward>(m, "lstm_cell_backward");
  impl<Guard, backend, layer>(m, "lstm_layer");
  impl<Guard, backend, layer_packed>(m, "lstm_layer_packed");
  impl<Guard, backend, layer_forward>(m, "_lstm_layer_forward");
  impl<Guard, backend, layer_backward>(m, "lstm_layer_backward");
}

}  // namespace dll_ext::lstm
