// Element math of one LSTM step for one hidden unit, shared by the CPU and CUDA kernels of
// lstm_cell and lstm_layer. Gate order and layout are PyTorch's: the 4H pre-activations of a
// row are [i | f | g | o], i, f, o through a sigmoid and the candidate g through tanh.
//   c = f * c_prev + i * g,   h = o * tanh(c)
// T is the accumulation type (float for half/bfloat16 storage).
#pragma once

#include <cmath>

#include "common/host_device.h"

namespace dll_ext::lstm {

template <typename T>
DLL_HOST_DEVICE T exp_(T x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  return std::exp(x);
#endif
}

template <typename T>
DLL_HOST_DEVICE T tanh_(T x) {
#if defined(__CUDA_ARCH__)
  return tanh(x);
#else
  return std::tanh(x);
#endif
}

template <typename T>
DLL_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + exp_(-x));
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
DLL_HOST_DEVICE CellState<T> cell_forward(T pre_i, T pre_f, T pre_g, T pre_o, T c_prev) {
  CellState<T> s;
  s.i = sigmoid(pre_i);
  s.f = sigmoid(pre_f);
  s.g = tanh_(pre_g);
  s.o = sigmoid(pre_o);
  s.c = s.f * c_prev + s.i * s.g;
  s.tanh_c = tanh_(s.c);
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
DLL_HOST_DEVICE CellGrads<T> cell_backward(T dh, T dc, T i, T f, T g, T o, T c_prev, T tanh_c) {
  const T dc_total = dc + dh * o * (T(1) - tanh_c * tanh_c);
  CellGrads<T> d;
  d.pre_o = dh * tanh_c * o * (T(1) - o);
  d.pre_i = dc_total * g * i * (T(1) - i);
  d.pre_f = dc_total * c_prev * f * (T(1) - f);
  d.pre_g = dc_total * i * (T(1) - g * g);
  d.c_prev = dc_total * f;
  return d;
}

}  // namespace dll_ext::lstm
