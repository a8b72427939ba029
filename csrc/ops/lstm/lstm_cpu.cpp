// CPU steps of the LSTM ops, and the CPU registrations of the ops.
//
// A forward step is one parallel pass over blocks of hidden units: each task runs the
// recurrent GEMM for the four gate columns of its units and then the pointwise math on them
// while they are still in its cache. Run as an ATen GEMM followed by a separate pointwise
// pass, every step paid the dispatcher, a second parallel region and a trip of the gates
// through memory. The backward needs all of grad_pre before grad_pre W_hh, so it is two
// passes: the pointwise math per block of units, then the GEMM per block of h_prev's
// columns.
//
// A cell's single step (lstm_cell) of kTransposedCellRows rows or more runs both GEMMs as
// ATen's, transposed (W x^T), where MKL is faster for such rows, then the same pointwise pass
// per block of units; fewer rows get ATen's x W_ih^T and the fused step above.
//
// The GEMMs are BLAS on raw pointers (common/blas.h). In float, where MKL's packed GEMM is
// there, each block's slice of W_hh is packed once per op call rather than by every step's
// GEMM: one thread's 128-unit block of a B32 H256 step took about 120 us with sgemm_ per gate
// (repacking every call) and about 70 us packed, in a microbenchmark on a Xeon core.
// bfloat16 has no BLAS here: ATen's GEMM, then the same pointwise passes.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/blas.h"
#include "common/registration.h"
#include "ops/lstm/lstm.h"
#include "ops/lstm/lstm_math.h"

namespace dll_ext::lstm {
namespace {

// Units (rows x hidden units) a task must have at least: an OpenMP region for less measured
// slower than one thread (OpenMP's spinning workers compete with the GEMM's on 2 cores).
constexpr int64_t kGrain = 4096;
// Block edges fall on multiples of this many units, so each block's unit loops run in whole
// vectors (16 floats in an AVX-512 register).
constexpr int64_t kUnitStep = 16;

// Rows from which a cell's step computes its pre-activations transposed, W x^T: MKL ran
// x W^T (4H output columns) up to 2x slower than W x^T for 16 to 48 rows, and faster below 16
// (Xeon, H 256 to 1024).
constexpr int64_t kTransposedCellRows = 16;

template <typename T>
constexpr bool kHasBlas = std::is_same_v<T, float> || std::is_same_v<T, double>;

// Blocks of hidden units for steps of `rows` rows: one per thread, fewer when a block would
// be under kGrain units or narrower than kUnitStep.
int64_t unit_blocks(int64_t rows, int64_t hidden) {
  return std::clamp<int64_t>(std::min(rows * hidden / kGrain, hidden / kUnitStep), 1, at::get_num_threads());
}

// Units [first, last) of block b of `blocks`: near-equal shares in whole kUnitStep steps.
std::pair<int64_t, int64_t> unit_range(int64_t b, int64_t blocks, int64_t hidden) {
  const int64_t steps = (hidden + kUnitStep - 1) / kUnitStep;
  const auto edge = [&](int64_t k) { return std::min(hidden, steps * k / blocks * kUnitStep); };
  return {edge(b), edge(b + 1)};
}

// Runs body(b, first, last) for every block, in parallel; block b always on the same thread
// (ATen's OpenMP parallel_for gives thread i the i-th share), so its packed weights stay in
// that core's cache from step to step.
template <typename Body>
void for_unit_blocks(int64_t blocks, int64_t hidden, const Body& body) {
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const auto [first, last] = unit_range(b, blocks, hidden);
      body(b, first, last);
    }
  });
}

// Units [first, last) of one batch row; the loop reads each gate block contiguously and has
// no branches or conditional loads, so it vectorises (the element math is libm-free for
// float).
template <typename scalar_t>
DLL_CPU_CLONES void step_forward_units(const at::opmath_type<scalar_t>* __restrict__ bias,
                                       const scalar_t* __restrict__ c_prev, scalar_t* __restrict__ h,
                                       scalar_t* __restrict__ c, scalar_t* __restrict__ gates, int64_t first,
                                       int64_t last, int64_t hidden) {
  for (int64_t j = first; j < last; ++j) step_forward_unit(bias, c_prev, h, c, gates, j, hidden);
}

