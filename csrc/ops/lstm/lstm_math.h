// Element math of one LSTM step for one hidden unit, shared by the CPU and CUDA kernels of
// lstm_cell and lstm_layer. Gate order and layout are PyTorch's: the 4H pre-activations of a
// row are [i | f | g | o], i, f, o through a sigmoid and the candidate g through tanh.
//   c = f * c_prev + i * g,   h = o * tanh(c)
// T is the accumulation type (float for half/bfloat16 storage).
#pragma once

#include <cstdint>

#include "common/fast_math.h"
#include "common/host_device.h"

namespace dll_ext::lstm {

template <typename T>
DLL_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}

// The activated gates and the new state of one unit; what the backward needs is the gates,
// c_prev and tanh(c).
template <typename T>
struct CellState {
  T i, f, g, o;  // activated gates
  T c, h, tanh_c;
};

// One forward step from the four pre-activations (biases already added) and c_prev.
template <typename T>
DLL_HOST_DEVICE CellState<T> cell_state(T pre_i, T pre_f, T pre_g, T pre_o, T c_prev) {
  CellState<T> s;
  s.i = sigmoid(pre_i);
  s.f = sigmoid(pre_f);
  s.g = fast_tanh(pre_g);
  s.o = sigmoid(pre_o);
  s.c = s.f * c_prev + s.i * s.g;
  s.tanh_c = fast_tanh(s.c);
  s.h = s.o * s.tanh_c;
  return s;
}

// Gradients of the four pre-activations and of c_prev.
template <typename T>
struct CellGrads {
  T pre_i, pre_f, pre_g, pre_o;
  T c_prev;
};

// One backward step: dh and dc are the gradients reaching h and c of this step (dc from the
// next step's c_prev, or from the final cell state).
template <typename T>
DLL_HOST_DEVICE CellGrads<T> cell_grads(T dh, T dc, T i, T f, T g, T o, T c_prev, T tanh_c) {
  const T dc_total = dc + dh * o * (T(1) - tanh_c * tanh_c);
  CellGrads<T> d;
  d.pre_o = dh * tanh_c * o * (T(1) - o);
  d.pre_i = dc_total * g * i * (T(1) - i);
  d.pre_f = dc_total * c_prev * f * (T(1) - f);
  d.pre_g = dc_total * i * (T(1) - g * g);
  d.c_prev = dc_total * f;
  return d;
}

// The fused step for hidden unit j of one batch row, over the row's buffers: gates (4H, the
// pre-activations without biases on entry, the activated gates on return: each unit reads
// its four entries before writing them, so the step runs in place), bias (4H, b_ih + b_hh in
// acc_t), and c_prev, c, h (H). What both backends' kernels run for every unit.
template <typename scalar_t, typename acc_t>
DLL_HOST_DEVICE void step_forward_unit(const acc_t* bias, const scalar_t* c_prev, scalar_t* h, scalar_t* c,
                                       scalar_t* gates, int64_t j, int64_t hidden) {
  const CellState<acc_t> s = cell_state(
      acc_t(gates[j]) + bias[j], acc_t(gates[hidden + j]) + bias[hidden + j],
      acc_t(gates[2 * hidden + j]) + bias[2 * hidden + j],
      acc_t(gates[3 * hidden + j]) + bias[3 * hidden + j], acc_t(c_prev[j]));
  gates[j] = scalar_t(s.i);
  gates[hidden + j] = scalar_t(s.f);
  gates[2 * hidden + j] = scalar_t(s.g);
  gates[3 * hidden + j] = scalar_t(s.o);
  c[j] = scalar_t(s.c);
  h[j] = scalar_t(s.h);
}

// Its backward: grad_pre (4H) from the gradients reaching h (grad_h plus grad_out, the
// output's at this step) and c (grad_c, which is then overwritten with c_prev's: the running
// gradient of c stays in one buffer), with tanh(c) recomputed from c.
template <typename scalar_t, typename acc_t>
DLL_HOST_DEVICE void step_backward_unit(const scalar_t* grad_h, const scalar_t* grad_out, scalar_t* grad_c,
                                        const scalar_t* gates, const scalar_t* c_prev, const scalar_t* c,
                                        scalar_t* grad_pre, int64_t j, int64_t hidden) {
  const acc_t dh = acc_t(grad_h[j]) + acc_t(grad_out[j]);
  const CellGrads<acc_t> d = cell_grads(
      dh, acc_t(grad_c[j]), acc_t(gates[j]), acc_t(gates[hidden + j]), acc_t(gates[2 * hidden + j]),
      acc_t(gates[3 * hidden + j]), acc_t(c_prev[j]), fast_tanh(acc_t(c[j])));
  grad_pre[j] = scalar_t(d.pre_i);
  grad_pre[hidden + j] = scalar_t(d.pre_f);
  grad_pre[2 * hidden + j] = scalar_t(d.pre_g);
  grad_pre[3 * hidden + j] = scalar_t(d.pre_o);
  grad_c[j] = scalar_t(d.c_prev);
}

}  // namespace dll_ext::lstm
