// CPU pointwise steps of the LSTM ops, and the CPU registrations of lstm_cell.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops/lstm/lstm.h"
#include "ops/lstm/lstm_math.h"

namespace dll_ext::lstm {
namespace {

// Hidden units per parallel task: each costs five transcendental functions.
constexpr int64_t kGrain = 2048;

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
acc_t bias_at(const scalar_t* bias, int64_t k) {
  return bias ? acc_t(bias[k]) : acc_t(0);
}

template <typename scalar_t>
void step_forward_kernel(const scalar_t* pre, const scalar_t* b_ih, const scalar_t* b_hh,
                         const scalar_t* c_prev, scalar_t* h, scalar_t* c, scalar_t* gates,
                         int64_t batch, int64_t hidden) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, batch * hidden, kGrain, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t row = u / hidden, j = u % hidden;
      const scalar_t* p = pre + row * 4 * hidden;
      acc_t x[4];
      for (int k = 0; k < 4; ++k) {
        const int64_t col = k * hidden + j;
        x[k] = acc_t(p[col]) + bias_at(b_ih, col) + bias_at(b_hh, col);
      }
      const CellState<acc_t> s = cell_forward(x[0], x[1], x[2], x[3], acc_t(c_prev[u]));
      scalar_t* gate_row = gates + row * 4 * hidden;
      gate_row[j] = scalar_t(s.i);
      gate_row[hidden + j] = scalar_t(s.f);
      gate_row[2 * hidden + j] = scalar_t(s.g);
      gate_row[3 * hidden + j] = scalar_t(s.o);
      c[u] = scalar_t(s.c);
      h[u] = scalar_t(s.h);
    }
  });
}

template <typename scalar_t>
void step_backward_kernel(const scalar_t* grad_h, const scalar_t* grad_c, const scalar_t* gates,
                          const scalar_t* c_prev, const scalar_t* c, scalar_t* grad_pre,
                          scalar_t* grad_c_prev, int64_t batch, int64_t hidden) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, batch * hidden, kGrain, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t row = u / hidden, j = u % hidden;
      const scalar_t* g = gates + row * 4 * hidden;
      const CellGrads<acc_t> d = cell_backward(
          grad_h ? acc_t(grad_h[u]) : acc_t(0), grad_c ? acc_t(grad_c[u]) : acc_t(0), acc_t(g[j]),
          acc_t(g[hidden + j]), acc_t(g[2 * hidden + j]), acc_t(g[3 * hidden + j]), acc_t(c_prev[u]),
          tanh_(acc_t(c[u])));
      scalar_t* dp = grad_pre + row * 4 * hidden;
      dp[j] = scalar_t(d.pre_i);
      dp[hidden + j] = scalar_t(d.pre_f);
      dp[2 * hidden + j] = scalar_t(d.pre_g);
      dp[3 * hidden + j] = scalar_t(d.pre_o);
      grad_c_prev[u] = scalar_t(d.c_prev);
    }
  });
}

template <typename scalar_t>
const scalar_t* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<scalar_t>() : nullptr;
}

void step_forward_cpu(const at::Tensor& pre, const std::optional<at::Tensor>& b_ih,
                      const std::optional<at::Tensor>& b_hh, const at::Tensor& c_prev,
                      at::Tensor& h, at::Tensor& c, at::Tensor& gates) {
  const std::optional<at::Tensor> bi = b_ih ? std::optional(b_ih->contiguous()) : std::nullopt;
  const std::optional<at::Tensor> bh = b_hh ? std::optional(b_hh->contiguous()) : std::nullopt;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, pre.scalar_type(), "lstm_step_forward_cpu", [&] {
    step_forward_kernel<scalar_t>(pre.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(bi),
                                  ptr_or_null<scalar_t>(bh), c_prev.const_data_ptr<scalar_t>(),
                                  h.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                                  gates.data_ptr<scalar_t>(), h.size(0), h.size(1));
  });
}

void step_backward_cpu(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& gates,
                       const at::Tensor& c_prev, const at::Tensor& c, at::Tensor& grad_pre,
                       at::Tensor& grad_c_prev) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gates.scalar_type(), "lstm_step_backward_cpu", [&] {
    step_backward_kernel<scalar_t>(
        grad_h.defined() ? grad_h.const_data_ptr<scalar_t>() : nullptr,
        grad_c.defined() ? grad_c.const_data_ptr<scalar_t>() : nullptr,
        gates.const_data_ptr<scalar_t>(), c_prev.const_data_ptr<scalar_t>(),
        c.const_data_ptr<scalar_t>(), grad_pre.data_ptr<scalar_t>(),
        grad_c_prev.data_ptr<scalar_t>(), c.size(0), c.size(1));
  });
}

constexpr Backend kCpu{step_forward_cpu, step_backward_cpu};

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cpu(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh) {
  return cell_forward(kCpu, input, hx, cx, w_ih, w_hh, b_ih, b_hh);
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_cpu(const at::Tensor& input, const at::Tensor& hx,
                                                 const at::Tensor& cx, const at::Tensor& w_ih,
                                                 const at::Tensor& w_hh,
                                                 const std::optional<at::Tensor>& b_ih,
                                                 const std::optional<at::Tensor>& b_hh) {
  auto [hy, cy, gates] = cell_forward(kCpu, input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  return {hy, cy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_cell_backward_cpu(const std::optional<at::Tensor>& grad_hy,
                       const std::optional<at::Tensor>& grad_cy, const at::Tensor& workspace,
                       const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                       const at::Tensor& cy, const at::Tensor& w_ih, const at::Tensor& w_hh,
                       bool has_bias) {
  return cell_backward(kCpu, grad_hy, grad_cy, workspace, input, hx, cx, cy, w_ih, w_hh, has_bias);
}

}  // namespace
}  // namespace dll_ext::lstm

TORCH_LIBRARY_IMPL(dll_ext, CPU, m) {
  m.impl("lstm_cell", &dll_ext::lstm::lstm_cell_cpu);
  m.impl("_lstm_cell_forward", &dll_ext::lstm::lstm_cell_forward_cpu);
  m.impl("lstm_cell_backward", &dll_ext::lstm::lstm_cell_backward_cpu);
}