// The same after adding the block's recurrent pre-activations, `recurrent` (4 rows of U =
// last - first): in one loop, so the gates are loaded and stored once.
DLL_CPU_CLONES void step_forward_units_adding(const float* __restrict__ recurrent, const float* __restrict__ bias,
                                              const float* __restrict__ c_prev, float* __restrict__ h,
                                              float* __restrict__ c, float* __restrict__ gates, int64_t first,
                                              int64_t last, int64_t hidden) {
  const int64_t units = last - first;
  for (int64_t j = first; j < last; ++j) {
    for (int64_t g = 0; g < 4; ++g) gates[g * hidden + j] += recurrent[g * units + j - first];
    step_forward_unit(bias, c_prev, h, c, gates, j, hidden);
  }
}

template <typename scalar_t>
DLL_CPU_CLONES void step_backward_units(const scalar_t* __restrict__ grad_h, const scalar_t* __restrict__ grad_out,
                                        scalar_t* __restrict__ grad_c, const scalar_t* __restrict__ gates,
                                        const scalar_t* __restrict__ c_prev, const scalar_t* __restrict__ c,
                                        scalar_t* __restrict__ grad_pre, int64_t first, int64_t last,
                                        int64_t hidden) {
  for (int64_t j = first; j < last; ++j) {
    step_backward_unit<scalar_t, at::opmath_type<scalar_t>>(grad_h, grad_out, grad_c, gates, c_prev, c, grad_pre,
                                                            j, hidden);
  }
}

// Row-major (rows, ·) buffers; W_hh is (4H, H) row-major. In the column-major terms of
// blas::gemm a row-major (rows, n) matrix is its (n, rows) transpose.

// A block's packed W_hh: forward, its units' four gate rows stacked, (4U, H); backward, its
// units' columns, (4H, U) — in either case the A operand of a column-major product whose B
// is the step's (transposed) rows.
void pack_block(const float* w, bool backward, int64_t first, int64_t last, int64_t hidden, int64_t rows,
                void* dest) {
  const int64_t units = last - first;
  if (backward) {
    blas::pack_a(false, units, rows, 4 * hidden, w + first, hidden, dest);
    return;
  }
  std::vector<float> stacked(4 * units * hidden);
  for (int64_t g = 0; g < 4; ++g) {
    std::copy_n(w + (g * hidden + first) * hidden, units * hidden, stacked.data() + g * units * hidden);
  }
  blas::pack_a(true, 4 * units, rows, hidden, stacked.data(), hidden, dest);
}

RecurrentWeight prepare_cpu(const at::Tensor& w_hh, int64_t rows, int64_t steps, bool backward) {
  const int64_t hidden = w_hh.size(1);
  RecurrentWeight w{w_hh.contiguous(), unit_blocks(rows, hidden)};
  // One step's GEMM packs W_hh anyway; packing pays from the second step on.
  if (w.weight.scalar_type() != at::kFloat || steps < 2 || rows == 0 || hidden == 0 || !blas::has_packed_gemm()) {
    return w;
  }
  int64_t bytes = 0;
  for (int64_t b = 0; b < w.blocks; ++b) {
    const auto [first, last] = unit_range(b, w.blocks, hidden);
    const int64_t units = last - first;
    bytes = std::max(bytes, backward ? blas::packed_a_bytes(units, rows, 4 * hidden)
                                     : blas::packed_a_bytes(4 * units, rows, hidden));
  }
  w.packed_block_bytes = (bytes + 63) / 64 * 64;
  w.packed = at::empty({w.blocks * w.packed_block_bytes}, w_hh.options().dtype(at::kByte));
  // Each block packed by the thread whose steps will read it.
  for_unit_blocks(w.blocks, hidden, [&](int64_t b, int64_t first, int64_t last) {
    pack_block(w.weight.const_data_ptr<float>(), backward, first, last, hidden, rows,
               w.packed.data_ptr<uint8_t>() + b * w.packed_block_bytes);
  });
  return w;
}

const void* packed_block(const RecurrentWeight& w, int64_t b) {
  return w.packed.const_data_ptr<uint8_t>() + b * w.packed_block_bytes;
}

template <typename scalar_t>
void step_forward_kernel(const scalar_t* h_prev, const scalar_t* c_prev, const RecurrentWeight& weight,
                         const at::opmath_type<scalar_t>* bias, scalar_t* gates, scalar_t* h, scalar_t* c,
                         int64_t rows, int64_t hidden) {
  for_unit_blocks(weight.blocks, hidden, [&](int64_t b, int64_t first, int64_t last) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (weight.packed.defined()) {
        // The block's recurrent pre-activations, (rows, 4U).
        const int64_t units = last - first;
        thread_local std::vector<float> recurrent;
        recurrent.resize(rows * 4 * units);
        blas::gemm_packed_a(4 * units, rows, hidden, packed_block(weight, b), h_prev, hidden, 0, recurrent.data(),
                            4 * units);
        for (int64_t r = 0; r < rows; ++r) {
          step_forward_units_adding(recurrent.data() + r * 4 * units, bias, c_prev + r * hidden, h + r * hidden,
                                    c + r * hidden, gates + r * 4 * hidden, first, last, hidden);
        }
        return;
      }
    }
    if constexpr (kHasBlas<scalar_t>) {
      // gates[:, gate columns of these units] += h_prev W_hh[those rows]^T
      const scalar_t* w = weight.weight.const_data_ptr<scalar_t>();
      for (int64_t g = 0; g < 4; ++g) {
        const int64_t column = g * hidden + first;
        blas::gemm<scalar_t>(true, false, last - first, rows, hidden, 1, w + column * hidden, hidden, h_prev,
                             hidden, 1, gates + column, 4 * hidden);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      step_forward_units(bias, c_prev + r * hidden, h + r * hidden, c + r * hidden, gates + r * 4 * hidden, first,
                         last, hidden);
    }
  });
}

template <typename scalar_t>
void step_backward_kernel(const scalar_t* grad_h, const scalar_t* grad_out, scalar_t* grad_c, const scalar_t* gates,
                          const scalar_t* c_prev, const scalar_t* c, const RecurrentWeight& weight,
                          scalar_t* grad_pre, scalar_t* grad_h_prev, int64_t rows, int64_t hidden) {
  for_unit_blocks(weight.blocks, hidden, [&](int64_t, int64_t first, int64_t last) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row = r * hidden;
      step_backward_units(grad_h + row, grad_out + row, grad_c + row, gates + 4 * row, c_prev + row, c + row,
                          grad_pre + 4 * row, first, last, hidden);
    }
  });
  if constexpr (kHasBlas<scalar_t>) {
    if (grad_h_prev == nullptr) return;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (weight.packed.defined()) {
        // grad_h_prev[:, these units] = grad_pre W_hh[:, these units]
        for_unit_blocks(weight.blocks, hidden, [&](int64_t b, int64_t first, int64_t last) {
          blas::gemm_packed_a(last - first, rows, 4 * hidden, packed_block(weight, b), grad_pre, 4 * hidden, 0,
                              grad_h_prev + first, hidden);
        });
        return;
      }
    }
    // Unpacked, one GEMM outside any parallel region, threaded by the BLAS: per block, each
    // call repacked its slice of W_hh (a single cell step, B32 H256: about 170 us against 125).
    blas::gemm<scalar_t>(false, false, hidden, rows, 4 * hidden, 1, weight.weight.const_data_ptr<scalar_t>(), hidden,
                         grad_pre, 4 * hidden, 0, grad_h_prev, hidden);
  }
}

void step_forward_cpu(const at::Tensor& h_prev, const at::Tensor& c_prev, const RecurrentWeight& w_hh,
                      const at::Tensor& bias, at::Tensor& gates, at::Tensor& h, at::Tensor& c) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gates.scalar_type(), "lstm_step_forward_cpu", [&] {
    if constexpr (!kHasBlas<scalar_t>) gates.addmm_(h_prev, w_hh.weight.t());
    const at::Tensor h_rows = h_prev.contiguous(), c_rows = c_prev.contiguous();
    step_forward_kernel<scalar_t>(h_rows.const_data_ptr<scalar_t>(), c_rows.const_data_ptr<scalar_t>(), w_hh,
                                  bias.const_data_ptr<at::opmath_type<scalar_t>>(), gates.data_ptr<scalar_t>(),
                                  h.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), h.size(0), h.size(1));
  });
}

void step_backward_cpu(const at::Tensor& grad_h, const at::Tensor& grad_out, at::Tensor& grad_c,
                       const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c,
                       const RecurrentWeight& w_hh, at::Tensor& grad_pre, at::Tensor& grad_h_prev) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gates.scalar_type(), "lstm_step_backward_cpu", [&] {
    step_backward_kernel<scalar_t>(
        grad_h.const_data_ptr<scalar_t>(), grad_out.const_data_ptr<scalar_t>(), grad_c.data_ptr<scalar_t>(),
        gates.const_data_ptr<scalar_t>(), c_prev.const_data_ptr<scalar_t>(),
        c.const_data_ptr<scalar_t>(), w_hh, grad_pre.data_ptr<scalar_t>(),
        grad_h_prev.defined() ? grad_h_prev.data_ptr<scalar_t>() : nullptr, c.size(0), c.size(1));
    if constexpr (!kHasBlas<scalar_t>) {
      if (grad_h_prev.defined()) at::mm_out(grad_h_prev, grad_pre, w_hh.weight);
    }
  });
}

// Row r of the (4H, rows) pre-activations `pre_t` into `gates_row` (4H), units [first, last)
// of each gate: a strided read, but consecutive rows read the same cache lines.
template <typename scalar_t>
DLL_CPU_CLONES void copy_gate_row(const scalar_t* __restrict__ pre_t, scalar_t* __restrict__ gates_row, int64_t r,
                                  int64_t rows, int64_t first, int64_t last, int64_t hidden) {
  for (int64_t g = 0; g < 4; ++g) {
    for (int64_t j = first; j < last; ++j) gates_row[g * hidden + j] = pre_t[(g * hidden + j) * rows + r];
  }
}

at::Tensor cell_step_forward_cpu(const at::Tensor& input, const at::Tensor& h_prev, const at::Tensor& c_prev,
                                 const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& bias,
                                 at::Tensor& h, at::Tensor& c) {
  const int64_t rows = input.size(0), hidden = w_hh.size(1);
  if (rows < kTransposedCellRows) {
    at::Tensor gates = at::mm(input, w_ih.t());
    step_forward_cpu(h_prev, c_prev, prepare_cpu(w_hh, rows, 1, false), bias, gates, h, c);
    return gates;
  }
  const at::Tensor pre_t = at::mm(w_ih, input.t()).addmm_(w_hh, h_prev.t());
  at::Tensor gates = at::empty({rows, 4 * hidden}, input.options());
  const at::Tensor c_rows = c_prev.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gates.scalar_type(), "lstm_cell_step_forward_cpu", [&] {
    const scalar_t* pre = pre_t.const_data_ptr<scalar_t>();
    const scalar_t* c_in = c_rows.const_data_ptr<scalar_t>();
    const auto* bias_data = bias.const_data_ptr<at::opmath_type<scalar_t>>();
    scalar_t* gates_data = gates.data_ptr<scalar_t>();
    scalar_t* h_data = h.data_ptr<scalar_t>();
    scalar_t* c_data = c.data_ptr<scalar_t>();
    for_unit_blocks(unit_blocks(rows, hidden), hidden, [&](int64_t, int64_t first, int64_t last) {
      for (int64_t r = 0; r < rows; ++r) {
        copy_gate_row(pre, gates_data + r * 4 * hidden, r, rows, first, last, hidden);
        step_forward_units(bias_data, c_in + r * hidden, h_data + r * hidden, c_data + r * hidden,
                           gates_data + r * 4 * hidden, first, last, hidden);
      }
    });
  });
  return gates;
}

constexpr Backend kCpu{prepare_cpu, step_forward_cpu, step_backward_cpu, cell_step_forward_cpu};

}  // namespace

std::vector<int64_t> cpu_unit_blocks(int64_t rows, int64_t hidden) {
  const int64_t blocks = unit_blocks(rows, hidden);
  std::vector<int64_t> edges{0};
  for (int64_t b = 0; b < blocks; ++b) edges.push_back(unit_range(b, blocks, hidden).second);
  return edges;
}

}  // namespace dll_ext::lstm

TORCH_LIBRARY_IMPL(dll_ext, CPU, m) {
  dll_ext::lstm::register_kernels<dll_ext::lstm::kCpu, dll_ext::NoGuard>(m);
}
